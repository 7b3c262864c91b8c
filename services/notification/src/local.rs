//! The in-process event source of the all-in-one `chat-server`: chat-service's `LocalBus`
//! hands every event to this task through a bounded channel, in place of the JetStream
//! consumer. Handling is the same as `consumer.rs` (same notifier, same delivery records,
//! same retry on a transient failure); what differs is durability: an event still queued
//! when the process stops is not replayed at the next start (messages sent through the
//! saga are unaffected, the saga asks for their notification itself).

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use chat_common::Shutdown;
use chat_service::events::ChatEvent;

use crate::{
    consumer::{CONCURRENCY, RETRY_DELAY},
    notifier::Notifier,
};

/// Handles events from `events` until `shutdown` or until the bus is gone.
pub async fn run(mut events: mpsc::Receiver<ChatEvent>, notifier: Notifier, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    loop {
        let event = tokio::select! {
            _ = shutdown.wait() => return,
            event = events.recv() => event,
        };
        let Some(ChatEvent::MessageCreated(message)) = event else {
            if event.is_none() {
                return;
            }
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (notifier, shutdown) = (notifier.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                match notifier.notify(&message).await {
                    Ok(()) => break,
                    Err(e) if e.is_final() => {
                        tracing::info!(chat_id = message.chat_id, seq = message.seq, error = %e,
                            "nothing to notify");
                        break;
                    }
                    Err(e) => tracing::warn!(
                        chat_id = message.chat_id, seq = message.seq, error = %e,
                        "notifying failed; retrying"
                    ),
                }
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
            drop(permit);
        });
    }
}
