//! The event bus that carries live events between replicas: NATS in production, an
//! in-process channel in the embedded server. Only the hub (`hub.rs`) uses it.
//!
//! Subjects are `<prefix>.<chat_id>.<kind>` with kind `message_created`,
//! `message_deleted`, `message_edited`, `chat_deleted`, `member_added`, `member_removed`
//! or `message_previewed` (prefix `chat` by default; tests use their own so they can share
//! one NATS). The payload is the `ConnectResponse` a stream would send,
//! protobuf-encoded. When a JetStream stream is configured it captures `<prefix>.>` and
//! publishes wait for its acknowledgement, so consumers that were down (notification)
//! get every event later.
//!
//! Ephemeral events (typing, presence: [`ChatEvent::Live`], see `presence.rs`) go to
//! `<prefix>_live.<chat_id>.<kind>` instead (kind `typing`, `presence` or
//! `presence_query`), always with a core NATS publish: outside `<prefix>.>`, so the
//! JetStream stream never stores them and the notifier never sees them. Their payloads are
//! protobuf too (`Typing`, and `presence.rs`'s `Beat` and `Query`). In process they share
//! the streams' channel but never reach the notifier's tap.
//!
//! An event carries the trace context of the operation that published it (W3C headers on
//! NATS, the context itself in process), and subscribers receive it in an [`Envelope`], so
//! that what they do with the event (fan-out, emails) is part of the send's trace.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use futures::{Stream, StreamExt};
use prost::Message as _;
use tokio::sync::broadcast;
use tracing::{field::Empty, Instrument, Span};

use chat_common::{
    event_stream::{self, StreamSettings},
    trace::{self, Parent},
};

use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};

use crate::live::LiveEvent;

/// One live event of a chat.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// A message was stored.
    MessageCreated(pb::Message),
    /// A message was deleted; its text is gone.
    MessageDeleted {
        /// The chat it was in.
        chat_id: i64,
        /// Its sequence number in the chat.
        seq: i64,
    },
    /// A message's text was replaced: the message as it is after the edit.
    MessageEdited(pb::Message),
    /// A chat was deleted with everything in it.
    ChatDeleted {
        /// The chat that is gone.
        chat_id: i64,
    },
    /// A user became a member.
    MemberAdded {
        /// The chat joined.
        chat_id: i64,
        /// Who joined.
        member: pb::Member,
    },
    /// A member left or was removed.
    MemberRemoved {
        /// The chat left.
        chat_id: i64,
        /// Who is no longer a member.
        user_id: i64,
    },
    /// A message got its link preview (stored with it by then).
    MessagePreviewed {
        /// The message's chat.
        chat_id: i64,
        /// The message's sequence number.
        seq: i64,
        /// The preview of its first https URL.
        preview: pb::LinkPreview,
    },
    /// Typing and presence: never stored, off the stored subjects (see the module doc).
    Live(LiveEvent),
}

impl ChatEvent {
    /// The chat the event is about; its subject and fan-out are the chat's.
    pub fn chat_id(&self) -> i64 {
        match self {
            ChatEvent::MessageCreated(m) | ChatEvent::MessageEdited(m) => m.chat_id,
            ChatEvent::MessageDeleted { chat_id, .. }
            | ChatEvent::ChatDeleted { chat_id }
            | ChatEvent::MemberAdded { chat_id, .. }
            | ChatEvent::MemberRemoved { chat_id, .. }
            | ChatEvent::MessagePreviewed { chat_id, .. } => *chat_id,
            ChatEvent::Live(e) => e.chat_id(),
        }
    }

