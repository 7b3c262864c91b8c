//! The SQLite backend of [`SagaStore`](super::SagaStore), for the embedded `chat-server`.
//!
//! SQLite has one writer at a time: a claim is one `UPDATE ... RETURNING`, which takes the
//! write lock before it reads, so two orchestrators never both take a saga (what `FOR
//! UPDATE SKIP LOCKED` gives on PostgreSQL). Every write goes through a [`GroupWriter`]:
//! a write's statements are in one transaction, shared with the log writes of whatever
//! other sagas are running, so eight log writes a saga do not cost eight fsyncs each.
//!
//! Times are stored as fixed-width RFC 3339 text ([`sqlite_time`]), which orders as text
//! the way the times do, so leases can be compared in SQL.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{sqlite::SqliteRow, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use chat_common::db::{sqlite_lease_end, sqlite_time, sqlite_writer, Args, GroupWriter};

use super::{
    saga_from_row, Logged, Opening, SagaRecord, SagaStore, StepRecord, StepResult, Then,
    SAGA_COLUMNS, STEP_COLUMNS,
};
use crate::domain::{FailCode, SagaState, SendRequest, StepKind, StepState};

/// The SQLite schema of the saga log.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite/saga");

/// The saga log in an SQLite file, for the embedded server.
pub struct SqliteSagaStore {
    pool: SqlitePool,
    /// Every write goes through it: the log writes of concurrent sagas share commits.
    writer: GroupWriter,
}

impl SqliteSagaStore {
    /// A store on `pool`; starts the group writer on a connection of its own.
    pub async fn new(pool: SqlitePool) -> anyhow::Result<Self> {
        let writer = GroupWriter::start(sqlite_writer(&pool).await?);
        Ok(Self { pool, writer })
    }

    async fn steps(&self, id: Uuid) -> anyhow::Result<Vec<StepRecord>> {
        let mut conn = self.pool.acquire().await.context("connecting")?;
        read_steps(&mut conn, id).await
    }

    async fn with_steps(&self, row: &SqliteRow) -> anyhow::Result<SagaRecord> {
        self.add_steps(saga_from_row(row)?).await
    }

    async fn add_steps(&self, mut saga: SagaRecord) -> anyhow::Result<SagaRecord> {
        saga.steps = self.steps(saga.id).await?;
        Ok(saga)
    }
}

#[async_trait]
impl SagaStore for SqliteSagaStore {
    async fn insert(
        &self,
        id: Uuid,
        initiator_id: i64,
        req: &SendRequest,
        lease: Duration,
        opening: &Opening,
    ) -> anyhow::Result<Option<SagaRecord>> {
        let now = Utc::now();
        let rows = opening.rows(lease);
        let lease_until = rows.lease.map(|l| sqlite_lease_end(now, l)).transpose()?;
        let at = sqlite_time(now);
        let (state, sender_id, error, code) = (
            rows.state,
            rows.sender_id,
            rows.error.to_owned(),
            rows.error_code,
        );
        let steps: Vec<(StepKind, StepState, String)> = rows
            .steps
            .iter()
            .map(|(kind, state, error)| (*kind, *state, (*error).to_owned()))
            .collect();
        let req_owned = req.clone();
        self.writer
            .write(move |conn| {
                let (req, lease_until, at) = (req_owned.clone(), lease_until.clone(), at.clone());
                let (error, steps) = (error.clone(), steps.clone());
                Box::pin(async move {
                    let row = sqlx::query(&format!(
                        "INSERT INTO sagas (id, initiator_id, idempotency_key, chat_id, sender, \
                            text, state, sender_id, error, error_code, lease_until, created_at, \
                            updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12) \
                         ON CONFLICT (initiator_id, idempotency_key) \
                           WHERE idempotency_key IS NOT NULL \
                         DO NOTHING RETURNING {SAGA_COLUMNS}"
                    ))
                    .bind(id)
                    .bind(initiator_id)
                    .bind(req.idempotency_key.as_deref())
                    .bind(req.chat_id)
                    .bind(&req.from)
                    .bind(&req.text)
                    .bind(state.as_str())
                    .bind(sender_id)
                    .bind(&error)
                    .bind(code)
                    .bind(lease_until)
                    .bind(&at)
                    .fetch_optional(&mut *conn)
                    .await
                    .context("creating a saga")?;
                    let Some(row) = row else {
                        return Ok(None);
                    };
                    let mut saga = saga_from_row(&row)?;
                    for (kind, state, error) in &steps {
                        let finished = (*state != StepState::Started).then_some(&at);
                        let step: StepRecord = sqlx::query_as(&format!(
                            "INSERT INTO saga_steps \
                               (saga_id, kind, state, started_at, finished_at, error) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING {STEP_COLUMNS}"
                        ))
                        .bind(id)
                        .bind(kind.as_str())
                        .bind(state.as_str())
                        .bind(&at)
                        .bind(finished)
                        .bind(error)
                        .fetch_one(&mut *conn)
                        .await
                        .context("logging a saga's first steps")?;
                        saga.steps.push(step);
                    }
                    Ok(Some(saga))
                })
            })
            .await
    }

