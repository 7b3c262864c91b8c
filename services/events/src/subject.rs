//! The subject scheme, in one place because the publisher (chat-service's NATS bus), the
//! replicas' subscriptions, the JetStream stream and the notifier's consumer filter must all
//! name the same subjects, and a typo in any one of them loses events silently.
//!
//! Stored events are `<prefix>.<chat_id>.<kind>` (kind `message_created`,
//! `message_deleted`, `message_edited`, `chat_deleted`, `member_added`, `member_removed`,
//! `message_previewed`); the stream captures `<prefix>.>`. Ephemeral events (typing,
//! presence) are `<prefix>_live.<chat_id>.<kind>`: outside `<prefix>.>`, so the stream
//! never keeps them. The prefix is `chat` by default (`NATS_SUBJECT_PREFIX`); tests use
//! their own so that they can share one NATS.

/// The subject of a stored event of `kind` in chat `chat_id`.
pub fn stored(prefix: &str, chat_id: i64, kind: &str) -> String {
    format!("{prefix}.{chat_id}.{kind}")
}

/// The subject of an ephemeral event; `kind` `*` subscribes to all of a chat's.
pub fn live(prefix: &str, chat_id: i64, kind: &str) -> String {
    format!("{prefix}_live.{chat_id}.{kind}")
}

/// Every stored event of one chat, for a replica's fan-out.
pub fn chat(prefix: &str, chat_id: i64) -> String {
    stored(prefix, chat_id, "*")
}

/// Every stored event of every chat: what the JetStream stream captures.
pub fn all(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// The new messages of every chat: the notifier's consumer filter.
pub fn new_messages(prefix: &str) -> String {
    format!("{prefix}.*.message_created")
}

/// The kind of an event, the last token of its subject.
pub fn kind(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_scheme() {
        assert_eq!(
            stored("chat", 3, "message_created"),
            "chat.3.message_created"
        );
        assert_eq!(live("chat", 3, "typing"), "chat_live.3.typing");
        assert_eq!(chat("chat", 3), "chat.3.*");
        assert_eq!(all("chat"), "chat.>");
        assert_eq!(new_messages("t1"), "t1.*.message_created");
        assert_eq!(kind("chat_live.3.presence_query"), "presence_query");
        // Live subjects are outside what the stream keeps.
        assert!(!live("chat", 3, "typing").starts_with("chat."));
    }
}
