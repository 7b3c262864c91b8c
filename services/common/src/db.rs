//! Connecting to a service's database and bringing the schema up to date at start-up.
//!
//! Every service runs on PostgreSQL in the split deployment and on an SQLite file in the
//! embedded `chat-server`; the URL's scheme decides (`postgres://` or `sqlite://`). Each
//! service keeps one migration folder per engine, because the two dialects differ where it
//! matters (sequences, locking), and one store implementation per engine behind its
//! storage trait: the service logic above never knows which one runs.
//!
//! PostgreSQL: the database is created when missing (a fresh cluster needs no manual step),
//! and sqlx's migrator takes an advisory lock, so several replicas starting at once apply
//! each migration exactly once.
//!
//! Both: a database that a newer version of the service has migrated further is accepted
//! (sqlx's `ignore_missing`), so a rollback to the previous version, or an old pod that
//! restarts during a rollout, still starts; that is safe because migrations are
//! expand/contract (docs/migrations.md). Migrations this version knows are still checked
//! against what was applied.
//!
//! SQLite: the file (and its directory) is created when missing; WAL journal so readers do
//! not block the writer; `synchronous=FULL` so a commit that returned survives a power
//! loss, since "stored" must mean stored; a busy timeout so concurrent writers wait rather
//! than fail. Writers start their transactions with [`begin_write`] (`BEGIN IMMEDIATE`):
//! a deferred transaction that reads and then writes can fail with SQLITE_BUSY when two
//! of them upgrade at once, an immediate one queues for the write lock up front.
//!
//! A database outage is a transient failure, and callers are told so: [`is_unavailable`]
//! recognises a lost or refused connection, a pool that could not get one in time, a
//! server shutting down and a locked SQLite file anywhere in an error's chain, and
//! `crate::error::internal` answers those UNAVAILABLE (retry with the same idempotency key)
//! instead of INTERNAL (which says "do not retry", although the write may have committed).
//! A PostgreSQL pool waits at most [`ACQUIRE_TIMEOUT`] for a connection, so calls made
//! while the server is down fail within that, not after sqlx's default 30 s (or the 10 s
//! used before). A monitor probes each pool ([`StorageHealth`]); services report it on
//! the gRPC health service (NOT_SERVING while storage is unreachable, so readiness probes
//! drain the replica) and go back to SERVING by themselves when it returns: the pool
//! reconnects on its own, nothing is restarted. While it is down, [`FailFastLayer`] answers
//! calls that need storage UNAVAILABLE at once instead of after the acquire timeout.
//!
//! Every service's pool reports how many of its connections are in use
//! (`db_pool_connections`, sampled every few seconds) beside its maximum
//! (`db_pool_max_connections`), so that a pool running out, which shows to callers only as
//! slow calls and then timeouts, can be seen and alerted on before.

pub mod fail_fast;
pub mod group;

pub use fail_fast::{
    fail_fast, FailFast, FailFastLayer, Guarded, StorageGate, STORAGE_UNAVAILABLE,
};
pub use group::{Args, GroupWriter, WriteFuture};

