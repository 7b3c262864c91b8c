//! The JetStream side: a durable pull consumer on chat-service's event stream, filtered to
//! `<prefix>.*.message_created`, shared by every replica under one name, so JetStream hands
//! each event to one replica at a time. Events are acknowledged only after their emails
//! are settled; an event whose processing failed (chat or auth unreachable) is nak'ed with a
//! delay and comes back, and one whose replica died comes back after `ack_wait`. Events
//! published while no replica runs wait in the stream. Duplicates that redelivery may cause
//! are absorbed by the delivery records (see `notifier.rs`).
//!
//! Handling an event is a span continuing the trace whose context the event carries in its
//! headers: the emails of a message sent through the saga are part of the saga's trace.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    AckKind,
};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use chat_common::{
    config::Nats,
    event_stream,
    trace::{self, Parent},
    Shutdown,
};
use chat_service::events::{process_span, ChatEvent};

use crate::{config::Settings, error::NotificationError, notifier::Notifier};

/// Events processed at once by one replica.
pub(crate) const CONCURRENCY: usize = 32;
/// How long a failed event waits before it is redelivered.
pub(crate) const RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long a stop waits for the events being handled: an email on its way is recorded,
/// a retry waiting for its next try gives its claim back, and the event is settled
/// (acknowledged, or left to come again) before the process exits.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);

/// Waits, up to [`DRAIN`], until every handler has given its permit back.
pub(crate) async fn drain(permits: &Semaphore) {
    if tokio::time::timeout(DRAIN, permits.acquire_many(CONCURRENCY as u32))
        .await
        .is_err()
    {
        tracing::warn!("events still being handled at exit; they come again");
    }
}

/// Connects to the NATS server `nats` names and makes sure the stream and the durable
/// consumer of `config` exist.
pub async fn connect(nats: &Nats, config: &Settings) -> anyhow::Result<PullConsumer> {
    let address = chat_common::nats::NatsAddress::parse(&nats.url);
    let client = address
        .apply(async_nats::ConnectOptions::new())
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(address.url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", address.url))?;
    let js = jetstream::new(client);
    // chat-service creates the stream too; whichever starts first makes it, from the one
    // shared definition, so the notifier never misses events published before it first ran.
    let stream = event_stream::ensure(
        &js,
        &config.nats_stream,
        &nats.subject_prefix,
        &config.nats_stream_settings,
    )
    .await?;
    let consumer = stream
        .get_or_create_consumer(
            &config.nats_consumer,
            pull::Config {
                durable_name: Some(config.nats_consumer.clone()),
                filter_subject: format!("{}.*.message_created", nats.subject_prefix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                deliver_policy: DeliverPolicy::All,
                max_ack_pending: 1000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer {}: {e}", config.nats_consumer))?;
    Ok(consumer)
}

/// Pulls and handles events until `shutdown`, then lets the events being handled settle
/// (see [`DRAIN`]); reopens the pull after errors.
pub async fn run(consumer: PullConsumer, notifier: Notifier, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    pull(consumer, notifier, &shutdown, &permits).await;
    drain(&permits).await;
}

async fn pull(
    consumer: PullConsumer,
    notifier: Notifier,
    shutdown: &Shutdown,
    permits: &Arc<Semaphore>,
) {
    while !shutdown.is_triggered() {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull events, retrying");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(RETRY_DELAY) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.wait() => return,
                next = messages.next() => next,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pulling events failed");
                    continue;
                }
                None => break,
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let notifier = notifier.clone();
            notifier.clone().spawn(async move {
                handle(&notifier, msg).await;
                drop(permit);
            });
        }
    }
}

async fn handle(notifier: &Notifier, msg: jetstream::Message) {
    let ack = match ChatEvent::decode(&msg.payload) {
        Ok(ChatEvent::MessageCreated(m)) => {
            let parent =
                Parent::extract(|name| msg.headers.as_ref()?.get(name).map(|v| v.as_str()));
            let span = process_span("process", &m, &parent);
            let notified = notifier.notify(&m).instrument(span.clone()).await;
            let _entered = span.enter();
            match notified {
                Ok(()) => AckKind::Ack,
                Err(e) if e.is_final() => {
                    tracing::info!(chat_id = m.chat_id, seq = m.seq, error = %e, "nothing to notify");
                    AckKind::Ack
                }
                Err(NotificationError::Held(e)) => {
                    tracing::debug!(chat_id = m.chat_id, seq = m.seq, reason = %e,
                        "emails held elsewhere; the event comes again");
                    AckKind::Nak(Some(RETRY_DELAY))
                }
                Err(NotificationError::Unavailable(e)) => {
                    trace::record_error(&span, &e);
                    tracing::warn!(chat_id = m.chat_id, seq = m.seq, error = %e, "event will be retried");
                    AckKind::Nak(Some(RETRY_DELAY))
                }
                Err(e) => {
                    trace::record_error(&span, &e);
                    tracing::error!(chat_id = m.chat_id, seq = m.seq, error = ?e, "event will be retried");
                    AckKind::Nak(Some(RETRY_DELAY))
                }
            }
        }
        // Another kind on a filtered subject: nothing to email.
        Ok(_) => AckKind::Ack,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "dropping a malformed event");
            AckKind::Term
        }
    };
    if let Err(e) = msg.ack_with(ack).await {
        tracing::warn!(error = %e, "acknowledging an event failed; it will be redelivered");
    }
}
