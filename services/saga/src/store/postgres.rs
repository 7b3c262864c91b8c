//! The PostgreSQL backend of [`SagaStore`](super::SagaStore).

use std::{sync::LazyLock, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{postgres::PgRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{
    saga_from_row, Logged, Opening, SagaRecord, SagaStore, StepRecord, StepResult, Then,
    SAGA_COLUMNS, STEP_COLUMNS,
};
use crate::domain::{FailCode, SagaState, SendRequest, StepKind, StepState};

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
}

/// A step's columns as [`group_steps`] reads them beside a saga's, from a step row named
/// `st`.
const STEP_FIELDS: &str = "st.kind AS step_kind, st.state AS step_state, \
     st.started_at AS step_started_at, st.finished_at AS step_finished_at, \
     st.error AS step_error";

/// A statement that reads the sagas `sagas` returns (a `SELECT` or an `UPDATE ...
/// RETURNING` of [`SAGA_COLUMNS`]) with their steps: one row per step, or one without a
/// step for a saga that has none, sagas in the order they were created and each one's
/// steps in the order they started. One round trip where a saga and its steps took two.
fn with_steps(sagas: &str) -> String {
    format!(
        "WITH s AS ({sagas}) \
         SELECT s.*, {STEP_FIELDS} \
         FROM s LEFT JOIN saga_steps st ON st.saga_id = s.id \
         ORDER BY s.created_at, s.id, st.started_at, st.kind"
    )
}

/// The sagas in rows of [`with_steps`], each with its steps.
fn group_steps(rows: &[PgRow]) -> anyhow::Result<Vec<SagaRecord>> {
    let mut sagas: Vec<SagaRecord> = Vec::new();
    for row in rows {
        let id: Uuid = row.try_get("id")?;
        if sagas.last().is_none_or(|s| s.id != id) {
            sagas.push(saga_from_row(row)?);
        }
        let Some(kind) = row.try_get::<Option<String>, _>("step_kind")? else {
            continue;
        };
        let step = StepRecord {
            kind: StepKind::parse(&kind)?,
            state: StepState::parse(&row.try_get::<String, _>("step_state")?)?,
            started_at: row.try_get("step_started_at")?,
            finished_at: row.try_get("step_finished_at")?,
            error: row.try_get("step_error")?,
        };
        if let Some(saga) = sagas.last_mut() {
            saga.steps.push(step);
        }
    }
    Ok(sagas)
}

/// The statement of [`PgSagaStore::steps_succeeded`]: `$1` the saga, `$2` and `$4` the two
/// steps, `$3` when the first ended, `$5`..`$8` the second's and the first's results, `$9`
/// the saga's end state and `$10` whether it is final.
static STEPS_SUCCEEDED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH done AS ( \
             UPDATE saga_steps SET state = 'succeeded', \
                finished_at = GREATEST($3, started_at), error = '' \
             WHERE saga_id = $1 AND kind = $2 \
             RETURNING {STEP_COLUMNS}), \
         next AS ( \
             INSERT INTO saga_steps (saga_id, kind, state, started_at, finished_at, error) \
             SELECT $1, $4, 'succeeded', done.finished_at, \
                GREATEST(now(), done.finished_at), '' FROM done \
             ON CONFLICT (saga_id, kind) DO UPDATE \
               SET state = 'succeeded', finished_at = EXCLUDED.finished_at, error = '' \
             RETURNING {STEP_COLUMNS}), \
         saga AS ( \
             UPDATE sagas SET sender_id = COALESCE($5, $7, sender_id), \
                message_seq = COALESCE($6, $8, message_seq), state = $9, \
                lease_until = CASE WHEN $10 THEN NULL ELSE lease_until END, \
                updated_at = now() \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM done) RETURNING {SAGA_COLUMNS}), \
         steps AS ( \
             SELECT {STEP_COLUMNS} FROM saga_steps \
             WHERE saga_id = $1 AND kind <> $2 AND kind <> $4 \
             UNION ALL SELECT * FROM done \
             UNION ALL SELECT * FROM next) \
         SELECT saga.*, {STEP_FIELDS} FROM saga LEFT JOIN steps st ON true \
         ORDER BY st.started_at, st.kind"
    )
});

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn insert(
        &self,
        id: Uuid,
        initiator_id: i64,
        req: &SendRequest,
        lease: Duration,
        opening: &Opening,
    ) -> anyhow::Result<Option<SagaRecord>> {
        let rows = opening.rows(lease);
        let (kinds, states, errors): (Vec<_>, Vec<_>, Vec<_>) = rows
            .steps
            .iter()
            .map(|(kind, state, error)| (kind.as_str(), state.as_str(), *error))
            .collect();
        // One statement: the saga and its first steps, read back as written.
        let written = sqlx::query(&format!(
            "WITH saga AS ( \
                 INSERT INTO sagas (id, initiator_id, idempotency_key, chat_id, sender, text, \
                    state, sender_id, error, error_code, lease_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                    now() + make_interval(secs => $11)) \
                 ON CONFLICT (initiator_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
                 DO NOTHING RETURNING {SAGA_COLUMNS}), \
             step AS ( \
                 INSERT INTO saga_steps (saga_id, kind, state, finished_at, error) \
                 SELECT saga.id, s.kind, s.state, \
                    CASE WHEN s.state = 'started' THEN NULL ELSE now() END, s.error \
                 FROM saga, UNNEST($12::text[], $13::text[], $14::text[]) AS s(kind, state, error) \
                 RETURNING {STEP_COLUMNS}) \
             SELECT saga.*, {STEP_FIELDS} FROM saga LEFT JOIN step st ON true \
             ORDER BY st.started_at, st.kind"
        ))
        .bind(id)
        .bind(initiator_id)
        .bind(req.idempotency_key.as_deref())
        .bind(req.chat_id)
        .bind(&req.from)
        .bind(&req.text)
        .bind(rows.state.as_str())
        .bind(rows.sender_id)
        .bind(rows.error)
        .bind(rows.error_code)
        .bind(rows.lease.map(|l| l.as_secs_f64()))
        .bind(&kinds)
        .bind(&states)
        .bind(&errors)
        .fetch_all(&self.pool)
        .await
        .context("creating a saga")?;
        Ok(group_steps(&written)?.pop())
    }

    async fn by_key(&self, initiator_id: i64, key: Option<&str>) -> anyhow::Result<SagaRecord> {
        let rows = sqlx::query(&with_steps(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE initiator_id = $1 AND idempotency_key = $2"
        )))
        .bind(initiator_id)
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .context("reading the saga of an idempotency key")?;
        group_steps(&rows)?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no saga has this idempotency key"))
    }

    async fn get(&self, id: Uuid) -> anyhow::Result<Option<SagaRecord>> {
        let rows = sqlx::query(&with_steps(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE id = $1"
        )))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .context("reading a saga")?;
        Ok(group_steps(&rows)?.pop())
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
    ) -> anyhow::Result<Logged> {
        let (sender_id, seq) = result.columns();
        match then {
            Then::Start(next) => {
                // One statement: the step's success, its result and the next step's start.
                let started: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "WITH done AS ( \
                         UPDATE saga_steps SET state = 'succeeded', finished_at = now(), \
                            error = '' \
                         WHERE saga_id = $1 AND kind = $2), \
                     saga AS ( \
                         UPDATE sagas SET sender_id = COALESCE($3, sender_id), \
                            message_seq = COALESCE($4, message_seq), updated_at = now() \
                         WHERE id = $1), \
                     next AS ( \
                         INSERT INTO saga_steps (saga_id, kind, state) \
                         VALUES ($1, $5, 'started') \
                         ON CONFLICT (saga_id, kind) DO UPDATE \
                           SET state = 'started', finished_at = NULL \
                         RETURNING started_at) \
                     SELECT (SELECT started_at FROM next)",
                )
                .bind(id)
                .bind(kind.as_str())
                .bind(sender_id)
                .bind(seq)
                .bind(next.as_str())
                .fetch_one(&self.relaxed)
                .await
                .context("recording a step's success")?;
                let started = started.ok_or_else(|| {
                    anyhow::anyhow!("the next step of saga {id} was not recorded")
                })?;
                Ok(Logged::Started(started))
            }
            Then::Finish(state) => {
                // One statement: the step's success, its result and the saga's end, and the
                // saga as it ended, read back with its steps. The statement's reads do not
                // see its own writes, so the step it finishes comes from the update.
                let rows = sqlx::query(&format!(
                    "WITH done AS ( \
                         UPDATE saga_steps SET state = 'succeeded', finished_at = now(), \
                            error = '' \
                         WHERE saga_id = $1 AND kind = $2 \
                         RETURNING {STEP_COLUMNS}), \
                     saga AS ( \
                         UPDATE sagas SET sender_id = COALESCE($3, sender_id), \
                            message_seq = COALESCE($4, message_seq), state = $5, \
                            lease_until = CASE WHEN $6 THEN NULL ELSE lease_until END, \
                            updated_at = now() \
                         WHERE id = $1 RETURNING {SAGA_COLUMNS}), \
                     steps AS ( \
                         SELECT {STEP_COLUMNS} FROM saga_steps \
                         WHERE saga_id = $1 AND kind <> $2 \
                         UNION ALL SELECT * FROM done) \
                     SELECT saga.*, {STEP_FIELDS} FROM saga LEFT JOIN steps st ON true \
                     ORDER BY st.started_at, st.kind"
                ))
                .bind(id)
                .bind(kind.as_str())
                .bind(sender_id)
                .bind(seq)
                .bind(state.as_str())
                .bind(state.is_final())
                .fetch_all(&self.pool)
                .await
                .context("recording a step's success")?;
                let saga = group_steps(&rows)?
                    .pop()
                    .ok_or_else(|| anyhow::anyhow!("saga {id} vanished"))?;
                Ok(Logged::Ended(saga))
            }
        }
    }

    async fn steps_succeeded(
        &self,
        id: Uuid,
        first: (StepKind, StepResult),
        between: DateTime<Utc>,
        then: (StepKind, StepResult),
        state: SagaState,
    ) -> anyhow::Result<SagaRecord> {
        let (first_sender, first_seq) = first.1.columns();
        let (then_sender, then_seq) = then.1.columns();
        // One statement: the first step's success, the second's run and the saga's end,
        // read back with the steps. The first step ended when the second started: at
        // `between`, this process's clock, never before the first step's logged start (a
        // clock behind the database's).
        let rows = sqlx::query(&STEPS_SUCCEEDED)
            .bind(id)
            .bind(first.0.as_str())
            .bind(between)
            .bind(then.0.as_str())
            .bind(then_sender)
            .bind(then_seq)
            .bind(first_sender)
            .bind(first_seq)
            .bind(state.as_str())
            .bind(state.is_final())
            .fetch_all(&self.pool)
            .await
            .context("recording two steps' success")?;
        // Without the first step's row nothing is written, and nothing read back.
        group_steps(&rows)?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("saga {id} has no step {} to record", first.0.as_str()))
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
        let rows = sqlx::query(&with_steps(&format!(
            "UPDATE sagas SET lease_until = now() + make_interval(secs => $1) \
             WHERE id IN (SELECT id FROM sagas \
                          WHERE state IN ('running', 'compensating') \
                            AND (lease_until IS NULL OR lease_until < now()) \
                          ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING {SAGA_COLUMNS}"
        )))
        .bind(lease.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("claiming unfinished sagas")?;
        group_steps(&rows)
    }

    async fn claim(&self, id: Uuid, lease: Duration) -> anyhow::Result<Option<SagaRecord>> {
        let rows = sqlx::query(&with_steps(&format!(
            "UPDATE sagas SET lease_until = now() + make_interval(secs => $2) \
             WHERE id = $1 AND state IN ('running', 'compensating') \
               AND (lease_until IS NULL OR lease_until < now()) \
             RETURNING {SAGA_COLUMNS}"
        )))
        .bind(id)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .context("claiming a saga")?;
        Ok(group_steps(&rows)?.pop())
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
