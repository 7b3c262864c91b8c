//! The PostgreSQL backend of [`SagaStore`](super::SagaStore).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{postgres::PgRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{Created, SagaRecord, SagaStore, StepRecord, StepResult, Then};
use crate::domain::{FailCode, SagaState, SendRequest, StepKind, StepState};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/saga");

pub struct PgSagaStore {
    pool: PgPool,
}

impl PgSagaStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn steps(&self, id: Uuid) -> anyhow::Result<Vec<StepRecord>> {
        let rows = sqlx::query(
            "SELECT kind, state, started_at, finished_at, error FROM saga_steps \
             WHERE saga_id = $1 ORDER BY started_at, kind",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .context("reading saga steps")?;
        rows.iter()
            .map(|r| {
                Ok(StepRecord {
                    kind: StepKind::parse(r.try_get("kind")?)?,
                    state: StepState::parse(r.try_get("state")?)?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    async fn with_steps(&self, row: &PgRow) -> anyhow::Result<SagaRecord> {
        let mut saga = saga_from_row(row)?;
        saga.steps = self.steps(saga.id).await?;
        Ok(saga)
    }
}

const SAGA_COLUMNS: &str = "id, initiator_id, chat_id, sender, text, sender_id, message_seq, \
     state, error, error_code, lease_until, created_at, updated_at";

fn saga_from_row(r: &PgRow) -> anyhow::Result<SagaRecord> {
    let code: String = r.try_get("error_code")?;
    Ok(SagaRecord {
        id: r.try_get("id")?,
        initiator_id: r.try_get("initiator_id")?,
        chat_id: r.try_get("chat_id")?,
        sender: r.try_get("sender")?,
        text: r.try_get("text")?,
        sender_id: r.try_get("sender_id")?,
        message_seq: r.try_get("message_seq")?,
        state: SagaState::parse(r.try_get("state")?)?,
        error: r.try_get("error")?,
        error_code: if code.is_empty() {
            None
        } else {
            Some(FailCode::parse(&code)?)
        },
        lease_until: r.try_get::<Option<DateTime<Utc>>, _>("lease_until")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        steps: Vec::new(),
    })
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn create(
        &self,
        initiator_id: i64,
        req: &SendRequest,
        lease: Duration,
    ) -> anyhow::Result<Created> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO sagas (id, initiator_id, idempotency_key, chat_id, sender, text, state, \
                lease_until) \
             VALUES ($1, $2, $3, $4, $5, $6, 'running', now() + make_interval(secs => $7)) \
             ON CONFLICT (initiator_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
             DO NOTHING RETURNING {SAGA_COLUMNS}"
        ))
        .bind(Uuid::new_v4())
        .bind(initiator_id)
        .bind(req.idempotency_key.as_deref())
        .bind(req.chat_id)
        .bind(&req.from)
        .bind(&req.text)
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .context("creating a saga")?;
        if let Some(row) = inserted {
            return Ok(Created::New(saga_from_row(&row)?));
        }
        let row = sqlx::query(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE initiator_id = $1 AND idempotency_key = $2"
        ))
        .bind(initiator_id)
        .bind(req.idempotency_key.as_deref())
        .fetch_one(&self.pool)
        .await
        .context("reading the saga of an idempotency key")?;
        Ok(Created::Existing(self.with_steps(&row).await?))
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
        let mut conn = self.pool.acquire().await.context("connecting")?;
        start_step(&mut conn, id, kind).await
    }

    async fn step_succeeded(
        &self,
        id: Uuid,
        kind: StepKind,
        result: StepResult,
        then: Then,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        sqlx::query(
            "UPDATE saga_steps SET state = 'succeeded', finished_at = now(), error = '' \
             WHERE saga_id = $1 AND kind = $2",
        )
        .bind(id)
        .bind(kind.as_str())
        .execute(&mut *tx)
        .await
        .context("recording a step's success")?;
        let (sender_id, seq) = match result {
            StepResult::None => (None, None),
            StepResult::Sender(s) => (Some(s), None),
            StepResult::MessageSeq(s) => (None, Some(s)),
        };
        sqlx::query(
            "UPDATE sagas SET sender_id = COALESCE($2, sender_id), \
                message_seq = COALESCE($3, message_seq), updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(sender_id)
        .bind(seq)
        .execute(&mut *tx)
        .await
        .context("recording a step's result")?;
        let started = match then {
            Then::Start(next) => Some(start_step(&mut tx, id, next).await?),
            Then::Finish(state) => {
                record_state(&mut tx, id, state, None).await?;
                None
            }
        };
        tx.commit().await.context("committing a step")?;
        Ok(started)
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
