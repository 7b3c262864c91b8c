//! The send-message saga: RESOLVE_SENDER → STORE_MESSAGE → NOTIFY, and COMPENSATE when
//! NOTIFY fails for good.
//!
//! Each step is written to the log before it runs and after it ends, and each is safe to
//! run twice: resolving is a read; storing uses the saga id as ChatService's idempotency
//! key, so a resumed store returns the message stored before the crash; notifying is
//! idempotent in NotificationService; deleting a deleted message succeeds. That is what
//! lets an orchestrator that starts after a crash simply run an unfinished saga again from
//! the step the log says it reached ([`Orchestrator::recover`]).
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
    notification_service_client::NotificationServiceClient, DeliveryState, NotifyMessageRequest,
};

use crate::{
    domain::{FailCode, SagaState, SendRequest, StepKind},
    error::SagaError,
    store::{Created, SagaRecord, SagaStore, StepResult, Then},
};

/// How often a caller replaying an idempotency key looks whether the saga has ended.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The longest NotificationService lets one call wait.
const MAX_NOTIFY_WAIT: Duration = Duration::from_secs(60);
/// How long the last look after the notify deadline may wait for emails being sent.
const LAST_LOOK: Duration = Duration::from_secs(2);

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
    shutdown: Shutdown,
}

/// How a step ended.
enum Step<T> {
    Done(T),
    /// The saga cannot go on: bad input found, or notification failed.
    Fail(FailCode, String),
}

/// A step that could not finish now; the saga is resumed later.
struct Paused(String);

type StepOutcome<T> = Result<Step<T>, Paused>;

/// How the notify step ended, when it did.
#[derive(Debug, PartialEq, Eq)]
enum Notified {
    /// The notify step succeeded: the saga is completed.
    Completed,
    /// The notification failed for good: the message is to be removed.
    Compensate,
}

/// A write to the saga log that failed: the saga pauses, to be resumed.
fn log_failed(e: anyhow::Error) -> Paused {
    Paused(format!("saga log: {e:#}"))
}

