//! `chat-bench`: drives real services with real load and prints what they sustain.
//!
//! It starts its own AuthService and two ChatService replicas in this process, on the local
//! PostgreSQL and NATS (a fresh database and subject space per run, as the tests do), and
//! runs each scenario for a fixed time. Every figure comes with the command that produced
//! it; a scenario that sees any error exits non-zero, so a failing system cannot report a
//! figure. The client shares the machine with the servers: figures are for the whole
//! system on this machine, not for the server alone.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use chat_testkit::{
    chat_config, spawn_auth, spawn_chat, TestAuth, TestChat, TestDb, TestNats, TestUser,
};
use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};

#[derive(Parser)]
#[command(about = "Load generator for grpc-chat")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// How long each scenario runs, in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    duration: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 16, global = true)]
    concurrency: usize,
    /// Chats the senders spread over.
    #[arg(long, default_value_t = 16, global = true)]
    chats: usize,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// N concurrent senders into M chats: messages stored per second and send latency.
    Send,
    /// Streams on replica B, sends to replica A: time from SendMessage to arrival on B.
    CrossReplica,
    /// Concurrent logins at bcrypt cost 12 (the default): logins per second and latency.
    Login,
    /// Every scenario.
    All,
}

struct Setup {
    _auth: TestAuth,
    _db: TestDb,
    _nats: TestNats,
    a: TestChat,
    b: TestChat,
    users: Vec<TestUser>,
}

async fn setup(senders: usize) -> anyhow::Result<Setup> {
    let auth = spawn_auth().await;
    let db = TestDb::new().await;
    let nats = TestNats::new();
    let mut config = chat_config(&auth, &db.url, &nats);
    config.database_max_connections = 32;
    let a = spawn_chat(config.clone()).await;
    let b = spawn_chat(config).await;
    let mut users = Vec::new();
    for i in 0..senders.max(1) {
        users.push(auth.user(&format!("bench{i}")).await);
    }
    Ok(Setup {
        _auth: auth,
        _db: db,
        _nats: nats,
        a,
        b,
        users,
    })
}