    async fn by_key(&self, initiator_id: i64, key: Option<&str>) -> anyhow::Result<SagaRecord> {
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE initiator_id = ?1 AND idempotency_key = ?2"
        ))
        .bind(initiator_id)
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .context("reading the saga of an idempotency key")?;
        self.with_steps(&row).await
    }

    async fn get(&self, id: Uuid) -> anyhow::Result<Option<SagaRecord>> {
        let row = sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a saga")?;
        match row {
            Some(r) => Ok(Some(self.with_steps(&r).await?)),
            None => Ok(None),
        }
    }

    async fn step_started(&self, id: Uuid, kind: StepKind) -> anyhow::Result<DateTime<Utc>> {
        let at = sqlite_time(Utc::now());
        self.writer
            .write(move |conn| {
                let at = at.clone();
                Box::pin(async move { start_step(conn, id, kind, &at).await })
            })
            .await
    }

    async fn step_succeeded(
        &self,
        id: Uuid,
        kind: StepKind,
        result: StepResult,
        then: Then,
    ) -> anyhow::Result<Logged> {
        let now = sqlite_time(Utc::now());
        let (sender_id, seq) = result.columns();
        self.writer
            .write(move |conn| {
                let now = now.clone();
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE saga_steps SET state = 'succeeded', finished_at = ?3, error = '' \
                         WHERE saga_id = ?1 AND kind = ?2",
                    )
                    .bind(id)
                    .bind(kind.as_str())
                    .bind(&now)
                    .execute(&mut *conn)
                    .await
                    .context("recording a step's success")?;
                    sqlx::query(
                        "UPDATE sagas SET sender_id = COALESCE(?2, sender_id), \
                            message_seq = COALESCE(?3, message_seq), updated_at = ?4 WHERE id = ?1",
                    )
                    .bind(id)
                    .bind(sender_id)
                    .bind(seq)
                    .bind(&now)
                    .execute(&mut *conn)
                    .await
                    .context("recording a step's result")?;
                    match then {
                        Then::Start(next) => {
                            Ok(Logged::Started(start_step(conn, id, next, &now).await?))
                        }
                        Then::Finish(state) => {
                            record_state(conn, id, state, None, &now).await?;
                            // Read in the same transaction: the saga as it ended.
                            let row = sqlx::query(&format!(
                                "SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ?1"
                            ))
                            .bind(id)
                            .fetch_one(&mut *conn)
                            .await
                            .context("reading the saga that ended")?;
                            let mut saga = saga_from_row(&row)?;
                            saga.steps = read_steps(&mut *conn, id).await?;
                            Ok(Logged::Ended(saga))
                        }
                    }
                })
            })
            .await
    }

    async fn step_failed(&self, id: Uuid, kind: StepKind, error: &str) -> anyhow::Result<()> {
        self.writer
            .execute(
                "UPDATE saga_steps SET state = 'failed', finished_at = ?4, error = ?3 \
                 WHERE saga_id = ?1 AND kind = ?2",
                Args::new()
                    .bind(id)
                    .bind(kind.as_str())
                    .bind(error.to_owned())
                    .bind(sqlite_time(Utc::now())),
                "recording a step's failure",
            )
            .await?;
        Ok(())
    }

    async fn set_state(
        &self,
        id: Uuid,
        state: SagaState,
        error: Option<(&str, FailCode)>,
    ) -> anyhow::Result<()> {
        let error = error.map(|(e, c)| (e.to_owned(), c));
        let at = sqlite_time(Utc::now());
        self.writer
            .write(move |conn| {
                let (error, at) = (error.clone(), at.clone());
                Box::pin(async move {
                    let error = error.as_ref().map(|(e, c)| (e.as_str(), *c));
                    record_state(conn, id, state, error, &at).await
                })
            })
            .await
    }

    async fn renew_lease(&self, id: Uuid, lease: Duration) -> anyhow::Result<()> {
        self.writer
            .execute(
                "UPDATE sagas SET lease_until = ?2 \
                 WHERE id = ?1 AND state IN ('running', 'compensating')",
                Args::new()
                    .bind(id)
                    .bind(sqlite_lease_end(Utc::now(), lease)?),
                "renewing a saga's lease",
            )
            .await?;
        Ok(())
    }

    async fn release(&self, id: Uuid) -> anyhow::Result<()> {
        self.writer
            .execute(
                "UPDATE sagas SET lease_until = ?2 WHERE id = ?1",
                Args::new().bind(id).bind(sqlite_time(Utc::now())),
                "releasing a saga",
            )
            .await?;
        Ok(())
    }

    async fn claim_unfinished(
        &self,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<SagaRecord>> {
        let sql = format!(
            "UPDATE sagas SET lease_until = ?1 \
             WHERE id IN (SELECT id FROM sagas \
                          WHERE state IN ('running', 'compensating') \
                            AND (lease_until IS NULL OR lease_until < ?2) \
                          ORDER BY created_at LIMIT ?3) \
             RETURNING {SAGA_COLUMNS}"
        );
        self.claim_where(lease, sql, limit, "claiming unfinished sagas")
            .await
    }

    async fn claim(&self, id: Uuid, lease: Duration) -> anyhow::Result<Option<SagaRecord>> {
        let sql = format!(
            "UPDATE sagas SET lease_until = ?1 \
             WHERE id = ?3 AND state IN ('running', 'compensating') \
               AND (lease_until IS NULL OR lease_until < ?2) \
             RETURNING {SAGA_COLUMNS}"
        );
        Ok(self
            .claim_where(lease, sql, id, "claiming a saga")
            .await?
            .pop())
    }
}

