//! Where chats and messages live. Service logic talks to [`ChatStore`]; `postgres` and
//! `sqlite` implement it, and [`open`] picks one by the database URL. The store makes each step atomic (a message and its seq in one
//! transaction; the idempotency check under the chat's row lock; a change and the outbox
//! row of its event in one transaction) and holds no policy.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chat_common::{
    db::{Database, Migrations},
    Shutdown,
};
use chrono::{DateTime, Utc};

use crate::domain::{ChatId, IdempotencyKey, MessageText, Title};
use link_preview::Preview;

pub mod postgres;
pub mod sqlite;

/// Both engines' migrations of the chat database.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &postgres::MIGRATOR,
    sqlite: &sqlite::MIGRATOR,
    postgres_settings: &[],
};

/// The store at `url` (`postgres://...` or `sqlite://...`) with at most `max_connections`,
/// the database created when missing and migrated; its pool monitors run on `shutdown`.
pub async fn open(
    url: &str,
    max_connections: u32,
    shutdown: &Shutdown,
) -> anyhow::Result<Arc<dyn ChatStore>> {
    Ok(
        match MIGRATIONS.open(url, max_connections, shutdown).await? {
            Database::Postgres(pool) => Arc::new(postgres::PgChatStore::new(pool)),
            Database::Sqlite(pool) => Arc::new(sqlite::SqliteChatStore::new(pool).await?),
        },
    )
}

/// Creates the database at `url` when missing and applies the migrations, then returns.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    MIGRATIONS.apply(url).await
}

// Row mapping, once for both engines: each record derives `sqlx::FromRow`, which maps a
// row of either engine by column name (the queries name their columns after the fields).
// Both engines decode every column into the same Rust type: times are `timestamptz` on
// PostgreSQL and RFC 3339 text on SQLite, and sqlx decodes either into a `DateTime<Utc>`.

/// A chat as one of its members sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChatRecord {
    /// The chat's id.
    pub id: i64,
    /// Its title; empty when it has none.
    pub title: String,
    /// The user who created it (the owner until they leave).
    pub creator_id: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The newest message's sequence number; 0 before the first.
    pub last_seq: i64,
    /// When it last got a message (its creation time before the first); lists sort by it.
    pub last_activity_at: DateTime<Utc>,
    /// Members now.
    pub member_count: i32,
    /// How many times its membership has changed: every join and every leave bumps it
    /// (see `migrations/chat/0007_members_version.sql`).
    pub members_version: i64,
    /// The asking member's read marker (0 where no member asks: see `READ_COLUMNS`).
    pub last_read_seq: i64,
    /// The asking member's live messages after `last_read_seq` that others sent.
    pub unread_count: i64,
}

/// A member of a chat.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRecord {
    /// The member's user id.
    pub user_id: i64,
    /// Their username.
    pub username: String,
    /// When they joined.
    pub joined_at: DateTime<Utc>,
}

/// A stored message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRecord {
    /// Its chat.
    pub chat_id: i64,
    /// Its sequence number: gapless and increasing within the chat, from 1.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: i64,
    /// The sender's username.
    pub sender_username: String,
    /// Its text; empty once deleted.
    pub text: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When the text was last replaced by an edit; None when it never was.
    pub edited_at: Option<DateTime<Utc>>,
    /// Deleted: kept for its seq, without its text.
    pub deleted: bool,
    /// The preview of the text's first https URL, once fetched (see `preview.rs`).
    #[sqlx(flatten, try_from = "PreviewColumns")]
    pub link_preview: Option<Preview>,
    /// The chat's membership version the message was stored under: only on the record an
    /// insert returns (None on every read), to go out with the message's event.
    #[sqlx(default)]
    pub members_version: Option<i64>,
}

/// A message row's link preview columns, as a [`MessageRecord`] reads them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PreviewColumns {
    /// The previewed URL; NULL when the message has no preview.
    pub preview_url: Option<String>,
    /// The page's title.
    pub preview_title: Option<String>,
    /// The page's description.
    pub preview_description: Option<String>,
    /// The page's image.
    pub preview_image_url: Option<String>,
    /// The site's name.
    pub preview_site_name: Option<String>,
}

/// The preview, when the row has one (a URL).
impl From<PreviewColumns> for Option<Preview> {
    fn from(columns: PreviewColumns) -> Self {
        Some(Preview {
            url: columns.preview_url?,
            title: columns.preview_title.unwrap_or_default(),
            description: columns.preview_description.unwrap_or_default(),
            image_url: columns.preview_image_url.unwrap_or_default(),
            site_name: columns.preview_site_name.unwrap_or_default(),
        })
    }
}

