//! Input parsed once at the gRPC edge. After `Email::parse` succeeds the value is proof of a
//! well-formed, normalised address; storage and logic take these types and never re-check.
//! The rules other services share (emails, usernames, how users are named) live in
//! `chat_common::domain`; what only auth knows (passwords) is here.
//!
//! So is the refresh-token rule ([`decide_refresh`]): both storage engines load the
//! presented token under a lock and apply what this pure function decides, so the rule is
//! written, and unit-tested, once for both.

use std::fmt;

use chrono::{DateTime, Utc};
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

/// A stored refresh token as far as the rotation rule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshTokenState {
    /// After this the token no longer rotates.
    pub expires_at: DateTime<Utc>,
    /// It was rotated (or its rotation raced another) before.
    pub used: bool,
    /// Its family was revoked (logout, reuse, password change).
    pub revoked: bool,
}

/// What presenting a stored refresh token leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Valid: mark it used and store its successor in its family.
    Rotate,
    /// It was used before, so someone replays it: revoke its whole family (and commit
    /// that) and refuse.
    RevokeFamily,
    /// Refused without a write.
    Refuse(Refusal),
}

/// Why a refresh token is refused without a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its expiry has passed.
    Expired,
    /// Its family was revoked earlier.
    Revoked,
}

/// The refresh-token rule: a revoked family refuses first (a reuse of a revoked token
/// changes nothing more), then a used token is reuse and revokes its family, then an
/// expired one is refused; otherwise it rotates. The caller holds the token's row locked
/// while it applies the decision, so two concurrent rotations of one token see it in turn:
/// one rotates, the other is reuse.
pub fn decide_refresh(token: &RefreshTokenState, now: DateTime<Utc>) -> RefreshDecision {
    if token.revoked {
        RefreshDecision::Refuse(Refusal::Revoked)
    } else if token.used {
        RefreshDecision::RevokeFamily
    } else if token.expires_at <= now {
        RefreshDecision::Refuse(Refusal::Expired)
    } else {
        RefreshDecision::Rotate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(
        expires_in_secs: i64,
        used: bool,
        revoked: bool,
    ) -> (RefreshTokenState, DateTime<Utc>) {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let state = RefreshTokenState {
            expires_at: now + chrono::Duration::seconds(expires_in_secs),
            used,
            revoked,
        };
        (state, now)
    }

    #[test]
    fn a_fresh_token_rotates() {
        let (t, now) = token(60, false, false);
        assert_eq!(decide_refresh(&t, now), RefreshDecision::Rotate);
    }

    #[test]
    fn a_used_token_revokes_its_family_even_when_expired() {
        let (t, now) = token(60, true, false);
        assert_eq!(decide_refresh(&t, now), RefreshDecision::RevokeFamily);
        let (t, now) = token(-60, true, false);
        assert_eq!(decide_refresh(&t, now), RefreshDecision::RevokeFamily);
    }

    #[test]
    fn a_revoked_token_is_refused_whatever_else_holds() {
        for (expires, used) in [(60, false), (60, true), (-60, false), (-60, true)] {
            let (t, now) = token(expires, used, true);
            assert_eq!(
                decide_refresh(&t, now),
                RefreshDecision::Refuse(Refusal::Revoked),
                "expires in {expires}s, used {used}"
            );
        }
    }

    #[test]
    fn an_unused_token_expires_at_its_expiry_time() {
        let (t, now) = token(0, false, false);
        assert_eq!(
            decide_refresh(&t, now),
            RefreshDecision::Refuse(Refusal::Expired)
        );
        let (t, now) = token(-1, false, false);
        assert_eq!(
            decide_refresh(&t, now),
            RefreshDecision::Refuse(Refusal::Expired)
        );
        let (t, now) = token(1, false, false);
        assert_eq!(decide_refresh(&t, now), RefreshDecision::Rotate);
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
