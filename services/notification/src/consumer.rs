//! The JetStream [`EventSource`]: a durable pull consumer on chat-service's event stream,
//! filtered to `<prefix>.*.message_created`, shared by every replica under one name, so
//! JetStream hands each event to one replica at a time. Events are acknowledged only after
//! their emails are settled; an event whose processing failed (chat or auth unreachable)
//! is nak'ed with a delay and comes back, and one whose replica died comes back after
//! `ack_wait`. Events published while no replica runs wait in the stream.
//!
//! The trace context an event carries in its headers is read here, so that the emails of
//! a message sent through the saga are part of the saga's trace.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    AckKind,
};
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;

use chat_common::{config::Nats, Shutdown};
use chat_events::{stream, subject, Envelope};

use crate::{
    config::Settings,
    source::{Delivery, Done, EventSource, Retry, Settle, RETRY_DELAY},
};

/// The events of the shared durable consumer, pulled as the loop asks for them.
pub struct JetStreamSource {
    consumer: PullConsumer,
    /// The open pull; reopened after it ends or fails.
    messages: Option<pull::Stream>,
}

impl JetStreamSource {
    /// Connects to the NATS server `nats` names and makes sure the stream and the durable
    /// consumer of `config` exist.
    pub async fn connect(nats: &Nats, config: &Settings) -> anyhow::Result<Self> {
        let client = chat_events::nats::connect(&nats.url, async_nats::ConnectOptions::new());
        let js = jetstream::new(client.await?);
        // chat-service creates the stream too; whichever starts first makes it, from the one
        // shared definition, so the notifier never misses events published before it first
        // ran.
        let stream = stream::ensure(
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
                    filter_subject: subject::new_messages(&nats.subject_prefix),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    deliver_policy: DeliverPolicy::All,
                    max_ack_pending: 1000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating consumer {}: {e}", config.nats_consumer))?;
        Ok(Self {
            consumer,
            messages: None,
        })
    }

    /// The open pull, opened when there is none (tried again after 100 ms doubling to
    /// [`RETRY_DELAY`] while NATS is away); `None` at shutdown.
    async fn pull(&mut self, shutdown: &Shutdown) -> Option<&mut pull::Stream> {
        // Called for every event: the usual case, an open pull, builds no schedule.
        if self.messages.is_some() {
            return self.messages.as_mut();
        }
        let mut pauses = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(RETRY_DELAY)
            .without_max_times()
            .build();
        while self.messages.is_none() {
            if shutdown.is_triggered() {
                return None;
            }
            match self.consumer.messages().await {
                Ok(m) => self.messages = Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull events, retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return None,
                        _ = tokio::time::sleep(pauses.next().unwrap_or(RETRY_DELAY)) => {}
                    }
                }
            }
        }
        self.messages.as_mut()
    }
}

#[async_trait]
impl EventSource for JetStreamSource {
    async fn next(&mut self, shutdown: &Shutdown) -> Option<Delivery> {
        loop {
            let messages = self.pull(shutdown).await?;
            let next = tokio::select! {
                _ = shutdown.wait() => return None,
                next = messages.next() => next,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pulling events failed");
                    continue;
                }
                None => {
                    self.messages = None;
                    continue;
                }
            };
            match Envelope::from_nats(&msg) {
                Ok(envelope) => {
                    return Some(Delivery {
                        event: envelope.event,
                        parent: envelope.parent,
                        settle: Box::new(Acker(msg)),
                    })
                }
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "dropping a malformed event");
                    Acker(msg).ack(AckKind::Term).await;
                }
            }
        }
    }
}

/// A pulled message, settled by acknowledging it to JetStream.
struct Acker(jetstream::Message);

impl Acker {
    async fn ack(self, kind: AckKind) {
        if let Err(e) = self.0.ack_with(kind).await {
            tracing::warn!(error = %e, "acknowledging an event failed; it will be redelivered");
        }
    }
}

#[async_trait]
impl Settle for Acker {
    async fn done(self: Box<Self>, _: Done) {
        self.ack(AckKind::Ack).await;
    }

    async fn failed(self: Box<Self>, delay: Duration) -> Retry {
        self.ack(AckKind::Nak(Some(delay))).await;
        Retry::Redelivered
    }
}
