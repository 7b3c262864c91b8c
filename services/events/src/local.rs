//! [`LocalBus`]: events inside one process, for the embedded server and tests.

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use chat_common::trace::Parent;

use crate::{
    bus::EventBus,
    envelope::{publish_span, traced_publish, Envelope, Handled},
    event::ChatEvent,
    EventStream,
};

/// Events inside one process, for the embedded server: nothing crosses a process, so
/// nothing can be lost between publish and delivery. Streams read a broadcast channel (a
/// stream that falls behind is repaired from storage like after a NATS loss); the
/// notifier, which has no storage to repair from, reads a tap instead, the in-process
/// stand-in for the JetStream stream. What the tap holds is lost if the process stops, so
/// an event's outbox row stays until the notifier reports it handled, and the next start
/// publishes what is left (chat-service's `outbox.rs`). The tap is bounded: when the notifier is that far
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
    use std::time::Duration;

    use grpc_chat_proto::chat::v1 as pb;

    use super::*;

    fn message(seq: i64) -> ChatEvent {
        ChatEvent::MessageCreated(
            pb::Message {
                chat_id: 1,
                seq,
                ..Default::default()
            },
            Some(seq),
        )
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
                Some(ChatEvent::MessageCreated(m, v)) => assert_eq!((m.seq, v), (seq, Some(seq))),
                other => panic!("expected message {seq}, got {other:?}"),
            }
        }
        let seq_of = |e: Option<Envelope>| match e.map(|e| e.event) {
            Some(ChatEvent::MessageCreated(m, _)) => Some(m.seq),
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
}
