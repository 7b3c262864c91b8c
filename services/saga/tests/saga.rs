//! SagaOrchestrator against real auth, chat and notification services, NATS and an SMTP
//! server in the test process; every test runs twice, with the services storing in
//! PostgreSQL and in SQLite files (`backend_tests!` at the end).

use std::time::Duration;

use chat_testkit::{
    chat_config, notification_config, saga_config,
    smtp::{SmtpMode, TestSmtp},
    spawn_auth, spawn_chat, spawn_notification, spawn_saga, TcpProxy, TestAuth, TestChat, TestDb,
    TestNats, TestNotification, TestSaga, TestUser,
};
use grpc_chat_proto::chat::v1::{self as chatpb, connect_response::Event};
use grpc_chat_proto::saga::v1::{self as pb, SagaState, StepKind, StepState};
use tonic::Code;

struct World {
    auth: TestAuth,
    chat: TestChat,
    notifier: TestNotification,
    smtp: TestSmtp,
    saga_db: TestDb,
    _nats: TestNats,
    _dbs: (TestDb, TestDb),
}

impl World {
    async fn new(mode: SmtpMode) -> Self {
        let auth = spawn_auth().await;
        let (chat_db, notify_db) = (TestDb::new().await, TestDb::new().await);
        let nats = TestNats::new();
        let chat = spawn_chat(chat_config(&auth, &chat_db.url, &nats)).await;
        let smtp = TestSmtp::start(mode).await;
        let notifier = spawn_notification(notification_config(
            &auth,
            &chat,
            &notify_db.url,
            &nats,
            smtp.addr,
        ))
        .await;
        Self {
            auth,
            chat,
            notifier,
            smtp,
            saga_db: TestDb::new().await,
            _nats: nats,
            _dbs: (chat_db, notify_db),
        }
    }

    fn config(&self) -> saga_orchestrator::Config {
        saga_config(
            &self.auth,
            self.chat.addr,
            self.notifier.addr,
            &self.saga_db.url,
        )
    }

    async fn orchestrator(&self) -> TestSaga {
        spawn_saga(self.config()).await
    }

    async fn chat_of(&self, owner: &TestUser, members: &[&TestUser]) -> i64 {
        self.chat
            .client
            .clone()
            .create_chat(owner.req(chatpb::CreateChatRequest {
                title: "saga".into(),
                members: members.iter().map(|m| m.username.clone()).collect(),
            }))
            .await
            .expect("create chat")
            .into_inner()
            .chat
            .expect("chat")
            .id
    }

    async fn history(&self, user: &TestUser, chat_id: i64) -> Vec<String> {
        self.chat
            .client
            .clone()
            .list_messages(user.req(chatpb::ListMessagesRequest {
                chat_id,
                page_size: 100,
                ..Default::default()
            }))
            .await
            .expect("history")
            .into_inner()
            .messages
            .into_iter()
            .map(|m| m.text)
            .collect()
    }
}

fn request(chat_id: i64, from: &str, text: &str, key: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        chat_id,
        from: from.into(),
        text: text.into(),
        idempotency_key: key.into(),
    }
}

async fn send(
    saga: &TestSaga,
    user: &TestUser,
    req: pb::SendMessageRequest,
) -> Result<pb::Saga, tonic::Status> {
    saga.client
        .clone()
        .send_message(user.req(req))
        .await
        .map(|r| r.into_inner().saga.expect("saga"))
}

async fn get(saga: &TestSaga, user: &TestUser, id: &str) -> Result<pb::Saga, tonic::Status> {
    saga.client
        .clone()
        .get_saga(user.req(pb::GetSagaRequest { saga_id: id.into() }))
        .await
        .map(|r| r.into_inner().saga.expect("saga"))
}

fn saga_id(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("saga-id")
        .and_then(|v| v.to_str().ok())
        .expect("saga-id metadata")
        .to_owned()
}

fn steps(s: &pb::Saga) -> Vec<(StepKind, StepState)> {
    s.steps
        .iter()
        .map(|st| {
            (
                StepKind::try_from(st.kind).expect("kind"),
                StepState::try_from(st.state).expect("state"),
            )
        })
        .collect()
}

