//! The transactional outbox: how an event reaches the bus even when publishing it fails
//! after the change was committed, or the process dies in between.
//!
//! The store writes each message's (and each deletion's, edit's, membership change's and
//! link preview's) outbox row in the change's own transaction, so a committed change always
//! has its event somewhere. The replica that made the change publishes it at once
//! ([`Outbox::publish`]); once the bus has it for good (JetStream acknowledged it) the row
//! is removed, in batches, off the request's path.
//! A row whose publish failed (NATS unreachable, JetStream not acknowledging) or whose
//! replica died stays, and the relay of every replica publishes rows older than
//! [`GRACE`] that no other relay has claimed: every [`POLL`] while the bus is NATS, so an
//! event missed during an outage (a message, or a deletion open streams never saw) is
//! published once NATS is back, and a restarted replica publishes what it left behind.
//!
//! The in-process bus of the all-in-one server is not durable: an event waiting in its
//! tap for the notifier is lost if the process stops. There a row is removed only when
//! the notifier reports the event handled ([`Handled`]), and the relay runs once at start,
//! publishing what the previous run left.
//!
//! Delivery is at least once: a row published just before its removal was recorded can be
//! published again. Every consumer is idempotent (streams drop seqs they have delivered,
//! the notifier keeps a delivery record per message).

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use chat_common::Shutdown;
use chat_events::{ChatEvent, EventBus, Handled};

use crate::{
    convert::{member_to_pb, message_to_pb, preview_to_pb},
    domain::ChatId,
    store::{ChatStore, EventId, EventKind, OutboxEvent},
};

/// How old a row must be before a relay publishes it: the replica that wrote it is
/// publishing it at once, and removes it soon after.
pub const GRACE: Duration = Duration::from_secs(3);
/// How often the relay looks for rows (NATS).
pub const POLL: Duration = Duration::from_secs(1);
/// How long a relay owns the rows it claimed; after that (it died, or NATS failed) any
/// relay takes them.
pub const CLAIM: Duration = Duration::from_secs(10);
/// Rows claimed, or removed, at a time.
const BATCH: usize = 256;

/// Publishes the events of changes and removes their outbox rows once published.
pub struct Outbox {
    store: Arc<dyn ChatStore>,
    bus: Arc<dyn EventBus>,
    /// Rows to remove (their events are published for good, or handled).
    published: mpsc::UnboundedSender<EventId>,
}

impl Outbox {
    /// Starts the remover and the relay; both stop with `shutdown`.
    pub fn start(
        store: Arc<dyn ChatStore>,
        bus: Arc<dyn EventBus>,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let (published, rx) = mpsc::unbounded_channel();
        shutdown.spawn(remove_published(store.clone(), rx, shutdown.clone()));
        let outbox = Arc::new(Self {
            store,
            bus,
            published,
        });
        shutdown.spawn(outbox.clone().relay(shutdown.clone()));
        outbox
    }

    /// Publishes the event of the outbox row `id`. A failure is logged and counted, not
    /// returned: the change is committed and the relay publishes the row later.
    pub async fn publish(&self, event: &ChatEvent, id: EventId) {
        if let Err(e) = self.publish_row(event, id).await {
            metrics::counter!("chat_publish_failures_total").increment(1);
            tracing::warn!(chat_id = event.chat_id(), kind = event.kind(), error = %e,
                "publishing an event failed; the outbox publishes it later");
        }
    }

    async fn publish_row(&self, event: &ChatEvent, id: EventId) -> anyhow::Result<()> {
        if self.bus.durable() {
            self.bus.publish(event).await?;
            // Gone only when the service stops: the row is published again at the next start.
            let _ = self.published.send(id);
        } else {
            let handled = Handled::new(self.published.clone(), id);
            self.bus.publish_handled(event, handled).await?;
        }
        Ok(())
    }

