//! One trace per request: a message sent through the saga is one trace across the saga,
//! chat and notification services, over gRPC and over the event bus, with every span's
//! parent where it belongs.
//!
//! An OTLP trace receiver runs in this test process; the test starts the trace itself (the
//! `traceparent` a client such as `chat --trace` sends), sends a message through the saga
//! while the recipient has a stream open, and reads back what the services exported. It does
//! so twice: against the `chat-server` binary (a child process on SQLite and the in-process
//! bus, exporting to the receiver through `OTEL_EXPORTER_OTLP_ENDPOINT`), and against the
//! split services on PostgreSQL and NATS, which run in this process (the test installs the
//! process's telemetry, exporting to the same kind of receiver; calls between the services
//! still go over gRPC and NATS). There, a second send whose emails are refused checks that
//! the failure is recorded on the spans where it happened, up to the compensation.

use std::{collections::HashSet, process::Stdio, time::Duration};

use chat_testkit::otlp::{render_tree, ReceivedSpan, TraceReceiver};
use grpc_chat_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    chat::v1::{self as chatpb, chat_service_client::ChatServiceClient, connect_response::Event},
    saga::v1::{self as sagapb, saga_orchestrator_client::SagaOrchestratorClient},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use tonic::{transport::Channel, Request};

/// How long spans may take to reach the receiver (they are batched for 100 ms).
const EXPORT_WAIT: Duration = Duration::from_secs(30);

/// The trace the test starts: its id and the span id the first server sees as its parent.
struct Root {
    trace_id: String,
    span_id: String,
}

impl Root {
    fn new() -> Self {
        Self {
            trace_id: uuid::Uuid::new_v4().simple().to_string(),
            span_id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
        }
    }

    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    chat_common::service_token::with_bearer(Request::new(message), token)
}

/// Registers and logs in `name`; returns the user id and an access token.
async fn user(auth: &AuthServiceClient<Channel>, name: &str) -> (i64, String) {
    let user = chat_testkit::register_user(auth.clone(), name).await;
    (user.id, user.access_token)
}

/// What the send did, to be found in the trace.
struct Sent {
    root: Root,
    saga_id: String,
    chat_id: i64,
    seq: i64,
    recipient_id: i64,
    /// The sender's access token.
    token: String,
}

/// Alice sends Bob a message through the saga, in a trace the test starts, while Bob's
/// stream is open; returns once Bob's stream has the message.
async fn send_through_saga(
    auth: AuthServiceClient<Channel>,
    mut chat: ChatServiceClient<Channel>,
    mut saga: SagaOrchestratorClient<Channel>,
) -> Sent {
    let (_, alice) = user(&auth, "alice").await;
    let (bob_id, bob) = user(&auth, "bob").await;
    let chat_id = chat
        .create_chat(bearer(
            chatpb::CreateChatRequest {
                title: "traced".into(),
                members: vec!["bob".into()],
            },
            &alice,
        ))
        .await
        .expect("create chat")
        .into_inner()
        .chat
        .expect("chat")
        .id;
    let mut stream = chat
        .connect(bearer(
            chatpb::ConnectRequest {
                chat_id,
                ..Default::default()
            },
            &bob,
        ))
        .await
        .expect("connect")
        .into_inner();
    loop {
        let event = stream.message().await.expect("stream").expect("event");
        if matches!(event.event, Some(Event::HistoryEnd(_))) {
            break;
        }
    }

    let root = Root::new();
    let mut request = bearer(
        sagapb::SendMessageRequest {
            chat_id,
            from: "alice".into(),
            text: "trace me".into(),
            idempotency_key: String::new(),
        },
        &alice,
    );
    request.metadata_mut().insert(
        "traceparent",
        root.traceparent().parse().expect("metadata value"),
    );
    let saga_record = saga
        .send_message(request)
        .await
        .expect("saga send")
        .into_inner()
        .saga
        .expect("saga");
    assert_eq!(saga_record.state, sagapb::SagaState::Completed as i32);
    let seq = saga_record.message_seq;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the message reached the stream in time")
            .expect("stream")
            .expect("event");
        if matches!(&event.event, Some(Event::Message(m)) if m.seq == seq) {
            break;
        }
    }
    Sent {
        root,
        saga_id: saga_record.id,
        chat_id,
        seq,
        recipient_id: bob_id,
        token: alice,
    }
}

