//! The delivery logic, shared by both ways a message reaches this service: its event
//! (`source.rs`) and the saga's `NotifyMessage` call (`service.rs`).
//!
//! Either path first makes sure the message is recorded with its recipients (the members
//! but the sender, with their emails, looked up through ChatService and AuthService with
//! this service's token and kept per chat for a few seconds) and, in the same write,
//! claims whatever deliveries are not yet claimed; then it sends them. On PostgreSQL the
//! records and claims of concurrent messages share one statement, and so do their
//! outcomes (see `store/postgres.rs`). Claims are rows updated in PostgreSQL, so two replicas, or the event and the
//! saga arriving at once, never send the same email twice. An event is done only once every
//! delivery is final: deliveries held by another sender (which may have died, leaving its
//! claim until the lease runs out) or given back by a retry cut short at shutdown make the
//! event come again, so no email is dropped with it. A transient SMTP failure is
//! retried with exponential backoff up to a bound; a permanent one, or running out of
//! tries, is recorded as FAILED with its error, which `GetDeliveryStatus` reports.
//!
//! An event can outlive its message: the saga removes a message whose notification failed
//! or ran past its deadline, possibly while every notifier was down and its event waited in
//! the stream. So before the emails of an event that waited are sent, and again before
//! every retry, the message is looked up in ChatService; a message that is gone has its
//! unsent deliveries cancelled (recorded FAILED, "cancelled: ..."), never emailed. Only an
//! email already handed to the mail server when the message is removed still goes out.
//! An event handled within [`FRESH`] of its message's creation, the usual case, is not
//! looked up: a removal that early would race the emails whether or not the message was
//! looked up a few milliseconds before they go out, and the lookup (a call to ChatService
//! and a read of its database for every message) was a quarter of the cost of a send.
//!
//! When traces are exported, notifying a message is a `notify` span (with the number of
//! recipients) and every email attempt an `email` span of its own, failed with the SMTP
//! error when it failed, so a trace shows which email took long or failed and why.

mod direct;

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use moka::sync::Cache;
use tokio::sync::broadcast;
use tonic::Code;
use tracing::{field::Empty, Instrument, Span};

use chat_common::{client::TracedChannel, service_token::ServiceCredential, trace, Shutdown};
use grpc_chat_proto::auth::v1::{auth_service_client::AuthServiceClient, GetUserEmailsRequest};
use grpc_chat_proto::chat::v1::{
    self as chatpb, chat_service_client::ChatServiceClient, ListMembersRequest, ListMessagesRequest,
};

use crate::{
    config::RetryPolicy,
    email::{render, Email, EmailSender, MessageContent, SendError},
    error::NotificationError,
    store::{DeliveryRecord, DeliveryState, DeliveryStore, MessageRecord, Recipient},
};

/// The error recorded on a delivery whose message was removed before it was emailed.
const CANCELLED: &str = "cancelled: the message was removed before it was emailed";
/// How old a message may be when its event is handled for its emails to go out without
/// looking it up in ChatService first (see the module docs). Short, so that an event that
/// waited (an outage, a redelivery, a backlog) is always looked up, and far above the
/// clock difference between the database that dated the message and this replica.
const FRESH: Duration = Duration::from_millis(250);
/// How many emails one replica sends at once for one message.
const SEND_CONCURRENCY: usize = 8;
/// How often, at most, a waiting status call looks at the records again when nothing in
/// this process said they changed (another replica may be sending them).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Its first look again: the other sender usually finishes within milliseconds (the
/// saga's call and the message's event race for the same emails), so the pause starts
/// short and doubles up to [`POLL_EVERY`].
const FIRST_POLL: Duration = Duration::from_millis(4);

/// Writes and sends the emails for messages and direct SendEmail calls, recording each
/// delivery so that it goes out once across replicas and redeliveries. Cheap to clone; the
/// clones share one state.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn DeliveryStore>,
    sender: Arc<dyn EmailSender>,
    chat: ChatServiceClient<TracedChannel>,
    auth: AuthServiceClient<TracedChannel>,
    credential: ServiceCredential,
    retry: RetryPolicy,
    lease: Duration,
    shutdown: Shutdown,
    /// Every message whose claimed emails this process has just finished sending, so a
    /// status call waiting on them looks again at once, or needs not look at all.
    finished: broadcast::Sender<Announcement>,
    /// Chats' titles and recipients, reused for [`RECIPIENTS_TTL`] by the messages they
    /// are recent enough for (see [`Notifier::chat_recipients`]).
    recipients: Cache<i64, CachedChat>,
}

