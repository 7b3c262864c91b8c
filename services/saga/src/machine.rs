//! The saga's decisions, apart from the calls and the log writes that carry them out.
//!
//! [`Progress`] is what the log says of a saga that decides what runs next: its state and
//! the results of the steps that succeeded. [`Progress::resume`] says where a saga read
//! from the log goes on; [`Progress::next`] takes the last step's [`Outcome`] and answers
//! with the [`Action`] to take. The NOTIFY step's own loop (ask, wait, ask again until the
//! deadline, then one last look) is decided by [`notify_wait`] and [`after_notify`], and
//! which gRPC answers are worth asking again by [`transient`].
//!
//! Everything here is a plain function of its arguments, with no clock, no database and
//! no service behind it: every transition, compensation and deadline included, is tested
//! by value below, and the orchestrator only performs the actions and logs them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::{Code, Status};

use crate::{
    domain::{FailCode, SagaState, StepKind},
    store::{Opening, SagaRecord, StepResult, Then},
};

/// The longest NotificationService lets one call wait.
pub const MAX_NOTIFY_WAIT: Duration = Duration::from_secs(60);
/// How long the last look after the notify deadline may wait for emails being sent.
pub const LAST_LOOK: Duration = Duration::from_secs(2);
/// The notify deadline used when the configured one is too large for a date.
const FALLBACK_DEADLINE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// How a step ended, as the orchestrator hands it to [`Progress::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The step did its work; what it found is recorded on the saga with its success.
    Succeeded(StepResult),
    /// The step failed for good: the request or the notification cannot succeed, and
    /// asking again would get the same answer.
    Failed(FailCode, String),
    /// The step could not finish now (a service unreachable or in trouble, the log not
    /// written): the saga is given up and the recovery sweep runs it again later.
    Unavailable(String),
}

/// A step to run, with what it needs from the steps before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Resolve the sender the request names.
    ResolveSender,
    /// Store the message as the resolved sender.
    StoreMessage {
        /// The sender's user id.
        sender_id: i64,
    },
    /// Have the stored message notified.
    Notify {
        /// The stored message's seq.
        seq: i64,
    },
    /// Delete the stored message.
    Compensate {
        /// The stored message's seq.
        seq: i64,
    },
}

impl Step {
    /// The step's name in the log.
    pub fn kind(self) -> StepKind {
        match self {
            Step::ResolveSender => StepKind::ResolveSender,
            Step::StoreMessage { .. } => StepKind::StoreMessage,
            Step::Notify { .. } => StepKind::Notify,
            Step::Compensate { .. } => StepKind::Compensate,
        }
    }

    /// The message's seq, when the step works on the stored message.
    pub fn seq(self) -> Option<i64> {
        match self {
            Step::Notify { seq } | Step::Compensate { seq } => Some(seq),
            Step::ResolveSender | Step::StoreMessage { .. } => None,
        }
    }
}

/// What the orchestrator does next with a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run this step; after a success its start is logged with that success, in one write.
    Run(Step),
    /// Release the saga with this reason: the recovery sweep retries it after its
    /// interval, from the step the log says it reached.
    Pause(String),
    /// The notification failed for good: log the saga COMPENSATING with this reason
    /// (answered as ABORTED), then go on as [`Progress::resume`] says.
    Compensate(String),
    /// End the saga in `state` (COMPLETED, COMPENSATED or FAILED), with the reason and
    /// status a failure answers with.
    Finish {
        /// The final state.
        state: SagaState,
        /// Why, and the code to answer with, when the saga failed.
        error: Option<(String, FailCode)>,
    },
    /// The saga had ended before: nothing to run and nothing to log.
    Ended,
}

impl Action {
    /// What the log records together with a step's success when this action follows it;
    /// None for an action that cannot follow a success.
    pub fn then(&self) -> Option<Then> {
        match self {
            Action::Run(step) => Some(Then::Start(step.kind())),
            Action::Finish { state, .. } => Some(Then::Finish(*state)),
            Action::Pause(_) | Action::Compensate(_) | Action::Ended => None,
        }
    }
}

