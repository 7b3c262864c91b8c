//! SagaOrchestrator against real auth, chat and notification services, NATS and an SMTP
//! server in the test process; every test runs twice, with the services storing in
//! PostgreSQL and in SQLite files (`backend_tests!` at the end).

use std::time::Duration;

use chat_testkit::{
    chat_config,
    fault::{PrivatePostgres, StopMode},
    notification_config, saga_config,
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
        self.chat.create_chat(owner, "saga", members).await
    }

    /// The orchestrator's configuration, reaching NotificationService through `proxy`.
    fn config_through(&self, proxy: &TcpProxy) -> saga_orchestrator::Config {
        let mut config = self.config();
        config.upstream.notification_url = format!("http://{}", proxy.addr);
        config
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

/// Sends `req` expecting it to be refused with `code`; returns the refusal.
async fn send_refused(
    saga: &TestSaga,
    user: &TestUser,
    req: pb::SendMessageRequest,
    code: Code,
) -> tonic::Status {
    let err = send(saga, user, req.clone()).await.unwrap_err();
    assert_eq!(err.code(), code, "{req:?}: {err:?}");
    err
}

/// Sends `req` expecting the saga to pause (UNAVAILABLE, a service or its log out of
/// reach); returns the id of the saga it answers about.
async fn send_paused(saga: &TestSaga, user: &TestUser, req: pb::SendMessageRequest) -> String {
    saga_id(&send_refused(saga, user, req, Code::Unavailable).await)
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
            ..Default::default()
        }))
        .await
        .expect("connect")
        .into_inner();

    let doomed = request(chat_id, "alice", "doomed", "");
    let err = send_refused(&saga, &alice, doomed, Code::Aborted).await;
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
        send_refused(&saga, user, req, code).await;
    }
    // A chat the sender cannot see: the chat service's one sentence, passed on as it is
    // (the CLI shows the same words for every command).
    for (user, chat, from) in [
        (&alice, chat_id + 1000, "alice"),
        (&carol, chat_id, "carol"),
    ] {
        let err = send(&saga, user, request(chat, from, "hi", ""))
            .await
            .unwrap_err();
        assert_eq!(
            err.message(),
            format!("chat {chat} does not exist or you are not a member of it")
        );
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
    config.upstream.chat_url = format!("http://{}", chat_proxy.addr);
    let first = spawn_saga(config.clone()).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;

    chat_proxy.cut();
    let id = send_paused(&first, &alice, request(chat_id, "alice", "resumed", "")).await;
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
    let config = w.config_through(&notify_proxy);
    let first = spawn_saga(config.clone()).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;

    notify_proxy.cut();
    let id = send_paused(
        &first,
        &alice,
        request(chat_id, "alice", "stored once", "k"),
    )
    .await;
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
    let mut config = w.config_through(&notify_proxy);
    config.settings.notify_deadline = Duration::from_millis(500);
    let saga = spawn_saga(config).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    notify_proxy.cut();
    let id = send_paused(&saga, &alice, request(chat_id, "alice", "too late", "")).await;
    // The recovery sweep retries; once the deadline has passed it compensates.
    let s = wait_state(&saga, &alice, &id, SagaState::Compensated).await;
    assert!(s.error.contains("deadline"), "{s:?}");
    assert!(w.history(&bob, chat_id).await.is_empty());
}

