//! The PostgreSQL backend of [`ChatStore`](super::ChatStore).
//!
//! Messages are written in groups. A chat's `last_seq` row lock orders its senders on every
//! replica, so one busy chat could take only one message per commit: its senders queued
//! at the lock, each waiting for the previous one's statement and commit. Every
//! `insert_message` therefore goes through a [`Batcher`]: what concurrent senders asked
//! while the previous group was in the database is written by one statement (several
//! chats at once), which takes each chat's lock once, advances its `last_seq` by the
//! number of its senders that are members and stores all the messages and their outbox
//! rows with multi-row inserts. Each sender is answered after that commit. A lone sender
//! goes through the one-message statement at once, so a quiet chat pays nothing for it.

use anyhow::Context;
use async_trait::async_trait;
use chat_common::batch::Batcher;

use super::PendingMessage as Pending;
use sqlx::{FromRow, PgPool, Row};

use std::{sync::LazyLock, time::Duration};

use super::{
    millis, Added, ChatCursor, ChatRecord, ChatStore, Deleted, Edited, EventId, EventKind,
    HistoryFrom, Inserted, MemberRecord, MessageRecord, NewMessage, OutboxEvent, Removed,
};
use crate::domain::{ChatId, MessageText, Title};
use link_preview::Preview;

/// The PostgreSQL schema of the chats.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/chat");

/// Chats on PostgreSQL, for the split deployment.
pub struct PgChatStore {
    pool: PgPool,
    /// Groups concurrent `insert_message` calls into one statement (see the module docs).
    messages: Batcher<Pending, anyhow::Result<Inserted>>,
}

/// Most messages one group statement writes. Under 16 busy senders a group holds about
/// as many messages as there are senders waiting on this replica, far below this; the
/// bound only keeps one statement (its arrays, its row locks, the time the chat is
/// locked) small when thousands of senders pile up, so that the lock is handed on often.
const MAX_BATCH: usize = 64;
/// Groups in the database at once, per replica. Two: while one group holds a busy chat's
/// lock (its statement and commit), the next is already in PostgreSQL waiting for it, so
/// the lock is handed on without a round trip in between, and senders arriving meanwhile
/// gather into the group after that. More would only split the same senders into smaller
/// groups queued behind the same lock (more commits for the same messages), and take
/// more connections from a pool that reads also need; with several chats in one group a
/// second slot also keeps a group waiting for one chat's lock from holding up the rest.
const IN_FLIGHT: usize = 2;

impl PgChatStore {
    /// Starts the message batcher, so it must run inside a Tokio runtime.
    pub fn new(pool: PgPool) -> Self {
        let writer = pool.clone();
        let messages = Batcher::start("chat_messages", MAX_BATCH, IN_FLIGHT, move |items| {
            let pool = writer.clone();
            async move { insert_group(&pool, items).await }
        });
        Self { pool, messages }
    }