/// Sends another message to `sent`'s chat through the saga in a new trace; returns the
/// trace and how the saga answered.
async fn send_again(
    mut saga: SagaOrchestratorClient<Channel>,
    sent: &Sent,
) -> (Root, Result<sagapb::Saga, tonic::Status>) {
    let root = Root::new();
    let mut request = bearer(
        sagapb::SendMessageRequest {
            chat_id: sent.chat_id,
            from: "alice".into(),
            text: "and me".into(),
            idempotency_key: String::new(),
        },
        &sent.token,
    );
    request.metadata_mut().insert(
        "traceparent",
        root.traceparent().parse().expect("metadata value"),
    );
    let answer = saga
        .send_message(request)
        .await
        .map(|r| r.into_inner().saga.expect("saga"));
    (root, answer)
}

/// A send whose emails were refused for good: the failure is on the email attempt, the
/// notify step and the saga, the compensation deletes the message, and the caller's call
/// is answered ABORTED (not the server's fault, so its server span is not failed).
fn check_failed_trace(spans: &[ReceivedSpan], root: &Root) {
    let tree = render_tree(spans);
    eprintln!("{tree}");
    let saga_server = one(spans, SAGA_SEND, "server");
    assert_eq!(saga_server.parent_span_id, root.span_id, "{tree}");
    assert_eq!(
        saga_server.attr("rpc.grpc.status_code"),
        Some(&*(tonic::Code::Aborted as i32).to_string()),
        "{tree}"
    );
    assert!(!saga_server.error, "{tree}");
    let saga = one(spans, "saga send_message", "internal");
    assert!(saga.error, "{tree}");
    assert_eq!(saga.attr("saga.state"), Some("compensated"), "{tree}");
    let notify_step = child(spans, saga, "saga notify", "internal");
    assert!(notify_step.error, "{tree}");
    let compensate = child(spans, saga, "saga compensate", "internal");
    assert!(!compensate.error, "{tree}");
    let delete_client = child(
        spans,
        compensate,
        "grpcchat.chat.v1.ChatService/DeleteMessage",
        "client",
    );
    child(
        spans,
        delete_client,
        "grpcchat.chat.v1.ChatService/DeleteMessage",
        "server",
    );
    let emails: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "email send").collect();
    assert!(!emails.is_empty(), "{tree}");
    assert!(
        emails.iter().all(|e| e.error),
        "every attempt failed:\n{tree}"
    );
}

const SAGA_SEND: &str = "grpcchat.saga.v1.SagaOrchestrator/SendMessage";
const CHAT_SEND: &str = "grpcchat.chat.v1.ChatService/SendMessage";
const NOTIFY: &str = "grpcchat.notification.v1.NotificationService/NotifyMessage";

/// Whether the spans the assertions look at have all arrived.
fn complete(spans: &[ReceivedSpan]) -> bool {
    let has = |name: &str, kind: &str| spans.iter().any(|s| s.name == name && s.kind == kind);
    has(SAGA_SEND, "server")
        && has("saga send_message", "internal")
        && has(CHAT_SEND, "server")
        && has(NOTIFY, "server")
        && has("publish message_created", "producer")
        && has("process message_created", "consumer")
        && has("deliver message_created", "consumer")
        && has("email send", "internal")
        // The event's handling ends after its `notify` span, which is its child.
        && spans
            .iter()
            .filter(|s| s.name == "notify message")
            .count()
            >= 1
}

/// The one span named `name` of `kind`.
fn one<'a>(spans: &'a [ReceivedSpan], name: &str, kind: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == name && s.kind == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} span {name}, got {found:#?}");
    found[0]
}

/// The children of `parent` named `name`.
fn children<'a>(
    spans: &'a [ReceivedSpan],
    parent: &ReceivedSpan,
    name: &str,
) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id && s.name == name)
        .collect()
}