/// The first step (resolving the sender) runs before the saga is written, and the saga's
/// creation logs what it found: a sender refused for good ends the saga FAILED at once,
/// and AuthService out of reach leaves it running for the recovery sweep, which completes
/// it once AuthService is back.
async fn the_first_step_is_logged_with_the_saga_whatever_it_found() {
    let w = World::new(SmtpMode::Accept).await;
    let auth_proxy = TcpProxy::start(w.auth.addr).await;
    let mut config = w.config();
    config.upstream.auth_url = format!("http://{}", auth_proxy.addr);
    let saga = spawn_saga(config).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;

    let nobody = request(chat_id, "nobody@example.com", "hi", "");
    let err = send_refused(&saga, &alice, nobody, Code::NotFound).await;
    let s = get(&saga, &alice, &saga_id(&err)).await.unwrap();
    assert_eq!(s.state, SagaState::Failed as i32);
    assert!(s.error.contains("no user"), "{s:?}");
    assert_eq!(
        steps(&s),
        vec![(StepKind::ResolveSender, StepState::Failed)]
    );
    assert!(s.steps[0].finished_at.is_some(), "{s:?}");

    // One saga through AuthService first: the orchestrator's service token is then cached,
    // so only the sender's resolution needs AuthService below. It names alice by her
    // email, so her username below is not one the orchestrator remembers.
    send(&saga, &alice, request(chat_id, &alice.email, "first", ""))
        .await
        .unwrap();
    auth_proxy.cut();
    let id = send_paused(
        &saga,
        &alice,
        request(chat_id, "alice", "auth was down", ""),
    )
    .await;
    let s = get(&saga, &alice, &id).await.unwrap();
    assert_eq!(s.state, SagaState::Running as i32);
    assert_eq!(
        steps(&s),
        vec![(StepKind::ResolveSender, StepState::Failed)]
    );
    auth_proxy.restore();
    let s = wait_state(&saga, &alice, &id, SagaState::Completed).await;
    assert_eq!(
        steps(&s),
        vec![
            (StepKind::ResolveSender, StepState::Succeeded),
            (StepKind::StoreMessage, StepState::Succeeded),
            (StepKind::Notify, StepState::Succeeded),
        ]
    );
    // Newest first.
    assert_eq!(
        w.history(&bob, chat_id).await,
        vec!["auth was down", "first"]
    );
}

/// Defect: a caller who gave up (its deadline, a dropped connection) dropped the saga's
/// drive between two steps, while the drive's lease heartbeat went on in a task of its own,
/// renewing the lease for ever: no orchestrator could take the saga over, it stayed RUNNING,
/// and every replay of its key answered that it was still in progress.
async fn a_caller_who_gives_up_does_not_strand_the_saga() {
    let w = World::new(SmtpMode::Accept).await;
    let notify_proxy = TcpProxy::start(w.notifier.addr).await;
    let mut config = w.config_through(&notify_proxy);
    config.settings.notify_deadline = Duration::from_secs(1);
    let saga = spawn_saga(config).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    // The notify step hangs; the caller stops waiting meanwhile.
    notify_proxy.blackhole();
    let req = || request(chat_id, "alice", "patience", "given-up");
    let gave_up =
        tokio::time::timeout(Duration::from_millis(800), send(&saga, &alice, req())).await;
    assert!(
        gave_up.is_err(),
        "the saga ended before the caller gave up: {gave_up:?}"
    );
    notify_proxy.restore();
    // The saga ends anyway, once: a replay of its key answers with the completed saga.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        match send(&saga, &alice, req()).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the saga never ended after its caller gave up: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(done.state, SagaState::Completed as i32, "{done:?}");
    assert_eq!(w.history(&bob, chat_id).await, ["patience"]);
}

/// An orchestrator on a tokio runtime of its own, in a thread of its own, so that a test
/// can crash it: [`CrashableSaga::crash`] drops the runtime, and with it every task and
/// socket, without any graceful shutdown (the leases of its sagas are left behind, as a
/// killed process leaves them).
struct CrashableSaga {
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    client: pb::saga_orchestrator_client::SagaOrchestratorClient<tonic::transport::Channel>,
}

