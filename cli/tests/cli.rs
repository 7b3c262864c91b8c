//! The `chat` binary driven as a person would: spawned as a process with its stdin fed and
//! its output read, against real auth and chat services started by each test (each on its
//! own database and NATS space, so tests run in parallel).

use std::{process::Stdio, time::Duration};

use chat_cli::session::{Session, SessionStore};
use chat_testkit::{
    chat_config, spawn_auth, spawn_auth_with, spawn_chat, TcpProxy, TestAuth, TestChat, TestDb,
    TestNats,
};
use grpc_chat_proto::chat::v1 as pb;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, Command},
};

/// Auth and chat services for one test.
struct Stack {
    auth: TestAuth,
    chat: TestChat,
    _db: TestDb,
    _nats: TestNats,
}

impl Stack {
    async fn new() -> Self {
        Self::with_auth(spawn_auth().await).await
    }

    async fn with_auth(auth: TestAuth) -> Self {
        let db = TestDb::new().await;
        let nats = TestNats::new();
        let chat = spawn_chat(chat_config(&auth, &db.url, &nats)).await;
        Self {
            auth,
            chat,
            _db: db,
            _nats: nats,
        }
    }

    /// A person at their own terminal (their own config directory).
    fn user(&self) -> User {
        User::new(
            &format!("http://{}", self.auth.addr),
            &format!("http://{}", self.chat.addr),
        )
    }
}

