//! The `chat-server` binary as an operator runs it: started as a process, talked to over
//! gRPC on its one port, stopped and started again on the same data.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use chat_common::service_token::with_bearer;
use grpc_chat_proto::{
    auth::v1::{self as authpb, auth_service_client::AuthServiceClient},
    chat::v1::{self as chatpb, chat_service_client::ChatServiceClient, connect_response::Event},
};
use sqlx::{Connection, Executor, PgConnection};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

struct Running {
    child: Child,
    url: String,
}

/// Starts `chat-server` with `args` and waits for its "listening" line.
async fn start(args: &[&str], env: &[(&str, &str)]) -> (Running, Duration) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", &listen])
        .args(args)
        .env("BCRYPT_COST", "4")
        .env("METRICS_ADDR", "off")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
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
    let took = started.elapsed();
    assert_eq!(line, format!("chat-server listening on {listen}"));
    let running = Running {
        child,
        url: format!("http://{listen}"),
    };
    (running, took)
}

impl Running {
    /// SIGKILL: no shutdown work at all, as in a crash.
    async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    async fn channel(&self) -> Channel {
        chat_testkit::channel(
            self.url
                .trim_start_matches("http://")
                .parse()
                .expect("addr"),
        )
        .await
    }

    /// SIGTERM, and the exit status.
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stopped in time")
            .expect("exit status")
    }
}

async fn register_and_login(channel: Channel, name: &str) -> (i64, String) {
    let user = chat_testkit::register_user(AuthServiceClient::new(channel), name).await;
    (user.id, user.access_token)
}

/// Registers alice and bob, creates a chat of the two titled `title` and has alice send
/// `text` in it; returns alice's access token and the chat.
async fn alice_writes_to_bob(server: &Running, title: &str, text: &str) -> (String, chatpb::Chat) {
    let (_, token) = register_and_login(server.channel().await, "alice").await;
    register_and_login(server.channel().await, "bob").await;
    let mut chat = ChatServiceClient::new(server.channel().await);
    let created = chat
        .create_chat(with_bearer(
            tonic::Request::new(chatpb::CreateChatRequest {
                title: title.into(),
                members: vec!["bob".into()],
            }),
            &token,
        ))
        .await
        .expect("create chat")
        .into_inner()
        .chat
        .expect("chat");
    chat.send_message(with_bearer(
        tonic::Request::new(chatpb::SendMessageRequest {
            chat_id: created.id,
            text: text.into(),
            ..Default::default()
        }),
        &token,
    ))
    .await
    .expect("send");
    (token, created)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_tokens_survive_a_restart() {
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_str().expect("utf-8 path");
    let (server, took) = start(&["--data", dir], &[]).await;
    eprintln!("chat-server on an empty data dir served after {took:?}");
    let (token, created) = alice_writes_to_bob(&server, "notes", "remember the milk").await;
    assert!(server.stop().await.success(), "a clean exit on SIGTERM");

    for file in [
        "users.db",
        "chat.db",
        "notification.db",
        "saga.db",
        "signing-key.pem",
    ] {
        assert!(data.path().join(file).exists(), "{file} is kept");
    }

    let (server, took) = start(&["--data", dir], &[]).await;
    eprintln!("chat-server on existing data served after {took:?}");
    // The token from before the restart still verifies: the signing key was kept.
    let mut chat = ChatServiceClient::new(server.channel().await);
    let page = chat
        .list_messages(with_bearer(
            tonic::Request::new(chatpb::ListMessagesRequest {
                chat_id: created.id,
                ..Default::default()
            }),
            &token,
        ))
        .await
        .expect("history after restart")
        .into_inner();
    let texts: Vec<_> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["remember the milk"]);
    server.stop().await;
}