use std::{
    collections::HashMap,
    path::Path,
    str::FromStr,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use tokio::sync::watch;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{
    error::BoxDynError,
    migrate::{MigrateDatabase, Migration, MigrationSource, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    PgPool, Postgres, Sqlite, SqlitePool, Transaction,
};

use crate::Shutdown;

/// A migrated connection pool on one of the two engines.
#[derive(Clone, Debug)]
pub enum Database {
    /// The split deployment's engine: a `postgres://` URL.
    Postgres(PgPool),
    /// The embedded `chat-server`'s engine: a `sqlite://` file URL.
    Sqlite(SqlitePool),
}

/// [`Migrations::postgres_settings`] for a store whose every statement reads or writes
/// rows by key: its connections' planner may use nothing but indexes and nested loops.
///
/// Connections plan each prepared statement once (see [`connect_and_migrate`]), so a plan
/// must suit the table at any size. A batch statement that joins its `UNNEST` arrays to a
/// table, planned while the table was small (a new deployment, a new database), hashes the
/// arrays and scans the whole table, and goes on doing so as the table grows until an
/// ANALYZE replaces the plan: the notifier's finish of 448 deliveries took 17 ms at 70k
/// rows instead of 1.3 ms, and the bench's saga rate alternated between ~90 and ~280/s on
/// whichever plan its connections held. Planning such statements on every run instead
/// cost as much as running them (the notifier's record of a batch: 0.52 ms of planning,
/// 0.58 ms of execution, counted with pg_stat_statements). With sequential scans, hash and
/// merge joins priced out, the one plan left is the index lookup per array element, right
/// at every size. A table with no usable index is still scanned.
pub const KEYED_ONLY: &[(&str, &str)] = &[
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

/// A service's migrations, one set per engine.
#[derive(Clone, Copy)]
pub struct Migrations {
    /// Applied when the URL names a PostgreSQL database.
    pub postgres: &'static Migrator,
    /// Applied when the URL names an SQLite file.
    pub sqlite: &'static Migrator,
    /// Settings of every PostgreSQL session of the store (such as [`KEYED_ONLY`]), on top
    /// of those every store has.
    pub postgres_settings: &'static [(&'static str, &'static str)],
}

impl Migrations {
    /// A service store's pool on `url` (`postgres://...` or `sqlite://...`) with at most
    /// `max_connections`: the database created when missing and migrated, its monitors
    /// running on `shutdown` (see [`Database::monitored`]).
    pub async fn open(
        self,
        url: &str,
        max_connections: u32,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Database> {
        Ok(Database::connect(url, self, max_connections)
            .await?
            .monitored(url, shutdown))
    }

    /// Creates the database at `url` when missing and applies the migrations, then returns.
    pub async fn apply(self, url: &str) -> anyhow::Result<()> {
        Database::connect(url, self, 1).await?.close().await;
        Ok(())
    }
}

impl Database {
    /// Connects to `url` (`postgres://...` or `sqlite://...`) with at most
    /// `max_connections`, creating the database when missing and applying `migrations`.
    pub async fn connect(
        url: &str,
        migrations: Migrations,
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        if is_sqlite(url) {
            let pool = connect_sqlite(url, max_connections).await?;
            tolerant(migrations.sqlite)
                .await?
                .run(&pool)
                .await
                .context("applying migrations")?;
            Ok(Self::Sqlite(pool))
        } else {
            let pool = connect_and_migrate(
                url,
                migrations.postgres,
                migrations.postgres_settings,
                max_connections,
            )
            .await?;
            Ok(Self::Postgres(pool))
        }
    }

    /// Starts the pool's monitors on `shutdown`'s tracker: its connection gauges, and the
    /// reachability probe that [`StorageHealth::of`]`(url)` reports (health, fail-fast).
    /// They stop at shutdown or when the pool is closed. A service's store opens its pool
    /// through this; a pool opened only to migrate needs neither.
    pub fn monitored(self, url: &str, shutdown: &Shutdown) -> Self {
        match &self {
            Self::Postgres(pool) => watch_pool(pool.clone(), database_label(url), shutdown),
            Self::Sqlite(pool) => watch_pool(pool.clone(), database_label(url), shutdown),
        }
        StorageHealth::monitor(self.clone(), url, shutdown);
        self
    }

    /// Whether [`close`](Self::close) was called; a closed pool hands out no connection.
    pub fn is_closed(&self) -> bool {
        match self {
            Self::Postgres(p) => p.is_closed(),
            Self::Sqlite(p) => p.is_closed(),
        }
    }

    /// Every connection open and in use.
    fn is_saturated(&self) -> bool {
        let (size, idle, max) = match self {
            Self::Postgres(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
            Self::Sqlite(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
        };
        size >= max && idle == 0
    }

    /// One round trip to the database.
    async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            Self::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
        }
    }

    /// Closes the pool, waiting for connections in use to be returned. Clones share the
    /// pool, so they are closed too.
    pub async fn close(&self) {
        match self {
            Self::Postgres(p) => p.close().await,
            Self::Sqlite(p) => p.close().await,
        }
    }
}

/// Whether `url` names an SQLite database.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The `sqlite://` URL of the file at `path`, created when missing.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A pool on PostgreSQL `url` with `max_connections` whose sessions have `settings`, the
/// database created if needed and migrated.
///
/// Its connections plan each prepared statement once and reuse the plan
/// (`plan_cache_mode = force_generic_plan`). Left to choose, PostgreSQL planned again on
/// every execution each statement that binds arrays (a batch of messages, deliveries or
/// outbox ids), because a plan made for the array in hand always looks cheaper: for the
/// notifier's record of a batch, planning cost as much as running it. A plan that would
/// not suit its table once the table has grown is what [`KEYED_ONLY`] rules out for the
/// stores that need it; the others' plans are made again whenever autovacuum's ANALYZE
/// finds their tables changed.
pub async fn connect_and_migrate(
    url: &str,
    migrator: &Migrator,
    settings: &[(&str, &str)],
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    if !Postgres::database_exists(url)
        .await
        .context("checking whether the database exists")?
    {
        // Two replicas may race here; the loser's "already exists" is fine.
        if let Err(e) = Postgres::create_database(url).await {
            if !Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(e).context("creating the database");
            }
        }
    }
    let options = PgConnectOptions::from_str(url)
        .context("parsing the PostgreSQL URL")?
        .options([("plan_cache_mode", "force_generic_plan")])
        .options(settings.iter().copied());
    let pool = pg_pool_options(max_connections)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    tolerant(migrator)
        .await?
        .run(&pool)
        .await
        .context("applying migrations")?;
    Ok(pool)
}

/// How every PostgreSQL pool is set up: bounded, failing fast, and pinging only a
/// connection that sat idle. sqlx would ping every connection it hands out: a round trip
/// per query, a third of the database work of a send. A connection in steady use is known
/// good; one that sat idle (through a database restart, say) is pinged, and dropped for a
/// fresh one when the ping fails.
fn pg_pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_IF_IDLE_FOR {
                    return Ok(true);
                }
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
}

/// How many of a service's `max_connections` to PostgreSQL `url` go to its relaxed pool
/// ([`relaxed_commits`]): a third, at least one; none for SQLite. The service opens its
/// main pool with the rest, so that both together stay within what it was given (the
/// database's connection limit is shared by every replica of every service).
pub fn relaxed_share(url: &str, max_connections: u32) -> u32 {
    if url.starts_with("sqlite:") {
        0
    } else {
        (max_connections / 3).max(1)
    }
}

/// A second pool on `pool`'s database whose commits do not wait for the disk
/// (`synchronous_commit = off`), for writes that are redone if a crash loses them: a
/// claim, a step of a saga that its recovery runs again. Such a commit is visible at once
/// and durable within a fraction of a second; a later durable commit on any connection
/// makes it durable too, since the log is flushed in order. Connects lazily.
pub fn relaxed_commits(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    pg_pool_options(max_connections).connect_lazy_with(options)
}

/// `migrator`'s migrations, tolerating applied ones it does not know (a newer version's).
async fn tolerant(migrator: &Migrator) -> anyhow::Result<Migrator> {
    /// The migrations of an existing migrator, as a source for a new one.
    #[derive(Debug)]
    struct Known(Vec<Migration>);
    impl MigrationSource<'static> for Known {
        fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
            Box::pin(async move { Ok(self.0) })
        }
    }
    let mut tolerant = Migrator::new(Known(migrator.iter().cloned().collect()))
        .await
        .context("copying the migrations")?;
    tolerant.set_ignore_missing(true);
    Ok(tolerant)
}