/// What decides a saga's next step: where it stands and what its steps found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Where the saga stands.
    pub state: SagaState,
    /// The sender's user id, once RESOLVE_SENDER succeeded.
    pub sender_id: Option<i64>,
    /// The stored message's seq, once STORE_MESSAGE succeeded.
    pub message_seq: Option<i64>,
}

impl Progress {
    /// The progress the log records for `saga`.
    pub fn of(saga: &SagaRecord) -> Self {
        Self {
            state: saga.state,
            sender_id: saga.sender_id,
            message_seq: saga.message_seq,
        }
    }

    /// Where a saga read from the log goes on: the first step whose result the log does
    /// not have yet (every step is safe to run twice), or the compensation it was in.
    pub fn resume(&self) -> Action {
        match self.state {
            SagaState::Running => match (self.sender_id, self.message_seq) {
                (None, _) => Action::Run(Step::ResolveSender),
                (Some(sender_id), None) => Action::Run(Step::StoreMessage { sender_id }),
                (Some(_), Some(seq)) => Action::Run(Step::Notify { seq }),
            },
            SagaState::Compensating => match self.message_seq {
                Some(seq) => Action::Run(Step::Compensate { seq }),
                // Nothing was stored, so nothing is to be removed.
                None => Action::Finish {
                    state: SagaState::Compensated,
                    error: None,
                },
            },
            SagaState::Completed | SagaState::Compensated | SagaState::Failed => Action::Ended,
        }
    }

    /// After `step` ended with `outcome`: records what the step found and says what
    /// follows. A step that could not finish pauses the saga wherever it is; RESOLVE_SENDER
    /// and STORE_MESSAGE failing fail the saga (nothing is stored yet); NOTIFY failing
    /// compensates; COMPENSATE ends the saga compensated whatever it met, since the
    /// message is then removed or was never there.
    pub fn next(&mut self, step: StepKind, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Unavailable(reason) => Action::Pause(reason),
            Outcome::Succeeded(result) => {
                match result {
                    StepResult::Sender(id) => self.sender_id = Some(id),
                    StepResult::MessageSeq(seq) => self.message_seq = Some(seq),
                    StepResult::None => {}
                }
                match step {
                    // The result just recorded says which step is next.
                    StepKind::ResolveSender | StepKind::StoreMessage => self.resume(),
                    StepKind::Notify => self.finish(SagaState::Completed, None),
                    StepKind::Compensate => self.finish(SagaState::Compensated, None),
                }
            }
            Outcome::Failed(code, reason) => match step {
                StepKind::ResolveSender | StepKind::StoreMessage => {
                    self.finish(SagaState::Failed, Some((reason, code)))
                }
                StepKind::Notify => {
                    self.state = SagaState::Compensating;
                    Action::Compensate(format!(
                        "notification failed: {reason}; the message was removed"
                    ))
                }
                StepKind::Compensate => self.finish(SagaState::Compensated, None),
            },
        }
    }

    fn finish(&mut self, state: SagaState, error: Option<(String, FailCode)>) -> Action {
        self.state = state;
        Action::Finish { state, error }
    }
}

/// How a new saga opens once its first step ([`StepKind::FIRST`], run before the saga is
/// written) ended with `outcome`: what [`Progress::next`] decides for a running saga that
/// has found nothing yet, as its creation logs it.
pub fn opening(outcome: Outcome) -> Opening {
    let mut progress = Progress {
        state: SagaState::Running,
        sender_id: None,
        message_seq: None,
    };
    let result = match &outcome {
        Outcome::Succeeded(result) => Some(*result),
        Outcome::Failed(..) | Outcome::Unavailable(_) => None,
    };
    match (result, progress.next(StepKind::FIRST, outcome)) {
        (Some(result), Action::Run(next)) => Opening::Succeeded {
            result,
            next: next.kind(),
        },
        (
            _,
            Action::Finish {
                error: Some((error, code)),
                ..
            },
        ) => Opening::Failed { error, code },
        (_, Action::Pause(error)) => Opening::Paused { error },
        (_, other) => Opening::Paused {
            error: format!("saga: {other:?} cannot follow the first step"),
        },
    }
}

