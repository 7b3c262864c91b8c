//! Where deliveries are recorded. The notifier talks to [`DeliveryStore`]; `postgres`
//! implements it for the split deployment and `sqlite` for the embedded `chat-server`, and
//! [`open`] picks one by the database URL. The store makes each step atomic (a message and
//! its recipients recorded once; a delivery claimed by one sender at a time) and holds no
//! policy.
//!
//! What both engines share is written here once: the records derive their row mapping
//! (`sqlx::FromRow`, generic over the engine; SQLite's RFC 3339 text decodes into the same
//! time type as PostgreSQL's `timestamptz`, states are stored as their text), the column
//! lists that mapping reads, a finished delivery's state, and claiming one direct email as
//! claiming a batch of one. The SQL stays in each engine's module.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::FromRow;

use chat_common::{
    db::{Database, Migrations},
    Shutdown,
};

pub mod postgres;
pub mod sqlite;

const MIGRATIONS: Migrations = Migrations {
    postgres: &postgres::MIGRATOR,
    sqlite: &sqlite::MIGRATOR,
    // Every statement reads or writes messages and deliveries by key, and the deliveries
    // grow by every message's recipients.
    postgres_settings: chat_common::db::KEYED_ONLY,
};

/// The store at `url` (`postgres://...` or `sqlite://...`) with at most `max_connections`,
/// the database created when missing and migrated; its pool monitors run on `shutdown`.
pub async fn open(
    url: &str,
    max_connections: u32,
    shutdown: &Shutdown,
) -> anyhow::Result<Arc<dyn DeliveryStore>> {
    let relaxed = chat_common::db::relaxed_share(url, max_connections);
    let main = max_connections.saturating_sub(relaxed).max(1);
    Ok(match MIGRATIONS.open(url, main, shutdown).await? {
        Database::Postgres(pool) => Arc::new(postgres::PgDeliveryStore::new(pool, relaxed)),
        Database::Sqlite(pool) => Arc::new(sqlite::SqliteDeliveryStore::new(pool).await?),
    })
}

/// Creates the database at `url` when missing and applies the migrations, then returns.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    MIGRATIONS.apply(url).await
}

/// A message as recorded for notification: enough to write its emails again later.
#[derive(Debug, Clone, FromRow)]
pub struct MessageRecord {
    /// The chat the message was sent to.
    pub chat_id: i64,
    /// The message's sequence number in its chat.
    pub seq: i64,
    /// Its sender's user id; the sender is never a recipient.
    pub sender_id: i64,
    /// Its sender's name, for the email.
    pub sender_username: String,
    /// The chat's title when the message was recorded.
    pub chat_title: String,
    /// The message.
    pub text: String,
    /// When ChatService stored it.
    pub sent_at: DateTime<Utc>,
}

/// A member to email.
#[derive(Debug, Clone, FromRow)]
pub struct Recipient {
    /// The member's user id.
    #[sqlx(rename = "recipient_id")]
    pub user_id: i64,
    /// Where their email goes.
    pub email: String,
    /// Their name, for the greeting.
    pub username: String,
}

/// Where one email stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not yet claimed by any sender.
    Pending,
    /// Claimed by a sender (its lease may have run out).
    Sending,
    /// The mail server accepted it.
    Delivered,
    /// Refused for good, or out of tries; not retried.
    Failed,
}

impl DeliveryState {
    /// The name stored in the state column.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Sending => "sending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    /// The state whose [`as_str`](Self::as_str) is `s`; an error for any other text.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "pending" => DeliveryState::Pending,
            "sending" => DeliveryState::Sending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => anyhow::bail!("unknown delivery state {other:?}"),
        })
    }

    /// Whether no sender will try this email again.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryState::Delivered | DeliveryState::Failed)
    }

    /// The state an email ends in: delivered when its last try had no `error`, failed for
    /// good otherwise.
    pub fn finished(error: Option<&str>) -> Self {
        match error {
            None => DeliveryState::Delivered,
            Some(_) => DeliveryState::Failed,
        }
    }
}

