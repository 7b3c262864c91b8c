//! The generated gRPC code for every grpc-chat contract. Services, the CLI and the tests
//! import message types from here and never redeclare them.

pub mod auth {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("grpcchat.auth.v1");
    }
}
pub mod chat {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("grpcchat.chat.v1");
    }
}
pub mod notification {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("grpcchat.notification.v1");
    }
}
pub mod saga {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("grpcchat.saga.v1");
    }
}

/// Why a call failed, for programs: the `google.rpc.ErrorInfo` reasons the services attach
/// to the statuses a client acts on (domain [`reasons::DOMAIN`]). The message beside them
/// is for people and may be reworded; these words are part of the API like the RPC names.
pub mod reasons {
    use tonic_types::StatusExt;

    /// The `domain` of every reason here.
    pub const DOMAIN: &str = "grpcchat.dev";

    /// NOT_FOUND: no such chat, or the caller is not a member.
    pub const CHAT_NOT_FOUND: &str = "CHAT_NOT_FOUND";
    /// NOT_FOUND ending a stream: the chat was deleted while it was open.
    pub const CHAT_DELETED: &str = "CHAT_DELETED";
    /// NOT_FOUND ending a stream: its user left the chat or was removed from it.
    pub const MEMBERSHIP_ENDED: &str = "MEMBERSHIP_ENDED";
    /// UNAUTHENTICATED: the token's account has been deleted.
    pub const ACCOUNT_DELETED: &str = "ACCOUNT_DELETED";
    /// RESOURCE_EXHAUSTED: the chat would have more members than allowed.
    pub const CHAT_FULL: &str = "CHAT_FULL";
    /// RESOURCE_EXHAUSTED ending a stream: the client fell behind; resume with `after_seq`.
    pub const STREAM_BEHIND: &str = "STREAM_BEHIND";

    /// The reason `status` carries, when it has one of this system's.
    pub fn reason(status: &tonic::Status) -> Option<String> {
        let info = status.get_details_error_info()?;
        (info.domain == DOMAIN).then_some(info.reason)
    }

    /// Whether a call that failed with `code` may succeed when made again unchanged, after
    /// a pause: the server or a dependency was away, or the call ran out of time. A write
    /// retried after such a failure must carry its idempotency key, since it may have been
    /// carried out. RESOURCE_EXHAUSTED is not one: in this API it says a limit was reached
    /// (a full chat, a login limit, a client too far behind its stream), which the same
    /// call does not cure; nor is ABORTED, a saga's final outcome. The one definition the
    /// clients here share; a caller with a wider policy (the saga's steps, which wait out
    /// any trouble of the services they call) adds to it in its own code.
    pub fn retryable(code: tonic::Code) -> bool {
        matches!(
            code,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        )
    }
}

/// The encoded `FileDescriptorSet` of every contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("grpcchat_descriptor");
