//! Distributed tracing across the services: one trace per request, however many services,
//! gRPC calls and events it crosses.
//!
//! A trace crosses a process boundary only as W3C trace context (`traceparent`,
//! `tracestate`): written into the metadata of every outgoing gRPC call by
//! [`TracedChannel`] (the channel every service client is built on) and into the headers of
//! every published event, and read back by [`ServerLayer`] (part of every server, see
//! `server.rs`) and by the event consumers through [`Parent`]. Every RPC gets a span named
//! and attributed after the OpenTelemetry RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`), which lasts until the response body (and with it
//! the status in the trailers) has gone through.
//!
//! All of it is off unless `telemetry` (chat-telemetry) installed an exporter ([`enabled`]): without one no
//! trace can be seen, so the hot path pays one relaxed atomic load per call and no span,
//! header or allocation. Spans of our own work go through [`otel_span!`](crate::otel_span)
//! for the same reason.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::future::Either;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{BoxError, Service};

use crate::local::{LocalRoutes, LocalService};
use tracing::{field::Empty, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported, so that trace context is worth creating and passing on
/// (set by `telemetry` when it installs an exporter).
#[inline]
pub fn enabled() -> bool {
    chat_telemetry::exporting()
}

/// An INFO span that exists only while traces are exported ([`enabled`]); otherwise
/// `Span::none()`, which costs nothing to enter, record or instrument with. Same syntax as
/// `tracing::info_span!`.
#[macro_export]
macro_rules! otel_span {
    ($($args:tt)+) => {
        if $crate::trace::enabled() {
            $crate::__tracing::info_span!($($args)+)
        } else {
            $crate::__tracing::Span::none()
        }
    };
}

/// Marks `span` as failed with `error` as its status description (OpenTelemetry's span
/// status, which is what trace viewers colour red).
pub fn record_error(span: &Span, error: &dyn fmt::Display) {
    span.record("otel.status_code", "ERROR");
    // `{:#}`: an error chain (anyhow) in full.
    span.record("otel.status_description", format!("{error:#}"));
}

/// Sets an attribute on `span`'s trace only (not a field its log lines show); nothing when
/// tracing is off.
pub fn set_attribute(span: &Span, key: &'static str, value: i64) {
    if enabled() && !span.is_none() {
        span.set_attribute(key, value);
    }
}

// --- Propagation -------------------------------------------------------------------------

/// The W3C propagator; stateless, so one for the process.
fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: std::sync::OnceLock<TraceContextPropagator> = std::sync::OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// The trace context of the operation that caused some work elsewhere, carried with that
/// work: in an event's headers over NATS, or beside the event on the in-process bus. Empty
/// when tracing is off or there was no trace.
#[derive(Clone, Debug, Default)]
pub struct Parent(Option<opentelemetry::Context>);

impl Parent {
    /// `span`'s context (nothing when tracing is off).
    pub fn of(span: &Span) -> Self {
        if enabled() && !span.is_none() {
            Self(Some(span.context()))
        } else {
            Self(None)
        }
    }

    /// Whether there is a context to pass on.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Writes the context as W3C headers through `set(name, value)` (an empty `tracestate`
    /// is left out).
    pub fn inject(&self, mut set: impl FnMut(&str, String)) {
        if let Some(cx) = &self.0 {
            let mut non_empty = |name: &str, value: String| {
                if !value.is_empty() {
                    set(name, value)
                }
            };
            propagator().inject_context(cx, &mut FnInjector(&mut non_empty));
        }
    }

    /// Reads a context from W3C headers through `get(name)`; empty when tracing is off.
    pub fn extract<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        let traceparent = if enabled() { get("traceparent") } else { None };
        if traceparent.is_none() {
            return Self(None);
        }
        let headers = W3cHeaders {
            traceparent,
            tracestate: get("tracestate"),
        };
        Self(Some(propagator().extract(&headers)))
    }

    /// Makes this context `span`'s parent (before `span` is first entered).
    pub fn adopt(&self, span: &Span) {
        if let Some(cx) = &self.0 {
            let _ = span.set_parent(cx.clone());
        }
    }
}

struct FnInjector<F>(F);

impl<F: FnMut(&str, String)> Injector for FnInjector<F> {
    fn set(&mut self, key: &str, value: String) {
        (self.0)(key, value)
    }
}

/// The two W3C headers, as read from a message.
struct W3cHeaders<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for W3cHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

// --- gRPC spans --------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// The span of one call of `path` (`/package.Service/Method`), named `package.Service/Method`.
fn rpc_span(side: Side, path: &str) -> Span {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = name,
        otel.kind = match side {
            Side::Client => "client",
            Side::Server => "server",
        },
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    // Attributes for the trace only, not for every log line inside the call.
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service.to_owned());
    span.set_attribute("rpc.method", method.to_owned());
    span
}

/// Records a call's gRPC status on its span. A client marks every failure as an error; a
/// server only those that are its own fault (the conventions' split: a NOT_FOUND is the
/// caller's business).
fn record_status(span: &Span, side: Side, code: i32, message: Option<&str>) {
    span.record("rpc.grpc.status_code", code);
    let server_fault = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
    let failed = match side {
        Side::Client => code != 0,
        Side::Server => server_fault,
    };
    if failed {
        let code_name = format!("{:?}", tonic::Code::from_i32(code));
        record_error(span, &message.unwrap_or(&code_name));
    }
}

