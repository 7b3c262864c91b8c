use auth_service::{Application, Config};
use chat_common::{config, metrics, telemetry, Shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    config::load_dotenv();
    let _telemetry = telemetry::init("auth-service")?;
    if let Some(addr) = config::metrics_addr()? {
        metrics::install(addr)?;
    }
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    Application::build(Config::from_env()?)
        .await?
        .run_until_stopped(shutdown)
        .await
}
