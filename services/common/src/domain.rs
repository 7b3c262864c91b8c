//! The input rules more than one service applies, written once: what an email, a username,
//! a message's text, an idempotency key, a chat id and a page size may be. Each type is
//! parsed once at a service's gRPC edge (zero2prod's "parse, don't validate"); after that
//! the value is proof and storage never re-checks it.
//!
//! The same rules hold on every storage engine: PostgreSQL refuses a NUL in text that SQLite
//! would store, so NUL is refused here, before anything is written, for both. And a value
//! that is refused is echoed back only in part ([`echo`]): a client's input never decides
//! how large an error is.

use std::fmt;

use tonic::Status;

use crate::error::invalid_field;

/// Most characters of a client's value that an error message repeats.
pub const ECHO_CHARS: usize = 64;

/// `raw` as an error message may quote it: escaped (so control characters show) and cut
/// to [`ECHO_CHARS`] characters, saying how long it was when it was cut.
pub fn echo(raw: &str) -> String {
    let head: String = raw.chars().take(ECHO_CHARS).collect();
    let quoted = format!("{head:?}");
    // Escapes may make a character ten bytes long: bound the bytes too.
    if quoted.len() <= 2 * ECHO_CHARS && head.len() == raw.len() {
        return quoted;
    }
    let quoted = crate::guard::truncate(&quoted, 2 * ECHO_CHARS);
    format!("{quoted} ({} characters)", raw.chars().count())
}

/// Why a field was rejected, worded for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The request field the error is about, as the client names it (`email`, `chat_id`, ...): it
    /// becomes the field of the `BadRequest` violation.
    pub field: &'static str,
    /// What is wrong with the value, for a person; it quotes the value only through [`echo`].
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        invalid_field(e.field, e.message)
    }
}

/// A lower-cased email address of a plausible shape (RFC 5321 lengths, one `@`, a dotted
/// domain of letters, digits and hyphens).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Longest address accepted, in bytes (RFC 5321).
    pub const MAX_LEN: usize = 254;

    /// Parses with errors naming the `email` field. Surrounding whitespace is dropped and the
    /// address lower-cased, so two spellings of one address compare equal.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::parse_as("email", raw)
    }

    /// Parses with errors naming `field`.
    pub fn parse_as(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let s = raw.trim();
        let err = |m: &str| FieldError::new(field, m);
        if s.is_empty() {
            return Err(err("is required"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(err("is longer than 254 characters"));
        }
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| err("must look like name@example.com"))?;
        if local.is_empty() || local.len() > 64 {
            return Err(err("must have 1 to 64 characters before the @"));
        }
        if local.contains('@')
            || local.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"')
            })
        {
            return Err(err("contains a character not allowed in an address"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(err("must have a domain like example.com after the @"));
        }
        for label in &labels {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(err("has an invalid domain after the @"));
            }
        }
        Ok(Self(s.to_lowercase()))
    }

    /// The lower-cased address, as stored and compared.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 3 to 32 characters of `[a-z0-9_.-]`, starting with a letter or digit, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    /// Longest username accepted, in characters.
    pub const MAX_CHARS: usize = 32;

    /// Parses with errors naming the `username` field; the result is trimmed and lower-cased.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::parse_as("username", raw)
    }

    /// Parses with errors naming `field`.
    pub fn parse_as(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let s = raw.trim();
        let err = |m: &str| FieldError::new(field, m);
        if s.is_empty() {
            return Err(err("is required"));
        }
        // Counted before lower-casing, which may grow a string.
        let n = s.chars().count();
        if !(3..=Self::MAX_CHARS).contains(&n) {
            return Err(err("must be 3 to 32 characters long"));
        }
        let s = s.to_lowercase();
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(err(
                "may only contain letters a-z, digits, '_', '.' and '-'",
            ));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(err("must start with a letter or a digit"));
        }
        Ok(Self(s))
    }

    /// The lower-cased username, as stored and compared.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email or a username, as users name each other (chat members, a saga's sender).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserRef {
    /// Anything with an `@` is taken for an email address.
    Email(Email),
    /// Anything without an `@`.
    Username(Username),
}

