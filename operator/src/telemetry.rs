//! Logs, traces and the operator's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
//!
//! Logs and traces are the services' own setup (chat-telemetry: `RUST_LOG`,
//! `LOG_FORMAT=json`, `OTEL_EXPORTER_OTLP_ENDPOINT`), set up once in `main`. The HTTP endpoint is separate
//! from the controller so the kubelet can probe a replica that is waiting for the
//! leadership: it is alive and ready to take over, just not acting.

use std::net::SocketAddr;

use axum::{routing::get, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use chat_telemetry::TelemetryGuard;

/// Installs the global subscriber: the services' setup (chat-telemetry), under the
/// operator's own service name, so its logs and traces read like theirs.
pub fn init() -> anyhow::Result<TelemetryGuard> {
    chat_telemetry::init("chat-operator")
}

/// Installs the Prometheus recorder for the `metrics` macros.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}

/// Serves the health and metrics endpoint until the process ends.
pub async fn serve_http(addr: SocketAddr, metrics: PrometheusHandle) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(move || async move { metrics.render() }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
