//! Hostile input against both deployments, over real gRPC: the `chat-server` binary on
//! SQLite, and the four split services on PostgreSQL and NATS. Every RPC gets malformed and
//! oversized requests (`chat_testkit::fuzz`) as nobody, as a user, as a service and with a
//! forged token. Afterwards: no answer was INTERNAL or UNKNOWN or too large, the server
//! still runs and answers health checks as SERVING, and it stored nothing beyond what the
//! requests it accepted asked for.
//!
//! CI runs a few hundred cases per deployment; `FUZZ_CASES=20000` runs a long one (and
//! `FUZZ_SEED` another sequence), printing the figures with `--nocapture`.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use chat_common::service_token::with_bearer;
use chat_testkit::{
    chat_config, count_rows,
    fuzz::{self, Dictionary, Report},
    notification_config, saga_config,
    smtp::{SmtpMode, TestSmtp},
    spawn_auth, spawn_chat, spawn_notification, spawn_saga, TestDb, TestNats,
};
use grpc_chat_proto::{
    auth::v1::{self as authpb, auth_service_client::AuthServiceClient},
    chat::v1::{self as chatpb, chat_service_client::ChatServiceClient},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

/// Cases per deployment in CI: every RPC about 20 times, a few seconds.
const CI_CASES: usize = 420;

/// Rows that requests may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    users: i64,
    chats: i64,
    messages: i64,
    /// Messages with an edit.
    edited: i64,
    sagas: i64,
}

/// What was stored matches what was accepted: a refused request stored nothing.
fn assert_stored_only_what_was_accepted(before: Counts, after: Counts, report: &Report) {
    let registered = report.ok("AuthService/Register") as i64;
    let created = report.ok("ChatService/CreateChat") as i64;
    // The last member's leaving (or removal) deletes a chat too.
    let deleted = report.ok("ChatService/DeleteChat") as i64
        + report.ok("ChatService/LeaveChat") as i64
        + report.ok("ChatService/RemoveMember") as i64;
    let sent = report.ok("ChatService/SendMessage") as i64
        + report.ok("SagaOrchestrator/SendMessage") as i64;
    assert_eq!(
        after.users,
        before.users + registered,
        "users: {before:?} -> {after:?}"
    );
    assert!(
        after.chats <= before.chats + created && after.chats >= before.chats + created - deleted,
        "chats: {before:?} -> {after:?}, {created} created, {deleted} deleted"
    );
    assert!(
        after.messages <= before.messages + sent,
        "messages: {before:?} -> {after:?}, {sent} sent"
    );
    let edits = report.ok("ChatService/EditMessage") as i64;
    assert!(
        after.edited <= before.edited + edits,
        "edited messages: {before:?} -> {after:?}, {edits} edits accepted"
    );
    assert_eq!(
        after.sagas,
        before.sagas + report.saga_ids.len() as i64,
        "every saga logged is one an answer named: {before:?} -> {after:?}"
    );
}

fn print(deployment: &str, report: &Report) {
    eprintln!(
        "fuzz {deployment}: {} requests in {:.1?} ({:.0}/s); by code: {:?}; ok by rpc: {:?}; sagas: {}",
        report.requests,
        report.elapsed,
        report.requests as f64 / report.elapsed.as_secs_f64(),
        report.by_code,
        report.ok_by_rpc,
        report.saga_ids.len()
    );
}

async fn register_and_login(channel: Channel, name: &str) -> (i64, String) {
    let user = chat_testkit::register_user(AuthServiceClient::new(channel), name).await;
    (user.id, user.access_token)
}

async fn service_token(channel: Channel, secret: &str) -> String {
    AuthServiceClient::new(channel)
        .issue_service_token(authpb::IssueServiceTokenRequest {
            service_name: "fuzzer".into(),
            secret: secret.into(),
        })
        .await
        .expect("service token")
        .into_inner()
        .access_token
}

/// Alice's chat with Bob and a message in it: what a fuzzer must not be able to touch
/// without the right token. Returns the chat's id.
async fn victims(auth: Channel, chat: Channel) -> (i64, Vec<String>) {
    let (alice_id, alice) = register_and_login(auth.clone(), "alice").await;
    let (bob_id, _) = register_and_login(auth.clone(), "bob").await;
    let mut c = ChatServiceClient::new(chat);
    let chat_id = c
        .create_chat(with_bearer(
            tonic::Request::new(chatpb::CreateChatRequest {
                title: "private".into(),
                members: vec!["bob".into()],
            }),
            &alice,
        ))
        .await
        .expect("create chat")
        .into_inner()
        .chat
        .expect("chat")
        .id;
    c.send_message(with_bearer(
        tonic::Request::new(chatpb::SendMessageRequest {
            chat_id,
            text: "secret".into(),
            ..Default::default()
        }),
        &alice,
    ))
    .await
    .expect("send");
    let _ = (alice_id, bob_id);
    (chat_id, vec![alice])
}

