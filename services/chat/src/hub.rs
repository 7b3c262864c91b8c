//! Fan-out of live events to this replica's streams.
//!
//! One bus subscription per chat per replica, however many streams are open on it: the
//! first stream on a chat starts a fan-out task that subscribes, the last one to leave stops
//! it. The task is the only writer to its streams, so it can keep a chat's messages in seq
//! order: it remembers the last seq it delivered, drops an event it has already delivered,
//! and when an event skips ahead (a message lost while NATS was away) it first reads the
//! missing messages from storage. After a bus reconnect, and every `catch_up_every`, it also
//! asks storage whether anything newer exists, so a loss is repaired even when no later
//! event arrives. After a reconnect it also checks that each stream's user is still a
//! member, so a removal whose event was lost still ends the removed member's stream.
//!
//! A stream never advances past a seq it has not delivered. When the missing messages
//! cannot be read (the database is unreachable), the repair is tried again for at most
//! [`REPAIR_BUDGET`] (every stream of the chat waits meanwhile), and then the fan-out
//! ends the chat's streams with UNAVAILABLE: each tells its client the last seq it
//! delivered, and the client resumes from storage with `after_seq`. Skipping ahead instead
//! would lose the message for good, since later catch-ups only look past `last_seq`.
//!
//! A stream that does not keep up is not waited for: delivery uses `try_send` into the
//! stream's bounded buffer, and a full buffer cuts that stream off (it ends with
//! RESOURCE_EXHAUSTED and the client resumes from its last seq). Nothing here holds a lock
//! across an `.await`.
//!
//! Typing and presence (`presence.rs`) pass through the same fan-out: typing events go
//! to every stream; replicas' presence beats update the fan-out's [`Roster`], and only a
//! change of the chat's online set reaches the streams, numbered, delivered while the
//! roster is held: a stream that takes its snapshot ([`Subscription::online`]) then drops
//! the changes up to the snapshot's number. A fan-out that starts asks the replicas for
//! their beats and has snapshots wait [`PRESENCE_SETTLE`] for the answers.
//!
//! Delivering a live message is a span in the trace of the send that published it (with the
//! number of streams reached), when traces are exported.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use chat_common::{trace, Shutdown};
use chat_events::{process_span, ChatEvent, Envelope, EventBus, EventStream};

use crate::{
    convert::message_to_pb,
    domain::ChatId,
    presence::{LiveEvent, Presence, PresenceSettings, Query, Roster},
    store::ChatStore,
};

/// When to look at storage once more after the bus reconnected.
const RECHECK_AFTER_RECONNECT: Duration = Duration::from_secs(1);

/// How long a gap repair (or catch-up) may take, retries included, before the fan-out
/// gives up: every stream of the chat waits for it.
pub const REPAIR_BUDGET: Duration = Duration::from_secs(2);

/// How long a fan-out that just started waits for the replicas' presence answers before
/// its first streams take their snapshot (their live events wait as long, queued).
pub const PRESENCE_SETTLE: Duration = Duration::from_millis(250);

/// What a fan-out starts from: its subscription, the bus's reconnect notices, and the
/// last seq in storage when it subscribed.
struct Started {
    events: EventStream,
    reconnects: tokio::sync::broadcast::Receiver<()>,
    last_seq: i64,
}

/// What a fan-out's loop does after one wake-up.
enum Next {
    /// Wait for the next thing.
    Go,
    /// Read what storage has after the last seq delivered, then wait.
    CatchUp,
    /// End the fan-out (its streams end and resume from storage).
    Stop,
}

/// How a subscription ended, as the stream must report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The stream's buffer overflowed.
    Overflow,
    /// The fan-out stopped (bus gone, shutdown).
    Unavailable,
}

/// One fan-out per chat with open streams on this replica: a single bus subscription per
/// chat, whose events go to every stream of it, with gaps filled from storage.
pub struct Hub {
    bus: Arc<dyn EventBus>,
    store: Arc<dyn ChatStore>,
    chats: Mutex<HashMap<i64, Arc<Fanout>>>,
    buffer: usize,
    catch_up_every: Duration,
    shutdown: Shutdown,
    next_id: AtomicU64,
    /// This replica's streams, announced to every replica.
    presence: Arc<Presence>,
}

