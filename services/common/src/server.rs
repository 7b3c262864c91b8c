//! Serving a tonic router the same way in every binary and test: on an already bound
//! listener (so tests bind port 0 and learn the port before serving), with gRPC health and
//! reflection, request metrics, a span per call that continues the caller's trace
//! ([`crate::trace::ServerLayer`]), statuses kept safe to send ([`crate::guard`]: a request
//! that does not decode is INVALID_ARGUMENT, no status is too large for the connection), and
//! a graceful stop that lets open calls finish.
//!
//! Every service crate hands its share of a server over as [`Parts`] (its gRPC services,
//! the database each one's health follows, its background tasks), and [`serve_parts`]
//! serves any set of them: one for a split binary, all four for `chat-server`. So health,
//! reflection and the drain are written once, here.

use std::{convert::Infallible, future::Future, pin::Pin, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    body::Body,
    server::NamedService,
    service::RoutesBuilder,
    transport::{
        server::{Router, TcpIncoming},
        Server,
    },
};

use tower::layer::util::{Identity, Stack};

use crate::{
    guard::StatusGuardLayer, local::LocalRoutes, metrics::MetricsLayer, trace::ServerLayer,
    Shutdown,
};

/// The layers every server runs its services under (the guard innermost, so metrics and
/// traces see the status the client gets).
pub type Layers = Stack<StatusGuardLayer, Stack<ServerLayer, Stack<MetricsLayer, Identity>>>;

/// A server builder with the settings every service uses.
pub fn builder() -> tonic::transport::Server<Layers> {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(MetricsLayer::default())
        .layer(ServerLayer)
        .layer(StatusGuardLayer::default())
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

/// Adds one gRPC service to the routes being built.
type AddRoute = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;

/// Work a service runs beside its gRPC services for as long as it is served.
type Background = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One service's share of a server, built by the service crate's `parts` and served by
/// [`serve_parts`].
#[derive(Default)]
pub struct Parts {
    routes: Vec<AddRoute>,
    /// Each gRPC service's full name, with the database its health follows.
    services: Vec<(&'static str, String)>,
    background: Vec<Background>,
}

impl Parts {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gRPC service `svc`, whose health is SERVING while the database on
    /// `database_url` is reachable (see [`crate::db::StorageHealth`]).
    pub fn service<S, B>(mut self, svc: S, database_url: &str) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.routes.push(Box::new(move |routes| {
            routes.add_service(svc);
        }));
        self.services.push((S::NAME, database_url.to_owned()));
        self
    }

    /// Adds `task`, started (through the server's [`Shutdown`], which it must watch) when
    /// serving starts and awaited after the server stopped, so that work in flight settles
    /// before the process exits.
    pub fn background(mut self, task: impl Future<Output = ()> + Send + 'static) -> Self {
        self.background.push(Box::pin(task));
        self
    }
}

/// Serves every service of `parts` on `listener` until `shutdown`, with health and
/// reflection, then drains open calls and waits for the parts' background tasks. `name`
/// is the server's, for the log. With `local`, the same routes also answer this process's
/// own clients in process (see [`crate::local`]).
///
/// Health: each service is SERVING while its database is reachable; the server as a whole
/// (`""`) follows the database too when all the services share one, and stays SERVING
/// otherwise (one database down leaves the other services working).
pub async fn serve_parts(
    name: &str,
    parts: Vec<Parts>,
    listener: TcpListener,
    local: Option<&LocalRoutes>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut routes = RoutesBuilder::default();
    let mut services = Vec::new();
    let mut background = Vec::new();
    for part in parts {
        part.routes.into_iter().for_each(|add| add(&mut routes));
        services.extend(part.services);
        background.extend(part.background);
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    report_health(&health, &services, &shutdown).await;
    let names: Vec<&str> = services.iter().map(|(name, _)| *name).collect();
    let (reflection_v1, reflection_v1alpha) = reflection(&names)?;
    let tasks: Vec<_> = background.into_iter().map(|t| shutdown.spawn(t)).collect();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "{name} serving");
    }
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let routes = routes.routes();
    if let Some(local) = local {
        local.install(routes.clone().prepare());
    }
    let router = builder().add_routes(routes);
    let served = serve(router, listener, shutdown).await;
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a background task of {name} failed");
        }
    }
    served
}

/// One service's [`Parts`] on a listener of its own, bound and ready to run: what a
/// split binary serves and what the tests spawn. Each service's `Application::build`
/// assembles its parts and ends here, so binding, the bound address and serving are
/// written once for them all.
pub struct Bound {
    /// The binary's name, for the logs.
    name: &'static str,
    addr: std::net::SocketAddr,
    listener: TcpListener,
    parts: Parts,
}

impl Bound {
    /// Binds `addr` for `parts`, served as the binary `name`.
    pub async fn bind(
        name: &'static str,
        addr: std::net::SocketAddr,
        parts: Parts,
    ) -> anyhow::Result<Self> {
        let (listener, addr) = bind(addr).await?;
        Ok(Self {
            name,
            addr,
            listener,
            parts,
        })
    }

    /// The address the server is bound to; the actual port when the configuration asked
    /// for 0.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is triggered, running the parts' background work beside
    /// (open streams end with UNAVAILABLE), then drains open calls.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        serve_parts(self.name, vec![self.parts], self.listener, None, shutdown).await
    }
}

/// Sets every service SERVING, and has each database's monitor report on the services
/// that use it (and on the whole server when there is only the one database).
async fn report_health(
    health: &tonic_health::server::HealthReporter,
    services: &[(&'static str, String)],
    shutdown: &Shutdown,
) {
    let mut databases: Vec<&str> = services.iter().map(|(_, url)| url.as_str()).collect();
    databases.sort_unstable();
    databases.dedup();
    for (name, _) in services {
        health
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    for url in &databases {
        let mut names: Vec<String> = services
            .iter()
            .filter(|(_, u)| u == url)
            .map(|(name, _)| (*name).to_owned())
            .collect();
        if databases.len() == 1 {
            names.push(String::new());
        }
        crate::db::StorageHealth::of(url).report(health.clone(), names, shutdown);
    }
}