/// A message to store.
pub struct NewMessage<'a> {
    /// The chat to store it in.
    pub chat_id: ChatId,
    /// Who sends it; the store checks they are a member.
    pub sender_id: i64,
    /// The sender's username, stored with the message; empty: the name they have as a
    /// member of the chat, read by the insert that checks their membership.
    pub sender_username: &'a str,
    /// Its text, already valid.
    pub text: &'a MessageText,
    /// The sender's key for retries; None: every call stores a new message.
    pub idempotency_key: Option<&'a IdempotencyKey>,
}

/// A [`NewMessage`] with what it borrows owned, for the stores' writers (the SQLite group
/// writer, the PostgreSQL batcher), whose tasks outlive the caller's borrow.
#[derive(Clone)]
pub(crate) struct PendingMessage {
    pub(crate) chat_id: i64,
    pub(crate) sender_id: i64,
    pub(crate) sender_username: String,
    pub(crate) text: String,
    pub(crate) idempotency_key: Option<String>,
}

impl From<&NewMessage<'_>> for PendingMessage {
    fn from(msg: &NewMessage<'_>) -> Self {
        Self {
            chat_id: msg.chat_id.0,
            sender_id: msg.sender_id,
            sender_username: msg.sender_username.to_owned(),
            text: msg.text.as_str().to_owned(),
            idempotency_key: msg.idempotency_key.map(|k| k.as_str().to_owned()),
        }
    }
}

/// Where a stream's history starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFrom {
    /// The latest live messages, at most this many.
    Latest(i64),
    /// Live messages after `.0`, at most `.1`: a stream that resumes.
    After(i64, i64),
}

/// Keyset position in a caller's chat list, newest activity first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatCursor {
    /// The last chat's `last_activity_at`, in microseconds since the Unix epoch.
    pub last_activity_micros: i64,
    /// The last chat's id, which breaks ties of equal activity.
    pub id: i64,
}

/// The id of an outbox row: the event of a change, written in the change's transaction
/// (see `outbox.rs`).
pub type EventId = i64;

/// What an outbox row announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A message was stored (the row's `seq`).
    MessageCreated,
    /// A message was deleted (the row's `seq`).
    MessageDeleted,
    /// A message's text was replaced (the row's `seq`).
    MessageEdited,
    /// A user became a member (the row's `user_id`).
    MemberAdded,
    /// A member left or was removed (the row's `user_id`).
    MemberRemoved,
    /// A message got its link preview.
    MessagePreviewed,
}

impl EventKind {
    /// Every kind this version writes and can publish.
    pub const ALL: [EventKind; 6] = [
        EventKind::MessageCreated,
        EventKind::MessageDeleted,
        EventKind::MessageEdited,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
        EventKind::MessagePreviewed,
    ];

    /// The names of [`EventKind::ALL`], as a JSON array: the relay claims only rows of
    /// these kinds, so rows a newer version wrote (seen after a rollback) wait for a
    /// replica that knows them instead of failing every batch they are in.
    pub fn known_json() -> String {
        // The names are fixed identifiers: nothing in them needs escaping.
        let names: Vec<String> = Self::ALL
            .iter()
            .map(|k| format!("\"{}\"", k.as_str()))
            .collect();
        format!("[{}]", names.join(","))
    }

    /// The name stored in the outbox row and published as the event's kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MessageCreated => "message_created",
            EventKind::MessageDeleted => "message_deleted",
            EventKind::MessageEdited => "message_edited",
            EventKind::MemberAdded => "member_added",
            EventKind::MemberRemoved => "member_removed",
            EventKind::MessagePreviewed => "message_previewed",
        }
    }

    /// The kind whose [`as_str`](Self::as_str) is `kind`; an error for any other text.
    pub fn parse(kind: &str) -> anyhow::Result<Self> {
        match kind {
            "message_created" => Ok(EventKind::MessageCreated),
            "message_deleted" => Ok(EventKind::MessageDeleted),
            "message_edited" => Ok(EventKind::MessageEdited),
            "member_added" => Ok(EventKind::MemberAdded),
            "member_removed" => Ok(EventKind::MemberRemoved),
            "message_previewed" => Ok(EventKind::MessagePreviewed),
            other => anyhow::bail!("unknown outbox event kind {other:?}"),
        }
    }
}

impl TryFrom<String> for EventKind {
    type Error = anyhow::Error;

    /// [`EventKind::parse`], for row mapping.
    fn try_from(kind: String) -> anyhow::Result<Self> {
        Self::parse(&kind)
    }
}

/// An outbox row a relay has claimed for publishing.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxEvent {
    /// The row's id.
    pub id: EventId,
    /// The chat the event is about.
    pub chat_id: i64,
    /// The message's seq (message events; 0 for member events).
    pub seq: i64,
    /// What the event announces.
    #[sqlx(try_from = "String")]
    pub kind: EventKind,
    /// The member (member events; 0 for message events).
    pub user_id: i64,
    /// The chat's membership version a new message was stored under (message_created rows
    /// written since it was kept; None otherwise).
    pub members_version: Option<i64>,
}

