//! The saga's vocabulary, and the request parsed once at the gRPC edge: after
//! [`SendRequest::parse`] the orchestrator never checks its input again.

use chat_common::domain::{ChatId, FieldError, IdempotencyKey, MessageText, UserRef};

/// Where a saga stands, as kept in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum SagaState {
    /// Steps are still being run; an orchestrator holds (or held) its lease.
    Running,
    /// The message was stored and its emails went out.
    Completed,
    /// Notification failed; the stored message is being deleted.
    Compensating,
    /// The message was deleted after notification failed.
    Compensated,
    /// Ended before the message was stored (invalid sender, unknown chat, not a member).
    Failed,
}

/// The saga's steps, in the order they run; `Compensate` runs only after `Notify` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum StepKind {
    /// Asks AuthService for the user the request's `from` names.
    ResolveSender,
    /// Stores the message in ChatService, keyed by the saga's id so a rerun stores it once.
    StoreMessage,
    /// Waits for NotificationService to report the message's emails sent.
    Notify,
    /// Deletes the stored message.
    Compensate,
}

impl StepKind {
    /// The step a new saga starts with, logged as started with the saga itself.
    pub const FIRST: StepKind = StepKind::ResolveSender;
}

/// One step's outcome so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum StepState {
    /// Running, or interrupted by a crash (it is then run again).
    Started,
    /// Succeeded; its result is on the saga.
    Succeeded,
    /// Failed for good; the saga failed or compensates.
    Failed,
}

/// The status a failed saga answers with, kept in the log so a replay answers the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum FailCode {
    /// INVALID_ARGUMENT: a step found the request bad (e.g. an unknown sender).
    InvalidArgument,
    /// PERMISSION_DENIED: the sender may not write to the chat.
    PermissionDenied,
    /// NOT_FOUND: the chat does not exist.
    NotFound,
    /// Notification failed; the message was removed.
    Aborted,
}

/// The log's text name of each variant (`snake_case`, as stored) and back. The names
/// are derived (strum); this only gives each enum the two methods the stores call.
macro_rules! log_names {
    ($($t:ident),*) => {$(
        impl $t {
            /// The name stored in the log's text column.
            pub fn as_str(self) -> &'static str {
                self.into()
            }

            /// The value whose [`as_str`](Self::as_str) is `s`; an error for any other
            /// text, which means the log was written by a newer version.
            pub fn parse(s: &str) -> anyhow::Result<Self> {
                s.parse()
                    .map_err(|_| anyhow::anyhow!("unknown {} {s:?}", stringify!($t)))
            }
        }

        /// [`parse`](Self::parse) of an owned text: how the stores' row mapping reads the
        /// column.
        impl TryFrom<String> for $t {
            type Error = anyhow::Error;

            fn try_from(s: String) -> anyhow::Result<Self> {
                Self::parse(&s)
            }
        }
    )*};
}

log_names!(SagaState, StepKind, StepState, FailCode);

impl SagaState {
    /// Whether the saga has ended: no orchestrator will run anything more for it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Failed
        )
    }
}

/// A valid `SendMessage` request, by the rules ChatService and AuthService apply
/// (`chat_common::domain`): checked before the saga is logged, so a request that could
/// never succeed is refused at once and nothing is written for it.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The chat to send to; positive.
    pub chat_id: i64,
    /// Email or username, normalised.
    pub from: String,
    /// The message, valid by [`MessageText`]'s rules.
    pub text: String,
    /// The caller's key for retries; None when the request had none (every call is then a
    /// new saga).
    pub idempotency_key: Option<String>,
}

