//! The PostgreSQL backend of [`SagaStore`](super::SagaStore).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{postgres::PgRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{
    first_step, saga_from_row, SagaRecord, SagaStore, StepRecord, StepResult, Then, SAGA_COLUMNS,
    STEP_COLUMNS,
};
use crate::domain::{FailCode, SagaState, SendRequest, StepKind};

/// The PostgreSQL schema of the saga log.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/saga");

/// The saga log on PostgreSQL. Writes that the saga's recovery redoes (a step's start, a
/// success followed by the next step) commit without waiting for the disk (`relaxed`): a
/// crash that loses them sends the saga back a step, and every step is idempotent (the
/// message is keyed by the saga's id). The saga's creation, which anchors the caller's
/// idempotency key to that id, and every final state commit durably, and a durable commit
/// makes the relaxed ones before it durable too.
pub struct PgSagaStore {
    pool: PgPool,
    relaxed: PgPool,
}

impl PgSagaStore {
    /// The store on `pool`, with a relaxed pool of `relaxed` connections beside it.
    pub fn new(pool: PgPool, relaxed: u32) -> Self {
        let relaxed = chat_common::db::relaxed_commits(&pool, relaxed);
        Self { pool, relaxed }
    }

    async fn steps(&self, id: Uuid) -> anyhow::Result<Vec<StepRecord>> {
        sqlx::query_as(&format!(
            "SELECT {STEP_COLUMNS} FROM saga_steps WHERE saga_id = $1 ORDER BY started_at, kind"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .context("reading saga steps")
    }

    async fn with_steps(&self, row: &PgRow) -> anyhow::Result<SagaRecord> {
        let mut saga = saga_from_row(row)?;
        saga.steps = self.steps(saga.id).await?;
        Ok(saga)
    }
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn insert(
        &self,
        initiator_id: i64,
        req: &SendRequest,
        lease: Duration,
    ) -> anyhow::Result<Option<SagaRecord>> {
        let inserted = sqlx::query(&format!(
            "WITH saga AS ( \
                 INSERT INTO sagas (id, initiator_id, idempotency_key, chat_id, sender, text, \
                    state, lease_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'running', now() + make_interval(secs => $7)) \
                 ON CONFLICT (initiator_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
                 DO NOTHING RETURNING {SAGA_COLUMNS}), \
             step AS ( \
                 INSERT INTO saga_steps (saga_id, kind, state) \
                 SELECT id, $8, 'started' FROM saga RETURNING started_at) \
             SELECT saga.*, step.started_at AS first_started_at FROM saga, step"
        ))
        .bind(Uuid::new_v4())
        .bind(initiator_id)
        .bind(req.idempotency_key.as_deref())
        .bind(req.chat_id)
        .bind(&req.from)
        .bind(&req.text)
        .bind(lease.as_secs_f64())
        .bind(StepKind::FIRST.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("creating a saga")?;
        let Some(row) = inserted else {
            return Ok(None);
        };
        let mut saga = saga_from_row(&row)?;
        saga.steps = vec![first_step(row.try_get("first_started_at")?)];
        Ok(Some(saga))
    }

    async fn by_key(&self, initiator_id: i64, key: Option<&str>) -> anyhow::Result<SagaRecord> {
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE initiator_id = $1 AND idempotency_key = $2"
        ))
        .bind(initiator_id)
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .context("reading the saga of an idempotency key")?;
        self.with_steps(&row).await
    }

