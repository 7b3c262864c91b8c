//! Input parsed once at the gRPC edge. After `Email::parse` succeeds the value is proof of a
//! well-formed, normalised address; storage and logic take these types and never re-check.
//! The rules other services share (emails, usernames, how users are named) live in
//! `chat_common::domain`; what only auth knows (passwords) is here.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

pub use chat_common::domain::{echo, Email, FieldError, UserRef, Username};

/// A new password: at least 8 characters and at most 72 bytes (bcrypt ignores what lies
/// beyond 72). Never printed.
pub struct Password(SecretString);

impl Password {
    /// Fewest characters a password may have.
    pub const MIN_CHARS: usize = 8;
    /// Most bytes a password may have: bcrypt ignores whatever lies beyond 72.
    pub const MAX_BYTES: usize = 72;

    /// Checks the length only; the value is never trimmed (spaces count as typed).
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

    /// The password in clear, for hashing or verifying; never log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn passwords(raw in prop_oneof![any::<String>(), (0usize..200).prop_map(|n| "p".repeat(n))]) {
            match Password::parse(raw.clone()) {
                Ok(p) => {
                    prop_assert_eq!(p.expose(), raw.as_str());
                    prop_assert!(raw.len() <= Password::MAX_BYTES);
                    prop_assert_eq!(format!("{p:?}"), "Password(***)");
                }
                Err(e) => {
                    prop_assert_eq!(e.field, "password");
                    prop_assert!(e.message.len() < 100);
                }
            }
        }
    }
}