/// The one child of `parent` named `name` of `kind`.
fn child<'a>(
    spans: &'a [ReceivedSpan],
    parent: &ReceivedSpan,
    name: &str,
    kind: &str,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = children(spans, parent, name)
        .into_iter()
        .filter(|s| s.kind == kind)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} span {name} under {} ({})",
        parent.name,
        parent.span_id
    );
    found[0]
}

/// Whether `ancestor` is `span`'s parent, grandparent, ...
fn descends(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let mut current = span;
    for _ in 0..spans.len() {
        if current.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == current.parent_span_id) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

/// The send's spans are one trace, linked the way the work flowed. Returns the tree.
fn check_trace(spans: &[ReceivedSpan], sent: &Sent) -> String {
    let tree = render_tree(spans);
    eprintln!("{tree}");
    assert!(complete(spans), "spans missing from the trace:\n{tree}");

    // One tree: every span's parent is in the trace, and only the saga's server span
    // hangs from the context the test sent.
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let from_root: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id == sent.root.span_id)
        .collect();
    assert_eq!(from_root.len(), 1, "one span under the caller's:\n{tree}");
    for s in spans {
        assert!(
            s.parent_span_id == sent.root.span_id || ids.contains(s.parent_span_id.as_str()),
            "{} ({}) has a parent outside the trace:\n{tree}",
            s.name,
            s.span_id
        );
    }

    // The saga, called with the test's context, with RPC attributes.
    let saga_server = one(spans, SAGA_SEND, "server");
    assert_eq!(saga_server.parent_span_id, sent.root.span_id, "{tree}");
    assert_eq!(saga_server.attr("rpc.system"), Some("grpc"));
    assert_eq!(
        saga_server.attr("rpc.service"),
        Some("grpcchat.saga.v1.SagaOrchestrator")
    );
    assert_eq!(saga_server.attr("rpc.method"), Some("SendMessage"));
    assert_eq!(saga_server.attr("rpc.grpc.status_code"), Some("0"));
    let saga = one(spans, "saga send_message", "internal");
    assert!(descends(spans, saga, saga_server), "{tree}");
    assert_eq!(saga.attr("saga.id"), Some(sent.saga_id.as_str()));
    assert_eq!(
        saga.attr("chat.id"),
        Some(sent.chat_id.to_string().as_str())
    );
    child(spans, saga, "saga resolve_sender", "internal");

    // Storing: the saga's step calls chat, whose server span is the call's child.
    let seq = sent.seq.to_string();
    let store_step = child(spans, saga, "saga store_message", "internal");
    assert_eq!(store_step.attr("message.seq"), Some(seq.as_str()));
    let chat_client = child(spans, store_step, CHAT_SEND, "client");
    let chat_server = child(spans, chat_client, CHAT_SEND, "server");
    assert_eq!(chat_server.attr("rpc.grpc.status_code"), Some("0"));
    let insert = one(spans, "insert_message", "internal");
    assert!(descends(spans, insert, chat_server), "{tree}");
    assert_eq!(insert.attr("message.seq"), Some(seq.as_str()));

    // The event: published under chat's handling, handled by the notifier and delivered to
    // the open stream as the publish's children.
    let publish = one(spans, "publish message_created", "producer");
    assert!(descends(spans, publish, chat_server), "{tree}");
    assert_eq!(publish.attr("message.seq"), Some(seq.as_str()));
    // The event path and the saga's NotifyMessage race for the emails: the loser's
    // attempt finds them held and looks again later (in the same handling, or as a
    // redelivery of the event), so there may be several attempts, none of them a failure.
    let processes: Vec<&ReceivedSpan> = children(spans, publish, "process message_created")
        .into_iter()
        .filter(|s| s.kind == "consumer")
        .collect();
    assert!(!processes.is_empty(), "{tree}");
    let notify_events: Vec<&ReceivedSpan> = processes
        .iter()
        .flat_map(|p| children(spans, p, "notify message"))
        .collect();
    assert!(!notify_events.is_empty(), "{tree}");
    assert!(
        notify_events
            .iter()
            .any(|n| n.attr("recipient_count") == Some("1")),
        "{tree}"
    );
    let deliver = child(spans, publish, "deliver message_created", "consumer");
    assert_eq!(deliver.attr("recipient_count"), Some("1"), "{tree}");

    // Notifying: the saga's step calls the notifier.
    let notify_step = child(spans, saga, "saga notify", "internal");
    let notify_client = child(spans, notify_step, NOTIFY, "client");
    let notify_server = child(spans, notify_client, NOTIFY, "server");

    // Bob's one email, sent by whichever of the two paths claimed it.
    let emails: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "email send").collect();
    assert_eq!(emails.len(), 1, "{tree}");
    assert_eq!(
        emails[0].attr("recipient.id"),
        Some(sent.recipient_id.to_string().as_str())
    );
    assert!(
        processes.iter().any(|p| descends(spans, emails[0], p))
            || descends(spans, emails[0], notify_server),
        "{tree}"
    );
    assert!(spans.iter().all(|s| !s.error), "no span failed:\n{tree}");
    tree
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_send_through_chat_server_is_one_trace() {
    let receiver = TraceReceiver::start().await;
    let data = tempfile::tempdir().expect("data dir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", &listen])
        .args(["--data", data.path().to_str().expect("utf-8 path")])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("BCRYPT_COST", "4")
        .env("METRICS_ADDR", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chat-server");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("chat-server started in time")
        .expect("read stdout");
    assert_eq!(line, Some(format!("chat-server listening on {listen}")));
    let channel = chat_testkit::channel(listen.parse().expect("addr")).await;

    let sent = send_through_saga(
        AuthServiceClient::new(channel.clone()),
        ChatServiceClient::new(channel.clone()),
        SagaOrchestratorClient::new(channel),
    )
    .await;
    let spans = receiver
        .wait_for_trace(&sent.root.trace_id, EXPORT_WAIT, complete)
        .await;
    check_trace(&spans, &sent);
    assert!(
        spans.iter().all(|s| s.service == "chat-server"),
        "every span comes from the chat-server process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_send_through_the_split_services_is_one_trace() {
    use chat_testkit::{
        chat_config, notification_config, saga_config,
        smtp::{SmtpMode, TestSmtp},
        spawn_auth, spawn_chat, spawn_notification, spawn_saga, TestDb, TestNats,
    };

    let receiver = TraceReceiver::start().await;
    // This process's telemetry, as each service's `main` installs it; kept for the rest
    // of the process (other tests here run their servers elsewhere).
    std::mem::forget(
        chat_common::telemetry::init_with("split-services", Some(&receiver.endpoint()), "warn")
            .expect("telemetry"),
    );

    let auth = spawn_auth().await;
    let nats = TestNats::new();
    let (chat_db, notify_db, saga_db) = (
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
    );
    let mut config = chat_config(&auth, &chat_db.url, &nats);
    config.database.max_connections = 2;
    let chat = spawn_chat(config).await;
    let smtp = TestSmtp::start(SmtpMode::Accept).await;
    let mut config = notification_config(&auth, &chat, &notify_db.url, &nats, smtp.addr);
    config.database.max_connections = 2;
    let notifier = spawn_notification(config).await;
    let mut config = saga_config(&auth, chat.addr, notifier.addr, &saga_db.url);
    config.database.max_connections = 2;
    let saga = spawn_saga(config).await;

    let sent = send_through_saga(
        auth.client.clone(),
        chat.client.clone(),
        saga.client.clone(),
    )
    .await;
    let spans = receiver
        .wait_for_trace(&sent.root.trace_id, EXPORT_WAIT, complete)
        .await;
    check_trace(&spans, &sent);
    assert_eq!(smtp.mails().len(), 1, "bob's email went out");
    let publish = one(&spans, "publish message_created", "producer");
    assert_eq!(publish.attr("messaging.system"), Some("nats"));

    smtp.set_mode(SmtpMode::RefusePermanently);
    let (root, answer) = send_again(saga.client.clone(), &sent).await;
    let status = answer.expect_err("the saga compensates when no email goes out");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    let spans = receiver
        .wait_for_trace(&root.trace_id, EXPORT_WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.name == SAGA_SEND && s.kind == "server")
                && spans.iter().any(|s| s.name == "saga compensate")
                && spans.iter().any(|s| s.name == "email send")
        })
        .await;
    check_failed_trace(&spans, &root);
}
