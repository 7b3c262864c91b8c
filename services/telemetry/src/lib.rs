//! Logs and traces, set up once by each binary's `main` (never by library code): the
//! services' (through `chat_common::telemetry`, which re-exports this crate) and the
//! operator's. A crate of its own because the operator must get the same setup without
//! chat-common's database drivers and gRPC server.
//!
//! `RUST_LOG` filters the logs (default `info`); `LOG_FORMAT=json` switches to one JSON
//! object per line for log collectors; `OTEL_EXPORTER_OTLP_ENDPOINT` turns on OpenTelemetry
//! trace export over OTLP/gRPC, and with it trace propagation (chat-common's `trace.rs`,
//! which asks [`exporting`]).
//!
//! Traces have their own filter (`info`, whatever `RUST_LOG` says), so quieting the logs
//! does not cut spans out of the traces other services continue. While a trace is being
//! exported, every log line written inside it ends with its `trace_id` and `span_id` (JSON:
//! two more keys), which is how a line leads to its trace.

#![warn(missing_docs)]

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::{
    fmt::{
        format::{Format, Json, Writer},
        FmtContext, FormatEvent, FormatFields,
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
    EnvFilter, Layer,
};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported, so that trace context is worth creating and passing on: the
/// hot path asks this (one relaxed load) before it builds any span or header.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes [`exporting`] true without an exporter: for tests of the propagation code, which
/// is off unless spans are exported.
#[doc(hidden)]
pub fn mark_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// The variable's value, or `None` when unset or blank: telemetry is read before (and
/// without) any configuration struct.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Flushes pending spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("flushing traces failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber for `service_name`, exporting traces when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(service_name: &str) -> anyhow::Result<TelemetryGuard> {
    init_with(
        service_name,
        var(chat_env::OTEL_EXPORTER_OTLP_ENDPOINT).as_deref(),
        "info",
    )
}

/// [`init`] with the OTLP endpoint given rather than read from the environment, and the
/// log filter used when `RUST_LOG` is unset: for a test that runs services in its own
/// process and collects their spans.
pub fn init_with(
    service_name: &str,
    otlp_endpoint: Option<&str>,
    default_log_filter: &str,
) -> anyhow::Result<TelemetryGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_log_filter));
    let json = var(chat_env::LOG_FORMAT).is_some_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true),
            ))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .event_format(WithTraceIds(TextFormats::default()))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };

    let mut provider = None;
    let otel_layer = match otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let p = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(service_name.to_owned())
                        .build(),
                )
                .build();
            let tracer = p.tracer(service_name.to_owned());
            provider = Some(p);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(EnvFilter::new("info")),
            )
        }
    };

    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()?;
    if provider.is_some() {
        mark_exporting();
    }
    Ok(TelemetryGuard { provider })
}

/// `spawn_blocking` that carries the current span onto the blocking pool, so work done
/// there (bcrypt) is logged and traced under the request that asked for it.
pub fn spawn_blocking_with_tracing<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

/// The trace and span id of the span an event happened in, when that span is exported.
fn trace_ids<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let span = event
        .parent()
        .and_then(|id| ctx.span(id))
        .or_else(|| ctx.lookup_current())?;
    let extensions = span.extensions();
    let data = extensions.get::<OtelData>()?;
    let trace_id = data.trace_id()?;
    if trace_id == opentelemetry::TraceId::INVALID {
        return None;
    }
    Some((trace_id.to_string(), data.span_id()?.to_string()))
}

/// tracing-subscriber's own formatter, with the event's trace and span id added when it
/// has them. The stock formatters cannot take extra fields, so the line is written by the
/// stock formatter into a buffer and the ids are added to its end: ` trace_id=… span_id=…`
/// in text, two more keys in JSON. A line outside any trace is written as before.
struct WithTraceIds<F>(F);

/// The stock text format, once following the writer's colour setting and once with colour
/// forced on or off (a buffer has none of its own).
struct TextFormats {
    follow: Format,
    colour: Format,
    plain: Format,
}

impl Default for TextFormats {
    fn default() -> Self {
        Self {
            follow: Format::default(),
            colour: Format::default().with_ansi(true),
            plain: Format::default().with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for WithTraceIds<TextFormats>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = trace_ids(ctx, event) else {
            return self.0.follow.format_event(ctx, writer, event);
        };
        let format = if writer.has_ansi_escapes() {
            &self.0.colour
        } else {
            &self.0.plain
        };
        let mut line = String::new();
        format.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} trace_id={trace_id} span_id={span_id}")
    }
}

impl<S, N> FormatEvent<S, N> for WithTraceIds<Format<Json>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = trace_ids(ctx, event) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // One object per line: `{...}\n`. The ids are hex, nothing to escape.
        let object = line.trim_end().strip_suffix('}').ok_or(fmt::Error)?;
        writeln!(
            writer,
            "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Logs one line outside any span and one inside an exported span, through a
    /// subscriber shaped like [`init_with`]'s; returns the output and the span's ids.
    fn log_twice<L>(fmt_layer: impl FnOnce(Lines) -> L) -> (String, String, String)
    where
        L: Layer<tracing_subscriber::Registry> + Send + Sync,
    {
        let lines = Lines::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(fmt_layer(lines.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
            let cx = tracing_opentelemetry::OpenTelemetrySpanExt::context(&span);
            let sc = opentelemetry::trace::TraceContextExt::span(&cx)
                .span_context()
                .clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        (lines.text(), trace_id, span_id)
    }

    #[test]
    fn text_lines_inside_a_trace_end_with_its_ids() {
        let (out, trace_id, span_id) = log_twice(|w| {
            tracing_subscriber::fmt::layer()
                .event_format(WithTraceIds(TextFormats::default()))
                .with_ansi(false)
                .with_writer(w)
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].ends_with("outside"), "{out}");
        assert!(!lines[0].contains("trace_id"), "{out}");
        assert!(
            lines[1].ends_with(&format!(
                "inside answer=42 trace_id={trace_id} span_id={span_id}"
            )),
            "{out}"
        );
    }

    #[test]
    fn json_lines_inside_a_trace_carry_its_ids() {
        let (out, trace_id, span_id) = log_twice(|w| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .event_format(WithTraceIds(
                    tracing_subscriber::fmt::format()
                        .json()
                        .with_current_span(true),
                ))
                .with_writer(w)
        });
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].get("trace_id").is_none(), "{out}");
        assert_eq!(lines[1]["trace_id"], trace_id.as_str(), "{out}");
        assert_eq!(lines[1]["span_id"], span_id.as_str(), "{out}");
        assert_eq!(lines[1]["fields"]["answer"], 42, "{out}");
        assert_eq!(lines[1]["span"]["name"], "work", "{out}");
    }
}
