//! Typing and presence: the chat's ephemeral events, never stored.
//!
//! Both travel on the bus beside the stored events but outside their subjects (see
//! [`chat_events::subject`]: `<prefix>_live.<chat_id>.<kind>` on NATS, core publish only), so the
//! JetStream stream never keeps them, the notifier never reads them and a stream that
//! resumes never replays them.
//!
//! **Typing.** `SendTyping` publishes a [`pb::Typing`]; every replica's fan-out of the chat
//! passes it to its streams, and each stream drops the ones its own caller sent. A
//! [`TypingLimiter`] forwards at most one call per [`TYPING_EVERY`] per (user, chat) on
//! each replica; the calls in between succeed without publishing, so clients need not
//! count (a user whose calls land on two replicas may be forwarded twice as often: harmless).
//!
//! **Presence.** A member is online in a chat while they hold at least one `Connect`
//! stream on it, on any replica. Each replica knows only its own streams, so:
//! - [`Presence`] (one per replica) counts this replica's streams per (chat, user) and
//!   publishes a [`Beat`]: the *whole* set of the chat's users online through this replica,
//!   with the replica's id and a version that only grows. It does so at once when the set
//!   changes (a first stream of a user opens, their last one closes: an empty set is the
//!   goodbye), every heartbeat for every chat it has streams on, and when asked (a
//!   [`Query`]).
//! - Every fan-out (`hub.rs`) keeps a [`Roster`]: the last beat of each replica, which
//!   expires [`PresenceSettings::ttl`] (three heartbeats) after it arrived. The chat's
//!   online members are the union; when the union changes the fan-out sends its streams a
//!   [`pb::Presence`] change. A user with streams on two replicas stays online while either
//!   replica lists them; a replica that dies without a goodbye stops beating, and its users
//!   go offline when its beat expires. That is the limit: after a crash, an online state
//!   lags by up to the ttl plus a check period.
//! - A fan-out that starts knows nothing yet, so it publishes a [`Query`] as soon as it is
//!   subscribed, and every replica with streams on the chat answers with its beat at once
//!   (rather than at its next heartbeat). A stream gets the fan-out's union right after
//!   `HistoryEnd` as a snapshot; what the answers add later arrives as changes.
//!
//! Full sets instead of deltas make every beat self-contained: a lost beat is repaired by
//! the next one, and an old beat (lower version) is ignored.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use chat_common::Shutdown;
use grpc_chat_proto::chat::v1 as pb;

pub use chat_events::live::{Beat, LiveEvent, Query};
use chat_events::{ChatEvent, EventBus};

/// How long a stream waits at most for its user's beat to go out before its snapshot.
pub const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);

/// At most one typing event per this long per (user, chat) on a replica.
pub const TYPING_EVERY: Duration = Duration::from_secs(2);

/// Entries the typing limiter holds before it forgets the ones that no longer matter.
const LIMITER_PRUNE_AT: usize = 10_000;

/// How often presence is announced and how long an announcement holds.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSettings {
    /// How often a replica repeats each chat's online set.
    pub heartbeat: Duration,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
        }
    }
}

impl PresenceSettings {
    /// How long a replica's beat counts without a newer one: three heartbeats, so one or
    /// two lost beats do not flap a user offline.
    pub fn ttl(&self) -> Duration {
        self.heartbeat * 3
    }