    /// Writes `msgs` as one group, in one statement, as the batcher does for concurrent
    /// senders, but without its fallback: when any message breaks a constraint (an
    /// idempotency key used before, or twice among `msgs`) the whole statement fails and
    /// nothing is stored. For tests that need to know what one group does.
    pub async fn insert_batch(&self, msgs: &[NewMessage<'_>]) -> anyhow::Result<Vec<Inserted>> {
        let items: Vec<Pending> = msgs.iter().map(Pending::from).collect();
        insert_many(&self.pool, &items).await
    }
}

/// The batcher's handler: one output per item, or an error for the whole group.
///
/// One item takes the one-message statement, which also answers a repeated idempotency
/// key. Several take [`insert_many`]; when it fails on a constraint (a key stored before
/// or repeated in the group) the error fails the group and the batcher runs each item
/// again alone, so every key is answered by the one-message path. (When the database is
/// unreachable the batcher answers every caller UNAVAILABLE at once instead.)
async fn insert_group(
    pool: &PgPool,
    items: Vec<Pending>,
) -> anyhow::Result<Vec<anyhow::Result<Inserted>>> {
    if let [one] = items.as_slice() {
        return Ok(vec![insert_one(pool, one).await]);
    }
    Ok(insert_many(pool, &items)
        .await?
        .into_iter()
        .map(Ok)
        .collect())
}

const CHAT_COLUMNS: &str =
    "c.id, c.title, c.creator_id, c.created_at, c.last_seq, c.last_activity_at, \
     (SELECT count(*)::int FROM chat_members m WHERE m.chat_id = c.id) AS member_count, \
     c.members_version";
/// The caller's read marker and unread count, for queries that join the caller's
/// membership row as `me`: one correlated count per chat row, inside the same query (the
/// primary key (chat_id, seq) bounds it to the chat's messages after the marker).
const READ_COLUMNS: &str = "me.last_read_seq, \
     (SELECT count(*) FROM messages u WHERE u.chat_id = c.id AND u.seq > me.last_read_seq \
      AND u.deleted_at IS NULL AND u.sender_id <> me.user_id) AS unread_count";
/// The same columns where no member asks (a service caller, a new chat).
const NO_READ_COLUMNS: &str = "0::bigint AS last_read_seq, 0::bigint AS unread_count";
const MESSAGE_COLUMNS: &str =
    "chat_id, seq, sender_id, sender_username, text, created_at, edited_at, \
     deleted_at IS NOT NULL AS deleted, \
     preview_url, preview_title, preview_description, preview_image_url, preview_site_name";

/// [`ChatStore::history_for_member`]'s statement: `$2`'s membership row in chat `$1`
/// (always one row out, `member` false without one) and, for a member, the live messages
/// after seq `$3` taken in `order` (the latest first, or the oldest first after a resume),
/// at most `$4`, handed out oldest first.
fn history_for_member_sql(order: &str) -> String {
    format!(
        "SELECT me.user_id IS NOT NULL AS member, m.* \
         FROM (SELECT 1) one \
         LEFT JOIN chat_members me ON me.chat_id = $1 AND me.user_id = $2 \
         LEFT JOIN LATERAL ( \
             SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE chat_id = $1 AND seq > $3 AND deleted_at IS NULL \
               AND me.user_id IS NOT NULL \
             ORDER BY seq {order} LIMIT $4) m ON true \
         ORDER BY m.seq"
    )
}

static HISTORY_LATEST: LazyLock<String> = LazyLock::new(|| history_for_member_sql("DESC"));
static HISTORY_AFTER: LazyLock<String> = LazyLock::new(|| history_for_member_sql("ASC"));

/// An edit's text has a preview of its own to come, not the old text's.
const CLEAR_PREVIEW: &str = "preview_url = NULL, preview_title = NULL, \
     preview_description = NULL, preview_image_url = NULL, preview_site_name = NULL";

/// One message in one statement, one round trip: the UPDATE takes the chat's row lock
/// (ordering concurrent senders on any replica) and the next seq, only when the sender is a
/// member; the INSERT stores the message under that seq, and the outbox row of its event.
/// As a single statement it commits or rolls back whole, so a failed insert never leaves a
/// gap, and a stored message always has its event. A repeated idempotency key answers
/// with the first message.
async fn insert_one(pool: &PgPool, msg: &Pending) -> anyhow::Result<Inserted> {
    let res = sqlx::query(&format!(
        "WITH next AS ( \
             UPDATE chats SET last_seq = last_seq + 1, last_activity_at = now() \
             WHERE id = $1 AND EXISTS ( \
                 SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2) \
             RETURNING last_seq, members_version), \
         ins AS ( \
             INSERT INTO messages (chat_id, seq, sender_id, sender_username, text, idempotency_key) \
             SELECT $1, next.last_seq, $2, \
                    COALESCE(NULLIF($3, ''), (SELECT username FROM chat_members \
                                              WHERE chat_id = $1 AND user_id = $2)), \
                    $4, $5 FROM next \
             RETURNING {MESSAGE_COLUMNS}), \
         event AS ( \
             INSERT INTO outbox (chat_id, seq, kind, members_version) \
             SELECT ins.chat_id, ins.seq, 'message_created', next.members_version \
             FROM ins, next RETURNING id) \
         SELECT ins.*, event.id AS event_id, next.members_version \
         FROM ins, event, next"
    ))
    .bind(msg.chat_id)
    .bind(msg.sender_id)
    .bind(&msg.sender_username)
    .bind(&msg.text)
    .bind(&msg.idempotency_key)
    .fetch_optional(pool)
    .await;
    match res {
        Ok(Some(row)) => Ok(Inserted::New(
            MessageRecord::from_row(&row)?,
            row.try_get("event_id")?,
        )),
        Ok(None) => Ok(Inserted::NoChat),
        // The idempotency key was used before (or by a concurrent retry that won):
        // the statement rolled back whole; answer with the first message.
        Err(sqlx::Error::Database(db))
            if db.is_unique_violation() && msg.idempotency_key.is_some() =>
        {
            let key = msg.idempotency_key.as_deref();
            let earlier = sqlx::query_as(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = $1 AND sender_id = $2 AND idempotency_key = $3"
            ))
            .bind(msg.chat_id)
            .bind(msg.sender_id)
            .bind(key)
            .fetch_one(pool)
            .await
            .context("reading the message an idempotency key names")?;
            Ok(Inserted::Duplicate(earlier))
        }
        Err(e) => Err(anyhow::Error::new(e).context("inserting a message")),
    }
}

