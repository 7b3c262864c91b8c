//! The SQLite backend of [`ChatStore`](super::ChatStore), for the embedded server.
//!
//! SQLite has one writer at a time, so what PostgreSQL gets from the chat row lock comes
//! from the write transaction itself: the idempotency check, the seq bump and the insert
//! run inside one `BEGIN IMMEDIATE` on a dedicated writer connection, and commit or roll
//! back whole. Reads go through the shared pool and never wait for the writer (WAL).
//!
//! Messages go through a [`GroupWriter`]: the messages of concurrent senders share one
//! transaction and one fsync, each sender answered after the commit that holds its own.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Datelike, TimeDelta, Utc};
use sqlx::{SqliteConnection, SqlitePool};

use super::{
    millis, Added, ChatCursor, ChatRecord, ChatStore, Deleted, Edited, EventId, EventKind,
    Inserted, MemberRecord, MessageRecord, NewMessage, OutboxEvent, PendingMessage, Removed,
};
use crate::domain::{ChatId, MessageText, Title};
use chat_common::db::{begin_write, sqlite_time, sqlite_writer, GroupWriter};
use link_preview::Preview;

/// The SQLite schema of the chats.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite/chat");

/// Chats in an SQLite file, for the embedded server: reads on the pool, writes on one
/// connection of their own.
pub struct SqliteChatStore {
    read: SqlitePool,
    write: SqlitePool,
    messages: GroupWriter,
}

impl SqliteChatStore {
    /// A store on `pool`; opens the writer connection and starts its group writer.
    pub async fn new(pool: SqlitePool) -> anyhow::Result<Self> {
        let write = sqlite_writer(&pool).await?;
        Ok(Self {
            read: pool,
            messages: GroupWriter::start(write.clone()),
            write,
        })
    }
}

/// The idempotency check, the seq bump, the insert of one message and the outbox row of its
/// event, inside the writer's transaction.
async fn insert_one(
    conn: &mut SqliteConnection,
    msg: &PendingMessage,
    now: &str,
) -> anyhow::Result<Inserted> {
    let key = msg.idempotency_key.as_deref();
    if let Some(key) = key {
        let earlier = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE chat_id = ?1 AND sender_id = ?2 AND idempotency_key = ?3"
        ))
        .bind(msg.chat_id)
        .bind(msg.sender_id)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .context("looking up an idempotency key")?;
        if let Some(earlier) = earlier {
            return Ok(Inserted::Duplicate(earlier));
        }
    }
    let next: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE chats SET last_seq = last_seq + 1, last_activity_at = ?3 \
         WHERE id = ?1 AND EXISTS ( \
             SELECT 1 FROM chat_members WHERE chat_id = ?1 AND user_id = ?2) \
         RETURNING last_seq, members_version",
    )
    .bind(msg.chat_id)
    .bind(msg.sender_id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .context("taking the next seq")?;
    let Some((seq, members_version)) = next else {
        return Ok(Inserted::NoChat);
    };
    let mut stored: MessageRecord = sqlx::query_as(&format!(
        "INSERT INTO messages \
         (chat_id, seq, sender_id, sender_username, text, idempotency_key, created_at) \
         VALUES (?1, ?2, ?3, \
                 COALESCE(NULLIF(?4, ''), (SELECT username FROM chat_members \
                                           WHERE chat_id = ?1 AND user_id = ?3)), \
                 ?5, ?6, ?7) RETURNING {MESSAGE_COLUMNS}"
    ))
    .bind(msg.chat_id)
    .bind(seq)
    .bind(msg.sender_id)
    .bind(&msg.sender_username)
    .bind(&msg.text)
    .bind(key)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .context("inserting a message")?;
    let event: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (chat_id, seq, kind, created_at, members_version) \
         VALUES (?1, ?2, 'message_created', ?3, ?4) RETURNING id",
    )
    .bind(msg.chat_id)
    .bind(seq)
    .bind(now)
    .bind(members_version)
    .fetch_one(&mut *conn)
    .await
    .context("writing a message's event to the outbox")?;
    stored.members_version = Some(members_version);
    Ok(Inserted::New(stored, event))
}

