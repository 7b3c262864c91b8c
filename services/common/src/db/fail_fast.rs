//! Answering UNAVAILABLE at once while a service's storage is known to be down.
//!
//! Without this, a call that reaches a store during an outage waits for a connection until
//! the pool's [`super::ACQUIRE_TIMEOUT`] passes (sqlx keeps retrying a refused connect
//! until then), and only then answers UNAVAILABLE: every caller is held for seconds, and
//! the calls pile up. The storage monitor ([`super::StorageHealth`]) already knows the
//! database does not answer; this layer, put on each service's gRPC server, consults that
//! flag first and answers UNAVAILABLE without reaching the store. It needs no reset: the
//! monitor keeps probing (more often while down) and the first probe that succeeds lets
//! calls through again.
//!
//! It sits at the gRPC edge rather than in the stores because sqlx's pool has no hook
//! before it connects, and the stores reach their pools at many places on two engines;
//! one layer covers all four services and both engines alike. The few methods that never
//! touch storage (auth's token checks and public keys) are named by the service and let
//! through, so an outage does not take down what still works.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::Status;

use super::StorageHealth;

/// What a call that needs storage is told while storage is down.
pub const STORAGE_UNAVAILABLE: &str = "storage is unavailable; try again shortly";

/// See the module documentation.
#[derive(Clone)]
pub struct FailFastLayer {
    health: StorageHealth,
    exempt: &'static [&'static str],
}

impl FailFastLayer {
    /// Rejects calls while `health` is down, except to the methods named in `exempt`
    /// (bare method names, such as `GetPublicKeys`), which do not use storage.
    pub fn new(health: StorageHealth, exempt: &'static [&'static str]) -> Self {
        Self { health, exempt }
    }

    /// Whether a call to `path` (`/package.Service/Method`) is answered without storage.
    fn rejects(&self, path: &str) -> bool {
        if self.health.is_up() {
            return false;
        }
        let method = path.rsplit('/').next().unwrap_or_default();
        !self.exempt.contains(&method)
    }
}

impl<S> tower::Layer<S> for FailFastLayer {
    type Service = FailFast<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FailFast {
            inner,
            layer: self.clone(),
        }
    }
}

/// `service` behind a [`FailFastLayer`] on the storage opened on `database_url`, still
/// named as `service` is. Call it after the store was opened, so that its monitor is found.
pub fn fail_fast<S>(database_url: &str, exempt: &'static [&'static str], service: S) -> Guarded<S> {
    use tonic::service::LayerExt;
    FailFastLayer::new(StorageHealth::of(database_url), exempt).named_layer(service)
}

/// A gRPC service behind [`FailFastLayer`], keeping its name for the router.
pub type Guarded<S> = tonic::service::Layered<FailFast<S>, S>;

/// A service behind [`FailFastLayer`].
#[derive(Clone)]
pub struct FailFast<S> {
    inner: S,
    layer: FailFastLayer,
}

impl<S, B, RB> tower::Service<http::Request<B>> for FailFast<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.layer.rejects(req.uri().path()) {
            metrics::counter!("storage_unavailable_fast_total").increment(1);
            let answer = Status::unavailable(STORAGE_UNAVAILABLE).into_http();
            return Box::pin(async move { Ok(answer) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    fn layer(up: bool) -> (FailFastLayer, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(up);
        (
            FailFastLayer::new(StorageHealth { up: rx }, &["GetPublicKeys"]),
            tx,
        )
    }

    #[test]
    fn calls_pass_while_storage_is_up_and_heal_when_it_returns() {
        let (layer, tx) = layer(true);
        assert!(!layer.rejects("/grpcchat.chat.v1.ChatService/SendMessage"));
        tx.send_replace(false);
        assert!(layer.rejects("/grpcchat.chat.v1.ChatService/SendMessage"));
        tx.send_replace(true);
        assert!(!layer.rejects("/grpcchat.chat.v1.ChatService/SendMessage"));
    }

    #[test]
    fn methods_without_storage_pass_during_an_outage() {
        let (layer, _tx) = layer(false);
        assert!(!layer.rejects("/grpcchat.auth.v1.AuthService/GetPublicKeys"));
        assert!(layer.rejects("/grpcchat.auth.v1.AuthService/Login"));
    }
}
