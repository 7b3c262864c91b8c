//! Prometheus metrics: the exporter (installed once by `main`, never by library code, since
//! the recorder is process-global) and a tower layer that counts every gRPC call by method
//! and status code and records its latency.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use metrics_exporter_prometheus::PrometheusBuilder;

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
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

/// The service made by [`MetricsLayer`]: passes calls to `inner` and records each one's method,
/// code and latency.
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
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
            res
        })
    }
}
