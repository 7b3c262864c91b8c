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
//! SQLite: the file (and its directory) is created when missing; WAL journal so readers do
//! not block the writer; `synchronous=FULL` so a commit that returned survives a power
//! loss, since "stored" must mean stored; a busy timeout so concurrent writers wait rather
//! than fail. Writers start their transactions with [`begin_write`] (`BEGIN IMMEDIATE`):
//! a deferred transaction that reads and then writes can fail with SQLITE_BUSY when two
//! of them upgrade at once, an immediate one queues for the write lock up front.

pub mod group;

pub use group::{Args, GroupWriter, WriteFuture};

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{
    migrate::{MigrateDatabase, Migrator},
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    PgPool, Postgres, Sqlite, SqlitePool, Transaction,
};

/// A migrated connection pool on one of the two engines.
#[derive(Clone, Debug)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A service's migrations, one set per engine.
#[derive(Clone, Copy)]
pub struct Migrations {
    pub postgres: &'static Migrator,
    pub sqlite: &'static Migrator,
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
            migrations
                .sqlite
                .run(&pool)
                .await
                .context("applying migrations")?;
            Ok(Self::Sqlite(pool))
        } else {
            let pool = connect_and_migrate(url, migrations.postgres, max_connections).await?;
            Ok(Self::Postgres(pool))
        }
    }

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

/// A pool on PostgreSQL `url` with `max_connections`, the database created if needed and
/// migrated.
pub async fn connect_and_migrate(
    url: &str,
    migrator: &Migrator,
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
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    migrator.run(&pool).await.context("applying migrations")?;
    Ok(pool)
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

/// The time `micros` microseconds after the Unix epoch (how chat's SQLite store keeps
/// times: exact and sortable).
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
