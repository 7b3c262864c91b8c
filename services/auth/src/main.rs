//! `auth-service` serves AuthService; `auth-service migrate` only applies the migrations
//! and exits (for a Kubernetes Job that runs before a new version's pods).
use auth_service::{Application, Config};
use chat_common::{config, metrics, telemetry, Shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    config::load_dotenv();
    let _telemetry = telemetry::init("auth-service")?;
    let config = Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return auth_service::migrate(&config).await;
    }
    if let Some(addr) = config::metrics_addr()? {
        metrics::install(addr)?;
    }
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
