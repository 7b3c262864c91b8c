//! The send-message saga: RESOLVE_SENDER → STORE_MESSAGE → NOTIFY, and COMPENSATE when
//! NOTIFY fails for good.
//!
//! Each step is written to the log before it runs and after it ends, with two exceptions.
//! Resolving the sender only reads, so it runs before the saga is written and the saga's
//! creation logs what it found (a crash before that write leaves no saga, and nothing to
//! undo). And the success of STORE_MESSAGE, with NOTIFY's start, waits while NOTIFY runs:
//! a NOTIFY that ends the saga within a short time ([`Unlogged`]) is logged with it in the
//! saga's last write, so the happy path writes the log twice; a slower one gets the write
//! then, so a saga waiting on its emails shows NOTIFY started with its message. Each step is safe to run twice: resolving is a read (of a name the caller was
//! found to hold within the last [`SENDERS_TTL`], or of AuthService); storing uses the saga id
//! as ChatService's idempotency key, so a resumed store returns the message stored before
//! the crash; notifying is idempotent in NotificationService; deleting a deleted message
//! succeeds. That is what lets an orchestrator that starts after a crash simply run an
//! unfinished saga again from the step the log says it reached
//! ([`Orchestrator::recover`]).
//!
//! What comes next is never decided here: [`crate::machine`] says, from where the saga is
//! and what its last step returned, and this module performs the steps and logs them.
//!
//! A step that meets an unreachable service does not fail the saga: the saga is released
//! and the caller told UNAVAILABLE; the recovery sweep picks it up again. The notify
//! deadline counts from the first start of NOTIFY, so a notifier that stays down makes the
//! saga compensate rather than wait forever; but a deadline that has passed is never the
//! whole answer: the notifier is asked for the real outcome first, so a saga resumed after
//! a crash (often after its deadline, since the successor waits for the lease) completes
//! when its emails went out meanwhile. An orchestrator owns a saga through a lease
//! that it renews while it drives it; another takes over only once the lease ran out.
//!
//! When traces are exported, driving a saga is a `saga` span (the child of the call that
//! started it, or a root of its own when the recovery sweep resumed it) and each step a
//! child span of it, marked failed with the step's error; the calls a step makes to the
//! other services continue the trace there.

use std::{sync::Arc, time::Duration};

use moka::sync::Cache;
use tonic::{Code, Status};
use tracing::{field::Empty, Instrument, Span};
use uuid::Uuid;

use chat_common::{client::TracedChannel, service_token::ServiceCredential, trace, Shutdown};
use chrono::{DateTime, Utc};
use grpc_chat_proto::auth::v1::{
    auth_service_client::AuthServiceClient, GetUserIdsByEmailsRequest,
};
use grpc_chat_proto::chat::v1::{
    chat_service_client::ChatServiceClient, DeleteMessageRequest, SendMessageRequest,
};
use grpc_chat_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, NotifyMessageRequest,
};

use crate::{
    convert::notify_answer,
    domain::{FailCode, SagaState, SendRequest, StepKind, StepState},
    error::SagaError,
    machine::{self, Action, NotifyAnswer, NotifyWait, Outcome, Progress, Step},
    store::{Created, Logged, Opening, SagaRecord, SagaStore, StepResult, Then},
};

/// How often a caller replaying an idempotency key looks whether the saga has ended.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// How long a `from` found to name its caller is taken as theirs without asking
/// AuthService again: the longest a name or email the caller gave up (changed, or lost
/// with the account) still passes RESOLVE_SENDER for them. It never lets anyone send as
/// someone else: the message is always stored as the authenticated caller, and a `from`
/// remembered for another caller is asked about again.
pub const SENDERS_TTL: Duration = Duration::from_secs(1);
/// Most names remembered.
const SENDERS_CACHED: u64 = 10_000;

/// Runs sagas: each step through its service, every transition logged before the next, and
/// the recovery of sagas whose owner stopped. Cheap to clone; the clones share one state.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SagaStore>,
    auth: AuthServiceClient<TracedChannel>,
    chat: ChatServiceClient<TracedChannel>,
    notification: NotificationServiceClient<TracedChannel>,
    credential: ServiceCredential,
    notify_deadline: Duration,
    lease: Duration,
    /// How long a step's success may go unlogged while the next step runs.
    unlogged_success: Duration,
    shutdown: Shutdown,
    /// `from`s found to name their caller, with the caller's id, for [`SENDERS_TTL`]: a
    /// sender's sagas after the first skip the call to AuthService.
    senders: Cache<String, i64>,
}

