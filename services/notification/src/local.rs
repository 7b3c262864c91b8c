//! The in-process [`EventSource`] of the all-in-one `chat-server`: the `LocalBus` hands
//! every event to this source through a bounded channel, in place of the JetStream
//! consumer. The tap is memory only, so it cannot take an event back: the loop retries a
//! failed event itself ([`Retry::Here`]), and each event comes with a
//! [`Handled`](chat_events::Handled) that is reported once the event is done with. Until
//! then the chat service keeps its outbox row, and an event still queued (or being
//! retried) when the process stops is published again at the next start.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use chat_common::Shutdown;
use chat_events::{Envelope, Handled};

use crate::source::{Delivery, Done, EventSource, Retry, Settle};

/// The events of an in-process bus's tap (`LocalBus::with_tap`).
pub struct LocalSource {
    tap: mpsc::Receiver<Envelope>,
}

impl LocalSource {
    /// The source reading `tap`.
    pub fn new(tap: mpsc::Receiver<Envelope>) -> Self {
        Self { tap }
    }
}

#[async_trait]
impl EventSource for LocalSource {
    async fn next(&mut self, shutdown: &Shutdown) -> Option<Delivery> {
        let envelope = tokio::select! {
            _ = shutdown.wait() => return None,
            envelope = self.tap.recv() => envelope?,
        };
        Some(Delivery {
            event: envelope.event,
            parent: envelope.parent,
            settle: Box::new(Report {
                handled: envelope.handled,
                shutdown: shutdown.clone(),
            }),
        })
    }
}

/// Reports an event handled to the outbox that keeps its row.
struct Report {
    handled: Option<Handled>,
    /// A notify that ends while this is triggered may have been cut short: not reported.
    shutdown: Shutdown,
}

#[async_trait]
impl Settle for Report {
    async fn done(self: Box<Self>, done: Done) {
        // A notify cut short by the shutdown is not done: the event comes again at the
        // next start.
        if done == Done::Notified && self.shutdown.is_triggered() {
            return;
        }
        if let Some(handled) = self.handled {
            handled.done();
        }
    }

    async fn failed(self: Box<Self>, _: Duration) -> Retry {
        Retry::Here(self)
    }
}
