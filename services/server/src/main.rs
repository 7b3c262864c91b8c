use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_common::binary::run(
        "chat-server",
        || chat_server::Config::from_args(chat_server::Args::parse()),
        |config| async move { chat_server::migrate(&config).await },
        |config, shutdown| async move {
            let server = chat_server::Server::build(config, shutdown.clone()).await?;
            server.run_until_stopped(shutdown).await
        },
    )
    .await
}
