//! Serving a tonic router the same way in every binary and test: on an already bound
//! listener (so tests bind port 0 and learn the port before serving), with gRPC health and
//! reflection, request metrics, a span per call that continues the caller's trace
//! ([`crate::trace::ServerLayer`]), statuses kept safe to send ([`crate::guard`]: a request
//! that does not decode is INVALID_ARGUMENT, no status is too large for the connection), and
//! a graceful stop that lets open calls finish.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{
    server::{Router, TcpIncoming},
    Server,
};

use tower::layer::util::{Identity, Stack};

use crate::{guard::StatusGuardLayer, metrics::MetricsLayer, trace::ServerLayer, Shutdown};

/// The layers every server runs its services under (the guard innermost, so metrics and
/// traces see the status the client gets).
pub type Layers = Stack<StatusGuardLayer, Stack<ServerLayer, Stack<MetricsLayer, Identity>>>;

/// A server builder with the settings every service uses.
pub fn builder() -> tonic::transport::Server<Layers> {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(MetricsLayer)
        .layer(ServerLayer)
        .layer(StatusGuardLayer)
}

/// The gRPC health service's full name, listed by every server's reflection.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The reflection service (v1 and v1alpha, for older tools), listing `services` (full
/// names, such as `grpcchat.auth.v1.AuthService`) and health: what this server serves,
/// not every contract the project has.
pub fn reflection(
    services: &[&str],
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let configure = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grpc_chat_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(HEALTH_SERVICE);
        for name in services {
            b = b.with_service_name(*name);
        }
        b
    };
    let v1 = configure().build_v1()?;
    let v1alpha = configure().build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// Serves `router` on `listener` until `shutdown` is triggered, then drains open calls.
pub async fn serve<L>(
    router: Router<L>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()>
where
    L: tower::Layer<tonic::service::Routes> + Clone,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    // The builder's `tcp_nodelay` only reaches sockets tonic accepts on a listener it binds
    // itself; on ours it must be set here. Without it Nagle holds a small frame back until
    // the client's delayed ACK, and a live message to a stream arrives 40 ms late.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
        .await?;
    Ok(())
}

/// Binds the gRPC listener and returns it with the address it got (port 0 picks a free one).
pub async fn bind(
    addr: std::net::SocketAddr,
) -> anyhow::Result<(TcpListener, std::net::SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
