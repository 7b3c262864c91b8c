//! The notification service's errors and the one place where they become gRPC statuses.

use tonic::Status;

/// Why a call or an event failed; `From<NotificationError> for Status` picks the code.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// A malformed request or event.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field at fault, as named in the proto.
        field: &'static str,
        /// What is wrong with it, for the caller.
        message: String,
    },
    /// The chat or message is gone; an event about it is dropped.
    #[error("{0}")]
    NotFound(String),
    /// The idempotency key was used for a different email.
    #[error("{0}")]
    AlreadyExists(String),
    /// A service this one needs (chat, auth) did not answer; worth retrying.
    #[error("{0}")]
    Unavailable(String),
    /// Another sender holds the message's emails (the saga's NotifyMessage, another
    /// replica, or a process whose lease has not run out): not a failure, but the event is
    /// not done until that sender is; it comes again later.
    #[error("{0}")]
    Held(String),
    /// Anything else; logged with its chain, answered INTERNAL without it.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl NotificationError {
    /// Whether trying the same event again can never succeed: the chat or message is gone,
    /// or the event itself is malformed. Both event sources drop such an event.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            NotificationError::NotFound(_) | NotificationError::InvalidArgument { .. }
        )
    }

    /// Whether this is a failure worth marking on a span and warning about; an event whose
    /// emails another sender holds only waits for it.
    pub fn is_failure(&self) -> bool {
        !matches!(self, NotificationError::Held(_))
    }

    /// An [`NotificationError::InvalidArgument`] for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        NotificationError::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    /// A failed call to another service: UNAVAILABLE-like codes can be retried, anything
    /// else is this service's problem.
    pub fn from_call(what: &str, status: &Status) -> Self {
        use tonic::Code::*;
        match status.code() {
            Unavailable | DeadlineExceeded | Cancelled | ResourceExhausted | Unknown => {
                NotificationError::Unavailable(format!("{what}: {}", status.message()))
            }
            _ => NotificationError::Internal(anyhow::anyhow!(
                "{what} failed: {:?} {}",
                status.code(),
                status.message()
            )),
        }
    }
}

impl From<NotificationError> for Status {
    fn from(e: NotificationError) -> Self {
        match e {
            NotificationError::InvalidArgument { field, message } => {
                chat_common::error::invalid_field(field, message)
            }
            NotificationError::NotFound(m) => Status::not_found(m),
            NotificationError::AlreadyExists(m) => Status::already_exists(m),
            NotificationError::Unavailable(m) => {
                chat_common::error::unavailable("a dependency", &m)
            }
            NotificationError::Held(m) => Status::unavailable(m),
            NotificationError::Internal(e) => chat_common::error::internal(&e),
        }
    }
}
