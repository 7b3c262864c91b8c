//! The chat service's errors and the one place where they become gRPC statuses.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// No such chat, or the caller is not a member: the same answer, so ids cannot be probed.
    #[error("chat {0} not found")]
    ChatNotFound(i64),
    #[error("message {seq} not found in chat {chat_id}")]
    MessageNotFound { chat_id: i64, seq: i64 },
    #[error("no such user: {0}")]
    UsersNotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<ChatError> for Status {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::ChatNotFound(_)
            | ChatError::MessageNotFound { .. }
            | ChatError::UsersNotFound(_) => Status::not_found(e.to_string()),
            ChatError::PermissionDenied(m) => Status::permission_denied(m),
            ChatError::Unavailable(m) => Status::unavailable(m),
            ChatError::Internal(e) => chat_common::error::internal(&e),
        }
    }
}
