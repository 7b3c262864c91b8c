//! `chat-service` serves ChatService; `chat-service migrate` only applies the migrations.
use chat_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_common::binary::run(
        "chat-service",
        Config::from_env,
        |config| async move { chat_service::migrate(&config).await },
        |config, shutdown| async move {
            Application::build(config, shutdown.clone())
                .await?
                .run_until_stopped(shutdown)
                .await
        },
    )
    .await
}
