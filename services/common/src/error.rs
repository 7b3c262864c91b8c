//! Helpers for the one place in each crate where errors become statuses. Internal errors are
//! logged with their whole chain and answered with a generic message; field errors carry a
//! `google.rpc.BadRequest` detail naming the field, so clients can point at it.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// An INTERNAL status that says nothing of the cause; the cause goes to the log.
pub fn internal(err: &anyhow::Error) -> Status {
    tracing::error!(error = ?err, "internal error");
    Status::internal("internal error; it has been logged")
}

/// INVALID_ARGUMENT naming the field at fault, with a BadRequest detail.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
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