    /// The event's name, the last part of its subject (`message_created`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ChatEvent::MessageCreated(_) => "message_created",
            ChatEvent::MessageDeleted { .. } => "message_deleted",
            ChatEvent::MessageEdited(_) => "message_edited",
            ChatEvent::ChatDeleted { .. } => "chat_deleted",
            ChatEvent::MemberAdded { .. } => "member_added",
            ChatEvent::MemberRemoved { .. } => "member_removed",
            ChatEvent::MessagePreviewed { .. } => "message_previewed",
            ChatEvent::Live(e) => e.kind(),
        }
    }

    /// The event as a `Connect` stream sends it.
    pub fn to_response(&self) -> pb::ConnectResponse {
        let event = match self {
            ChatEvent::MessageCreated(m) => Event::Message(m.clone()),
            ChatEvent::MessageDeleted { chat_id, seq } => {
                Event::MessageDeleted(pb::MessageDeleted {
                    chat_id: *chat_id,
                    seq: *seq,
                })
            }
            ChatEvent::MessageEdited(m) => Event::MessageEdited(pb::MessageEdited {
                message: Some(m.clone()),
            }),
            ChatEvent::ChatDeleted { chat_id } => {
                Event::ChatDeleted(pb::ChatDeleted { chat_id: *chat_id })
            }
            ChatEvent::MemberAdded { chat_id, member } => Event::MemberAdded(pb::MemberAdded {
                chat_id: *chat_id,
                member: Some(member.clone()),
            }),
            ChatEvent::MemberRemoved { chat_id, user_id } => {
                Event::MemberRemoved(pb::MemberRemoved {
                    chat_id: *chat_id,
                    user_id: *user_id,
                })
            }
            ChatEvent::MessagePreviewed {
                chat_id,
                seq,
                preview,
            } => Event::MessagePreviewed(pb::MessagePreviewed {
                chat_id: *chat_id,
                seq: *seq,
                link_preview: Some(preview.clone()),
            }),
            ChatEvent::Live(e) => {
                return pb::ConnectResponse {
                    event: e.to_event(),
                }
            }
        };
        pb::ConnectResponse { event: Some(event) }
    }

    /// The bytes published on the bus: the `ConnectResponse` it becomes, protobuf-encoded.
    pub fn encode(&self) -> Vec<u8> {
        self.to_response().encode_to_vec()
    }

    /// Reads what [`encode`](Self::encode) wrote; an error for an empty or ephemeral event,
    /// which never travels on the stored subjects.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Self> {
        let resp = pb::ConnectResponse::decode(bytes).context("decoding a chat event")?;
        match resp.event {
            Some(Event::Message(m)) => Ok(ChatEvent::MessageCreated(m)),
            Some(Event::MessageDeleted(d)) => Ok(ChatEvent::MessageDeleted {
                chat_id: d.chat_id,
                seq: d.seq,
            }),
            Some(Event::ChatDeleted(d)) => Ok(ChatEvent::ChatDeleted { chat_id: d.chat_id }),
            Some(Event::MessageEdited(pb::MessageEdited { message: Some(m) })) => {
                Ok(ChatEvent::MessageEdited(m))
            }
            Some(Event::MemberAdded(pb::MemberAdded {
                chat_id,
                member: Some(member),
            })) => Ok(ChatEvent::MemberAdded { chat_id, member }),
            Some(Event::MemberRemoved(r)) => Ok(ChatEvent::MemberRemoved {
                chat_id: r.chat_id,
                user_id: r.user_id,
            }),
            Some(Event::MessagePreviewed(pb::MessagePreviewed {
                chat_id,
                seq,
                link_preview: Some(preview),
            })) => Ok(ChatEvent::MessagePreviewed {
                chat_id,
                seq,
                preview,
            }),
            Some(Event::MessageEdited(_))
            | Some(Event::MemberAdded(_))
            | Some(Event::MessagePreviewed(_))
            | Some(Event::HistoryEnd(_))
            | None => {
                anyhow::bail!("not a chat event")
            }
            // Never published on the stored subjects.
            Some(Event::Typing(_)) | Some(Event::Presence(_)) => {
                anyhow::bail!("an ephemeral event on a stored subject")
            }
        }
    }
}

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

/// Tells the outbox that the consumer of a bus that is not durable handled an event.
#[derive(Debug, Clone)]
pub struct Handled {
    pub(crate) tx: tokio::sync::mpsc::UnboundedSender<crate::store::EventId>,
    pub(crate) id: crate::store::EventId,
}