/// How long a chat's members and their emails are reused. Membership does not depend on
/// it: a message is matched with members read at its own membership version or later.
/// Addresses do: an address changed less than this ago may still get one more email.
/// A busy chat still asks for its members about once a second per replica instead of
/// twice per message.
pub const RECIPIENTS_TTL: Duration = Duration::from_secs(1);
/// Most chats whose recipients are kept.
const RECIPIENTS_CACHED: u64 = 4096;

#[derive(Clone)]
struct CachedChat {
    title: String,
    recipients: Arc<Vec<Recipient>>,
    /// The chat's membership version the members were read at.
    members_version: i64,
}

/// Whether `message` was created within [`FRESH`] of `now`; not when it has no time, or
/// one further ahead of `now` than clocks differ.
fn is_fresh(message: &chatpb::Message, now: chrono::DateTime<chrono::Utc>) -> bool {
    let Some(created) = message
        .created_at
        .as_ref()
        .and_then(chat_common::convert::datetime)
    else {
        return false;
    };
    let Ok(fresh) = chrono::TimeDelta::from_std(FRESH) else {
        return false;
    };
    let age = now.signed_duration_since(created);
    -fresh < age && age < fresh
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
    /// Spawns work the binary waits for at shutdown (see [`Shutdown::spawn`]).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.shutdown.spawn(task)
    }

    /// A notifier over `store`, sending with `sender` and retrying by `retry`. A claimed
    /// delivery belongs to this replica for `lease`. Background sends stop on `shutdown`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn DeliveryStore>,
        sender: Arc<dyn EmailSender>,
        chat: ChatServiceClient<TracedChannel>,
        auth: AuthServiceClient<TracedChannel>,
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
                finished: broadcast::channel(1024).0,
                recipients: Cache::builder()
                    .max_capacity(RECIPIENTS_CACHED)
                    .time_to_live(RECIPIENTS_TTL)
                    .build(),
            }),
        }
    }

    /// Records (if new) and sends every email of `message`, an event's copy that may have
    /// been removed since, stored under the chat's membership version `members_version`
    /// (None when its event did not say: its members are then read afresh); returns once
    /// the claimed emails are delivered or failed for good.
    pub async fn notify(
        &self,
        message: &chatpb::Message,
        members_version: Option<i64>,
    ) -> Result<(), NotificationError> {
        self.notify_traced(message, false, members_version).await
    }

    /// As [`Notifier::notify`], for a message just read from ChatService, by a caller who
    /// then waits for the deliveries: `Ok` too when another sender holds them.
    pub async fn notify_fetched(&self, message: &chatpb::Message) -> Result<(), NotificationError> {
        self.notify_traced(message, true, None).await
    }

    async fn notify_traced(
        &self,
        message: &chatpb::Message,
        fetched: bool,
        members_version: Option<i64>,
    ) -> Result<(), NotificationError> {
        let span = chat_common::otel_span!(
            "notify",
            otel.name = "notify message",
            chat.id = message.chat_id,
            message.seq = message.seq,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        let result = self
            .notify_in_span(message, fetched, members_version)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            if !e.is_final() && e.is_failure() {
                trace::record_error(&span, e);
            }
        }
        result
    }

    async fn notify_in_span(
        &self,
        message: &chatpb::Message,
        fetched: bool,
        members_version: Option<i64>,
    ) -> Result<(), NotificationError> {
        let (recorded, new, claimed) = self.record(message, members_version).await?;
        let (chat_id, seq) = (message.chat_id, message.seq);
        if !fetched
            && !is_fresh(message, chrono::Utc::now())
            && !self.still_there(chat_id, seq).await?
        {
            return self.cancel(chat_id, seq, claimed).await;
        }
        if claimed.is_empty() {
            self.announce((chat_id, seq), None);
            // A caller of NotifyMessage waits for the holder (`wait_final`); an event is
            // not done until the deliveries are.
            return if fetched {
                Ok(())
            } else {
                self.settled(chat_id, seq).await
            };
        }
        // The first record wins: when this one was not it, send what was recorded.
        let recorded = if new {
            recorded
        } else {
            self.recorded(chat_id, seq).await?
        };
        self.send_claimed(recorded, claimed).await;
        if !fetched && self.inner.shutdown.is_triggered() {
            // Retries cut short by the shutdown gave their claims back: not done.
            return self.settled(chat_id, seq).await;
        }
        Ok(())
    }

    /// Whether the event is done with: every delivery of the message is final. A delivery
    /// that is not, and that this call could not claim, is held by another sender; that
    /// sender may be a process that died, whose claim only runs out with its lease. So the
    /// event is not done: it comes again (JetStream redelivery, the in-process retry) until
    /// the holder finished or its claim ran out and this process takes the delivery over.
    async fn settled(&self, chat_id: i64, seq: i64) -> Result<(), NotificationError> {
        match self.inner.store.deliveries(chat_id, seq).await? {
            Some(d) if !overall(&d).is_final() => Err(NotificationError::Held(format!(
                "emails of message {seq} of chat {chat_id} are not settled yet: another \
                 sender holds them, or this one is stopping"
            ))),
            _ => Ok(()),
        }
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
        // No message has the largest seq there is; and `seq + 1` must not overflow.
        let before_seq = seq.checked_add(1).ok_or_else(not_found)?;
        let req = self
            .inner
            .credential
            // Newest first, before seq + 1: the message itself when it is there. (Paging
            // forward from seq - 1 would not do for seq 1: after_seq 0 means "newest".)
            .request(ListMessagesRequest {
                chat_id,
                page_size: 1,
                after_seq: 0,
                before_seq,
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

    /// Whether the message still exists in ChatService (false: deleted, or its chat is).
    async fn still_there(&self, chat_id: i64, seq: i64) -> Result<bool, NotificationError> {
        match self.fetch_message(chat_id, seq).await {
            Ok(_) => Ok(true),
            Err(NotificationError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The message is gone: every delivery nobody is sending (`claimed`, and any this call
    /// can still claim) is cancelled, so no email about it goes out later (a redelivered
    /// event finds them final).
    async fn cancel(
        &self,
        chat_id: i64,
        seq: i64,
        mut claimed: Vec<DeliveryRecord>,
    ) -> Result<(), NotificationError> {
        claimed.extend(
            self.inner
                .store
                .claim(chat_id, seq, self.inner.lease)
                .await?,
        );
        for d in &claimed {
            self.inner
                .store
                .finish(chat_id, seq, d.recipient.user_id, Some(CANCELLED))
                .await?;
        }
        if !claimed.is_empty() {
            metrics::counter!("notification_emails_total", "outcome" => "cancelled")
                .increment(claimed.len() as u64);
            tracing::info!(
                chat_id,
                seq,
                cancelled = claimed.len(),
                "the message was removed: its emails are cancelled"
            );
        }
        self.announce((chat_id, seq), None);
        Ok(())
    }

    /// Tells status calls waiting on `key` (a message's `(chat_id, seq)`, or a direct
    /// email's) that it changed, with its final deliveries when they are known.
    pub(crate) fn announce(&self, key: (i64, i64), settled: Option<Arc<Vec<DeliveryRecord>>>) {
        let _ = self.inner.finished.send(Announcement { key, settled });
    }

    /// The deliveries once final, or as they are when `timeout` runs out; `None` when the
    /// message was never seen.
    pub async fn wait_final(
        &self,
        chat_id: i64,
        seq: i64,
        timeout: Duration,
    ) -> Result<Option<Vec<DeliveryRecord>>, NotificationError> {
        self.wait(chat_id, seq, timeout, Look::Now).await
    }

    /// As [`Notifier::wait_final`], for a message whose emails are almost surely still on
    /// their way (NotifyMessage right after the message was stored): the records are first
    /// read once this process says it finished sending them, or after [`FIRST_POLL`] when
    /// another replica sends them. Reading at once would find the message not even
    /// recorded yet, which takes two statements to learn.
    pub async fn wait_final_after_sending(
        &self,
        chat_id: i64,
        seq: i64,
        timeout: Duration,
    ) -> Result<Option<Vec<DeliveryRecord>>, NotificationError> {
        self.wait(chat_id, seq, timeout, Look::AfterAPause).await
    }

    async fn wait(
        &self,
        chat_id: i64,
        seq: i64,
        timeout: Duration,
        first: Look,
    ) -> Result<Option<Vec<DeliveryRecord>>, NotificationError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Listen before reading, so a finish between the read and the wait is not missed.
        let mut finished = self.inner.finished.subscribe();
        let mut pauses = ExponentialBuilder::new()
            .with_min_delay(FIRST_POLL)
            .with_max_delay(POLL_EVERY)
            .without_max_times()
            .build();
        if first == Look::AfterAPause {
            let pause = pauses.next().unwrap_or(FIRST_POLL);
            let until = deadline.min(tokio::time::Instant::now() + pause);
            if let Some(settled) = announced(&mut finished, (chat_id, seq), until).await {
                return Ok(Some(settled.to_vec()));
            }
        }
        loop {
            let found = self.inner.store.deliveries(chat_id, seq).await?;
            let done = matches!(&found, Some(d) if overall(d).is_final());
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(found);
            }
            let pause = pauses.next().unwrap_or(POLL_EVERY);
            let look_again = (tokio::time::Instant::now() + pause).min(deadline);
            if let Some(settled) = announced(&mut finished, (chat_id, seq), look_again).await {
                return Ok(Some(settled.to_vec()));
            }
        }
    }

    /// Records the message with its recipients unless it is recorded already, and claims
    /// its deliveries that nobody is sending; returns the record as this call made it,
    /// whether it was the first, and the claimed deliveries.
    async fn record(
        &self,
        m: &chatpb::Message,
        members_version: Option<i64>,
    ) -> Result<(MessageRecord, bool, Vec<DeliveryRecord>), NotificationError> {
        let (title, members) = self.chat_recipients(m.chat_id, members_version).await?;
        let recipients: Vec<Recipient> = members
            .iter()
            .filter(|r| r.user_id != m.sender_id)
            .cloned()
            .collect();
        let sent_at = m
            .created_at
            .as_ref()
            .and_then(chat_common::convert::datetime)
            .unwrap_or_else(chrono::Utc::now);
        let record = MessageRecord {
            chat_id: m.chat_id,
            seq: m.seq,
            sender_id: m.sender_id,
            sender_username: m.sender_username.clone(),
            chat_title: title,
            text: m.text.clone(),
            sent_at,
        };
        trace::set_attribute(&Span::current(), "recipient_count", recipients.len() as i64);
        let (new, claimed) = self
            .inner
            .store
            .record_and_claim(&record, &recipients, self.inner.lease)
            .await?;
        Ok((record, new, claimed))
    }

    /// The chat's title and every member with their email, for a message stored under
    /// membership version `at`, from a short-lived cache: a busy chat would otherwise cost
    /// two lookups in other services per message.
    ///
    /// Members read at version `at` or later are the message's members, less any who left
    /// since (they get no email: conservative) and plus any who joined since (they can
    /// read the message in the chat anyway). Members read at an earlier version may still
    /// hold someone who left before the message was stored, so they are read again. A
    /// message without a version (its event did not carry one: a chat-service of the
    /// previous version, or a message fetched for NotifyMessage) always gets members read
    /// now. Addresses are kept only [`RECIPIENTS_TTL`]. A chat deleted meanwhile: its
    /// last messages still get their emails.
    async fn chat_recipients(
        &self,
        chat_id: i64,
        at: Option<i64>,
    ) -> Result<(String, Arc<Vec<Recipient>>), NotificationError> {
        if let (Some(at), Some(c)) = (at, self.inner.recipients.get(&chat_id)) {
            if c.members_version >= at {
                return Ok((c.title, c.recipients));
            }
        }
        let (title, members, members_version) = self.members(chat_id).await?;
        if members.is_empty() {
            return Ok((title, Arc::new(Vec::new())));
        }
        let recipients = Arc::new(self.emails(members).await?);
        self.inner.recipients.insert(
            chat_id,
            CachedChat {
                title: title.clone(),
                recipients: recipients.clone(),
                members_version,
            },
        );
        Ok((title, recipients))
    }

    /// The chat's title, member ids and the membership version they were read at; a chat
    /// that no longer exists has none to notify.
    async fn members(&self, chat_id: i64) -> Result<(String, Vec<i64>, i64), NotificationError> {
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
                let ids = r.members.into_iter().map(|m| m.user_id).collect();
                Ok((title, ids, r.members_version))
            }
            Err(s) if s.code() == Code::NotFound => Ok((String::new(), Vec::new(), 0)),
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
    ///
    /// Every claimed email is tried once, `SEND_CONCURRENCY` at a time, and those that went
    /// out are recorded together in one write; only the ones that failed go on, each on
    /// its own, through retries and their own records.
    pub async fn send_claimable(&self, chat_id: i64, seq: i64) -> Result<(), NotificationError> {
        if !self.still_there(chat_id, seq).await? {
            return self.cancel(chat_id, seq, Vec::new()).await;
        }
        let Some(claimed) = self.claim(chat_id, seq).await? else {
            return Ok(());
        };
        let message = self.recorded(chat_id, seq).await?;
        self.send_claimed(message, claimed).await;
        Ok(())
    }

    /// Claims the message's deliveries that nobody is sending; `None` when there are none,
    /// after telling waiters to look again (there may be none left to send, or another
    /// sender holds them).
    async fn claim(
        &self,
        chat_id: i64,
        seq: i64,
    ) -> Result<Option<Vec<DeliveryRecord>>, NotificationError> {
        let claimed = self
            .inner
            .store
            .claim(chat_id, seq, self.inner.lease)
            .await?;
        if claimed.is_empty() {
            self.announce((chat_id, seq), None);
            return Ok(None);
        }
        Ok(Some(claimed))
    }

    /// The message as recorded.
    async fn recorded(&self, chat_id: i64, seq: i64) -> Result<MessageRecord, NotificationError> {
        Ok(self
            .inner
            .store
            .message(chat_id, seq)
            .await?
            .ok_or_else(|| anyhow::anyhow!("deliveries without their message {chat_id}/{seq}"))?)
    }

    /// Sends claimed deliveries and records their outcomes.
    async fn send_claimed(&self, message: MessageRecord, claimed: Vec<DeliveryRecord>) {
        let store = &self.inner.store;
        let (chat_id, seq) = (message.chat_id, message.seq);
        let tried: Vec<(DeliveryRecord, Email, Result<(), SendError>)> =
            futures::stream::iter(claimed)
                .map(|d| {
                    let email = email_for(&message, &d);
                    let message = &message;
                    async move {
                        let attempt = d.attempts.max(0) as u32 + 1;
                        let sent = self.send(message, &d, &email, attempt).await;
                        (d, email, sent)
                    }
                })
                .buffer_unordered(SEND_CONCURRENCY)
                .collect()
                .await;
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        for (d, email, sent) in tried {
            match sent {
                Ok(()) => delivered.push(d),
                Err(e) => failed.push((d, email, e)),
            }
        }
        let mut settled = None;
        if !delivered.is_empty() {
            metrics::counter!("notification_emails_total", "outcome" => "delivered")
                .increment(delivered.len() as u64);
            let ids: Vec<i64> = delivered.iter().map(|d| d.recipient.user_id).collect();
            // Not recorded means sent again once the claim runs out: at least once.
            match store.finish_delivered(chat_id, seq, &ids).await {
                // Built only for someone waiting: most messages have nobody.
                Ok(Some(at)) if self.inner.finished.receiver_count() > 0 => {
                    settled = Some(Arc::new(delivered_whole(&delivered, at)));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(chat_id, seq, error = ?e, "recording deliveries failed");
                }
            }
        }
        futures::stream::iter(failed)
            .for_each_concurrent(SEND_CONCURRENCY, |(d, email, first)| {
                let message = &message;
                async move {
                    if let Err(e) = self.retry(message, d, email, first).await {
                        tracing::error!(chat_id, seq, error = ?e, "recording a delivery failed");
                    }
                }
            })
            .await;
        self.announce((chat_id, seq), settled);
    }

    /// An email whose first try failed: bounded retries of a transient failure, then the
    /// outcome recorded.
    async fn retry(
        &self,
        m: &MessageRecord,
        d: DeliveryRecord,
        email: Email,
        first: SendError,
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        let r = &d.recipient;
        let mut attempt = d.attempts.max(0) as u32 + 1;
        let mut outcome = Err(first);
        loop {
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
                        _ = tokio::time::sleep(inner.retry.pause_after(attempt)) => {}
                        // Given back, so the event's redelivery (after the restart, or on
                        // another replica) sends it without waiting for the lease.
                        _ = inner.shutdown.wait() => {
                            return inner.store.release(m.chat_id, m.seq, r.user_id).await;
                        }
                    }
                    attempt += 1;
                    outcome = match self.still_there(m.chat_id, m.seq).await {
                        Ok(true) => self.send(m, &d, &email, attempt).await,
                        Ok(false) => {
                            metrics::counter!("notification_emails_total", "outcome" => "cancelled")
                                .increment(1);
                            return inner
                                .store
                                .finish(m.chat_id, m.seq, r.user_id, Some(CANCELLED))
                                .await;
                        }
                        Err(e) => Err(SendError::Transient(format!(
                            "cannot tell whether the message still exists: {e}"
                        ))),
                    };
                    continue;
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

impl Notifier {
    /// One attempt at one email, in a span of its own.
    async fn send(
        &self,
        m: &MessageRecord,
        d: &DeliveryRecord,
        email: &Email,
        attempt: u32,
    ) -> Result<(), SendError> {
        let span = chat_common::otel_span!(
            "email",
            otel.name = "email send",
            chat.id = m.chat_id,
            message.seq = m.seq,
            recipient.id = d.recipient.user_id,
            email.attempt = attempt,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        let sent = self.inner.sender.send(email).instrument(span.clone()).await;
        if let Err(e) = &sent {
            trace::record_error(&span, e);
        }
        sent
    }
}

/// The email of one delivery.
fn email_for(m: &MessageRecord, d: &DeliveryRecord) -> Email {
    render(
        &MessageContent {
            chat_id: m.chat_id,
            chat_title: &m.chat_title,
            sender_username: &m.sender_username,
            text: &m.text,
        },
        &d.recipient.email,
        &d.recipient.username,
    )
}

/// What this process announces when it finished sending a message's claimed emails.
#[derive(Clone)]
pub(crate) struct Announcement {
    /// The message's `(chat_id, seq)`, or a direct email's (see `direct`).
    key: (i64, i64),
    /// The message's deliveries, when this process knows them to be final: every email of
    /// the message went out on its first try from here, and the store said so
    /// ([`DeliveryStore::finish_delivered`]). A waiter then needs not read them.
    settled: Option<Arc<Vec<DeliveryRecord>>>,
}

/// The deliveries of a message whose every email (`delivered`) went out on its first try,
/// recorded at `at`, as the store reads them back: by recipient, one try each.
fn delivered_whole(
    delivered: &[DeliveryRecord],
    at: chrono::DateTime<chrono::Utc>,
) -> Vec<DeliveryRecord> {
    let mut settled: Vec<DeliveryRecord> = delivered
        .iter()
        .map(|d| DeliveryRecord {
            recipient: d.recipient.clone(),
            state: DeliveryState::Delivered,
            attempts: 1,
            error: String::new(),
            updated_at: at,
        })
        .collect();
    settled.sort_by_key(|d| d.recipient.user_id);
    settled
}

/// When a status call first reads the records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// At once.
    Now,
    /// After a first pause, or sooner when this process announces the message.
    AfterAPause,
}

/// Waits until this process announces that it finished sending the claimed emails of
/// `key` (or may have: announcements were missed), or until `until`. Returns the
/// deliveries when the announcement said they are final.
pub(crate) async fn announced(
    finished: &mut broadcast::Receiver<Announcement>,
    key: (i64, i64),
    until: tokio::time::Instant,
) -> Option<Arc<Vec<DeliveryRecord>>> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return None,
            m = finished.recv() => match m {
                Ok(m) if m.key != key => continue,
                Ok(m) => return m.settled,
                // Missed announcements may include this one.
                Err(broadcast::error::RecvError::Lagged(_)) => return None,
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep_until(until).await;
                    return None;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(at: chrono::DateTime<chrono::Utc>) -> chatpb::Message {
        chatpb::Message {
            created_at: Some(chat_common::convert::timestamp(at)),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_message_just_created_is_fresh() {
        let now = chrono::Utc::now();
        let ms = chrono::TimeDelta::milliseconds;
        assert!(is_fresh(&created(now), now));
        assert!(is_fresh(&created(now - ms(200)), now));
        // Dated a little ahead by the database's clock.
        assert!(is_fresh(&created(now + ms(100)), now));
        // Waited: an outage, a redelivery, a backlog.
        assert!(!is_fresh(&created(now - ms(250)), now));
        assert!(!is_fresh(&created(now - ms(60_000)), now));
        // Clocks this far apart prove nothing.
        assert!(!is_fresh(&created(now + ms(5_000)), now));
        assert!(!is_fresh(&chatpb::Message::default(), now));
    }
}
