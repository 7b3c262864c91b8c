//! What a subscriber receives: the event, the trace context it was published in, and (from
//! a bus that is not durable) the way to say it was handled.
//!
//! The trace context travels as W3C headers on NATS and as the context itself in process,
//! so that what a subscriber does with an event (a stream's fan-out, the notifier's
//! emails) is part of the trace of the send that published it. The spans of both ends are
//! made here, after the OpenTelemetry messaging conventions, so that the publisher and
//! every consumer name them alike.

use std::pin::Pin;

use futures::Stream;
use tracing::{field::Empty, Instrument, Span};

use chat_common::trace::{self, Parent};
use grpc_chat_proto::chat::v1 as pb;

use crate::event::{ChatEvent, MEMBERS_VERSION_HEADER};

/// An event as subscribers receive it, with the trace context it was published in.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The event itself.
    pub event: ChatEvent,
    /// The publisher's span (empty when tracing is off).
    pub parent: Parent,
    /// On the in-process tap only: to be called once the event is handled, so that its
    /// outbox row is removed (until then a restart publishes it again).
    pub handled: Option<Handled>,
}

impl Envelope {
    /// The stored event a NATS message carries, with the trace context of its headers;
    /// an error when the payload is not one. The replicas' subscriptions and the
    /// notifier's JetStream consumer read messages alike through this.
    pub fn from_nats(message: &async_nats::Message) -> anyhow::Result<Self> {
        let mut event = ChatEvent::decode(&message.payload)?;
        if let ChatEvent::MessageCreated(_, version) = &mut event {
            // A header that does not parse is as good as none: the notifier reads the
            // members afresh for a message without a version.
            *version = message
                .headers
                .as_ref()
                .and_then(|h| h.get(MEMBERS_VERSION_HEADER))
                .and_then(|v| v.as_str().parse().ok());
        }
        Ok(Self {
            event,
            parent: Parent::extract(|name| message.headers.as_ref()?.get(name).map(|v| v.as_str())),
            handled: None,
        })
    }
}

/// Tells the outbox that the consumer of a bus that is not durable handled an event: the
/// publisher keeps the event's outbox row (identified by `id`) until then, because what
/// such a bus holds is lost when the process stops.
#[derive(Debug, Clone)]
pub struct Handled {
    tx: tokio::sync::mpsc::UnboundedSender<i64>,
    id: i64,
}

impl Handled {
    /// A report of outbox row `id` sent to `tx`, whose reader removes the row.
    pub fn new(tx: tokio::sync::mpsc::UnboundedSender<i64>, id: i64) -> Self {
        Self { tx, id }
    }

    /// The event is handled (or there was nothing to do with it): its row may go.
    pub fn done(self) {
        // Gone only when the service stops: the row stays and is published again.
        let _ = self.tx.send(self.id);
    }
}

/// The events a subscription receives, in the order the bus delivered them.
pub type EventStream = Pin<Box<dyn Stream<Item = Envelope> + Send>>;

/// The producer span of publishing `event` to `destination` over `system` (`nats`, or
/// `in-process`), after the OpenTelemetry messaging conventions.
pub(crate) fn publish_span(system: &'static str, destination: &str, event: &ChatEvent) -> Span {
    let span = chat_common::otel_span!(
        "publish",
        otel.name = format!("publish {}", event.kind()),
        otel.kind = "producer",
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        chat.id = event.chat_id(),
        message.seq = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if let ChatEvent::MessageCreated(m, _) | ChatEvent::MessageEdited(m) = event {
        span.record("message.seq", m.seq);
    }
    span
}

/// The consumer span of handling one new message's event (`operation`: `process`,
/// `deliver`), the child of the span that published it, as the messaging conventions have
/// it for an event handled on its own. `Span::none()` when tracing is off.
pub fn process_span(operation: &'static str, message: &pb::Message, parent: &Parent) -> Span {
    if !trace::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "process",
        otel.name = format!("{operation} message_created"),
        otel.kind = "consumer",
        messaging.operation.type = "process",
        messaging.operation.name = operation,
        chat.id = message.chat_id,
        message.seq = message.seq,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    parent.adopt(&span);
    span
}

/// Runs a publish inside its span, recording a failure on it.
pub(crate) async fn traced_publish(
    span: Span,
    publish: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let result = publish.instrument(span.clone()).await;
    if let Err(e) = &result {
        trace::record_error(&span, e);
    }
    result
}