fn header_status(headers: &http::HeaderMap) -> Option<(i32, Option<&str>)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok());
    Some((code, message))
}

/// Calls with no trace of their own worth keeping: health probes and reflection.
fn untraced(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// A response body that keeps its call's span open until the body has ended, enters it
/// while the body is produced (a server stream does its work there), and records the
/// status from the trailers.
struct TracedBody {
    inner: tonic::body::Body,
    span: Span,
    side: Side,
}

impl http_body::Body for TracedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((code, message)) = frame.trailers_ref().and_then(header_status) {
                    record_status(&this.span, this.side, code, message);
                }
            }
            Poll::Ready(Some(Err(status))) => record_status(
                &this.span,
                this.side,
                status.code() as i32,
                Some(status.message()),
            ),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Puts the status a response already carries in its headers (a failure answered without
/// a body) on the span, and hands the body the span to hold.
fn traced_response(
    response: http::Response<tonic::body::Body>,
    span: Span,
    side: Side,
) -> http::Response<tonic::body::Body> {
    if let Some((code, message)) = header_status(response.headers()) {
        record_status(&span, side, code, message);
    }
    response.map(|inner| tonic::body::Body::new(TracedBody { inner, span, side }))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The tonic channel every service client is built on: the lazily connected channel, with
/// a client span per call whose context goes out in the call's metadata. In a process that
/// serves the services it calls (`chat-server`), calls go to its own routes in process once
/// they are installed ([`crate::local`]).
#[derive(Clone, Debug)]
pub struct TracedChannel {
    inner: tonic::transport::Channel,
    local: Option<LocalRoutes>,
    /// The local routes `poll_ready` found, for the next `call`: the channel is only called
    /// after it said it was ready, and a call goes where readiness was asked.
    ready_local: Option<LocalService>,
}

impl TracedChannel {
    /// Traces the calls made on `inner`.
    pub fn new(inner: tonic::transport::Channel) -> Self {
        Self {
            inner,
            local: None,
            ready_local: None,
        }
    }

    /// Calls `local` in process once its routes are installed, and `inner` until then.
    pub fn with_local(self, local: LocalRoutes) -> Self {
        Self {
            local: Some(local),
            ..self
        }
    }
}

impl Service<http::Request<tonic::body::Body>> for TracedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_local.is_none() {
            self.ready_local = self.local.as_ref().and_then(LocalRoutes::get);
        }
        if self.ready_local.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let span = enabled().then(|| {
            // A child of whatever the caller is doing.
            let span = rpc_span(Side::Client, req.uri().path());
            Parent(Some(span.context())).inject(|name, value| {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::try_from(name),
                    http::HeaderValue::try_from(value),
                ) {
                    req.headers_mut().insert(name, value);
                }
            });
            span
        });
        let call: Self::Future = match self.ready_local.take() {
            Some(local) => Box::pin(crate::local::call(local, req)),
            None => {
                let call = self.inner.call(req);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
        };
        let Some(span) = span else {
            return call;
        };
        Box::pin(async move {
            match call.instrument(span.clone()).await {
                Ok(response) => Ok(traced_response(response, span, Side::Client)),
                Err(e) => {
                    // What tonic reports for a call that never reached the server.
                    record_status(
                        &span,
                        Side::Client,
                        tonic::Code::Unavailable as i32,
                        Some(&e.to_string()),
                    );
                    Err(e)
                }
            }
        })
    }
}

/// The server side: a span per call, the child of the caller's span when the call carries
/// trace context, around the handler and the response body.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerLayer;

impl<S> tower::Layer<S> for ServerLayer {
    type Service = ServerTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// The service [`ServerLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ServerTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !enabled() || untraced(req.uri().path()) {
            return Either::Left(self.inner.call(req));
        }
        let span = rpc_span(Side::Server, req.uri().path());
        let headers = req.headers();
        Parent::extract(|name| headers.get(name).and_then(|v| v.to_str().ok())).adopt(&span);
        let call = span.in_scope(|| self.inner.call(req));
        Either::Right(Box::pin(async move {
            let response = call.instrument(span.clone()).await?;
            Ok(traced_response(response, span, Side::Server))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(headers: &[(&str, &str)]) -> Vec<(String, String)> {
        chat_telemetry::mark_exporting();
        let parent = Parent::extract(|name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, value)| *value)
        });
        let mut written = Vec::new();
        parent.inject(|name, value| written.push((name.to_owned(), value)));
        written.sort();
        written
    }

    fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_parent_round_trips_through_headers() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with_state = [("traceparent", traceparent), ("tracestate", "vendor=value")];
        assert_eq!(round_trip(&with_state), owned(&with_state));
        // No empty `tracestate` goes out.
        let without = [("traceparent", traceparent)];
        assert_eq!(round_trip(&without), owned(&without));
        // Nothing to carry: nothing goes out.
        assert_eq!(round_trip(&[]), owned(&[]));
    }
}
