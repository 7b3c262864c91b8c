//! What every service binary's `main` does, written once: read `.env`, start telemetry,
//! load the configuration, answer `<binary> migrate` (apply migrations and exit, for a
//! Kubernetes Job), serve metrics, and run until SIGTERM or Ctrl-C, then wait (a bounded
//! time) for the background tasks the service spawned through its `Shutdown`.

use std::future::Future;

use crate::{config, metrics, telemetry, Shutdown};

/// Runs the binary `name`: `load` reads its configuration, `migrate` applies its
/// migrations, `serve` builds and runs it until the given shutdown is triggered.
pub async fn run<C, M, MF, S, SF>(
    name: &str,
    load: impl FnOnce() -> anyhow::Result<C>,
    migrate: M,
    serve: S,
) -> anyhow::Result<()>
where
    M: FnOnce(C) -> MF,
    MF: Future<Output = anyhow::Result<()>>,
    S: FnOnce(C, Shutdown) -> SF,
    SF: Future<Output = anyhow::Result<()>>,
{
    let wants_migrate = std::env::args().nth(1).as_deref() == Some("migrate");
    run_as(name, wants_migrate, load, migrate, serve).await
}

/// [`run`], with the binary having parsed its own command line: `migrate` says whether it
/// was asked to migrate (`chat-server --data DIR migrate` has the subcommand after a flag,
/// where [`run`]'s look at the first argument does not find it).
pub async fn run_as<C, M, MF, S, SF>(
    name: &str,
    migrate_only: bool,
    load: impl FnOnce() -> anyhow::Result<C>,
    migrate: M,
    serve: S,
) -> anyhow::Result<()>
where
    M: FnOnce(C) -> MF,
    MF: Future<Output = anyhow::Result<()>>,
    S: FnOnce(C, Shutdown) -> SF,
    SF: Future<Output = anyhow::Result<()>>,
{
    config::load_dotenv();
    let _telemetry = telemetry::init(name)?;
    let config = load()?;
    if migrate_only {
        return migrate(config).await;
    }
    if let Some(addr) = config::metrics_addr()? {
        match metrics::install(addr) {
            Ok(()) => {}
            // The default port is taken (a second server on one machine): serve without
            // metrics rather than not at all. A port someone asked for must work.
            Err(e) if config::var(config::vars::METRICS_ADDR).is_none() => tracing::warn!(
                error = %e,
                "serving without metrics; set METRICS_ADDR to a free address, or to off"
            ),
            Err(e) => return Err(e),
        }
    }
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let served = serve(config, shutdown.clone()).await;
    // The server has stopped taking calls: let background work in flight (an outbox
    // removal, an email being sent, a saga step) finish, within the deadline.
    shutdown.finish(BACKGROUND_DEADLINE).await;
    served
}

/// How long a stopping binary waits for its background tasks: well inside Kubernetes'
/// default 30 s grace period, after the server's own drain.
pub const BACKGROUND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A service binary's whole `main`, for a crate `$krate` whose `Config::from_env`,
/// `migrate(&Config)` and `Application::build(config, shutdown)` (giving something with
/// `run_until_stopped(shutdown)`) follow the services' common shape: [`run`] as the binary
/// `$name`. The binary needs `tokio` and `anyhow`, as every service binary has.
#[macro_export]
macro_rules! service_main {
    ($name:literal, $krate:ident) => {
        #[::tokio::main]
        async fn main() -> ::anyhow::Result<()> {
            $crate::binary::run(
                $name,
                $krate::Config::from_env,
                |config| async move { $krate::migrate(&config).await },
                |config, shutdown| async move {
                    $krate::Application::build(config, shutdown.clone())
                        .await?
                        .run_until_stopped(shutdown)
                        .await
                },
            )
            .await
        }
    };
}
