//! The PostgreSQL backend of [`DeliveryStore`](super::DeliveryStore).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::{postgres::PgRow, PgPool, Row};

use super::{
    DeliveryRecord, DeliveryState, DeliveryStore, DirectEmailRecord, MessageRecord, NewEmail,
    Recipient,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/notification");

pub struct PgDeliveryStore {
    pool: PgPool,
}

impl PgDeliveryStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

const DELIVERY_COLUMNS: &str = "recipient_id, email, username, state, attempts, error, updated_at";

fn delivery_from_row(row: &PgRow) -> anyhow::Result<DeliveryRecord> {
    let state: String = row.try_get("state")?;
    Ok(DeliveryRecord {
        recipient: Recipient {
            user_id: row.try_get("recipient_id")?,
            email: row.try_get("email")?,
            username: row.try_get("username")?,
        },
        state: DeliveryState::parse(&state)?,
        attempts: row.try_get("attempts")?,
        error: row.try_get("error")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

const EMAIL_COLUMNS: &str =
    "id, idempotency_key, to_address, subject, body, state, attempts, error, updated_at";

fn email_from_row(row: &PgRow) -> anyhow::Result<DirectEmailRecord> {
    let state: String = row.try_get("state")?;
    Ok(DirectEmailRecord {
        id: row.try_get("id")?,
        email: NewEmail {
            idempotency_key: row.try_get("idempotency_key")?,
            to_address: row.try_get("to_address")?,
            subject: row.try_get("subject")?,
            body: row.try_get("body")?,
        },
        state: DeliveryState::parse(&state)?,
        attempts: row.try_get("attempts")?,
        error: row.try_get("error")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait]
impl DeliveryStore for PgDeliveryStore {
    async fn is_recorded(&self, chat_id: i64, seq: i64) -> anyhow::Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM notified_messages WHERE chat_id = $1 AND seq = $2")
                .bind(chat_id)
                .bind(seq)
                .fetch_optional(&self.pool)
                .await
                .context("reading a notified message")?;
        Ok(found.is_some())
    }

    async fn record(&self, m: &MessageRecord, recipients: &[Recipient]) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let inserted = sqlx::query(
            "INSERT INTO notified_messages \
               (chat_id, seq, sender_id, sender_username, chat_title, text, sent_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(m.chat_id)
        .bind(m.seq)
        .bind(m.sender_id)
        .bind(&m.sender_username)
        .bind(&m.chat_title)
        .bind(&m.text)
        .bind(m.sent_at)
        .execute(&mut *tx)
        .await
        .context("recording a message")?
        .rows_affected();
        if inserted == 1 && !recipients.is_empty() {
            let ids: Vec<i64> = recipients.iter().map(|r| r.user_id).collect();
            let emails: Vec<&str> = recipients.iter().map(|r| r.email.as_str()).collect();
            let names: Vec<&str> = recipients.iter().map(|r| r.username.as_str()).collect();
            sqlx::query(
                "INSERT INTO deliveries (chat_id, seq, recipient_id, email, username) \
                 SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::text[], $5::text[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(m.chat_id)
            .bind(m.seq)
            .bind(&ids)
            .bind(&emails)
            .bind(&names)
            .execute(&mut *tx)
            .await
            .context("recording recipients")?;
        }
        tx.commit().await.context("committing a message record")?;
        Ok(inserted == 1)
    }

    async fn message(&self, chat_id: i64, seq: i64) -> anyhow::Result<Option<MessageRecord>> {
        let row = sqlx::query(
            "SELECT chat_id, seq, sender_id, sender_username, chat_title, text, sent_at \
             FROM notified_messages WHERE chat_id = $1 AND seq = $2",
        )
        .bind(chat_id)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .context("reading a notified message")?;
        row.map(|r| {
            Ok(MessageRecord {
                chat_id: r.try_get("chat_id")?,
                seq: r.try_get("seq")?,
                sender_id: r.try_get("sender_id")?,
                sender_username: r.try_get("sender_username")?,
                chat_title: r.try_get("chat_title")?,
                text: r.try_get("text")?,
                sent_at: r.try_get("sent_at")?,
            })
        })
        .transpose()
    }

    async fn claim(
        &self,
        chat_id: i64,
        seq: i64,
        lease: Duration,
    ) -> anyhow::Result<Vec<DeliveryRecord>> {
        // SKIP LOCKED: a concurrent claimer takes the rows this one does not.
        let rows = sqlx::query(&format!(
            "UPDATE deliveries d SET state = 'sending', \
                lease_until = now() + make_interval(secs => $3), updated_at = now() \
             FROM (SELECT recipient_id FROM deliveries \
                   WHERE chat_id = $1 AND seq = $2 \
                     AND (state = 'pending' OR (state = 'sending' AND lease_until < now())) \
                   FOR UPDATE SKIP LOCKED) c \
             WHERE d.chat_id = $1 AND d.seq = $2 AND d.recipient_id = c.recipient_id \
             RETURNING {}",
            DELIVERY_COLUMNS
                .split(", ")
                .map(|c| format!("d.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(chat_id)
        .bind(seq)
        .bind(lease_secs(lease))
        .fetch_all(&self.pool)
        .await
        .context("claiming deliveries")?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn attempt_failed(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_id: i64,
        error: &str,
        lease: Duration,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, error = $4, \
                lease_until = now() + make_interval(secs => $5), updated_at = now() \
             WHERE chat_id = $1 AND seq = $2 AND recipient_id = $3",
        )
        .bind(chat_id)
        .bind(seq)
        .bind(recipient_id)
        .bind(error)
        .bind(lease_secs(lease))
        .execute(&self.pool)
        .await
        .context("recording a failed attempt")?;
        Ok(())
    }

    async fn release(&self, chat_id: i64, seq: i64, recipient_id: i64) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, updated_at = now() \
             WHERE chat_id = $1 AND seq = $2 AND recipient_id = $3 AND state = 'sending'",
        )
        .bind(chat_id)
        .bind(seq)
        .bind(recipient_id)
        .execute(&self.pool)
        .await
        .context("releasing a delivery")?;
        Ok(())
    }

    async fn finish(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_id: i64,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let state = match error {
            None => DeliveryState::Delivered,
            Some(_) => DeliveryState::Failed,
        };
        sqlx::query(
            "UPDATE deliveries SET state = $4, attempts = attempts + 1, \
                error = COALESCE($5, error), lease_until = NULL, updated_at = now() \
             WHERE chat_id = $1 AND seq = $2 AND recipient_id = $3",
        )
        .bind(chat_id)
        .bind(seq)
        .bind(recipient_id)
        .bind(state.as_str())
        .bind(error)
        .execute(&self.pool)
        .await
        .context("recording a delivery's outcome")?;
        Ok(())
    }

    async fn finish_delivered(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_ids: &[i64],
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, \
                lease_until = NULL, updated_at = now() \
             WHERE chat_id = $1 AND seq = $2 AND recipient_id = ANY($3)",
        )
        .bind(chat_id)
        .bind(seq)
        .bind(recipient_ids)
        .execute(&self.pool)
        .await
        .context("recording deliveries")?;
        Ok(())
    }

    async fn deliveries(
        &self,
        chat_id: i64,
        seq: i64,
    ) -> anyhow::Result<Option<Vec<DeliveryRecord>>> {
        if !self.is_recorded(chat_id, seq).await? {
            return Ok(None);
        }
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE chat_id = $1 AND seq = $2 \
             ORDER BY recipient_id"
        ))
        .bind(chat_id)
        .bind(seq)
        .fetch_all(&self.pool)
        .await
        .context("reading deliveries")?;
        rows.iter()
            .map(delivery_from_row)
            .collect::<anyhow::Result<_>>()
            .map(Some)
    }

    async fn create_email(&self, email: &NewEmail) -> anyhow::Result<(DirectEmailRecord, bool)> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO direct_emails (idempotency_key, to_address, subject, body) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING \
             RETURNING {EMAIL_COLUMNS}"
        ))
        .bind(&email.idempotency_key)
        .bind(&email.to_address)
        .bind(&email.subject)
        .bind(&email.body)
        .fetch_optional(&self.pool)
        .await
        .context("recording an email")?;
        if let Some(row) = inserted {
            return Ok((email_from_row(&row)?, true));
        }
        let row = sqlx::query(&format!(
            "SELECT {EMAIL_COLUMNS} FROM direct_emails WHERE idempotency_key = $1"
        ))
        .bind(&email.idempotency_key)
        .fetch_one(&self.pool)
        .await
        .context("reading an email")?;
        Ok((email_from_row(&row)?, false))
    }

    async fn email(&self, id: i64) -> anyhow::Result<Option<DirectEmailRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {EMAIL_COLUMNS} FROM direct_emails WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("reading an email")?;
        row.as_ref().map(email_from_row).transpose()
    }

    async fn claim_email(
        &self,
        id: i64,
        lease: Duration,
    ) -> anyhow::Result<Option<DirectEmailRecord>> {
        let mut claimed = self.claim_emails(Some(id), lease, 1).await?;
        Ok(claimed.pop())
    }

    async fn claim_due_emails(
        &self,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<DirectEmailRecord>> {
        self.claim_emails(None, lease, limit).await
    }

    async fn email_attempt_failed(
        &self,
        id: i64,
        error: &str,
        lease: Duration,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE direct_emails SET attempts = attempts + 1, error = $2, \
                lease_until = now() + make_interval(secs => $3), updated_at = now() \
             WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(lease_secs(lease))
        .execute(&self.pool)
        .await
        .context("recording a failed attempt")?;
        Ok(())
    }

    async fn release_email(&self, id: i64) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE direct_emails SET state = 'pending', lease_until = NULL, updated_at = now() \
             WHERE id = $1 AND state = 'sending'",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .context("releasing an email")?;
        Ok(())
    }

    async fn finish_email(&self, id: i64, error: Option<&str>) -> anyhow::Result<()> {
        let state = match error {
            None => DeliveryState::Delivered,
            Some(_) => DeliveryState::Failed,
        };
        sqlx::query(
            "UPDATE direct_emails SET state = $2, attempts = attempts + 1, \
                error = COALESCE($3, error), lease_until = NULL, updated_at = now() \
             WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(error)
        .execute(&self.pool)
        .await
        .context("recording an email's outcome")?;
        Ok(())
    }
}

impl PgDeliveryStore {
    /// Claims email `id` (or, with `None`, any) that is pending or whose claim expired;
    /// SKIP LOCKED lets concurrent claimers take different rows.
    async fn claim_emails(
        &self,
        id: Option<i64>,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<DirectEmailRecord>> {
        let rows = sqlx::query(&format!(
            "UPDATE direct_emails SET state = 'sending', \
                lease_until = now() + make_interval(secs => $2), updated_at = now() \
             WHERE id IN (SELECT id FROM direct_emails \
                WHERE ($1::BIGINT IS NULL OR id = $1) \
                  AND (state = 'pending' OR (state = 'sending' AND lease_until < now())) \
                ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {EMAIL_COLUMNS}"
        ))
        .bind(id)
        .bind(lease_secs(lease))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("claiming emails")?;
        rows.iter().map(email_from_row).collect()
    }
}