impl UserRef {
    /// Parses with errors naming the `user` field; see [`UserRef::parse_as`].
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        Self::parse_as("user", raw)
    }

    /// Parses with errors naming `field`; the message quotes the value ([`echo`]).
    pub fn parse_as(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let parsed = if raw.contains('@') {
            Email::parse_as(field, raw).map(UserRef::Email)
        } else {
            Username::parse_as(field, raw).map(UserRef::Username)
        };
        parsed.map_err(|e| FieldError::new(field, format!("{} {}", echo(raw), e.message)))
    }

    /// The normalised form: what storage compares.
    pub fn as_str(&self) -> &str {
        match self {
            UserRef::Email(e) => e.as_str(),
            UserRef::Username(u) => u.as_str(),
        }
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A positive id of a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatId(pub i64);

impl ChatId {
    /// Refuses zero and negative ids, which no chat has (an unset proto field arrives as 0).
    pub fn parse(raw: i64) -> Result<Self, FieldError> {
        if raw <= 0 {
            return Err(FieldError::new("chat_id", "must be a positive chat id"));
        }
        Ok(Self(raw))
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message's text: 1 to 4096 characters, not only whitespace, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    /// Most characters a message may have (not bytes).
    pub const MAX_CHARS: usize = 4096;

    /// Parses a message's text as sent: it is kept exactly, surrounding whitespace included, so a
    /// message reads back as it was written.
    pub fn parse(raw: String) -> Result<Self, FieldError> {
        let err = |m: &str| FieldError::new("text", m);
        if raw.trim().is_empty() {
            return Err(err("must not be empty"));
        }
        // Bytes bound characters from above: a short cut before counting a huge string.
        if raw.len() > 4 * Self::MAX_CHARS || raw.chars().count() > Self::MAX_CHARS {
            return Err(err("must be at most 4096 characters"));
        }
        if raw.contains('\0') {
            return Err(err("must not contain NUL characters"));
        }
        Ok(Self(raw))
    }

    /// The text as the sender wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// An optional idempotency key: at most 128 characters, none of them a control character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Longest key accepted, in characters.
    pub const MAX_CHARS: usize = 128;

    /// `None` for an empty key (no idempotency asked for).
    pub fn parse(raw: &str) -> Result<Option<Self>, FieldError> {
        let err = |m: &str| FieldError::new("idempotency_key", m);
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > 4 * Self::MAX_CHARS || raw.chars().count() > Self::MAX_CHARS {
            return Err(err("must be at most 128 characters"));
        }
        if raw.chars().any(char::is_control) {
            return Err(err("must not contain control characters (such as NUL)"));
        }
        Ok(Some(Self(raw.to_owned())))
    }

    /// The key exactly as the client sent it (not trimmed, case kept): keys compare byte for byte.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A page size within `1..=max`, `default` for 0.
pub fn page_size(field: &'static str, raw: i32, default: i64, max: i64) -> Result<i64, FieldError> {
    match raw {
        0 => Ok(default),
        n if n < 0 || i64::from(n) > max => Err(FieldError::new(
            field,
            format!("must be between 1 and {max}"),
        )),
        n => Ok(i64::from(n)),
    }
}

/// A sequence number a client names: positive.
pub fn seq(field: &'static str, raw: i64) -> Result<i64, FieldError> {
    if raw <= 0 {
        return Err(FieldError::new(field, "must be a positive sequence number"));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "alice@-example.com",
            "alice@exa_mple.com",
            "alice@example..com",
            "a\0b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
        assert!(Email::parse(&format!("a@{}.com", "b".repeat(250))).is_err());
    }

    #[test]
    fn usernames() {
        assert_eq!(Username::parse("Alice_1").unwrap().as_str(), "alice_1");
        for bad in [
            "",
            "ab",
            "a".repeat(33).as_str(),
            "al ice",
            "_alice",
            "алиса",
            "al@ice",
            "al\0ce",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn user_refs_echo_little_of_a_bad_value() {
        assert!(matches!(
            UserRef::parse("bob@example.com"),
            Ok(UserRef::Email(_))
        ));
        assert!(matches!(UserRef::parse("bob"), Ok(UserRef::Username(_))));
        let e = UserRef::parse_as("members", &"x".repeat(9000)).unwrap_err();
        assert_eq!(e.field, "members");
        assert!(e.message.len() < 200, "{}", e.message);
        assert!(e.message.contains("9000 characters"), "{}", e.message);
    }

    #[test]
    fn texts_and_keys() {
        assert!(MessageText::parse("привет 👋".into()).is_ok());
        assert!(MessageText::parse("   \n".into()).is_err());
        assert!(MessageText::parse("".into()).is_err());
        assert!(MessageText::parse("я".repeat(4096)).is_ok());
        assert!(MessageText::parse("я".repeat(4097)).is_err());
        assert!(MessageText::parse("a\0b".into()).is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("\0").is_err());
        assert_eq!(IdempotencyKey::parse("").unwrap(), None);
    }

    #[test]
    fn ids_and_pages() {
        assert!(ChatId::parse(0).is_err());
        assert!(ChatId::parse(-3).is_err());
        assert_eq!(page_size("page_size", 0, 50, 500).unwrap(), 50);
        assert!(page_size("page_size", 501, 50, 500).is_err());
        assert!(page_size("page_size", i32::MIN, 50, 500).is_err());
        assert!(seq("seq", 0).is_err());
        assert_eq!(seq("seq", i64::MAX).unwrap(), i64::MAX);
    }
}

/// Properties over arbitrary input: parsing never panics, what is accepted parses again
/// to itself, and what is refused is a field error naming the field, small whatever the
/// input was.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// Strings that hit the rules: any Unicode, NUL and control characters, `@` and dots,
    /// and lengths around every limit.
    fn input() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9_.@ -]{0,40}",
            "[a-z0-9]{1,64}@[a-z0-9-]{1,20}\\.[a-z]{2,6}",
            "[\\x00-\\x1f a@.]{0,8}",
            (0usize..10_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        ]
    }

    fn small(e: &FieldError, field: &str) {
        assert_eq!(e.field, field);
        assert!(!e.message.is_empty());
        assert!(e.message.len() < 300, "{} bytes", e.message.len());
    }

    proptest! {
        #[test]
        fn emails(raw in input()) {
            match Email::parse(&raw) {
                Ok(e) => {
                    prop_assert_eq!(Email::parse(e.as_str()), Ok(e.clone()));
                    prop_assert!(!e.as_str().contains('\0'));
                    prop_assert!(e.as_str().len() <= Email::MAX_LEN);
                }
                Err(e) => small(&e, "email"),
            }
        }

        #[test]
        fn usernames(raw in input()) {
            match Username::parse(&raw) {
                Ok(u) => {
                    prop_assert_eq!(Username::parse(u.as_str()), Ok(u.clone()));
                    prop_assert!(u.as_str().len() <= Username::MAX_CHARS);
                }
                Err(e) => small(&e, "username"),
            }
        }

        #[test]
        fn user_refs(raw in input()) {
            match UserRef::parse_as("members", &raw) {
                Ok(r) => prop_assert_eq!(UserRef::parse(r.as_str()), Ok(r.clone())),
                Err(e) => small(&e, "members"),
            }
        }

        #[test]
        fn texts(raw in input()) {
            match MessageText::parse(raw.clone()) {
                Ok(t) => {
                    prop_assert_eq!(t.as_str(), raw.as_str());
                    prop_assert!(!raw.contains('\0'));
                    prop_assert!(raw.chars().count() <= MessageText::MAX_CHARS);
                }
                Err(e) => small(&e, "text"),
            }
        }

        #[test]
        fn idempotency_keys(raw in input()) {
            match IdempotencyKey::parse(&raw) {
                Ok(Some(k)) => {
                    prop_assert_eq!(k.as_str(), raw.as_str());
                    prop_assert!(!raw.chars().any(char::is_control));
                }
                Ok(None) => prop_assert!(raw.is_empty()),
                Err(e) => small(&e, "idempotency_key"),
            }
        }

        #[test]
        fn numbers(n in any::<i64>(), size in any::<i32>()) {
            match ChatId::parse(n) {
                Ok(id) => prop_assert_eq!(id.0, n),
                Err(e) => { small(&e, "chat_id"); prop_assert!(n <= 0); }
            }
            match seq("seq", n) {
                Ok(s) => prop_assert_eq!(s, n),
                Err(e) => small(&e, "seq"),
            }
            match page_size("page_size", size, 50, 500) {
                Ok(p) => prop_assert!((1..=500).contains(&p)),
                Err(e) => small(&e, "page_size"),
            }
        }

        #[test]
        fn echo_is_bounded(raw in input()) {
            prop_assert!(echo(&raw).len() <= 2 * ECHO_CHARS + 32);
        }
    }
}
