//! The auth service's errors, and the one place where they become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{domain::FieldError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid input")]
    InvalidInput(Vec<FieldError>),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("this username is already taken")]
    UsernameTaken,
    #[error("invalid email or password")]
    BadCredentials,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
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
                let message = fields
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut details = ErrorDetails::new();
                for f in &fields {
                    details.add_bad_request_violation(f.field, f.message.clone());
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
            AuthError::Internal(e) => chat_common::error::internal(&e),
        }
    }
}
