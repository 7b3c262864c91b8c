//! NotificationService against real NATS, chat and auth services, and a real SMTP server
//! in the test process; every test runs twice, with the services storing in PostgreSQL and
//! in SQLite files (`backend_tests!` at the end).

use std::time::Duration;

use chat_common::service_token::with_bearer;
use chat_testkit::{
    chat_config, fault::TcpProxy, notification_config, smtp::SmtpMode, smtp::TestSmtp, spawn_auth,
    spawn_chat, spawn_notification, TestAuth, TestChat, TestDb, TestNats, TestNotification,
    TestUser,
};
use grpc_chat_proto::chat::v1 as chatpb;
use grpc_chat_proto::notification::v1::{self as pb, DeliveryState};
use notification_service::config::EmailConfig;
use tonic::Code;

struct World {
    auth: TestAuth,
    chat: TestChat,
    nats: TestNats,
    notify_db: TestDb,
    smtp: TestSmtp,
    /// A service token, as the saga holds one, for the calls only services may make.
    token: String,
    _chat_db: TestDb,
}

impl World {
    async fn new(mode: SmtpMode) -> Self {
        let auth = spawn_auth().await;
        let chat_db = TestDb::new().await;
        let nats = TestNats::new();
        let chat = spawn_chat(chat_config(&auth, &chat_db.url, &nats)).await;
        let token = auth.service_token("saga-orchestrator").await;
        Self {
            token,
            auth,
            chat,
            nats,
            notify_db: TestDb::new().await,
            smtp: TestSmtp::start(mode).await,
            _chat_db: chat_db,
        }
    }

    async fn notifier(&self) -> TestNotification {
        spawn_notification(notification_config(
            &self.auth,
            &self.chat,
            &self.notify_db.url,
            &self.nats,
            self.smtp.addr,
        ))
        .await
    }

    async fn chat_of(&self, owner: &TestUser, members: &[&TestUser]) -> i64 {
        self.chat.create_chat(owner, "Launch <team>", members).await
    }

    async fn send(&self, user: &TestUser, chat_id: i64, text: &str) -> i64 {
        self.chat
            .client
            .clone()
            .send_message(user.req(chatpb::SendMessageRequest {
                chat_id,
                text: text.into(),
                ..Default::default()
            }))
            .await
            .expect("send")
            .into_inner()
            .message
            .expect("message")
            .seq
    }

    /// The message's deliveries once final (waiting up to 15 s).
    async fn status(
        &self,
        n: &TestNotification,
        chat_id: i64,
        seq: i64,
    ) -> pb::GetDeliveryStatusResponse {
        self.status_within(n, chat_id, seq, 15_000)
            .await
            .expect("status")
    }

    /// The message's deliveries once final or when `wait_ms` runs out.
    async fn status_within(
        &self,
        n: &TestNotification,
        chat_id: i64,
        seq: i64,
        wait_ms: i32,
    ) -> Result<pb::GetDeliveryStatusResponse, tonic::Status> {
        n.client
            .clone()
            .get_delivery_status(with_bearer(
                tonic::Request::new(pb::GetDeliveryStatusRequest {
                    chat_id,
                    seq,
                    wait_timeout_ms: wait_ms,
                }),
                &self.token,
            ))
            .await
            .map(|r| r.into_inner())
    }

    /// NotifyMessage for the message, as the saga calls it, waiting up to `timeout_ms`.
    async fn notify_within(
        &self,
        n: &TestNotification,
        chat_id: i64,
        seq: i64,
        timeout_ms: i32,
    ) -> Result<pb::NotifyMessageResponse, tonic::Status> {
        n.client
            .clone()
            .notify_message(with_bearer(
                tonic::Request::new(pb::NotifyMessageRequest {
                    chat_id,
                    seq,
                    timeout_ms,
                }),
                &self.token,
            ))
            .await
            .map(|r| r.into_inner())
    }
}

