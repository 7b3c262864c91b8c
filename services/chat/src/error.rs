//! The chat service's errors and the one place where they become gRPC statuses.

use chat_common::error::{reasons, with_reason};
use tonic::{Code, Status};

/// Why a call failed; `From<ChatError> for Status` picks the code and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// No such chat, or the caller is not a member: the same answer, so ids cannot be probed.
    /// Every RPC words it the same (and the saga and the CLI pass it on as it is), so a
    /// person meets one sentence whichever command they ran.
    #[error("chat {0} does not exist or you are not a member of it")]
    ChatNotFound(i64),
    /// No such message in a chat the caller is a member of.
    #[error("message {seq} not found in chat {chat_id}")]
    MessageNotFound {
        /// The chat asked about.
        chat_id: i64,
        /// The sequence number that names no message in it.
        seq: i64,
    },
    /// Users that match no account (at most [`SHOWN_USERS`] are named).
    #[error("{}", users_not_found(.0))]
    UsersNotFound(Vec<String>),
    /// A member asked for what only someone else may do (the chat's creator, the message's
    /// sender, an administrator); the message says who.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller's account was deleted; its access token has not expired yet.
    #[error("this account has been deleted")]
    AccountDeleted,
    /// The call is well formed but the state forbids it now (an edit window that passed).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit the call would pass (a chat's most members).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A value beyond what exists yet (a read marker past the chat's newest message).
    #[error("{0}")]
    OutOfRange(String),
    /// A service or the bus this one needs did not answer; worth retrying.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else; logged with its chain, answered INTERNAL without it.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Most unknown users one answer names: a list of a thousand would be larger than a
/// client's default limits.
pub const SHOWN_USERS: usize = 10;

fn users_not_found(users: &[String]) -> String {
    // Names chat parsed first (at most 254 characters each), or auth's bounded message.
    let shown: Vec<String> = users
        .iter()
        .take(SHOWN_USERS)
        .map(|u| chat_common::guard::truncate(u, 256))
        .collect();
    let mut message = format!("no such user: {}", shown.join(", "));
    if users.len() > shown.len() {
        message.push_str(&format!(" and {} more", users.len() - shown.len()));
    }
    message
}

impl From<ChatError> for Status {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::ChatNotFound(_) => {
                with_reason(Code::NotFound, e.to_string(), reasons::CHAT_NOT_FOUND)
            }
            ChatError::MessageNotFound { .. } | ChatError::UsersNotFound(_) => {
                Status::not_found(e.to_string())
            }
            ChatError::PermissionDenied(m) => Status::permission_denied(m),
            ChatError::AccountDeleted => with_reason(
                Code::Unauthenticated,
                e.to_string(),
                reasons::ACCOUNT_DELETED,
            ),
            ChatError::FailedPrecondition(m) => Status::failed_precondition(m),
            ChatError::OutOfRange(m) => Status::out_of_range(m),
            ChatError::ResourceExhausted(m) => {
                with_reason(Code::ResourceExhausted, m, reasons::CHAT_FULL)
            }
            ChatError::Unavailable(m) => Status::unavailable(m),
            ChatError::Internal(e) => chat_common::error::internal(&e),
        }
    }
}