/// A pool on the SQLite file `url` names, created (with its directory) when missing.
pub async fn connect_sqlite(url: &str, max_connections: u32) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("parsing the SQLite URL {url}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    let file = options.get_filename().to_path_buf();
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .with_context(|| format!("opening the SQLite database {}", file.display()))?;
    Ok(pool)
}

/// The longest a call waits for a PostgreSQL connection. While the server is down, sqlx
/// keeps trying to connect until this passes, so it is how long a call made during an
/// outage takes to answer UNAVAILABLE; a healthy pool that stays exhausted this long is
/// overloaded, and UNAVAILABLE (try again) is the right answer there too.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pooled PostgreSQL connection idle at least this long is pinged before it is used.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Whether `err` (anywhere in its chain) says the database cannot be reached right now:
/// a transient failure that a retry may overcome, not a fault of the request or a bug.
pub fn is_unavailable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(sqlx_unavailable)
    })
}

fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // A connection that broke mid-message shows as a protocol error.
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_code(&code)),
        _ => false,
    }
}

/// Database error codes that mean "not now": PostgreSQL's connection exceptions (class
/// 08), shutdowns and start-ups in progress (57P01-57P03), too many connections (53300);
/// SQLite's busy, locked, I/O and cannot-open results (by primary code, the low byte).
fn unavailable_code(code: &str) -> bool {
    if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300") {
        return true;
    }
    match code.parse::<i32>() {
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_CANTOPEN
        Ok(n) => matches!(n & 0xff, 5 | 6 | 10 | 14),
        Err(_) => false,
    }
}

/// Whether a service's database answers, as a monitor of its pool last found it.
///
/// [`Database::connect`] starts one monitor per pool and registers it under the pool's
/// URL, where the service that opened the pool finds it ([`StorageHealth::of`]) to report
/// it on its gRPC health service. Keyed by URL so that services sharing a process (the
/// embedded server, tests) each see their own database.
#[derive(Clone)]
pub struct StorageHealth {
    up: watch::Receiver<bool>,
}