async fn every_member_but_the_sender_gets_one_email_even_with_two_replicas() {
    let w = World::new(SmtpMode::Accept).await;
    let (_n1, n2) = (w.notifier().await, w.notifier().await);
    let (alice, bob, carol) = (
        w.auth.user("alice").await,
        w.auth.user("bob").await,
        w.auth.user("carol").await,
    );
    let chat_id = w.chat_of(&alice, &[&bob, &carol]).await;
    for i in 1..=5 {
        w.send(&alice, chat_id, &format!("hello <b>{i}</b>")).await;
    }
    w.send(&bob, chat_id, "from bob").await;

    let mails = w.smtp.wait_for(12).await;
    for seq in 1..=6 {
        let s = w.status(&n2, chat_id, seq).await;
        assert_eq!(s.state, DeliveryState::Delivered as i32, "{s:?}");
        assert_eq!(s.deliveries.len(), 2);
    }
    // Give a duplicate, if any were to come, the time to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails_now = w.smtp.mails();
    assert_eq!(mails_now.len(), 12, "each email once: {mails_now:?}");
    let mut to: Vec<String> = w.smtp.recipients();
    to.dedup();
    assert_eq!(
        to,
        vec![
            "alice@example.com".to_string(),
            "bob@example.com".into(),
            "carol@example.com".into()
        ]
    );
    let alice_mails: Vec<_> = mails
        .iter()
        .filter(|m| m.to == ["alice@example.com"])
        .collect();
    assert_eq!(alice_mails.len(), 1, "alice only hears of bob's message");
    for m in &mails {
        assert_eq!(m.to.len(), 1, "one recipient per email");
        assert!(!m.data.contains("carol@example.com") || m.to == ["carol@example.com"]);
        assert!(m.data.contains("Subject:"), "{}", m.data);
    }
    let bobs = mails
        .iter()
        .find(|m| m.to == ["bob@example.com"])
        .expect("bob's mail");
    assert!(bobs.data.contains("alice"), "{}", bobs.data);
    assert!(bobs.data.contains("Launch"), "{}", bobs.data);
    assert!(
        bobs.data.contains("&lt;b&gt;"),
        "HTML part escapes the text: {}",
        bobs.data
    );
}

async fn messages_sent_while_the_notifier_is_down_are_emailed_when_it_starts() {
    let w = World::new(SmtpMode::Accept).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    w.send(&alice, chat_id, "sent while down").await;
    assert!(w.smtp.mails().is_empty());
    let _n = w.notifier().await;
    let mails = w.smtp.wait_for(1).await;
    assert_eq!(mails[0].to, ["bob@example.com"]);
}

async fn a_refusing_server_is_recorded_as_a_permanent_failure() {
    let w = World::new(SmtpMode::RefusePermanently).await;
    let n = w.notifier().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let seq = w.send(&alice, chat_id, "nobody will read this").await;
    let s = w.status(&n, chat_id, seq).await;
    assert_eq!(s.state, DeliveryState::Failed as i32, "{s:?}");
    assert_eq!(s.deliveries[0].recipient_id, bob.id);
    assert_eq!(s.deliveries[0].attempts, 1, "5xx is not retried");
    assert!(s.deliveries[0].error.contains("refused"), "{s:?}");
    assert!(w.smtp.mails().is_empty());
}

async fn temporary_failures_are_retried_a_bounded_number_of_times() {
    let w = World::new(SmtpMode::RefuseTemporarily).await;
    let n = w.notifier().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let seq = w.send(&alice, chat_id, "try again").await;
    let s = w.status(&n, chat_id, seq).await;
    assert_eq!(s.state, DeliveryState::Failed as i32, "{s:?}");
    assert_eq!(s.deliveries[0].attempts, 3, "{s:?}");
    assert!(
        s.deliveries[0].error.contains("gave up after 3 tries"),
        "{s:?}"
    );
    assert_eq!(w.smtp.refused(), 3);
}

