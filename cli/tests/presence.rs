//! Typing and presence in the `chat` binary's connect view, driven as a process: who is
//! online, who went offline and who is typing appear as notices on stderr, while the
//! message lines on stdout stay `[HH:MM] name: text`.

use std::{process::Stdio, time::Duration};

use chat_cli::session::SessionStore;
use chat_testkit::{chat_config, spawn_auth, spawn_chat, TestAuth, TestChat, TestDb, TestNats};
use grpc_chat_proto::chat::v1::{self as pb, chat_service_client::ChatServiceClient};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines},
    process::Command,
};
use tonic::transport::Channel;

struct Stack {
    auth: TestAuth,
    chat: TestChat,
    _db: TestDb,
    _nats: TestNats,
}

struct User {
    auth: String,
    chat: String,
    dir: tempfile::TempDir,
}

impl User {
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

    async fn ok(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(30), self.command(args).output())
            .await
            .expect("chat finished in time")
            .expect("chat output");
        assert!(out.status.success(), "chat {args:?} failed: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn access_token(&self) -> String {
        SessionStore::in_dir(self.dir.path().to_owned(), &self.auth)
            .load()
            .expect("session file")
            .expect("a session")
            .access_token
    }
}

/// Reads lines until one ends with `suffix`; returns them all.
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
async fn connect_shows_who_is_online_and_who_is_typing() {
    let auth = spawn_auth().await;
    let db = TestDb::new().await;
    let nats = TestNats::new();
    let chat = spawn_chat(chat_config(&auth, &db.url, &nats)).await;
    let stack = Stack {
        auth,
        chat,
        _db: db,
        _nats: nats,
    };
    online_and_typing(
        &format!("http://{}", stack.auth.addr),
        &format!("http://{}", stack.chat.addr),
        stack.chat.client.clone(),
    )
    .await;
}

/// The same on the all-in-one `chat-server` (SQLite, events in process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_shows_who_is_online_and_who_is_typing_on_the_embedded_server() {
    chat_testkit::init_logs();
    let data = tempfile::tempdir().expect("data dir");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut config = chat_server::Config::embedded(addr, data.path().to_owned()).expect("config");
    config.auth.bcrypt_cost = 4;
    let shutdown = chat_common::Shutdown::new();
    let server = chat_server::Server::build(config, shutdown.clone())
        .await
        .expect("build chat-server");
    tokio::spawn(server.run_until_stopped(shutdown.clone()));
    let url = format!("http://{addr}");
    let client = ChatServiceClient::new(chat_testkit::channel(addr).await);
    online_and_typing(&url, &url, client).await;
    shutdown.trigger();
}

async fn online_and_typing(auth: &str, chat: &str, client: ChatServiceClient<Channel>) {
    let user = || User {
        auth: auth.to_owned(),
        chat: chat.to_owned(),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let (alice, bob) = (user(), user());
    for (u, name) in [(&alice, "alice"), (&bob, "bob")] {
        let email = format!("{name}@example.com");
        let password = format!("{name}-password");
        u.ok(&["register", &email, name, &password]).await;
        u.ok(&["login", &email, &password]).await;
    }
    let created = alice.ok(&["create_chat", "bob"]).await;
    let id = created
        .trim()
        .strip_prefix("Chat created, ID: ")
        .expect("created")
        .to_owned();
    alice.ok(&["send", &id, "helo"]).await;

    // Alice is connected (she has seen the history) before bob connects.
    let mut alices = alice.command(&["connect", &id]).spawn().expect("spawn");
    let alice_in = alices.stdin.take().expect("stdin");
    let mut alice_out = BufReader::new(alices.stdout.take().expect("stdout")).lines();
    read_until(&mut alice_out, "alice: helo").await;

    let mut bobs = bob.command(&["connect", &id]).spawn().expect("spawn");
    let bob_in = bobs.stdin.take().expect("stdin");
    let mut bob_out = BufReader::new(bobs.stdout.take().expect("stdout")).lines();
    let mut bob_err = BufReader::new(bobs.stderr.take().expect("stderr")).lines();
    read_until(&mut bob_out, "alice: helo").await;
    read_until(&mut bob_err, "(online: alice, bob)").await;

    // Alice types (as her terminal's connect would tell the server).
    let typed = client
        .clone()
        .send_typing(chat_common::service_token::with_bearer(
            tonic::Request::new(pb::SendTypingRequest {
                chat_id: id.parse().expect("id"),
            }),
            &alice.access_token(),
        ))
        .await
        .expect("typing")
        .into_inner();
    assert!(typed.forwarded);
    read_until(&mut bob_err, "(alice is typing…)").await;

    // She sends and leaves: bob sees the message line as ever, then her going offline.
    alice.ok(&["send", &id, "bye"]).await;
    let seen = read_until(&mut bob_out, "alice: bye").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with('[') && seen[0].ends_with("] alice: bye"),
        "{seen:?}"
    );
    drop(alice_in);
    let _ = tokio::time::timeout(Duration::from_secs(10), alices.wait()).await;
    read_until(&mut bob_err, "(alice went offline)").await;

    drop(bob_in);
    let _ = tokio::time::timeout(Duration::from_secs(10), bobs.wait()).await;
    // Nothing but message lines on stdout.
    while let Ok(Some(line)) = bob_out.next_line().await {
        assert!(
            line.starts_with('['),
            "not a message line on stdout: {line:?}"
        );
    }
}