/// A message deletion that changed something.
#[derive(Debug)]
pub struct Deleted {
    /// The message as it was.
    pub before: MessageRecord,
    /// The deletion's event, when the message was live until now.
    pub event: Option<EventId>,
}

/// What an edit did.
#[derive(Debug)]
pub enum Edited {
    /// The text was replaced (and `edited_at` set), with the outbox row of its event.
    Changed(MessageRecord, EventId),
    /// The message already had this text: nothing was written.
    Unchanged(MessageRecord),
    /// No such message, or it is deleted.
    NotFound,
}

impl Edited {
    /// The answer to an edit of `current` (as loaded, None when there is no such message)
    /// to `text` that needs no write: none for a deleted message, the message itself when
    /// it has this text already. None when the edit must be written.
    pub(crate) fn needless(current: Option<MessageRecord>, text: &MessageText) -> Option<Self> {
        match current {
            None => Some(Edited::NotFound),
            Some(current) if current.deleted => Some(Edited::NotFound),
            Some(current) if current.text == text.as_str() => Some(Edited::Unchanged(current)),
            Some(_) => None,
        }
    }
}

/// What adding members did.
#[derive(Debug)]
pub enum Added {
    /// These users were not members and now are, each with the outbox row of its event
    /// (users who already were members are left out), and the chat's member count after.
    Members(Vec<(MemberRecord, EventId)>, i64),
    /// The chat would have more than the limit of members: nothing was added.
    TooMany {
        /// Members the chat has now.
        members: i64,
    },
    /// The chat does not exist (any more).
    NoChat,
}

/// What removing a member did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    /// The member is gone, with the outbox row of its event, and the new owner when the
    /// owner was removed.
    Member {
        /// The outbox row of the removal's event.
        event: EventId,
        /// The member who now owns the chat, when the owner left; None otherwise.
        new_owner: Option<i64>,
    },
    /// It was the last member: the chat is deleted with it (no member event: the caller
    /// publishes the chat's deletion).
    ChatDeleted,
    /// The user was not a member, or there is no such chat.
    NotMember,
}

/// What storing a message did.
#[derive(Debug)]
pub enum Inserted {
    /// Stored, with the outbox row of its event.
    New(MessageRecord, EventId),
    /// The idempotency key matched this earlier message.
    Duplicate(MessageRecord),
    /// The chat does not exist (any more), or the sender is not a member.
    NoChat,
}