/// Now, as the schema stores times: RFC 3339 text with microseconds (see [`sqlite_time`]),
/// which compares as text the way the times compare.
fn now() -> String {
    sqlite_time(Utc::now())
}

/// The last and the first time the stored form can say. It has four-digit years: beyond
/// them chrono writes a signed year (`+10000-...`), which would sort wrong as text.
const LATEST: &str = "9999-12-31T23:59:59.999999Z";
const EARLIEST: &str = "0000-01-01T00:00:00.000000Z";

/// `t` in the stored form, to compare stored times with. A time outside years 0 to 9999
/// (a cursor from far away, a saturated duration), or none at all (outside chrono's range,
/// on the side `later` says), becomes the nearest time the form can say, so that text
/// order stays time order: every stored time lies between the two.
fn text_bound(t: Option<DateTime<Utc>>, later: bool) -> String {
    match t {
        Some(t) if (0..=9999).contains(&t.year()) => sqlite_time(t),
        Some(t) if t.year() > 9999 => LATEST.to_owned(),
        None if later => LATEST.to_owned(),
        _ => EARLIEST.to_owned(),
    }
}

/// `d` (in whole milliseconds, saturating) after `now` when `later`, else before it, in
/// the stored form (see [`text_bound`]).
fn shifted(now: DateTime<Utc>, d: Duration, later: bool) -> String {
    let d = TimeDelta::try_milliseconds(millis(d)).unwrap_or(TimeDelta::MAX);
    let t = if later {
        now.checked_add_signed(d)
    } else {
        now.checked_sub_signed(d)
    };
    text_bound(t, later)
}

const CHAT_COLUMNS: &str =
    "c.id, c.title, c.creator_id, c.created_at, c.last_seq, c.last_activity_at, \
     (SELECT count(*) FROM chat_members m WHERE m.chat_id = c.id) AS member_count, \
     c.members_version";
/// The caller's read marker and unread count, for queries that join the caller's
/// membership row as `me`: one correlated count per chat row, inside the same query (the
/// primary key (chat_id, seq) bounds it to the chat's messages after the marker).
const READ_COLUMNS: &str = "me.last_read_seq, \
     (SELECT count(*) FROM messages u WHERE u.chat_id = c.id AND u.seq > me.last_read_seq \
      AND u.deleted_at IS NULL AND u.sender_id <> me.user_id) AS unread_count";
/// The same columns where no member asks (a service caller, a new chat).
const NO_READ_COLUMNS: &str = "0 AS last_read_seq, 0 AS unread_count";
const MESSAGE_COLUMNS: &str =
    "chat_id, seq, sender_id, sender_username, text, created_at, edited_at, \
     deleted_at IS NOT NULL AS deleted, \
     preview_url, preview_title, preview_description, preview_image_url, preview_site_name";

/// An edit's text has a preview of its own to come, not the old text's.
const CLEAR_PREVIEW: &str = "preview_url = NULL, preview_title = NULL, \
     preview_description = NULL, preview_image_url = NULL, preview_site_name = NULL";

