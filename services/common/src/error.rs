//! Helpers for the one place in each crate where errors become statuses. Internal errors are
//! logged with their whole chain and answered with a generic message; field errors carry a
//! `google.rpc.BadRequest` detail naming the field, so clients can point at it; errors a
//! client acts on carry a `google.rpc.ErrorInfo` reason ([`reasons`]), so that clients tell
//! them apart by a fixed word rather than by the message, which is for people and may be
//! reworded.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Longest field description an INVALID_ARGUMENT carries, in bytes.
pub const MAX_DESCRIPTION: usize = 256;

/// The status of an unexpected error, saying nothing of the cause (which goes to the log):
/// UNAVAILABLE when the database could not be reached (a retry may succeed, and a write
/// in flight may have committed, so the client retries with the same idempotency key),
/// INTERNAL otherwise. Every crate's error mapping ends here, so this is the one place
/// where a storage outage becomes a retryable status.
pub fn internal(err: &anyhow::Error) -> Status {
    if crate::db::is_unavailable(err) {
        tracing::warn!(error = ?err, "storage unavailable");
        metrics::counter!("storage_unavailable_errors_total").increment(1);
        return Status::unavailable(crate::db::STORAGE_UNAVAILABLE);
    }
    tracing::error!(error = ?err, "internal error");
    Status::internal("internal error; it has been logged")
}

/// INVALID_ARGUMENT naming the field at fault, with a BadRequest detail.
/// The description is cut to [`MAX_DESCRIPTION`] bytes: callers quote client input in it.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let description = crate::guard::truncate(&description.into(), MAX_DESCRIPTION);
    let field = crate::guard::truncate(field, 64);
    let field = field.as_str();
    let details = ErrorDetails::with_bad_request_violation(field, description.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
}

/// UNAVAILABLE for a dependency that cannot be reached; the cause goes to the log.
pub fn unavailable(what: &str, err: &dyn std::fmt::Display) -> Status {
    tracing::warn!(error = %err, "{what} unavailable");
    Status::unavailable(format!("{what} is unavailable, try again"))
}

pub use grpc_chat_proto::reasons::{self, reason, DOMAIN as REASON_DOMAIN};

/// A status of `code` with `message` for people and `reason` for programs.
pub fn with_reason(code: Code, message: impl Into<String>, reason: &str) -> Status {
    let details = ErrorDetails::with_error_info(
        reason,
        REASON_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    Status::with_error_details(code, message, details)
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn reasons_survive_the_wire_form() {
        let status = with_reason(Code::NotFound, "chat 3 was deleted", reasons::CHAT_DELETED);
        // What a client decodes: the status rebuilt from its header form.
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).expect("headers");
        let received = Status::from_header_map(&headers).expect("a status");
        assert_eq!(received.code(), Code::NotFound);
        assert_eq!(received.message(), "chat 3 was deleted");
        assert_eq!(reason(&received).as_deref(), Some(reasons::CHAT_DELETED));
        assert_eq!(reason(&Status::not_found("plain")), None);
    }
}