/// How the state column is read back, by both engines' row mapping.
impl TryFrom<String> for DeliveryState {
    type Error = anyhow::Error;

    fn try_from(s: String) -> anyhow::Result<Self> {
        Self::parse(&s)
    }
}

/// The columns of `deliveries` that make a [`DeliveryRecord`].
pub(crate) const DELIVERY_COLUMNS: &str =
    "recipient_id, email, username, state, attempts, error, updated_at";

/// The columns of `direct_emails` that make a [`DirectEmailRecord`].
pub(crate) const EMAIL_COLUMNS: &str =
    "id, idempotency_key, to_address, subject, body, state, attempts, error, updated_at";

/// One email of a message, to one recipient, as recorded (a row of [`DELIVERY_COLUMNS`]).
#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRecord {
    /// Whom it goes to.
    #[sqlx(flatten)]
    pub recipient: Recipient,
    /// Where it stands.
    #[sqlx(try_from = "String")]
    pub state: DeliveryState,
    /// Tries made so far; 0 before the first.
    pub attempts: i32,
    /// The last try's error; empty when none failed.
    pub error: String,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// An email asked for with SendEmail, before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct NewEmail {
    /// The caller's key; a retry with the same key and email sends nothing twice.
    pub idempotency_key: String,
    /// The one recipient's address, validated.
    pub to_address: String,
    /// One line, no control characters.
    pub subject: String,
    /// Plain text.
    pub body: String,
}

/// A direct email as recorded (a row of [`EMAIL_COLUMNS`]).
#[derive(Debug, Clone, FromRow)]
pub struct DirectEmailRecord {
    /// The record's id, which GetEmail takes.
    pub id: i64,
    /// What was asked for.
    #[sqlx(flatten)]
    pub email: NewEmail,
    /// Where it stands.
    #[sqlx(try_from = "String")]
    pub state: DeliveryState,
    /// Tries made so far; 0 before the first.
    pub attempts: i32,
    /// The last try's error; empty when none failed.
    pub error: String,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The delivery records, one implementation per engine. Every method commits before it
/// returns; the store holds no policy (retries, leases' lengths are the caller's).
#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    /// Whether the message has been recorded (by any replica, on any path): whether
    /// [`DeliveryStore::message`] finds it.
    async fn is_recorded(&self, chat_id: i64, seq: i64) -> anyhow::Result<bool> {
        Ok(self.message(chat_id, seq).await?.is_some())
    }

    /// Records the message with its recipients, unless it was recorded already (the first
    /// record wins, so every path works from the same recipients), and claims for `lease`
    /// every delivery of it that is pending or whose claim has expired: a new record's
    /// deliveries are claimed as they are created. Returns whether this call recorded the
    /// message, and what it claimed; those deliveries are sent by the caller and by no one
    /// else.
    ///
    /// Neither the record nor the claim is an outcome anyone is told about: if the database
    /// loses them in a crash, the message's event (unacknowledged until its deliveries are
    /// final) or the saga's retried call records them again. So a store may commit them
    /// without waiting for the disk; the outcomes ([`DeliveryStore::finish`] and
    /// [`DeliveryStore::finish_delivered`]) it must commit durably, and a durable commit
    /// also makes every earlier one durable.
    async fn record_and_claim(
        &self,
        message: &MessageRecord,
        recipients: &[Recipient],
        lease: Duration,
    ) -> anyhow::Result<(bool, Vec<DeliveryRecord>)>;

    /// The recorded message.
    async fn message(&self, chat_id: i64, seq: i64) -> anyhow::Result<Option<MessageRecord>>;

    /// Claims, for `lease`, every delivery of the message that is pending or whose claim has
    /// expired. Deliveries claimed here are sent by the caller and by no one else.
    async fn claim(
        &self,
        chat_id: i64,
        seq: i64,
        lease: Duration,
    ) -> anyhow::Result<Vec<DeliveryRecord>>;

