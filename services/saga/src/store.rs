//! The saga log. The orchestrator talks to [`SagaStore`]; `postgres` implements it for
//! the split deployment and `sqlite` for the embedded `chat-server`, and [`open`] picks
//! one by the database URL. Every write is one statement or one transaction, so the log
//! never shows a step finished without its result (the sender id, the message seq)
//! recorded with it.
//!
//! What both engines share is written here once: how a row becomes a record
//! ([`saga_from_row`] and [`StepRecord`]'s derived mapping, generic over the engine; SQLite's
//! RFC 3339 text decodes into the same time type as PostgreSQL's `timestamptz`), the
//! column lists they read, and which columns a step's result sets. The SQL stays in each
//! engine's module.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{FromRow, Row};
use uuid::Uuid;

use chat_common::{
    db::{Database, Migrations},
    Shutdown,
};

use crate::domain::{FailCode, SagaState, SendRequest, StepKind, StepState};

pub mod postgres;
pub mod sqlite;

const MIGRATIONS: Migrations = Migrations {
    postgres: &postgres::MIGRATOR,
    sqlite: &sqlite::MIGRATOR,
    postgres_settings: &[],
};

/// The store at `url` (`postgres://...` or `sqlite://...`) with at most `max_connections`,
/// the database created when missing and migrated; its pool monitors run on `shutdown`.
pub async fn open(
    url: &str,
    max_connections: u32,
    shutdown: &Shutdown,
) -> anyhow::Result<Arc<dyn SagaStore>> {
    let relaxed = chat_common::db::relaxed_share(url, max_connections);
    let main = max_connections.saturating_sub(relaxed).max(1);
    Ok(match MIGRATIONS.open(url, main, shutdown).await? {
        Database::Postgres(pool) => Arc::new(postgres::PgSagaStore::new(pool, relaxed)),
        Database::Sqlite(pool) => Arc::new(sqlite::SqliteSagaStore::new(pool).await?),
    })
}

/// Creates the database at `url` when missing and applies the migrations, then returns.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    MIGRATIONS.apply(url).await
}

/// One step of a saga as logged (a row of [`STEP_COLUMNS`]).
#[derive(Debug, Clone, FromRow)]
pub struct StepRecord {
    /// Which step; a saga has at most one record per kind.
    #[sqlx(try_from = "String")]
    pub kind: StepKind,
    /// Its outcome so far.
    #[sqlx(try_from = "String")]
    pub state: StepState,
    /// When it first started; a rerun after a crash keeps this time.
    pub started_at: DateTime<Utc>,
    /// When it succeeded or failed; None while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed; empty unless it did.
    pub error: String,
}

/// A saga as logged: the request, where it stands and its steps.
#[derive(Debug, Clone)]
pub struct SagaRecord {
    /// The saga's id; also the key under which ChatService stores its message.
    pub id: Uuid,
    /// The authenticated caller who started it; idempotency keys are scoped to them.
    pub initiator_id: i64,
    /// The chat the message goes to.
    pub chat_id: i64,
    /// The sender as the request named them (email or username, normalised).
    pub sender: String,
    /// The message.
    pub text: String,
    /// The sender's user id; None until the resolve step succeeded.
    pub sender_id: Option<i64>,
    /// The stored message's sequence number in its chat; None until the store step succeeded.
    pub message_seq: Option<i64>,
    /// Where the saga stands.
    pub state: SagaState,
    /// Why it failed or compensated; empty otherwise.
    pub error: String,
    /// The status it answers with when it ended badly; None while running or completed.
    pub error_code: Option<FailCode>,
    /// Until when an orchestrator owns it.
    pub lease_until: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// In the order they started.
    pub steps: Vec<StepRecord>,
}

impl SagaRecord {
    /// Its record of `kind`; None when that step never started.
    pub fn step(&self, kind: StepKind) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.kind == kind)
    }
}

/// The columns of `saga_steps` that make a [`StepRecord`].
pub(crate) const STEP_COLUMNS: &str = "kind, state, started_at, finished_at, error";

/// The columns of `sagas` that [`saga_from_row`] reads.
pub(crate) const SAGA_COLUMNS: &str = "id, initiator_id, chat_id, sender, text, sender_id, \
     message_seq, state, error, error_code, lease_until, created_at, updated_at";

