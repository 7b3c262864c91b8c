//! `auth-service` serves AuthService; `auth-service migrate` only applies the migrations
//! and exits (for a Kubernetes Job that runs before a new version's pods).
use auth_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_common::binary::run(
        "auth-service",
        Config::from_env,
        |config| async move { auth_service::migrate(&config).await },
        |config, shutdown| async move {
            Application::build(config)
                .await?
                .run_until_stopped(shutdown)
                .await
        },
    )
    .await
}