/// Several messages, possibly of several chats, in one statement and one commit.
///
/// `locked` takes the row lock of every chat named, in id order, so that two groups (or a
/// group and a membership change, which locks one chat row) never wait on each other in
/// a cycle. Then, per chat: the senders that are members (checked in this statement, as
/// the one-message path does, so a removal committed before the statement began is
/// seen) are numbered in the group's order, `last_seq` grows by their count (the UPDATE
/// reads the row as the lock left it), and they take the seqs after the old `last_seq`:
/// gapless, and a sender's seq is its place in the group. Messages and their outbox rows go
/// in with one multi-row INSERT each. A sender that is not a member, or whose chat is
/// gone, gets no row: [`Inserted::NoChat`]. Any constraint broken (an idempotency key stored
/// before, or twice in the group) fails the whole statement, which stores nothing.
async fn insert_many(pool: &PgPool, items: &[Pending]) -> anyhow::Result<Vec<Inserted>> {
    let chats: Vec<i64> = items.iter().map(|m| m.chat_id).collect();
    let senders: Vec<i64> = items.iter().map(|m| m.sender_id).collect();
    let names: Vec<&str> = items.iter().map(|m| m.sender_username.as_str()).collect();
    let texts: Vec<&str> = items.iter().map(|m| m.text.as_str()).collect();
    let keys: Vec<Option<&str>> = items.iter().map(|m| m.idempotency_key.as_deref()).collect();
    let rows = sqlx::query(&format!(
        "WITH items AS ( \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[]) \
             WITH ORDINALITY AS t(chat_id, sender_id, sender_username, text, idempotency_key, idx)), \
         locked AS MATERIALIZED ( \
             SELECT id FROM chats WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE), \
         allowed AS ( \
             SELECT i.chat_id, i.sender_id, \
                    COALESCE(NULLIF(i.sender_username, ''), m.username) AS sender_username, \
                    i.text, i.idempotency_key, i.idx, \
                    row_number() OVER (PARTITION BY i.chat_id ORDER BY i.idx) AS nth \
             FROM items i JOIN locked l ON l.id = i.chat_id \
             JOIN chat_members m ON m.chat_id = i.chat_id AND m.user_id = i.sender_id), \
         bump AS ( \
             UPDATE chats c SET last_seq = c.last_seq + k.n, last_activity_at = now() \
             FROM (SELECT chat_id, count(*) AS n FROM allowed GROUP BY chat_id) k \
             WHERE c.id = k.chat_id \
             RETURNING c.id, c.last_seq - k.n AS base, c.members_version), \
         ins AS ( \
             INSERT INTO messages (chat_id, seq, sender_id, sender_username, text, idempotency_key) \
             SELECT a.chat_id, b.base + a.nth, a.sender_id, a.sender_username, a.text, \
                    a.idempotency_key \
             FROM allowed a JOIN bump b ON b.id = a.chat_id ORDER BY 1, 2 \
             RETURNING {MESSAGE_COLUMNS}), \
         event AS ( \
             INSERT INTO outbox (chat_id, seq, kind, members_version) \
             SELECT ins.chat_id, ins.seq, 'message_created', b.members_version \
             FROM ins JOIN bump b ON b.id = ins.chat_id ORDER BY ins.chat_id, ins.seq \
             RETURNING id, chat_id, seq) \
         SELECT a.idx, ins.*, event.id AS event_id, b.members_version \
         FROM allowed a JOIN bump b ON b.id = a.chat_id \
         JOIN ins ON ins.chat_id = a.chat_id AND ins.seq = b.base + a.nth \
         JOIN event ON event.chat_id = ins.chat_id AND event.seq = ins.seq"
    ))
    .bind(&chats)
    .bind(&senders)
    .bind(&names)
    .bind(&texts)
    .bind(&keys)
    .fetch_all(pool)
    .await
    .context("inserting a group of messages")?;
    let mut out: Vec<Inserted> = items.iter().map(|_| Inserted::NoChat).collect();
    for row in &rows {
        let idx: i64 = row.try_get("idx")?;
        let slot = usize::try_from(idx - 1)
            .ok()
            .and_then(|i| out.get_mut(i))
            .with_context(|| format!("a group's row names item {idx} of {}", items.len()))?;
        *slot = Inserted::New(MessageRecord::from_row(row)?, row.try_get("event_id")?);
    }
    Ok(out)
}

