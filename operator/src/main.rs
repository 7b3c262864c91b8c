//! `chat-operator`: `run` the controller, or print the CRD (`crd`) or the objects a
//! `ChatCluster` turns into (`render`) without a cluster.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use chat_operator::{controller, leader::LeaseLock, telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chat-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile ChatClusters until SIGTERM.
    Run(RunArgs),
    /// Print the ChatCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print every object the operator would apply for the ChatCluster(s) in FILE.
    Render {
        /// YAML file with one or more ChatCluster documents (`-` for stdin).
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Take a Lease before reconciling, so only one replica acts.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "chat-operator-leader")]
    lease_name: String,
    /// Namespace of the Lease (normally the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (normally the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", chat_operator::crd_yaml()?);
            Ok(())
        }
        Command::Render { file } => {
            let input = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            print!("{}", chat_operator::render_yaml(&input)?);
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    // An empty WATCH_NAMESPACE (the manifests' default) means all namespaces.
    args.watch_namespace = args.watch_namespace.filter(|n| !n.is_empty());
    let _telemetry = telemetry::init()?;
    let metrics = telemetry::install_metrics()?;
    let http = tokio::spawn(telemetry::serve_http(args.http_addr, metrics));
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;

    let stop = stop_on_signals();
    if !args.leader_election {
        tracing::info!(namespace = ?args.watch_namespace, "reconciling (leader election off)");
        controller::run(
            client,
            args.watch_namespace,
            args.identity,
            stop.wait_owned(),
        )
        .await;
        http.abort();
        return Ok(());
    }

    let identity = args
        .identity
        .unwrap_or_else(|| format!("chat-operator-{}", std::process::id()));
    let lock = LeaseLock::new(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &identity,
    );
    loop {
        tokio::select! {
            _ = lock.acquire() => {}
            _ = stop.wait() => break,
        }
        tracing::info!(%identity, "leading: reconciling");
        metrics::gauge!("chat_operator_leader").set(1.0);
        // The Lease is renewed on its own task; the controller stops when it is lost.
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn({
            let lock = lock.clone();
            async move {
                lock.hold().await;
                tracing::warn!("lost the lease: stepping down");
                let _ = lost_tx.send(());
            }
        });
        let lost = {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = lost_rx => {}
                    _ = stop.wait_owned() => {}
                }
            }
        };
        controller::run(
            client.clone(),
            args.watch_namespace.clone(),
            Some(identity.clone()),
            lost,
        )
        .await;
        holder.abort();
        metrics::gauge!("chat_operator_leader").set(0.0);
        if stop.is_set() {
            lock.release().await;
            break;
        }
    }
    http.abort();
    Ok(())
}

/// Set once SIGTERM or Ctrl-C arrives; cloned into everything that must stop.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the sender is gone, which only happens at exit.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    async fn wait_owned(self) {
        self.wait().await
    }
}

fn stop_on_signals() -> Stop {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
        // Keep the sender alive so receivers see the final value.
        std::future::pending::<()>().await;
    });
    Stop(rx)
}
