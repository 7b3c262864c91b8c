//! Rate limits that slow down guessing: passwords at `Login`, the service secret at
//! `IssueServiceToken`, and account creation at `Register`.
//!
//! Why it is shaped this way:
//! - **Counted in the auth database**, not in a map in the process: every replica counts
//!   into the same rows (table `rate_limits`), so N replicas still allow the limit once,
//!   not N times. Each count is one atomic upsert, so concurrent attempts on any replica
//!   see distinct counts and none slips past the limit.
//! - **Counted before the expensive work**: an attempt is counted first and refused when
//!   over the limit, so a refused attempt costs no bcrypt; one already over its limit is
//!   refused after a single read, so a stream of refused attempts writes nothing. An attempt
//!   that turns out not to count (a login with the right password, a service token issued)
//!   is taken back afterwards, so limits on failures count only failures; a refused attempt
//!   is taken back too, so hammering a limit does not keep it closed for longer.
//! - **Fixed windows** per key: the first counted event opens a window of the limit's
//!   length, events in it are counted, the first event after it opens a new one. The retry
//!   delay given to a refused caller is the time left in the window.
//! - **Keys** are a scope and a subject: the lower-cased email for the per-account login
//!   limit (whether or not the account exists, so the limit does not reveal which do), the
//!   client's IP address for the others. Ended windows are deleted at most once a minute
//!   per replica, so the table holds only keys active in the last window.
//!
//! - **Logins of one account take turns** on each replica ([`Limiter::account_turn`]): an
//!   attempt is counted while its password is checked, so a user whose devices all log in
//!   at once would otherwise run past the limit with right passwords and be refused. Only
//!   a few of an account's logins are counted and checked at once per replica (a quarter
//!   of the limit, at least one); the others wait for their turn (a bounded number, a
//!   bounded time), then count. A right password is taken back before the next turn, so
//!   concurrent right logins never add up; wrong ones still count one by one, and a guesser
//!   gains nothing by sending many at once: they wait too.
//!
//! The client address is the TCP peer's. Behind a proxy every client would share the
//! proxy's address, so the operator can list trusted proxies (`RATE_LIMIT_TRUSTED_PROXIES`):
//! for a call from one of them the address is the right-most `x-forwarded-for` entry that
//! is not itself a trusted proxy. Headers from anyone else are ignored (a client could
//! write any address there).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;

use crate::{error::AuthError, store::UserStore};

/// How often a replica deletes ended windows.
const PRUNE_EVERY_SECS: i64 = 60;
/// Logins of one account that wait for their turn on one replica; more are refused.
const ACCOUNT_WAITING: usize = 64;
/// Longest wait for a turn: a login that waits longer is refused, to try again.
const ACCOUNT_WAIT: Duration = Duration::from_secs(30);

/// At most `max` counted events per `window` for one key; `max == 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Events allowed per window; 0 turns the limit off.
    pub max: u32,
    /// The window's length, from the first event counted in it; zero turns the limit off.
    pub window: Duration,
}

impl Limit {
    /// No limit.
    pub const OFF: Limit = Limit {
        max: 0,
        window: Duration::ZERO,
    };

    /// `max` events per `window_secs` seconds.
    pub const fn new(max: u32, window_secs: u64) -> Self {
        Limit {
            max,
            window: Duration::from_secs(window_secs),
        }
    }

    /// True when nothing is limited (`max` or the window is zero).
    pub fn is_off(&self) -> bool {
        self.max == 0 || self.window.is_zero()
    }

    /// `"<max>/<seconds>"` (e.g. `10/300`: ten per five minutes), or `off` (or `0`).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") || s == "0" {
            return Ok(Limit::OFF);
        }
        let (max, secs) = s
            .split_once('/')
            .context("must be <count>/<seconds> (e.g. 10/300) or off")?;
        let max: u32 = max.trim().parse().context("the count must be a number")?;
        let secs: u64 = secs
            .trim()
            .trim_end_matches('s')
            .parse()
            .context("the window must be a number of seconds")?;
        if max > 0 && secs == 0 {
            bail!("the window must be at least one second");
        }
        Ok(Limit::new(max, secs))
    }
}

