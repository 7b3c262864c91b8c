//! The delivery logic, shared by both ways a message reaches this service: its JetStream
//! event (`consumer.rs`) and the saga's `NotifyMessage` call (`service.rs`).
//!
//! Either path first makes sure the message is recorded with its recipients (the members
//! but the sender, with their emails, looked up once through ChatService and AuthService
//! with this service's token), then claims whatever deliveries are not yet claimed and
//! sends them. Claims are rows updated in PostgreSQL, so two replicas, or the event and the
//! saga arriving at once, never send the same email twice. A transient SMTP failure is
//! retried with exponential backoff up to a bound; a permanent one, or running out of
//! tries, is recorded as FAILED with its error, which `GetDeliveryStatus` reports.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tonic::{transport::Channel, Code};

use chat_common::{service_token::ServiceCredential, Shutdown};
use grpc_chat_proto::auth::v1::{auth_service_client::AuthServiceClient, GetUserEmailsRequest};
use grpc_chat_proto::chat::v1::{
    self as chatpb, chat_service_client::ChatServiceClient, ListMembersRequest, ListMessagesRequest,
};

use crate::{
    config::RetryPolicy,
    email::{render, EmailSender, MessageContent, SendError},
    error::NotificationError,
    store::{DeliveryRecord, DeliveryState, DeliveryStore, MessageRecord, Recipient},
};

/// How many emails one replica sends at once for one message.
const SEND_CONCURRENCY: usize = 8;
/// How often a waiting status call looks at the records again.
const POLL_EVERY: Duration = Duration::from_millis(25);

#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn DeliveryStore>,
    sender: Arc<dyn EmailSender>,
    chat: ChatServiceClient<Channel>,
    auth: AuthServiceClient<Channel>,
    credential: ServiceCredential,
    retry: RetryPolicy,
    lease: Duration,
    shutdown: Shutdown,
}

/// The overall state of a message's deliveries: final only when every one is.
pub fn overall(deliveries: &[DeliveryRecord]) -> DeliveryState {
    if deliveries.iter().any(|d| !d.state.is_final()) {
        DeliveryState::Pending
    } else if deliveries.iter().any(|d| d.state == DeliveryState::Failed) {
        DeliveryState::Failed
    } else {
        DeliveryState::Delivered
    }
}