impl Handled {
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
fn publish_span(system: &'static str, destination: &str, event: &ChatEvent) -> Span {
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
    if let ChatEvent::MessageCreated(m) | ChatEvent::MessageEdited(m) = event {
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
async fn traced_publish(
    span: Span,
    publish: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let result = publish.instrument(span.clone()).await;
    if let Err(e) = &result {
        trace::record_error(&span, e);
    }
    result
}

/// How events reach every replica (and the notifier): NATS between processes, or in
/// process for the embedded server and tests.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes an event to every replica.
    async fn publish(&self, event: &ChatEvent) -> anyhow::Result<()>;
    /// The events of one chat from now on.
    async fn subscribe(&self, chat_id: i64) -> anyhow::Result<EventStream>;
    /// Fires each time the bus reconnects after a loss, when events may have been missed.
    fn reconnects(&self) -> broadcast::Receiver<()>;

    /// Whether a successful publish means every consumer gets the event even if this
    /// process stops right after (JetStream has stored it). When not, the outbox keeps the
    /// row until the consumer reports it handled (`publish_handled`).
    fn durable(&self) -> bool {
        true
    }

    /// Publishes an event whose consumer calls `handled` once it handled it. Only buses
    /// that are not [`durable`](EventBus::durable) pass `handled` on.
    async fn publish_handled(&self, event: &ChatEvent, handled: Handled) -> anyhow::Result<()> {
        let _ = handled;
        self.publish(event).await
    }
}

/// NATS, optionally with a JetStream stream that keeps the events.
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: Option<async_nats::jetstream::Context>,
    prefix: String,
    reconnects: broadcast::Sender<()>,
}

impl NatsBus {
    /// The subject of an ephemeral event: outside `<prefix>.>`, which the stream keeps.
    fn live_subject(&self, chat_id: i64, kind: &str) -> String {
        format!("{}_live.{chat_id}.{kind}", self.prefix)
    }

    /// Publishes an ephemeral event with a core publish: never JetStream.
    async fn publish_live(&self, event: &LiveEvent) -> anyhow::Result<()> {
        let Some(payload) = event.encode() else {
            anyhow::bail!("a {} event is not published", event.kind());
        };
        self.client
            .publish(
                self.live_subject(event.chat_id(), event.kind()),
                payload.into(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("publishing to NATS: {e}"))
    }

    /// The ephemeral events of a chat, as [`ChatEvent::Live`].
    async fn subscribe_live(
        &self,
        chat_id: i64,
    ) -> anyhow::Result<impl Stream<Item = Envelope> + Send + 'static> {
        let sub = self
            .client
            .subscribe(self.live_subject(chat_id, "*"))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to NATS: {e}"))?;
        Ok(sub.filter_map(|msg| async move {
            let kind = msg.subject.rsplit('.').next().unwrap_or_default();
            match LiveEvent::decode(kind, &msg.payload) {
                Ok(event) => Some(Envelope {
                    event: ChatEvent::Live(event),
                    parent: Parent::default(),
                    handled: None,
                }),
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "ignoring a malformed live event");
                    None
                }
            }
        }))
    }

    /// Connects to `url`. With `stream` set, makes sure a JetStream stream of that name
    /// captures `<prefix>.>` with those settings (see [`chat_common::event_stream`]) and
    /// publishes through it.
    pub async fn connect(
        url: &str,
        prefix: &str,
        stream: Option<(&str, &StreamSettings)>,
    ) -> anyhow::Result<Self> {
        let (reconnects, _) = broadcast::channel(16);
        let tx = reconnects.clone();
        // The client re-subscribes after it reports Connected; a flush (PING/PONG, ordered
        // after those SUBs) makes sure the server has them before the hub reads storage,
        // so no event falls between the catch-up and the restored subscription.
        let cell: Arc<OnceLock<async_nats::Client>> = Arc::new(OnceLock::new());
        let callback_cell = cell.clone();
        let address = chat_common::nats::NatsAddress::parse(url);
        let client = address
            .apply(async_nats::ConnectOptions::new())
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let tx = tx.clone();
                let cell = callback_cell.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("NATS connected");
                            tokio::spawn(async move {
                                if let Some(client) = cell.get() {
                                    if let Err(e) = client.flush().await {
                                        tracing::warn!(error = %e, "flush after reconnect failed");
                                    }
                                }
                                let _ = tx.send(());
                            });
                        }
                        async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(address.url.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", address.url))?;
        let _ = cell.set(client.clone());
        let jetstream = match stream {
            None => None,
            Some((name, settings)) => {
                let js = async_nats::jetstream::new(client.clone());
                event_stream::ensure(&js, name, prefix, settings).await?;
                Some(js)
            }
        };
        Ok(Self {
            client,
            jetstream,
            prefix: prefix.to_owned(),
            reconnects,
        })
    }

    /// The NATS connection, which the presence and typing subjects share.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &ChatEvent) -> anyhow::Result<()> {
        if let ChatEvent::Live(live) = event {
            return self.publish_live(live).await;
        }
        let subject = format!("{}.{}.{}", self.prefix, event.chat_id(), event.kind());
        let payload = bytes::Bytes::from(event.encode());
        let span = publish_span("nats", &subject, event);
        let parent = Parent::of(&span);
        // Headers only when there is a trace to carry: without, the message is as before.
        let headers = parent.is_some().then(|| {
            let mut headers = async_nats::HeaderMap::new();
            parent.inject(|name, value| headers.insert(name, value));
            headers
        });
        traced_publish(span, async move {
            match &self.jetstream {
                Some(js) => {
                    let sent = match headers {
                        Some(h) => js.publish_with_headers(subject, h, payload).await,
                        None => js.publish(subject, payload).await,
                    };
                    sent.map_err(|e| anyhow::anyhow!("publishing to JetStream: {e}"))?
                        .await
                        .map_err(|e| anyhow::anyhow!("JetStream did not acknowledge: {e}"))?;
                }
                None => match headers {
                    Some(h) => self.client.publish_with_headers(subject, h, payload).await,
                    None => self.client.publish(subject, payload).await,
                }
                .map_err(|e| anyhow::anyhow!("publishing to NATS: {e}"))?,
            }
            Ok(())
        })
        .await
    }

    async fn subscribe(&self, chat_id: i64) -> anyhow::Result<EventStream> {
        let sub = self
            .client
            .subscribe(format!("{}.{}.*", self.prefix, chat_id))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to NATS: {e}"))?;
        let live = self.subscribe_live(chat_id).await?;
        let stored = sub.filter_map(|msg| async move {
            match ChatEvent::decode(&msg.payload) {
                Ok(event) => Some(Envelope {
                    event,
                    parent: Parent::extract(|name| {
                        msg.headers.as_ref()?.get(name).map(|v| v.as_str())
                    }),
                    handled: None,
                }),
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "ignoring a malformed event");
                    None
                }
            }
        });
        Ok(Box::pin(futures::stream::select(stored, live)))
    }

    fn reconnects(&self) -> broadcast::Receiver<()> {
        self.reconnects.subscribe()
    }
}