/// Polls GetSaga until the saga reaches `state`.
async fn wait_state(saga: &TestSaga, user: &TestUser, id: &str, state: SagaState) -> pb::Saga {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = get(saga, user, id).await.expect("get saga");
        if s.state == state as i32 {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga never reached {state:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_message_is_stored_and_every_other_member_emailed() {
    let w = World::new(SmtpMode::Accept).await;
    let saga = w.orchestrator().await;
    let (alice, bob, carol) = (
        w.auth.user("alice").await,
        w.auth.user("bob").await,
        w.auth.user("carol").await,
    );
    let chat_id = w.chat_of(&alice, &[&bob, &carol]).await;

    let s = send(
        &saga,
        &alice,
        request(chat_id, "alice@example.com", "hello all", ""),
    )
    .await
    .expect("saga");
    assert_eq!(s.state, SagaState::Completed as i32, "{s:?}");
    assert_eq!(
        (s.sender_id, s.message_seq, s.chat_id),
        (alice.id, 1, chat_id)
    );
    assert_eq!(
        steps(&s),
        vec![
            (StepKind::ResolveSender, StepState::Succeeded),
            (StepKind::StoreMessage, StepState::Succeeded),
            (StepKind::Notify, StepState::Succeeded),
        ]
    );
    assert_eq!(w.history(&bob, chat_id).await, vec!["hello all"]);
    // NOTIFY waited for delivery: the emails are there when the saga answers.
    assert_eq!(
        w.smtp.recipients(),
        vec!["bob@example.com", "carol@example.com"]
    );

    // By username too; GetSaga shows the saga to its initiator only.
    let s2 = send(&saga, &alice, request(chat_id, "alice", "again", ""))
        .await
        .expect("saga by username");
    assert_eq!(s2.message_seq, 2);
    assert_eq!(get(&saga, &alice, &s.id).await.unwrap().id, s.id);
    assert_eq!(
        get(&saga, &bob, &s.id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        get(&saga, &alice, "not-a-uuid").await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

async fn the_same_idempotency_key_returns_the_same_saga() {
    let w = World::new(SmtpMode::Accept).await;
    let saga = w.orchestrator().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let req = request(chat_id, "alice", "only once", "key-1");
    let (a, b) = tokio::join!(
        send(&saga, &alice, req.clone()),
        send(&saga, &alice, req.clone())
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    let c = send(&saga, &alice, req).await.expect("third");
    assert_eq!(a.id, b.id);
    assert_eq!(a.id, c.id);
    assert_eq!(c.state, SagaState::Completed as i32);
    assert_eq!(w.history(&alice, chat_id).await, vec!["only once"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.smtp.mails().len(), 1);
}

async fn a_refusing_mail_server_makes_the_saga_remove_the_message() {
    let w = World::new(SmtpMode::RefusePermanently).await;
    let saga = w.orchestrator().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let mut stream = w
        .chat
        .client
        .clone()
        .connect(bob.req(chatpb::ConnectRequest {
            chat_id,
            after_seq: 0,
            history_limit: 10,
        }))
        .await
        .expect("connect")
        .into_inner();

    let err = send(&saga, &alice, request(chat_id, "alice", "doomed", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("notification failed"), "{err:?}");
    let s = get(&saga, &alice, &saga_id(&err)).await.unwrap();
    assert_eq!(s.state, SagaState::Compensated as i32, "{s:?}");
    assert_eq!(
        steps(&s),
        vec![
            (StepKind::ResolveSender, StepState::Succeeded),
            (StepKind::StoreMessage, StepState::Succeeded),
            (StepKind::Notify, StepState::Failed),
            (StepKind::Compensate, StepState::Succeeded),
        ]
    );
    assert!(s.error.contains("refused"), "{s:?}");
    assert!(w.history(&bob, chat_id).await.is_empty());

    // The live stream saw the message come and go.
    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(Event::MessageDeleted(_))) {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("stream event")
            .expect("stream ok")
            .expect("stream open");
        if let Some(e) = item.event {
            seen.push(e);
        }
    }
    // The stream was opened before the send, but its history is read in the background:
    // the message may arrive as history (before HistoryEnd) or live (after it). Either
    // way: once, then its deletion.
    let ok = matches!(&seen[..], [Event::HistoryEnd(_), Event::Message(m), Event::MessageDeleted(d)] if m.seq == 1 && d.seq == 1)
        || matches!(&seen[..], [Event::Message(m), Event::HistoryEnd(_), Event::MessageDeleted(d)] if m.seq == 1 && d.seq == 1);
    assert!(ok, "{seen:?}");
}

async fn bad_input_fails_cleanly_and_stores_nothing() {
    let w = World::new(SmtpMode::Accept).await;
    let saga = w.orchestrator().await;
    let (alice, bob, carol) = (
        w.auth.user("alice").await,
        w.auth.user("bob").await,
        w.auth.user("carol").await,
    );
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let cases = [
        (
            &alice,
            request(chat_id, "alice", "  ", ""),
            Code::InvalidArgument,
        ),
        (&alice, request(0, "alice", "hi", ""), Code::InvalidArgument),
        (
            &alice,
            request(chat_id, "", "hi", ""),
            Code::InvalidArgument,
        ),
        (
            &alice,
            request(chat_id + 1000, "alice", "hi", ""),
            Code::NotFound,
        ),
        (
            &carol,
            request(chat_id, "carol", "let me in", ""),
            Code::NotFound,
        ),
        (
            &alice,
            request(chat_id, "bob@example.com", "spoofed", ""),
            Code::PermissionDenied,
        ),
        (
            &alice,
            request(chat_id, "nobody@example.com", "hi", ""),
            Code::NotFound,
        ),
    ];
    for (user, req, code) in cases {
        let err = send(&saga, user, req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
    }
    assert!(w.history(&alice, chat_id).await.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(w.smtp.mails().is_empty());
    // A service token is not a sender.
    let token = w.auth.service_token("someone").await;
    let err = saga
        .client
        .clone()
        .send_message(chat_common::service_token::with_bearer(
            tonic::Request::new(request(chat_id, "alice", "hi", "")),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

async fn an_orchestrator_stopped_before_storing_resumes_at_start_up() {
    let w = World::new(SmtpMode::Accept).await;
    let chat_proxy = TcpProxy::start(w.chat.addr).await;
    let mut config = w.config();
    config.chat_url = format!("http://{}", chat_proxy.addr);
    let first = spawn_saga(config.clone()).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;

    chat_proxy.cut();
    let err = send(&first, &alice, request(chat_id, "alice", "resumed", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let id = saga_id(&err);
    let s = get(&first, &alice, &id).await.unwrap();
    assert_eq!(s.state, SagaState::Running as i32);
    assert_eq!(
        steps(&s),
        vec![
            (StepKind::ResolveSender, StepState::Succeeded),
            (StepKind::StoreMessage, StepState::Failed),
        ]
    );
    // Kill it, bring chat back, start another on the same log.
    first.shutdown.trigger();
    drop(first);
    chat_proxy.restore();
    let second = spawn_saga(config).await;
    let s = wait_state(&second, &alice, &id, SagaState::Completed).await;
    assert_eq!(s.message_seq, 1);
    assert_eq!(w.history(&bob, chat_id).await, vec!["resumed"]);
    assert_eq!(w.smtp.wait_for(1).await[0].to, ["bob@example.com"]);
}

async fn an_orchestrator_stopped_before_notifying_resumes_without_a_second_message() {
    let w = World::new(SmtpMode::Accept).await;
    let notify_proxy = TcpProxy::start(w.notifier.addr).await;
    let mut config = w.config();
    config.notification_url = format!("http://{}", notify_proxy.addr);
    let first = spawn_saga(config.clone()).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;

    notify_proxy.cut();
    let err = send(
        &first,
        &alice,
        request(chat_id, "alice", "stored once", "k"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let id = saga_id(&err);
    first.shutdown.trigger();
    drop(first);
    notify_proxy.restore();
    let second = spawn_saga(config).await;
    let s = wait_state(&second, &alice, &id, SagaState::Completed).await;
    assert_eq!(s.message_seq, 1);
    // The same key now answers with the finished saga.
    let again = send(
        &second,
        &alice,
        request(chat_id, "alice", "stored once", "k"),
    )
    .await
    .expect("replay");
    assert_eq!(again.id, id);
    assert_eq!(w.history(&bob, chat_id).await, vec!["stored once"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.smtp.mails().len(), 1);
}

async fn a_notifier_down_past_the_deadline_makes_the_resumed_saga_compensate() {
    let w = World::new(SmtpMode::Accept).await;
    let notify_proxy = TcpProxy::start(w.notifier.addr).await;
    let mut config = w.config();
    config.notification_url = format!("http://{}", notify_proxy.addr);
    config.notify_deadline = Duration::from_millis(500);
    let saga = spawn_saga(config).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    notify_proxy.cut();
    let err = send(&saga, &alice, request(chat_id, "alice", "too late", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // The recovery sweep retries; once the deadline has passed it compensates.
    let s = wait_state(&saga, &alice, &saga_id(&err), SagaState::Compensated).await;
    assert!(s.error.contains("deadline"), "{s:?}");
    assert!(w.history(&bob, chat_id).await.is_empty());
}

chat_testkit::backend_tests!(
    a_message_is_stored_and_every_other_member_emailed,
    the_same_idempotency_key_returns_the_same_saga,
    a_refusing_mail_server_makes_the_saga_remove_the_message,
    bad_input_fails_cleanly_and_stores_nothing,
    an_orchestrator_stopped_before_storing_resumes_at_start_up,
    an_orchestrator_stopped_before_notifying_resumes_without_a_second_message,
    a_notifier_down_past_the_deadline_makes_the_resumed_saga_compensate,
);
