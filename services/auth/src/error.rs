//! The auth service's errors, and the one place where they become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use chat_common::guard::truncate;

use crate::{domain::FieldError, store::StoreError};

/// Most field errors one answer lists.
const MAX_VIOLATIONS: usize = 10;
/// Longest message of one field error, in bytes.
const MAX_FIELD_MESSAGE: usize = 200;

/// Everything an auth call can fail with; `From<AuthError> for Status` below is the only place
/// these become status codes.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Fields that failed to parse: INVALID_ARGUMENT with a `BadRequest` violation per field (at
    /// most ten shown).
    #[error("invalid input")]
    InvalidInput(Vec<FieldError>),
    /// Another account has this email: ALREADY_EXISTS.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Another account has this username: ALREADY_EXISTS.
    #[error("this username is already taken")]
    UsernameTaken,
    /// UNAUTHENTICATED, with one message for an unknown email and a wrong password, so the answer
    /// does not reveal which accounts exist.
    #[error("invalid email or password")]
    BadCredentials,
    /// UNAUTHENTICATED, with this message (an unknown refresh token, a deleted account, a wrong
    /// service secret).
    #[error("{0}")]
    Unauthenticated(String),
    /// PERMISSION_DENIED, with this message.
    #[error("{0}")]
    PermissionDenied(String),
    /// FAILED_PRECONDITION, with this message (e.g. service tokens are not configured).
    #[error("{0}")]
    FailedPrecondition(String),
    /// NOT_FOUND, with this message.
    #[error("{0}")]
    NotFound(String),
    /// Over a rate limit (see `limits`): answered with the delay after which a retry can pass.
    #[error("{message}; try again in {} s", whole_secs(*retry_after))]
    RateLimited {
        /// What was done too often (a [`crate::limits::Scope::refusal`]).
        message: &'static str,
        /// How long until the window ends; sent as `RetryInfo`, rounded up to whole seconds.
        retry_after: std::time::Duration,
    },
    /// Anything unexpected (storage, bcrypt, signing): logged with its cause, answered INTERNAL
    /// with a generic message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<FieldError> for AuthError {
    fn from(e: FieldError) -> Self {
        AuthError::InvalidInput(vec![e])
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => AuthError::EmailTaken,
            StoreError::UsernameTaken => AuthError::UsernameTaken,
            StoreError::Other(e) => AuthError::Internal(e),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidInput(fields) => {
                // Bounded whatever the input: at most MAX_VIOLATIONS fields, each message
                // cut, so that an error always fits in the headers of any connection.
                let shown = &fields[..fields.len().min(MAX_VIOLATIONS)];
                let mut message = shown
                    .iter()
                    .map(|f| format!("{}: {}", f.field, truncate(&f.message, MAX_FIELD_MESSAGE)))
                    .collect::<Vec<_>>()
                    .join("; ");
                if fields.len() > shown.len() {
                    message.push_str(&format!("; and {} more", fields.len() - shown.len()));
                }
                let mut details = ErrorDetails::new();
                for f in shown {
                    details.add_bad_request_violation(
                        f.field,
                        truncate(&f.message, MAX_FIELD_MESSAGE),
                    );
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            AuthError::EmailTaken | AuthError::UsernameTaken => {
                Status::already_exists(e.to_string())
            }
            AuthError::BadCredentials | AuthError::Unauthenticated(_) => {
                Status::unauthenticated(e.to_string())
            }
            AuthError::PermissionDenied(m) => Status::permission_denied(m),
            AuthError::FailedPrecondition(m) => Status::failed_precondition(m),
            AuthError::NotFound(m) => Status::not_found(m),
            AuthError::RateLimited { retry_after, .. } => {
                // RetryInfo in whole seconds, as the message says.
                let delay = std::time::Duration::from_secs(whole_secs(retry_after));
                Status::with_error_details(
                    Code::ResourceExhausted,
                    e.to_string(),
                    ErrorDetails::with_retry_info(Some(delay)),
                )
            }
            AuthError::Internal(e) => chat_common::error::internal(&e),
        }
    }
}

/// Rounds a retry delay up to whole seconds, at least one, for people to read (the message
/// and the RetryInfo say the same number).
pub fn whole_secs(d: std::time::Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_round_up() {
        use std::time::Duration;
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::ZERO), 1);
        assert_eq!(whole_secs(Duration::from_millis(59_001)), 60);
        assert_eq!(whole_secs(Duration::from_secs(60)), 60);
    }
}