/// The rate limits of the auth service (see `config` for the variables and defaults).
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Failed logins per account (email), whatever the address.
    pub login_per_account: Limit,
    /// Failed logins per client address, whatever the account.
    pub login_per_address: Limit,
    /// Registrations (every well-formed attempt: each costs a bcrypt) per client address.
    pub register_per_address: Limit,
    /// `IssueServiceToken` calls with a wrong secret per client address.
    pub service_token_per_address: Limit,
    /// Proxies whose `x-forwarded-for` header names the client (none by default).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            login_per_account: Limit::new(10, 300),
            login_per_address: Limit::new(30, 60),
            register_per_address: Limit::new(20, 600),
            service_token_per_address: Limit::new(10, 60),
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimits {
    /// Every limit off (for tools that must not be limited, e.g. a load generator's setup).
    pub fn off() -> Self {
        Self {
            login_per_account: Limit::OFF,
            login_per_address: Limit::OFF,
            register_per_address: Limit::OFF,
            service_token_per_address: Limit::OFF,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`) or a single address (`192.0.2.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// One network (`10.0.0.0/8`) or address (`192.0.2.1`, a network of one); surrounding
    /// whitespace is ignored, and an IPv4-mapped IPv6 address counts as the IPv4 address.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .with_context(|| format!("{s:?} is not an IP address or network"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .with_context(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// A comma-separated list, as `RATE_LIMIT_TRUSTED_PROXIES` holds it.
    pub fn parse_list(s: &str) -> anyhow::Result<Vec<Self>> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(IpNet::parse)
            .collect()
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses compare as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[whole] & mask) == (b[whole] & mask)
}

/// The address a call is counted against: the TCP peer's, or, when the peer is a trusted
/// proxy, the right-most `x-forwarded-for` entry that is not a trusted proxy. `None` when
/// the transport has no peer address.
pub fn client_address(
    peer: Option<SocketAddr>,
    metadata: &MetadataMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?.ip().to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Every x-forwarded-for header, in order, each a comma-separated list; read from the
    // right (the entry the nearest proxy added) until an address no trusted proxy has.
    let entries: Vec<&str> = metadata
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(client) {
                    break;
                }
            }
            // Something this service cannot read: stop at the last address it could.
            Err(_) => break,
        }
    }
    Some(client)
}

/// What a limit protects; names the key's scope, the metric label and the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Failed logins per account (email).
    LoginAccount,
    /// Failed logins per client address.
    LoginAddress,
    /// Registrations per client address.
    Register,
    /// Wrong service secrets per client address.
    ServiceToken,
}

impl Scope {
    /// The scope's part of the key and its metric label, e.g. `login-account`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::LoginAccount => "login-account",
            Scope::LoginAddress => "login-address",
            Scope::Register => "register-address",
            Scope::ServiceToken => "service-token-address",
        }
    }

    /// What the caller did too often, for the refusal's message.
    pub fn refusal(self) -> &'static str {
        match self {
            Scope::LoginAccount => "too many failed logins for this account",
            Scope::LoginAddress => "too many failed logins from this address",
            Scope::Register => "too many registrations from this address",
            Scope::ServiceToken => "too many wrong service secrets from this address",
        }
    }
}

/// Counts attempts against the limits in the store.
pub(crate) struct Limiter {
    store: Arc<dyn UserStore>,
    /// When this replica next deletes ended windows (Unix seconds).
    next_prune: AtomicI64,
    /// The turns of the accounts whose logins are in progress on this replica.
    turns: Arc<Turns>,
}

/// Per account key: its turns, and how many logins hold or wait for one. An entry lives
/// while a login of its account is in progress, so the map holds only those.
type Turns = Mutex<HashMap<String, (Arc<Semaphore>, usize)>>;

/// A login's place among its account's logins on this replica: a turn once
/// [`Limiter::account_turn`] returns it; dropping it hands the turn on.
pub(crate) struct Turn {
    turns: Arc<Turns>,
    key: String,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, users)) = turns.get_mut(&self.key) {
            *users -= 1;
            if *users == 0 {
                turns.remove(&self.key);
            }
        }
    }
}

/// Events counted for one attempt. Dropping it leaves them counted; [`Limiter::uncount`]
/// takes them back.
#[must_use = "an attempt is either left counted or taken back with Limiter::uncount"]
pub(crate) struct Counted {
    keys: Vec<String>,
}

impl Limiter {
    pub fn new(store: Arc<dyn UserStore>) -> Self {
        Self {
            store,
            next_prune: AtomicI64::new(0),
            turns: Arc::default(),
        }
    }