/// Whether a shutdown stops the saga before `step`: it pauses between the forward steps,
/// each one's end logged, so the successor resumes there; the first step runs since the
/// caller has just asked for it, and a compensation once decided is seen through.
pub fn pauses_for_shutdown(step: Step) -> bool {
    matches!(step, Step::StoreMessage { .. } | Step::Notify { .. })
}

/// Whether a step's call that failed with `code` pauses the saga (to be resumed) rather
/// than failing it: whatever a client may retry, and besides that any trouble of the called
/// service itself (a bug answered INTERNAL, a service token it no longer accepts, a busy or
/// restarting peer), since a saga once accepted must finish and an answer about the
/// request (NOT_FOUND, INVALID_ARGUMENT, ...) is the only thing that fails it.
pub fn transient(code: Code) -> bool {
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

/// How STORE_MESSAGE ends when ChatService refused the message with `status`. Its own words for the request's faults (the sender is the caller, and the
/// same sentence as every other command); any other answer that is not an outage will not
/// change by asking again.
pub fn store_refused(status: &Status) -> Outcome {
    let message = status.message();
    let fail = |code, message: String| Outcome::Failed(code, message);
    match status.code() {
        Code::NotFound => fail(FailCode::NotFound, message.to_owned()),
        Code::InvalidArgument => fail(FailCode::InvalidArgument, message.to_owned()),
        Code::PermissionDenied => fail(FailCode::PermissionDenied, message.to_owned()),
        c if !transient(c) => fail(
            FailCode::InvalidArgument,
            format!("chat service refused the message: {message}"),
        ),
        _ => Outcome::Unavailable(unavailable("chat service", status)),
    }
}

/// The reason a saga pauses with when `what` answered with the transient `status`.
pub fn unavailable(what: &str, status: &Status) -> String {
    format!("{what}: {} ({:?})", status.message(), status.code())
}

/// One NotifyMessage call's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyWait {
    /// How long NotificationService may hold the call for the emails to go out.
    pub wait: Duration,
    /// The deadline has passed: this is the last look, whose answer decides.
    pub last_look: bool,
}

/// The next NotifyMessage call's wait at `now`, for a NOTIFY step first started at
/// `started` with `deadline` to deliver: until the deadline (at most
/// [`MAX_NOTIFY_WAIT`] a call), and once it has passed one [`LAST_LOOK`].
pub fn notify_wait(started: DateTime<Utc>, deadline: Duration, now: DateTime<Utc>) -> NotifyWait {
    let deadline_at = started + chrono::Duration::from_std(deadline).unwrap_or(FALLBACK_DEADLINE);
    let left = (deadline_at - now).to_std().unwrap_or(Duration::ZERO);
    if left.is_zero() {
        NotifyWait {
            wait: LAST_LOOK,
            last_look: true,
        }
    } else {
        NotifyWait {
            wait: left.min(MAX_NOTIFY_WAIT),
            last_look: false,
        }
    }
}

/// What one NotifyMessage call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAnswer {
    /// Every member's email went out.
    Delivered,
    /// Some emails failed for good; why, recipient by recipient.
    Failed(String),
    /// The emails are still being sent.
    Pending,
    /// NotificationService does not know the message: it was deleted meanwhile.
    Gone,
    /// A transient error (see [`transient`]): the outcome is unknown; why.
    Unreachable(String),
    /// Any other error, which asking again would not change; its message.
    Refused(String),
}

