//! The last word on every status a server answers with, in one tower layer that every
//! binary puts under its services (see [`crate::server::builder`]).
//!
//! Two things cannot be left to each handler:
//!
//! - A request that does not decode never reaches a handler: tonic answers INTERNAL
//!   ("failed to decode Protobuf message: ...", the decoder's internals). That is the
//!   client's mistake, so it becomes INVALID_ARGUMENT with a plain message here.
//! - A status travels in HTTP/2 headers, and a header block larger than the peer accepts
//!   (16 KiB by default) makes it tear the whole connection down, failing every other call
//!   in flight on it, other users' calls included. Handlers bound what they echo; this layer
//!   makes sure of it: a message longer than [`MAX_MESSAGE_BYTES`] is cut, and details larger
//!   than [`MAX_DETAILS_BYTES`] are dropped. One caller's input never decides the fate of a
//!   shared connection.

use http::HeaderMap;
use tonic::{Code, Status};

use crate::layer::{CallHook, HookLayer};

/// Longest status message sent, in bytes (before percent-encoding).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Largest `grpc-status-details-bin` sent, in bytes (base64).
pub const MAX_DETAILS_BYTES: usize = 4096;

/// See the module documentation.
pub type StatusGuardLayer = HookLayer<StatusGuard>;

/// The hook of [`StatusGuardLayer`]: notes the call's method and rewrites the status it is
/// answered with, as the module documentation says.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatusGuard;

impl CallHook for StatusGuard {
    /// The method's name, for the message that replaces a decoding failure.
    type Note = String;

    fn on_request<B>(&self, req: &http::Request<B>) -> Result<String, Status> {
        Ok(req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    fn on_response<RB, E>(method: String, res: &mut Result<http::Response<RB>, E>) {
        if let Ok(res) = res {
            guard_headers(&method, res.headers_mut());
        }
    }
}

/// What tonic says when the request's bytes are not the method's message, or are cut off.
fn is_decode_failure(message: &str) -> bool {
    message.starts_with("failed to decode Protobuf message")
        || message == "Missing request message."
        || message == "Unexpected EOF decoding stream."
        || message.starts_with("protocol error: received message with invalid compression flag")
}

/// Rewrites the status in `headers` (a trailers-only answer) when it must not go out as is.
pub fn guard_headers(method: &str, headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let replacement = if status.code() == Code::Internal && is_decode_failure(status.message()) {
        let what = if method.is_empty() {
            "this method"
        } else {
            method
        };
        Some(Status::invalid_argument(format!(
            "the request is not a valid {what} request (malformed protobuf)"
        )))
    } else if status.message().len() > MAX_MESSAGE_BYTES
        || status.details().len() > MAX_DETAILS_BYTES
    {
        let message = truncate(status.message(), MAX_MESSAGE_BYTES);
        if status.details().len() > MAX_DETAILS_BYTES {
            Some(Status::new(status.code(), message))
        } else {
            Some(Status::with_details(
                status.code(),
                message,
                status.details().to_vec().into(),
            ))
        }
    } else {
        None
    };
    if let Some(new) = replacement {
        headers.remove("grpc-status");
        headers.remove("grpc-message");
        headers.remove("grpc-status-details-bin");
        if new.add_header(headers).is_err() {
            headers.insert("grpc-status", http::HeaderValue::from(new.code() as i32));
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, marked as cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: Status) -> HeaderMap {
        let mut h = HeaderMap::new();
        status.add_header(&mut h).expect("status headers");
        h
    }

    #[test]
    fn decode_failures_become_invalid_argument() {
        let mut h = headers_of(Status::internal(
            "failed to decode Protobuf message: CreateChatRequest.members: invalid string value",
        ));
        guard_headers("CreateChat", &mut h);
        let s = Status::from_header_map(&h).expect("status");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(!s.message().contains("Protobuf message:"), "{s:?}");
        assert!(s.message().contains("CreateChat"), "{s:?}");
    }

    #[test]
    fn other_internal_errors_are_left_alone() {
        let mut h = headers_of(Status::internal("internal error; it has been logged"));
        guard_headers("CreateChat", &mut h);
        let s = Status::from_header_map(&h).expect("status");
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "internal error; it has been logged");
    }

    #[test]
    fn long_messages_and_details_are_bounded() {
        let long = "é".repeat(20_000);
        let mut h = headers_of(Status::with_details(
            Code::InvalidArgument,
            long,
            vec![7u8; 20_000].into(),
        ));
        guard_headers("CreateChat", &mut h);
        let s = Status::from_header_map(&h).expect("status");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().len() <= MAX_MESSAGE_BYTES);
        assert!(s.details().is_empty());
        let size: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        assert!(size < 8 * 1024, "headers are {size} bytes");
    }
}
