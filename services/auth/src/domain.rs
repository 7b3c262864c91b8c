//! Input parsed once at the gRPC edge. After `Email::parse` succeeds the value is proof of a
//! well-formed, normalised address; storage and logic take these types and never re-check.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// Why a field was rejected, worded for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A lower-cased email address of a plausible shape (RFC 5321 lengths, one `@`, a dotted
/// domain of letters, digits and hyphens).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let s = raw.trim();
        let err = |m: &str| FieldError::new("email", m);
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
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let s = raw.trim().to_lowercase();
        let err = |m: &str| FieldError::new("username", m);
        if s.is_empty() {
            return Err(err("is required"));
        }
        let n = s.chars().count();
        if !(3..=32).contains(&n) {
            return Err(err("must be 3 to 32 characters long"));
        }
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

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new password: 8 to 72 bytes (bcrypt ignores what lies beyond 72). Never printed.
pub struct Password(SecretString);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_BYTES: usize = 72;

    pub fn parse(raw: String) -> Result<Self, FieldError> {
        let err = |m: &str| FieldError::new("password", m);
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(err("must be at least 8 characters long"));
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(err("must be at most 72 bytes long"));
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// An email or a username, as other services name users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserRef {
    Email(Email),
    Username(Username),
}

impl UserRef {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.contains('@') {
            Email::parse(raw).map(UserRef::Email)
        } else {
            Username::parse(raw).map(UserRef::Username)
        }
    }
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
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn passwords() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("x".repeat(73)).is_err());
        assert!(Password::parse("пароль-длинный".into()).is_ok());
        assert_eq!(
            format!("{:?}", Password::parse("correct horse".into()).unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn user_refs() {
        assert!(matches!(
            UserRef::parse("bob@example.com"),
            Ok(UserRef::Email(_))
        ));
        assert!(matches!(UserRef::parse("bob"), Ok(UserRef::Username(_))));
    }
}