/// Chats, members, messages and the outbox, one implementation per engine. Every method
/// commits before it returns, and every change writes its outbox row in the same
/// transaction, so no event is lost or published for a change that did not happen.
#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Creates a chat with these members (the creator among them).
    async fn create_chat(
        &self,
        creator_id: i64,
        title: &Title,
        members: &[(i64, String)],
    ) -> anyhow::Result<ChatRecord>;

    /// The chat, when it exists and `user_id` is a member.
    async fn chat_for_member(
        &self,
        chat: ChatId,
        user_id: i64,
    ) -> anyhow::Result<Option<ChatRecord>>;

    /// The chat, whoever asks (service callers).
    async fn chat(&self, chat: ChatId) -> anyhow::Result<Option<ChatRecord>>;

    /// Deletes a chat and everything in it; false when it did not exist.
    async fn delete_chat(&self, chat: ChatId) -> anyhow::Result<bool>;

    /// The chats `user_id` is a member of, newest activity first, after `cursor`.
    async fn list_chats(
        &self,
        user_id: i64,
        limit: i64,
        cursor: Option<ChatCursor>,
    ) -> anyhow::Result<Vec<ChatRecord>>;

    /// The chat's members, in the order they joined; empty when there is no such chat.
    async fn list_members(&self, chat: ChatId) -> anyhow::Result<Vec<MemberRecord>>;

    /// The member's username, when `user_id` is a member.
    async fn member(&self, chat: ChatId, user_id: i64) -> anyhow::Result<Option<MemberRecord>>;

    /// Stores a message with the chat's next seq when the sender is a member, and the
    /// outbox row of its event in the same transaction; or returns the earlier message
    /// with the same idempotency key from the same sender.
    async fn insert_message(&self, msg: NewMessage<'_>) -> anyhow::Result<Inserted>;

    /// Marks a message deleted and clears its text, with an outbox row for the deletion's
    /// event when it was live. None when there is no such message.
    async fn delete_message(&self, chat: ChatId, seq: i64) -> anyhow::Result<Option<Deleted>>;

    /// Replaces a live message's text and sets its `edited_at`, with an outbox row for the
    /// edit's event, in one transaction; nothing when the text is already `text`.
    async fn edit_message(
        &self,
        chat: ChatId,
        seq: i64,
        text: &MessageText,
    ) -> anyhow::Result<Edited>;

    /// A message, deleted or not.
    async fn message(&self, chat: ChatId, seq: i64) -> anyhow::Result<Option<MessageRecord>>;

    /// Live messages with `after < seq <= upto`, oldest first, at most `limit`.
    async fn messages_after(
        &self,
        chat: ChatId,
        after: i64,
        upto: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<MessageRecord>>;

    /// Live messages with `seq < before` (any when `before` is None), newest first.
    async fn messages_before(
        &self,
        chat: ChatId,
        before: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<MessageRecord>>;

    /// The first page of a stream's history (see [`HistoryFrom`]), oldest first.
    async fn history(&self, chat: ChatId, from: HistoryFrom) -> anyhow::Result<Vec<MessageRecord>> {
        match from {
            HistoryFrom::Latest(limit) => {
                let mut latest = self.messages_before(chat, None, limit).await?;
                latest.reverse();
                Ok(latest)
            }
            HistoryFrom::After(seq, limit) => self.messages_after(chat, seq, None, limit).await,
        }
    }

    /// [`ChatStore::history`], when `user_id` is a member of `chat`; None when they are not
    /// (or there is no such chat). Here two reads; PostgreSQL answers both in one
    /// statement, from one snapshot.
    async fn history_for_member(
        &self,
        chat: ChatId,
        user_id: i64,
        from: HistoryFrom,
    ) -> anyhow::Result<Option<Vec<MessageRecord>>> {
        if self.member(chat, user_id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.history(chat, from).await?))
    }

    /// Moves `user_id`'s read marker in `chat` forward to `seq` (a lower `seq` leaves it
    /// as it is) and returns the marker as stored; None when `user_id` is not a member.
    async fn mark_read(&self, chat: ChatId, user_id: i64, seq: i64) -> anyhow::Result<Option<i64>>;

    /// Adds the members who are not members yet, each with a `member_added` outbox row, in
    /// one transaction that holds the chat's row lock; nothing when the chat would have
    /// more than `max_members` members.
    async fn add_members(
        &self,
        chat: ChatId,
        members: &[(i64, String)],
        max_members: i64,
    ) -> anyhow::Result<Added>;

    /// Removes a member (and their read marker) with a `member_removed` outbox row, under
    /// the chat's row lock: an owner who goes hands the chat to the member who joined
    /// earliest, and the last member to go deletes the chat.
    async fn remove_member(&self, chat: ChatId, user_id: i64) -> anyhow::Result<Removed>;

    /// The chats `user_id` is a member of.
    async fn chats_of(&self, user_id: i64) -> anyhow::Result<Vec<ChatId>>;

    /// Forgets the name of a deleted account on every message it sent (the messages
    /// stay); returns how many messages changed.
    async fn forget_sender(&self, user_id: i64) -> anyhow::Result<u64>;

    /// Records that `user_id`'s account is deleted (idempotent).
    async fn mark_deleted(&self, user_id: i64) -> anyhow::Result<()>;

    /// Whether `user_id`'s account is recorded as deleted.
    async fn is_deleted(&self, user_id: i64) -> anyhow::Result<bool>;

    /// Accounts recorded as deleted less than `within` ago.
    async fn deleted_within(&self, within: Duration) -> anyhow::Result<Vec<i64>>;

    /// The id of the last account deletion applied to this database (0: none).
    async fn applied_deletion(&self) -> anyhow::Result<i64>;

    /// Records that account deletions up to `id` are applied (never moves back).
    async fn set_applied_deletion(&self, id: i64) -> anyhow::Result<()>;

    /// The chat's newest seq, or None when the chat does not exist.
    async fn last_seq(&self, chat: ChatId) -> anyhow::Result<Option<i64>>;

    /// Claims, for `claim_for`, up to `limit` outbox rows older than `older_than` that no
    /// relay holds a claim on, oldest first.
    async fn claim_events(
        &self,
        older_than: Duration,
        claim_for: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<OutboxEvent>>;

    /// Removes outbox rows whose events were published.
    async fn events_published(&self, ids: &[EventId]) -> anyhow::Result<()>;

    /// Stores a message's link preview, with an outbox row for its event, in one
    /// transaction; only while the message is live and its text is still `text` (the one
    /// the preview was made for: an edit since then clears the preview and asks for a new
    /// one). None when nothing was stored.
    async fn set_link_preview(
        &self,
        chat: ChatId,
        seq: i64,
        text: &str,
        preview: &Preview,
    ) -> anyhow::Result<Option<EventId>>;
}

/// A duration in whole milliseconds for SQL, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