impl SqliteSagaStore {
    /// Leases for `lease` the sagas `sql` takes, and returns them with their steps, oldest
    /// first. `sql` is an `UPDATE sagas SET lease_until = ?1 ... RETURNING` of
    /// [`SAGA_COLUMNS`] in which `?2` is now and `?3` is `arg`: one statement, which holds
    /// the write lock from its first read, so a concurrent claimer runs before or after it
    /// and finds these sagas leased.
    async fn claim_where<T>(
        &self,
        lease: Duration,
        sql: String,
        arg: T,
        what: &'static str,
    ) -> anyhow::Result<Vec<SagaRecord>>
    where
        T: for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Clone + Send + Sync + 'static,
    {
        let now = Utc::now();
        let (until, at) = (sqlite_lease_end(now, lease)?, sqlite_time(now));
        let claimed = self
            .writer
            .write(move |conn| {
                let (sql, until, at, arg) = (sql.clone(), until.clone(), at.clone(), arg.clone());
                Box::pin(async move {
                    let rows = sqlx::query(&sql)
                        .bind(until)
                        .bind(at)
                        .bind(arg)
                        .fetch_all(&mut *conn)
                        .await
                        .context(what)?;
                    rows.iter()
                        .map(saga_from_row)
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .await?;
        let mut sagas = Vec::with_capacity(claimed.len());
        for saga in claimed {
            sagas.push(self.add_steps(saga).await?);
        }
        // RETURNING gives no order; resume the oldest first, as they were chosen.
        sagas.sort_by_key(|s| s.created_at);
        Ok(sagas)
    }
}

/// Records that a step starts (or starts again, keeping its first start time).
async fn start_step(
    conn: &mut SqliteConnection,
    id: Uuid,
    kind: StepKind,
    at: &str,
) -> anyhow::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "INSERT INTO saga_steps (saga_id, kind, state, started_at) \
         VALUES (?1, ?2, 'started', ?3) \
         ON CONFLICT (saga_id, kind) DO UPDATE \
           SET state = 'started', finished_at = NULL \
         RETURNING started_at",
    )
    .bind(id)
    .bind(kind.as_str())
    .bind(at)
    .fetch_one(conn)
    .await
    .context("recording a step start")
}

/// Moves the saga to `state`; a final state also ends its lease.
async fn record_state(
    conn: &mut SqliteConnection,
    id: Uuid,
    state: SagaState,
    error: Option<(&str, FailCode)>,
    at: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE sagas SET state = ?2, error = COALESCE(?3, error), \
            error_code = COALESCE(?4, error_code), updated_at = ?6, \
            lease_until = CASE WHEN ?5 THEN NULL ELSE lease_until END \
         WHERE id = ?1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(error.map(|(e, _)| e))
    .bind(error.map(|(_, c)| c.as_str()))
    .bind(state.is_final())
    .bind(at)
    .execute(conn)
    .await
    .context("recording a saga's state")?;
    Ok(())
}

/// The steps of saga `id`, in the order they started.
async fn read_steps(conn: &mut SqliteConnection, id: Uuid) -> anyhow::Result<Vec<StepRecord>> {
    sqlx::query_as(&format!(
        "SELECT {STEP_COLUMNS} FROM saga_steps WHERE saga_id = ?1 ORDER BY started_at, kind"
    ))
    .bind(id)
    .fetch_all(conn)
    .await
    .context("reading saga steps")
}
