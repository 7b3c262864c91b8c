//! `chat-server`: serve all four services (the default), `chat-server migrate` to apply
//! the migrations and exit, or `chat-server admin grant|revoke EMAIL` to make an account an
//! administrator (or a user again) and exit. The command line is parsed here, once, so the
//! subcommand is found wherever the global flags are (`--data DIR migrate` and
//! `migrate --data DIR`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = chat_server::Args::parse();
    let admin = match &args.command {
        Some(chat_server::Command::Admin { action }) => Some(action.clone()),
        _ => None,
    };
    let migrate_only = matches!(
        args.command,
        Some(chat_server::Command::Migrate | chat_server::Command::Admin { .. })
    );
    chat_common::binary::run_as(
        "chat-server",
        migrate_only,
        || chat_server::Config::from_args(args),
        |config| async move {
            match admin {
                Some(command) => println!("{}", chat_server::admin(&config, &command).await?),
                None => {
                    chat_server::migrate(&config).await?;
                    println!("{}", chat_server::migrated(&config));
                }
            }
            Ok(())
        },
        |config, shutdown| async move {
            let server = chat_server::Server::build(config, shutdown.clone()).await?;
            server.run_until_stopped(shutdown).await
        },
    )
    .await
}
