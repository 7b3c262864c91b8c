//! The SQLite backend of [`DeliveryStore`](super::DeliveryStore), for the embedded
//! `chat-server`.
//!
//! SQLite has one writer at a time: a claim is one `UPDATE ... RETURNING`, which takes the
//! write lock before it reads, so two claimers never both take a delivery (what `SKIP
//! LOCKED` gives on PostgreSQL). Every write goes through a [`GroupWriter`]: recording a
//! message and its recipients is one transaction, and the writes of concurrent messages
//! share commits. Times are stored as fixed-width RFC 3339 text ([`sqlite_time`]), which
//! orders as text the way the times do, so lease expiry can be compared in SQL.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use chat_common::db::{sqlite_lease_end, sqlite_time, sqlite_writer, Args, GroupWriter};

use super::{
    DeliveryRecord, DeliveryState, DeliveryStore, DirectEmailRecord, MessageRecord, NewEmail,
    Recipient, DELIVERY_COLUMNS, EMAIL_COLUMNS,
};

/// Recipients per INSERT: six parameters each, well inside SQLite's 32,766.
const RECIPIENTS_PER_INSERT: usize = 1000;

/// The SQLite schema of the delivery records.
pub static MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate!("../../migrations/sqlite/notification");

/// The delivery records in an SQLite file, for the embedded server.
pub struct SqliteDeliveryStore {
    pool: SqlitePool,
    /// Every write goes through it: the records of concurrent messages share commits.
    writer: GroupWriter,
}

impl SqliteDeliveryStore {
    /// A store on `pool`; starts the group writer on a connection of its own.
    pub async fn new(pool: SqlitePool) -> anyhow::Result<Self> {
        let writer = GroupWriter::start(sqlite_writer(&pool).await?);
        Ok(Self { pool, writer })
    }
}

