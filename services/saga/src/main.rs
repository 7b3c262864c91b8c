//! `saga-orchestrator` serves SagaOrchestrator and resumes unfinished sagas;
//! `saga-orchestrator migrate` only applies the migrations.
use chat_common::{config, metrics, telemetry, Shutdown};
use saga_orchestrator::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    config::load_dotenv();
    let _telemetry = telemetry::init("saga-orchestrator")?;
    let config = Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return saga_orchestrator::migrate(&config).await;
    }
    if let Some(addr) = config::metrics_addr()? {
        metrics::install(addr)?;
    }
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    Application::build(config, shutdown.clone())
        .await?
        .run_until_stopped(shutdown)
        .await
}
