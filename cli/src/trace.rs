//! `--trace`: each command the user runs starts a trace, and every call it makes carries
//! that trace's context (W3C `traceparent`), so the services' work for the command joins it:
//! the user's command and the server's work are one trace, whose id the client prints.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set as well, the command itself is exported as the
//! trace's root span (`chat <command>`), the way the services export theirs; without it
//! the ids are made up here and the trace's root is the first server's span. Without
//! `--trace` nothing is added to any call.

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    trace::{SdkTracerProvider, Span},
    Resource,
};
use tonic::{body::Body, transport::Channel};

use crate::error::CliError;

/// The `traceparent` of the command running now, shared by every channel.
#[derive(Clone, Default)]
struct Current(Arc<Mutex<Option<http::HeaderValue>>>);

impl Current {
    fn set(&self, value: Option<http::HeaderValue>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    fn get(&self) -> Option<http::HeaderValue> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A channel that adds the running command's `traceparent` to every call.
#[derive(Clone)]
pub struct TracedChannel {
    inner: Channel,
    current: Current,
}

impl tower::Service<http::Request<Body>> for TracedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(traceparent) = self.current.get() {
            req.headers_mut().insert("traceparent", traceparent);
        }
        tower::Service::call(&mut self.inner, req)
    }
}

/// Starts a trace per command when asked to.
pub struct Tracer {
    enabled: bool,
    current: Current,
    /// Set when the command's own span is exported.
    provider: Option<SdkTracerProvider>,
}

/// The trace of one command, until [`Tracer::end`].
pub struct CommandTrace {
    /// The trace's id, 32 hex digits as in `traceparent`, printed after the command.
    pub trace_id: String,
    span: Option<Span>,
}

impl Tracer {
    /// A tracer that traces commands when `enabled`; must be made inside the runtime (the
    /// exporter, if any, connects lazily on it).
    pub fn new(enabled: bool) -> Result<Self, CliError> {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty());
        let provider = match endpoint {
            Some(endpoint) if enabled => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(|e| CliError::new(format!("cannot export traces: {e}")))?;
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(Resource::builder().with_service_name("chat").build())
                        .build(),
                )
            }
            _ => None,
        };
        Ok(Self {
            enabled,
            current: Current::default(),
            provider,
        })
    }

    /// `inner`, adding the running command's trace context to its calls.
    pub fn channel(&self, inner: Channel) -> TracedChannel {
        TracedChannel {
            inner,
            current: self.current.clone(),
        }
    }

    /// Starts the trace of `command`; `None` without `--trace`.
    pub fn start(&self, command: &str) -> Option<CommandTrace> {
        if !self.enabled {
            return None;
        }
        let (trace_id, span_id, span) = match &self.provider {
            Some(provider) => {
                let tracer = provider.tracer("chat");
                let span = tracer
                    .span_builder(format!("chat {command}"))
                    .with_kind(SpanKind::Client)
                    .start_with_context(&tracer, &opentelemetry::Context::new());
                let ids = span.span_context();
                (
                    ids.trace_id().to_string(),
                    ids.span_id().to_string(),
                    Some(span),
                )
            }
            None => {
                let random = || uuid::Uuid::new_v4().simple().to_string();
                (random(), random()[..16].to_owned(), None)
            }
        };
        let traceparent = format!("00-{trace_id}-{span_id}-01");
        self.current
            .set(http::HeaderValue::try_from(traceparent).ok());
        Some(CommandTrace { trace_id, span })
    }

    /// Ends a command's trace: later calls carry none until the next [`Tracer::start`].
    pub fn end(&self, trace: CommandTrace) {
        self.current.set(None);
        if let Some(mut span) = trace.span {
            span.end();
        }
    }

    /// Sends the spans not yet exported; waits on a blocking thread, since the exporter
    /// needs the runtime's workers meanwhile.
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            if let Ok(Err(e)) = flushed {
                crate::output::note(&format!("warning: traces not exported: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_traced_command_sets_the_traceparent_of_its_calls_only() {
        let tracer = Tracer::new(true).expect("tracer");
        assert!(tracer.current.get().is_none());
        let trace = tracer.start("chats").expect("a trace");
        let traceparent = tracer.current.get().expect("traceparent");
        let traceparent = traceparent.to_str().expect("ascii");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], trace.trace_id);
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        tracer.end(trace);
        assert!(tracer.current.get().is_none());
    }

    #[tokio::test]
    async fn without_the_flag_nothing_is_traced() {
        let tracer = Tracer::new(false).expect("tracer");
        assert!(tracer.start("chats").is_none());
        assert!(tracer.current.get().is_none());
    }
}