impl CrashableSaga {
    async fn start(config: saga_orchestrator::Config) -> Self {
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let shutdown = chat_common::Shutdown::new();
                let app = saga_orchestrator::Application::build(config, shutdown.clone())
                    .await
                    .expect("build saga");
                let _ = addr_tx.send(app.local_addr());
                tokio::spawn(app.run_until_stopped(shutdown));
            });
            let _ = killed.recv();
            drop(rt);
        });
        let addr = addr_rx.await.expect("orchestrator address");
        let client = pb::saga_orchestrator_client::SagaOrchestratorClient::new(
            chat_testkit::channel(addr).await,
        );
        Self {
            kill: Some(kill),
            thread: Some(thread),
            client,
        }
    }

    /// Kills it: every task stops where it is.
    fn crash(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for CrashableSaga {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A peer that accepts connections and never answers: calls to it hang until their
/// timeout, as calls to a service stuck mid-flight do.
async fn black_hole() -> std::net::SocketAddr {
    let listener = chat_testkit::free_listener().await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// Defect: a saga resumed after a crash was compensated because its notify deadline had
/// passed (the successor waits for the lease, as long as the deadline by default), without
/// asking whether its emails had gone out; they had.
async fn sagas_resumed_after_a_crash_end_with_the_truth() {
    const SAGAS: usize = 12;
    let w = World::new(SmtpMode::Accept).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    // The lease as long as the deadline, as in the defaults that showed the defect. The
    // first orchestrator's NotifyMessage calls hang (it is caught mid-flight in NOTIFY), while
    // the notifier emails every message from its event.
    let mut config = w.config();
    config.settings.notify_deadline = Duration::from_secs(6);
    config.settings.lease = Duration::from_secs(6);
    let mut first_config = config.clone();
    first_config.upstream.notification_url = format!("http://{}", black_hole().await);
    let mut first = CrashableSaga::start(first_config).await;

    let key = |i: usize| format!("crash-{i}");
    let text = |i: usize| format!("crash text {i:02}");
    for i in 0..SAGAS {
        let mut client = first.client.clone();
        let req = alice.req(request(chat_id, "alice", &text(i), &key(i)));
        tokio::spawn(async move { client.send_message(req).await });
    }
    w.smtp.wait_for(SAGAS).await;
    // One more whose email is refused for good: its truth is "not delivered".
    w.smtp.set_mode(SmtpMode::RefusePermanently);
    {
        let mut client = first.client.clone();
        let req = alice.req(request(chat_id, "alice", "refused text", "refused"));
        tokio::spawn(async move { client.send_message(req).await });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while w.smtp.refused() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no email refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.crash();

    let second = spawn_saga(config).await;
    let mut completed = 0;
    for i in 0..SAGAS {
        let s = send(
            &second,
            &alice,
            request(chat_id, "alice", &text(i), &key(i)),
        )
        .await
        .unwrap_or_else(|e| panic!("saga {i} after the crash: {e:?}"));
        assert_eq!(s.state, SagaState::Completed as i32, "{s:?}");
        completed += 1;
    }
    assert_eq!(completed, SAGAS);
    let refused = request(chat_id, "alice", "refused text", "refused");
    let err = send_refused(&second, &alice, refused, Code::Aborted).await;
    let s = get(&second, &alice, &saga_id(&err)).await.unwrap();
    assert_eq!(s.state, SagaState::Compensated as i32, "{s:?}");
    assert!(s.error.contains("refused"), "{s:?}");

    // Every delivered message kept, each emailed once; the refused one removed.
    let mut history = w.history(&bob, chat_id).await;
    history.sort();
    assert_eq!(history, (0..SAGAS).map(text).collect::<Vec<_>>());
    let mails = w.smtp.mails();
    for i in 0..SAGAS {
        let n = mails.iter().filter(|m| m.data.contains(&text(i))).count();
        assert_eq!(n, 1, "emails about message {i}");
    }
    assert_eq!(mails.len(), SAGAS);
}

/// Defect: with every notifier down, a saga compensated (its message deleted), and when a
/// notifier came back it emailed every member about the deleted message from its event.
async fn no_email_about_a_message_the_saga_removed() {
    let w = World::new(SmtpMode::Accept).await;
    let (alice, bob, carol) = (
        w.auth.user("alice").await,
        w.auth.user("bob").await,
        w.auth.user("carol").await,
    );
    let chat_id = w.chat_of(&alice, &[&bob, &carol]).await;
    // Every notifier down: the one running stops, the orchestrator cannot reach any.
    w.notifier.shutdown.trigger();
    let notify_proxy = TcpProxy::start(w.notifier.addr).await;
    notify_proxy.cut();
    let mut config = w.config_through(&notify_proxy);
    config.settings.notify_deadline = Duration::from_millis(500);
    let saga = spawn_saga(config).await;

    let id = send_paused(&saga, &alice, request(chat_id, "alice", "doomed text", "")).await;
    let s = wait_state(&saga, &alice, &id, SagaState::Compensated).await;
    assert_eq!(s.message_seq, 1);
    // A message sent straight to the chat meanwhile is owed its emails.
    let kept = w
        .chat
        .client
        .clone()
        .send_message(alice.req(chatpb::SendMessageRequest {
            chat_id,
            text: "kept text".into(),
            ..Default::default()
        }))
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(w.history(&bob, chat_id).await, vec!["kept text"]);

    // A notifier comes back and works through the events that waited.
    let (_, notify_db) = &w._dbs;
    let notifier = chat_testkit::spawn_notification(chat_testkit::notification_config(
        &w.auth,
        &w.chat,
        &notify_db.url,
        &w._nats,
        w.smtp.addr,
    ))
    .await;
    let token = w.auth.service_token("test").await;
    let settled = |seq: i64| {
        let mut client = notifier.client.clone();
        let token = token.clone();
        async move {
            // Events handed to the stopped notifier come back after its ack wait.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            loop {
                let r = client
                    .get_delivery_status(chat_common::service_token::with_bearer(
                        tonic::Request::new(
                            grpc_chat_proto::notification::v1::GetDeliveryStatusRequest {
                                chat_id,
                                seq,
                                wait_timeout_ms: 1000,
                            },
                        ),
                        &token,
                    ))
                    .await;
                match r {
                    Ok(r)
                        if r.get_ref().state
                            != grpc_chat_proto::notification::v1::DeliveryState::Pending as i32 =>
                    {
                        return r.into_inner();
                    }
                    _ => {}
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "message {seq} never settled: {r:?}"
                );
            }
        }
    };
    let doomed = settled(1).await;
    let kept_status = settled(kept.seq).await;
    assert_eq!(
        kept_status.state,
        grpc_chat_proto::notification::v1::DeliveryState::Delivered as i32
    );
    assert_eq!(
        doomed.state,
        grpc_chat_proto::notification::v1::DeliveryState::Failed as i32,
        "{doomed:?}"
    );
    assert!(
        doomed
            .deliveries
            .iter()
            .all(|d| d.error.contains("cancelled")),
        "{doomed:?}"
    );
    let mails = w.smtp.mails();
    assert!(
        mails.iter().all(|m| !m.data.contains("doomed")),
        "an email about the removed message: {mails:?}"
    );
    assert_eq!(
        w.smtp.recipients(),
        ["bob@example.com", "carol@example.com"]
    );
}

/// NUL (which PostgreSQL refuses to store) and oversized values are refused by the rules
/// chat and auth apply, before the saga is logged: no saga, no retries for ever.
async fn hostile_input_is_refused_before_the_saga_is_logged() {
    let w = World::new(SmtpMode::Accept).await;
    let saga = w.orchestrator().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let huge = "x".repeat(9000);
    let long_text = "y".repeat(4097);
    let cases = [
        (request(chat_id, "al\0ice", "hi", ""), "from"),
        (request(chat_id, "alice", "h\0i", ""), "text"),
        (request(chat_id, "alice", "hi", "\0"), "idempotency_key"),
        (request(chat_id, &huge, "hi", ""), "from"),
        (
            request(chat_id, &format!("{huge}@example.com"), "hi", ""),
            "from",
        ),
        (request(chat_id, "alice", &long_text, ""), "text"),
        (
            request(chat_id, "alice", "hi", &"k".repeat(129)),
            "idempotency_key",
        ),
        (request(i64::MAX, "alice", "\0", ""), "text"),
    ];
    for (req, field) in cases {
        let err = send_refused(&saga, &alice, req, Code::InvalidArgument).await;
        assert!(err.message().starts_with(field), "{}", err.message());
        assert!(err.message().len() < 300, "{}", err.message());
        assert!(
            err.metadata().get("saga-id").is_none(),
            "no saga was logged"
        );
    }
    assert_eq!(chat_testkit::count_rows(&w.saga_db.url, "sagas").await, 0);
    assert!(w.history(&alice, chat_id).await.is_empty());
}

async fn a_sender_who_changes_their_email_is_known_by_the_new_one() {
    let w = World::new(SmtpMode::Accept).await;
    let saga = w.orchestrator().await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let old = alice.email.clone();
    let done = send(&saga, &alice, request(chat_id, &old, "first", "")).await;
    assert_eq!(done.expect("first").state, SagaState::Completed as i32);
    // Once more at once: from what the orchestrator remembers of the first.
    let done = send(&saga, &alice, request(chat_id, &old, "second", "")).await;
    assert_eq!(done.expect("second").state, SagaState::Completed as i32);
    // A `from` remembered for alice is not bob's.
    let spoofed = request(chat_id, &old, "spoofed", "");
    send_refused(&saga, &bob, spoofed, Code::PermissionDenied).await;

    w.auth
        .client
        .clone()
        .update_user(alice.req(grpc_chat_proto::auth::v1::UpdateUserRequest {
            email: Some("alice.new@example.com".into()),
            current_password: alice.password.clone(),
            ..Default::default()
        }))
        .await
        .expect("change email");
    tokio::time::sleep(saga_orchestrator::orchestrator::SENDERS_TTL + Duration::from_millis(300))
        .await;
    // The old email names no one now.
    send_refused(
        &saga,
        &alice,
        request(chat_id, &old, "third", ""),
        Code::NotFound,
    )
    .await;
    let done = send(
        &saga,
        &alice,
        request(chat_id, "alice.new@example.com", "third", ""),
    )
    .await;
    assert_eq!(done.expect("third").state, SagaState::Completed as i32);
    // Newest first.
    assert_eq!(
        w.history(&alice, chat_id).await,
        ["third", "second", "first"]
    );
}

/// The time of a step's timestamp field, for comparing.
fn at(t: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp");
    (t.seconds, t.nanos)
}

/// STORE_MESSAGE's success waits to be logged while NOTIFY runs: a quick NOTIFY is logged
/// with it in the saga's last write, every step in order; a NOTIFY that waits longer gets
/// the write while it waits, so the log shows the message stored and NOTIFY started.
async fn a_saga_waiting_on_its_emails_shows_its_message_in_the_log() {
    let w = World::new(SmtpMode::Accept).await;
    let notify_proxy = TcpProxy::start(w.notifier.addr).await;
    let mut config = w.config_through(&notify_proxy);
    config.settings.notify_deadline = Duration::from_secs(1);
    let saga = spawn_saga(config).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;

    let quick = send(&saga, &alice, request(chat_id, "alice", "quick", ""))
        .await
        .expect("saga");
    assert_eq!(quick.state, SagaState::Completed as i32, "{quick:?}");
    assert_eq!(
        steps(&quick),
        vec![
            (StepKind::ResolveSender, StepState::Succeeded),
            (StepKind::StoreMessage, StepState::Succeeded),
            (StepKind::Notify, StepState::Succeeded),
        ]
    );
    let (store, notify) = (&quick.steps[1], &quick.steps[2]);
    assert!(at(&store.started_at) <= at(&store.finished_at), "{quick:?}");
    assert!(
        at(&store.finished_at) <= at(&notify.started_at),
        "{quick:?}"
    );
    assert!(
        at(&notify.started_at) <= at(&notify.finished_at),
        "{quick:?}"
    );

    notify_proxy.blackhole();
    let slow = || request(chat_id, "alice", "slow", "slow");
    let first = tokio::spawn({
        let (client, req) = (saga.client.clone(), alice.req(slow()));
        async move { client.clone().send_message(req).await }
    });
    // A replay waits twice the deadline for the saga, then names it.
    let id = send_paused(&saga, &alice, slow()).await;
    let s = get(&saga, &alice, &id).await.unwrap();
    assert_eq!(
        steps(&s),
        vec![
            (StepKind::ResolveSender, StepState::Succeeded),
            (StepKind::StoreMessage, StepState::Succeeded),
            (StepKind::Notify, StepState::Started),
        ],
        "{s:?}"
    );
    assert_eq!(s.message_seq, 2);
    notify_proxy.restore();
    let s = wait_state(&saga, &alice, &id, SagaState::Completed).await;
    assert_eq!(s.message_seq, 2);
    let _ = first.await;
    assert_eq!(w.history(&bob, chat_id).await, ["slow", "quick"]);
}

/// An orchestrator that crashes while STORE_MESSAGE's success waits to be logged leaves
/// the step logged as started; the one that resumes the saga stores it again, finds the
/// message stored before (it is keyed by the saga's id), and completes: one message, one
/// email.
async fn a_crash_before_the_stored_message_is_logged_stores_nothing_twice() {
    let w = World::new(SmtpMode::Accept).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    let mut first_config = w.config();
    first_config.upstream.notification_url = format!("http://{}", black_hole().await);
    first_config.settings.notify_deadline = Duration::from_secs(1);
    first_config.settings.unlogged_success = Duration::from_secs(600);
    let mut first = CrashableSaga::start(first_config).await;
    let req = || alice.req(request(chat_id, "alice", "stored once", "unlogged"));
    tokio::spawn({
        let (mut client, req) = (first.client.clone(), req());
        async move { client.send_message(req).await }
    });
    // Stored, and emailed from its event, while the saga's NOTIFY hangs.
    w.smtp.wait_for(1).await;
    let err = first.client.clone().send_message(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let id = saga_id(&err);
    let s = first
        .client
        .clone()
        .get_saga(alice.req(pb::GetSagaRequest {
            saga_id: id.clone(),
        }))
        .await
        .expect("get saga")
        .into_inner()
        .saga
        .expect("saga");
    assert_eq!(
        steps(&s),
        vec![
            (StepKind::ResolveSender, StepState::Succeeded),
            (StepKind::StoreMessage, StepState::Started),
        ],
        "{s:?}"
    );
    assert_eq!(s.message_seq, 0);
    first.crash();

    let second = spawn_saga(w.config()).await;
    let s = wait_state(&second, &alice, &id, SagaState::Completed).await;
    assert_eq!(s.message_seq, 1);
    assert_eq!(
        steps(&s),
        vec![
            (StepKind::ResolveSender, StepState::Succeeded),
            (StepKind::StoreMessage, StepState::Succeeded),
            (StepKind::Notify, StepState::Succeeded),
        ]
    );
    assert_eq!(w.history(&bob, chat_id).await, ["stored once"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.smtp.mails().len(), 1);
}

chat_testkit::backend_tests!(
    a_saga_waiting_on_its_emails_shows_its_message_in_the_log,
    a_crash_before_the_stored_message_is_logged_stores_nothing_twice,
    a_sender_who_changes_their_email_is_known_by_the_new_one,
    hostile_input_is_refused_before_the_saga_is_logged,
    a_message_is_stored_and_every_other_member_emailed,
    the_same_idempotency_key_returns_the_same_saga,
    a_refusing_mail_server_makes_the_saga_remove_the_message,
    bad_input_fails_cleanly_and_stores_nothing,
    an_orchestrator_stopped_before_storing_resumes_at_start_up,
    an_orchestrator_stopped_before_notifying_resumes_without_a_second_message,
    a_notifier_down_past_the_deadline_makes_the_resumed_saga_compensate,
    sagas_resumed_after_a_crash_end_with_the_truth,
    no_email_about_a_message_the_saga_removed,
    a_caller_who_gives_up_does_not_strand_the_saga,
    the_first_step_is_logged_with_the_saga_whatever_it_found,
);

/// The saga's own PostgreSQL stopping, in the two places this log writes alone: at the
/// saga's creation (the sender was resolved, nothing is written yet) and at its end (the
/// message stored and its email sent, the end not yet logged). Neither loses the message
/// or stores it twice; the first answers UNAVAILABLE with nothing stored, and the second
/// is finished by the recovery sweep once the database is back, which a replay of the
/// key then reports.
#[tokio::test]
async fn the_saga_database_stopping_loses_no_message_and_stores_none_twice() {
    let mut pg = PrivatePostgres::start().await.expect("private postgres");
    let w = World::new(SmtpMode::Accept).await;
    let notify_proxy = TcpProxy::start(w.notifier.addr).await;
    let mut config = w.config_through(&notify_proxy);
    config.database.url = pg.url("saga");
    config.database.max_connections = 3;
    let saga = spawn_saga(config).await;
    let (alice, bob) = (w.auth.user("alice").await, w.auth.user("bob").await);
    let chat_id = w.chat_of(&alice, &[&bob]).await;
    // A client retrying while the database comes back: the same key each time.
    let until_done = |req: pb::SendMessageRequest| {
        let (saga, alice) = (&saga, &alice);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match send(saga, alice, req.clone()).await {
                    Ok(s) => return s,
                    Err(e) => {
                        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                        assert!(tokio::time::Instant::now() < deadline, "{e:?}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // Down at the creation.
    pg.stop(StopMode::Immediate).await.expect("stop postgres");
    let created_later = request(chat_id, "alice", "created later", "a");
    send_refused(&saga, &alice, created_later, Code::Unavailable).await;
    assert!(w.history(&bob, chat_id).await.is_empty(), "nothing stored");
    pg.start_again().await.expect("start postgres");
    let a = until_done(request(chat_id, "alice", "created later", "a")).await;
    assert_eq!(a.state, SagaState::Completed as i32, "{a:?}");

    // Down at the end: the saga waits in NOTIFY (its calls to the notifier held) while
    // the message is stored and its email sent by the event; the database stops; the
    // notifier's answer arrives and the end cannot be logged.
    notify_proxy.blackhole();
    let ending = tokio::spawn({
        let (client, req) = (
            saga.client.clone(),
            alice.req(request(chat_id, "alice", "ended later", "b")),
        );
        async move { client.clone().send_message(req).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while w.smtp.mails().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no email for the second message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.stop(StopMode::Immediate).await.expect("stop postgres");
    notify_proxy.restore();
    let err = ending.await.expect("task").unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    pg.start_again().await.expect("start postgres");
    let b = until_done(request(chat_id, "alice", "ended later", "b")).await;
    assert_eq!(b.state, SagaState::Completed as i32, "{b:?}");
    assert_eq!(b.message_seq, a.message_seq + 1);

    // Newest first; one message and one email each.
    assert_eq!(
        w.history(&bob, chat_id).await,
        vec!["ended later", "created later"]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.smtp.mails().len(), 2);
}
