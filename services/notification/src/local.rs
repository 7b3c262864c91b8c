//! The in-process event source of the all-in-one `chat-server`: chat-service's `LocalBus`
//! hands every event to this task through a bounded channel, in place of the JetStream
//! consumer. Handling is the same as `consumer.rs` (same notifier, same delivery records,
//! same retry on a transient failure). The tap itself is memory only, so each event comes
//! with a [`Handled`](chat_service::events::Handled) that is reported once the event is
//! handled: until then the chat service keeps its outbox row, and an event still queued
//! (or being retried) when the process stops is published again at the next start.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tracing::Instrument;

use chat_common::{trace, Shutdown};
use chat_service::events::{process_span, ChatEvent, Envelope};

use crate::{
    consumer::{drain, CONCURRENCY, RETRY_DELAY},
    notifier::Notifier,
};

/// Handles events from `events` until `shutdown` or until the bus is gone, then lets the
/// events being handled settle (see [`DRAIN`](crate::consumer::DRAIN)).
pub async fn run(events: mpsc::Receiver<Envelope>, notifier: Notifier, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    receive(events, notifier, shutdown, &permits).await;
    drain(&permits).await;
}

async fn receive(
    mut events: mpsc::Receiver<Envelope>,
    notifier: Notifier,
    shutdown: Shutdown,
    permits: &Arc<Semaphore>,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.wait() => return,
            event = events.recv() => event,
        };
        let Some(envelope) = event else {
            return;
        };
        let Envelope {
            event: ChatEvent::MessageCreated(message),
            parent,
            handled,
        } = envelope
        else {
            // Nothing to email about.
            if let Some(handled) = envelope.handled {
                handled.done();
            }
            continue;
        };
        // The handling continues the trace of the send that published the event.
        let span = process_span("process", &message, &parent);
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (notifier, shutdown) = (notifier.clone(), shutdown.clone());
        shutdown.clone().spawn(
            async move {
                loop {
                    match notifier.notify(&message).await {
                        Ok(()) => {
                            // A notify cut short by the shutdown is not done: the event
                            // comes again at the next start.
                            if let Some(handled) = handled.filter(|_| !shutdown.is_triggered()) {
                                handled.done();
                            }
                            break;
                        }
                        Err(e) if e.is_final() => {
                            tracing::info!(chat_id = message.chat_id, seq = message.seq, error = %e,
                            "nothing to notify");
                            if let Some(handled) = handled {
                                handled.done();
                            }
                            break;
                        }
                        Err(e) if !e.is_failure() => {
                            tracing::debug!(
                                chat_id = message.chat_id, seq = message.seq, reason = %e,
                                "emails held elsewhere; checking again later"
                            )
                        }
                        Err(e) => {
                            trace::record_error(&tracing::Span::current(), &e);
                            tracing::warn!(
                                chat_id = message.chat_id, seq = message.seq, error = %e,
                                "notifying failed; retrying"
                            )
                        }
                    }
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}
