//! Calls between the services of one process without the network.
//!
//! `chat-server` runs all four services, and they call each other: the saga calls chat and
//! the notifier for every saga, the notifier asks chat and auth for members and addresses.
//! Over loopback each of those calls is an HTTP/2 exchange through the kernel: two sockets,
//! the connection tasks of both ends and the thread wake-ups between them. Here the request
//! goes straight to the routes the server serves, under the same layers (metrics, the
//! server span, the status guard), and the response body streams back as it is. The
//! protobuf encoding and the gRPC framing stay, so a service cannot tell a local call from a
//! remote one, except that it has no peer address (no internal call needs one), and the
//! client's deadline is kept the way a channel keeps it: the `grpc-timeout` the call carries,
//! at most the channel's own ([`CALL_TIMEOUT`]).
//!
//! The routes exist only once the server assembles them, after the services were built
//! with their clients, so [`LocalRoutes`] is filled late ([`LocalRoutes::install`], by
//! `server::serve_parts`); a call made before that goes over loopback as before.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tonic::body::Body;
use tower::{util::BoxCloneSyncService, BoxError, ServiceBuilder, ServiceExt};

use crate::{guard::StatusGuardLayer, metrics::MetricsLayer, trace::ServerLayer};

/// The longest a call waits for its response, as the channels of `client::lazy_channel`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A server's routes under its layers, called in process.
pub type LocalService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// This process's own routes, once its server has assembled them; cheap to clone, shared by
/// every client that may call them.
#[derive(Clone, Default)]
pub struct LocalRoutes(Arc<OnceLock<LocalService>>);

impl std::fmt::Debug for LocalRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRoutes")
            .field("installed", &self.0.get().is_some())
            .finish()
    }
}

impl LocalRoutes {
    /// Serves local calls with `routes`, under the layers every server runs its services
    /// under (`server::builder`, in the same order). Only the first installation counts.
    pub fn install(&self, routes: tonic::service::Routes) {
        let layered = ServiceBuilder::new()
            .layer(MetricsLayer::default())
            .layer(ServerLayer)
            .layer(StatusGuardLayer::default())
            .service(routes);
        let layered =
            ServiceExt::<http::Request<Body>>::map_err(layered, |e| -> BoxError { e.into() });
        let _ = self.0.set(BoxCloneSyncService::new(layered));
    }

    /// The routes, once installed.
    pub(crate) fn get(&self) -> Option<LocalService> {
        self.0.get().cloned()
    }
}

/// Calls `svc` with `req`, for no longer than the call's `grpc-timeout` or
/// [`CALL_TIMEOUT`], whichever is shorter; a call cut off fails as a channel's would, with
/// [`tonic::TimeoutExpired`] (which the client reports as CANCELLED), and the handler's
/// work is dropped with it, as the server would drop it at the deadline.
pub(crate) async fn call(
    svc: LocalService,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    let limit = grpc_timeout(req.headers()).map_or(CALL_TIMEOUT, |t| t.min(CALL_TIMEOUT));
    match tokio::time::timeout(limit, svc.oneshot(req)).await {
        Ok(answer) => answer,
        Err(_) => Err(Box::new(tonic::TimeoutExpired(()))),
    }
}

/// The `grpc-timeout` header (digits and a unit, as the gRPC protocol writes it); `None`
/// when absent or malformed.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = (value.get(..split)?, value.get(split..)?);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", value.parse().expect("header"));
        h
    }

    #[test]
    fn grpc_timeouts_read_as_the_protocol_writes_them() {
        assert_eq!(grpc_timeout(&with("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&with("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(grpc_timeout(&with("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(&with("7u")), Some(Duration::from_micros(7)));
        assert_eq!(
            grpc_timeout(&with("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "5s", "-5S", "5 S", "1.5S"] {
            assert_eq!(grpc_timeout(&with(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
