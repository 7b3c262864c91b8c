//! What one message costs PostgreSQL on the production path, written as a pgbench script:
//! the statements the services send for one `SendMessage` whose chat has
//! [`MEMBERS`] members, each as its own commit where the service commits it alone.
//!
//! This is the one place to change when the services' SQL changes. It models the
//! statements as they are today:
//! - the chat service's insert (`insert_message` in the chat service's PostgreSQL store):
//!   one statement whose CTEs bump `chats.last_seq` under the chat's row lock, insert the
//!   message and its outbox row;
//! - the outbox delete once the event is published (`events_published`);
//! - the notifier (its PostgreSQL delivery store): `record_and_claim` (one statement: the
//!   message row with its recipients, claimed whole, committed without waiting for the
//!   disk), `finish_delivered` (the message row marked delivered, in one durable
//!   `UPDATE`), as for every message whose emails all go out on the first try.
//!
//! The services batch these statements across concurrent messages (the chat insert per
//! group of senders, the outbox delete, the notifier's record and outcomes); the script
//! runs them for one message at a time, so it is the ceiling of the per-message SQL when
//! no batch forms, which the batched system may pass.
//!
//! The tables come from the real migrations (`migrations/chat` and
//! `migrations/notification`, embedded by `sqlx::migrate!`), applied to one scratch
//! database: in production they are two databases of one server, which shares its WAL
//! and its cores between them just the same.

use sqlx::migrate::Migrator;

use crate::{client::text_of_size, scenarios::CHAT_MEMBERS};

static CHAT_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/chat");
static NOTIFICATION_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/notification");

/// Members of every chat, as the bench's `send` makes them (one sender, the others get
/// an email each).
pub const MEMBERS: i64 = CHAT_MEMBERS as i64;

/// The sender of every message: one member (which one does not change the work).
const SENDER: i64 = MEMBERS;

/// A short description for the row's note.
pub const WHAT: &str = "chat insert (seq, message, outbox), outbox delete, \
     notifier record-and-claim (async commit) + finish, one message at a time";

/// The SQL that prepares the scratch database: every up migration of the chat and the
/// notification databases (applied as they are, without sqlx's bookkeeping table, which
/// the two sets would share here), then `chats` chats of [`MEMBERS`] members.
pub fn setup(chats: usize) -> Vec<String> {
    let mut sql: Vec<String> = CHAT_MIGRATIONS
        .iter()
        .chain(NOTIFICATION_MIGRATIONS.iter())
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.sql.to_string())
        .collect();
    sql.push(format!(
        "INSERT INTO chats (id, title, creator_id) \
         SELECT c, 'bench', {SENDER} FROM generate_series(1, {chats}) c; \
         INSERT INTO chat_members (chat_id, user_id, username) \
         SELECT c, u, 'user' || u FROM generate_series(1, {chats}) c, \
         generate_series(1, {MEMBERS}) u",
        chats = chats.max(1)
    ));
    sql
}

/// The pgbench script: one transaction of pgbench is one message's SQL. Values the
/// services bind are written as pgbench variables or literals; run with `-M prepared`
/// they are parameters of prepared statements, as sqlx sends them.
pub fn script(chats: usize, message_size: usize) -> String {
    let text = text_of_size("pgbench", message_size);
    let recipients: Vec<i64> = (1..=MEMBERS).filter(|&u| u != SENDER).collect();
    let ids = recipients
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let emails = recipients
        .iter()
        .map(|u| format!("user{u}@bench.example.com"))
        .collect::<Vec<_>>()
        .join(",");
    let names = recipients
        .iter()
        .map(|u| format!("user{u}"))
        .collect::<Vec<_>>()
        .join(",");
    // One statement a line: pgbench ends a command at `;` or at a meta-command such as
    // `\gset`, which keeps the insert's seq and event id in `m_seq` and `m_event_id`.
    let statements = [
        format!("\\set chat random(1, {})", chats.max(1)),
        // Chat service: SendMessage's insert.
        format!(
            "WITH next AS (UPDATE chats SET last_seq = last_seq + 1, last_activity_at = now() \
             WHERE id = :chat AND EXISTS (SELECT 1 FROM chat_members \
             WHERE chat_id = :chat AND user_id = {SENDER}) RETURNING last_seq), \
             ins AS (INSERT INTO messages (chat_id, seq, sender_id, sender_username, text, \
             idempotency_key) SELECT :chat::bigint, next.last_seq, {SENDER}, 'user{SENDER}', '{text}', \
             NULL FROM next RETURNING chat_id, seq, sender_id, sender_username, text, \
             created_at, edited_at, deleted_at IS NOT NULL AS deleted, preview_url, \
             preview_title, preview_description, preview_image_url, preview_site_name), \
             event AS (INSERT INTO outbox (chat_id, seq, kind) \
             SELECT chat_id, seq, 'message_created' FROM ins RETURNING id) \
             SELECT ins.seq, event.id AS event_id FROM ins, event \\gset m_"
        ),
        // Chat service: the event is published; its outbox row goes.
        "DELETE FROM outbox WHERE id = ANY(ARRAY[:m_event_id::bigint]);".into(),
        // Notifier: record the message with its recipients, claimed whole, in one
        // statement on a connection whose commits do not wait for the disk (its
        // `record_and_claim`, here for a batch of one message).
        "BEGIN;".into(),
        "SET LOCAL synchronous_commit = off;".into(),
        format!(
            "INSERT INTO notified_messages (chat_id, seq, sender_id, sender_username, \
             chat_title, text, sent_at, recipient_ids, recipient_emails, recipient_usernames, \
             state, lease_until, updated_at) VALUES (:chat::bigint, :m_seq::bigint, {SENDER}, \
             'user{SENDER}', 'bench', '{text}', now(), '{{{ids}}}'::bigint[], \
             '{{{emails}}}'::text[], '{{{names}}}'::text[], 'sending', \
             now() + make_interval(secs => 30), now()) ON CONFLICT DO NOTHING \
             RETURNING chat_id, seq, recipient_ids, recipient_emails, recipient_usernames, \
             state, recorded_at, updated_at;"
        ),
        "COMMIT;".into(),
        // Notifier: every email went out; one UPDATE of the message's row records them.
        format!(
            "UPDATE notified_messages SET state = 'delivered', lease_until = NULL, \
             updated_at = now() WHERE chat_id = :chat::bigint AND seq = :m_seq::bigint \
             AND state = 'sending' AND recipient_ids <@ '{{{ids}}}'::bigint[] \
             AND '{{{ids}}}'::bigint[] <@ recipient_ids RETURNING chat_id, seq;"
        ),
    ];
    let mut out = statements.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_names_every_recipient_but_the_sender() {
        let s = script(16, 64);
        assert!(s.contains("'{1,2,3,4,5,6,7}'::bigint[]"), "{s}");
        assert!(s.contains("random(1, 16)"), "{s}");
        assert!(s.lines().all(|l| !l.is_empty()));
    }

    #[test]
    fn setup_applies_both_sets_of_migrations_then_seeds() {
        let sql = setup(2);
        assert!(sql.iter().any(|s| s.contains("CREATE TABLE chats")));
        assert!(sql.iter().any(|s| s.contains("CREATE TABLE deliveries")));
        assert!(sql
            .last()
            .is_some_and(|s| s.contains("generate_series(1, 2)")));
    }
}