#[async_trait]
impl ChatStore for PgChatStore {
    async fn create_chat(
        &self,
        creator_id: i64,
        title: &Title,
        members: &[(i64, String)],
    ) -> anyhow::Result<ChatRecord> {
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO chats (title, creator_id) VALUES ($1, $2) RETURNING id",
        )
        .bind(title.as_str())
        .bind(creator_id)
        .fetch_one(&mut *tx)
        .await
        .context("inserting a chat")?;
        let ids: Vec<i64> = members.iter().map(|(id, _)| *id).collect();
        let names: Vec<&str> = members.iter().map(|(_, n)| n.as_str()).collect();
        sqlx::query(
            "INSERT INTO chat_members (chat_id, user_id, username) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&ids)
        .bind(&names)
        .execute(&mut *tx)
        .await
        .context("inserting chat members")?;
        let chat = sqlx::query_as(&format!(
            "SELECT {CHAT_COLUMNS}, {NO_READ_COLUMNS} FROM chats c WHERE c.id = $1"
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
             JOIN chat_members me ON me.chat_id = c.id AND me.user_id = $2 WHERE c.id = $1"
        ))
        .bind(chat.0)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .context("loading a chat for a member")?;
        Ok(found)
    }

    async fn chat(&self, chat: ChatId) -> anyhow::Result<Option<ChatRecord>> {
        let found = sqlx::query_as(&format!(
            "SELECT {CHAT_COLUMNS}, {NO_READ_COLUMNS} FROM chats c WHERE c.id = $1"
        ))
        .bind(chat.0)
        .fetch_optional(&self.pool)
        .await
        .context("loading a chat")?;
        Ok(found)
    }

    async fn delete_chat(&self, chat: ChatId) -> anyhow::Result<bool> {
        let res = sqlx::query("DELETE FROM chats WHERE id = $1")
            .bind(chat.0)
            .execute(&self.pool)
            .await
            .context("deleting a chat")?;
        Ok(res.rows_affected() > 0)
    }

    async fn list_chats(
        &self,
        user_id: i64,
        limit: i64,
        cursor: Option<ChatCursor>,
    ) -> anyhow::Result<Vec<ChatRecord>> {
        let (micros, id) = cursor
            .map(|c| (c.last_activity_micros, c.id))
            .unwrap_or((i64::MAX, i64::MAX));
        let chats = sqlx::query_as(&format!(
            "SELECT {CHAT_COLUMNS}, {READ_COLUMNS} FROM chats c \
             JOIN chat_members me ON me.chat_id = c.id AND me.user_id = $1 \
             WHERE (floor(extract(epoch FROM c.last_activity_at) * 1000000)::bigint, c.id) < ($2, $3) \
             ORDER BY c.last_activity_at DESC, c.id DESC LIMIT $4"
        ))
        .bind(user_id)
        .bind(micros)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("listing chats")?;
        Ok(chats)
    }

    async fn list_members(&self, chat: ChatId) -> anyhow::Result<Vec<MemberRecord>> {
        let members = sqlx::query_as(
            "SELECT user_id, username, joined_at FROM chat_members WHERE chat_id = $1 ORDER BY joined_at, user_id",
        )
        .bind(chat.0)
        .fetch_all(&self.pool)
        .await
        .context("listing members")?;
        Ok(members)
    }

