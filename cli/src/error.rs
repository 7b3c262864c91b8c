//! Every failure the user sees, as one readable line.
//!
//! gRPC statuses are written for programs: a code, a terse message, sometimes a transport
//! error chain. A person needs to know what went wrong in their terms ("chat 3 does not
//! exist or you are not a member of it", "cannot reach the server at ..."). So a status is
//! never shown as it is: it is turned into a [`CliError`] here, with the context only the
//! caller knows (which chat, which server, whether this was a login), and the CLI prints it
//! as `error: <text>`.

use std::fmt;

use tonic::{Code, Status};

/// A failure, already worded for the user: one line, no debug output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(String);

impl CliError {
    /// An error with this text, squeezed onto one line.
    pub fn new(message: impl Into<String>) -> Self {
        Self(one_line(&message.into()))
    }

    /// Said when a command needs a session and there is none.
    pub fn not_logged_in() -> Self {
        Self::new("not logged in: run `login <email>` first")
    }

    /// Said when the server no longer accepts the session (its tokens expired or were revoked):
    /// only a new login helps.
    pub fn session_expired() -> Self {
        Self::new("your session has expired: run `login <email>` again")
    }

    /// The text without the `error: ` prefix.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// What the failed call was about, for wording its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Login: UNAUTHENTICATED means bad credentials.
    Login,
    /// A call about one chat: NOT_FOUND means the caller cannot see it.
    Chat(i64),
    /// Anything else.
    Other,
}

/// Words `status`, returned by the service at `server` while doing `op`.
pub fn from_status(status: &Status, op: Op, server: &str) -> CliError {
    let msg = status.message().trim();
    let text = match status.code() {
        _ if is_transport_failure(status) => match untrusted_certificate(status) {
            Some(why) => format!(
                "cannot reach the server at {server}: its TLS certificate is not trusted \
                 ({why}); if a private CA signed it, pass that CA with --ca-cert FILE"
            ),
            None => format!("cannot reach the server at {server}"),
        },
        Code::Unauthenticated if op == Op::Login => "wrong email or password".to_owned(),
        Code::Unauthenticated => return CliError::session_expired(),
        // The chat service words an unknown chat and a non-member the same in every RPC
        // (and the saga passes it on): shown as it is. An older server's terse
        // "chat 3 not found" gets the same sentence.
        Code::NotFound => match op {
            Op::Chat(id) if msg == format!("chat {id} not found") => hidden_chat(id),
            _ => or_default(msg, "not found"),
        },
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange => or_default(msg, "the server refused the request"),
        Code::PermissionDenied => or_default(msg, "you are not allowed to do that"),
        Code::Aborted => format!("message not delivered: {}", or_default(msg, "aborted")),
        Code::Unavailable => format!(
            "the server at {server} is unavailable: {}",
            or_default(msg, "try again later")
        ),
        Code::DeadlineExceeded => format!("the server at {server} did not answer in time"),
        Code::ResourceExhausted => format!("the server is busy: {}", or_default(msg, "try again")),
        Code::Unimplemented => {
            format!("the server at {server} does not offer this service (check the server address)")
        }
        Code::Cancelled => "cancelled".to_owned(),
        _ => format!("the server failed: {}", or_default(msg, "internal error")),
    };
    CliError::new(text)
}

/// The one sentence for a chat the caller cannot see: it does not exist, or they are not
/// a member (which of the two is not revealed). The chat service's own wording.
pub fn hidden_chat(id: i64) -> String {
    format!("chat {id} does not exist or you are not a member of it")
}

/// Whether the call failed in this process's channel rather than being answered by a
/// server: connection refused, DNS or TLS failure, a peer that does not speak HTTP/2, a
/// connection lost mid-call. Tonic builds such a status itself, from the channel's
/// transport error, which it keeps as the status's source; a status a server sent (its
/// `grpc-status`) has no source. The message is never looked at: a server's own
/// UNAVAILABLE may well quote a transport error of a call *it* made (the saga's "cannot
/// reach the notifier"), and that server was reached.
///
/// A call that failed this way may still have been carried out (the connection broke after
/// the request went out): a send is retried only with its idempotency key.
pub fn is_transport_failure(status: &Status) -> bool {
    use std::error::Error as _;
    let mut source = status.source();
    while let Some(e) = source {
        if e.downcast_ref::<tonic::transport::Error>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The certificate error in a transport failure's causes (rustls words it "invalid peer
/// certificate: UnknownIssuer"), when the TLS handshake failed on the server's
/// certificate: the one transport failure a flag (`--ca-cert`) cures, so it is named.
pub fn untrusted_certificate(status: &Status) -> Option<String> {
    use std::error::Error as _;
    let mut source = status.source();
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("certificate") {
            return Some(text);
        }
        source = e.source();
    }
    None
}

/// The id of the saga an orchestrator's answer is about (its `saga-id` metadata).
pub fn saga_id(status: &Status) -> Option<String> {
    status
        .metadata()
        .get("saga-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn or_default(msg: &str, default: &str) -> String {
    if msg.is_empty() {
        default.to_owned()
    } else {
        msg.to_owned()
    }
}

/// Folds a multi-line text into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "http://127.0.0.1:50051";

    #[test]
    fn hidden_chat_reads_the_same_from_every_server() {
        let wording = "chat 3 does not exist or you are not a member of it";
        for status in [
            Status::not_found(wording),
            // An older chat service.
            Status::not_found("chat 3 not found"),
        ] {
            let e = from_status(&status, Op::Chat(3), SERVER);
            assert_eq!(e.message(), wording);
        }
    }

    #[test]
    fn bad_login_is_plain() {
        let e = from_status(
            &Status::unauthenticated("invalid email or password"),
            Op::Login,
            SERVER,
        );
        assert_eq!(e.message(), "wrong email or password");
    }

    #[test]
    fn a_server_quoting_a_transport_error_was_reached() {
        // The saga orchestrator's answer when *it* cannot reach the notifier.
        let status = Status::unavailable(
            "notification service: tcp connect error: Connection refused; the saga is kept",
        );
        assert!(!is_transport_failure(&status));
        let e = from_status(&status, Op::Other, SERVER);
        assert!(
            e.message()
                .starts_with("the server at http://127.0.0.1:50051 is unavailable: "),
            "{e}"
        );
    }

    #[test]
    fn server_messages_pass_through_on_one_line() {
        let e = from_status(
            &Status::invalid_argument("password: too short\nemail: bad"),
            Op::Other,
            SERVER,
        );
        assert_eq!(e.message(), "password: too short email: bad");
    }
}