/// How NOTIFY ends after `answer`, or None to ask again. Before the deadline a notifier
/// that cannot answer pauses the saga; at the last look (`last_look`) only a delivery
/// completes it, and anything short of one compensates: a notifier that comes back later
/// checks that a message still exists before it emails about it.
pub fn after_notify(answer: NotifyAnswer, last_look: bool) -> Option<Outcome> {
    let too_late = || {
        Outcome::Failed(
            FailCode::Aborted,
            "not delivered before the notification deadline".into(),
        )
    };
    Some(match answer {
        NotifyAnswer::Delivered => Outcome::Succeeded(StepResult::None),
        NotifyAnswer::Failed(reasons) => Outcome::Failed(FailCode::Aborted, reasons),
        NotifyAnswer::Pending if last_look => too_late(),
        NotifyAnswer::Pending => return None,
        NotifyAnswer::Gone => Outcome::Failed(
            FailCode::Aborted,
            "the message is gone before it was notified".into(),
        ),
        NotifyAnswer::Unreachable(_) if last_look => too_late(),
        NotifyAnswer::Unreachable(reason) => Outcome::Unavailable(reason),
        NotifyAnswer::Refused(message) => Outcome::Failed(
            FailCode::Aborted,
            format!("notification service: {message}"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(state: SagaState, sender_id: Option<i64>, message_seq: Option<i64>) -> Progress {
        Progress {
            state,
            sender_id,
            message_seq,
        }
    }

    fn running() -> Progress {
        at(SagaState::Running, None, None)
    }

    fn finish(state: SagaState, error: Option<(&str, FailCode)>) -> Action {
        Action::Finish {
            state,
            error: error.map(|(e, c)| (e.to_owned(), c)),
        }
    }

    fn failed(code: FailCode, reason: &str) -> Outcome {
        Outcome::Failed(code, reason.into())
    }

    #[test]
    fn a_saga_resumes_at_the_first_step_without_a_result() {
        use SagaState::*;
        let cases = [
            (at(Running, None, None), Action::Run(Step::ResolveSender)),
            (
                at(Running, Some(1), None),
                Action::Run(Step::StoreMessage { sender_id: 1 }),
            ),
            (
                at(Running, Some(1), Some(4)),
                Action::Run(Step::Notify { seq: 4 }),
            ),
            (
                at(Compensating, Some(1), Some(4)),
                Action::Run(Step::Compensate { seq: 4 }),
            ),
            (at(Compensating, Some(1), None), finish(Compensated, None)),
            (at(Completed, Some(1), Some(4)), Action::Ended),
            (at(Compensated, Some(1), Some(4)), Action::Ended),
            (at(Failed, None, None), Action::Ended),
        ];
        for (progress, action) in cases {
            assert_eq!(progress.resume(), action, "{progress:?}");
        }
    }

    #[test]
    fn a_new_saga_runs_first_the_step_its_creation_logged() {
        // The orchestrator runs `StepKind::FIRST` before the saga is written and the
        // creation logs it: only right if it is the step a new saga runs first.
        match running().resume() {
            Action::Run(step) => assert_eq!(step.kind(), StepKind::FIRST),
            other => panic!("a new saga does not run a step first: {other:?}"),
        }
    }

    #[test]
    fn a_saga_opens_as_its_first_step_ended() {
        assert_eq!(
            opening(Outcome::Succeeded(StepResult::Sender(7))),
            Opening::Succeeded {
                result: StepResult::Sender(7),
                next: StepKind::StoreMessage,
            }
        );
        assert_eq!(
            opening(Outcome::Failed(FailCode::NotFound, "no user x".into())),
            Opening::Failed {
                error: "no user x".into(),
                code: FailCode::NotFound,
            }
        );
        assert_eq!(
            opening(Outcome::Unavailable("auth service: down".into())),
            Opening::Paused {
                error: "auth service: down".into(),
            }
        );
    }

    #[test]
    fn a_saga_that_goes_well_runs_every_step_and_completes() {
        let mut p = running();
        let mut action = p.resume();
        let mut ran = Vec::new();
        let results = [
            StepResult::Sender(7),
            StepResult::MessageSeq(3),
            StepResult::None,
        ];
        for result in results {
            let Action::Run(step) = action else {
                panic!("expected a step, got {action:?}")
            };
            ran.push(step);
            action = p.next(step.kind(), Outcome::Succeeded(result));
        }
        assert_eq!(
            ran,
            [
                Step::ResolveSender,
                Step::StoreMessage { sender_id: 7 },
                Step::Notify { seq: 3 }
            ]
        );
        assert_eq!(action, finish(SagaState::Completed, None));
        assert_eq!(p, at(SagaState::Completed, Some(7), Some(3)));
        assert_eq!(p.resume(), Action::Ended);
    }

    #[test]
    fn a_success_is_logged_with_what_follows_it() {
        let mut p = running();
        let then = p
            .next(
                StepKind::ResolveSender,
                Outcome::Succeeded(StepResult::Sender(7)),
            )
            .then();
        assert!(matches!(then, Some(Then::Start(StepKind::StoreMessage))));
        let mut p = at(SagaState::Running, Some(7), Some(3));
        let then = p
            .next(StepKind::Notify, Outcome::Succeeded(StepResult::None))
            .then();
        assert!(matches!(then, Some(Then::Finish(SagaState::Completed))));
        assert!(Action::Pause("x".into()).then().is_none());
        assert!(Action::Compensate("x".into()).then().is_none());
        assert!(Action::Ended.then().is_none());
    }

    #[test]
    fn a_bad_sender_or_message_fails_the_saga_with_its_code() {
        for (step, code) in [
            (StepKind::ResolveSender, FailCode::NotFound),
            (StepKind::ResolveSender, FailCode::PermissionDenied),
            (StepKind::StoreMessage, FailCode::PermissionDenied),
            (StepKind::StoreMessage, FailCode::InvalidArgument),
        ] {
            let mut p = at(SagaState::Running, Some(7), None);
            let action = p.next(step, failed(code, "no"));
            assert_eq!(action, finish(SagaState::Failed, Some(("no", code))));
            assert_eq!(p.state, SagaState::Failed);
            assert_eq!(p.message_seq, None, "nothing was stored");
        }
    }

    #[test]
    fn a_failed_notification_compensates_then_ends_compensated() {
        let mut p = at(SagaState::Running, Some(7), Some(3));
        let action = p.next(
            StepKind::Notify,
            failed(FailCode::Aborted, "user 2: refused"),
        );
        assert_eq!(
            action,
            Action::Compensate(
                "notification failed: user 2: refused; the message was removed".into()
            )
        );
        assert_eq!(p.state, SagaState::Compensating);
        assert_eq!(p.resume(), Action::Run(Step::Compensate { seq: 3 }));
        let done = p.next(StepKind::Compensate, Outcome::Succeeded(StepResult::None));
        assert_eq!(done, finish(SagaState::Compensated, None));
        assert!(matches!(
            done.then(),
            Some(Then::Finish(SagaState::Compensated))
        ));
        assert_eq!(p.state, SagaState::Compensated);
    }

    #[test]
    fn a_compensation_that_fails_still_ends_compensated() {
        let mut p = at(SagaState::Compensating, Some(7), Some(3));
        let action = p.next(StepKind::Compensate, failed(FailCode::Aborted, "x"));
        assert_eq!(action, finish(SagaState::Compensated, None));
    }

    #[test]
    fn an_unavailable_service_pauses_any_step_where_it_is() {
        for (progress, step) in [
            (running(), Step::ResolveSender),
            (
                at(SagaState::Running, Some(7), None),
                Step::StoreMessage { sender_id: 7 },
            ),
            (
                at(SagaState::Running, Some(7), Some(3)),
                Step::Notify { seq: 3 },
            ),
            (
                at(SagaState::Compensating, Some(7), Some(3)),
                Step::Compensate { seq: 3 },
            ),
        ] {
            let mut p = progress;
            let action = p.next(step.kind(), Outcome::Unavailable("down".into()));
            assert_eq!(action, Action::Pause("down".into()));
            assert_eq!(p, progress, "a pause changes nothing");
            assert_eq!(
                p.resume(),
                Action::Run(step),
                "and resumes at the same step"
            );
        }
    }

    #[test]
    fn shutdown_pauses_only_between_forward_steps() {
        assert!(!pauses_for_shutdown(Step::ResolveSender));
        assert!(pauses_for_shutdown(Step::StoreMessage { sender_id: 7 }));
        assert!(pauses_for_shutdown(Step::Notify { seq: 3 }));
        assert!(!pauses_for_shutdown(Step::Compensate { seq: 3 }));
    }

    #[test]
    fn transient_codes_pause_and_answers_fail() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::ResourceExhausted,
            Code::Unknown,
            Code::Aborted,
            Code::Internal,
            Code::Unauthenticated,
        ] {
            assert!(transient(code), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::AlreadyExists,
            Code::Unimplemented,
        ] {
            assert!(!transient(code), "{code:?}");
        }
    }

    #[test]
    fn a_refused_message_fails_with_the_chat_service_words() {
        assert_eq!(
            store_refused(&Status::new(Code::NotFound, "chat 3 does not exist")),
            failed(FailCode::NotFound, "chat 3 does not exist")
        );
        assert_eq!(
            store_refused(&Status::new(Code::InvalidArgument, "too long")),
            failed(FailCode::InvalidArgument, "too long")
        );
        assert_eq!(
            store_refused(&Status::new(Code::PermissionDenied, "not a member")),
            failed(FailCode::PermissionDenied, "not a member")
        );
        assert_eq!(
            store_refused(&Status::new(Code::FailedPrecondition, "no")),
            failed(
                FailCode::InvalidArgument,
                "chat service refused the message: no"
            )
        );
        assert_eq!(
            store_refused(&Status::new(Code::Unavailable, "down")),
            Outcome::Unavailable("chat service: down (Unavailable)".into())
        );
    }

    #[test]
    fn notify_waits_until_the_deadline_then_takes_a_last_look() {
        let started = Utc::now();
        let deadline = Duration::from_secs(90);
        let first = notify_wait(started, deadline, started);
        assert_eq!(
            first,
            NotifyWait {
                wait: MAX_NOTIFY_WAIT,
                last_look: false
            },
            "one call waits at most a minute"
        );
        let later = notify_wait(started, deadline, started + chrono::Duration::seconds(80));
        assert_eq!(later.wait, Duration::from_secs(10));
        assert!(!later.last_look);
        for past in [90, 91, 3600] {
            let late = notify_wait(started, deadline, started + chrono::Duration::seconds(past));
            assert_eq!(
                late,
                NotifyWait {
                    wait: LAST_LOOK,
                    last_look: true
                },
                "{past}s after the start"
            );
        }
        let huge = notify_wait(
            started,
            Duration::MAX,
            started + chrono::Duration::seconds(31),
        );
        assert!(huge.last_look, "an unusable deadline falls back to 30 s");
    }

    #[test]
    fn before_the_deadline_notify_asks_again_or_pauses() {
        assert_eq!(after_notify(NotifyAnswer::Pending, false), None);
        assert_eq!(
            after_notify(NotifyAnswer::Unreachable("down".into()), false),
            Some(Outcome::Unavailable("down".into()))
        );
        assert_eq!(
            after_notify(NotifyAnswer::Delivered, false),
            Some(Outcome::Succeeded(StepResult::None))
        );
    }

    #[test]
    fn past_the_deadline_only_a_delivery_completes() {
        let too_late = Some(failed(
            FailCode::Aborted,
            "not delivered before the notification deadline",
        ));
        assert_eq!(after_notify(NotifyAnswer::Pending, true), too_late);
        assert_eq!(
            after_notify(NotifyAnswer::Unreachable("down".into()), true),
            too_late
        );
        assert_eq!(
            after_notify(NotifyAnswer::Delivered, true),
            Some(Outcome::Succeeded(StepResult::None)),
            "emails that went out meanwhile complete a late saga"
        );
    }

    #[test]
    fn a_notifier_answer_about_the_message_fails_notify_at_any_time() {
        for last_look in [false, true] {
            assert_eq!(
                after_notify(NotifyAnswer::Failed("user 2: refused".into()), last_look),
                Some(failed(FailCode::Aborted, "user 2: refused"))
            );
            assert_eq!(
                after_notify(NotifyAnswer::Gone, last_look),
                Some(failed(
                    FailCode::Aborted,
                    "the message is gone before it was notified"
                ))
            );
            assert_eq!(
                after_notify(NotifyAnswer::Refused("bad seq".into()), last_look),
                Some(failed(FailCode::Aborted, "notification service: bad seq"))
            );
        }
    }
}