async fn create_chat(
    chat: &TestChat,
    owner: &TestUser,
    members: &[TestUser],
) -> anyhow::Result<i64> {
    Ok(chat
        .client
        .clone()
        .create_chat(owner.req(pb::CreateChatRequest {
            title: "bench".into(),
            members: members.iter().map(|m| m.username.clone()).collect(),
        }))
        .await?
        .into_inner()
        .chat
        .context("no chat")?
        .id)
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({ "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0 })
}

/// N senders, each sending to chat `i % M` back to back for `duration`.
async fn send_scenario(s: &Setup, cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let owner = &s.users[0];
    let mut chats = Vec::new();
    for _ in 0..cli.chats.max(1) {
        chats.push(create_chat(&s.a, owner, &s.users[1..]).await?);
    }
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..cli.concurrency {
        let user = s.users[i % s.users.len()].clone();
        let chat_id = chats[i % chats.len()];
        let client = if i % 2 == 0 {
            s.a.client.clone()
        } else {
            s.b.client.clone()
        };
        let (hist, errors, sent, stop) = (hist.clone(), errors.clone(), sent.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let res = client
                    .clone()
                    .send_message(user.req(pb::SendMessageRequest {
                        chat_id,
                        text: format!("load message {n} from {}", user.username),
                        ..Default::default()
                    }))
                    .await;
                match res {
                    Ok(_) => {
                        let _ = local.record(start.elapsed().as_micros() as u64);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("send failed: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            let _ = hist.lock().await.add(&local);
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(cli.duration)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if errors.load(Ordering::Relaxed) > 0 {
        bail!("{} sends failed", errors.load(Ordering::Relaxed));
    }
    let count = sent.load(Ordering::Relaxed);
    let h = hist.lock().await;
    let mut out = serde_json::json!({
        "scenario": "send",
        "concurrency": cli.concurrency,
        "chats": cli.chats,
        "messages": count,
        "messages_per_sec": (count as f64 / elapsed).round(),
    });
    if let (Some(o), serde_json::Value::Object(p)) = (out.as_object_mut(), percentiles(&h)) {
        o.extend(p);
    }
    Ok(out)
}

/// One sender on A, one stream on B: the time from the start of SendMessage to the
/// message's arrival on B's stream, one message in flight at a time.
async fn cross_replica_scenario(s: &Setup, cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let (alice, bob) = (&s.users[0], s.users.get(1).unwrap_or(&s.users[0]));
    let chat_id = create_chat(&s.a, alice, std::slice::from_ref(bob)).await?;
    let mut stream =
        s.b.client
            .clone()
            .connect(bob.req(pb::ConnectRequest {
                chat_id,
                ..Default::default()
            }))
            .await?
            .into_inner();
    // Wait for the end of (empty) history: from here on everything is live.
    loop {
        match stream.message().await?.context("stream ended")?.event {
            Some(Event::HistoryEnd(_)) => break,
            _ => continue,
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let deadline = Instant::now() + Duration::from_secs(cli.duration);
    let mut client = s.a.client.clone();
    while Instant::now() < deadline {
        let start = Instant::now();
        let sent = client
            .send_message(alice.req(pb::SendMessageRequest {
                chat_id,
                text: "ping".into(),
                ..Default::default()
            }))
            .await?
            .into_inner()
            .message
            .context("no message")?;
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .context("message did not arrive on replica B within 10 s")??
                .context("stream ended")?;
            if let Some(Event::Message(m)) = item.event {
                if m.seq == sent.seq {
                    break;
                }
            }
        }
        hist.record(start.elapsed().as_micros() as u64)?;
    }
    let mut out = serde_json::json!({ "scenario": "cross-replica", "messages": hist.len() });
    if let (Some(o), serde_json::Value::Object(p)) = (out.as_object_mut(), percentiles(&hist)) {
        o.extend(p);
    }
    Ok(out)
}

/// `concurrency` clients logging in back to back against an auth service with the
/// production bcrypt cost; bcrypt runs on the blocking pool, so this measures how many
/// hashes the machine's cores sustain through the whole gRPC path.
async fn login_scenario(cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let auth = chat_testkit::spawn_auth_with(auth_service::Settings {
        bcrypt_cost: 12,
        ..chat_testkit::auth_settings()
    })
    .await;
    let user = auth.user("login-bench").await;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..cli.concurrency {
        let (hist, errors, stop) = (hist.clone(), errors.clone(), stop.clone());
        let mut client = auth.client.clone();
        let (email, password) = (user.email.clone(), user.password.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let res = client
                    .login(grpc_chat_proto::auth::v1::LoginRequest {
                        email: email.clone(),
                        password: password.clone(),
                    })
                    .await;
                match res {
                    Ok(_) => {
                        let _ = local.record(start.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        eprintln!("login failed: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = hist.lock().await.add(&local);
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(cli.duration)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    if errors.load(Ordering::Relaxed) > 0 {
        bail!("{} logins failed", errors.load(Ordering::Relaxed));
    }
    let h = hist.lock().await;
    let mut out = serde_json::json!({
        "scenario": "login",
        "concurrency": cli.concurrency,
        "messages": h.len(),
        "messages_per_sec": (h.len() as f64 / started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "bcrypt_cost": 12,
    });
    if let (Some(o), serde_json::Value::Object(p)) = (out.as_object_mut(), percentiles(&h)) {
        o.extend(p);
    }
    Ok(out)
}

fn print_row(v: &serde_json::Value) {
    let get = |k: &str| {
        v.get(k)
            .map(|x| x.to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<14} {:>10} {:>12} {:>9} {:>9} {:>9}",
        get("scenario").trim_matches('"'),
        get("messages"),
        get("messages_per_sec"),
        get("p50_ms"),
        get("p99_ms"),
        get("p999_ms"),
    );
    println!("{v}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let setup = setup(cli.concurrency.clamp(2, 64)).await?;
    println!(
        "{:<14} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "scenario", "messages", "msg/s", "p50 ms", "p99 ms", "p99.9 ms"
    );
    if matches!(cli.scenario, Scenario::Send | Scenario::All) {
        print_row(&send_scenario(&setup, &cli).await?);
    }
    if matches!(cli.scenario, Scenario::CrossReplica | Scenario::All) {
        print_row(&cross_replica_scenario(&setup, &cli).await?);
    }
    if matches!(cli.scenario, Scenario::Login | Scenario::All) {
        print_row(&login_scenario(&cli).await?);
    }
    Ok(())
}