/// How often a monitor probes its pool while the database answers, and while it does not.
const PROBE_EVERY_UP: Duration = Duration::from_millis(1000);
const PROBE_EVERY_DOWN: Duration = Duration::from_millis(250);

fn registry() -> &'static Mutex<HashMap<String, StorageHealth>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, StorageHealth>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

impl StorageHealth {
    /// The monitor of the pool opened on `url`; always up when none was opened.
    pub fn of(url: &str) -> Self {
        let registry = registry().lock().unwrap_or_else(|p| p.into_inner());
        registry.get(url).cloned().unwrap_or_else(|| Self {
            up: watch::channel(true).1,
        })
    }

    /// Whether the last probe reached the database (true until a probe fails).
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Waits for the next change, returning the new state; None once the monitor stopped.
    pub async fn changed(&mut self) -> Option<bool> {
        self.up.changed().await.ok()?;
        Some(*self.up.borrow_and_update())
    }

    /// Probes `pool` with `SELECT 1` until it is closed or `shutdown`, publishing whether it
    /// answers. A pool whose every connection is busy is not probed (it is in use, so the
    /// database answered a moment ago), so that load is not mistaken for an outage.
    fn monitor(pool: Database, url: &str, shutdown: &Shutdown) {
        let (tx, rx) = watch::channel(true);
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.to_owned(), Self { up: rx });
        let label = database_label(url);
        let url = url.to_owned();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let gauge = metrics::gauge!("db_up", "database" => label.clone());
            gauge.set(1.0);
            while !pool.is_closed() {
                let every = if *tx.borrow() {
                    PROBE_EVERY_UP
                } else {
                    PROBE_EVERY_DOWN
                };
                tokio::select! {
                    _ = stop.wait() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                if pool.is_saturated() || pool.is_closed() {
                    continue;
                }
                let probe = tokio::select! {
                    _ = stop.wait() => break,
                    probe = tokio::time::timeout(
                        ACQUIRE_TIMEOUT + Duration::from_secs(1),
                        pool.ping(),
                    ) => probe,
                };
                let up = match probe {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        let e = anyhow::Error::from(e);
                        if !is_unavailable(&e) {
                            tracing::warn!(database = %label, error = %format!("{e:#}"), "storage probe failed");
                        }
                        false
                    }
                    Err(_) => false,
                };
                if tx.send_if_modified(|was| std::mem::replace(was, up) != up) {
                    gauge.set(if up { 1.0 } else { 0.0 });
                    if up {
                        tracing::info!(database = %label, "storage reachable again");
                    } else {
                        tracing::warn!(database = %label, "storage unreachable");
                    }
                }
            }
            let mut registry = registry().lock().unwrap_or_else(|p| p.into_inner());
            if registry
                .get(&url)
                .is_some_and(|h| h.up.same_channel(&tx.subscribe()))
            {
                registry.remove(&url);
            }
        });
    }

    /// Keeps `services` (gRPC health names; "" is the whole server) at `reporter` in step
    /// with this storage: NOT_SERVING while it is unreachable, SERVING again when it
    /// answers. Runs until the monitor stops or `shutdown` (the server's, which tracks it).
    pub fn report(
        mut self,
        reporter: tonic_health::server::HealthReporter,
        services: Vec<String>,
        shutdown: &Shutdown,
    ) {
        use tonic_health::ServingStatus;
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let mut up = self.is_up();
            loop {
                let status = if up {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for service in &services {
                    reporter.set_service_status(service, status).await;
                }
                let changed = tokio::select! {
                    _ = stop.wait() => return,
                    changed = self.changed() => changed,
                };
                match changed {
                    Some(now) => up = now,
                    None => return,
                }
            }
        });
    }
}

/// How often a pool's use is sampled.
const POOL_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The database a URL names, as metrics label it: the path's last segment without query
/// (`chat`), or an SQLite file's stem.
fn database_label(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or(path);
    last.strip_suffix(".db").unwrap_or(last).to_owned()
}

/// Reports `pool`'s connections as gauges labelled `database`, until the pool is closed or
/// `shutdown`. The task holds a handle, so an unclosed pool lives until then.
fn watch_pool<DB: sqlx::Database>(pool: sqlx::Pool<DB>, database: String, shutdown: &Shutdown) {
    let max = f64::from(pool.options().get_max_connections());
    metrics::gauge!("db_pool_max_connections", "database" => database.clone()).set(max);
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let in_use = metrics::gauge!("db_pool_connections", "database" => database.clone(), "state" => "in_use");
        let idle =
            metrics::gauge!("db_pool_connections", "database" => database, "state" => "idle");
        while !pool.is_closed() {
            let open = pool.size();
            let free = u32::try_from(pool.num_idle()).unwrap_or(open);
            in_use.set(f64::from(open.saturating_sub(free)));
            idle.set(f64::from(free));
            tokio::select! {
                _ = stop.wait() => return,
                _ = tokio::time::sleep(POOL_SAMPLE_EVERY) => {}
            }
        }
    });
}