    /// Waits until this login of `account` may be counted and checked: at most a quarter
    /// of `limit` (at least one) of an account's logins at once on this replica, so that
    /// right passwords checked together do not add up past the limit (see the module
    /// docs). Refused when [`ACCOUNT_WAITING`] logins of the account already wait, or the
    /// wait passes [`ACCOUNT_WAIT`]. No wait when the limit is off.
    pub async fn account_turn(&self, limit: Limit, account: &str) -> Result<Turn, AuthError> {
        if limit.is_off() {
            return Ok(Turn {
                turns: self.turns.clone(),
                key: String::new(),
                _permit: None,
            });
        }
        take_turn(&self.turns, (limit.max as usize / 4).max(1), account).await
    }

    /// Counts one attempt against each `(scope, limit, subject)`, in order; when one is
    /// over its limit, takes back what this attempt counted and refuses it with the time
    /// left in that window. Limits that are off are skipped.
    pub async fn count(&self, checks: &[(Scope, Limit, &str)]) -> Result<Counted, AuthError> {
        let now = Utc::now();
        self.maybe_prune(now).await;
        let checks: Vec<(Scope, Limit, String)> = checks
            .iter()
            .filter(|(_, limit, _)| !limit.is_off())
            .map(|&(scope, limit, subject)| (scope, limit, format!("{}:{subject}", scope.name())))
            .collect();
        // A read first: an attempt already over a limit is refused without writing, which
        // is what an attacker's stream of attempts mostly is.
        for (scope, limit, key) in &checks {
            if let Some((hits, reset_at)) = self.store.rate_limit(key).await? {
                if reset_at > now && hits >= i64::from(limit.max) {
                    return Err(refuse(*scope, reset_at - now));
                }
            }
        }
        // Then the counts themselves, which decide (the read above may be stale).
        let mut counted = Counted { keys: Vec::new() };
        for (scope, limit, key) in checks {
            let window = chrono::Duration::from_std(limit.window).map_err(anyhow::Error::from)?;
            let (hits, reset_at) = self.store.hit_rate_limit(&key, now, now + window).await?;
            counted.keys.push(key);
            if hits > i64::from(limit.max) {
                self.uncount(counted).await;
                return Err(refuse(scope, reset_at - now));
            }
        }
        Ok(counted)
    }

    /// Takes back the events of `counted`. A failure only leaves them counted (logged).
    pub async fn uncount(&self, counted: Counted) {
        for key in &counted.keys {
            if let Err(e) = self.store.unhit_rate_limit(key).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "taking back a rate-limit count failed"
                );
            }
        }
    }

    /// Deletes ended windows when this replica has not for a minute. One replica's prune
    /// is enough for all; several pruning is harmless.
    async fn maybe_prune(&self, now: DateTime<Utc>) {
        let next = self.next_prune.load(Ordering::Relaxed);
        if now.timestamp() < next {
            return;
        }
        let claimed = self.next_prune.compare_exchange(
            next,
            now.timestamp() + PRUNE_EVERY_SECS,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if claimed.is_err() {
            return; // another call of this replica prunes now
        }
        match self.store.prune_rate_limits(now).await {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "pruned ended rate-limit windows"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "pruning rate limits failed"),
        }
    }
}

/// The refusal of an attempt over the limit of `scope`, `left` before its window ends.
fn refuse(scope: Scope, left: chrono::Duration) -> AuthError {
    let retry_after = left.to_std().unwrap_or(Duration::ZERO);
    tracing::debug!(limit = scope.name(), ?retry_after, "rate limited");
    metrics::counter!("auth_rate_limited_total", "limit" => scope.name()).increment(1);
    AuthError::RateLimited {
        message: scope.refusal(),
        retry_after,
    }
}

/// A turn among `account`'s logins, `at_once` of them at a time (see
/// [`Limiter::account_turn`]).
async fn take_turn(turns: &Arc<Turns>, at_once: usize, account: &str) -> Result<Turn, AuthError> {
    let key = account.to_owned();
    let checks = {
        let mut map = turns.lock().unwrap_or_else(|e| e.into_inner());
        let (checks, users) = map
            .entry(key.clone())
            .or_insert_with(|| (Arc::new(Semaphore::new(at_once)), 0));
        if *users >= at_once + ACCOUNT_WAITING {
            return Err(busy());
        }
        *users += 1;
        checks.clone()
    };
    // From here the count of users is taken back by the turn's drop, also when this call
    // is dropped while it waits (the client went away).
    let mut turn = Turn {
        turns: turns.clone(),
        key,
        _permit: None,
    };
    match tokio::time::timeout(ACCOUNT_WAIT, checks.acquire_owned()).await {
        Ok(Ok(permit)) => {
            turn._permit = Some(permit);
            Ok(turn)
        }
        // The semaphore is never closed; a wait that ran out is refused.
        _ => Err(busy()),
    }
}

