//! Where the notifier's events come from, and the one loop that handles them.
//!
//! There are two sources: the JetStream durable consumer every replica shares
//! (`consumer.rs`), and the in-process bus's tap of the all-in-one `chat-server`
//! (`local.rs`). They differ only in how an event is taken and settled, so that is all an
//! [`EventSource`] and its [`Settle`] say; [`run`] does the rest once for both: it pulls
//! an event, handles it under a semaphore of [`CONCURRENCY`], in the span that continues the
//! trace of the send that published it ([`process_span`]), retries a transient failure
//! after [`RETRY_DELAY`] unless the failure is final, settles the event once it is done,
//! and at shutdown waits up to [`DRAIN`] for the events being handled.
//!
//! A transient failure is retried by whoever can: JetStream takes the event back (a nak
//! with the delay) and delivers it again, possibly to another replica; the tap cannot, so
//! the loop keeps the event and tries again itself ([`Retry`]). Duplicates that either may
//! cause are absorbed by the delivery records (see `notifier.rs`).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tracing::Instrument;

use chat_common::{
    trace::{self, Parent},
    Shutdown,
};
use chat_events::{process_span, ChatEvent};
use grpc_chat_proto::chat::v1 as pb;

use crate::{error::NotificationError, notifier::Notifier};

/// Events processed at once by one replica.
pub const CONCURRENCY: usize = 32;
/// How long a failed event waits before it is tried again.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long a stop waits for the events being handled: an email on its way is recorded,
/// a retry waiting for its next try gives its claim back, and the event is settled
/// (acknowledged, or left to come again) before the process exits.
pub const DRAIN: Duration = Duration::from_secs(5);

/// A stream of chat events to notify about; the seam between the notifier and the bus
/// that carries them, so that the split service and `chat-server` run the same loop.
#[async_trait]
pub trait EventSource: Send + 'static {
    /// The next event, waiting for one; `None` once `shutdown` is triggered or the source
    /// is gone for good. A source that can recover from an error (a lost pull) does so here.
    async fn next(&mut self, shutdown: &Shutdown) -> Option<Delivery>;
}

/// One event taken from a source, to be settled exactly once.
pub struct Delivery {
    /// The event.
    pub event: ChatEvent,
    /// The trace context it was published in.
    pub parent: Parent,
    /// Tells the source what became of it.
    pub settle: Box<dyn Settle>,
}

/// How an event was done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Its emails went out (or are recorded as failed for good).
    Notified,
    /// There was nothing to email: not a new message, or one that is gone.
    NothingToDo,
}

/// What became of an event that failed for now.
pub enum Retry {
    /// The source took it back and delivers it again after the delay.
    Redelivered,
    /// The source cannot redeliver: the loop keeps the event and tries it again itself.
    Here(Box<dyn Settle>),
}

/// The source's side of one event: acknowledging it, or taking it back. An event dropped
/// without either (a retry cut short at shutdown) comes again later, from the source's
/// own store (JetStream's `ack_wait`, chat-service's outbox at the next start).
#[async_trait]
pub trait Settle: Send + 'static {
    /// The event is done with and must not come again.
    async fn done(self: Box<Self>, done: Done);
    /// The event failed for now and must be tried again after `delay`.
    async fn failed(self: Box<Self>, delay: Duration) -> Retry;
}

/// Handles the events of `source` until `shutdown` or until the source is gone, then lets
/// the events being handled settle (see [`DRAIN`]).
pub async fn run(mut source: Box<dyn EventSource>, notifier: Notifier, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(delivery) = source.next(&shutdown).await {
        let Delivery {
            event: ChatEvent::MessageCreated(message, members_version),
            parent,
            settle,
        } = delivery
        else {
            delivery.settle.done(Done::NothingToDo).await;
            continue;
        };
        // The handling continues the trace of the send that published the event.
        let span = process_span("process", &message, &parent);
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (notifier, stop) = (notifier.clone(), shutdown.clone());
        shutdown.spawn(
            async move {
                handle(&notifier, &stop, &message, members_version, settle).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    drain(&permits).await;
}

/// Waits, up to [`DRAIN`], until every handler has given its permit back.
async fn drain(permits: &Semaphore) {
    if tokio::time::timeout(DRAIN, permits.acquire_many(CONCURRENCY as u32))
        .await
        .is_err()
    {
        tracing::warn!("events still being handled at exit; they come again");
    }
}

/// Notifies `message` until it is done with, or failed and the source took it back, or the
/// shutdown stops a retry that waits (the event then comes again).
async fn handle(
    notifier: &Notifier,
    shutdown: &Shutdown,
    message: &pb::Message,
    members_version: Option<i64>,
    mut settle: Box<dyn Settle>,
) {
    loop {
        let error = match notifier.notify(message, members_version).await {
            Ok(()) => return settle.done(Done::Notified).await,
            Err(e) => e,
        };
        let (chat_id, seq) = (message.chat_id, message.seq);
        if error.is_final() {
            tracing::info!(chat_id, seq, error = %error, "nothing to notify");
            return settle.done(Done::NothingToDo).await;
        }
        match &error {
            NotificationError::Held(reason) => {
                tracing::debug!(chat_id, seq, reason = %reason,
                    "emails held elsewhere; the event comes again");
            }
            NotificationError::Unavailable(_) => {
                trace::record_error(&tracing::Span::current(), &error);
                tracing::warn!(chat_id, seq, error = %error, "event will be retried");
            }
            _ => {
                trace::record_error(&tracing::Span::current(), &error);
                tracing::error!(chat_id, seq, error = ?error, "event will be retried");
            }
        }
        settle = match settle.failed(RETRY_DELAY).await {
            Retry::Redelivered => return,
            Retry::Here(settle) => settle,
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}