/// Defect: an email still waiting in the in-process tap (here: being retried while the
/// mail server refuses for now) was lost when `chat-server` stopped, because the event
/// lived only in memory. Now the event's outbox row stays until the notifier handled it,
/// and the next start publishes it again: the email goes out once the mail server takes it.
/// The retry cut short gives its claim back, so the restart need not wait out the lease
/// (a minute here, longer than the test waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_still_queued_when_the_server_stops_goes_out_after_the_restart() {
    queued_email_goes_out_after_the_restart(Stop::Term).await;
}

/// Defect: a process killed mid-retry leaves its claim on the delivery, and the restarted
/// notifier, finding nothing to claim, took the event as handled: the email never went out.
/// Now the event stays until the delivery is final, and the claim is taken over once its
/// lease (a second here) ran out. The email goes out once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_claimed_by_a_killed_server_goes_out_after_the_restart() {
    queued_email_goes_out_after_the_restart(Stop::Kill).await;
}

enum Stop {
    Term,
    Kill,
}

async fn queued_email_goes_out_after_the_restart(stop: Stop) {
    use chat_testkit::smtp::{SmtpMode, TestSmtp};
    let smtp = TestSmtp::start(SmtpMode::RefuseTemporarily).await;
    let port = smtp.addr.port().to_string();
    let lease = match stop {
        Stop::Term => "60",
        Stop::Kill => "1",
    };
    let env = [
        ("SMTP_HOST", "127.0.0.1"),
        ("SMTP_PORT", port.as_str()),
        ("SMTP_TLS", "none"),
        ("SMTP_MAX_ATTEMPTS", "100"),
        ("SMTP_RETRY_BACKOFF_MS", "200"),
        ("SMTP_RETRY_MAX_BACKOFF_MS", "200"),
        ("DELIVERY_LEASE_SECS", lease),
    ];
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_str().expect("utf-8 path");
    let (server, _) = start(&["--data", dir], &env).await;
    alice_writes_to_bob(&server, "plans", "see you at noon").await;
    // The notifier is at it: the mail server refused a try.
    let deadline = Instant::now() + Duration::from_secs(20);
    while smtp.refused() == 0 {
        assert!(Instant::now() < deadline, "the notifier never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match stop {
        Stop::Term => assert!(server.stop().await.success(), "a clean exit on SIGTERM"),
        Stop::Kill => server.kill().await,
    }

    smtp.set_mode(SmtpMode::Accept);
    let (server, _) = start(&["--data", dir], &env).await;
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].to, ["bob@example.com"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.mails().len(), 1, "one email, not two");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_machine_starts_without_the_default_metrics_port() {
    // Held here, or already taken by someone else: either way the default port is busy.
    let _held = std::net::TcpListener::bind("0.0.0.0:9090");
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().to_str().expect("utf-8 path");
    // Empty means unset: the default metrics address applies.
    let (server, _) = start(&["--data", dir], &[("METRICS_ADDR", "")]).await;
    register_and_login(server.channel().await, "metrics").await;
    assert!(server.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_port_asked_for_must_be_free() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let data = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("METRICS_ADDR", &addr)
        .env("BCRYPT_COST", "4")
        .output()
        .await
        .expect("run chat-server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("metrics endpoint on {addr}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_refused_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--database-url", "mysql://localhost/chat"])
        .env("METRICS_ADDR", "off")
        .output()
        .await
        .expect("run chat-server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--database-url must be a postgres:// URL"),
        "{stderr}"
    );
}

/// Drops the databases a PostgreSQL-backed chat-server derived from `name`.
struct PgDatabases(String);

impl Drop for PgDatabases {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut conn = PgConnection::connect(&chat_testkit::admin_url())
                    .await
                    .expect("admin connection");
                for service in ["users", "chat", "notification", "saga"] {
                    let _ = conn
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}_{service}" WITH (FORCE)"#)
                                .as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// Two `chat-server`s on one PostgreSQL and one NATS are replicas of one system: a
/// message sent to one reaches a stream held by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_postgres_and_nats_are_replicas() {
    let name = format!("grpcchat_test_{}", uuid::Uuid::new_v4().simple());
    let _dbs = PgDatabases(name.clone());
    let nats = chat_testkit::TestNats::new();
    let admin = chat_testkit::admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let database_url = format!("{base}/{name}");
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_str().expect("utf-8 path");
    let nats_url = chat_testkit::nats_url();
    let args = [
        "--data",
        dir,
        "--database-url",
        &database_url,
        "--nats-url",
        &nats_url,
    ];
    let env = [
        ("NATS_SUBJECT_PREFIX", nats.prefix.as_str()),
        ("NATS_STREAM", nats.stream.as_str()),
        ("NATS_CONSUMER", "notification"),
    ];
    let (a, _) = start(&args, &env).await;
    let (b, _) = start(&args, &env).await;

    let alice =
        chat_testkit::register_user(AuthServiceClient::new(a.channel().await), "alice").await;
    // The same account and the same key on the other replica.
    let alice_on_b = AuthServiceClient::new(b.channel().await)
        .login(authpb::LoginRequest {
            email: alice.email.clone(),
            password: alice.password.clone(),
        })
        .await
        .expect("login on b")
        .into_inner()
        .tokens
        .expect("tokens")
        .access_token;
    let alice = alice.access_token;
    let mut chat_a = ChatServiceClient::new(a.channel().await);
    let mut chat_b = ChatServiceClient::new(b.channel().await);
    let chat_id = chat_a
        .create_chat(with_bearer(
            tonic::Request::new(chatpb::CreateChatRequest {
                title: String::new(),
                members: vec!["alice".into()],
            }),
            &alice,
        ))
        .await
        .expect("create chat")
        .into_inner()
        .chat
        .expect("chat")
        .id;
    let mut stream = chat_b
        .connect(with_bearer(
            tonic::Request::new(chatpb::ConnectRequest {
                chat_id,
                ..Default::default()
            }),
            &alice_on_b,
        ))
        .await
        .expect("connect on b")
        .into_inner();
    // History ends first (empty), then the live message sent to the other replica.
    let first = stream.message().await.expect("event").expect("open");
    assert!(
        matches!(first.event, Some(Event::HistoryEnd(_))),
        "{first:?}"
    );
    chat_a
        .send_message(with_bearer(
            tonic::Request::new(chatpb::SendMessageRequest {
                chat_id,
                text: "через реплику".into(),
                ..Default::default()
            }),
            &alice,
        ))
        .await
        .expect("send on a");
    let live = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("arrived in time")
        .expect("event")
        .expect("open");
    match live.event {
        Some(Event::Message(m)) => assert_eq!((m.seq, m.text.as_str()), (1, "через реплику")),
        other => panic!("expected the message, got {other:?}"),
    }
    drop(stream);
    a.stop().await;
    b.stop().await;
}

/// Issue 16: `chat-server --data DIR migrate` started serving (the subcommand clap parsed
/// was never read) and `chat-server migrate --data DIR` was refused. Both migrate, say what
/// they did and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_runs_with_the_flags_before_or_after_it() {
    for flags_first in [true, false] {
        let data = tempfile::tempdir().expect("data dir");
        let dir = data.path().join("new");
        let dir = dir.to_str().expect("utf-8 path");
        let flags = ["--data", dir, "--listen", "127.0.0.1:0"];
        let mut args: Vec<&str> = flags.to_vec();
        if flags_first {
            args.push("migrate");
        } else {
            args.insert(0, "migrate");
        }
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(env!("CARGO_BIN_EXE_chat-server"))
                .args(&args)
                .env("METRICS_ADDR", "off")
                .env("RUST_LOG", "warn")
                .env_remove("CHAT_DATABASE_URL")
                .env_remove("CHAT_NATS_URL")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("chat-server {args:?} did not exit: it serves"))
        .expect("run chat-server");
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "migrated the SQLite databases users.db, chat.db, notification.db, saga.db in {dir}\n"
            ),
            "{args:?}"
        );
        for db in ["users", "chat", "notification", "saga"] {
            assert!(
                data.path().join("new").join(format!("{db}.db")).exists(),
                "{args:?}: no {db}.db"
            );
        }
    }
}

