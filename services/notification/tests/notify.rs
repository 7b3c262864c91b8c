//! NotificationService against real NATS, chat and auth services, and a real SMTP server
//! in the test process; every test runs twice, with the services storing in PostgreSQL and
//! in SQLite files (`backend_tests!` at the end).

use std::time::Duration;

use chat_common::service_token::with_bearer;
use chat_testkit::{
    chat_config, notification_config, smtp::SmtpMode, smtp::TestSmtp, spawn_auth, spawn_chat,
    spawn_notification, TestAuth, TestChat, TestDb, TestNats, TestNotification, TestUser,
};
use grpc_chat_proto::chat::v1 as chatpb;
use grpc_chat_proto::notification::v1::{self as pb, DeliveryState};
use tonic::Code;

struct World {
    auth: TestAuth,
    chat: TestChat,
    nats: TestNats,
    notify_db: TestDb,
    smtp: TestSmtp,
    _chat_db: TestDb,
}

impl World {
    async fn new(mode: SmtpMode) -> Self {
        let auth = spawn_auth().await;
        let chat_db = TestDb::new().await;
        let nats = TestNats::new();
        let chat = spawn_chat(chat_config(&auth, &chat_db.url, &nats)).await;
        Self {
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
        self.chat
            .client
            .clone()
            .create_chat(owner.req(chatpb::CreateChatRequest {
                title: "Launch <team>".into(),
                members: members.iter().map(|m| m.username.clone()).collect(),
            }))
            .await
            .expect("create chat")
            .into_inner()
            .chat
            .expect("chat")
            .id
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

    async fn status(
        &self,
        n: &TestNotification,
        chat_id: i64,
        seq: i64,
    ) -> pb::GetDeliveryStatusResponse {
        let token = self.auth.service_token("saga-orchestrator").await;
        n.client
            .clone()
            .get_delivery_status(with_bearer(
                tonic::Request::new(pb::GetDeliveryStatusRequest {
                    chat_id,
                    seq,
                    wait_timeout_ms: 15_000,
                }),
                &token,
            ))
            .await
            .expect("status")
            .into_inner()
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
    config.retry.max_attempts = 50;
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
    let token = w.auth.service_token("saga-orchestrator").await;
    let notify = |seq: i64| {
        let mut c = n.client.clone();
        let token = token.clone();
        async move {
            c.notify_message(with_bearer(
                tonic::Request::new(pb::NotifyMessageRequest {
                    chat_id,
                    seq,
                    timeout_ms: 10_000,
                }),
                &token,
            ))
            .await
        }
    };
    for _ in 0..3 {
        let r = notify(seq).await.expect("notify").into_inner();
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
    let unknown = n
        .client
        .clone()
        .get_delivery_status(with_bearer(
            tonic::Request::new(pb::GetDeliveryStatusRequest {
                chat_id,
                seq: 42,
                wait_timeout_ms: 0,
            }),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// `seq + 1` on `i64::MAX` overflowed: INTERNAL in release builds, a panic in debug.
async fn the_largest_sequence_numbers_are_not_found_not_a_crash() {
    let w = World::new(SmtpMode::Accept).await;
    let n = w.notifier().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    w.send(&alice, chat_id, "hello").await;
    let token = w.auth.service_token("saga-orchestrator").await;
    for seq in [i64::MAX, i64::MAX - 1] {
        let err = n
            .client
            .clone()
            .notify_message(with_bearer(
                tonic::Request::new(pb::NotifyMessageRequest {
                    chat_id,
                    seq,
                    timeout_ms: 1000,
                }),
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "seq {seq}: {err:?}");
        let err = n
            .client
            .clone()
            .get_delivery_status(with_bearer(
                tonic::Request::new(pb::GetDeliveryStatusRequest {
                    chat_id,
                    seq,
                    wait_timeout_ms: 0,
                }),
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "seq {seq}: {err:?}");
    }
}

chat_testkit::backend_tests!(
    the_largest_sequence_numbers_are_not_found_not_a_crash,
    every_member_but_the_sender_gets_one_email_even_with_two_replicas,
    messages_sent_while_the_notifier_is_down_are_emailed_when_it_starts,
    a_refusing_server_is_recorded_as_a_permanent_failure,
    temporary_failures_are_retried_a_bounded_number_of_times,
    a_server_that_recovers_between_tries_delivers,
    notify_message_sends_once_and_is_internal,
);