/// A row of [`SAGA_COLUMNS`] as either engine returns it.
#[derive(FromRow)]
pub(crate) struct SagaRow {
    id: Uuid,
    initiator_id: i64,
    chat_id: i64,
    sender: String,
    text: String,
    sender_id: Option<i64>,
    message_seq: Option<i64>,
    #[sqlx(try_from = "String")]
    state: SagaState,
    error: String,
    /// Empty while the saga has not ended badly.
    error_code: String,
    lease_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The saga in a row of [`SAGA_COLUMNS`], from either engine, without its steps.
pub(crate) fn saga_from_row<'r, R: Row>(row: &'r R) -> anyhow::Result<SagaRecord>
where
    SagaRow: FromRow<'r, R>,
{
    let r = SagaRow::from_row(row)?;
    Ok(SagaRecord {
        id: r.id,
        initiator_id: r.initiator_id,
        chat_id: r.chat_id,
        sender: r.sender,
        text: r.text,
        sender_id: r.sender_id,
        message_seq: r.message_seq,
        state: r.state,
        error: r.error,
        error_code: if r.error_code.is_empty() {
            None
        } else {
            Some(FailCode::parse(&r.error_code)?)
        },
        lease_until: r.lease_until,
        created_at: r.created_at,
        updated_at: r.updated_at,
        steps: Vec::new(),
    })
}

/// What a new saga's creation logs besides the request: what its first step
/// ([`StepKind::FIRST`]) found. That step only reads (it resolves the sender), so the
/// orchestrator runs it before the saga is written and logs it with the saga's creation,
/// in one write; a saga that crashes before that write was never created, and a replay
/// of its key starts it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// It succeeded with `result`, and `next` starts: the saga runs, leased to its creator.
    Succeeded {
        /// What it found.
        result: StepResult,
        /// The step that starts.
        next: StepKind,
    },
    /// It failed for good: the saga ends FAILED with this reason and status.
    Failed {
        /// Why.
        error: String,
        /// The status the saga answers with.
        code: FailCode,
    },
    /// It could not finish now (AuthService unreachable): logged failed with the reason,
    /// and the saga left running without an owner, for the recovery sweep to run again.
    Paused {
        /// Why.
        error: String,
    },
}

/// What either engine writes for an [`Opening`].
pub(crate) struct OpeningRows<'a> {
    /// The saga's state.
    pub state: SagaState,
    /// The sender, when the first step found them.
    pub sender_id: Option<i64>,
    /// Why the saga failed; empty otherwise.
    pub error: &'a str,
    /// The status a failed saga answers with; empty otherwise.
    pub error_code: &'static str,
    /// How long the creator's lease lasts: zero for a saga left without an owner, None for
    /// one that ended.
    pub lease: Option<Duration>,
    /// The steps logged, in the order they ran: kind, state and error.
    pub steps: Vec<(StepKind, StepState, &'a str)>,
}

impl Opening {
    /// The rows to write for this opening, for a creator whose lease lasts `lease`.
    pub(crate) fn rows(&self, lease: Duration) -> OpeningRows<'_> {
        let first = StepKind::FIRST;
        match self {
            Opening::Succeeded { result, next } => OpeningRows {
                state: SagaState::Running,
                sender_id: result.columns().0,
                error: "",
                error_code: "",
                lease: Some(lease),
                steps: vec![
                    (first, StepState::Succeeded, ""),
                    (*next, StepState::Started, ""),
                ],
            },
            Opening::Failed { error, code } => OpeningRows {
                state: SagaState::Failed,
                sender_id: None,
                error,
                error_code: code.as_str(),
                lease: None,
                steps: vec![(first, StepState::Failed, error)],
            },
            Opening::Paused { error } => OpeningRows {
                state: SagaState::Running,
                sender_id: None,
                error: "",
                error_code: "",
                lease: Some(Duration::ZERO),
                steps: vec![(first, StepState::Failed, error)],
            },
        }
    }
}

/// What [`SagaStore::create`] found.
pub enum Created {
    /// A new saga, leased to the caller.
    New(SagaRecord),
    /// The idempotency key matched this earlier saga.
    Existing(SagaRecord),
}

/// What the log records with a step's success.
#[derive(Debug, Clone, Copy)]
pub enum Then {
    /// The next step starts.
    Start(StepKind),
    /// The saga ends in this state.
    Finish(SagaState),
}

/// What [`SagaStore::step_succeeded`] logged after the step.
#[derive(Debug)]
pub enum Logged {
    /// The next step's start, at its first start time.
    Started(DateTime<Utc>),
    /// The saga's end: the saga as it ended, with its steps.
    Ended(SagaRecord),
}

/// What a step's success records on the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    /// Nothing to record.
    None,
    /// The resolved sender's user id.
    Sender(i64),
    /// The stored message's sequence number.
    MessageSeq(i64),
}