struct Fanout {
    chat_id: i64,
    subscribers: Mutex<Vec<Subscriber>>,
    /// `Some(true)` once subscribed to the bus, `Some(false)` when that failed.
    ready: watch::Sender<Option<bool>>,
    stop: Shutdown,
    /// Who is online in the chat, by the replicas' beats.
    roster: Mutex<Roster>,
}

struct Subscriber {
    id: u64,
    /// The member the stream is for (None: a service caller).
    user_id: Option<i64>,
    tx: mpsc::Sender<Arc<ChatEvent>>,
    overflow: Arc<AtomicBool>,
}

/// A stream's registration with the hub; leaving (drop) unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    fanout: Arc<Fanout>,
    id: u64,
    overflow: Arc<AtomicBool>,
    /// The stream's events; closed when it ended (see [`Subscription::ended`]).
    pub rx: mpsc::Receiver<Arc<ChatEvent>>,
}

impl Subscription {
    /// Why the receiver closed.
    pub fn ended(&self) -> Ended {
        if self.overflow.load(Ordering::Acquire) {
            Ended::Overflow
        } else {
            Ended::Unavailable
        }
    }
}

impl Subscription {
    /// The chat's online members now, and the number of the last presence change, which
    /// (with every earlier one) the stream has queued already. Right after the fan-out
    /// started, waits first (at most [`PRESENCE_SETTLE`]) for the replicas' answers.
    pub async fn online(&self) -> (Vec<grpc_chat_proto::chat::v1::OnlineMember>, u64) {
        let settled_at = lock(&self.fanout.roster).settled_at();
        if let Some(at) = settled_at {
            tokio::time::sleep_until(at).await;
        }
        lock(&self.fanout.roster).online()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(&self.fanout, self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub with `buffer` events per stream, checking storage for missed messages every
    /// `catch_up_every`, and default presence settings. Fan-outs stop on `shutdown`.
    pub fn new(
        bus: Arc<dyn EventBus>,
        store: Arc<dyn ChatStore>,
        buffer: usize,
        catch_up_every: Duration,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        Self::with_presence(
            bus,
            store,
            buffer,
            catch_up_every,
            shutdown,
            PresenceSettings::default(),
        )
    }

    /// As [`Hub::new`], with presence announced as `presence` says.
    pub fn with_presence(
        bus: Arc<dyn EventBus>,
        store: Arc<dyn ChatStore>,
        buffer: usize,
        catch_up_every: Duration,
        shutdown: Shutdown,
        presence: PresenceSettings,
    ) -> Arc<Self> {
        Arc::new_cyclic(|hub: &std::sync::Weak<Hub>| {
            let hub = hub.clone();
            let here: crate::presence::LocalBeats = Arc::new(move |beat: &LiveEvent| {
                if let Some(hub) = hub.upgrade() {
                    hub.own_beat(beat);
                }
            });
            let presence = Presence::start(bus.clone(), presence, shutdown.clone(), here);
            Self {
                bus,
                store,
                chats: Mutex::new(HashMap::new()),
                buffer: buffer.max(1),
                catch_up_every,
                shutdown,
                next_id: AtomicU64::new(1),
                presence,
            }
        })
    }

    /// A beat of this replica's, applied to its fan-out of the chat (if there is one)
    /// before the beat is published.
    fn own_beat(&self, beat: &LiveEvent) {
        let fanout = lock(&self.chats).get(&beat.chat_id()).cloned();
        if let Some(fanout) = fanout {
            self.live(&fanout, beat.clone());
        }
    }

    /// This replica's presence (and typing limiter).
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    /// The bus the hub subscribes to, shared with the outbox that publishes.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// Number of chats with a live fan-out on this replica.
    pub fn active_chats(&self) -> usize {
        lock(&self.chats).len()
    }

    /// Registers a stream on `chat`. Returns once the replica is subscribed to the chat's
    /// events, so that everything committed after this call reaches the subscription.
    /// `user_id` is the member the stream is for (None for a service caller): after a bus
    /// loss, the hub checks that they still are one (see [`Hub::check_members`]).
    pub async fn join(
        self: &Arc<Self>,
        chat: ChatId,
        user_id: Option<i64>,
    ) -> anyhow::Result<Subscription> {
        self.join_with(chat, user_id, true)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no fan-out for chat {chat}"))
    }

    /// As [`Hub::join`], but only when the chat's fan-out already runs on this replica
    /// (other streams are on it): then joining costs no subscription to the bus, so a
    /// caller may join before it knows the stream is allowed, and drop the subscription
    /// if it is not. None when there is no fan-out to join.
    pub async fn join_running(
        self: &Arc<Self>,
        chat: ChatId,
        user_id: Option<i64>,
    ) -> anyhow::Result<Option<Subscription>> {
        self.join_with(chat, user_id, false).await
    }

    async fn join_with(
        self: &Arc<Self>,
        chat: ChatId,
        user_id: Option<i64>,
        create: bool,
    ) -> anyhow::Result<Option<Subscription>> {
        let (tx, rx) = mpsc::channel(self.buffer);
        let overflow = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (fanout, start) = {
            let mut chats = lock(&self.chats);
            let (fanout, start) = match chats.get(&chat.0) {
                Some(f) => (f.clone(), false),
                None if !create => return Ok(None),
                None => {
                    let f = Arc::new(Fanout {
                        chat_id: chat.0,
                        subscribers: Mutex::new(Vec::new()),
                        ready: watch::channel(None).0,
                        stop: self.shutdown.child(),
                        roster: Mutex::new(Roster::new(chat.0, self.presence.settings().ttl())),
                    });
                    chats.insert(chat.0, f.clone());
                    (f, true)
                }
            };
            lock(&fanout.subscribers).push(Subscriber {
                id,
                user_id,
                tx,
                overflow: overflow.clone(),
            });
            (fanout, start)
        };
        let sub = Subscription {
            hub: self.clone(),
            fanout: fanout.clone(),
            id,
            overflow,
            rx,
        };
        if start {
            let hub = self.clone();
            let f = fanout.clone();
            self.shutdown.spawn(async move { hub.run(f).await });
        }
        let mut ready = fanout.ready.subscribe();
        let ok = ready
            .wait_for(Option::is_some)
            .await
            .map(|v| *v == Some(true))
            .unwrap_or(false);
        if !ok {
            anyhow::bail!("could not subscribe to chat {chat}'s events");
        }
        Ok(Some(sub))
    }

    fn leave(&self, fanout: &Arc<Fanout>, id: u64) {
        let mut chats = lock(&self.chats);
        let mut subs = lock(&fanout.subscribers);
        subs.retain(|s| s.id != id);
        if subs.is_empty() {
            if chats
                .get(&fanout.chat_id)
                .is_some_and(|f| Arc::ptr_eq(f, fanout))
            {
                chats.remove(&fanout.chat_id);
            }
            fanout.stop.trigger();
        }
    }

    /// Delivers to every subscriber without waiting; a full buffer cuts its stream off.
    /// Returns how many streams it reached.
    fn deliver(&self, fanout: &Fanout, event: ChatEvent) -> usize {
        let event = Arc::new(event);
        let mut subs = lock(&fanout.subscribers);
        subs.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.overflow.store(true, Ordering::Release);
                metrics::counter!("chat_stream_overflows_total").increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        subs.len()
    }

    /// Delivers every stored message after `last_seq` up to `upto` (by default the chat's
    /// newest seq), advancing `last_seq` to `upto`. Returns false when the chat no longer
    /// exists.
    ///
    /// Every seq up to `upto` is committed when this runs (a seq is taken under the chat's
    /// row lock, held until commit), so a seq missing from the read was deleted, and
    /// skipping it is right. The newest seq must be read *before* the messages, or a
    /// message committed between the two reads would be taken for deleted.
    async fn fill(
        &self,
        fanout: &Fanout,
        last_seq: &mut i64,
        upto: Option<i64>,
    ) -> anyhow::Result<bool> {
        let chat = ChatId(fanout.chat_id);
        let upto = match upto {
            Some(u) => u,
            None => match self.store.last_seq(chat).await? {
                None => return Ok(false),
                Some(stored) => stored,
            },
        };
        while *last_seq < upto {
            let batch = self
                .store
                .messages_after(chat, *last_seq, Some(upto), 500)
                .await?;
            let Some(last) = batch.last() else {
                break;
            };
            let next = last.seq;
            for m in batch {
                self.deliver(fanout, ChatEvent::MessageCreated(message_to_pb(&m), None));
            }
            *last_seq = next;
        }
        *last_seq = (*last_seq).max(upto);
        Ok(true)
    }

    /// Announces the removal of every stream's member who is no longer one: after a bus
    /// loss, a `MemberRemoved` event may have been missed, and a removed member's stream
    /// must not go on. Each removal reaches every stream of the chat (others may have
    /// missed it too; clients take a second one as a no-op).
    async fn check_members(&self, fanout: &Fanout) -> anyhow::Result<()> {
        let watched: Vec<i64> = {
            let subs = lock(&fanout.subscribers);
            let mut ids: Vec<i64> = subs.iter().filter_map(|s| s.user_id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        if watched.is_empty() {
            return Ok(());
        }
        let members: std::collections::HashSet<i64> = self
            .store
            .list_members(ChatId(fanout.chat_id))
            .await?
            .into_iter()
            .map(|m| m.user_id)
            .collect();
        for user_id in watched.into_iter().filter(|u| !members.contains(u)) {
            metrics::counter!("chat_missed_removals_total").increment(1);
            self.deliver(
                fanout,
                ChatEvent::MemberRemoved {
                    chat_id: fanout.chat_id,
                    user_id,
                },
            );
        }
        Ok(())
    }

    /// Delivers the stored messages after `last_seq` up to `upto`, trying again for at
    /// most [`REPAIR_BUDGET`] in all when storage fails, so that one repair never holds
    /// the chat's fan-out back for longer. On error, `last_seq` is the last seq actually
    /// delivered (a part of the gap may have been), never beyond.
    async fn repair(&self, fanout: &Fanout, last_seq: &mut i64, upto: i64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + REPAIR_BUDGET;
        let mut pauses = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(500))
            .without_max_times()
            .build();
        loop {
            let attempt =
                tokio::time::timeout_at(deadline, self.fill(fanout, last_seq, Some(upto))).await;
            let error = match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => {
                    anyhow::anyhow!("reading the missing messages took over {REPAIR_BUDGET:?}")
                }
            };
            let pause = pauses.next().unwrap_or(REPAIR_BUDGET);
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(error);
            }
            tracing::debug!(chat_id = fanout.chat_id, error = ?error, "filling a gap failed; trying again");
            tokio::time::sleep(pause).await;
        }
    }

    /// One chat's fan-out, from the first stream that joins until the last leaves (or
    /// the bus, a gap it cannot fill, or the chat's deletion ends it).
    async fn run(self: Arc<Self>, fanout: Arc<Fanout>) {
        let Some(started) = self.start(&fanout).await else {
            let _ = fanout.ready.send(Some(false));
            self.close(&fanout);
            return;
        };
        // A new fan-out knows no one online yet: the replicas with streams here answer
        // (the query is published below), and the first snapshots wait for them.
        lock(&fanout.roster).asked(tokio::time::Instant::now() + PRESENCE_SETTLE);
        let _ = fanout.ready.send(Some(true));
        metrics::gauge!("chat_fanouts_active").increment(1.0);
        self.ask_presence(fanout.chat_id).await;
        self.fan_out(&fanout, started).await;
        metrics::gauge!("chat_fanouts_active").decrement(1.0);
        self.close(&fanout);
    }

    /// Subscribes to the chat's events, then reads the last seq in storage: everything
    /// up to it is in storage, and streams read it as history.
    async fn start(&self, fanout: &Fanout) -> Option<Started> {
        let chat = ChatId(fanout.chat_id);
        let events = match self.bus.subscribe(chat.0).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(chat_id = chat.0, error = %e, "subscribing to chat events failed");
                return None;
            }
        };
        let reconnects = self.bus.reconnects();
        let last_seq = match self.store.last_seq(chat).await {
            Ok(seq) => seq.unwrap_or(0),
            Err(e) => {
                tracing::error!(chat_id = chat.0, error = ?e, "reading the chat's last seq failed");
                return None;
            }
        };
        Some(Started {
            events,
            reconnects,
            last_seq,
        })
    }

    /// Asks the replicas who is online in the chat; their streams' heartbeats tell it
    /// anyway, a little later, when the question is lost.
    async fn ask_presence(&self, chat_id: i64) {
        let query = ChatEvent::Live(LiveEvent::Query(Query { chat_id }));
        if let Err(e) = self.bus.publish(&query).await {
            tracing::warn!(chat_id, error = %e, "asking for presence failed; heartbeats will tell");
        }
    }

    /// The fan-out's loop: delivers the chat's events in seq order, fills gaps from
    /// storage, catches up after a loss of the bus and on a timer, checks members after
    /// a loss, and expires presence.
    async fn fan_out(&self, fanout: &Fanout, started: Started) {
        let Started {
            mut events,
            mut reconnects,
            mut last_seq,
        } = started;
        let mut presence_check = tokio::time::interval(self.presence.settings().check_every());
        presence_check.tick().await;
        let mut tick = tokio::time::interval(self.catch_up_every);
        tick.tick().await;
        // After a reconnect the client resubscribes in the background: an event published
        // before the subscription is back is lost to us, and the catch-up at the reconnect
        // may have run before it was committed. One more catch-up a moment later covers it.
        let mut recheck: Option<tokio::time::Instant> = None;
        // Whether streams' members must be checked (after a bus loss; until it succeeds).
        let mut members_due = false;
        loop {
            let recheck_due = async {
                match recheck {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                _ = fanout.stop.wait() => Next::Stop,
                event = events.next() => match event {
                    Some(envelope) => self.on_event(fanout, &mut last_seq, envelope).await,
                    None => {
                        tracing::warn!(chat_id = fanout.chat_id, "event subscription ended");
                        Next::Stop
                    }
                },
                r = reconnects.recv() => {
                    let reconnected = r.is_ok()
                        || matches!(r, Err(tokio::sync::broadcast::error::RecvError::Lagged(_)));
                    if !reconnected {
                        Next::Go
                    } else {
                        recheck = Some(tokio::time::Instant::now() + RECHECK_AFTER_RECONNECT);
                        members_due = true;
                        Next::CatchUp
                    }
                }
                _ = recheck_due => {
                    recheck = None;
                    members_due = true;
                    Next::CatchUp
                }
                _ = tick.tick() => Next::CatchUp,
                _ = presence_check.tick() => {
                    self.expire_presence(fanout);
                    Next::Go
                }
            };
            if matches!(next, Next::Stop) {
                break;
            }
            if members_due {
                members_due = !self.members_checked(fanout).await;
            }
            if matches!(next, Next::CatchUp) && !self.catch_up(fanout, &mut last_seq).await {
                break;
            }
        }
    }

    /// One event from the bus. A message goes out in seq order: an old one is dropped, one
    /// after a gap waits until the gap is filled from storage.
    async fn on_event(&self, fanout: &Fanout, last_seq: &mut i64, envelope: Envelope) -> Next {
        match envelope {
            Envelope {
                event: ChatEvent::MessageCreated(m, version),
                parent,
                ..
            } => {
                if m.seq <= *last_seq {
                    return Next::Go;
                }
                if m.seq > *last_seq + 1 && !self.gap_filled(fanout, last_seq, m.seq - 1).await {
                    return Next::Stop;
                }
                *last_seq = m.seq;
                let span = process_span("deliver", &m, &parent);
                let streams =
                    span.in_scope(|| self.deliver(fanout, ChatEvent::MessageCreated(m, version)));
                trace::set_attribute(&span, "recipient_count", streams as i64);
                Next::Go
            }
            Envelope {
                event: e @ ChatEvent::ChatDeleted { .. },
                ..
            } => {
                self.deliver(fanout, e);
                Next::Stop
            }
            Envelope {
                event: ChatEvent::Live(live),
                ..
            } => {
                self.live(fanout, live);
                Next::Go
            }
            Envelope { event, .. } => {
                self.deliver(fanout, event);
                Next::Go
            }
        }
    }

    /// Fills the gap up to `upto` before a later message goes out; false when it could not
    /// be filled. Delivering the later message then would skip what could not be read, for
    /// good: the fan-out ends instead, and each stream tells its client to resume from the
    /// last seq it delivered.
    async fn gap_filled(&self, fanout: &Fanout, last_seq: &mut i64, upto: i64) -> bool {
        metrics::counter!("chat_event_gaps_total").increment(1);
        let Err(e) = self.repair(fanout, last_seq, upto).await else {
            return true;
        };
        tracing::warn!(
            chat_id = fanout.chat_id,
            delivered_upto = *last_seq,
            missing_upto = upto,
            error = ?e,
            "filling a gap failed; ending the chat's streams so they resume from storage"
        );
        metrics::counter!("chat_gap_repairs_failed_total").increment(1);
        false
    }

    /// Tells the streams who went offline since the last check.
    fn expire_presence(&self, fanout: &Fanout) {
        let mut roster = lock(&fanout.roster);
        for change in roster.expire(tokio::time::Instant::now()) {
            self.deliver(fanout, ChatEvent::Live(change));
        }
    }

    /// Checks that every stream's user is still a member; whether that was done (else it
    /// is tried again at the next wake-up). Only after a loss of the bus: member events
    /// come through the outbox, so they are missed only while the bus is away.
    async fn members_checked(&self, fanout: &Fanout) -> bool {
        match tokio::time::timeout(REPAIR_BUDGET, self.check_members(fanout)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(chat_id = fanout.chat_id, error = ?e, "checking members failed; trying again");
                false
            }
            Err(_) => {
                tracing::warn!(
                    chat_id = fanout.chat_id,
                    "checking members timed out; trying again"
                );
                false
            }
        }
    }

    /// Delivers what storage has after `last_seq`; false when the chat is gone (its
    /// deletion has then been delivered). Bounded like a repair, so that an unreachable
    /// database does not hold the chat's live events back; a failed catch-up is tried
    /// again at the next tick, and a later event's gap check repairs or ends the streams.
    async fn catch_up(&self, fanout: &Fanout, last_seq: &mut i64) -> bool {
        let fill = self.fill(fanout, last_seq, None);
        match tokio::time::timeout(REPAIR_BUDGET, fill).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.deliver(
                    fanout,
                    ChatEvent::ChatDeleted {
                        chat_id: fanout.chat_id,
                    },
                );
                return false;
            }
            Ok(Err(e)) => {
                tracing::warn!(chat_id = fanout.chat_id, error = ?e, "catching up failed")
            }
            Err(_) => tracing::warn!(chat_id = fanout.chat_id, "catching up timed out"),
        }
        true
    }

    /// An ephemeral event: typing goes to every stream (each drops its own user's), a
    /// beat to the roster (its changes to every stream), a query to this replica's
    /// presence, which answers it if it has streams on the chat.
    fn live(&self, fanout: &Fanout, event: LiveEvent) {
        match event {
            e @ LiveEvent::Typing(_) => {
                self.deliver(fanout, ChatEvent::Live(e));
            }
            LiveEvent::Beat(beat) => {
                let mut roster = lock(&fanout.roster);
                for change in roster.apply(beat, tokio::time::Instant::now()) {
                    self.deliver(fanout, ChatEvent::Live(change));
                }
            }
            LiveEvent::Query(q) => self.presence.announce(q.chat_id),
            // Made by fan-outs, never published: nothing to do with one from the bus.
            LiveEvent::Changed(..) => {}
        }
    }

    /// Ends every stream of a fan-out that stopped and forgets it.
    fn close(&self, fanout: &Arc<Fanout>) {
        let mut chats = lock(&self.chats);
        if chats
            .get(&fanout.chat_id)
            .is_some_and(|f| Arc::ptr_eq(f, fanout))
        {
            chats.remove(&fanout.chat_id);
        }
        lock(&fanout.subscribers).clear();
    }
}
