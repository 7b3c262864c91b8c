//! `notification-service` consumes chat events and serves NotificationService;
//! `notification-service migrate` only applies the migrations.
use notification_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_common::binary::run(
        "notification-service",
        Config::from_env,
        |config| async move { notification_service::migrate(&config).await },
        |config, shutdown| async move {
            Application::build(config, shutdown.clone())
                .await?
                .run_until_stopped(shutdown)
                .await
        },
    )
    .await
}
