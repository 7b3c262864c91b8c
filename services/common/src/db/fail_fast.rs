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

use tonic::Status;

use super::StorageHealth;
use crate::layer::{CallHook, HookLayer, Hooked};

/// What a call that needs storage is told while storage is down.
pub const STORAGE_UNAVAILABLE: &str = "storage is unavailable; try again shortly";

/// See the module documentation.
pub type FailFastLayer = HookLayer<StorageGate>;

/// The hook of [`FailFastLayer`]: answers a call that needs storage UNAVAILABLE while the
/// storage is down, and lets every other call through untouched.
#[derive(Clone)]
pub struct StorageGate {
    health: StorageHealth,
    exempt: &'static [&'static str],
}

impl FailFastLayer {
    /// Rejects calls while `health` is down, except to the methods named in `exempt`
    /// (bare method names, such as `GetPublicKeys`), which do not use storage.
    pub fn new(health: StorageHealth, exempt: &'static [&'static str]) -> Self {
        HookLayer(StorageGate { health, exempt })
    }
}

impl StorageGate {
    /// Whether a call to `path` (`/package.Service/Method`) is answered without storage.
    fn rejects(&self, path: &str) -> bool {
        if self.health.is_up() {
            return false;
        }
        let method = path.rsplit('/').next().unwrap_or_default();
        !self.exempt.contains(&method)
    }
}

impl CallHook for StorageGate {
    type Note = ();

    fn on_request<B>(&self, req: &http::Request<B>) -> Result<(), Status> {
        if self.rejects(req.uri().path()) {
            metrics::counter!("storage_unavailable_fast_total").increment(1);
            return Err(Status::unavailable(STORAGE_UNAVAILABLE));
        }
        Ok(())
    }

    fn on_response<RB, E>((): (), _: &mut Result<http::Response<RB>, E>) {}
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
pub type FailFast<S> = Hooked<S, StorageGate>;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    fn layer(up: bool) -> (StorageGate, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(up);
        (
            FailFastLayer::new(StorageHealth { up: rx }, &["GetPublicKeys"]).0,
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