/// The refusal of a login whose account has too many logins waiting on this replica.
fn busy() -> AuthError {
    metrics::counter!("auth_rate_limited_total", "limit" => "login-account-waiting").increment(1);
    AuthError::RateLimited {
        message: "too many logins to this account at once",
        retry_after: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many logins of `key` hold or wait for a turn.
    fn users(turns: &Arc<Turns>, key: &str) -> usize {
        turns.lock().unwrap().get(key).map_or(0, |(_, n)| *n)
    }

    #[tokio::test]
    async fn turns_are_handed_on_and_given_back_by_logins_that_go_away() {
        let turns: Arc<Turns> = Arc::default();
        let first = take_turn(&turns, 1, "a@x").await.unwrap();
        // A second login waits; its client goes away while it waits.
        let waited =
            tokio::time::timeout(Duration::from_millis(20), take_turn(&turns, 1, "a@x")).await;
        assert!(waited.is_err(), "the second login waits for the first");
        assert_eq!(
            users(&turns, "a@x"),
            1,
            "the one that went away is not counted"
        );
        // Another account does not wait for this one.
        let other = take_turn(&turns, 1, "b@x").await.unwrap();
        let next = tokio::spawn({
            let turns = turns.clone();
            async move { take_turn(&turns, 1, "a@x").await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!next.is_finished());
        drop(first);
        next.await.unwrap().unwrap();
        drop(other);
        assert!(
            turns.lock().unwrap().is_empty(),
            "no entry outlives its logins"
        );
    }

    #[tokio::test]
    async fn too_many_waiting_logins_of_one_account_are_refused() {
        let turns: Arc<Turns> = Arc::default();
        let _held = take_turn(&turns, 1, "a@x").await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..ACCOUNT_WAITING {
            let turns = turns.clone();
            waiting.push(tokio::spawn(async move {
                take_turn(&turns, 1, "a@x").await.map(drop)
            }));
        }
        while users(&turns, "a@x") < 1 + ACCOUNT_WAITING {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = take_turn(&turns, 1, "a@x").await;
        assert!(
            matches!(refused, Err(AuthError::RateLimited { .. })),
            "one more than the bound is refused at once"
        );
        assert_eq!(users(&turns, "a@x"), 1 + ACCOUNT_WAITING);
        for w in waiting {
            w.abort();
        }
    }

    #[test]
    fn limits_parse() {
        assert_eq!(Limit::parse("10/300").unwrap(), Limit::new(10, 300));
        assert_eq!(Limit::parse(" 5 / 60s ").unwrap(), Limit::new(5, 60));
        assert!(Limit::parse("off").unwrap().is_off());
        assert!(Limit::parse("0").unwrap().is_off());
        assert!(Limit::parse("10").is_err());
        assert!(Limit::parse("10/0").is_err());
        assert!(Limit::parse("x/10").is_err());
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let one = IpNet::parse("192.0.2.1").unwrap();
        assert!(one.contains("192.0.2.1".parse().unwrap()));
        assert!(!one.contains("192.0.2.2".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nonsense").is_err());
        assert_eq!(IpNet::parse_list(" 10.0.0.0/8, ,::1").unwrap().len(), 2);
    }

    fn xff(values: &[&str]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for v in values {
            m.append("x-forwarded-for", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.9:4000".parse().unwrap();
        let trusted = IpNet::parse_list("10.0.0.0/8").unwrap();
        let m = xff(&["203.0.113.1, 10.0.0.7"]);
        // From a stranger the header is ignored.
        assert_eq!(
            client_address(Some(stranger), &m, &trusted),
            Some(stranger.ip())
        );
        // From a trusted proxy: the right-most entry that is not a trusted proxy.
        assert_eq!(
            client_address(Some(proxy), &m, &trusted),
            Some("203.0.113.1".parse().unwrap())
        );
        // A client cannot hide behind a forged left-most entry.
        let forged = xff(&["1.2.3.4", "203.0.113.1"]);
        assert_eq!(
            client_address(Some(proxy), &forged, &trusted),
            Some("203.0.113.1".parse().unwrap())
        );
        // No header, or no trusted proxies configured: the peer.
        assert_eq!(
            client_address(Some(proxy), &MetadataMap::new(), &trusted),
            Some(proxy.ip())
        );
        assert_eq!(client_address(Some(proxy), &m, &[]), Some(proxy.ip()));
        assert_eq!(client_address(None, &m, &trusted), None);
    }
}
