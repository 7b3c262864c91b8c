//! The saga's vocabulary, and the request parsed once at the gRPC edge: after
//! [`SendRequest::parse`] the orchestrator never checks its input again.

use crate::error::SagaError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    Running,
    Completed,
    Compensating,
    Compensated,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    ResolveSender,
    StoreMessage,
    Notify,
    Compensate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Started,
    Succeeded,
    Failed,
}

/// The status a failed saga answers with, kept in the log so a replay answers the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailCode {
    InvalidArgument,
    PermissionDenied,
    NotFound,
    /// Notification failed; the message was removed.
    Aborted,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub fn parse(s: &str) -> anyhow::Result<Self> {
                match s {
                    $($s => Ok(Self::$v),)*
                    other => anyhow::bail!("unknown {} {other:?}", stringify!($t)),
                }
            }
        }
    };
}

text_enum!(SagaState {
    Running = "running",
    Completed = "completed",
    Compensating = "compensating",
    Compensated = "compensated",
    Failed = "failed",
});
text_enum!(StepKind {
    ResolveSender = "resolve_sender",
    StoreMessage = "store_message",
    Notify = "notify",
    Compensate = "compensate",
});
text_enum!(StepState {
    Started = "started",
    Succeeded = "succeeded",
    Failed = "failed",
});
text_enum!(FailCode {
    InvalidArgument = "invalid_argument",
    PermissionDenied = "permission_denied",
    NotFound = "not_found",
    Aborted = "aborted",
});

impl SagaState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Failed
        )
    }
}

pub const MAX_TEXT_CHARS: usize = 4096;
pub const MAX_KEY_CHARS: usize = 128;

/// A valid `SendMessage` request.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub chat_id: i64,
    /// Email or username, trimmed.
    pub from: String,
    pub text: String,
    pub idempotency_key: Option<String>,
}

impl SendRequest {
    pub fn parse(
        chat_id: i64,
        from: &str,
        text: String,
        idempotency_key: &str,
    ) -> Result<Self, SagaError> {
        if chat_id <= 0 {
            return Err(SagaError::invalid("chat_id", "must be a positive chat id"));
        }
        let from = from.trim();
        if from.is_empty() {
            return Err(SagaError::invalid(
                "from",
                "name the sender (email or username)",
            ));
        }
        if text.trim().is_empty() {
            return Err(SagaError::invalid("text", "must not be empty"));
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(SagaError::invalid(
                "text",
                format!("at most {MAX_TEXT_CHARS} characters"),
            ));
        }
        if idempotency_key.chars().count() > MAX_KEY_CHARS {
            return Err(SagaError::invalid(
                "idempotency_key",
                format!("at most {MAX_KEY_CHARS} characters"),
            ));
        }
        Ok(Self {
            chat_id,
            from: from.to_owned(),
            text,
            idempotency_key: (!idempotency_key.is_empty()).then(|| idempotency_key.to_owned()),
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
    }
}