impl StepResult {
    /// The values it sets on the saga's `sender_id` and `message_seq` columns; `None`
    /// keeps a column as it is.
    pub(crate) fn columns(self) -> (Option<i64>, Option<i64>) {
        match self {
            StepResult::None => (None, None),
            StepResult::Sender(s) => (Some(s), None),
            StepResult::MessageSeq(s) => (None, Some(s)),
        }
    }
}

/// The saga log, one implementation per engine. Every method commits before it returns,
/// so the orchestrator may act on what it wrote.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Creates saga `id` as `opening` says (a running saga is owned by the caller for
    /// `lease`), or returns the one with the same initiator and idempotency key.
    async fn create(
        &self,
        id: Uuid,
        initiator_id: i64,
        request: &SendRequest,
        lease: Duration,
        opening: &Opening,
    ) -> anyhow::Result<Created> {
        if let Some(saga) = self
            .insert(id, initiator_id, request, lease, opening)
            .await?
        {
            return Ok(Created::New(saga));
        }
        let key = request.idempotency_key.as_deref();
        Ok(Created::Existing(self.by_key(initiator_id, key).await?))
    }

    /// Inserts saga `id` with its first step's log as `opening` says, in one write; None
    /// when the initiator has a saga with the request's idempotency key already.
    async fn insert(
        &self,
        id: Uuid,
        initiator_id: i64,
        request: &SendRequest,
        lease: Duration,
        opening: &Opening,
    ) -> anyhow::Result<Option<SagaRecord>>;

    /// The initiator's saga with idempotency key `key`, and its steps; an error when there
    /// is none.
    async fn by_key(&self, initiator_id: i64, key: Option<&str>) -> anyhow::Result<SagaRecord>;

    /// The saga with `id` and its steps; None when there is none.
    async fn get(&self, id: Uuid) -> anyhow::Result<Option<SagaRecord>>;

    /// Records that a step starts (or starts again, keeping its first start time).
    async fn step_started(&self, id: Uuid, kind: StepKind) -> anyhow::Result<DateTime<Utc>>;

    /// Records a step's success and its result and, in the same transaction, what follows:
    /// the next step's start or the saga's end. One write where the log would otherwise
    /// take two, and, when the saga ends, no read after it.
    async fn step_succeeded(
        &self,
        id: Uuid,
        kind: StepKind,
        result: StepResult,
        then: Then,
    ) -> anyhow::Result<Logged>;

    /// Records, in one write, two steps that succeeded one after the other and the saga's
    /// end in `state`: `first`'s success and result, and the run of the step after it
    /// (`then`, whose start was not logged: see the orchestrator), from `first`'s end at
    /// `between` to its success now, with its result. Returns the saga as it ended, with its
    /// steps. The default takes the two writes of [`SagaStore::step_succeeded`] (the second
    /// step's start then logged at the first write's time); PostgreSQL's takes one.
    async fn steps_succeeded(
        &self,
        id: Uuid,
        first: (StepKind, StepResult),
        _between: DateTime<Utc>,
        then: (StepKind, StepResult),
        state: SagaState,
    ) -> anyhow::Result<SagaRecord> {
        self.step_succeeded(id, first.0, first.1, Then::Start(then.0))
            .await?;
        match self
            .step_succeeded(id, then.0, then.1, Then::Finish(state))
            .await?
        {
            Logged::Ended(saga) => Ok(saga),
            Logged::Started(_) => anyhow::bail!("saga {id} did not end"),
        }
    }

    /// Records a step's failure; a step may be started again after a transient failure.
    async fn step_failed(&self, id: Uuid, kind: StepKind, error: &str) -> anyhow::Result<()>;

    /// Moves the saga to `state`, with the reason for a failure.
    async fn set_state(
        &self,
        id: Uuid,
        state: SagaState,
        error: Option<(&str, FailCode)>,
    ) -> anyhow::Result<()>;

    /// Extends the owner's lease.
    async fn renew_lease(&self, id: Uuid, lease: Duration) -> anyhow::Result<()>;

    /// Gives the saga up so that the next recovery sweep takes it.
    async fn release(&self, id: Uuid) -> anyhow::Result<()>;

    /// Takes over (for `lease`) up to `limit` unfinished sagas whose lease ran out.
    async fn claim_unfinished(
        &self,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<SagaRecord>>;

    /// Takes over one saga if it is unfinished and its lease ran out.
    async fn claim(&self, id: Uuid, lease: Duration) -> anyhow::Result<Option<SagaRecord>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_result_sets_only_its_own_column() {
        assert_eq!(StepResult::None.columns(), (None, None));
        assert_eq!(StepResult::Sender(7).columns(), (Some(7), None));
        assert_eq!(StepResult::MessageSeq(3).columns(), (None, Some(3)));
    }
}