    /// How often a fan-out looks for expired beats.
    pub fn check_every(&self) -> Duration {
        (self.heartbeat / 2).max(Duration::from_millis(50))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forwards at most one typing event per [`TYPING_EVERY`] per (user, chat).
#[derive(Default)]
pub struct TypingLimiter {
    last: Mutex<HashMap<(i64, i64), Instant>>,
}

impl TypingLimiter {
    /// Whether a typing event of `user` in `chat` may go out now (and if so, it counts).
    pub fn allow(&self, user: i64, chat: i64) -> bool {
        let now = Instant::now();
        let mut last = lock(&self.last);
        if last.len() >= LIMITER_PRUNE_AT {
            last.retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
        }
        match last.get(&(user, chat)) {
            Some(at) if now.duration_since(*at) < TYPING_EVERY => false,
            _ => {
                last.insert((user, chat), now);
                true
            }
        }
    }
}

enum Command {
    Enter {
        chat: i64,
        user: i64,
        username: String,
        /// Told once the beat this entry causes (if any) has been handed to the bus.
        announced: Option<oneshot::Sender<()>>,
    },
    Leave {
        chat: i64,
        user: i64,
    },
    /// Announce the chat's set now (a fan-out asked).
    Announce {
        chat: i64,
    },
}

/// This replica's streams per (chat, user), announced to every replica's fan-outs.
pub struct Presence {
    tx: mpsc::UnboundedSender<Command>,
    /// This process's id in beats.
    replica: u64,
    settings: PresenceSettings,
    typing: TypingLimiter,
}

/// A stream's presence: while it exists, its user is online through this replica.
pub struct Here {
    tx: mpsc::UnboundedSender<Command>,
    chat: i64,
    user: i64,
}

impl Drop for Here {
    fn drop(&mut self) {
        // Fails only when the replica is stopping: its goodbye covers this stream.
        let _ = self.tx.send(Command::Leave {
            chat: self.chat,
            user: self.user,
        });
    }
}

/// Per chat, per user: the username and how many streams hold them online.
type Local = HashMap<i64, BTreeMap<i64, (String, usize)>>;

impl Presence {
    /// Starts announcing on `bus` until `shutdown`, when every chat gets a goodbye.
    ///
    /// `here` is given every beat of this replica before it is published: the hub applies
    /// it to its own fan-out of the chat at once, so that this replica's streams never see
    /// its users through the bus later than they see another replica's word about them.
    pub fn start(
        bus: Arc<dyn EventBus>,
        settings: PresenceSettings,
        shutdown: Shutdown,
        here: LocalBeats,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let replica = loop {
            // Random per start: a restarted replica is a new one, and the old id's beats
            // simply expire.
            let id = rand_u64();
            if id != 0 {
                break id;
            }
        };
        // Tracked: a stopping binary waits for it, so the goodbyes go out before it exits.
        let out = Announcer { bus, here };
        shutdown.spawn(announce(out, settings, replica, rx, shutdown.clone()));
        Arc::new(Self {
            tx,
            replica,
            settings,
            typing: TypingLimiter::default(),
        })
    }

    /// How often beats are sent and when they expire.
    pub fn settings(&self) -> PresenceSettings {
        self.settings
    }

    /// This replica's id in the beats it sends.
    pub fn replica(&self) -> u64 {
        self.replica
    }

    /// The limiter of members' typing events, shared by this replica's streams.
    pub fn typing(&self) -> &TypingLimiter {
        &self.typing
    }

    /// Marks `user` online in `chat` for as long as the returned value lives.
    pub fn enter(&self, chat: i64, user: i64, username: String) -> Here {
        self.send_enter(chat, user, username, None)
    }

    /// [`Presence::enter`], returning once the beat that says so has been handed to the
    /// bus (or after [`ANNOUNCE_WAIT`], should the announcing task lag). A stream waits for
    /// it before its snapshot: a user with a stream on each of two replicas who closes one
    /// right after opening the other must not flap offline because the closing replica's
    /// goodbye overtook the other replica's beat.
    pub async fn enter_announced(&self, chat: i64, user: i64, username: String) -> Here {
        let (tx, rx) = oneshot::channel();
        let here = self.send_enter(chat, user, username, Some(tx));
        let _ = tokio::time::timeout(ANNOUNCE_WAIT, rx).await;
        here
    }

    fn send_enter(
        &self,
        chat: i64,
        user: i64,
        username: String,
        announced: Option<oneshot::Sender<()>>,
    ) -> Here {
        let _ = self.tx.send(Command::Enter {
            chat,
            user,
            username,
            announced,
        });
        Here {
            tx: self.tx.clone(),
            chat,
            user,
        }
    }

    /// Has the chat's set announced now, if this replica has streams on it.
    pub fn announce(&self, chat: i64) {
        let _ = self.tx.send(Command::Announce { chat });
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixing in the time and the pid
    // separates replicas started in the same instant on one machine.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// The replica's announcing task: the only writer of its local sets, so beats go out in
/// version order.
async fn announce(
    out: Announcer,
    settings: PresenceSettings,
    replica: u64,
    mut rx: mpsc::UnboundedReceiver<Command>,
    shutdown: Shutdown,
) {
    let mut local: Local = HashMap::new();
    let mut version = 0u64;
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => {
                // Goodbye: the other replicas need not wait for our beats to expire.
                for chat in local.keys() {
                    version += 1;
                    out.publish(beat(*chat, replica, version, None)).await;
                }
                return;
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let mut announced = None;
                let changed = match cmd {
                    Command::Enter { chat, user, username, announced: ack } => {
                        announced = ack;
                        let users = local.entry(chat).or_default();
                        let entry = users.entry(user).or_insert((username, 0));
                        entry.1 += 1;
                        (entry.1 == 1).then_some(chat)
                    }
                    Command::Leave { chat, user } => leave(&mut local, chat, user).then_some(chat),
                    Command::Announce { chat } => local.contains_key(&chat).then_some(chat),
                };
                if let Some(chat) = changed {
                    version += 1;
                    out.publish(beat(chat, replica, version, local.get(&chat))).await;
                }
                if let Some(ack) = announced {
                    let _ = ack.send(());
                }
            }
            _ = tick.tick() => {
                for (chat, users) in &local {
                    version += 1;
                    out.publish(beat(*chat, replica, version, Some(users))).await;
                }
            }
        }
    }
}

/// One stream of `user` on `chat` ended; true when that took the user offline here.
fn leave(local: &mut Local, chat: i64, user: i64) -> bool {
    let Some(users) = local.get_mut(&chat) else {
        return false;
    };
    let Some(entry) = users.get_mut(&user) else {
        return false;
    };
    entry.1 = entry.1.saturating_sub(1);
    if entry.1 > 0 {
        return false;
    }
    users.remove(&user);
    if users.is_empty() {
        local.remove(&chat);
    }
    true
}

fn beat(
    chat: i64,
    replica: u64,
    version: u64,
    users: Option<&BTreeMap<i64, (String, usize)>>,
) -> LiveEvent {
    LiveEvent::Beat(Beat {
        chat_id: chat,
        replica,
        version,
        users: users
            .into_iter()
            .flatten()
            .map(|(id, (name, _))| pb::OnlineMember {
                user_id: *id,
                username: name.clone(),
            })
            .collect(),
    })
}

/// Where this replica's own beats go: to its own fan-outs first, then to the bus (whose
/// copy of the beat this replica's fan-outs then ignore, having seen its version).
pub type LocalBeats = Arc<dyn Fn(&LiveEvent) + Send + Sync>;

struct Announcer {
    bus: Arc<dyn EventBus>,
    here: LocalBeats,
}

impl Announcer {
    async fn publish(&self, event: LiveEvent) {
        (self.here)(&event);
        let chat_id = event.chat_id();
        if let Err(e) = self.bus.publish(&ChatEvent::Live(event)).await {
            // The next heartbeat says it again.
            tracing::warn!(chat_id, error = %e, "announcing presence failed");
        }
    }
}

/// What one replica said last.
struct Seen {
    version: u64,
    users: BTreeMap<i64, String>,
    expires: Instant,
}

/// A fan-out's view of who is online in its chat: the last beat of every replica.
///
/// Changes are numbered. The fan-out delivers a change while it holds the roster, so a
/// stream that reads [`online`](Roster::online) and its number `n` has every change up to
/// `n` queued already and drops those: its snapshot holds them.
pub struct Roster {
    chat_id: i64,
    ttl: Duration,
    replicas: HashMap<u64, Seen>,
    /// The number of the last change.
    changes: u64,
    /// Until when a fan-out that just started waits for the replicas to answer its query
    /// before its streams take their snapshot.
    settling_until: Option<Instant>,
}

impl Roster {
    /// The roster of `chat_id`, where a replica's beat counts for `ttl` after it arrived.
    pub fn new(chat_id: i64, ttl: Duration) -> Self {
        Self {
            chat_id,
            ttl,
            replicas: HashMap::new(),
            changes: 0,
            settling_until: None,
        }
    }

    /// The fan-out asked the replicas for their beats: snapshots wait until `until`.
    pub fn asked(&mut self, until: Instant) {
        self.settling_until = Some(until);
    }

    /// When a snapshot may be taken (None: now).
    pub fn settled_at(&self) -> Option<Instant> {
        self.settling_until
    }

    fn union(&self) -> BTreeMap<i64, String> {
        let mut all = BTreeMap::new();
        for seen in self.replicas.values() {
            for (id, name) in &seen.users {
                all.insert(*id, name.clone());
            }
        }
        all
    }

    /// Everyone online now, by username, and the number of the last change.
    pub fn online(&self) -> (Vec<pb::OnlineMember>, u64) {
        let mut members: Vec<_> = self
            .union()
            .into_iter()
            .map(|(user_id, username)| pb::OnlineMember { user_id, username })
            .collect();
        members.sort_by(|a, b| a.username.cmp(&b.username).then(a.user_id.cmp(&b.user_id)));
        (members, self.changes)
    }

    /// Takes a replica's beat in; returns the changes it makes to the union.
    pub fn apply(&mut self, beat: Beat, now: Instant) -> Vec<LiveEvent> {
        let before = self.union();
        match self.replicas.get(&beat.replica) {
            Some(seen) if seen.version >= beat.version => return Vec::new(),
            _ => {}
        }
        // A goodbye (no users) is kept too, until it expires, so that its version still
        // turns away an older beat.
        self.replicas.insert(
            beat.replica,
            Seen {
                version: beat.version,
                users: beat
                    .users
                    .into_iter()
                    .map(|u| (u.user_id, u.username))
                    .collect(),
                expires: now + self.ttl,
            },
        );
        self.changes(before)
    }

    /// Forgets replicas whose beat expired; returns the changes that makes.
    pub fn expire(&mut self, now: Instant) -> Vec<LiveEvent> {
        let before = self.union();
        self.replicas.retain(|_, seen| seen.expires > now);
        self.changes(before)
    }

    fn changes(&mut self, before: BTreeMap<i64, String>) -> Vec<LiveEvent> {
        let after = self.union();
        let change = |user_id: i64, username: &str, online: bool| pb::Presence {
            chat_id: self.chat_id,
            user_id,
            username: username.to_owned(),
            online,
            ..Default::default()
        };
        let mut out: Vec<_> = before
            .iter()
            .filter(|(id, _)| !after.contains_key(id))
            .map(|(id, name)| change(*id, name, false))
            .collect();
        out.extend(
            after
                .iter()
                .filter(|(id, _)| !before.contains_key(id))
                .map(|(id, name)| change(*id, name, true)),
        );
        out.into_iter()
            .map(|p| {
                self.changes += 1;
                LiveEvent::Changed(self.changes, p)
            })
            .collect()
    }
}

/// The snapshot a stream of `caller` sends after `HistoryEnd`: the fan-out's online set
/// when the stream joined, with the caller in it (their stream makes them online, even
/// before their own replica's beat came round).
pub fn snapshot(
    chat_id: i64,
    mut online: Vec<pb::OnlineMember>,
    caller: Option<(i64, &str)>,
) -> pb::Presence {
    if let Some((id, name)) = caller {
        if !online.iter().any(|m| m.user_id == id) {
            online.push(pb::OnlineMember {
                user_id: id,
                username: name.to_owned(),
            });
            online.sort_by(|a, b| a.username.cmp(&b.username).then(a.user_id.cmp(&b.user_id)));
        }
    }
    pb::Presence {
        chat_id,
        snapshot: true,
        online_members: online,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: i64, name: &str) -> pb::OnlineMember {
        pb::OnlineMember {
            user_id: id,
            username: name.into(),
        }
    }

    fn beat(replica: u64, version: u64, users: &[(i64, &str)]) -> Beat {
        Beat {
            chat_id: 7,
            replica,
            version,
            users: users.iter().map(|(id, n)| member(*id, n)).collect(),
        }
    }

    fn summary(changes: &[LiveEvent]) -> Vec<(i64, bool)> {
        changes
            .iter()
            .filter_map(|c| match c {
                LiveEvent::Changed(_, p) => Some((p.user_id, p.online)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_union_of_replicas_changes_only_when_the_last_one_lets_go() {
        let now = Instant::now();
        let mut r = Roster::new(7, Duration::from_secs(30));
        assert_eq!(
            summary(&r.apply(beat(1, 1, &[(10, "alice")]), now)),
            [(10, true)]
        );
        assert_eq!(summary(&r.apply(beat(2, 1, &[(10, "alice")]), now)), []);
        // Replica 1 says goodbye: still online through 2.
        assert_eq!(summary(&r.apply(beat(1, 2, &[]), now)), []);
        assert_eq!(r.online(), (vec![member(10, "alice")], 1));
        assert_eq!(summary(&r.apply(beat(2, 2, &[]), now)), [(10, false)]);
        assert_eq!(r.online(), (vec![], 2));
    }

    #[test]
    fn an_older_beat_is_ignored() {
        let now = Instant::now();
        let mut r = Roster::new(7, Duration::from_secs(30));
        r.apply(beat(1, 5, &[(10, "alice")]), now);
        assert_eq!(summary(&r.apply(beat(1, 4, &[]), now)), []);
        assert_eq!(r.online().0, vec![member(10, "alice")]);
    }

    #[test]
    fn a_silent_replica_expires() {
        let now = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut r = Roster::new(7, ttl);
        r.apply(beat(1, 1, &[(10, "alice"), (11, "bob")]), now);
        r.apply(beat(2, 1, &[(11, "bob")]), now + Duration::from_secs(20));
        assert_eq!(summary(&r.expire(now + Duration::from_secs(29))), []);
        assert_eq!(summary(&r.expire(now + ttl)), [(10, false)]);
        assert_eq!(r.online().0, vec![member(11, "bob")]);
    }

    #[test]
    fn a_snapshot_holds_its_caller() {
        let s = snapshot(7, vec![member(11, "bob")], Some((10, "alice")));
        assert!(s.snapshot);
        assert_eq!(
            s.online_members,
            vec![member(10, "alice"), member(11, "bob")]
        );
        let s = snapshot(7, vec![member(10, "alice")], Some((10, "alice")));
        assert_eq!(s.online_members, vec![member(10, "alice")]);
    }

    #[test]
    fn own_events_stay_off_ones_own_stream() {
        let typing = LiveEvent::Typing(pb::Typing {
            chat_id: 7,
            user_id: 10,
            username: "alice".into(),
        });
        assert!(typing.for_stream(Some(10), 0).is_none());
        assert!(typing.for_stream(Some(11), 0).is_some());
        assert!(typing.for_stream(None, 0).is_some());
        assert!(LiveEvent::Beat(beat(1, 1, &[]))
            .for_stream(Some(11), 0)
            .is_none());
        let change = LiveEvent::Changed(
            5,
            pb::Presence {
                chat_id: 7,
                user_id: 10,
                online: true,
                ..Default::default()
            },
        );
        assert!(change.for_stream(Some(10), 0).is_none(), "one's own");
        assert!(change.for_stream(Some(11), 5).is_none(), "in the snapshot");
        assert!(change.for_stream(Some(11), 4).is_some());
    }

    #[test]
    fn live_events_round_trip() {
        for e in [
            LiveEvent::Typing(pb::Typing {
                chat_id: 7,
                user_id: 10,
                username: "алиса".into(),
            }),
            LiveEvent::Beat(beat(3, 9, &[(10, "alice")])),
            LiveEvent::Query(Query { chat_id: 7 }),
        ] {
            let bytes = e.encode().expect("published kind");
            assert_eq!(LiveEvent::decode(e.kind(), &bytes).expect("decode"), e);
        }
        assert!(LiveEvent::decode("nonsense", b"").is_err());
    }

    #[test]
    fn typing_is_forwarded_once_per_period() {
        let limiter = TypingLimiter::default();
        assert!(limiter.allow(10, 7));
        assert!(!limiter.allow(10, 7));
        assert!(limiter.allow(11, 7), "another user");
        assert!(limiter.allow(10, 8), "another chat");
    }
}