/// Whether a step's call that failed with `code` pauses the saga (to be resumed) rather
/// than failing it: whatever a client may retry, and besides that any trouble of the called
/// service itself (a bug answered INTERNAL, a service token it no longer accepts, a busy or
/// restarting peer), since a saga once accepted must finish and an answer about the
/// request (NOT_FOUND, INVALID_ARGUMENT, ...) is the only thing that fails it.
fn transient(code: Code) -> bool {
    grpc_chat_proto::reasons::retryable(code)
        || matches!(
            code,
            Code::Cancelled
                | Code::ResourceExhausted
                | Code::Unknown
                | Code::Aborted
                | Code::Internal
                | Code::Unauthenticated
        )
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

/// Runs a step's work inside `span`, marking the span failed when the step failed or
/// paused.
async fn traced<T>(
    span: Span,
    work: impl std::future::Future<Output = StepOutcome<T>>,
) -> StepOutcome<T> {
    let outcome = work.instrument(span.clone()).await;
    match &outcome {
        Ok(Step::Done(_)) => {}
        Ok(Step::Fail(_, e)) | Err(Paused(e)) => trace::record_error(&span, e),
    }
    outcome
}

fn paused(what: &str, status: &Status) -> Paused {
    Paused(format!(
        "{what}: {} ({:?})",
        status.message(),
        status.code()
    ))
}

impl Orchestrator {
    /// An orchestrator over `store`, calling the services with `credential`. A saga
    /// compensates once its notify step has taken `notify_deadline`; its lease lasts `lease`
    /// and is renewed while it runs. Background work stops on `shutdown`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn SagaStore>,
        auth: AuthServiceClient<TracedChannel>,
        chat: ChatServiceClient<TracedChannel>,
        notification: NotificationServiceClient<TracedChannel>,
        credential: ServiceCredential,
        notify_deadline: Duration,
        lease: Duration,
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
                shutdown,
            }),
        }
    }

    /// Runs a new saga for `caller`, or returns the one its idempotency key names, and
    /// answers with how it ended.
    pub async fn send(&self, caller: i64, req: SendRequest) -> Result<SagaRecord, SagaError> {
        let store = &self.inner.store;
        let saga = match store.create(caller, &req, self.inner.lease).await? {
            Created::New(saga) => {
                metrics::counter!("saga_started_total").increment(1);
                self.drive(saga).await?
            }
            Created::Existing(saga) => self.await_existing(saga).await?,
        };
        outcome(saga)
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
                return self.drive(claimed).await;
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
                if let Err(e) = this.drive(saga).await {
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

    /// Drives a saga this orchestrator owns until it ends or pauses, renewing its lease.
    async fn drive(&self, saga: SagaRecord) -> Result<SagaRecord, SagaError> {
        let id = saga.id;
        let span = chat_common::otel_span!(
            "saga",
            otel.name = "saga send_message",
            saga.id = %id,
            chat.id = saga.chat_id,
            saga.state = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        let heartbeat = {
            let store = self.inner.store.clone();
            let lease = self.inner.lease;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    if let Err(e) = store.renew_lease(id, lease).await {
                        tracing::warn!(saga_id = %id, error = %e, "renewing a saga lease failed");
                    }
                }
            })
        };
        let result = self.run_steps(saga).instrument(span.clone()).await;
        heartbeat.abort();
        match result {
            Ok(()) => {}
            Err(Paused(message)) => {
                trace::record_error(&span, &message);
                self.inner.store.release(id).await?;
                return Err(SagaError::Unavailable {
                    saga_id: Some(id),
                    message,
                });
            }
        }
        let saga = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("saga {id} vanished"))?;
        span.record("saga.state", saga.state.as_str());
        if matches!(saga.state, SagaState::Failed | SagaState::Compensated) {
            trace::record_error(&span, &saga.error);
        }
        Ok(saga)
    }

    /// The steps from where the log says the saga is. Store errors pause the saga too:
    /// the log is the one thing the saga cannot go on without. A step's success is logged
    /// together with the start of the next step (or the saga's end), in one write.
    async fn run_steps(&self, saga: SagaRecord) -> Result<(), Paused> {
        if saga.state == SagaState::Running {
            let Some((sender_id, started)) = self.sender_step(&saga).await? else {
                return Ok(());
            };
            self.check_shutdown()?;
            let Some((seq, notify_started)) = self.message_step(&saga, sender_id, started).await?
            else {
                return Ok(());
            };
            self.check_shutdown()?;
            if self.notify_step(&saga, seq, notify_started).await? == Notified::Completed {
                return Ok(());
            }
        }
        self.compensate_step(&saga).await
    }

    /// RESOLVE_SENDER, unless the log has the sender already: the sender's id and whether
    /// STORE_MESSAGE was logged as started with it; `None` when the saga failed here.
    async fn sender_step(&self, saga: &SagaRecord) -> Result<Option<(i64, bool)>, Paused> {
        if let Some(sender) = saga.sender_id {
            return Ok(Some((sender, false)));
        }
        let resolve = self.resolve(saga);
        match self
            .step(saga.id, StepKind::ResolveSender, None, false, resolve)
            .await?
        {
            Step::Done(sender) => {
                self.inner
                    .store
                    .step_succeeded(
                        saga.id,
                        StepKind::ResolveSender,
                        StepResult::Sender(sender),
                        Then::Start(StepKind::StoreMessage),
                    )
                    .await
                    .map_err(log_failed)?;
                Ok(Some((sender, true)))
            }
            Step::Fail(code, e) => self.fail(saga.id, code, &e).await.map(|()| None),
        }
    }

    /// STORE_MESSAGE, unless the log has the message already (`started`: the step before
    /// logged its start): the message's seq and, when this logged NOTIFY's start, its
    /// time; `None` when the saga failed here.
    async fn message_step(
        &self,
        saga: &SagaRecord,
        sender_id: i64,
        started: bool,
    ) -> Result<Option<(i64, Option<DateTime<Utc>>)>, Paused> {
        if let Some(seq) = saga.message_seq {
            return Ok(Some((seq, None)));
        }
        let store_message = self.store_message(saga, sender_id);
        match self
            .step(
                saga.id,
                StepKind::StoreMessage,
                None,
                started,
                store_message,
            )
            .await?
        {
            Step::Done(seq) => {
                let at = self
                    .inner
                    .store
                    .step_succeeded(
                        saga.id,
                        StepKind::StoreMessage,
                        StepResult::MessageSeq(seq),
                        Then::Start(StepKind::Notify),
                    )
                    .await
                    .map_err(log_failed)?;
                Ok(Some((seq, at)))
            }
            Step::Fail(code, e) => self.fail(saga.id, code, &e).await.map(|()| None),
        }
    }

    /// NOTIFY (its start logged now unless `started` says when it was): the saga is
    /// completed, or it is to be compensated because the notification failed for good.
    async fn notify_step(
        &self,
        saga: &SagaRecord,
        seq: i64,
        started: Option<DateTime<Utc>>,
    ) -> Result<Notified, Paused> {
        let store = &self.inner.store;
        let id = saga.id;
        let started = match started {
            Some(at) => at,
            None => store
                .step_started(id, StepKind::Notify)
                .await
                .map_err(log_failed)?,
        };
        let notify = self.notify(saga.chat_id, seq, started);
        match traced(step_span(id, StepKind::Notify, Some(seq)), notify).await {
            Err(p) => {
                store
                    .step_failed(id, StepKind::Notify, &p.0)
                    .await
                    .map_err(log_failed)?;
                Err(p)
            }
            Ok(Step::Done(())) => {
                store
                    .step_succeeded(
                        id,
                        StepKind::Notify,
                        StepResult::None,
                        Then::Finish(SagaState::Completed),
                    )
                    .await
                    .map_err(log_failed)?;
                metrics::counter!("saga_completed_total").increment(1);
                Ok(Notified::Completed)
            }
            Ok(Step::Fail(_, reason)) => {
                store
                    .step_failed(id, StepKind::Notify, &reason)
                    .await
                    .map_err(log_failed)?;
                let message = format!("notification failed: {reason}; the message was removed");
                store
                    .set_state(
                        id,
                        SagaState::Compensating,
                        Some((&message, FailCode::Aborted)),
                    )
                    .await
                    .map_err(log_failed)?;
                Ok(Notified::Compensate)
            }
        }
    }

    /// COMPENSATE (now, or resumed): removes the message, when one was stored, and ends
    /// the saga compensated.
    async fn compensate_step(&self, saga: &SagaRecord) -> Result<(), Paused> {
        let store = &self.inner.store;
        let id = saga.id;
        let stored = store.get(id).await.map_err(log_failed)?;
        let Some(seq) = stored.and_then(|s| s.message_seq) else {
            return store
                .set_state(id, SagaState::Compensated, None)
                .await
                .map_err(log_failed);
        };
        let compensate = self.compensate(saga.chat_id, seq);
        match self
            .step(id, StepKind::Compensate, Some(seq), false, compensate)
            .await?
        {
            Step::Done(()) => {
                store
                    .step_succeeded(
                        id,
                        StepKind::Compensate,
                        StepResult::None,
                        Then::Finish(SagaState::Compensated),
                    )
                    .await
                    .map_err(log_failed)?;
            }
            Step::Fail(..) => store
                .set_state(id, SagaState::Compensated, None)
                .await
                .map_err(log_failed)?,
        }
        metrics::counter!("saga_compensated_total").increment(1);
        Ok(())
    }

    fn check_shutdown(&self) -> Result<(), Paused> {
        if self.inner.shutdown.is_triggered() {
            Err(Paused("the orchestrator is shutting down".into()))
        } else {
            Ok(())
        }
    }

    /// Logs a step around `work`: its start, unless the step before logged it, and its
    /// failure. A success is for the caller to log, with what follows it. `seq` is the
    /// message's, when known, for the step's span.
    async fn step<T>(
        &self,
        id: Uuid,
        kind: StepKind,
        seq: Option<i64>,
        started: bool,
        work: impl std::future::Future<Output = StepOutcome<T>>,
    ) -> StepOutcome<T> {
        let store = &self.inner.store;
        let log = |e: anyhow::Error| Paused(format!("saga log: {e:#}"));
        if !started {
            store.step_started(id, kind).await.map_err(log)?;
        }
        let outcome = traced(step_span(id, kind, seq), work).await;
        match &outcome {
            Ok(Step::Done(_)) => {}
            Ok(Step::Fail(_, e)) | Err(Paused(e)) => {
                store.step_failed(id, kind, e).await.map_err(log)?
            }
        }
        outcome
    }

    async fn fail(&self, id: Uuid, code: FailCode, error: &str) -> Result<(), Paused> {
        self.inner
            .store
            .set_state(id, SagaState::Failed, Some((error, code)))
            .await
            .map_err(|e| Paused(format!("saga log: {e:#}")))?;
        metrics::counter!("saga_failed_total").increment(1);
        Ok(())
    }

    async fn token_request<T>(&self, message: T) -> Result<tonic::Request<T>, Paused> {
        self.inner
            .credential
            .request(message)
            .await
            .map_err(|s| paused("service token", &s))
    }

    /// RESOLVE_SENDER: `from` names an account, and that account is the caller.
    async fn resolve(&self, saga: &SagaRecord) -> StepOutcome<i64> {
        let req = self
            .token_request(GetUserIdsByEmailsRequest {
                emails: vec![saga.sender.clone()],
            })
            .await?;
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
                return Ok(Step::Fail(
                    FailCode::NotFound,
                    format!("no user {}", chat_common::domain::echo(&saga.sender)),
                ))
            }
            Err(s) => return Err(paused("auth service", &s)),
        };
        let Some(user) = resp.users.first() else {
            return Ok(Step::Fail(
                FailCode::NotFound,
                format!("no user {}", chat_common::domain::echo(&saga.sender)),
            ));
        };
        if user.user_id != saga.initiator_id {
            return Ok(Step::Fail(
                FailCode::PermissionDenied,
                "`from` must be the authenticated caller".into(),
            ));
        }
        Ok(Step::Done(user.user_id))
    }

    /// STORE_MESSAGE, keyed by the saga id so that running it again stores nothing new.
    async fn store_message(&self, saga: &SagaRecord, sender_id: i64) -> StepOutcome<i64> {
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
                    Ok(Step::Done(m.seq))
                }
                None => Err(Paused("chat service answered without the message".into())),
            },
            // The chat service's own words ("chat 3 does not exist or you are not a member
            // of it"): the sender is the caller, and the same sentence as every other command.
            Err(s) if s.code() == Code::NotFound => {
                Ok(Step::Fail(FailCode::NotFound, s.message().to_owned()))
            }
            Err(s) if s.code() == Code::InvalidArgument => Ok(Step::Fail(
                FailCode::InvalidArgument,
                s.message().to_owned(),
            )),
            Err(s) if s.code() == Code::PermissionDenied => Ok(Step::Fail(
                FailCode::PermissionDenied,
                s.message().to_owned(),
            )),
            // Any other answer that is not an outage will not change by asking again.
            Err(s) if !transient(s.code()) => Ok(Step::Fail(
                FailCode::InvalidArgument,
                format!("chat service refused the message: {}", s.message()),
            )),
            Err(s) => Err(paused("chat service", &s)),
        }
    }

    /// NOTIFY: has the message's emails sent and waits for them, until the deadline that
    /// counts from the step's first start.
    ///
    /// The deadline never decides alone: once it has passed (a notifier that stayed down,
    /// or an orchestrator that crashed and whose successor took the saga over only after
    /// its lease ran out), the notifier is asked once more for the real outcome, and only a
    /// message whose emails are still not delivered then is compensated. NotifyMessage is
    /// idempotent, so that last look sends nothing twice; it also sends whatever the event
    /// path has not sent yet, so a message that can still be delivered is delivered rather
    /// than removed.
    async fn notify(&self, chat_id: i64, seq: i64, started: DateTime<Utc>) -> StepOutcome<()> {
        let deadline_at = started
            + chrono::Duration::from_std(self.inner.notify_deadline)
                .unwrap_or(chrono::Duration::seconds(30));
        let too_late = || {
            Ok(Step::Fail(
                FailCode::Aborted,
                "not delivered before the notification deadline".into(),
            ))
        };
        loop {
            let left = (deadline_at - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            let last_look = left.is_zero();
            let wait = if last_look {
                LAST_LOOK
            } else {
                left.min(MAX_NOTIFY_WAIT)
            };
            let mut req = self
                .token_request(NotifyMessageRequest {
                    chat_id,
                    seq,
                    timeout_ms: wait.as_millis().max(1) as i32,
                })
                .await?;
            req.set_timeout(wait + Duration::from_secs(5));
            let resp = match self.inner.notification.clone().notify_message(req).await {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == Code::NotFound => {
                    return Ok(Step::Fail(
                        FailCode::Aborted,
                        "the message is gone before it was notified".into(),
                    ))
                }
                // Past the deadline with no way to learn more: the message is removed,
                // and a notifier that comes back later checks that a message still exists
                // before it emails about it.
                Err(s) if transient(s.code()) && last_look => {
                    tracing::warn!(chat_id, seq, error = %s.message(),
                        "the notifier cannot tell the outcome after the deadline");
                    return too_late();
                }
                Err(s) if transient(s.code()) => return Err(paused("notification service", &s)),
                Err(s) => {
                    return Ok(Step::Fail(
                        FailCode::Aborted,
                        format!("notification service: {}", s.message()),
                    ))
                }
            };
            match DeliveryState::try_from(resp.state) {
                Ok(DeliveryState::Delivered) => return Ok(Step::Done(())),
                Ok(DeliveryState::Failed) => {
                    let reasons: Vec<String> = resp
                        .deliveries
                        .iter()
                        .filter(|d| d.state == DeliveryState::Failed as i32)
                        .map(|d| format!("user {}: {}", d.recipient_id, d.error))
                        .collect();
                    return Ok(Step::Fail(FailCode::Aborted, reasons.join("; ")));
                }
                _ if last_look => return too_late(),
                // Still pending: ask again until the deadline.
                _ => continue,
            }
        }
    }

    /// COMPENSATE: deletes the message; one already gone counts as deleted.
    async fn compensate(&self, chat_id: i64, seq: i64) -> StepOutcome<()> {
        let req = self
            .token_request(DeleteMessageRequest { chat_id, seq })
            .await?;
        match self.inner.chat.clone().delete_message(req).await {
            Ok(_) => Ok(Step::Done(())),
            Err(s) if s.code() == Code::NotFound => Ok(Step::Done(())),
            Err(s) => Err(paused("chat service", &s)),
        }
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