struct User {
    auth: String,
    chat: String,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl User {
    fn new(auth: &str, chat: &str) -> Self {
        Self {
            auth: auth.to_owned(),
            chat: chat.to_owned(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chat"));
        c.arg("--server")
            .arg(&self.chat)
            .arg("--auth-server")
            .arg(&self.auth)
            .args(args)
            .env("CHAT_CONFIG_DIR", self.dir.path())
            .env_remove("CHAT_SERVER")
            .env_remove("CHAT_AUTH_SERVER")
            .env_remove("CHAT_SAGA_SERVER")
            .env_remove("CHAT_TLS")
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `chat <args>` with `stdin` as its input, to the end.
    async fn run(&self, args: &[&str], stdin: &str) -> Out {
        let mut child = self.command(args).spawn().expect("spawn chat");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("write stdin");
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("chat finished in time")
            .expect("chat output");
        Out {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    }

    /// Runs `chat <args>` with `TZ` set to `tz` (`None`: unset) instead of UTC.
    async fn run_in_zone(&self, args: &[&str], tz: Option<&str>) -> Out {
        let mut command = self.command(args);
        match tz {
            Some(tz) => command.env("TZ", tz),
            None => command.env_remove("TZ"),
        };
        let out = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("chat finished in time")
            .expect("chat output");
        Out {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, "").await;
        assert!(out.ok, "chat {args:?} failed: {out:?}");
        out.stdout
    }

    fn session(&self) -> Option<Session> {
        SessionStore::in_dir(self.dir.path().to_owned(), &self.auth)
            .load()
            .expect("session file")
    }

    fn save_session(&self, session: &Session) {
        SessionStore::in_dir(self.dir.path().to_owned(), &self.auth)
            .save(session)
            .expect("save session");
    }
}

/// A failure must be exactly one `error: ...` line on stderr, nothing on stdout, and a
/// non-zero exit.
fn assert_one_line_error(out: &Out, expected: &str) {
    assert!(!out.ok, "expected a failure: {out:?}");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr, format!("error: {expected}\n"), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
}

fn chat_id(created: &str) -> i64 {
    created
        .trim()
        .strip_prefix("Chat created, ID: ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not a created chat: {created:?}"))
}

/// The `[HH:MM] ` stamps removed, so lines compare exactly.
fn unstamped(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(
            |l| match l.strip_prefix('[').and_then(|r| r.split_once("] ")) {
                Some((_, rest)) => rest.to_owned(),
                None => l.to_owned(),
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_create_send_connect_and_read_history() {
    let stack = Stack::new().await;
    let (alice, bob) = (stack.user(), stack.user());

    let out = alice
        .ok(&["register", "alice@example.com", "alice", "alice-password"])
        .await;
    assert!(
        out.starts_with("Registered alice (alice@example.com)"),
        "{out}"
    );
    // The password read from stdin when it is not given.
    let out = bob
        .run(&["register", "bob@example.com", "bob"], "bob-password\n")
        .await;
    assert!(out.ok, "{out:?}");

    let out = alice
        .run(&["login", "alice@example.com"], "alice-password\n")
        .await;
    assert_eq!(out.stdout, "Logged in as alice (alice@example.com).\n");
    bob.ok(&["login", "bob@example.com", "bob-password"]).await;
    assert!(alice
        .ok(&["whoami"])
        .await
        .starts_with("alice (alice@example.com), user ID "));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(alice.dir.path().join("session.json"))
            .expect("session file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }

    let id = chat_id(&alice.ok(&["create_chat", "bob", "Weekend", "plans"]).await);
    let out = alice.ok(&["send", &id.to_string(), "Привет, Боб 👋"]).await;
    assert_eq!(out, format!("Sent to chat {id} (message #1).\n"));

    // Bob at the prompt: lists his chats, connects, sees Alice's message, answers, leaves,
    // reads the history.
    let script = format!("chats\nconnect {id}\nhi alice — ça va? 🙂\n/leave\nhistory {id}\nexit\n");
    let out = bob.run(&[], &script).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stderr, "", "{out:?}");
    assert_eq!(
        unstamped(&out.stdout),
        vec![
            format!("#{id}  Weekend plans  (2 members, 1 message, 1 unread)"),
            "alice: Привет, Боб 👋".to_owned(),
            "bob: hi alice — ça va? 🙂".to_owned(),
            "alice: Привет, Боб 👋".to_owned(),
            "bob: hi alice — ça va? 🙂".to_owned(),
        ],
        "{out:?}"
    );
    assert!(out.stdout.starts_with(&format!("#{id}")));
    assert!(out
        .stdout
        .lines()
        .nth(1)
        .is_some_and(|l| l.starts_with('[')));

    let out = alice.ok(&["history", &id.to_string(), "1"]).await;
    assert_eq!(
        unstamped(&out),
        vec!["bob: hi alice — ça va? 🙂".to_owned()]
    );

    assert_eq!(alice.ok(&["logout"]).await, "Logged out.\n");
    assert!(alice.session().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_line_with_a_failing_exit() {
    let stack = Stack::new().await;
    let alice = stack.user();
    let carol = stack.auth.user("carol").await;

    let out = alice
        .run(&["login", "carol@example.com", "not-her-password"], "")
        .await;
    assert_one_line_error(&out, "wrong email or password");

    let out = alice.run(&["chats"], "").await;
    assert_one_line_error(&out, "not logged in: run `login <email>` first");

    alice.ok(&["login", &carol.email, &carol.password]).await;
    let out = alice.run(&["history", "999"], "").await;
    assert_one_line_error(
        &out,
        "chat 999 does not exist or you are not a member of it",
    );
    let out = alice.run(&["send", "999", "hello?"], "").await;
    assert_one_line_error(
        &out,
        "chat 999 does not exist or you are not a member of it",
    );
    let out = alice.run(&["connect", "999"], "").await;
    assert_one_line_error(
        &out,
        "chat 999 does not exist or you are not a member of it",
    );
    let out = alice.run(&["create_chat", "nobody"], "").await;
    assert_one_line_error(&out, "no such user: nobody");

    // At the prompt, a failed command does not end the session, and the exit status is the
    // last command's.
    let out = alice.run(&[], "send 999 hi\nfrobnicate\nwhoami\n").await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.stderr,
        "error: chat 999 does not exist or you are not a member of it\n\
         error: unrecognized subcommand 'frobnicate' (try `help`)\n"
    );
    assert!(out.stdout.starts_with("carol (carol@example.com)"));

    // A malformed command line.
    let out = alice.run(&["history", "three"], "").await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.starts_with("error: invalid value 'three'"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_named() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("http://127.0.0.1:{port}");
    let user = User::new(&addr, &addr);
    let out = user
        .run(&["login", "alice@example.com", "alice-password"], "")
        .await;
    assert_one_line_error(&out, &format!("cannot reach the server at {addr}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_by_themselves() {
    // Access tokens that live 5 s: always within the CLI's refresh margin.
    let auth = spawn_auth_with(auth_service::Settings {
        access_ttl: Duration::from_secs(5),
        ..chat_testkit::auth_settings()
    })
    .await;
    let stack = Stack::with_auth(auth).await;
    let dave = stack.auth.user("dave").await;
    let user = stack.user();
    user.ok(&["login", &dave.email, &dave.password]).await;
    let first = user.session().expect("logged in");

    // An access token about to expire is rotated before the call.
    user.ok(&["chats"]).await;
    let second = user.session().expect("still logged in");
    assert_ne!(second.refresh_token, first.refresh_token);

    // A token the server rejects is refreshed once and the call retried.
    user.save_session(&Session {
        access_token: "not-a-token".into(),
        access_expires_at: second.access_expires_at + 3600,
        ..second.clone()
    });
    user.ok(&["chats"]).await;
    let third = user.session().expect("still logged in");
    assert_ne!(third.refresh_token, second.refresh_token);

    // A session revoked on the server ends with a clear message.
    user.save_session(&Session {
        access_token: "not-a-token".into(),
        ..first
    });
    let out = user.run(&["chats"], "").await;
    assert_one_line_error(&out, "your session has expired: run `login <email>` again");
}

/// Reads lines (a `connect`'s stdout, or its stderr where notices go) until one ends with
/// `suffix`; returns them all.
async fn read_until<R: AsyncBufRead + Unpin>(lines: &mut Lines<R>, suffix: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.ends_with(suffix);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no line ending with {suffix:?}; saw {seen:?}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_resumes_after_a_dropped_connection_without_duplicates() {
    let stack = Stack::new().await;
    let (alice, bob) = (stack.auth.user("alice").await, stack.auth.user("bob").await);
    let id = stack
        .chat
        .client
        .clone()
        .create_chat(alice.req(pb::CreateChatRequest {
            title: String::new(),
            members: vec![bob.username.clone()],
        }))
        .await
        .expect("create chat")
        .into_inner()
        .chat
        .expect("chat")
        .id;
    let say = |text: &str| {
        let mut client = stack.chat.client.clone();
        let req = alice.req(pb::SendMessageRequest {
            chat_id: id,
            text: text.into(),
            ..Default::default()
        });
        async move { client.send_message(req).await.expect("send") }
    };
    say("one").await;

    // Bob connects through a proxy that the test can cut.
    let proxy = TcpProxy::start(stack.chat.addr).await;
    let user = User::new(
        &format!("http://{}", stack.auth.addr),
        &format!("http://{}", proxy.addr),
    );
    user.ok(&["login", &bob.email, &bob.password]).await;
    let mut child: Child = user
        .command(&["connect", &id.to_string()])
        .spawn()
        .expect("spawn chat");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = read_until(&mut lines, "alice: one").await;

    proxy.cut();
    say("two").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    say("three").await;
    proxy.restore();
    seen.extend(read_until(&mut lines, "alice: three").await);
    say("four").await;
    seen.extend(read_until(&mut lines, "alice: four").await);

    // The end of input leaves.
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("chat left in time")
        .expect("status");
    assert!(status.success());
    while let Ok(Some(line)) = lines.next_line().await {
        seen.push(line);
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert_eq!(
        unstamped(&seen.join("\n")),
        ["alice: one", "alice: two", "alice: three", "alice: four"],
        "stderr: {stderr}"
    );
    assert!(stderr.contains("reconnecting by itself"), "{stderr}");
    assert!(stderr.contains("(reconnected)"), "{stderr}");

    // A chat deleted under a connected member ends `connect` with a one-line error.
    let mut child = user
        .command(&["connect", &id.to_string(), "--history", "1"])
        .spawn()
        .expect("spawn chat");
    let _stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    read_until(&mut lines, "alice: four").await;
    stack
        .chat
        .client
        .clone()
        .delete_chat(alice.req(pb::DeleteChatRequest { chat_id: id }))
        .await
        .expect("delete chat");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("chat ended in time")
        .expect("output");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("error: chat {id} was deleted\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_goes_through_the_saga_and_notifies_members() {
    use chat_testkit::{
        notification_config, saga_config, smtp::SmtpMode, smtp::TestSmtp, spawn_notification,
        spawn_saga,
    };
    let stack = Stack::new().await;
    let (notify_db, saga_db) = (TestDb::new().await, TestDb::new().await);
    let smtp = TestSmtp::start(SmtpMode::Accept).await;
    let notifier = spawn_notification(notification_config(
        &stack.auth,
        &stack.chat,
        &notify_db.url,
        &stack._nats,
        smtp.addr,
    ))
    .await;
    let saga = spawn_saga(saga_config(
        &stack.auth,
        stack.chat.addr,
        notifier.addr,
        &saga_db.url,
    ))
    .await;
    let (alice, bob) = (stack.auth.user("alice").await, stack.auth.user("bob").await);
    let user = stack.user();
    let saga_addr = format!("http://{}", saga.addr);
    let run = |args: &[&str]| {
        let mut all = vec!["--saga-server", saga_addr.as_str()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        let user = &user;
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            user.run(&args, "").await
        }
    };
    assert!(run(&["login", &alice.email, &alice.password]).await.ok);
    let out = run(&["create_chat", "bob"]).await;
    let id = chat_id(&out.stdout).to_string();

    let out = run(&["send_message", &id, "alice", "Сообщение через сагу 🚀"]).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.stdout,
        format!("Sent to chat {id} (message #1); members notified.\n")
    );
    assert_eq!(smtp.wait_for(1).await.len(), 1);
    assert_eq!(smtp.recipients(), vec![bob.email.clone()]);

    let out = run(&["send_message", &id, "bob", "pretending"]).await;
    assert!(!out.ok, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.starts_with("error: "), "{out:?}");
}

/// Defect: with the notifier down the orchestrator stored the message and answered
/// UNAVAILABLE (quoting the "tcp connect error" of its own call to the notifier), and the CLI
/// said it could not reach the server and failed; running the command again stored the
/// message a second time. Now: "accepted, still in progress" with the saga's id, and the same
/// command run again is the same saga, until it reports how it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_accepted_while_the_notifier_is_down_is_in_progress_and_never_doubled() {
    use chat_testkit::{
        notification_config, saga_config, smtp::SmtpMode, smtp::TestSmtp, spawn_notification,
        spawn_saga,
    };
    let stack = Stack::new().await;
    let (notify_db, saga_db) = (TestDb::new().await, TestDb::new().await);
    let smtp = TestSmtp::start(SmtpMode::Accept).await;
    let notifier = spawn_notification(notification_config(
        &stack.auth,
        &stack.chat,
        &notify_db.url,
        &stack._nats,
        smtp.addr,
    ))
    .await;
    let notify_proxy = TcpProxy::start(notifier.addr).await;
    notify_proxy.cut();
    let mut config = saga_config(
        &stack.auth,
        stack.chat.addr,
        notify_proxy.addr,
        &saga_db.url,
    );
    config.settings.notify_deadline = Duration::from_secs(60);
    let saga = spawn_saga(config).await;
    let (alice, bob) = (stack.auth.user("alice").await, stack.auth.user("bob").await);
    let user = stack.user();
    let saga_addr = format!("http://{}", saga.addr);
    let run = |args: &[&str]| {
        let mut all = vec!["--saga-server", saga_addr.as_str()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        let user = &user;
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            user.run(&args, "").await
        }
    };
    assert!(run(&["login", &alice.email, &alice.password]).await.ok);
    let id = chat_id(&run(&["create_chat", "bob"]).await.stdout).to_string();
    let send = ["send_message", id.as_str(), "alice", "only once"];
    let saga_of = |out: &Out| {
        assert!(out.ok, "{out:?}");
        assert!(
            out.stdout.starts_with("Accepted, still in progress: saga "),
            "{out:?}"
        );
        out.stdout.split_whitespace().nth(4).map(str::to_owned)
    };

    let first = saga_of(&run(&send).await);
    let again = saga_of(&run(&send).await);
    assert_eq!(first, again);
    let history = |n| {
        let mut chat = stack.chat.client.clone();
        let req = bob.req(pb::ListMessagesRequest {
            chat_id: id.parse().expect("id"),
            page_size: n,
            ..Default::default()
        });
        async move {
            let page = chat.list_messages(req).await.expect("history").into_inner();
            page.messages
                .into_iter()
                .map(|m| m.text)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(history(10).await, vec!["only once"]);

    // The notifier is back: the same command now tells how the saga ended.
    notify_proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = run(&send).await;
        if out.stdout.starts_with("Sent to chat") {
            break out;
        }
        assert!(tokio::time::Instant::now() < deadline, "{out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        out.stdout,
        format!("Sent to chat {id} (message #1); members notified.\n")
    );
    assert_eq!(history(10).await, vec!["only once"]);
    assert_eq!(smtp.wait_for(1).await.len(), 1);
    // Once it ended, the same text again is a new message.
    let out = run(&send).await;
    assert_eq!(
        out.stdout,
        format!("Sent to chat {id} (message #2); members notified.\n"),
        "{out:?}"
    );
}

/// The embedded `chat-server` (all four services on one port, SQLite, in-process events,
/// the stub email sender), as a new user meets it: one address for everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_serves_the_whole_walkthrough() {
    chat_testkit::init_logs();
    let data = tempfile::tempdir().expect("data dir");
    let mut config = chat_server::Config::embedded(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data.path().to_owned(),
    )
    .expect("config");
    config.auth.bcrypt_cost = 4;
    let shutdown = chat_common::Shutdown::new();
    let server = chat_server::Server::build(config, shutdown.clone())
        .await
        .expect("build chat-server");
    let url = format!("http://{}", server.local_addr());
    let serving = tokio::spawn(server.run_until_stopped(shutdown.clone()));
    let (alice, bob) = (User::new(&url, &url), User::new(&url, &url));

    alice
        .ok(&["register", "alice@example.com", "alice", "alice-password"])
        .await;
    bob.ok(&["register", "bob@example.com", "bob", "bob-password"])
        .await;
    let out = alice
        .run(&["login", "alice@example.com", "wrong-password"], "")
        .await;
    assert_one_line_error(&out, "wrong email or password");
    alice
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;
    bob.ok(&["login", "bob@example.com", "bob-password"]).await;

    let id = chat_id(&alice.ok(&["create_chat", "bob", "Ужин"]).await).to_string();
    let out = alice
        .ok(&["send_message", &id, "alice", "Встречаемся в 8 🍝"])
        .await;
    assert_eq!(
        out,
        format!("Sent to chat {id} (message #1); members notified.\n")
    );
    let out = alice.run(&["history", "4242"], "").await;
    assert_one_line_error(
        &out,
        "chat 4242 does not exist or you are not a member of it",
    );

    let out = bob
        .run(&[], &format!("connect {id}\nи я 👍\n/leave\nexit\n"))
        .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        unstamped(&out.stdout),
        vec![
            "alice: Встречаемся в 8 🍝".to_owned(),
            "bob: и я 👍".to_owned()
        ],
        "{out:?}"
    );

    // Bob was emailed about Alice's message (through the saga), Alice about Bob's (through
    // the event); the stub sender keeps them in the data directory.
    let record = data.path().join("sent-emails.jsonl");
    let mut emails = Vec::new();
    for _ in 0..100 {
        emails = std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect();
        if emails.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut to: Vec<&str> = emails.iter().filter_map(|e| e["to"].as_str()).collect();
    to.sort_unstable();
    assert_eq!(to, ["alice@example.com", "bob@example.com"], "{emails:?}");
    assert!(emails.iter().any(|e| e["text"]
        .as_str()
        .is_some_and(|t| t.contains("Встречаемся в 8 🍝"))));

    // The server stops; the client says so in one line.
    shutdown.trigger();
    serving
        .await
        .expect("server task")
        .expect("server stopped cleanly");
    let out = alice.run(&["chats"], "").await;
    assert_one_line_error(&out, &format!("cannot reach the server at {url}"));
}

/// An embedded `chat-server` for one test, stopped and started again on the same port and
/// data when the test says.
struct Embedded {
    data: tempfile::TempDir,
    addr: std::net::SocketAddr,
    shutdown: chat_common::Shutdown,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Embedded {
    async fn start() -> Self {
        let data = tempfile::tempdir().expect("data dir");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let (shutdown, serving) = Self::serve(addr, &data).await;
        Self {
            data,
            addr,
            shutdown,
            serving,
        }
    }

    async fn serve(
        addr: std::net::SocketAddr,
        data: &tempfile::TempDir,
    ) -> (
        chat_common::Shutdown,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let mut config =
            chat_server::Config::embedded(addr, data.path().to_owned()).expect("config");
        config.auth.bcrypt_cost = 4;
        let shutdown = chat_common::Shutdown::new();
        let server = chat_server::Server::build(config, shutdown.clone())
            .await
            .expect("build chat-server");
        (
            shutdown.clone(),
            tokio::spawn(server.run_until_stopped(shutdown)),
        )
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn user(&self) -> User {
        User::new(&self.url(), &self.url())
    }

    async fn restart(&mut self) {
        self.shutdown.trigger();
        (&mut self.serving)
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        let (shutdown, serving) = Self::serve(self.addr, &self.data).await;
        self.shutdown = shutdown;
        self.serving = serving;
    }
}

/// Issue 16, item 4: the original CLI's users type `register <name> <email> <password>`
/// and `get_access`. Both work; a role (the original's fourth word) is answered with the
/// form to use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_clis_register_and_get_access_work() {
    let server = Embedded::start().await;
    let (alice, bob) = (server.user(), server.user());

    let out = alice
        .ok(&["register", "alice", "alice@example.com", "alice-password"])
        .await;
    assert!(
        out.starts_with("Registered alice (alice@example.com), user ID "),
        "{out}"
    );
    let out = bob
        .run(&[], "register bob bob@example.com bob-password\n")
        .await;
    assert!(
        out.stdout.starts_with("Registered bob (bob@example.com)"),
        "{out:?}"
    );
    let out = bob
        .run(
            &[
                "register",
                "carol",
                "carol@example.com",
                "pw-pw-pw-pw",
                "user",
            ],
            "",
        )
        .await;
    assert_one_line_error(
        &out,
        "a role is not chosen at registration (an operator grants admin on the server): register <email> <username> [password]",
    );

    let out = alice.run(&["get_access"], "").await;
    assert_one_line_error(&out, "not logged in: run `login <email>` first");
    alice
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;
    let out = alice.ok(&["get_access"]).await;
    assert!(
        out.starts_with("Access token ready for alice, valid until "),
        "{out}"
    );
    let id = chat_id(&alice.ok(&["create_chat", "bob"]).await).to_string();
    alice.ok(&["send", &id, "still in"]).await;
}

/// Issue 16, item 4b: the papercuts a newcomer met, each as they met it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomers_papercuts() {
    let server = Embedded::start().await;
    let (alice, bob) = (server.user(), server.user());
    alice
        .ok(&["register", "alice@example.com", "alice", "alice-password"])
        .await;
    bob.ok(&["register", "bob@example.com", "bob", "bob-password"])
        .await;
    alice
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;

    // Missing arguments are named, with the usage.
    let out = alice.run(&["send_message", "1"], "").await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "error: the following required arguments were not provided: <FROM> <TEXT>... (see `chat --help`)\n\
         Usage: chat send_message <CHAT_ID> <FROM> <TEXT>...\n",
        "{out:?}"
    );
    let out = alice.run(&[], "send_message 1\n").await;
    assert_eq!(
        out.stderr,
        "error: the following required arguments were not provided: <FROM> <TEXT>... (try `help`)\n\
         Usage: send_message <CHAT_ID> <FROM> <TEXT>...\n",
        "{out:?}"
    );

    // A chat one cannot see reads the same in every command, the saga's included.
    let hidden = "chat 999 does not exist or you are not a member of it";
    for args in [
        &["send_message", "999", "alice", "hi"][..],
        &["send", "999", "hi"],
        &["history", "999"],
        &["members", "999"],
        &["delete_chat", "999"],
        &["connect", "999"],
    ] {
        let out = alice.run(args, "").await;
        assert_one_line_error(&out, hidden);
    }

    // `history <chat> 0` is refused in words, not one message.
    let id = chat_id(&alice.ok(&["create_chat", "bob"]).await).to_string();
    alice.ok(&["send", &id, "one"]).await;
    alice.ok(&["send", &id, "two"]).await;
    let out = alice.run(&["history", &id, "0"], "").await;
    assert_one_line_error(
        &out,
        &format!(
            "history {id} 0: <n> is how many of the latest messages to show, at least 1 (default 20)"
        ),
    );
    assert_eq!(
        unstamped(&alice.ok(&["history", &id]).await),
        ["alice: one", "alice: two"]
    );
    // `connect --history 0` shows no history (the server's 0 means its default, 50).
    let out = alice
        .run(&[], &format!("connect {id} --history 0\n/leave\nexit\n"))
        .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    let out = alice
        .run(&[], &format!("connect {id} --history 1\n/leave\nexit\n"))
        .await;
    assert_eq!(unstamped(&out.stdout), ["alice: two"], "{out:?}");

    // A TZ that names no zone: UTC, said once on stderr.
    let out = alice
        .run_in_zone(&["history", &id], Some("Invalid/Zone"))
        .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.stderr,
        "warning: TZ=\"Invalid/Zone\" is not a time zone known here; times are shown in UTC\n"
    );
    let utc = alice.run_in_zone(&["history", &id], Some("UTC")).await;
    assert_eq!(out.stdout, utc.stdout);
    assert_eq!(utc.stderr, "");
    // A zone that is set is used (a POSIX rule, UTC+05:45: needs no zone database).
    let far = alice.run_in_zone(&["history", &id], Some("XYZ-5:45")).await;
    assert_eq!(far.stderr, "");
    assert_ne!(far.stdout, utc.stdout);
}

/// Issue 16, item 4b: the notice of a lost stream spoke the API ("live events interrupted;
/// reconnect with after_seq=3", "server is shutting down; reconnect"). Now one line in
/// words, and the view resumes by itself after the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_says_in_words_that_it_catches_up_after_a_server_restart() {
    let mut server = Embedded::start().await;
    let (alice, bob) = (server.user(), server.user());
    alice
        .ok(&["register", "alice@example.com", "alice", "alice-password"])
        .await;
    bob.ok(&["register", "bob@example.com", "bob", "bob-password"])
        .await;
    alice
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;
    bob.ok(&["login", "bob@example.com", "bob-password"]).await;
    let id = chat_id(&alice.ok(&["create_chat", "bob"]).await).to_string();
    alice.ok(&["send", &id, "one"]).await;

    let mut child = bob.command(&["connect", &id]).spawn().expect("spawn chat");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = read_until(&mut lines, "alice: one").await;

    server.restart().await;
    alice.ok(&["send", &id, "two"]).await;
    seen.extend(read_until(&mut lines, "alice: two").await);
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("chat left in time")
        .expect("status");
    assert!(status.success());
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert_eq!(unstamped(&seen.join("\n")), ["alice: one", "alice: two"]);
    assert_eq!(
        stderr,
        "(connection to live messages lost; reconnecting by itself and catching up after message #1...)\n\
         (reconnected)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_message_fixes_a_line_everywhere_it_is_shown() {
    let stack = Stack::new().await;
    let (alice, bob) = (stack.user(), stack.user());
    alice
        .ok(&["register", "alice@example.com", "alice", "alice-password"])
        .await;
    bob.ok(&["register", "bob@example.com", "bob", "bob-password"])
        .await;
    alice
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;
    bob.ok(&["login", "bob@example.com", "bob-password"]).await;
    let id = chat_id(&alice.ok(&["create_chat", "bob"]).await).to_string();
    alice.ok(&["send", &id, "helo", "bob"]).await;

    // Bob watches the chat live.
    let mut child: Child = bob.command(&["connect", &id]).spawn().expect("spawn chat");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    read_until(&mut lines, "alice: helo bob").await;

    let out = alice.ok(&["edit_message", &id, "1", "hello", "bob"]).await;
    assert_eq!(out, format!("Edited message #1 in chat {id}.\n"));
    let seen = read_until(&mut lines, "alice: hello bob (edited)").await;
    assert_eq!(unstamped(&seen.join("\n")), ["alice: hello bob (edited)"]);
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    // The same edit again (`edit` for short) changes nothing, and says so.
    let out = alice.ok(&["edit", &id, "1", "hello", "bob"]).await;
    assert_eq!(
        out,
        format!("Message #1 in chat {id} already says that; nothing changed.\n")
    );
    // Only the sender may.
    let out = bob.run(&["edit", &id, "1", "bob's words"], "").await;
    assert_one_line_error(&out, "only the message's sender may edit it");
    // Text rules as for send.
    let out = alice.run(&["edit", &id, "1", " "], "").await;
    assert!(!out.ok, "{out:?}");
    let out = alice.run(&["edit", &id, "9", "nothing there"], "").await;
    assert_one_line_error(&out, &format!("message 9 not found in chat {id}"));

    let out = bob.ok(&["history", &id]).await;
    assert_eq!(unstamped(&out), ["alice: hello bob (edited)"]);
}

/// Reads the embedded server's stub email record until it holds `n` emails.
async fn emails(data: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let record = data.join("sent-emails.jsonl");
    let mut emails = Vec::new();
    for _ in 0..100 {
        emails = std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect();
        if emails.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    emails
}

/// Issue 16, item 6, on the embedded server (SQLite, in-process events): an edit reaches a
/// live `connect`, history shows it, and nobody is emailed about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_edits_without_emailing() {
    chat_testkit::init_logs();
    let server = Embedded::start().await;
    let (alice, bob) = (server.user(), server.user());
    alice
        .ok(&["register", "alice@example.com", "alice", "alice-password"])
        .await;
    bob.ok(&["register", "bob@example.com", "bob", "bob-password"])
        .await;
    alice
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;
    bob.ok(&["login", "bob@example.com", "bob-password"]).await;
    let id = chat_id(&alice.ok(&["create_chat", "bob"]).await).to_string();
    alice.ok(&["send", &id, "at 7"]).await;
    assert_eq!(emails(server.data.path(), 1).await.len(), 1);

    let mut child: Child = bob.command(&["connect", &id]).spawn().expect("spawn chat");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    read_until(&mut lines, "alice: at 7").await;
    alice.ok(&["edit_message", &id, "1", "at 8"]).await;
    read_until(&mut lines, "alice: at 8 (edited)").await;
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    // Events reach the notifier in order: once the next message's email is out, the
    // edit's turn has passed.
    alice.ok(&["send", &id, "see you"]).await;
    let sent = emails(server.data.path(), 2).await;
    let texts: Vec<&str> = sent.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(texts.len(), 2, "{sent:?}");
    assert!(texts.iter().all(|t| !t.contains("at 8")), "{sent:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = std::fs::read_to_string(server.data.path().join("sent-emails.jsonl"))
        .expect("the email record");
    assert_eq!(record.lines().count(), 2, "{record}");

    let out = bob.ok(&["history", &id]).await;
    assert_eq!(unstamped(&out), ["alice: at 8 (edited)", "alice: see you"]);
}

/// Issue 16, item 7: `chats` counts each chat's unread messages (others' messages after
/// the read marker), `mark_read` moves the marker forward only, and `connect` marks what it
/// shows, while it runs and on leaving. `alice` and `bob` are registered and logged in.
async fn read_markers_walkthrough(alice: &User, bob: &User) {
    let id = chat_id(&alice.ok(&["create_chat", "bob"]).await);
    let ids = id.to_string();
    for text in ["one", "two", "three"] {
        alice.ok(&["send", &ids, text]).await;
    }
    let listed = |unread: i64, messages: i64| {
        format!("#{id}  (no title)  (2 members, {messages} messages, {unread} unread)\n")
    };
    assert_eq!(bob.ok(&["chats"]).await, listed(3, 3));
    assert_eq!(alice.ok(&["chats"]).await, listed(0, 3), "own messages");

    let out = bob.ok(&["mark_read", &ids, "1"]).await;
    assert_eq!(out, format!("Chat {id} read up to message #1.\n"));
    assert_eq!(bob.ok(&["chats"]).await, listed(2, 3));
    let out = bob.ok(&["mark_read", &ids, "0"]).await;
    assert_eq!(
        out,
        format!("Chat {id} was already read up to message #1; nothing changed.\n")
    );
    let out = bob.run(&["mark_read", &ids, "9"], "").await;
    assert_one_line_error(
        &out,
        &format!("seq 9 is beyond the newest message of chat {id} (seq 3)"),
    );
    let out = bob.run(&["mark_read", &(id + 1000).to_string()], "").await;
    assert_one_line_error(
        &out,
        &format!(
            "chat {} does not exist or you are not a member of it",
            id + 1000
        ),
    );

    // A live connect marks what it shows while it runs, not only when it ends.
    let mut child: Child = bob.command(&["connect", &ids]).spawn().expect("spawn chat");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    read_until(&mut lines, "alice: three").await;
    alice.ok(&["send", &ids, "four"]).await;
    read_until(&mut lines, "alice: four").await;
    let mut seen = String::new();
    for _ in 0..50 {
        seen = bob.ok(&["chats"]).await;
        if seen == listed(0, 4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, listed(0, 4), "connect marked what it showed");
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    // History shown by a short connect is marked on the way out.
    alice.ok(&["send", &ids, "five"]).await;
    assert_eq!(bob.ok(&["chats"]).await, listed(1, 5));
    let out = bob.run(&["connect", &ids, "--history", "1"], "").await;
    assert!(out.ok, "{out:?}");
    assert_eq!(unstamped(&out.stdout), ["alice: five"], "{out:?}");
    assert_eq!(bob.ok(&["chats"]).await, listed(0, 5));

    // Without a seq: up to the newest message.
    alice.ok(&["send", &ids, "six"]).await;
    let out = bob.ok(&["mark_read", &ids]).await;
    assert_eq!(out, format!("Chat {id} read up to message #6.\n"));
    assert_eq!(bob.ok(&["chats"]).await, listed(0, 6));
}

async fn registered_pair(alice: &User, bob: &User) {
    alice
        .ok(&["register", "alice@example.com", "alice", "alice-password"])
        .await;
    bob.ok(&["register", "bob@example.com", "bob", "bob-password"])
        .await;
    alice
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;
    bob.ok(&["login", "bob@example.com", "bob-password"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_count_unread_and_connect_marks_what_it_shows() {
    let stack = Stack::new().await;
    let (alice, bob) = (stack.user(), stack.user());
    registered_pair(&alice, &bob).await;
    read_markers_walkthrough(&alice, &bob).await;
}

/// The same on the embedded server (SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_counts_unread() {
    let server = Embedded::start().await;
    let (alice, bob) = (server.user(), server.user());
    registered_pair(&alice, &bob).await;
    read_markers_walkthrough(&alice, &bob).await;
}

/// Issue 16, user management: `whoami` asks the server (role included), `users` is for
/// administrators (granted by the operator), `passwd` reads both passwords from stdin, keeps
/// this session and ends the others, and `delete_account` ends the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_users_passwd_and_delete_account() {
    let stack = Stack::new().await;
    let (alice, laptop, bob) = (stack.user(), stack.user(), stack.user());
    alice
        .ok(&["register", "alice@example.com", "alice", "alice-password"])
        .await;
    bob.ok(&["register", "bob@example.com", "bob", "bob-password"])
        .await;
    alice
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;
    laptop
        .ok(&["login", "alice@example.com", "alice-password"])
        .await;
    bob.ok(&["login", "bob@example.com", "bob-password"]).await;

    let out = alice.ok(&["whoami"]).await;
    assert!(
        out.starts_with("alice (alice@example.com), user ID ") && out.contains(", role user, on "),
        "{out}"
    );
    assert_one_line_error(
        &alice.run(&["users"], "").await,
        "only administrators may list users",
    );
    auth_service::admin::set_role(
        &stack.auth.db.url,
        auth_service::admin::AdminAction::Grant,
        "alice@example.com",
    )
    .await
    .expect("grant");
    assert!(alice.ok(&["whoami"]).await.contains(", role admin, on "));
    let out = alice.ok(&["users"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with("alice  alice@example.com  admin"),
        "{out}"
    );
    assert!(lines[1].ends_with("bob  bob@example.com  user"), "{out}");
    assert_eq!(alice.ok(&["users", "bo"]).await.lines().count(), 1);
    assert_eq!(alice.ok(&["users", "zz"]).await, "No accounts match.\n");

    // A wrong current password is said as such, and changes nothing.
    let out = alice
        .run(&["passwd"], "wrong-password\nnew-password-1\n")
        .await;
    assert_one_line_error(&out, "the current password is wrong");
    let out = alice
        .run(&["passwd"], "alice-password\nnew-password-1\n")
        .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.stdout,
        "Password changed. Every other session of this account is logged out.\n"
    );
    // This session goes on, across a refresh of its new tokens.
    let mut session = alice.session().expect("session kept");
    session.access_expires_at = 0;
    alice.save_session(&session);
    assert!(alice.ok(&["whoami"]).await.starts_with("alice "));
    // The laptop's session ended: its refresh token was revoked.
    let mut session = laptop.session().expect("laptop session");
    session.access_expires_at = 0;
    laptop.save_session(&session);
    let out = laptop.run(&["whoami"], "").await;
    assert!(!out.ok, "{out:?}");
    // The new password logs in, the old one no more.
    laptop
        .ok(&["login", "alice@example.com", "new-password-1"])
        .await;
    assert!(
        !laptop
            .run(&["login", "alice@example.com", "alice-password"], "")
            .await
            .ok
    );

    // bob deletes his account: logged out here, cannot log in again.
    assert_one_line_error(
        &bob.run(&["delete_account", "not-it"], "").await,
        "the current password is wrong",
    );
    let out = bob.run(&["delete_account"], "bob-password\n").await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.stdout,
        "Deleted the account bob (bob@example.com). You are logged out.\n"
    );
    assert!(bob.session().is_none());
    assert_one_line_error(
        &bob.run(&["login", "bob@example.com", "bob-password"], "")
            .await,
        "wrong email or password",
    );
}

/// Issue 16, item 5 and the end of item 1: `invite`, `kick` and `leave`; a kicked member's
/// `connect` ends with a sentence that says so while other members' `connect` shows who
/// joins and leaves; a deleted account's messages stay, shown as from "(deleted user)".
async fn membership_walkthrough(alice: &User, bob: &User, carol: &User) {
    let id = chat_id(&alice.ok(&["create_chat", "bob"]).await);
    let ids = id.to_string();
    alice.ok(&["send", &ids, "hello"]).await;
    let mut bobs = bob.command(&["connect", &ids]).spawn().expect("spawn chat");
    let bob_stdin = bobs.stdin.take().expect("stdin");
    let mut bob_out = BufReader::new(bobs.stdout.take().expect("stdout")).lines();
    let mut bob_notes = BufReader::new(bobs.stderr.take().expect("stderr")).lines();
    read_until(&mut bob_out, "alice: hello").await;

    assert_eq!(
        alice.ok(&["invite", &ids, "carol"]).await,
        format!("Added carol to chat {id} (3 members).\n")
    );
    read_until(&mut bob_notes, "(carol joined the chat)").await;
    assert_eq!(
        alice.ok(&["invite", &ids, "carol,bob"]).await,
        format!("Everyone named is already in chat {id} (3 members).\n")
    );
    assert_one_line_error(
        &bob.run(&["kick", &ids, "carol"], "").await,
        "only the chat's owner or an administrator may remove other members",
    );
    assert_one_line_error(
        &alice.run(&["kick", &ids, "nobody"], "").await,
        &format!("nobody is not a member of chat {id} (`members {id}` lists them)"),
    );

    // Carol is kicked while she watches: her connect ends, saying why.
    let mut carols = carol
        .command(&["connect", &ids])
        .spawn()
        .expect("spawn chat");
    let _carol_stdin = carols.stdin.take().expect("stdin");
    let mut carol_out = BufReader::new(carols.stdout.take().expect("stdout")).lines();
    read_until(&mut carol_out, "alice: hello").await;
    assert_eq!(
        alice.ok(&["kick", &ids, "carol"]).await,
        format!("Removed carol from chat {id}.\n")
    );
    let ended = tokio::time::timeout(Duration::from_secs(20), carols.wait_with_output())
        .await
        .expect("carol's connect ends")
        .expect("output");
    assert!(!ended.status.success());
    // The error is the last line; before it only notices (who is online, typing).
    let stderr = String::from_utf8_lossy(&ended.stderr);
    let mut lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(
        lines.pop(),
        Some(format!("error: you are no longer a member of chat {id}").as_str()),
        "{stderr}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with('(') && l.ends_with(')')),
        "{stderr}"
    );
    read_until(&mut bob_notes, "(carol left the chat)").await;
    assert_one_line_error(
        &carol.run(&["send", &ids, "still here?"], "").await,
        &format!("chat {id} does not exist or you are not a member of it"),
    );
    drop(bob_stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), bobs.wait()).await;

    // Bob leaves; alice still owns the chat and sees one member.
    assert_eq!(
        bob.ok(&["leave", &ids]).await,
        format!("You left chat {id}.\n")
    );
    let members = alice.ok(&["members", &ids]).await;
    assert_eq!(members.lines().count(), 1, "{members}");

    // Carol comes back, writes, and deletes her account: her message stays, nameless.
    alice.ok(&["invite", &ids, "carol"]).await;
    carol.ok(&["send", &ids, "carol was here"]).await;
    carol.ok(&["delete_account", "carol-password"]).await;
    let mut history = Vec::new();
    for _ in 0..150 {
        history = unstamped(&alice.ok(&["history", &ids, "10"]).await);
        if history.iter().any(|l| l.starts_with("(deleted user)")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        history,
        ["alice: hello", "(deleted user): carol was here"],
        "the deletion is applied within a poll"
    );
    let members = alice.ok(&["members", &ids]).await;
    assert_eq!(members.lines().count(), 1, "{members}");
}

async fn registered_three(alice: &User, bob: &User, carol: &User) {
    registered_pair(alice, bob).await;
    carol
        .ok(&["register", "carol@example.com", "carol", "carol-password"])
        .await;
    carol
        .ok(&["login", "carol@example.com", "carol-password"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_kick_leave_and_a_deleted_account() {
    let stack = Stack::new().await;
    let (alice, bob, carol) = (stack.user(), stack.user(), stack.user());
    registered_three(&alice, &bob, &carol).await;
    membership_walkthrough(&alice, &bob, &carol).await;
}

/// The same on the embedded server (SQLite, in-process events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_invites_kicks_and_forgets_deleted_accounts() {
    let server = Embedded::start().await;
    let (alice, bob, carol) = (server.user(), server.user(), server.user());
    registered_three(&alice, &bob, &carol).await;
    membership_walkthrough(&alice, &bob, &carol).await;
}

/// Link previews: `connect` shows a message's preview on the line under it (live, or from
/// history), and `history` does too. The page is a local HTTPS site the chat service is
/// pointed at (its name pinned to loopback, its CA trusted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_history_show_a_links_preview() {
    use link_preview::test_site::{og_page, Reply, TestSite};

    let site = TestSite::start("preview.test").await;
    site.route(
        "/post",
        Reply::Html(og_page("Rust 2027", "What is new", "The Blog")),
    );
    let auth = spawn_auth().await;
    let db = TestDb::new().await;
    let nats = TestNats::new();
    let mut config = chat_config(&auth, &db.url, &nats);
    config.settings.link_previews = Some(chat_service::preview::PreviewConfig {
        settings: site.settings(),
        concurrency: 4,
    });
    let stack = Stack {
        chat: spawn_chat(config).await,
        auth,
        _db: db,
        _nats: nats,
    };
    let (alice, bob) = (stack.user(), stack.user());
    registered_pair(&alice, &bob).await;
    let id = chat_id(&alice.ok(&["create_chat", "bob"]).await).to_string();
    let url = site.url("/post");

    let mut child: Child = bob.command(&["connect", &id]).spawn().expect("spawn chat");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    alice.ok(&["send", &id, "look", &url]).await;
    let seen = read_until(&mut lines, "What is new").await;
    let want = [
        format!("alice: look {url}"),
        "  ↳ The Blog — Rust 2027: What is new".to_owned(),
    ];
    assert_eq!(unstamped(&seen.join("\n")), want);
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    assert_eq!(unstamped(&bob.ok(&["history", &id]).await), want);
}