impl Notifier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn DeliveryStore>,
        sender: Arc<dyn EmailSender>,
        chat: ChatServiceClient<Channel>,
        auth: AuthServiceClient<Channel>,
        credential: ServiceCredential,
        retry: RetryPolicy,
        lease: Duration,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                sender,
                chat,
                auth,
                credential,
                retry,
                lease,
                shutdown,
            }),
        }
    }

    /// Records (if new) and sends every email of `message`; returns once the claimed emails
    /// are delivered or failed for good.
    pub async fn notify(&self, message: &chatpb::Message) -> Result<(), NotificationError> {
        self.ensure_recorded(message).await?;
        self.send_claimable(message.chat_id, message.seq).await
    }

    /// Whether the message is known here.
    pub async fn is_recorded(&self, chat_id: i64, seq: i64) -> Result<bool, NotificationError> {
        Ok(self.inner.store.is_recorded(chat_id, seq).await?)
    }

    /// A live message from ChatService; NOT_FOUND when it does not exist or was deleted.
    pub async fn fetch_message(
        &self,
        chat_id: i64,
        seq: i64,
    ) -> Result<chatpb::Message, NotificationError> {
        let not_found = || NotificationError::NotFound(format!("message {seq} of chat {chat_id}"));
        let req = self
            .inner
            .credential
            // Newest first, before seq + 1: the message itself when it is there. (Paging
            // forward from seq - 1 would not do for seq 1: after_seq 0 means "newest".)
            .request(ListMessagesRequest {
                chat_id,
                page_size: 1,
                after_seq: 0,
                before_seq: seq + 1,
            })
            .await
            .map_err(|s| NotificationError::from_call("service token", &s))?;
        let page = match self.inner.chat.clone().list_messages(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Err(not_found()),
            Err(s) => return Err(NotificationError::from_call("chat service", &s)),
        };
        page.messages
            .into_iter()
            .find(|m| m.seq == seq)
            .ok_or_else(not_found)
    }

    /// The deliveries once final, or as they are when `timeout` runs out; `None` when the
    /// message was never seen.
    pub async fn wait_final(
        &self,
        chat_id: i64,
        seq: i64,
        timeout: Duration,
    ) -> Result<Option<Vec<DeliveryRecord>>, NotificationError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self.inner.store.deliveries(chat_id, seq).await?;
            let done = matches!(&found, Some(d) if overall(d).is_final());
            if done || tokio::time::Instant::now() + POLL_EVERY > deadline {
                return Ok(found);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn ensure_recorded(&self, m: &chatpb::Message) -> Result<(), NotificationError> {
        let store = &self.inner.store;
        if store.is_recorded(m.chat_id, m.seq).await? {
            return Ok(());
        }
        let (title, members) = self.members(m.chat_id).await?;
        let others: Vec<i64> = members
            .into_iter()
            .filter(|id| *id != m.sender_id)
            .collect();
        let recipients = self.emails(others).await?;
        let sent_at = m
            .created_at
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .unwrap_or_else(chrono::Utc::now);
        store
            .record(
                &MessageRecord {
                    chat_id: m.chat_id,
                    seq: m.seq,
                    sender_id: m.sender_id,
                    sender_username: m.sender_username.clone(),
                    chat_title: title,
                    text: m.text.clone(),
                    sent_at,
                },
                &recipients,
            )
            .await?;
        Ok(())
    }

    /// The chat's title and member ids; a chat that no longer exists has none to notify.
    async fn members(&self, chat_id: i64) -> Result<(String, Vec<i64>), NotificationError> {
        let req = self
            .inner
            .credential
            .request(ListMembersRequest { chat_id })
            .await
            .map_err(|s| NotificationError::from_call("service token", &s))?;
        match self.inner.chat.clone().list_members(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let title = r.chat.map(|c| c.title).unwrap_or_default();
                Ok((title, r.members.into_iter().map(|m| m.user_id).collect()))
            }
            Err(s) if s.code() == Code::NotFound => Ok((String::new(), Vec::new())),
            Err(s) => Err(NotificationError::from_call("chat service", &s)),
        }
    }

    async fn emails(&self, user_ids: Vec<i64>) -> Result<Vec<Recipient>, NotificationError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let req = self
            .inner
            .credential
            .request(GetUserEmailsRequest { user_ids })
            .await
            .map_err(|s| NotificationError::from_call("service token", &s))?;
        let resp = self
            .inner
            .auth
            .clone()
            .get_user_emails(req)
            .await
            .map_err(|s| NotificationError::from_call("auth service", &s))?
            .into_inner();
        Ok(resp
            .users
            .into_iter()
            .map(|u| Recipient {
                user_id: u.user_id,
                email: u.email,
                username: u.username,
            })
            .collect())
    }

    /// Claims and sends every delivery of the message that nobody else is sending.
    pub async fn send_claimable(&self, chat_id: i64, seq: i64) -> Result<(), NotificationError> {
        let store = &self.inner.store;
        let claimed = store.claim(chat_id, seq, self.inner.lease).await?;
        if claimed.is_empty() {
            return Ok(());
        }
        let message = store
            .message(chat_id, seq)
            .await?
            .ok_or_else(|| anyhow::anyhow!("deliveries without their message {chat_id}/{seq}"))?;
        futures::stream::iter(claimed)
            .for_each_concurrent(SEND_CONCURRENCY, |d| {
                let message = &message;
                async move {
                    if let Err(e) = self.deliver(message, d).await {
                        tracing::error!(chat_id, seq, error = ?e, "recording a delivery failed");
                    }
                }
            })
            .await;
        Ok(())
    }

    /// Sends one claimed email with bounded retries and records the outcome.
    async fn deliver(&self, m: &MessageRecord, d: DeliveryRecord) -> anyhow::Result<()> {
        let inner = &self.inner;
        let r = &d.recipient;
        let email = render(
            &MessageContent {
                chat_id: m.chat_id,
                chat_title: &m.chat_title,
                sender_username: &m.sender_username,
                text: &m.text,
            },
            &r.email,
            &r.username,
        );
        let mut attempt = d.attempts.max(0) as u32;
        loop {
            attempt += 1;
            let outcome = inner.sender.send(&email).await;
            let error = match outcome {
                Ok(()) => {
                    metrics::counter!("notification_emails_total", "outcome" => "delivered")
                        .increment(1);
                    return inner.store.finish(m.chat_id, m.seq, r.user_id, None).await;
                }
                Err(SendError::Permanent(e)) => e,
                Err(SendError::Transient(e)) if attempt < inner.retry.max_attempts => {
                    tracing::info!(recipient = r.user_id, attempt, error = %e, "email failed, retrying");
                    inner
                        .store
                        .attempt_failed(m.chat_id, m.seq, r.user_id, &e, inner.lease)
                        .await?;
                    tokio::select! {
                        _ = tokio::time::sleep(inner.retry.pause_after(attempt)) => continue,
                        // The claim's lease runs out and the event's redelivery retries it.
                        _ = inner.shutdown.wait() => return Ok(()),
                    }
                }
                Err(SendError::Transient(e)) => format!("gave up after {attempt} tries: {e}"),
            };
            metrics::counter!("notification_emails_total", "outcome" => "failed").increment(1);
            tracing::warn!(
                chat_id = m.chat_id,
                seq = m.seq,
                recipient = r.user_id,
                error = %error,
                "email failed for good"
            );
            return inner
                .store
                .finish(m.chat_id, m.seq, r.user_id, Some(&error))
                .await;
        }
    }
}
