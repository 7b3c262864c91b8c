//! Prometheus metrics: the exporter (installed once by `main`, never by library code, since
//! the recorder is process-global) and a tower layer that counts every gRPC call by method
//! and status code and records its latency.

use std::{net::SocketAddr, time::Instant};

use metrics_exporter_prometheus::PrometheusBuilder;

use crate::layer::{CallHook, HookLayer};

/// Serves `/metrics` on `addr` for the rest of the process.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("starting the metrics endpoint on {addr}: {e}"))?;
    tracing::info!(%addr, "metrics served on /metrics");
    Ok(())
}

/// Records `grpc_server_requests_total{method,code}` and
/// `grpc_server_request_duration_seconds{method}` (time to the response headers).
pub type MetricsLayer = HookLayer<CallMetrics>;

/// The hook of [`MetricsLayer`]: records each call's method, code and latency.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallMetrics;

impl CallHook for CallMetrics {
    /// The method's full path and when the call came.
    type Note = (String, Instant);

    fn on_request<B>(&self, req: &http::Request<B>) -> Result<Self::Note, tonic::Status> {
        Ok((req.uri().path().to_owned(), Instant::now()))
    }

    fn on_response<RB, E>((method, start): Self::Note, res: &mut Result<http::Response<RB>, E>) {
        let code = match res {
            Ok(r) => r
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0")
                .to_owned(),
            Err(_) => "transport".to_owned(),
        };
        metrics::counter!("grpc_server_requests_total", "method" => method.clone(), "code" => code)
            .increment(1);
        metrics::histogram!("grpc_server_request_duration_seconds", "method" => method)
            .record(start.elapsed().as_secs_f64());
    }
}