    async fn member(&self, chat: ChatId, user_id: i64) -> anyhow::Result<Option<MemberRecord>> {
        let found = sqlx::query_as(
            "SELECT user_id, username, joined_at FROM chat_members WHERE chat_id = $1 AND user_id = $2",
        )
        .bind(chat.0)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .context("loading a member")?;
        Ok(found)
    }

    async fn insert_message(&self, msg: NewMessage<'_>) -> anyhow::Result<Inserted> {
        // Answered after the commit of the group this message joins (see the module docs).
        self.messages.run(Pending::from(&msg)).await?
    }

    async fn delete_message(&self, chat: ChatId, seq: i64) -> anyhow::Result<Option<Deleted>> {
        // One statement: the deletion and, when the message was live, its event's row.
        let row = sqlx::query(
            "WITH del AS ( \
                 UPDATE messages m SET deleted_at = COALESCE(m.deleted_at, now()), text = '', \
                 preview_url = NULL, preview_title = NULL, preview_description = NULL, \
                 preview_image_url = NULL, preview_site_name = NULL \
                 FROM messages old WHERE m.chat_id = $1 AND m.seq = $2 \
                 AND old.chat_id = m.chat_id AND old.seq = m.seq \
                 RETURNING old.chat_id, old.seq, old.sender_id, old.sender_username, old.text, \
                 old.created_at, old.edited_at, old.deleted_at IS NOT NULL AS deleted, \
                 old.preview_url, old.preview_title, old.preview_description, \
                 old.preview_image_url, old.preview_site_name), \
             event AS ( \
                 INSERT INTO outbox (chat_id, seq, kind) \
                 SELECT chat_id, seq, 'message_deleted' FROM del WHERE NOT deleted RETURNING id) \
             SELECT del.*, (SELECT id FROM event) AS event_id FROM del",
        )
        .bind(chat.0)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .context("deleting a message")?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Deleted {
            before: MessageRecord::from_row(&row)?,
            event: row.try_get("event_id")?,
        }))
    }

    async fn edit_message(
        &self,
        chat: ChatId,
        seq: i64,
        text: &MessageText,
    ) -> anyhow::Result<Edited> {
        // The row lock orders concurrent edits (and a concurrent deletion) of one message.
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let current = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = $1 AND seq = $2 FOR UPDATE"
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
            "UPDATE messages SET text = $3, edited_at = now(), {CLEAR_PREVIEW} \
             WHERE chat_id = $1 AND seq = $2 RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(chat.0)
        .bind(seq)
        .bind(text.as_str())
        .fetch_one(&mut *tx)
        .await
        .context("editing a message")?;
        let event: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (chat_id, seq, kind) VALUES ($1, $2, 'message_edited') RETURNING id",
        )
        .bind(chat.0)
        .bind(seq)
        .fetch_one(&mut *tx)
        .await
        .context("writing an edit's event to the outbox")?;
        tx.commit().await.context("committing a message edit")?;
        Ok(Edited::Changed(edited, event))
    }

    async fn message(&self, chat: ChatId, seq: i64) -> anyhow::Result<Option<MessageRecord>> {
        let found = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = $1 AND seq = $2"
        ))
        .bind(chat.0)
        .bind(seq)
        .fetch_optional(&self.pool)
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
             WHERE chat_id = $1 AND seq > $2 AND seq <= $3 AND deleted_at IS NULL \
             ORDER BY seq ASC LIMIT $4"
        ))
        .bind(chat.0)
        .bind(after)
        .bind(upto.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
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
             WHERE chat_id = $1 AND seq < $2 AND deleted_at IS NULL \
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind(chat.0)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading messages")?;
        Ok(messages)
    }

    /// One statement: the caller's membership row (none: not a member) and, only when
    /// there is one, the page of messages beside it; a member of a chat without messages
    /// gets one row without a message.
    async fn history_for_member(
        &self,
        chat: ChatId,
        user_id: i64,
        from: HistoryFrom,
    ) -> anyhow::Result<Option<Vec<MessageRecord>>> {
        let (sql, after, limit) = match from {
            HistoryFrom::Latest(limit) => (&*HISTORY_LATEST, 0, limit),
            HistoryFrom::After(seq, limit) => (&*HISTORY_AFTER, seq, limit),
        };
        let rows = sqlx::query(sql)
            .bind(chat.0)
            .bind(user_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .context("reading a member's history")?;
        let member = match rows.first() {
            Some(row) => row.try_get::<bool, _>("member")?,
            None => false,
        };
        if !member {
            return Ok(None);
        }
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<i64>, _>("seq")?.is_some() {
                page.push(MessageRecord::from_row(row)?);
            }
        }
        Ok(Some(page))
    }

    async fn mark_read(&self, chat: ChatId, user_id: i64, seq: i64) -> anyhow::Result<Option<i64>> {
        let stored = sqlx::query_scalar(
            "UPDATE chat_members SET last_read_seq = GREATEST(last_read_seq, $3) \
             WHERE chat_id = $1 AND user_id = $2 RETURNING last_read_seq",
        )
        .bind(chat.0)
        .bind(user_id)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .context("moving a read marker")?;
        Ok(stored)
    }

    async fn add_members(
        &self,
        chat: ChatId,
        members: &[(i64, String)],
        max_members: i64,
    ) -> anyhow::Result<Added> {
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        // The chat's row lock orders this with removals and other additions, so the count
        // below stays true until the commit.
        let locked: Option<i64> =
            sqlx::query_scalar("SELECT id FROM chats WHERE id = $1 FOR UPDATE")
                .bind(chat.0)
                .fetch_optional(&mut *tx)
                .await
                .context("locking a chat")?;
        if locked.is_none() {
            return Ok(Added::NoChat);
        }
        let ids: Vec<i64> = members.iter().map(|(id, _)| *id).collect();
        let names: Vec<&str> = members.iter().map(|(_, n)| n.as_str()).collect();
        let added: Vec<MemberRecord> = sqlx::query_as(
            "INSERT INTO chat_members (chat_id, user_id, username) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::text[]) ON CONFLICT DO NOTHING \
             RETURNING user_id, username, joined_at",
        )
        .bind(chat.0)
        .bind(&ids)
        .bind(&names)
        .fetch_all(&mut *tx)
        .await
        .context("adding chat members")?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_members WHERE chat_id = $1")
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
        let added_ids: Vec<i64> = added.iter().map(|m| m.user_id).collect();
        let events: Vec<(i64, i64)> = sqlx::query_as(
            "INSERT INTO outbox (chat_id, seq, kind, user_id) \
             SELECT $1, 0, 'member_added', u FROM UNNEST($2::bigint[]) AS t(u) \
             RETURNING user_id, id",
        )
        .bind(chat.0)
        .bind(&added_ids)
        .fetch_all(&mut *tx)
        .await
        .context("writing member events to the outbox")?;
        tx.commit().await.context("committing new members")?;
        let events: std::collections::HashMap<i64, i64> = events.into_iter().collect();
        let added = added
            .into_iter()
            .filter_map(|m| events.get(&m.user_id).map(|&event| (m, event)))
            .collect();
        Ok(Added::Members(added, count))
    }

    async fn remove_member(&self, chat: ChatId, user_id: i64) -> anyhow::Result<Removed> {
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let owner: Option<i64> =
            sqlx::query_scalar("SELECT creator_id FROM chats WHERE id = $1 FOR UPDATE")
                .bind(chat.0)
                .fetch_optional(&mut *tx)
                .await
                .context("locking a chat")?;
        let Some(owner) = owner else {
            return Ok(Removed::NotMember);
        };
        let gone = sqlx::query("DELETE FROM chat_members WHERE chat_id = $1 AND user_id = $2")
            .bind(chat.0)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .context("removing a chat member")?;
        if gone.rows_affected() == 0 {
            return Ok(Removed::NotMember);
        }
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT user_id FROM chat_members WHERE chat_id = $1 \
             ORDER BY joined_at, user_id LIMIT 1",
        )
        .bind(chat.0)
        .fetch_optional(&mut *tx)
        .await
        .context("finding the next owner")?;
        let Some(next) = next else {
            sqlx::query("DELETE FROM chats WHERE id = $1")
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
            sqlx::query("UPDATE chats SET creator_id = $2 WHERE id = $1")
                .bind(chat.0)
                .bind(next)
                .execute(&mut *tx)
                .await
                .context("handing a chat to its next owner")?;
        }
        let event: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (chat_id, seq, kind, user_id) \
             VALUES ($1, 0, 'member_removed', $2) RETURNING id",
        )
        .bind(chat.0)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .context("writing a removal's event to the outbox")?;
        tx.commit().await.context("committing a member's removal")?;
        Ok(Removed::Member { event, new_owner })
    }

    async fn chats_of(&self, user_id: i64) -> anyhow::Result<Vec<ChatId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT chat_id FROM chat_members WHERE user_id = $1 ORDER BY chat_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .context("listing a user's chats")?;
        Ok(ids.into_iter().map(ChatId).collect())
    }

    async fn forget_sender(&self, user_id: i64) -> anyhow::Result<u64> {
        // No index on sender_id (it would cost every send): account deletions are rare,
        // and this runs off any request's path.
        let done = sqlx::query(
            "UPDATE messages SET sender_username = '' \
             WHERE sender_id = $1 AND sender_username <> ''",
        )
        .bind(user_id)
        .execute(&self.pool)
        .await
        .context("forgetting a deleted sender's name")?;
        Ok(done.rows_affected())
    }

    async fn mark_deleted(&self, user_id: i64) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO deleted_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .execute(&self.pool)
            .await
            .context("recording a deleted account")?;
        Ok(())
    }

    async fn is_deleted(&self, user_id: i64) -> anyhow::Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT user_id FROM deleted_users WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .context("looking up a deleted account")?;
        Ok(found.is_some())
    }

    async fn deleted_within(&self, within: Duration) -> anyhow::Result<Vec<i64>> {
        let ids = sqlx::query_scalar(
            "SELECT user_id FROM deleted_users \
             WHERE deleted_at > now() - $1 * interval '1 millisecond' ORDER BY user_id",
        )
        .bind(millis(within) as f64)
        .fetch_all(&self.pool)
        .await
        .context("listing recently deleted accounts")?;
        Ok(ids)
    }

    async fn applied_deletion(&self) -> anyhow::Result<i64> {
        let id =
            sqlx::query_scalar("SELECT last_deletion FROM user_deletions_applied WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .context("reading the last applied account deletion")?;
        Ok(id)
    }

    async fn set_applied_deletion(&self, id: i64) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE user_deletions_applied SET last_deletion = GREATEST(last_deletion, $1) WHERE id = 1",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .context("recording applied account deletions")?;
        Ok(())
    }

    async fn last_seq(&self, chat: ChatId) -> anyhow::Result<Option<i64>> {
        let seq = sqlx::query_scalar("SELECT last_seq FROM chats WHERE id = $1")
            .bind(chat.0)
            .fetch_optional(&self.pool)
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
        let mut events: Vec<OutboxEvent> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = now() + $2 * interval '1 millisecond' \
             WHERE id IN ( \
                 SELECT id FROM outbox \
                 WHERE created_at < now() - $1 * interval '1 millisecond' \
                 AND (claimed_until IS NULL OR claimed_until < now()) \
                 AND kind IN (SELECT jsonb_array_elements_text($4::jsonb)) \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, chat_id, seq, kind, COALESCE(user_id, 0) AS user_id, members_version",
        )
        .bind(millis(older_than) as f64)
        .bind(millis(claim_for) as f64)
        .bind(limit)
        .bind(EventKind::known_json())
        .fetch_all(&self.pool)
        .await
        .context("claiming outbox rows")?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    async fn events_published(&self, ids: &[EventId]) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .context("removing published outbox rows")?;
        Ok(())
    }

    async fn set_link_preview(
        &self,
        chat: ChatId,
        seq: i64,
        text: &str,
        preview: &Preview,
    ) -> anyhow::Result<Option<EventId>> {
        // One statement: the preview and its event's row, or neither.
        let event = sqlx::query_scalar(
            "WITH upd AS ( \
                 UPDATE messages SET preview_url = $4, preview_title = $5, \
                 preview_description = $6, preview_image_url = $7, preview_site_name = $8 \
                 WHERE chat_id = $1 AND seq = $2 AND text = $3 AND deleted_at IS NULL \
                 RETURNING chat_id, seq) \
             INSERT INTO outbox (chat_id, seq, kind) \
             SELECT chat_id, seq, 'message_previewed' FROM upd RETURNING id",
        )
        .bind(chat.0)
        .bind(seq)
        .bind(text)
        .bind(&preview.url)
        .bind(&preview.title)
        .bind(&preview.description)
        .bind(&preview.image_url)
        .bind(&preview.site_name)
        .fetch_optional(&self.pool)
        .await
        .context("storing a link preview")?;
        Ok(event)
    }
}
