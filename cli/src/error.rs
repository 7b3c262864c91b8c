//! Every failure the user sees, as one readable line.
//!
//! gRPC statuses are written for programs: a code, a terse message, sometimes a transport
//! error chain. A person needs to know what went wrong in their terms ("chat 3 does not
//! exist or you are not a member of it", "cannot reach the server at ..."). So a status is
//! never shown as it is: it is turned into a [`CliError`] here, with the context only the
//! caller knows (which chat, which server, whether this was a login), and the CLI prints it
//! as `error: <text>`.

use std::fmt;

use grpc_chat_proto::reasons;
use tonic::{Code, Status};

/// What kind of failure an error is, for the code that decides what to do next (try
/// again, ask for a new login, give up); the text is for the user. Built from the status's
/// code and its `google.rpc.ErrorInfo` reason, never from the wording of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server could not be reached at all (refused, DNS, TLS, a broken connection).
    Unreachable,
    /// The server answered that it, or a service behind it, is away or slow: the same
    /// call may work later ([`reasons::retryable`]).
    Unavailable,
    /// No session, or the server no longer accepts it: only a new login helps.
    Session,
    /// A login with a wrong email or password.
    Credentials,
    /// The chat does not exist or the caller is not a member of it (`CHAT_NOT_FOUND`).
    HiddenChat,
    /// The chat was deleted while a stream was open on it (`CHAT_DELETED`).
    ChatDeleted,
    /// The caller left the chat or was removed from it (`MEMBERSHIP_ENDED`).
    MembershipEnded,
    /// The server answered and refused: bad input, no permission, a limit, a failure.
    Refused,
    /// Found on this side before or without a call: a file, a flag, a reply that makes
    /// no sense.
    Local,
}

impl ErrorKind {
    /// Whether trying the same thing again later may succeed.
    pub fn retryable(self) -> bool {
        matches!(self, Self::Unreachable | Self::Unavailable)
    }
}

/// A failure, already worded for the user (one line, no debug output), and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    kind: ErrorKind,
    text: String,
}

impl CliError {
    /// A failure found on this side, with this text, squeezed onto one line.
    pub fn new(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::Local, message)
    }

    /// A failure of `kind` with this text, squeezed onto one line.
    pub fn of(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            text: one_line(&message.into()),
        }
    }

    /// Said when a command needs a session and there is none.
    pub fn not_logged_in() -> Self {
        Self::of(
            ErrorKind::Session,
            "not logged in: run `login <email>` first",
        )
    }

    /// Said when the server no longer accepts the session (its tokens expired or were revoked):
    /// only a new login helps.
    pub fn session_expired() -> Self {
        Self::of(
            ErrorKind::Session,
            "your session has expired: run `login <email>` again",
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The text without the `error: ` prefix.
    pub fn message(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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
    let (kind, text) = kind_and_text(status, op, server);
    CliError::of(kind, text)
}

fn kind_and_text(status: &Status, op: Op, server: &str) -> (ErrorKind, String) {
    use ErrorKind::*;
    let msg = status.message().trim();
    if is_transport_failure(status) {
        let text = match untrusted_certificate(status) {
            Some(why) => format!(
                "cannot reach the server at {server}: its TLS certificate is not trusted \
                 ({why}); if a private CA signed it, pass that CA with --ca-cert FILE"
            ),
            None => format!("cannot reach the server at {server}"),
        };
        return (Unreachable, text);
    }
    let chat = match op {
        Op::Chat(id) => Some(id),
        _ => None,
    };
    match (reasons::reason(status).as_deref(), chat) {
        (Some(reasons::CHAT_NOT_FOUND), Some(id)) => return (HiddenChat, hidden_chat(id)),
        (Some(reasons::CHAT_NOT_FOUND), None) => {
            return (HiddenChat, or_default(msg, "no such chat"))
        }
        (Some(reasons::CHAT_DELETED), Some(id)) => {
            return (ChatDeleted, format!("chat {id} was deleted"))
        }
        (Some(reasons::MEMBERSHIP_ENDED), Some(id)) => {
            return (
                MembershipEnded,
                format!("you are no longer a member of chat {id}"),
            )
        }
        _ => {}
    }
    match status.code() {
        Code::Unauthenticated if op == Op::Login => (Credentials, "wrong email or password".into()),
        Code::Unauthenticated => (Session, CliError::session_expired().text),
        // Without a reason (the saga passes the chat service's words on): shown as it is.
        Code::NotFound => (Refused, or_default(msg, "not found")),
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange => (Refused, or_default(msg, "the server refused the request")),
        Code::PermissionDenied => (Refused, or_default(msg, "you are not allowed to do that")),
        Code::Aborted => (
            Refused,
            format!("message not delivered: {}", or_default(msg, "aborted")),
        ),
        Code::Unavailable => (
            Unavailable,
            format!(
                "the server at {server} is unavailable: {}",
                or_default(msg, "try again later")
            ),
        ),
        Code::DeadlineExceeded => (
            Unavailable,
            format!("the server at {server} did not answer in time"),
        ),
        Code::ResourceExhausted => (
            Refused,
            format!("the server is busy: {}", or_default(msg, "try again")),
        ),
        Code::Unimplemented => (
            Refused,
            format!(
                "the server at {server} does not offer this service (check the server address)"
            ),
        ),
        Code::Cancelled => (Refused, "cancelled".to_owned()),
        _ => (
            Refused,
            format!("the server failed: {}", or_default(msg, "internal error")),
        ),
    }
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

    use chat_common::error::with_reason;

    #[test]
    fn hidden_chat_is_known_by_its_reason() {
        let wording = "chat 3 does not exist or you are not a member of it";
        // The chat service's answer, and the saga's, which passes the words on.
        for status in [
            with_reason(Code::NotFound, "some other words", reasons::CHAT_NOT_FOUND),
            Status::not_found(wording),
        ] {
            let e = from_status(&status, Op::Chat(3), SERVER);
            assert_eq!(e.message(), wording);
        }
        let e = from_status(
            &with_reason(Code::NotFound, "x", reasons::CHAT_NOT_FOUND),
            Op::Chat(3),
            SERVER,
        );
        assert_eq!(e.kind(), ErrorKind::HiddenChat);
        assert!(!e.kind().retryable());
    }

    #[test]
    fn kinds_follow_codes_and_reasons_not_words() {
        let kind = |s: Status| from_status(&s, Op::Chat(3), SERVER).kind();
        assert_eq!(kind(Status::unavailable("x")), ErrorKind::Unavailable);
        assert_eq!(kind(Status::deadline_exceeded("x")), ErrorKind::Unavailable);
        assert_eq!(kind(Status::unauthenticated("x")), ErrorKind::Session);
        assert_eq!(
            kind(with_reason(Code::NotFound, "x", reasons::CHAT_DELETED)),
            ErrorKind::ChatDeleted
        );
        assert_eq!(
            kind(with_reason(Code::NotFound, "x", reasons::MEMBERSHIP_ENDED)),
            ErrorKind::MembershipEnded
        );
        // A message that merely mentions being unavailable is not a retryable failure.
        assert_eq!(
            kind(Status::invalid_argument("the name is unavailable")),
            ErrorKind::Refused
        );
        for k in [ErrorKind::Unreachable, ErrorKind::Unavailable] {
            assert!(k.retryable());
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