impl SendRequest {
    /// Checks a raw request field by field, failing on the first bad one (INVALID_ARGUMENT
    /// on the wire). An empty `idempotency_key` means none.
    pub fn parse(
        chat_id: i64,
        from: &str,
        text: String,
        idempotency_key: &str,
    ) -> Result<Self, FieldError> {
        let chat_id = ChatId::parse(chat_id)?;
        if from.trim().is_empty() {
            return Err(FieldError::new(
                "from",
                "name the sender (email or username)",
            ));
        }
        let from = UserRef::parse_as("from", from)?;
        let text = MessageText::parse(text)?;
        let idempotency_key = IdempotencyKey::parse(idempotency_key)?;
        Ok(Self {
            chat_id: chat_id.0,
            from: from.as_str().to_owned(),
            text: text.into_string(),
            idempotency_key: idempotency_key.map(|k| k.as_str().to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert!(SendRequest::parse(1, "alice", "hi".into(), "").is_ok());
        assert!(SendRequest::parse(0, "alice", "hi".into(), "").is_err());
        assert!(SendRequest::parse(1, " ", "hi".into(), "").is_err());
        assert!(SendRequest::parse(1, "alice", " \n".into(), "").is_err());
        assert!(SendRequest::parse(1, "alice", "x".repeat(4097), "").is_err());
        assert!(SendRequest::parse(1, "alice", "hi".into(), &"k".repeat(129)).is_err());
        assert!(SendRequest::parse(1, "al\0ce", "hi".into(), "").is_err());
        assert!(SendRequest::parse(1, "alice", "h\0i".into(), "").is_err());
        assert!(SendRequest::parse(1, "alice", "hi".into(), "\0").is_err());
        assert!(SendRequest::parse(1, &"x".repeat(9000), "hi".into(), "").is_err());
        let r = SendRequest::parse(1, " alice ", "hi".into(), "").unwrap();
        assert_eq!(r.from, "alice");
        assert_eq!(r.idempotency_key, None);
    }

    #[test]
    fn names_round_trip() {
        for s in [StepKind::ResolveSender, StepKind::Compensate] {
            assert_eq!(StepKind::parse(s.as_str()).unwrap(), s);
        }
        assert!(SagaState::parse("nope").is_err());
        assert!(SagaState::parse("Running").is_err(), "names are exact");
    }

    /// The names are data in every saga log already written: derived, but fixed.
    #[test]
    fn names_are_the_stored_ones() {
        let names = [
            SagaState::Running.as_str(),
            SagaState::Completed.as_str(),
            SagaState::Compensating.as_str(),
            SagaState::Compensated.as_str(),
            SagaState::Failed.as_str(),
            StepKind::ResolveSender.as_str(),
            StepKind::StoreMessage.as_str(),
            StepKind::Notify.as_str(),
            StepKind::Compensate.as_str(),
            StepState::Started.as_str(),
            StepState::Succeeded.as_str(),
            StepState::Failed.as_str(),
            FailCode::InvalidArgument.as_str(),
            FailCode::PermissionDenied.as_str(),
            FailCode::NotFound.as_str(),
            FailCode::Aborted.as_str(),
        ];
        assert_eq!(
            names,
            [
                "running",
                "completed",
                "compensating",
                "compensated",
                "failed",
                "resolve_sender",
                "store_message",
                "notify",
                "compensate",
                "started",
                "succeeded",
                "failed",
                "invalid_argument",
                "permission_denied",
                "not_found",
                "aborted",
            ]
        );
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9@. \\x00]{0,12}",
            (0usize..5000).prop_map(|n| "x".repeat(n)),
        ]
    }

    proptest! {
        /// Any request is refused with a field error or parsed into values that parse
        /// again to themselves; nothing in between reaches the saga log.
        #[test]
        fn send_requests(chat_id in any::<i64>(), from in text(), body in text(), key in text()) {
            match SendRequest::parse(chat_id, &from, body.clone(), &key) {
                Ok(r) => {
                    let again = SendRequest::parse(
                        r.chat_id,
                        &r.from,
                        r.text.clone(),
                        r.idempotency_key.as_deref().unwrap_or(""),
                    )
                    .unwrap();
                    prop_assert_eq!((&again.from, &again.text), (&r.from, &r.text));
                    prop_assert!(!r.text.contains('\0') && !r.from.contains('\0'));
                }
                Err(FieldError { field, message }) => {
                    prop_assert!(["chat_id", "from", "text", "idempotency_key"].contains(&field));
                    prop_assert!(message.len() < 300, "{}", message);
                }
            }
        }
    }
}