/// Issue 16: the first administrator is made by an operator, on the server's data:
/// `chat-server admin grant EMAIL` says what it did and exits, the account logs in as an
/// admin; an unknown email fails without changing anything; `admin revoke` undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_grant_and_revoke_set_the_role_of_an_account() {
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_str().expect("utf-8 path");
    let (server, _) = start(&["--data", dir], &[]).await;
    let auth = AuthServiceClient::new(server.channel().await);
    chat_testkit::register_user(auth.clone(), "alice").await;
    let admin = |args: &[&str]| {
        let mut all = vec!["--data", dir];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                Command::new(env!("CARGO_BIN_EXE_chat-server"))
                    .args(&all)
                    .env("METRICS_ADDR", "off")
                    .env("RUST_LOG", "warn")
                    .env_remove("CHAT_DATABASE_URL")
                    .env_remove("CHAT_NATS_URL")
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("chat-server admin exits")
            .expect("run chat-server admin")
        }
    };
    let role = |mut auth: AuthServiceClient<Channel>| async move {
        auth.login(authpb::LoginRequest {
            email: "alice@example.com".into(),
            password: "alice-password".into(),
        })
        .await
        .expect("login")
        .into_inner()
        .user
        .expect("user")
        .role
    };
    assert_eq!(role(auth.clone()).await, authpb::Role::User as i32);

    let out = admin(&["admin", "grant", "Alice@Example.com"]).await;
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("alice@example.com (user 1, alice) now has the role admin"),
        "{said}"
    );
    assert_eq!(role(auth.clone()).await, authpb::Role::Admin as i32);

    let out = admin(&["admin", "grant", "nobody@example.com"]).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no account has the email nobody@example.com"),
        "{out:?}"
    );

    let out = admin(&["admin", "revoke", "alice@example.com"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(role(auth.clone()).await, authpb::Role::User as i32);
    assert!(server.stop().await.success());
}

/// Link previews set up by the environment, as an operator would: `LINK_PREVIEW_RESOLVE`
/// pins a test site's name to loopback and `LINK_PREVIEW_CA_FILE` trusts its CA (PEM);
/// previews are on by default. A message with the site's URL gets its preview stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_previews_are_configured_by_the_environment() {
    use link_preview::test_site::{og_page, Reply, TestSite};

    let site = TestSite::start("preview.test").await;
    site.route(
        "/post",
        Reply::Html(og_page("From the environment", "configured", "Env")),
    );
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_str().expect("utf-8 path");
    let etc = tempfile::tempdir().expect("a directory for the CA");
    let ca = etc.path().join("ca.pem");
    std::fs::write(&ca, &site.ca_pem).expect("write the CA");
    let (server, _) = start(
        &["--data", dir],
        &[
            ("LINK_PREVIEW_RESOLVE", "preview.test=127.0.0.1"),
            ("LINK_PREVIEW_CA_FILE", ca.to_str().expect("utf-8 path")),
        ],
    )
    .await;
    let url = site.url("/post");
    let (token, chat) = alice_writes_to_bob(&server, "links", &format!("see {url}")).await;
    let mut client = ChatServiceClient::new(server.channel().await);
    let preview = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let messages = client
                .list_messages(with_bearer(
                    tonic::Request::new(chatpb::ListMessagesRequest {
                        chat_id: chat.id,
                        ..Default::default()
                    }),
                    &token,
                ))
                .await
                .expect("list messages")
                .into_inner()
                .messages;
            if let Some(p) = messages.into_iter().find_map(|m| m.link_preview) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a preview within 30 s");
    assert_eq!(preview.url, url);
    assert_eq!(preview.title, "From the environment");
    assert_eq!(preview.site_name, "Env");
    assert_eq!(site.requests(), vec!["/post"]);
    assert!(server.stop().await.success());
}
