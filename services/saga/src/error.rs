//! The orchestrator's errors and the one place where they become gRPC statuses. A saga
//! that ended badly answers with the code kept in its log, and every answer about a saga
//! carries its id in the `saga-id` metadata, so a client can look it up with `GetSaga`.

use tonic::{metadata::MetadataValue, Code, Status};

use crate::domain::FailCode;

/// Why a call on the orchestrator failed; `From<SagaError> for Status` picks the code.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The request is malformed; nothing was logged.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field at fault, as named in the proto.
        field: &'static str,
        /// What is wrong with it, for the caller.
        message: String,
    },
    /// No saga with the id asked for.
    #[error("{0}")]
    NotFound(String),
    /// The saga ended without its message: bad input found by a step, or compensated.
    #[error("{message}")]
    Failed {
        /// The saga's id, returned in the `saga-id` metadata.
        saga_id: uuid::Uuid,
        /// The status code the saga ended with, kept in its log.
        code: FailCode,
        /// Why, in the caller's terms.
        message: String,
    },
    /// A service the saga needs did not answer; the saga is kept and resumed.
    #[error("{message}")]
    Unavailable {
        /// The saga left running, when one was created before the failure.
        saga_id: Option<uuid::Uuid>,
        /// Which service did not answer.
        message: String,
    },
    /// Anything else; logged with its chain, answered INTERNAL without it.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<chat_common::domain::FieldError> for SagaError {
    fn from(e: chat_common::domain::FieldError) -> Self {
        SagaError::InvalidArgument {
            field: e.field,
            message: e.message,
        }
    }
}

fn with_saga_id(mut status: Status, id: uuid::Uuid) -> Status {
    if let Ok(v) = MetadataValue::try_from(id.to_string()) {
        status.metadata_mut().insert("saga-id", v);
    }
    status
}

impl From<SagaError> for Status {
    fn from(e: SagaError) -> Self {
        match e {
            SagaError::InvalidArgument { field, message } => {
                chat_common::error::invalid_field(field, message)
            }
            SagaError::NotFound(m) => Status::not_found(m),
            SagaError::Failed {
                saga_id,
                code,
                message,
            } => {
                let code = match code {
                    FailCode::InvalidArgument => Code::InvalidArgument,
                    FailCode::PermissionDenied => Code::PermissionDenied,
                    FailCode::NotFound => Code::NotFound,
                    FailCode::Aborted => Code::Aborted,
                };
                with_saga_id(Status::new(code, message), saga_id)
            }
            SagaError::Unavailable { saga_id, message } => {
                tracing::warn!(error = %message, "saga paused, it will be resumed");
                let status = Status::unavailable(format!(
                    "{message}; the saga is kept and will be finished"
                ));
                match saga_id {
                    Some(id) => with_saga_id(status, id),
                    None => status,
                }
            }
            SagaError::Internal(e) => chat_common::error::internal(&e),
        }
    }
}