    async fn get(&self, id: Uuid) -> anyhow::Result<Option<SagaRecord>> {
        let row = sqlx::query(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = $1"))
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
        let mut conn = self.relaxed.acquire().await.context("connecting")?;
        start_step(&mut conn, id, kind).await
    }

    async fn step_succeeded(
        &self,
        id: Uuid,
        kind: StepKind,
        result: StepResult,
        then: Then,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        let (sender_id, seq) = result.columns();
        let (next, end, pool) = match then {
            Then::Start(next) => (Some(next.as_str()), None, &self.relaxed),
            Then::Finish(state) => (None, Some(state), &self.pool),
        };
        // One statement: the step's success, its result, and the next step's start or the
        // saga's end, committed together.
        let started: Option<DateTime<Utc>> = sqlx::query_scalar(
            "WITH done AS ( \
                 UPDATE saga_steps SET state = 'succeeded', finished_at = now(), error = '' \
                 WHERE saga_id = $1 AND kind = $2), \
             saga AS ( \
                 UPDATE sagas SET sender_id = COALESCE($3, sender_id), \
                    message_seq = COALESCE($4, message_seq), state = COALESCE($6, state), \
                    lease_until = CASE WHEN $7 THEN NULL ELSE lease_until END, \
                    updated_at = now() \
                 WHERE id = $1), \
             next AS ( \
                 INSERT INTO saga_steps (saga_id, kind, state) \
                 SELECT $1, $5, 'started' WHERE $5::text IS NOT NULL \
                 ON CONFLICT (saga_id, kind) DO UPDATE SET state = 'started', finished_at = NULL \
                 RETURNING started_at) \
             SELECT (SELECT started_at FROM next)",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(sender_id)
        .bind(seq)
        .bind(next)
        .bind(end.map(SagaState::as_str))
        .bind(end.is_some_and(SagaState::is_final))
        .fetch_one(pool)
        .await
        .context("recording a step's success")?;
        match (next, started) {
            (Some(_), None) => anyhow::bail!("the next step of saga {id} was not recorded"),
            _ => Ok(started),
        }
    }

    async fn step_failed(&self, id: Uuid, kind: StepKind, error: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE saga_steps SET state = 'failed', finished_at = now(), error = $3 \
             WHERE saga_id = $1 AND kind = $2",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(error)
        .execute(&self.pool)
        .await
        .context("recording a step's failure")?;
        Ok(())
    }

    async fn set_state(
        &self,
        id: Uuid,
        state: SagaState,
        error: Option<(&str, FailCode)>,
    ) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await.context("connecting")?;
        record_state(&mut conn, id, state, error).await
    }

    async fn renew_lease(&self, id: Uuid, lease: Duration) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE sagas SET lease_until = now() + make_interval(secs => $2) \
             WHERE id = $1 AND state IN ('running', 'compensating')",
        )
        .bind(id)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await
        .context("renewing a saga's lease")?;
        Ok(())
    }

    async fn release(&self, id: Uuid) -> anyhow::Result<()> {
        sqlx::query("UPDATE sagas SET lease_until = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .context("releasing a saga")?;
        Ok(())
    }

    async fn claim_unfinished(
        &self,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<SagaRecord>> {
        let rows = sqlx::query(&format!(
            "UPDATE sagas SET lease_until = now() + make_interval(secs => $1) \
             WHERE id IN (SELECT id FROM sagas \
                          WHERE state IN ('running', 'compensating') \
                            AND (lease_until IS NULL OR lease_until < now()) \
                          ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING {SAGA_COLUMNS}"
        ))
        .bind(lease.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("claiming unfinished sagas")?;
        let mut sagas = Vec::with_capacity(rows.len());
        for r in &rows {
            sagas.push(self.with_steps(r).await?);
        }
        Ok(sagas)
    }

    async fn claim(&self, id: Uuid, lease: Duration) -> anyhow::Result<Option<SagaRecord>> {
        let row = sqlx::query(&format!(
            "UPDATE sagas SET lease_until = now() + make_interval(secs => $2) \
             WHERE id = $1 AND state IN ('running', 'compensating') \
               AND (lease_until IS NULL OR lease_until < now()) \
             RETURNING {SAGA_COLUMNS}"
        ))
        .bind(id)
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .context("claiming a saga")?;
        match row {
            Some(r) => Ok(Some(self.with_steps(&r).await?)),
            None => Ok(None),
        }
    }
}

/// Records that a step starts (or starts again, keeping its first start time).
async fn start_step(
    conn: &mut PgConnection,
    id: Uuid,
    kind: StepKind,
) -> anyhow::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "INSERT INTO saga_steps (saga_id, kind, state) VALUES ($1, $2, 'started') \
         ON CONFLICT (saga_id, kind) DO UPDATE \
           SET state = 'started', finished_at = NULL \
         RETURNING started_at",
    )
    .bind(id)
    .bind(kind.as_str())
    .fetch_one(conn)
    .await
    .context("recording a step start")
}

/// Moves the saga to `state`; a final state also ends its lease.
async fn record_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: SagaState,
    error: Option<(&str, FailCode)>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE sagas SET state = $2, error = COALESCE($3, error), \
            error_code = COALESCE($4, error_code), updated_at = now(), \
            lease_until = CASE WHEN $5 THEN NULL ELSE lease_until END \
         WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(error.map(|(e, _)| e))
    .bind(error.map(|(_, c)| c.as_str()))
    .bind(state.is_final())
    .execute(conn)
    .await
    .context("recording a saga's state")?;
    Ok(())
}
