//! An OTLP trace receiver inside the test process: the OpenTelemetry collector's gRPC
//! `TraceService`, keeping every span it is sent, so a test can point services (in this
//! process or in child processes, through `OTEL_EXPORTER_OTLP_ENDPOINT`) at it and look at
//! the traces they export. No collector or Jaeger binary needed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value, AnyValue, KeyValue},
    trace::v1::{span::SpanKind, status::StatusCode},
};
use tonic::{Request, Response, Status};

use chat_common::Shutdown;

/// One exported span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Hex, as in `traceparent`.
    pub trace_id: String,
    /// Hex.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The span's name as exported.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    /// The exporting process's `service.name`.
    pub service: String,
    /// Every attribute, its value as text.
    pub attributes: BTreeMap<String, String>,
    /// Whether the span's status is ERROR.
    pub error: bool,
    /// Start time, nanoseconds since the epoch.
    pub start: u64,
}

impl ReceivedSpan {
    /// The attribute `key`, as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<ReceivedSpan>>>);

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn kind(k: i32) -> &'static str {
    match SpanKind::try_from(k) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "internal",
    }
}

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    received.push(ReceivedSpan {
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        name: s.name,
                        kind: kind(s.kind),
                        service: service.clone(),
                        attributes: attributes(&s.attributes),
                        error: s
                            .status
                            .is_some_and(|st| st.code == StatusCode::Error as i32),
                        start: s.start_time_unix_nano,
                    });
                }
            }
        }
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(received);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stops when dropped.
pub struct TraceReceiver {
    /// The address to give as the OTLP endpoint (`http://<addr>`).
    pub addr: SocketAddr,
    collected: Collected,
    shutdown: Shutdown,
}

impl Drop for TraceReceiver {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl TraceReceiver {
    /// Serves on a free loopback port.
    pub async fn start() -> Self {
        let listener = crate::free_listener().await;
        let addr = listener.local_addr().expect("addr");
        let collected = Collected::default();
        let shutdown = Shutdown::new();
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collected.clone()));
        tokio::spawn(crate::serve(router, listener, shutdown.clone()));
        Self {
            addr,
            collected,
            shutdown,
        }
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should say.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.collected
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// The spans of `trace_id` once `complete` says they are all there (spans arrive in
    /// batches, in the order they end), or as they are after `timeout`.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        timeout: Duration,
        complete: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.trace(trace_id);
            if complete(&spans) || tokio::time::Instant::now() > give_up {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A trace as an indented tree, each span with its kind, service, id and the attributes
/// worth reading; spans whose parent is not in `spans` are roots (their parent id shown).
pub fn render_tree(spans: &[ReceivedSpan]) -> String {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&ReceivedSpan>> = HashMap::new();
    let mut roots = Vec::new();
    let mut spans: Vec<&ReceivedSpan> = spans.iter().collect();
    spans.sort_by_key(|s| s.start);
    for s in spans.iter().copied() {
        if ids.contains(s.parent_span_id.as_str()) {
            children
                .entry(s.parent_span_id.as_str())
                .or_default()
                .push(s);
        } else {
            roots.push(s);
        }
    }
    const SHOWN: [&str; 9] = [
        "rpc.grpc.status_code",
        "saga.id",
        "chat.id",
        "message.seq",
        "recipient_count",
        "recipient.id",
        "email.attempt",
        "messaging.system",
        "messaging.destination.name",
    ];
    fn walk(
        out: &mut String,
        s: &ReceivedSpan,
        depth: usize,
        children: &HashMap<&str, Vec<&ReceivedSpan>>,
        roots: bool,
    ) {
        let attrs: Vec<String> = SHOWN
            .iter()
            .filter_map(|k| s.attr(k).map(|v| format!("{k}={v}")))
            .collect();
        let _ = write!(
            out,
            "{:indent$}{} [{}, {}] span {}",
            "",
            s.name,
            s.kind,
            s.service,
            s.span_id,
            indent = depth * 2
        );
        if roots {
            let _ = write!(out, " parent {}", s.parent_span_id);
        }
        if s.error {
            out.push_str(" ERROR");
        }
        if !attrs.is_empty() {
            let _ = write!(out, " {}", attrs.join(" "));
        }
        out.push('\n');
        for c in children.get(s.span_id.as_str()).into_iter().flatten() {
            walk(out, c, depth + 1, children, false);
        }
    }
    let mut out = String::new();
    if let Some(first) = spans.first() {
        let _ = writeln!(out, "trace {}", first.trace_id);
    }
    for r in roots {
        walk(&mut out, r, 0, &children, true);
    }
    out
}
