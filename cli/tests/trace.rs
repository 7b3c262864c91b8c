//! `chat --trace`: the user's command starts the trace and the server's work joins it.
//!
//! The embedded server runs in this test process with the process's telemetry exporting
//! to an OTLP receiver here too (this file is its own test binary, so that telemetry is
//! its alone); the `chat` binary exports its command's span to the same receiver.

use std::{process::Stdio, time::Duration};

use chat_testkit::otlp::{render_tree, TraceReceiver};
use tokio::process::Command;

/// Runs `chat <args>` against `url` with its session in `dir`; returns stdout and stderr.
async fn chat(url: &str, dir: &std::path::Path, otlp: &str, args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["--server", url])
        .args(args)
        .env("CHAT_CONFIG_DIR", dir)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env_remove("CHAT_SERVER")
        .env_remove("CHAT_AUTH_SERVER")
        .env_remove("CHAT_SAGA_SERVER")
        .env_remove("CHAT_TRACE")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("chat finished in time")
        .expect("chat output");
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    );
    assert!(out.status.success(), "chat {args:?}: {stdout}{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_command_is_the_root_of_the_servers_trace() {
    let receiver = TraceReceiver::start().await;
    let otlp = receiver.endpoint();
    std::mem::forget(
        chat_common::telemetry::init_with("chat-server", Some(&otlp), "warn").expect("telemetry"),
    );
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
    tokio::spawn(server.run_until_stopped(shutdown.clone()));

    let (alice, bob) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let alice = alice.path();
    chat(
        &url,
        alice,
        &otlp,
        &["register", "alice@example.com", "alice", "alice-password"],
    )
    .await;
    chat(
        &url,
        bob.path(),
        &otlp,
        &["register", "bob@example.com", "bob", "bob-password"],
    )
    .await;
    chat(
        &url,
        alice,
        &otlp,
        &["login", "alice@example.com", "alice-password"],
    )
    .await;
    let (created, _) = chat(&url, alice, &otlp, &["create_chat", "bob"]).await;
    let chat_id = created.trim().rsplit(' ').next().expect("an id").to_owned();

    let (_, stderr) = chat(
        &url,
        alice,
        &otlp,
        &["--trace", "send_message", &chat_id, "alice", "trace me"],
    )
    .await;
    let trace_id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("trace id: "))
        .unwrap_or_else(|| panic!("the trace id is printed: {stderr:?}"))
        .to_owned();

    let spans = receiver
        .wait_for_trace(&trace_id, Duration::from_secs(30), |spans| {
            spans.iter().any(|s| s.name == "chat send_message")
                && spans.iter().any(|s| {
                    s.name == "grpcchat.saga.v1.SagaOrchestrator/SendMessage" && s.kind == "server"
                })
        })
        .await;
    let tree = render_tree(&spans);
    eprintln!("{tree}");
    let root = spans
        .iter()
        .find(|s| s.name == "chat send_message")
        .unwrap_or_else(|| panic!("the command's span is exported:\n{tree}"));
    assert_eq!(root.service, "chat");
    assert_eq!(root.kind, "client");
    assert_eq!(root.parent_span_id, "", "the command is the trace's root");
    let saga = spans
        .iter()
        .find(|s| s.name == "grpcchat.saga.v1.SagaOrchestrator/SendMessage" && s.kind == "server")
        .unwrap_or_else(|| panic!("the server joined the command's trace:\n{tree}"));
    assert_eq!(saga.parent_span_id, root.span_id, "{tree}");
    assert_eq!(saga.service, "chat-server");
    shutdown.trigger();
}
