//! [`EventBus`], the seam through which chat-service publishes and its replicas subscribe:
//! [`NatsBus`](crate::NatsBus) between processes, [`LocalBus`](crate::LocalBus) inside one.
//! It lives with the event contract rather than in chat-service so that the in-process
//! bus's tap, which feeds the notifier, and the notifier itself share one definition of
//! what travels, without the notifier compiling the chat service.

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{envelope::Handled, event::ChatEvent, EventStream};

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
