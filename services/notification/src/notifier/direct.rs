//! Direct emails (`SendEmail`): one email to one address, sent the way message emails
//! are, so that a caller gets the same promises: the email is recorded before its first
//! try, tried with the same sender, retries and backoff, and its outcome recorded for
//! `GetEmailStatus`. The sender claims the record with a lease; an email whose sender
//! stopped (its claim given back) or died (its lease ran out) is picked up by the sweeper
//! that every notifier runs, here or on another replica, so none is left behind.

use std::time::Duration;

use tracing::Instrument;

use chat_common::trace;

use super::{announced, Notifier, POLL_EVERY};
use crate::{
    email::{Email, SendError},
    error::NotificationError,
    store::{DirectEmailRecord, NewEmail},
};

/// How often the sweeper looks for direct emails nobody is sending.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Emails the sweeper claims at once.
const SWEEP_BATCH: i64 = 32;

/// The `finished` announcement of direct email `id`: chat ids are positive, so chat 0
/// never names a message.
fn announcement(id: i64) -> (i64, i64) {
    (0, id)
}

impl Notifier {
    /// Records `email` (or finds the one recorded with its key) and has it sent in the
    /// background; ALREADY_EXISTS when the key was used for a different email.
    pub async fn send_email(
        &self,
        email: NewEmail,
    ) -> Result<DirectEmailRecord, NotificationError> {
        let (record, _new) = self.inner.store.create_email(&email).await?;
        if record.email != email {
            return Err(NotificationError::AlreadyExists(
                "idempotency_key was already used for a different email; use a new key for \
                 a new email"
                    .into(),
            ));
        }
        if !record.state.is_final() {
            // In its own task, so a caller who stops waiting does not cut the email off;
            // the record tells the outcome to whoever asks next.
            let n = self.clone();
            let id = record.id;
            self.spawn(
                async move {
                    if let Err(e) = n.send_direct(id).await {
                        tracing::warn!(email_id = id, error = %e, "sending an email failed; the sweeper retries it");
                    }
                }
                .in_current_span(),
            );
        }
        Ok(record)
    }

    /// The direct email `id` once it is final, or as it is when `timeout` runs out; `None`
    /// when there is no such email.
    pub async fn wait_email(
        &self,
        id: i64,
        timeout: Duration,
    ) -> Result<Option<DirectEmailRecord>, NotificationError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut finished = self.inner.finished.subscribe();
        loop {
            let found = self.inner.store.email(id).await?;
            let done = found.as_ref().is_none_or(|e| e.state.is_final());
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(found);
            }
            let look_again = (tokio::time::Instant::now() + POLL_EVERY).min(deadline);
            announced(&mut finished, announcement(id), look_again).await;
        }
    }

    /// Claims direct email `id` and sends it, unless someone else holds it or it is final.
    async fn send_direct(&self, id: i64) -> anyhow::Result<()> {
        let Some(claimed) = self.inner.store.claim_email(id, self.inner.lease).await? else {
            return Ok(());
        };
        self.send_claimed_email(claimed).await
    }

    /// Runs until shutdown: every few seconds, sends the direct emails nobody is sending
    /// (given back by a sender that stopped, or whose sender's lease ran out).
    pub fn start_email_sweeper(&self) {
        let n = self.clone();
        self.spawn(async move {
            loop {
                tokio::select! {
                    _ = n.inner.shutdown.wait() => return,
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                }
                match n
                    .inner
                    .store
                    .claim_due_emails(n.inner.lease, SWEEP_BATCH)
                    .await
                {
                    Ok(claimed) => {
                        for email in claimed {
                            let sender = n.clone();
                            n.spawn(async move {
                                let n = sender;
                                let id = email.id;
                                if let Err(e) = n.send_claimed_email(email).await {
                                    tracing::warn!(email_id = id, error = %e, "sending an email failed; the sweeper retries it");
                                }
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "looking for unsent emails failed")
                    }
                }
            }
        });
    }

    /// Sends a claimed direct email: bounded retries of a transient failure, then the
    /// outcome recorded and announced.
    async fn send_claimed_email(&self, record: DirectEmailRecord) -> anyhow::Result<()> {
        let inner = &self.inner;
        let id = record.id;
        let email = Email {
            to_address: record.email.to_address.clone(),
            to_name: String::new(),
            subject: record.email.subject.clone(),
            text_body: record.email.body.clone(),
            html_body: String::new(),
        };
        let mut attempt = record.attempts.max(0) as u32 + 1;
        let result = loop {
            let span = chat_common::otel_span!(
                "email",
                otel.name = "email send",
                email.id = id,
                email.attempt = attempt,
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            );
            let sent = inner.sender.send(&email).instrument(span.clone()).await;
            if let Err(e) = &sent {
                trace::record_error(&span, e);
            }
            match sent {
                Ok(()) => {
                    metrics::counter!("notification_direct_emails_total", "outcome" => "delivered")
                        .increment(1);
                    break inner.store.finish_email(id, None).await;
                }
                Err(SendError::Transient(e)) if attempt < inner.retry.max_attempts => {
                    tracing::info!(email_id = id, attempt, error = %e, "email failed, retrying");
                    inner
                        .store
                        .email_attempt_failed(id, &e, inner.lease)
                        .await?;
                    tokio::select! {
                        _ = tokio::time::sleep(inner.retry.pause_after(attempt)) => {}
                        // Given back, so a replica's sweeper (or this process after its
                        // restart) sends it without waiting for the lease.
                        _ = inner.shutdown.wait() => return inner.store.release_email(id).await,
                    }
                    attempt += 1;
                }
                Err(SendError::Permanent(e)) => break self.email_failed(id, &e).await,
                Err(SendError::Transient(e)) => {
                    break self
                        .email_failed(id, &format!("gave up after {attempt} tries: {e}"))
                        .await
                }
            }
        };
        self.announce(announcement(id), None);
        result
    }

    async fn email_failed(&self, id: i64, error: &str) -> anyhow::Result<()> {
        tracing::warn!(email_id = id, error = %error, "email failed for good");
        metrics::counter!("notification_direct_emails_total", "outcome" => "failed").increment(1);
        self.inner.store.finish_email(id, Some(error)).await
    }
}