/// A write transaction on SQLite that holds the write lock from its first statement.
pub async fn begin_write(pool: &SqlitePool) -> sqlx::Result<Transaction<'static, Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// A pool of one connection on the same SQLite file as `pool`, for a store's writes: its
/// writers then queue in order on the async side instead of polling SQLite's busy handler,
/// which sleeps up to 100 ms between tries and leaves the lock idle meanwhile. Writes from
/// other processes on the same file still wait through the busy timeout.
pub async fn sqlite_writer(pool: &SqlitePool) -> anyhow::Result<SqlitePool> {
    let options = (*pool.connect_options()).clone();
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .context("opening the SQLite writer connection")
}

/// `t` as every SQLite schema stores times: RFC 3339 in UTC with always six fractional
/// digits (`2024-05-01T12:00:00.123456Z`). One fixed width means comparing two as text
/// compares them as times (indexes and `ORDER BY` work on the text), and sqlx decodes
/// the text back into a `DateTime<Utc>` by itself, so row mapping can be written once for
/// both engines.
pub fn sqlite_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The end of a lease of `lease` taken at `now`, as [`sqlite_time`] writes it: what the
/// SQLite stores put in their `lease_until` columns. An error only for a lease too long for
/// the calendar.
pub fn sqlite_lease_end(now: DateTime<Utc>, lease: Duration) -> anyhow::Result<String> {
    let lease = chrono::TimeDelta::from_std(lease).context("lease out of range")?;
    Ok(sqlite_time(now + lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_time_sorts_as_text_and_decodes_back() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        let times = [
            DateTime::from_timestamp_micros(1).expect("time"),
            DateTime::from_timestamp_micros(999_999).expect("time"),
            DateTime::from_timestamp_micros(1_000_000).expect("time"),
            DateTime::from_timestamp_micros(1_733_540_000_123_456).expect("time"),
            DateTime::from_timestamp_micros(1_733_540_000_123_457).expect("time"),
        ];
        for pair in times.windows(2) {
            assert!(sqlite_time(pair[0]) < sqlite_time(pair[1]), "{pair:?}");
        }
        for t in times {
            let back: DateTime<Utc> = sqlx::query_scalar("SELECT ?")
                .bind(sqlite_time(t))
                .fetch_one(&pool)
                .await
                .expect("decodes");
            assert_eq!(back, t);
        }
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_unavailable_not_internal() {
        // Nothing listens on port 1: sqlx retries until the acquire timeout.
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(300))
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .expect("lazy pool");
        let err = sqlx::query("SELECT 1")
            .execute(&pool)
            .await
            .expect_err("down");
        let err = anyhow::Error::from(err).context("reading a chat");
        assert!(is_unavailable(&err), "{err:?}");
        assert_eq!(
            crate::error::internal(&err).code(),
            tonic::Code::Unavailable
        );
        let bug = anyhow::Error::from(sqlx::Error::RowNotFound).context("reading a chat");
        assert!(!is_unavailable(&bug));
        assert_eq!(crate::error::internal(&bug).code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn a_locked_sqlite_file_is_unavailable_not_internal() {
        let dir = tempfile::tempdir().expect("dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("locked.db"))
            .create_if_missing(true)
            .busy_timeout(Duration::ZERO);
        let holder = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .expect("open");
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&holder)
            .await
            .expect("create");
        let mut lock = holder.begin_with("BEGIN EXCLUSIVE").await.expect("lock");
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *lock)
            .await
            .expect("insert under the lock");
        let other = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("open");
        let err = sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&other)
            .await
            .expect_err("the file is locked");
        let err = anyhow::Error::from(err).context("storing a message");
        assert!(is_unavailable(&err), "{err:?}");
        assert_eq!(
            crate::error::internal(&err).code(),
            tonic::Code::Unavailable
        );
    }

    #[test]
    fn databases_are_labelled_by_name() {
        assert_eq!(
            database_label("postgres://postgres@127.0.0.1:5432/chat"),
            "chat"
        );
        assert_eq!(
            database_label("postgres://u:p@db:5432/users?sslmode=require"),
            "users"
        );
        assert_eq!(
            database_label("sqlite:///var/lib/grpc-chat/saga.db"),
            "saga"
        );
    }
}