/// A step that could not finish now, or a log write that failed: the saga is released,
/// to be resumed.
struct Paused(String);

impl From<Paused> for Outcome {
    fn from(p: Paused) -> Self {
        Outcome::Unavailable(p.0)
    }
}

/// A write to the saga log that failed: the saga pauses, to be resumed.
fn log_failed(e: anyhow::Error) -> Paused {
    Paused(format!("saga log: {e:#}"))
}

/// The span of one step of saga `id` (`seq`: the message's, once known).
fn step_span(id: Uuid, kind: StepKind, seq: Option<i64>) -> Span {
    chat_common::otel_span!(
        "saga_step",
        otel.name = format!("saga {}", kind.as_str()),
        saga.id = %id,
        saga.step = kind.as_str(),
        message.seq = seq,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// The span of driving saga `id` (of chat `chat_id`), its steps' parent.
fn saga_span(id: Uuid, chat_id: i64) -> Span {
    chat_common::otel_span!(
        "saga",
        otel.name = "saga send_message",
        saga.id = %id,
        chat.id = chat_id,
        saga.state = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Marks the saga's span with how it ended: its state, and an error when it failed or
/// compensated.
fn record_end(span: &Span, saga: &SagaRecord) {
    span.record("saga.state", saga.state.as_str());
    if matches!(saga.state, SagaState::Failed | SagaState::Compensated) {
        trace::record_error(span, &saga.error);
    }
}

/// The reason a step failed or paused; None when it succeeded.
fn trouble(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Succeeded(_) => None,
        Outcome::Failed(_, e) | Outcome::Unavailable(e) => Some(e),
    }
}

/// Counts a saga that ended in `state`.
fn count_end(state: SagaState) {
    match state {
        SagaState::Completed => metrics::counter!("saga_completed_total").increment(1),
        SagaState::Compensated => metrics::counter!("saga_compensated_total").increment(1),
        SagaState::Failed => metrics::counter!("saga_failed_total").increment(1),
        SagaState::Running | SagaState::Compensating => {}
    }
}

fn paused(what: &str, status: &Status) -> Paused {
    Paused(machine::unavailable(what, status))
}

impl Orchestrator {
    /// An orchestrator over `store`, calling the services with `credential`. A saga
    /// compensates once its notify step has taken `notify_deadline`; its lease lasts `lease`
    /// and is renewed while it runs; a step's success is logged with the end of the step
    /// after it when that ends within `unlogged_success`. Background work stops on
    /// `shutdown`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn SagaStore>,
        auth: AuthServiceClient<TracedChannel>,
        chat: ChatServiceClient<TracedChannel>,
        notification: NotificationServiceClient<TracedChannel>,
        credential: ServiceCredential,
        notify_deadline: Duration,
        lease: Duration,
        unlogged_success: Duration,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                auth,
                chat,
                notification,
                credential,
                notify_deadline,
                lease,
                unlogged_success,
                shutdown,
                senders: Cache::builder()
                    .max_capacity(SENDERS_CACHED)
                    .time_to_live(SENDERS_TTL)
                    .build(),
            }),
        }
    }

    /// Runs a new saga for `caller`, or returns the one its idempotency key names, and
    /// answers with how it ended. The first step only reads, so it runs before the saga is
    /// written, and the saga's creation logs what it found ([`Opening`]).
    pub async fn send(&self, caller: i64, req: SendRequest) -> Result<SagaRecord, SagaError> {
        let id = Uuid::new_v4();
        let span = saga_span(id, req.chat_id);
        let opening = self.open(id, caller, &req).instrument(span.clone()).await;
        let created = self
            .inner
            .store
            .create(id, caller, &req, self.inner.lease, &opening)
            .await?;
        let saga = match created {
            Created::New(saga) => {
                metrics::counter!("saga_started_total").increment(1);
                match opening {
                    Opening::Succeeded { .. } => self.drive_to_end(saga, span).await?,
                    Opening::Failed { .. } => {
                        count_end(saga.state);
                        record_end(&span, &saga);
                        saga
                    }
                    Opening::Paused { error } => {
                        trace::record_error(&span, &error);
                        return Err(SagaError::Unavailable {
                            saga_id: Some(id),
                            message: error,
                        });
                    }
                }
            }
            Created::Existing(saga) => self.await_existing(saga).await?,
        };
        outcome(saga)
    }

    /// RESOLVE_SENDER for saga `id`, which is not written yet, in its step's span.
    async fn open(&self, id: Uuid, caller: i64, req: &SendRequest) -> Opening {
        let span = step_span(id, StepKind::FIRST, None);
        let outcome = self
            .resolve(&req.from, caller)
            .instrument(span.clone())
            .await
            .unwrap_or_else(Outcome::from);
        if let Some(e) = trouble(&outcome) {
            trace::record_error(&span, &e);
        }
        machine::opening(outcome)
    }

    /// The saga with `id` and its steps as logged; None when there is none.
    pub async fn get(&self, id: Uuid) -> Result<Option<SagaRecord>, SagaError> {
        Ok(self.inner.store.get(id).await?)
    }

    /// A replayed idempotency key: wait for the saga's owner to end it, or take it over
    /// when nobody owns it any more.
    async fn await_existing(&self, mut saga: SagaRecord) -> Result<SagaRecord, SagaError> {
        let store = &self.inner.store;
        let give_up = tokio::time::Instant::now() + self.inner.notify_deadline * 2;
        loop {
            if saga.state.is_final() {
                return Ok(saga);
            }
            if let Some(claimed) = store.claim(saga.id, self.inner.lease).await? {
                let span = saga_span(claimed.id, claimed.chat_id);
                return self.drive_to_end(claimed, span).await;
            }
            if tokio::time::Instant::now() > give_up {
                return Ok(saga);
            }
            tokio::time::sleep(POLL_EVERY).await;
            saga = store
                .get(saga.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("saga {} vanished", saga.id))?;
        }
    }

    /// Takes over unfinished sagas whose owner is gone, and drives each in its own task.
    /// Returns how many it took.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        let sagas = self
            .inner
            .store
            .claim_unfinished(self.inner.lease, 32)
            .await?;
        let n = sagas.len();
        for saga in sagas {
            tracing::info!(saga_id = %saga.id, state = saga.state.as_str(), "resuming a saga");
            metrics::counter!("saga_resumed_total").increment(1);
            let this = self.clone();
            self.inner.shutdown.spawn(async move {
                let span = saga_span(saga.id, saga.chat_id);
                if let Err(e) = this.drive(saga, span).await {
                    tracing::warn!(error = %e, "a resumed saga paused again");
                }
            });
        }
        Ok(n)
    }

    /// Resumes unfinished sagas at start and every `every`, until shutdown.
    pub fn spawn_recovery(&self, every: Duration) {
        let this = self.clone();
        self.inner.shutdown.spawn(async move {
            loop {
                if let Err(e) = this.recover().await {
                    tracing::warn!(error = ?e, "saga recovery failed");
                }
                tokio::select! {
                    _ = this.inner.shutdown.wait() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    /// Drives a saga this orchestrator owns until it ends or pauses, renewing its lease,
    /// in the saga's `span`.
    async fn drive(&self, saga: SagaRecord, span: Span) -> Result<SagaRecord, SagaError> {
        let id = saga.id;
        let heartbeat = {
            let store = self.inner.store.clone();
            let lease = self.inner.lease;
            Heartbeat(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    if let Err(e) = store.renew_lease(id, lease).await {
                        tracing::warn!(saga_id = %id, error = %e, "renewing a saga lease failed");
                    }
                }
            }))
        };
        let result = self.run_steps(saga).instrument(span.clone()).await;
        drop(heartbeat);
        let ended = match result {
            Ok(ended) => ended,
            Err(Paused(message)) => {
                trace::record_error(&span, &message);
                self.inner.store.release(id).await?;
                return Err(SagaError::Unavailable {
                    saga_id: Some(id),
                    message,
                });
            }
        };
        let saga = match ended {
            Some(saga) => saga,
            None => self
                .inner
                .store
                .get(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("saga {id} vanished"))?,
        };
        record_end(&span, &saga);
        Ok(saga)
    }

    /// [`Orchestrator::drive`] in a task of its own, awaited: a caller who gives up (its
    /// deadline, a dropped connection) drops only the wait, so the saga is not cut off
    /// between two steps; it ends as it would have, and a replay of its key or `GetSaga`
    /// tells how.
    async fn drive_to_end(&self, saga: SagaRecord, span: Span) -> Result<SagaRecord, SagaError> {
        let this = self.clone();
        self.inner
            .shutdown
            .spawn(async move { this.drive(saga, span).await }.in_current_span())
            .await
            .map_err(|e| anyhow::anyhow!("the saga's task failed: {e}"))?
    }

    /// The steps from where the log says the saga is, as [`Progress`] decides them. Store
    /// errors pause the saga too: the log is the one thing the saga cannot go on without.
    /// A step's success is logged together with the start of the next step (or the
    /// saga's end), in one write; when a next step follows, that write waits (see
    /// [`Unlogged`]), and a next step that ends the saga within
    /// [`Inner::unlogged_success`] logs both steps and the end in one write. Returns the
    /// saga as it ended when that write read it back (a saga that ends with a step's
    /// success).
    async fn run_steps(&self, saga: SagaRecord) -> Result<Option<SagaRecord>, Paused> {
        let store = &self.inner.store;
        let id = saga.id;
        let mut progress = Progress::of(&saga);
        let mut action = progress.resume();
        // When the write before logged the start of the step to run: that start's time. A
        // new saga's first step was logged started with the saga, and a step a crash
        // interrupted is still logged started: neither is logged again.
        let mut started = match &action {
            Action::Run(step) => saga.steps.iter().find_map(|s| {
                (s.kind == step.kind() && s.state == StepState::Started).then_some(s.started_at)
            }),
            _ => None,
        };
        let mut unlogged: Option<Unlogged> = None;
        loop {
            match action {
                Action::Run(step) => {
                    if machine::pauses_for_shutdown(step) {
                        self.check_shutdown()?;
                    }
                    let kind = step.kind();
                    let outcome = self
                        .step(&saga, step, started.take(), &mut unlogged)
                        .await?;
                    let succeeded = match outcome {
                        Outcome::Succeeded(result) => Some(result),
                        _ => None,
                    };
                    action = progress.next(kind, outcome);
                    let Some(result) = succeeded else { continue };
                    let then = action.then().ok_or_else(|| {
                        Paused(format!("saga: nothing follows {}", kind.as_str()))
                    })?;
                    let logged = match (unlogged.take(), then) {
                        (Some(before), Then::Finish(state)) => Logged::Ended(
                            store
                                .steps_succeeded(
                                    id,
                                    (before.kind, before.result),
                                    before.at,
                                    (kind, result),
                                    state,
                                )
                                .await
                                .map_err(log_failed)?,
                        ),
                        (before, Then::Start(next)) => {
                            // Two successes in a row that both start a step: the first is
                            // logged now, the second waits.
                            let mut before = before;
                            self.log_unlogged(id, &mut before).await?;
                            let at = Utc::now();
                            unlogged = Some(Unlogged {
                                kind,
                                result,
                                next,
                                at,
                            });
                            started = Some(at);
                            continue;
                        }
                        (None, then) => store
                            .step_succeeded(id, kind, result, then)
                            .await
                            .map_err(log_failed)?,
                    };
                    match logged {
                        Logged::Started(at) => started = Some(at),
                        Logged::Ended(saga) => {
                            count_end(saga.state);
                            return Ok(Some(saga));
                        }
                    }
                }
                Action::Pause(reason) => {
                    self.log_unlogged(id, &mut unlogged).await?;
                    return Err(Paused(reason));
                }
                Action::Compensate(reason) => {
                    self.log_unlogged(id, &mut unlogged).await?;
                    store
                        .set_state(
                            id,
                            SagaState::Compensating,
                            Some((&reason, FailCode::Aborted)),
                        )
                        .await
                        .map_err(log_failed)?;
                    action = progress.resume();
                }
                Action::Finish { state, error } => {
                    self.log_unlogged(id, &mut unlogged).await?;
                    let error = error.as_ref().map(|(e, code)| (e.as_str(), *code));
                    store
                        .set_state(id, state, error)
                        .await
                        .map_err(log_failed)?;
                    count_end(state);
                    return Ok(None);
                }
                Action::Ended => return Ok(None),
            }
        }
    }

    /// Logs the success that waits, if one does, with the start of the step after it.
    async fn log_unlogged(&self, id: Uuid, unlogged: &mut Option<Unlogged>) -> Result<(), Paused> {
        if let Some(u) = unlogged.take() {
            self.inner
                .store
                .step_succeeded(id, u.kind, u.result, Then::Start(u.next))
                .await
                .map_err(log_failed)?;
        }
        Ok(())
    }

    fn check_shutdown(&self) -> Result<(), Paused> {
        if self.inner.shutdown.is_triggered() {
            Err(Paused("the orchestrator is shutting down".into()))
        } else {
            Ok(())
        }
    }

    /// Runs `step` of `saga` and logs around it: its start, unless the write before
    /// logged it (`started`: when), and its failure. A success is for the caller to log,
    /// with what follows it. The success before this step, when it waits (`unlogged`), is
    /// logged once the step has run [`Inner::unlogged_success`], or before its failure.
    async fn step(
        &self,
        saga: &SagaRecord,
        step: Step,
        started: Option<DateTime<Utc>>,
        unlogged: &mut Option<Unlogged>,
    ) -> Result<Outcome, Paused> {
        let store = &self.inner.store;
        let (id, kind) = (saga.id, step.kind());
        let started = match started {
            Some(at) => at,
            None => store.step_started(id, kind).await.map_err(log_failed)?,
        };
        let span = step_span(id, kind, step.seq());
        let work = async {
            let outcome = match step {
                Step::ResolveSender => self.resolve(&saga.sender, saga.initiator_id).await,
                Step::StoreMessage { sender_id } => self.store_message(saga, sender_id).await,
                Step::Notify { seq } => self.notify(saga.chat_id, seq, started).await,
                Step::Compensate { seq } => self.compensate(saga.chat_id, seq).await,
            };
            outcome.unwrap_or_else(Outcome::from)
        }
        .instrument(span.clone());
        tokio::pin!(work);
        let outcome = if unlogged.is_some() {
            tokio::select! {
                outcome = &mut work => outcome,
                _ = tokio::time::sleep(self.inner.unlogged_success) => {
                    self.log_unlogged(id, unlogged).await?;
                    work.await
                }
            }
        } else {
            work.await
        };
        if let Some(e) = trouble(&outcome) {
            trace::record_error(&span, &e);
            self.log_unlogged(id, unlogged).await?;
            store.step_failed(id, kind, e).await.map_err(log_failed)?;
        }
        Ok(outcome)
    }

    async fn token_request<T>(&self, message: T) -> Result<tonic::Request<T>, Paused> {
        self.inner
            .credential
            .request(message)
            .await
            .map_err(|s| paused("service token", &s))
    }

    /// RESOLVE_SENDER: `sender` (the request's `from`) names an account, and that account
    /// is the caller (`initiator_id`).
    async fn resolve(&self, sender: &str, initiator_id: i64) -> Result<Outcome, Paused> {
        if self.inner.senders.get(sender) == Some(initiator_id) {
            return Ok(Outcome::Succeeded(StepResult::Sender(initiator_id)));
        }
        let req = self
            .token_request(GetUserIdsByEmailsRequest {
                emails: vec![sender.to_owned()],
            })
            .await?;
        let no_user = || {
            Outcome::Failed(
                FailCode::NotFound,
                format!("no user {}", chat_common::domain::echo(sender)),
            )
        };
        let resp = match self.inner.auth.clone().get_user_ids_by_emails(req).await {
            Ok(r) => r.into_inner(),
            // Auth refusing the name is an answer, not an outage: asking again in ten
            // seconds would get the same answer for ever.
            Err(s)
                if matches!(
                    s.code(),
                    Code::InvalidArgument | Code::NotFound | Code::OutOfRange
                ) =>
            {
                return Ok(no_user())
            }
            Err(s) => return Err(paused("auth service", &s)),
        };
        let Some(user) = resp.users.first() else {
            return Ok(no_user());
        };
        if user.user_id != initiator_id {
            return Ok(Outcome::Failed(
                FailCode::PermissionDenied,
                "`from` must be the authenticated caller".into(),
            ));
        }
        self.inner.senders.insert(sender.to_owned(), user.user_id);
        Ok(Outcome::Succeeded(StepResult::Sender(user.user_id)))
    }

    /// STORE_MESSAGE, keyed by the saga id so that running it again stores nothing new.
    async fn store_message(&self, saga: &SagaRecord, sender_id: i64) -> Result<Outcome, Paused> {
        let req = self
            .token_request(SendMessageRequest {
                chat_id: saga.chat_id,
                text: saga.text.clone(),
                idempotency_key: format!("saga:{}", saga.id),
                on_behalf_of_user_id: sender_id,
            })
            .await?;
        match self.inner.chat.clone().send_message(req).await {
            Ok(r) => match r.into_inner().message {
                Some(m) => {
                    Span::current().record("message.seq", m.seq);
                    Ok(Outcome::Succeeded(StepResult::MessageSeq(m.seq)))
                }
                None => Err(Paused("chat service answered without the message".into())),
            },
            Err(s) => Ok(machine::store_refused(&s)),
        }
    }

    /// NOTIFY: has the message's emails sent and waits for them, until the deadline that
    /// counts from the step's first start (`started`); [`machine::after_notify`] decides
    /// on each answer.
    ///
    /// The deadline never decides alone: once it has passed (a notifier that stayed down,
    /// or an orchestrator that crashed and whose successor took the saga over only after
    /// its lease ran out), the notifier is asked once more for the real outcome, and only a
    /// message whose emails are still not delivered then is compensated. NotifyMessage is
    /// idempotent, so that last look sends nothing twice; it also sends whatever the event
    /// path has not sent yet, so a message that can still be delivered is delivered rather
    /// than removed.
    async fn notify(
        &self,
        chat_id: i64,
        seq: i64,
        started: DateTime<Utc>,
    ) -> Result<Outcome, Paused> {
        loop {
            let NotifyWait { wait, last_look } =
                machine::notify_wait(started, self.inner.notify_deadline, Utc::now());
            let mut req = self
                .token_request(NotifyMessageRequest {
                    chat_id,
                    seq,
                    timeout_ms: wait.as_millis().max(1) as i32,
                })
                .await?;
            req.set_timeout(wait + Duration::from_secs(5));
            let answer = match self.inner.notification.clone().notify_message(req).await {
                Ok(r) => notify_answer(r.into_inner()),
                Err(s) if s.code() == Code::NotFound => NotifyAnswer::Gone,
                Err(s) if machine::transient(s.code()) => {
                    if last_look {
                        tracing::warn!(chat_id, seq, error = %s.message(),
                            "the notifier cannot tell the outcome after the deadline");
                    }
                    NotifyAnswer::Unreachable(machine::unavailable("notification service", &s))
                }
                Err(s) => NotifyAnswer::Refused(s.message().to_owned()),
            };
            if let Some(outcome) = machine::after_notify(answer, last_look) {
                return Ok(outcome);
            }
        }
    }

    /// COMPENSATE: deletes the message; one already gone counts as deleted.
    async fn compensate(&self, chat_id: i64, seq: i64) -> Result<Outcome, Paused> {
        let req = self
            .token_request(DeleteMessageRequest { chat_id, seq })
            .await?;
        match self.inner.chat.clone().delete_message(req).await {
            Ok(_) => Ok(Outcome::Succeeded(StepResult::None)),
            Err(s) if s.code() == Code::NotFound => Ok(Outcome::Succeeded(StepResult::None)),
            Err(s) => Err(paused("chat service", &s)),
        }
    }
}

/// A step's success not logged yet: while the step after it runs, for at most
/// [`Inner::unlogged_success`]. A saga's happy path then logs twice (its creation and its
/// end) instead of three times. Nothing is lost by the wait: every step is safe to run
/// again, so a saga whose orchestrator crashed inside it is resumed at this step, which
/// finds its earlier result again (STORE_MESSAGE: the message keyed by the saga's id).
#[derive(Clone, Copy)]
struct Unlogged {
    /// The step that succeeded.
    kind: StepKind,
    /// What it found.
    result: StepResult,
    /// The step after it, running.
    next: StepKind,
    /// When it ended and the next one started, by this process's clock.
    at: DateTime<Utc>,
}

/// A saga's lease heartbeat, stopped when its drive ends in any way (dropped or panicking
/// included): a heartbeat left running would renew the lease for ever, and no orchestrator
/// could take the saga over.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a saga that has stopped answers its caller.
fn outcome(saga: SagaRecord) -> Result<SagaRecord, SagaError> {
    match saga.state {
        SagaState::Completed => Ok(saga),
        SagaState::Failed | SagaState::Compensated => Err(SagaError::Failed {
            saga_id: saga.id,
            code: saga.error_code.unwrap_or(FailCode::Aborted),
            message: saga.error.clone(),
        }),
        SagaState::Running | SagaState::Compensating => Err(SagaError::Unavailable {
            saga_id: Some(saga.id),
            message: "the saga has not finished yet".into(),
        }),
    }
}