#[async_trait]
impl ChatStore for SqliteChatStore {
    async fn create_chat(
        &self,
        creator_id: i64,
        title: &Title,
        members: &[(i64, String)],
    ) -> anyhow::Result<ChatRecord> {
        let now = now();
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO chats (title, creator_id, created_at, last_activity_at) \
             VALUES (?1, ?2, ?3, ?3) RETURNING id",
        )
        .bind(title.as_str())
        .bind(creator_id)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await
        .context("inserting a chat")?;
        for (user_id, username) in members {
            sqlx::query(
                "INSERT INTO chat_members (chat_id, user_id, username, joined_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(user_id)
            .bind(username)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .context("inserting chat members")?;
        }
        let chat = sqlx::query_as(&format!(
            "SELECT {CHAT_COLUMNS}, {NO_READ_COLUMNS} FROM chats c WHERE c.id = ?1"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .context("reading the new chat")?;
        tx.commit().await.context("committing a new chat")?;
        Ok(chat)
    }

    async fn chat_for_member(
        &self,
        chat: ChatId,
        user_id: i64,
    ) -> anyhow::Result<Option<ChatRecord>> {
        let found = sqlx::query_as(&format!(
            "SELECT {CHAT_COLUMNS}, {READ_COLUMNS} FROM chats c \
             JOIN chat_members me ON me.chat_id = c.id AND me.user_id = ?2 WHERE c.id = ?1"
        ))
        .bind(chat.0)
        .bind(user_id)
        .fetch_optional(&self.read)
        .await
        .context("loading a chat for a member")?;
        Ok(found)
    }

    async fn chat(&self, chat: ChatId) -> anyhow::Result<Option<ChatRecord>> {
        let found = sqlx::query_as(&format!(
            "SELECT {CHAT_COLUMNS}, {NO_READ_COLUMNS} FROM chats c WHERE c.id = ?1"
        ))
        .bind(chat.0)
        .fetch_optional(&self.read)
        .await
        .context("loading a chat")?;
        Ok(found)
    }

    async fn delete_chat(&self, chat: ChatId) -> anyhow::Result<bool> {
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let res = sqlx::query("DELETE FROM chats WHERE id = ?1")
            .bind(chat.0)
            .execute(&mut *tx)
            .await
            .context("deleting a chat")?;
        tx.commit().await.context("committing a chat deletion")?;
        Ok(res.rows_affected() > 0)
    }

    async fn list_chats(
        &self,
        user_id: i64,
        limit: i64,
        cursor: Option<ChatCursor>,
    ) -> anyhow::Result<Vec<ChatRecord>> {
        // Every stored time is before LATEST: no cursor, every chat.
        let (at, id) = cursor.map_or((LATEST.to_owned(), i64::MAX), |c| {
            let micros = c.last_activity_micros;
            let at = DateTime::from_timestamp_micros(micros);
            (text_bound(at, micros > 0), c.id)
        });
        let chats = sqlx::query_as(&format!(
            "SELECT {CHAT_COLUMNS}, {READ_COLUMNS} FROM chats c \
             JOIN chat_members me ON me.chat_id = c.id AND me.user_id = ?1 \
             WHERE (c.last_activity_at, c.id) < (?2, ?3) \
             ORDER BY c.last_activity_at DESC, c.id DESC LIMIT ?4"
        ))
        .bind(user_id)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .context("listing chats")?;
        Ok(chats)
    }

    async fn list_members(&self, chat: ChatId) -> anyhow::Result<Vec<MemberRecord>> {
        let members = sqlx::query_as(
            "SELECT user_id, username, joined_at FROM chat_members WHERE chat_id = ?1 \
             ORDER BY joined_at, user_id",
        )
        .bind(chat.0)
        .fetch_all(&self.read)
        .await
        .context("listing members")?;
        Ok(members)
    }

    async fn member(&self, chat: ChatId, user_id: i64) -> anyhow::Result<Option<MemberRecord>> {
        let found = sqlx::query_as(
            "SELECT user_id, username, joined_at FROM chat_members \
             WHERE chat_id = ?1 AND user_id = ?2",
        )
        .bind(chat.0)
        .bind(user_id)
        .fetch_optional(&self.read)
        .await
        .context("loading a member")?;
        Ok(found)
    }

    async fn insert_message(&self, msg: NewMessage<'_>) -> anyhow::Result<Inserted> {
        let pending = Arc::new(PendingMessage::from(&msg));
        let at = now();
        self.messages
            .write(move |conn| {
                let msg = pending.clone();
                let at = at.clone();
                Box::pin(async move { insert_one(conn, &msg, &at).await })
            })
            .await
    }

    async fn delete_message(&self, chat: ChatId, seq: i64) -> anyhow::Result<Option<Deleted>> {
        let now = now();
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let before: Option<MessageRecord> = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq = ?2"
        ))
        .bind(chat.0)
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await
        .context("loading a message")?;
        let Some(before) = before else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE messages SET deleted_at = COALESCE(deleted_at, ?3), text = '', \
             preview_url = NULL, preview_title = NULL, preview_description = NULL, \
             preview_image_url = NULL, preview_site_name = NULL \
             WHERE chat_id = ?1 AND seq = ?2",
        )
        .bind(chat.0)
        .bind(seq)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .context("deleting a message")?;
        let event = if before.deleted {
            None
        } else {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (chat_id, seq, kind, created_at) \
                 VALUES (?1, ?2, 'message_deleted', ?3) RETURNING id",
            )
            .bind(chat.0)
            .bind(seq)
            .bind(&now)
            .fetch_one(&mut *tx)
            .await
            .context("writing a deletion's event to the outbox")?;
            Some(id)
        };
        tx.commit().await.context("committing a message deletion")?;
        Ok(Some(Deleted { before, event }))
    }

    async fn edit_message(
        &self,
        chat: ChatId,
        seq: i64,
        text: &MessageText,
    ) -> anyhow::Result<Edited> {
        let now = now();
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let current = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq = ?2"
        ))
        .bind(chat.0)
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await
        .context("loading a message to edit")?;
        if let Some(done) = Edited::needless(current, text) {
            return Ok(done);
        }
        let edited = sqlx::query_as(&format!(
            "UPDATE messages SET text = ?3, edited_at = ?4, {CLEAR_PREVIEW} \
             WHERE chat_id = ?1 AND seq = ?2 RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(chat.0)
        .bind(seq)
        .bind(text.as_str())
        .bind(&now)
        .fetch_one(&mut *tx)
        .await
        .context("editing a message")?;
        let event: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (chat_id, seq, kind, created_at) \
             VALUES (?1, ?2, 'message_edited', ?3) RETURNING id",
        )
        .bind(chat.0)
        .bind(seq)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await
        .context("writing an edit's event to the outbox")?;
        tx.commit().await.context("committing a message edit")?;
        Ok(Edited::Changed(edited, event))
    }

    async fn message(&self, chat: ChatId, seq: i64) -> anyhow::Result<Option<MessageRecord>> {
        let found = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq = ?2"
        ))
        .bind(chat.0)
        .bind(seq)
        .fetch_optional(&self.read)
        .await
        .context("loading a message")?;
        Ok(found)
    }

    async fn messages_after(
        &self,
        chat: ChatId,
        after: i64,
        upto: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<MessageRecord>> {
        let messages = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE chat_id = ?1 AND seq > ?2 AND seq <= ?3 AND deleted_at IS NULL \
             ORDER BY seq ASC LIMIT ?4"
        ))
        .bind(chat.0)
        .bind(after)
        .bind(upto.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .context("reading messages")?;
        Ok(messages)
    }

    async fn messages_before(
        &self,
        chat: ChatId,
        before: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<MessageRecord>> {
        let messages = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE chat_id = ?1 AND seq < ?2 AND deleted_at IS NULL \
             ORDER BY seq DESC LIMIT ?3"
        ))
        .bind(chat.0)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .context("reading messages")?;
        Ok(messages)
    }

    async fn mark_read(&self, chat: ChatId, user_id: i64, seq: i64) -> anyhow::Result<Option<i64>> {
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let stored = sqlx::query_scalar(
            "UPDATE chat_members SET last_read_seq = max(last_read_seq, ?3) \
             WHERE chat_id = ?1 AND user_id = ?2 RETURNING last_read_seq",
        )
        .bind(chat.0)
        .bind(user_id)
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await
        .context("moving a read marker")?;
        tx.commit().await.context("committing a read marker")?;
        Ok(stored)
    }

    async fn add_members(
        &self,
        chat: ChatId,
        members: &[(i64, String)],
        max_members: i64,
    ) -> anyhow::Result<Added> {
        let now = now();
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM chats WHERE id = ?1")
            .bind(chat.0)
            .fetch_optional(&mut *tx)
            .await
            .context("loading a chat")?;
        if exists.is_none() {
            return Ok(Added::NoChat);
        }
        let mut added: Vec<MemberRecord> = Vec::new();
        for (user_id, username) in members {
            let member = sqlx::query_as(
                "INSERT INTO chat_members (chat_id, user_id, username, joined_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING \
                 RETURNING user_id, username, joined_at",
            )
            .bind(chat.0)
            .bind(user_id)
            .bind(username)
            .bind(&now)
            .fetch_optional(&mut *tx)
            .await
            .context("adding chat members")?;
            added.extend(member);
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_members WHERE chat_id = ?1")
            .bind(chat.0)
            .fetch_one(&mut *tx)
            .await
            .context("counting chat members")?;
        if count > max_members {
            tx.rollback().await.context("rolling back an addition")?;
            return Ok(Added::TooMany {
                members: count - added.len() as i64,
            });
        }
        let mut with_events = Vec::with_capacity(added.len());
        for member in added {
            let event: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (chat_id, seq, kind, created_at, user_id) \
                 VALUES (?1, 0, 'member_added', ?2, ?3) RETURNING id",
            )
            .bind(chat.0)
            .bind(&now)
            .bind(member.user_id)
            .fetch_one(&mut *tx)
            .await
            .context("writing member events to the outbox")?;
            with_events.push((member, event));
        }
        tx.commit().await.context("committing new members")?;
        Ok(Added::Members(with_events, count))
    }

    async fn remove_member(&self, chat: ChatId, user_id: i64) -> anyhow::Result<Removed> {
        let now = now();
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let owner: Option<i64> = sqlx::query_scalar("SELECT creator_id FROM chats WHERE id = ?1")
            .bind(chat.0)
            .fetch_optional(&mut *tx)
            .await
            .context("loading a chat")?;
        let Some(owner) = owner else {
            return Ok(Removed::NotMember);
        };
        let gone = sqlx::query("DELETE FROM chat_members WHERE chat_id = ?1 AND user_id = ?2")
            .bind(chat.0)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .context("removing a chat member")?;
        if gone.rows_affected() == 0 {
            return Ok(Removed::NotMember);
        }
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT user_id FROM chat_members WHERE chat_id = ?1 \
             ORDER BY joined_at, user_id LIMIT 1",
        )
        .bind(chat.0)
        .fetch_optional(&mut *tx)
        .await
        .context("finding the next owner")?;
        let Some(next) = next else {
            sqlx::query("DELETE FROM chats WHERE id = ?1")
                .bind(chat.0)
                .execute(&mut *tx)
                .await
                .context("deleting a chat without members")?;
            tx.commit()
                .await
                .context("committing a chat's last removal")?;
            return Ok(Removed::ChatDeleted);
        };
        let new_owner = (owner == user_id).then_some(next);
        if let Some(next) = new_owner {
            sqlx::query("UPDATE chats SET creator_id = ?2 WHERE id = ?1")
                .bind(chat.0)
                .bind(next)
                .execute(&mut *tx)
                .await
                .context("handing a chat to its next owner")?;
        }
        let event: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (chat_id, seq, kind, created_at, user_id) \
             VALUES (?1, 0, 'member_removed', ?2, ?3) RETURNING id",
        )
        .bind(chat.0)
        .bind(&now)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .context("writing a removal's event to the outbox")?;
        tx.commit().await.context("committing a member's removal")?;
        Ok(Removed::Member { event, new_owner })
    }

    async fn chats_of(&self, user_id: i64) -> anyhow::Result<Vec<ChatId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT chat_id FROM chat_members WHERE user_id = ?1 ORDER BY chat_id",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await
        .context("listing a user's chats")?;
        Ok(ids.into_iter().map(ChatId).collect())
    }

    async fn forget_sender(&self, user_id: i64) -> anyhow::Result<u64> {
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let done = sqlx::query(
            "UPDATE messages SET sender_username = '' \
             WHERE sender_id = ?1 AND sender_username <> ''",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .context("forgetting a deleted sender's name")?;
        tx.commit().await.context("committing a forgotten sender")?;
        Ok(done.rows_affected())
    }

    async fn mark_deleted(&self, user_id: i64) -> anyhow::Result<()> {
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        sqlx::query(
            "INSERT INTO deleted_users (user_id, deleted_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(now())
        .execute(&mut *tx)
        .await
        .context("recording a deleted account")?;
        tx.commit().await.context("committing a deleted account")?;
        Ok(())
    }

    async fn is_deleted(&self, user_id: i64) -> anyhow::Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT user_id FROM deleted_users WHERE user_id = ?1")
                .bind(user_id)
                .fetch_optional(&self.read)
                .await
                .context("looking up a deleted account")?;
        Ok(found.is_some())
    }

    async fn deleted_within(&self, within: Duration) -> anyhow::Result<Vec<i64>> {
        let since = shifted(Utc::now(), within, false);
        let ids = sqlx::query_scalar(
            "SELECT user_id FROM deleted_users WHERE deleted_at > ?1 ORDER BY user_id",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await
        .context("listing recently deleted accounts")?;
        Ok(ids)
    }

    async fn applied_deletion(&self) -> anyhow::Result<i64> {
        let id =
            sqlx::query_scalar("SELECT last_deletion FROM user_deletions_applied WHERE id = 1")
                .fetch_one(&self.read)
                .await
                .context("reading the last applied account deletion")?;
        Ok(id)
    }

    async fn set_applied_deletion(&self, id: i64) -> anyhow::Result<()> {
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        sqlx::query(
            "UPDATE user_deletions_applied SET last_deletion = max(last_deletion, ?1) WHERE id = 1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("recording applied account deletions")?;
        tx.commit()
            .await
            .context("committing applied account deletions")?;
        Ok(())
    }

    async fn last_seq(&self, chat: ChatId) -> anyhow::Result<Option<i64>> {
        let seq = sqlx::query_scalar("SELECT last_seq FROM chats WHERE id = ?1")
            .bind(chat.0)
            .fetch_optional(&self.read)
            .await
            .context("reading the chat's last seq")?;
        Ok(seq)
    }

    async fn claim_events(
        &self,
        older_than: Duration,
        claim_for: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<OutboxEvent>> {
        let now = Utc::now();
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let mut events: Vec<OutboxEvent> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = ?2 \
             WHERE id IN ( \
                 SELECT id FROM outbox \
                 WHERE created_at < ?1 AND (claimed_until IS NULL OR claimed_until < ?3) \
                   AND kind IN (SELECT value FROM json_each(?5)) \
                 ORDER BY id LIMIT ?4) \
             RETURNING id, chat_id, seq, kind, COALESCE(user_id, 0) AS user_id, members_version",
        )
        .bind(shifted(now, older_than, false))
        .bind(shifted(now, claim_for, true))
        .bind(sqlite_time(now))
        .bind(limit)
        .bind(EventKind::known_json())
        .fetch_all(&mut *tx)
        .await
        .context("claiming outbox rows")?;
        tx.commit().await.context("committing outbox claims")?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    async fn events_published(&self, ids: &[EventId]) -> anyhow::Result<()> {
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        for id in ids {
            sqlx::query("DELETE FROM outbox WHERE id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .context("removing published outbox rows")?;
        }
        tx.commit()
            .await
            .context("committing the removal of published outbox rows")?;
        Ok(())
    }

    async fn set_link_preview(
        &self,
        chat: ChatId,
        seq: i64,
        text: &str,
        preview: &Preview,
    ) -> anyhow::Result<Option<EventId>> {
        let now = now();
        let mut tx = begin_write(&self.write)
            .await
            .context("starting a transaction")?;
        let updated = sqlx::query(
            "UPDATE messages SET preview_url = ?4, preview_title = ?5, \
             preview_description = ?6, preview_image_url = ?7, preview_site_name = ?8 \
             WHERE chat_id = ?1 AND seq = ?2 AND text = ?3 AND deleted_at IS NULL",
        )
        .bind(chat.0)
        .bind(seq)
        .bind(text)
        .bind(&preview.url)
        .bind(&preview.title)
        .bind(&preview.description)
        .bind(&preview.image_url)
        .bind(&preview.site_name)
        .execute(&mut *tx)
        .await
        .context("storing a link preview")?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        let event: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (chat_id, seq, kind, created_at) \
             VALUES (?1, ?2, 'message_previewed', ?3) RETURNING id",
        )
        .bind(chat.0)
        .bind(seq)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await
        .context("writing a preview's event to the outbox")?;
        tx.commit().await.context("committing a link preview")?;
        Ok(Some(event))
    }
}
