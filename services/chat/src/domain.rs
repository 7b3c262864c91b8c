//! Input parsed once at the gRPC edge: after parsing, a `MessageText` is known to be
//! non-blank and within limits, a `ChatId` positive, and so on; storage never re-checks.
//! The rules other services share (text, keys, ids, how users are named) are
//! `chat_common::domain`'s, so the saga cannot drift from them; what only chats have
//! (titles, member lists) is here.

use chat_common::domain::FieldError;
pub use chat_common::domain::{page_size, seq, ChatId, IdempotencyKey, MessageText, UserRef};

/// Most members a chat may be created with.
pub const MAX_MEMBERS: usize = 1000;

/// A chat title: at most 200 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    /// Longest title, in characters (not bytes).
    pub const MAX_CHARS: usize = 200;

    /// Trims `raw` and checks it; an empty title is allowed (a chat without a name).
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let t = raw.trim();
        if t.len() > 4 * Self::MAX_CHARS || t.chars().count() > Self::MAX_CHARS {
            return Err(FieldError::new("title", "must be at most 200 characters"));
        }
        if t.chars().any(char::is_control) {
            return Err(FieldError::new(
                "title",
                "must not contain control characters",
            ));
        }
        Ok(Self(t.to_owned()))
    }

    /// The trimmed title.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The other members a chat is created with: 1 to [`MAX_MEMBERS`] distinct users, each an
/// email or a username (blank entries ignored). Their normalised forms, sorted.
pub fn members(raw: &[String]) -> Result<Vec<String>, FieldError> {
    // Counted before parsing anything, so a huge list costs nothing.
    if raw.len() > MAX_MEMBERS {
        return Err(FieldError::new(
            "members",
            format!("at most {MAX_MEMBERS} members"),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for m in raw {
        if m.trim().is_empty() {
            continue;
        }
        out.push(UserRef::parse_as("members", m)?.as_str().to_owned());
    }
    if out.is_empty() {
        return Err(FieldError::new(
            "members",
            "name at least one other member (email or username)",
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        assert_eq!(Title::parse("  plans ").unwrap().as_str(), "plans");
        assert!(Title::parse(&"t".repeat(201)).is_err());
        assert!(Title::parse("a\0b").is_err());
    }

    #[test]
    fn member_lists() {
        assert!(members(&[]).is_err());
        assert!(members(&[" ".into()]).is_err());
        assert_eq!(
            members(&["Bob".into(), "bob".into(), "alice@example.com".into()]).unwrap(),
            vec!["alice@example.com".to_owned(), "bob".to_owned()]
        );
        let e = members(&["x".repeat(9000)]).unwrap_err();
        assert!(e.message.len() < 200, "{}", e.message);
        assert!(members(&vec!["bob".to_owned(); MAX_MEMBERS + 1]).is_err());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn titles(raw in prop_oneof![any::<String>(), (0usize..1000).prop_map(|n| "t".repeat(n))]) {
            match Title::parse(&raw) {
                Ok(t) => {
                    prop_assert_eq!(Title::parse(t.as_str()), Ok(t.clone()));
                    prop_assert!(!t.as_str().contains('\0'));
                }
                Err(e) => {
                    prop_assert_eq!(e.field, "title");
                    prop_assert!(e.message.len() < 300);
                }
            }
        }

        #[test]
        fn member_lists(raw in prop::collection::vec(
            prop_oneof![any::<String>(), "[a-z0-9@. ]{0,12}", Just("x".repeat(9000))],
            0..30,
        )) {
            match members(&raw) {
                Ok(list) => {
                    prop_assert!(!list.is_empty() && list.len() <= raw.len());
                    // Normalised names parse to themselves, once each.
                    prop_assert_eq!(members(&list), Ok(list.clone()));
                }
                Err(e) => {
                    prop_assert_eq!(e.field, "members");
                    prop_assert!(e.message.len() < 300, "{}", e.message);
                }
            }
        }
    }
}
