//! `saga-orchestrator` serves SagaOrchestrator and resumes unfinished sagas;
//! `saga-orchestrator migrate` only applies the migrations.
use saga_orchestrator::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_common::binary::run(
        "saga-orchestrator",
        Config::from_env,
        |config| async move { saga_orchestrator::migrate(&config).await },
        |config, shutdown| async move {
            Application::build(config, shutdown.clone())
                .await?
                .run_until_stopped(shutdown)
                .await
        },
    )
    .await
}