    /// Publishes left-over rows: every [`POLL`] on a durable bus, once at start otherwise.
    async fn relay(self: Arc<Self>, shutdown: Shutdown) {
        if !self.bus.durable() {
            // One process owns the database: every row there is from a previous run.
            match self.relay_once(Duration::ZERO).await {
                Ok(n) if n > 0 => {
                    tracing::info!(events = n, "published events left by the previous run")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "publishing events left by the previous run failed")
                }
            }
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            match self.relay_once(GRACE).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("chat_outbox_relayed_total").increment(n as u64);
                    tracing::info!(events = n, "published events from the outbox");
                }
                Err(e) => tracing::warn!(error = %e, "publishing from the outbox failed; retrying"),
            }
        }
    }

    /// Claims rows older than `older_than` and publishes them, oldest first, until the
    /// bus fails. Returns how many were published.
    pub async fn relay_once(&self, older_than: Duration) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let rows = self
                .store
                .claim_events(older_than, CLAIM, BATCH as i64)
                .await?;
            let claimed = rows.len();
            for row in rows {
                match self.event_of(&row).await? {
                    Some(event) => self.publish_row(&event, row.id).await?,
                    // Nothing to announce any more (deleted since, or its chat is gone).
                    None => {
                        let _ = self.published.send(row.id);
                    }
                }
                total += 1;
            }
            if claimed < BATCH {
                return Ok(total);
            }
        }
    }

    /// The event a row announces, read as the message is now.
    async fn event_of(&self, row: &OutboxEvent) -> anyhow::Result<Option<ChatEvent>> {
        Ok(match row.kind {
            EventKind::MessageCreated => self
                .store
                .message(ChatId(row.chat_id), row.seq)
                .await?
                .filter(|m| !m.deleted)
                .map(|m| ChatEvent::MessageCreated(message_to_pb(&m), row.members_version)),
            // The text as it is now: a later edit's event carries the same.
            EventKind::MessageEdited => self
                .store
                .message(ChatId(row.chat_id), row.seq)
                .await?
                .filter(|m| !m.deleted)
                .map(|m| ChatEvent::MessageEdited(message_to_pb(&m))),
            EventKind::MessageDeleted => Some(ChatEvent::MessageDeleted {
                chat_id: row.chat_id,
                seq: row.seq,
            }),
            // Still a member: announced as they are now. Gone since: their removal's own
            // row announces that.
            EventKind::MemberAdded => self
                .store
                .member(ChatId(row.chat_id), row.user_id)
                .await?
                .map(|m| ChatEvent::MemberAdded {
                    chat_id: row.chat_id,
                    member: member_to_pb(m),
                }),
            EventKind::MemberRemoved => Some(ChatEvent::MemberRemoved {
                chat_id: row.chat_id,
                user_id: row.user_id,
            }),
            // The preview as it is now: none when an edit cleared it since.
            EventKind::MessagePreviewed => self
                .store
                .message(ChatId(row.chat_id), row.seq)
                .await?
                .filter(|m| !m.deleted)
                .and_then(|m| m.link_preview)
                .map(|p| ChatEvent::MessagePreviewed {
                    chat_id: row.chat_id,
                    seq: row.seq,
                    preview: preview_to_pb(&p),
                }),
        })
    }
}

/// Removes the rows of published events, as many at a time as have come in.
async fn remove_published(
    store: Arc<dyn ChatStore>,
    mut rx: mpsc::UnboundedReceiver<EventId>,
    shutdown: Shutdown,
) {
    let mut stopping = false;
    loop {
        let mut ids = Vec::new();
        if stopping {
            // Whatever is in already, then stop.
            while ids.len() < BATCH {
                match rx.try_recv() {
                    Ok(id) => ids.push(id),
                    Err(_) => break,
                }
            }
            if ids.is_empty() {
                return;
            }
        } else {
            tokio::select! {
                _ = shutdown.wait() => {
                    stopping = true;
                    continue;
                }
                first = rx.recv() => match first {
                    Some(id) => ids.push(id),
                    None => return,
                },
            }
            while ids.len() < BATCH {
                match rx.try_recv() {
                    Ok(id) => ids.push(id),
                    Err(_) => break,
                }
            }
        }
        if let Err(e) = store.events_published(&ids).await {
            // The rows stay and are published again: a duplicate, never a loss.
            tracing::warn!(rows = ids.len(), error = %e, "removing published outbox rows failed");
        }
    }
}