/// Events inside one process, for the embedded server: nothing crosses a process, so
/// nothing can be lost between publish and delivery. Streams read a broadcast channel (a
/// stream that falls behind is repaired from storage like after a NATS loss); the
/// notifier, which has no storage to repair from, reads a tap instead, the in-process
/// stand-in for the JetStream stream. What the tap holds is lost if the process stops, so
/// an event's outbox row stays until the notifier reports it handled, and the next start
/// publishes what is left (`outbox.rs`). The tap is bounded: when the notifier is that far
/// behind, a publish waits for room, so a sender faster than the emails it causes slows
/// down instead of growing the server's memory without end. The message is stored by then;
/// only its answer waits.
pub struct LocalBus {
    tx: broadcast::Sender<Envelope>,
    reconnects: broadcast::Sender<()>,
    tap: Option<tokio::sync::mpsc::Sender<Envelope>>,
}

/// Events the tap holds for a notifier that is behind.
pub const TAP_CAPACITY: usize = 65_536;

impl Default for LocalBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
            reconnects: broadcast::channel(1).0,
            tap: None,
        }
    }
}

impl LocalBus {
    /// A bus that also hands every published event, in order, to the returned receiver,
    /// which holds up to `capacity` of them.
    pub fn with_tap(capacity: usize) -> (Self, tokio::sync::mpsc::Receiver<Envelope>) {
        let (tap, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let bus = Self {
            tap: Some(tap),
            ..Self::default()
        };
        (bus, rx)
    }
}

impl LocalBus {
    async fn publish_with(
        &self,
        event: &ChatEvent,
        handled: Option<Handled>,
    ) -> anyhow::Result<()> {
        let span = publish_span("in-process", "in-process", event);
        let envelope = Envelope {
            event: event.clone(),
            parent: Parent::of(&span),
            handled: None,
        };
        traced_publish(span, async move {
            // Streams first: they are not held up by a notifier that is behind.
            let _ = self.tx.send(envelope.clone());
            match &self.tap {
                // Fails only when the reader is gone (shutting down): the row stays.
                Some(tap) => {
                    let _ = tap
                        .send(Envelope {
                            handled,
                            ..envelope
                        })
                        .await;
                }
                None => {
                    if let Some(handled) = handled {
                        handled.done();
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, event: &ChatEvent) -> anyhow::Result<()> {
        if let ChatEvent::Live(_) = event {
            // To the streams only: the notifier's tap is for stored events.
            let _ = self.tx.send(Envelope {
                event: event.clone(),
                parent: Parent::default(),
                handled: None,
            });
            return Ok(());
        }
        self.publish_with(event, None).await
    }

    /// With a tap, an event is handled when the notifier says so: until then it lives
    /// only in this process's memory.
    fn durable(&self) -> bool {
        self.tap.is_none()
    }

    async fn publish_handled(&self, event: &ChatEvent, handled: Handled) -> anyhow::Result<()> {
        self.publish_with(event, Some(handled)).await
    }

    async fn subscribe(&self, chat_id: i64) -> anyhow::Result<EventStream> {
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.tx.subscribe());
        let reconnects = self.reconnects.clone();
        Ok(Box::pin(rx.filter_map(move |e| {
            let reconnects = reconnects.clone();
            async move {
                match e {
                    Ok(e) if e.event.chat_id() == chat_id => Some(e),
                    Ok(_) => None,
                    // Lagged: events were skipped; the hub's gap check refills from storage.
                    Err(_) => {
                        let _ = reconnects.send(());
                        None
                    }
                }
            }
        })))
    }

    fn reconnects(&self) -> broadcast::Receiver<()> {
        self.reconnects.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64) -> ChatEvent {
        ChatEvent::MessageCreated(pb::Message {
            chat_id: 1,
            seq,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_full_tap_holds_the_publisher_back_and_loses_nothing() {
        let (bus, mut tap) = LocalBus::with_tap(2);
        let mut live = bus.subscribe(1).await.expect("subscribe");
        bus.publish(&message(1)).await.expect("publish");
        bus.publish(&message(2)).await.expect("publish");
        let event = message(3);
        let third = bus.publish(&event);
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut third)
                .await
                .is_err(),
            "a publish into a full tap waits"
        );
        // Streams are not held up by the tap.
        for seq in 1..=3 {
            match live.next().await.map(|e| e.event) {
                Some(ChatEvent::MessageCreated(m)) => assert_eq!(m.seq, seq),
                other => panic!("expected message {seq}, got {other:?}"),
            }
        }
        let seq_of = |e: Option<Envelope>| match e.map(|e| e.event) {
            Some(ChatEvent::MessageCreated(m)) => Some(m.seq),
            _ => None,
        };
        assert_eq!(seq_of(tap.recv().await), Some(1));
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("room made, the publish goes through")
            .expect("publish");
        for seq in 2..=3 {
            assert_eq!(seq_of(tap.recv().await), Some(seq));
        }
    }

    #[test]
    fn events_round_trip() {
        let events = [
            ChatEvent::MessageCreated(pb::Message {
                chat_id: 3,
                seq: 7,
                text: "привет 👋".into(),
                ..Default::default()
            }),
            ChatEvent::MessageDeleted { chat_id: 3, seq: 7 },
            ChatEvent::MessageEdited(pb::Message {
                chat_id: 3,
                seq: 7,
                text: "исправлено".into(),
                edited_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ChatEvent::ChatDeleted { chat_id: 3 },
            ChatEvent::MemberAdded {
                chat_id: 3,
                member: pb::Member {
                    user_id: 9,
                    username: "carol".into(),
                    joined_at: None,
                },
            },
            ChatEvent::MemberRemoved {
                chat_id: 3,
                user_id: 9,
            },
            ChatEvent::MessagePreviewed {
                chat_id: 3,
                seq: 7,
                preview: pb::LinkPreview {
                    url: "https://example.com/".into(),
                    title: "Example".into(),
                    ..Default::default()
                },
            },
        ];
        for e in events {
            assert_eq!(ChatEvent::decode(&e.encode()).unwrap(), e);
        }
        assert!(ChatEvent::decode(b"\xff\xff").is_err());
    }
}