/// The dictionary and tokens of a run: the fuzzer is "mallory", a user of its own.
async fn arsenal(auth: Channel, chat: Channel, secret: &str) -> (Dictionary, Vec<Option<String>>) {
    let (chat_id, alice_tokens) = victims(auth.clone(), chat).await;
    let (mallory_id, mallory) = register_and_login(auth.clone(), "mallory").await;
    let service = service_token(auth, secret).await;
    let dict = Dictionary {
        strings: vec![
            "alice".into(),
            "bob".into(),
            "mallory".into(),
            "mallory@example.com".into(),
            "mallory-password".into(),
            mallory.clone(),
            alice_tokens[0].clone(),
            secret.into(),
            "fuzzer".into(),
            "hello".into(),
        ],
        numbers: vec![chat_id, chat_id + 1, mallory_id, 1, 2],
    };
    let tokens = vec![
        None,
        Some(mallory),
        Some(service),
        Some(format!("{}x", alice_tokens[0])),
    ];
    (dict, tokens)
}

struct Running {
    child: Child,
    addr: std::net::SocketAddr,
}

/// Starts `chat-server` on `data` and waits for its "listening" line.
async fn start_embedded(data: &std::path::Path, secret: &str) -> Running {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", &listen, "--data"])
        .arg(data)
        .env("BCRYPT_COST", "4")
        .env("METRICS_ADDR", "off")
        .env("RUST_LOG", "warn")
        .env("SERVICE_SECRET", secret)
        .env("NOTIFY_DEADLINE_SECS", "5")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chat-server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("chat-server started in time")
        .expect("read stdout")
        .expect("a line");
    assert_eq!(line, format!("chat-server listening on {listen}"));
    Running {
        child,
        addr: listen.parse().expect("addr"),
    }
}

async fn counts(users: &str, chat: &str, saga: &str) -> Counts {
    Counts {
        users: count_rows(users, "users").await,
        chats: count_rows(chat, "chats").await,
        messages: count_rows(chat, "messages").await,
        edited: count_rows(chat, "messages WHERE edited_at IS NOT NULL").await,
        sagas: count_rows(saga, "sagas").await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_the_embedded_server_survives_hostile_input() {
    let data = tempfile::tempdir().expect("data dir");
    let secret = "fuzz-service-secret";
    let mut server = start_embedded(data.path(), secret).await;
    let channel = chat_testkit::channel(server.addr).await;
    let (dict, tokens) = arsenal(channel.clone(), channel.clone(), secret).await;
    let db = |name: &str| chat_common::db::sqlite_url(&data.path().join(format!("{name}.db")));
    let before = counts(&db("users"), &db("chat"), &db("saga")).await;

    let report = fuzz::run(
        &[("/", channel.clone())],
        &tokens,
        &dict,
        fuzz::cases(CI_CASES),
    )
    .await;
    print("embedded (SQLite)", &report);
    report.assert_clean();

    assert!(
        server.child.try_wait().expect("child status").is_none(),
        "chat-server is still running"
    );
    // A fresh connection: the old one could hide a server that stopped accepting.
    assert!(fuzz::serving(chat_testkit::channel(server.addr).await).await);
    let after = counts(&db("users"), &db("chat"), &db("saga")).await;
    assert_stored_only_what_was_accepted(before, after, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_the_split_services_survives_hostile_input() {
    let auth = spawn_auth().await;
    let (chat_db, notify_db, saga_db) = (
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
    );
    let nats = TestNats::new();
    let chat = spawn_chat(chat_config(&auth, &chat_db.url, &nats)).await;
    let smtp = TestSmtp::start(SmtpMode::Accept).await;
    let notifier = spawn_notification(notification_config(
        &auth,
        &chat,
        &notify_db.url,
        &nats,
        smtp.addr,
    ))
    .await;
    let mut config = saga_config(&auth, chat.addr, notifier.addr, &saga_db.url);
    config.settings.notify_deadline = Duration::from_secs(5);
    let saga = spawn_saga(config).await;

    let channels = [
        ("/grpcchat.auth.", chat_testkit::channel(auth.addr).await),
        ("/grpcchat.chat.", chat_testkit::channel(chat.addr).await),
        (
            "/grpcchat.notification.",
            chat_testkit::channel(notifier.addr).await,
        ),
        ("/grpcchat.saga.", chat_testkit::channel(saga.addr).await),
    ];
    let (dict, tokens) = arsenal(
        channels[0].1.clone(),
        channels[1].1.clone(),
        chat_testkit::SERVICE_SECRET,
    )
    .await;
    let before = counts(&auth.db.url, &chat_db.url, &saga_db.url).await;

    let started = Instant::now();
    let report = fuzz::run(&channels, &tokens, &dict, fuzz::cases(CI_CASES)).await;
    print("split (PostgreSQL + NATS)", &report);
    report.assert_clean();

    for (prefix, addr) in [
        ("auth", auth.addr),
        ("chat", chat.addr),
        ("notification", notifier.addr),
        ("saga", saga.addr),
    ] {
        assert!(
            fuzz::serving(chat_testkit::channel(addr).await).await,
            "{prefix} is SERVING after the run"
        );
    }
    let after = counts(&auth.db.url, &chat_db.url, &saga_db.url).await;
    assert_stored_only_what_was_accepted(before, after, &report);
    eprintln!("split run and checks took {:?}", started.elapsed());
}