async fn a_server_that_recovers_between_tries_delivers() {
    let w = World::new(SmtpMode::RefuseTemporarily).await;
    let mut config = notification_config(&w.auth, &w.chat, &w.notify_db.url, &w.nats, w.smtp.addr);
    config.settings.retry.max_attempts = 50;
    let n = spawn_notification(config).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let seq = w.send(&alice, chat_id, "eventually").await;
    while w.smtp.refused() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.smtp.set_mode(SmtpMode::Accept);
    let s = w.status(&n, chat_id, seq).await;
    assert_eq!(s.state, DeliveryState::Delivered as i32, "{s:?}");
    assert!(s.deliveries[0].attempts >= 2);
    assert_eq!(w.smtp.wait_for(1).await.len(), 1);
}

async fn notify_message_sends_once_and_is_internal() {
    let w = World::new(SmtpMode::Accept).await;
    let n = w.notifier().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let seq = w.send(&alice, chat_id, "hi").await;
    let notify = |seq: i64| w.notify_within(&n, chat_id, seq, 10_000);
    for _ in 0..3 {
        let r = notify(seq).await.expect("notify");
        assert_eq!(r.state, DeliveryState::Delivered as i32, "{r:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        w.smtp.mails().len(),
        1,
        "the event and three calls: one email"
    );

    assert_eq!(notify(99).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(notify(0).await.unwrap_err().code(), Code::InvalidArgument);
    let as_user = n
        .client
        .clone()
        .notify_message(alice.req(pb::NotifyMessageRequest {
            chat_id,
            seq,
            timeout_ms: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(as_user.code(), Code::PermissionDenied);
    let unknown = w.status_within(&n, chat_id, 42, 0).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// `seq + 1` on `i64::MAX` overflowed: INTERNAL in release builds, a panic in debug.
async fn the_largest_sequence_numbers_are_not_found_not_a_crash() {
    let w = World::new(SmtpMode::Accept).await;
    let n = w.notifier().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    w.send(&alice, chat_id, "hello").await;
    for seq in [i64::MAX, i64::MAX - 1] {
        let err = w.notify_within(&n, chat_id, seq, 1000).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "seq {seq}: {err:?}");
        let err = w.status_within(&n, chat_id, seq, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "seq {seq}: {err:?}");
    }
}

/// A SendEmail request from a service, with `key`.
fn email_req(key: &str, to: &str, subject: &str, body: &str, wait_ms: i32) -> pb::SendEmailRequest {
    pb::SendEmailRequest {
        to: to.into(),
        subject: subject.into(),
        body: body.into(),
        idempotency_key: key.into(),
        wait_timeout_ms: wait_ms,
    }
}

async fn send_email(
    n: &TestNotification,
    token: &str,
    req: pb::SendEmailRequest,
) -> Result<pb::EmailStatus, tonic::Status> {
    n.client
        .clone()
        .send_email(with_bearer(tonic::Request::new(req), token))
        .await
        .map(|r| r.into_inner().email.expect("email"))
}

async fn email_status(
    n: &TestNotification,
    token: &str,
    email_id: i64,
    wait_timeout_ms: i32,
) -> Result<pb::EmailStatus, tonic::Status> {
    n.client
        .clone()
        .get_email_status(with_bearer(
            tonic::Request::new(pb::GetEmailStatusRequest {
                email_id,
                wait_timeout_ms,
            }),
            token,
        ))
        .await
        .map(|r| r.into_inner().email.expect("email"))
}

async fn send_email_sends_once_per_key_and_is_internal() {
    let w = World::new(SmtpMode::Accept).await;
    let n = w.notifier().await;
    let token = w.auth.service_token("saga-orchestrator").await;
    let req = || {
        email_req(
            "welcome-7",
            "Carol@Example.com",
            "Welcome",
            "Hello Carol.",
            10_000,
        )
    };
    let first = send_email(&n, &token, req()).await.expect("send");
    assert_eq!(first.state, DeliveryState::Delivered as i32, "{first:?}");
    assert_eq!(first.attempts, 1);
    // A retried call: the same record, nothing sent again.
    let again = send_email(&n, &token, req()).await.expect("send again");
    assert_eq!(again.email_id, first.email_id);
    assert_eq!(again.state, DeliveryState::Delivered as i32);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mails = w.smtp.mails();
    assert_eq!(mails.len(), 1, "one email for one key");
    assert_eq!(mails[0].to, vec!["carol@example.com".to_string()]);
    assert!(
        mails[0].data.contains("Subject: Welcome"),
        "{}",
        mails[0].data
    );
    assert!(mails[0].data.contains("Hello Carol."), "{}", mails[0].data);
    let status = email_status(&n, &token, first.email_id, 0)
        .await
        .expect("status");
    assert_eq!(status.state, DeliveryState::Delivered as i32);

    // The same key for another email is refused, not sent.
    let other = send_email(
        &n,
        &token,
        email_req("welcome-7", "carol@example.com", "Welcome", "Other text", 0),
    )
    .await
    .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");

    // Bad input: a clear INVALID_ARGUMENT naming the field, nothing sent.
    for (req, field) in [
        (email_req("k1", "not-an-address", "s", "b", 0), "to"),
        (
            email_req("k2", "a@example.com", "Hi\r\nBcc: x@evil.test", "b", 0),
            "subject",
        ),
        (email_req("k3", "a@example.com", "", "b", 0), "subject"),
        (
            email_req("k4", "a@example.com", &"s".repeat(201), "b", 0),
            "subject",
        ),
        (email_req("k5", "a@example.com", "s", " ", 0), "body"),
        (email_req("k6", "a@example.com", "s", "a\0b", 0), "body"),
        (
            email_req("k7", "a@example.com", "s", &"b".repeat(65_537), 0),
            "body",
        ),
        (
            email_req("", "a@example.com", "s", "b", 0),
            "idempotency_key",
        ),
        (
            email_req("k8", "a@example.com", "s", "b", 60_001),
            "wait_timeout_ms",
        ),
    ] {
        let err = send_email(&n, &token, req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.smtp.mails().len(), 1, "nothing refused was sent");

    // Service callers only.
    let alice = w.auth.user("alice").await;
    let as_user = n
        .client
        .clone()
        .send_email(alice.req(email_req("k9", "a@example.com", "s", "b", 0)))
        .await
        .unwrap_err();
    assert_eq!(as_user.code(), Code::PermissionDenied, "{as_user:?}");
    let anonymous = n
        .client
        .clone()
        .send_email(tonic::Request::new(email_req(
            "k9",
            "a@example.com",
            "s",
            "b",
            0,
        )))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let as_user = n
        .client
        .clone()
        .get_email_status(alice.req(pb::GetEmailStatusRequest {
            email_id: first.email_id,
            wait_timeout_ms: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(as_user.code(), Code::PermissionDenied, "{as_user:?}");
    assert_eq!(
        email_status(&n, &token, first.email_id + 1000, 0)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        email_status(&n, &token, 0, 0).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

async fn send_email_retries_and_records_failures() {
    let w = World::new(SmtpMode::RefuseTemporarily).await;
    let n = w.notifier().await;
    let token = w.auth.service_token("saga-orchestrator").await;
    let s = send_email(
        &n,
        &token,
        email_req("t1", "a@example.com", "s", "b", 15_000),
    )
    .await
    .expect("send");
    assert_eq!(s.state, DeliveryState::Failed as i32, "{s:?}");
    assert_eq!(s.attempts, 3, "{s:?}");
    assert!(s.error.contains("gave up after 3 tries"), "{s:?}");
    assert_eq!(w.smtp.refused(), 3);

    w.smtp.set_mode(SmtpMode::RefusePermanently);
    let s = send_email(
        &n,
        &token,
        email_req("t2", "a@example.com", "s", "b", 15_000),
    )
    .await
    .expect("send");
    assert_eq!(s.state, DeliveryState::Failed as i32, "{s:?}");
    assert_eq!(s.attempts, 1, "5xx is not retried: {s:?}");
    assert!(s.error.contains("refused"), "{s:?}");
    assert!(w.smtp.mails().is_empty());
}

/// An email whose sender stops between two tries is given back and sent by the next
/// notifier's sweeper: recorded before it is tried, never lost with the process.
async fn an_email_left_by_a_stopped_notifier_is_sent_by_the_next() {
    let w = World::new(SmtpMode::RefuseTemporarily).await;
    let mut config = notification_config(&w.auth, &w.chat, &w.notify_db.url, &w.nats, w.smtp.addr);
    config.settings.retry.max_attempts = 50;
    config.settings.retry.backoff = Duration::from_secs(30);
    config.settings.retry.max_backoff = Duration::from_secs(30);
    let first = spawn_notification(config).await;
    let token = w.auth.service_token("saga-orchestrator").await;
    let sent = send_email(
        &first,
        &token,
        email_req("left", "a@example.com", "s", "b", 0),
    )
    .await
    .expect("send");
    assert_eq!(sent.state, DeliveryState::Pending as i32, "{sent:?}");
    while w.smtp.refused() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first);
    w.smtp.set_mode(SmtpMode::Accept);
    let next = w.notifier().await;
    let s = email_status(&next, &token, sent.email_id, 20_000)
        .await
        .expect("status");
    assert_eq!(s.state, DeliveryState::Delivered as i32, "{s:?}");
    assert_eq!(s.attempts, 2, "one refused try, one delivered: {s:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.smtp.mails().len(), 1);
}

/// The notifier keeps a chat's members between messages; a message stored after members
/// left and joined still goes to the members it was stored with, at once: the members it
/// kept are older than the message's membership version, so it reads them again.
async fn a_message_stored_after_a_membership_change_goes_to_the_members_it_was_stored_with() {
    let w = World::new(SmtpMode::Accept).await;
    let n = w.notifier().await;
    let (alice, bob, carol, dave) = (
        w.auth.user("alice").await,
        w.auth.user("bob").await,
        w.auth.user("carol").await,
        w.auth.user("dave").await,
    );
    let chat_id = w.chat_of(&alice, &[&bob, &carol]).await;
    w.send(&alice, chat_id, "before").await;
    w.smtp.wait_for(2).await;
    let mut chat = w.chat.client.clone();
    let removed = chat
        .remove_member(alice.req(chatpb::RemoveMemberRequest {
            chat_id,
            user_id: carol.id,
        }))
        .await
        .expect("remove carol")
        .into_inner();
    assert!(removed.removed);
    chat.add_members(alice.req(chatpb::AddMembersRequest {
        chat_id,
        members: vec![dave.username.clone()],
    }))
    .await
    .expect("add dave");
    // The notifier has the chat's members from the first message, well within
    // RECIPIENTS_TTL: a cache that only ran out with time would still send to carol.
    let seq = w.send(&alice, chat_id, "after").await;
    let s = w.status(&n, chat_id, seq).await;
    assert_eq!(s.state, DeliveryState::Delivered as i32, "{s:?}");
    let mut to: Vec<i64> = s.deliveries.iter().map(|d| d.recipient_id).collect();
    to.sort();
    assert_eq!(to, vec![bob.id, dave.id], "{s:?}");
    let mails = w.smtp.wait_for(4).await;
    let to_carol = mails
        .iter()
        .filter(|m| m.to.iter().any(|t| t == &carol.email))
        .count();
    assert_eq!(
        to_carol, 1,
        "carol got only the message from before her removal"
    );
}

/// A replica stopped while the first tries of a message's emails hang: the tries are cut
/// off with it, unrecorded, and its claim (on PostgreSQL held whole, by the message's row)
/// stays until its lease runs out; then the next replica takes it over and sends each
/// email once.
async fn emails_a_stopped_notifier_was_trying_are_sent_once_by_the_next() {
    let w = World::new(SmtpMode::Accept).await;
    let hanging = TcpProxy::start(w.smtp.addr).await;
    hanging.blackhole();
    let mut config = notification_config(&w.auth, &w.chat, &w.notify_db.url, &w.nats, hanging.addr);
    if let EmailConfig::Smtp(smtp) = &mut config.settings.email {
        smtp.timeout = Duration::from_secs(30);
    }
    // Short, so the test need not wait long for the claim or the event to come back.
    config.settings.delivery_lease = Duration::from_secs(2);
    config.settings.ack_wait = Duration::from_secs(2);
    let first = spawn_notification(config).await;
    let (alice, bob, carol) = (
        w.auth.user("alice").await,
        w.auth.user("bob").await,
        w.auth.user("carol").await,
    );
    let chat_id = w.chat_of(&alice, &[&bob, &carol]).await;
    let seq = w.send(&alice, chat_id, "while the mail server hangs").await;
    // Recorded and claimed by the first replica, its tries hanging.
    let held = loop {
        match w.status_within(&first, chat_id, seq, 0).await {
            Ok(s) => break s,
            Err(e) if e.code() == Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("status: {e:?}"),
        }
    };
    assert_eq!(held.state, DeliveryState::Pending as i32, "{held:?}");
    assert_eq!(held.deliveries.len(), 2);
    drop(first);

    let next = w.notifier().await;
    let s = w.status(&next, chat_id, seq).await;
    assert_eq!(s.state, DeliveryState::Delivered as i32, "{s:?}");
    assert_eq!(s.deliveries.len(), 2, "{s:?}");
    for d in &s.deliveries {
        assert_eq!(
            d.attempts, 1,
            "only the next replica's try is recorded: {s:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.smtp.recipients(),
        vec![bob.email.clone(), carol.email.clone()],
        "each email once"
    );
}

/// NotifyMessage right after a send usually answers from what this process announced when
/// it delivered the emails (every email on its first try), without reading the records:
/// the answer must be the records exactly as a status read returns them.
async fn notify_message_answers_with_the_records_a_status_read_returns() {
    let w = World::new(SmtpMode::Accept).await;
    let n = w.notifier().await;
    let (alice, bob, carol) = (
        w.auth.user("alice").await,
        w.auth.user("bob").await,
        w.auth.user("carol").await,
    );
    let chat_id = w.chat_of(&alice, &[&carol, &bob]).await;
    for i in 0..5 {
        let seq = w.send(&alice, chat_id, &format!("announced {i}")).await;
        let answer = w
            .notify_within(&n, chat_id, seq, 10_000)
            .await
            .expect("notify");
        assert_eq!(answer.state, DeliveryState::Delivered as i32, "{answer:?}");
        let read = w.status_within(&n, chat_id, seq, 0).await.expect("status");
        assert_eq!(answer.state, read.state);
        assert_eq!(answer.deliveries, read.deliveries, "message {seq}");
        let to: Vec<i64> = answer.deliveries.iter().map(|d| d.recipient_id).collect();
        assert_eq!(to, [bob.id.min(carol.id), bob.id.max(carol.id)]);
    }
    assert_eq!(w.smtp.wait_for(10).await.len(), 10);
}

chat_testkit::backend_tests!(
    notify_message_answers_with_the_records_a_status_read_returns,
    emails_a_stopped_notifier_was_trying_are_sent_once_by_the_next,
    a_message_stored_after_a_membership_change_goes_to_the_members_it_was_stored_with,
    the_largest_sequence_numbers_are_not_found_not_a_crash,
    every_member_but_the_sender_gets_one_email_even_with_two_replicas,
    messages_sent_while_the_notifier_is_down_are_emailed_when_it_starts,
    a_refusing_server_is_recorded_as_a_permanent_failure,
    temporary_failures_are_retried_a_bounded_number_of_times,
    a_server_that_recovers_between_tries_delivers,
    notify_message_sends_once_and_is_internal,
    send_email_sends_once_per_key_and_is_internal,
    send_email_retries_and_records_failures,
    an_email_left_by_a_stopped_notifier_is_sent_by_the_next,
);
