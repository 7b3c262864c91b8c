//! [`NatsBus`]: events between processes. Stored events go to JetStream when a stream is
//! configured, and a publish waits for its acknowledgement, so consumers that were down
//! (the notifier) get every event later; ephemeral events always take a core NATS publish
//! to their own subjects (see `subject.rs`), so the stream never keeps them.
//!
//! A publish carries its trace context as W3C headers (only when there is a trace, so a
//! message without one is as it always was). A replica that loses NATS for a moment is
//! told through [`EventBus::reconnects`] once the subscriptions are restored, so its
//! streams refill from storage what passed meanwhile.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;

use chat_common::{nats::NatsAddress, trace::Parent};

use crate::{
    bus::EventBus,
    envelope::{publish_span, traced_publish, Envelope},
    event::{ChatEvent, MEMBERS_VERSION_HEADER},
    live::LiveEvent,
    stream::{self, StreamSettings},
    subject, EventStream,
};

/// Connects to the NATS server(s) of `url`, logging in with the credentials it carries
/// (see [`chat_common::nats`]), waiting for a server that is not up yet rather than
/// failing the start; `options` adds what the caller needs. chat-service's bus and the
/// notifier's consumer connect alike through this.
pub async fn connect(
    url: &str,
    options: async_nats::ConnectOptions,
) -> anyhow::Result<async_nats::Client> {
    let address = NatsAddress::parse(url);
    address
        .apply(options)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(address.url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", address.url))
}

/// NATS, optionally with a JetStream stream that keeps the events.
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: Option<async_nats::jetstream::Context>,
    prefix: String,
    reconnects: broadcast::Sender<()>,
}

impl NatsBus {
    /// Publishes an ephemeral event with a core publish: never JetStream.
    async fn publish_live(&self, event: &LiveEvent) -> anyhow::Result<()> {
        let Some(payload) = event.encode() else {
            anyhow::bail!("a {} event is not published", event.kind());
        };
        self.client
            .publish(
                subject::live(&self.prefix, event.chat_id(), event.kind()),
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
            .subscribe(subject::live(&self.prefix, chat_id, "*"))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to NATS: {e}"))?;
        Ok(sub.filter_map(|msg| async move {
            match LiveEvent::decode(subject::kind(&msg.subject), &msg.payload) {
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
    /// captures `<prefix>.>` with those settings (see [`crate::stream`]) and
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
        let options = async_nats::ConnectOptions::new().event_callback(move |event| {
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
        });
        let client = connect(url, options).await?;
        let _ = cell.set(client.clone());
        let jetstream = match stream {
            None => None,
            Some((name, settings)) => {
                let js = async_nats::jetstream::new(client.clone());
                stream::ensure(&js, name, prefix, settings).await?;
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
        let subject = subject::stored(&self.prefix, event.chat_id(), event.kind());
        let payload = bytes::Bytes::from(event.encode());
        let span = publish_span("nats", &subject, event);
        let parent = Parent::of(&span);
        // Headers only when there is something to carry (a trace, a new message's
        // membership version): without, the message is as before.
        let version = event.members_version();
        let headers = (parent.is_some() || version.is_some()).then(|| {
            let mut headers = async_nats::HeaderMap::new();
            parent.inject(|name, value| headers.insert(name, value));
            if let Some(v) = version {
                headers.insert(MEMBERS_VERSION_HEADER, v.to_string().as_str());
            }
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
            .subscribe(subject::chat(&self.prefix, chat_id))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to NATS: {e}"))?;
        let live = self.subscribe_live(chat_id).await?;
        let stored = sub.filter_map(|msg| async move {
            match Envelope::from_nats(&msg) {
                Ok(envelope) => Some(envelope),
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
