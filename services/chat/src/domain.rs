//! Input parsed once at the gRPC edge: after parsing, a `MessageText` is known to be
//! non-blank and within limits, a `ChatId` positive, and so on; storage never re-checks.

use chat_common::error::invalid_field;
use tonic::Status;

/// A chat id: positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatId(pub i64);

impl ChatId {
    pub fn parse(raw: i64) -> Result<Self, Status> {
        if raw <= 0 {
            return Err(invalid_field("chat_id", "must be a positive chat id"));
        }
        Ok(Self(raw))
    }
}

impl std::fmt::Display for ChatId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A message's text: 1 to 4096 characters, not only whitespace, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub const MAX_CHARS: usize = 4096;

    pub fn parse(raw: String) -> Result<Self, Status> {
        if raw.trim().is_empty() {
            return Err(invalid_field("text", "must not be empty"));
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(invalid_field("text", "must be at most 4096 characters"));
        }
        if raw.contains('\0') {
            return Err(invalid_field("text", "must not contain NUL characters"));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A chat title: at most 200 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub fn parse(raw: &str) -> Result<Self, Status> {
        let t = raw.trim();
        if t.chars().count() > 200 {
            return Err(invalid_field("title", "must be at most 200 characters"));
        }
        if t.chars().any(char::is_control) {
            return Err(invalid_field(
                "title",
                "must not contain control characters",
            ));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An optional idempotency key: at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Option<Self>, Status> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.chars().count() > 128 {
            return Err(invalid_field(
                "idempotency_key",
                "must be at most 128 characters",
            ));
        }
        Ok(Some(Self(raw.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A page size within `1..=max`, `default` for 0.
pub fn page_size(field: &str, raw: i32, default: i64, max: i64) -> Result<i64, Status> {
    match raw {
        0 => Ok(default),
        n if n < 0 || i64::from(n) > max => {
            Err(invalid_field(field, format!("must be between 1 and {max}")))
        }
        n => Ok(i64::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert!(MessageText::parse("привет 👋".into()).is_ok());
        assert!(MessageText::parse("   \n".into()).is_err());
        assert!(MessageText::parse("".into()).is_err());
        assert!(MessageText::parse("я".repeat(4096)).is_ok());
        assert!(MessageText::parse("я".repeat(4097)).is_err());
        assert!(MessageText::parse("a\0b".into()).is_err());
    }

    #[test]
    fn ids_and_pages() {
        assert!(ChatId::parse(0).is_err());
        assert!(ChatId::parse(-3).is_err());
        assert_eq!(page_size("page_size", 0, 50, 500).unwrap(), 50);
        assert!(page_size("page_size", 501, 50, 500).is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert_eq!(IdempotencyKey::parse("").unwrap(), None);
    }
}