/// Claims until `until` the deliveries of a message that are pending or whose claim ran out
/// before `at`. One statement: it holds the write lock from its first read, so a concurrent
/// claimer runs before or after it and finds these rows claimed.
async fn claim_on(
    conn: &mut SqliteConnection,
    chat_id: i64,
    seq: i64,
    until: &str,
    at: &str,
) -> anyhow::Result<Vec<DeliveryRecord>> {
    let mut claimed: Vec<DeliveryRecord> = sqlx::query_as(&format!(
        "UPDATE deliveries SET state = 'sending', lease_until = ?3, updated_at = ?4 \
         WHERE chat_id = ?1 AND seq = ?2 \
           AND (state = 'pending' OR (state = 'sending' AND lease_until < ?4)) \
         RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(chat_id)
    .bind(seq)
    .bind(until)
    .bind(at)
    .fetch_all(&mut *conn)
    .await
    .context("claiming deliveries")?;
    claimed.sort_by_key(|d| d.recipient.user_id);
    Ok(claimed)
}

#[async_trait]
impl DeliveryStore for SqliteDeliveryStore {
    async fn record_and_claim(
        &self,
        m: &MessageRecord,
        recipients: &[Recipient],
        lease: Duration,
    ) -> anyhow::Result<(bool, Vec<DeliveryRecord>)> {
        let at = Utc::now();
        let (now, until) = (sqlite_time(at), sqlite_lease_end(at, lease)?);
        let record = Arc::new((m.clone(), recipients.to_vec()));
        // One write: the record (when new) and the claim share the commit.
        self.writer
            .write(move |conn| {
                let (record, now, until) = (record.clone(), now.clone(), until.clone());
                Box::pin(async move {
                    let (m, recipients) = &*record;
                    let inserted = sqlx::query(
                        "INSERT INTO notified_messages \
                           (chat_id, seq, sender_id, sender_username, chat_title, text, sent_at, \
                            recorded_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                    )
                    .bind(m.chat_id)
                    .bind(m.seq)
                    .bind(m.sender_id)
                    .bind(&m.sender_username)
                    .bind(&m.chat_title)
                    .bind(&m.text)
                    .bind(sqlite_time(m.sent_at))
                    .bind(&now)
                    .execute(&mut *conn)
                    .await
                    .context("recording a message")?
                    .rows_affected();
                    // One statement for all recipients, in chunks within SQLite's limit on
                    // bound parameters.
                    if inserted == 1 {
                        for chunk in recipients.chunks(RECIPIENTS_PER_INSERT) {
                            let mut insert = QueryBuilder::<Sqlite>::new(
                                "INSERT INTO deliveries \
                                   (chat_id, seq, recipient_id, email, username, updated_at) ",
                            );
                            insert.push_values(chunk, |mut row, r| {
                                row.push_bind(m.chat_id)
                                    .push_bind(m.seq)
                                    .push_bind(r.user_id)
                                    .push_bind(&r.email)
                                    .push_bind(&r.username)
                                    .push_bind(&now);
                            });
                            insert.push(" ON CONFLICT DO NOTHING");
                            insert
                                .build()
                                .execute(&mut *conn)
                                .await
                                .context("recording recipients")?;
                        }
                    }
                    let claimed = claim_on(conn, m.chat_id, m.seq, &until, &now).await?;
                    Ok((inserted == 1, claimed))
                })
            })
            .await
    }

    async fn message(&self, chat_id: i64, seq: i64) -> anyhow::Result<Option<MessageRecord>> {
        sqlx::query_as(
            "SELECT chat_id, seq, sender_id, sender_username, chat_title, text, sent_at \
             FROM notified_messages WHERE chat_id = ?1 AND seq = ?2",
        )
        .bind(chat_id)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .context("reading a notified message")
    }

    async fn claim(
        &self,
        chat_id: i64,
        seq: i64,
        lease: Duration,
    ) -> anyhow::Result<Vec<DeliveryRecord>> {
        let now = Utc::now();
        let (until, at) = (sqlite_lease_end(now, lease)?, sqlite_time(now));
        self.writer
            .write(move |conn| {
                let (until, at) = (until.clone(), at.clone());
                Box::pin(async move { claim_on(conn, chat_id, seq, &until, &at).await })
            })
            .await
    }

    async fn attempt_failed(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_id: i64,
        error: &str,
        lease: Duration,
    ) -> anyhow::Result<()> {
        let now = Utc::now();
        self.writer
            .execute(
                "UPDATE deliveries SET attempts = attempts + 1, error = ?4, \
                    lease_until = ?5, updated_at = ?6 \
                 WHERE chat_id = ?1 AND seq = ?2 AND recipient_id = ?3",
                Args::new()
                    .bind(chat_id)
                    .bind(seq)
                    .bind(recipient_id)
                    .bind(error.to_owned())
                    .bind(sqlite_lease_end(now, lease)?)
                    .bind(sqlite_time(now)),
                "recording a failed attempt",
            )
            .await?;
        Ok(())
    }

    async fn release(&self, chat_id: i64, seq: i64, recipient_id: i64) -> anyhow::Result<()> {
        self.writer
            .execute(
                "UPDATE deliveries SET state = 'pending', lease_until = NULL, updated_at = ?4 \
                 WHERE chat_id = ?1 AND seq = ?2 AND recipient_id = ?3 AND state = 'sending'",
                Args::new()
                    .bind(chat_id)
                    .bind(seq)
                    .bind(recipient_id)
                    .bind(sqlite_time(Utc::now())),
                "releasing a delivery",
            )
            .await?;
        Ok(())
    }

    async fn finish(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_id: i64,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let state = DeliveryState::finished(error);
        self.writer
            .execute(
                "UPDATE deliveries SET state = ?4, attempts = attempts + 1, \
                    error = COALESCE(?5, error), lease_until = NULL, updated_at = ?6 \
                 WHERE chat_id = ?1 AND seq = ?2 AND recipient_id = ?3",
                Args::new()
                    .bind(chat_id)
                    .bind(seq)
                    .bind(recipient_id)
                    .bind(state.as_str())
                    .bind(error.map(str::to_owned))
                    .bind(sqlite_time(Utc::now())),
                "recording a delivery's outcome",
            )
            .await?;
        Ok(())
    }

    async fn finish_delivered(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_ids: &[i64],
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        let ids = serde_json::to_string(recipient_ids).context("listing recipients")?;
        self.writer
            .execute(
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, \
                    lease_until = NULL, updated_at = ?4 \
                 WHERE chat_id = ?1 AND seq = ?2 \
                   AND recipient_id IN (SELECT value FROM json_each(?3))",
                Args::new()
                    .bind(chat_id)
                    .bind(seq)
                    .bind(ids)
                    .bind(sqlite_time(Utc::now())),
                "recording deliveries",
            )
            .await?;
        // Every email is a row of its own here: the caller reads them back.
        Ok(None)
    }

    async fn deliveries(
        &self,
        chat_id: i64,
        seq: i64,
    ) -> anyhow::Result<Option<Vec<DeliveryRecord>>> {
        if !self.is_recorded(chat_id, seq).await? {
            return Ok(None);
        }
        let deliveries: Vec<DeliveryRecord> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE chat_id = ?1 AND seq = ?2 \
             ORDER BY recipient_id"
        ))
        .bind(chat_id)
        .bind(seq)
        .fetch_all(&self.pool)
        .await
        .context("reading deliveries")?;
        Ok(Some(deliveries))
    }

    async fn create_email(&self, email: &NewEmail) -> anyhow::Result<(DirectEmailRecord, bool)> {
        let now = sqlite_time(Utc::now());
        let email = Arc::new(email.clone());
        self.writer
            .write(move |conn| {
                let (email, now) = (email.clone(), now.clone());
                Box::pin(async move {
                    let inserted = sqlx::query(
                        "INSERT INTO direct_emails \
                           (idempotency_key, to_address, subject, body, created_at, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT DO NOTHING",
                    )
                    .bind(&email.idempotency_key)
                    .bind(&email.to_address)
                    .bind(&email.subject)
                    .bind(&email.body)
                    .bind(&now)
                    .execute(&mut *conn)
                    .await
                    .context("recording an email")?
                    .rows_affected();
                    let record: DirectEmailRecord = sqlx::query_as(&format!(
                        "SELECT {EMAIL_COLUMNS} FROM direct_emails WHERE idempotency_key = ?1"
                    ))
                    .bind(&email.idempotency_key)
                    .fetch_one(&mut *conn)
                    .await
                    .context("reading an email")?;
                    Ok((record, inserted == 1))
                })
            })
            .await
    }

    async fn email(&self, id: i64) -> anyhow::Result<Option<DirectEmailRecord>> {
        sqlx::query_as(&format!(
            "SELECT {EMAIL_COLUMNS} FROM direct_emails WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("reading an email")
    }

    async fn claim_emails(
        &self,
        id: Option<i64>,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<DirectEmailRecord>> {
        let now = Utc::now();
        let (until, at) = (sqlite_lease_end(now, lease)?, sqlite_time(now));
        // One statement, as for deliveries: it holds the write lock from its first read.
        self.writer
            .write(move |conn| {
                let (until, at) = (until.clone(), at.clone());
                Box::pin(async move {
                    let claimed: Vec<DirectEmailRecord> = sqlx::query_as(&format!(
                        "UPDATE direct_emails SET state = 'sending', lease_until = ?2, \
                            updated_at = ?3 \
                         WHERE id IN (SELECT id FROM direct_emails \
                            WHERE (?1 IS NULL OR id = ?1) \
                              AND (state = 'pending' \
                                   OR (state = 'sending' AND lease_until < ?3)) \
                            ORDER BY id LIMIT ?4) \
                         RETURNING {EMAIL_COLUMNS}"
                    ))
                    .bind(id)
                    .bind(until)
                    .bind(at)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await
                    .context("claiming emails")?;
                    Ok(claimed)
                })
            })
            .await
    }

    async fn email_attempt_failed(
        &self,
        id: i64,
        error: &str,
        lease: Duration,
    ) -> anyhow::Result<()> {
        let now = Utc::now();
        self.writer
            .execute(
                "UPDATE direct_emails SET attempts = attempts + 1, error = ?2, \
                    lease_until = ?3, updated_at = ?4 WHERE id = ?1",
                Args::new()
                    .bind(id)
                    .bind(error.to_owned())
                    .bind(sqlite_lease_end(now, lease)?)
                    .bind(sqlite_time(now)),
                "recording a failed attempt",
            )
            .await?;
        Ok(())
    }

    async fn release_email(&self, id: i64) -> anyhow::Result<()> {
        self.writer
            .execute(
                "UPDATE direct_emails SET state = 'pending', lease_until = NULL, updated_at = ?2 \
                 WHERE id = ?1 AND state = 'sending'",
                Args::new().bind(id).bind(sqlite_time(Utc::now())),
                "releasing an email",
            )
            .await?;
        Ok(())
    }

    async fn finish_email(&self, id: i64, error: Option<&str>) -> anyhow::Result<()> {
        let state = DeliveryState::finished(error);
        self.writer
            .execute(
                "UPDATE direct_emails SET state = ?2, attempts = attempts + 1, \
                    error = COALESCE(?3, error), lease_until = NULL, updated_at = ?4 \
                 WHERE id = ?1",
                Args::new()
                    .bind(id)
                    .bind(state.as_str())
                    .bind(error.map(str::to_owned))
                    .bind(sqlite_time(Utc::now())),
                "recording an email's outcome",
            )
            .await?;
        Ok(())
    }
}