    /// A try failed and another follows: count it, keep the error, extend the claim.
    async fn attempt_failed(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_id: i64,
        error: &str,
        lease: Duration,
    ) -> anyhow::Result<()>;

    /// Gives a claimed delivery back unsent, as its sender stops between two tries: the next
    /// sender (another replica, or this process after its restart) takes it at once
    /// instead of after the lease. No email of it is on its way when this is called.
    async fn release(&self, chat_id: i64, seq: i64, recipient_id: i64) -> anyhow::Result<()>;

    /// The delivery ended: delivered (`error` None) or failed for good.
    async fn finish(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_id: i64,
        error: Option<&str>,
    ) -> anyhow::Result<()>;

    /// Deliveries of one message that went out on their first try, recorded at once.
    /// Returns when, if these were every email of the message and the store keeps it
    /// delivered whole: its deliveries then read back as exactly these, each delivered on
    /// its first try at that time, so a caller may tell that without reading them. `None`
    /// when the store cannot tell (some emails of the message are recorded one by one).
    async fn finish_delivered(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_ids: &[i64],
    ) -> anyhow::Result<Option<DateTime<Utc>>>;

    /// The message's deliveries; `None` when the message was never recorded.
    async fn deliveries(
        &self,
        chat_id: i64,
        seq: i64,
    ) -> anyhow::Result<Option<Vec<DeliveryRecord>>>;

    /// Records a direct email unless one with its idempotency key exists; returns the
    /// recorded one and whether this call recorded it.
    async fn create_email(&self, email: &NewEmail) -> anyhow::Result<(DirectEmailRecord, bool)>;

    /// The direct email `id`.
    async fn email(&self, id: i64) -> anyhow::Result<Option<DirectEmailRecord>>;

    /// Claims for `lease` up to `limit` direct emails that are pending or whose claim has
    /// expired: email `id` only, or with `None` any, oldest first. Concurrent claimers take
    /// different emails.
    async fn claim_emails(
        &self,
        id: Option<i64>,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<DirectEmailRecord>>;

    /// Claims direct email `id` for `lease` when it is pending or its claim has expired.
    async fn claim_email(
        &self,
        id: i64,
        lease: Duration,
    ) -> anyhow::Result<Option<DirectEmailRecord>> {
        let mut claimed = self.claim_emails(Some(id), lease, 1).await?;
        Ok(claimed.pop())
    }

    /// Claims up to `limit` direct emails that are pending or whose claim has expired:
    /// those whose sender stopped or died.
    async fn claim_due_emails(
        &self,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<DirectEmailRecord>> {
        self.claim_emails(None, lease, limit).await
    }

    /// A try of a direct email failed and another follows.
    async fn email_attempt_failed(
        &self,
        id: i64,
        error: &str,
        lease: Duration,
    ) -> anyhow::Result<()>;

    /// Gives a claimed direct email back unsent (its sender is stopping).
    async fn release_email(&self, id: i64) -> anyhow::Result<()>;

    /// The direct email ended: delivered (`error` None) or failed for good.
    async fn finish_email(&self, id: i64, error: Option<&str>) -> anyhow::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_ends_delivered_without_an_error_and_failed_with_one() {
        assert_eq!(DeliveryState::finished(None), DeliveryState::Delivered);
        assert_eq!(DeliveryState::finished(Some("550")), DeliveryState::Failed);
    }

    #[test]
    fn states_read_back_from_their_stored_text() {
        for state in [
            DeliveryState::Pending,
            DeliveryState::Sending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ] {
            let back = DeliveryState::try_from(state.as_str().to_owned()).expect("known state");
            assert_eq!(back, state);
        }
        assert!(DeliveryState::try_from("bounced".to_owned()).is_err());
    }
}
