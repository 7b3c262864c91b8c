//! The scenarios: each drives a [`System`] for a fixed time and returns its [`Row`], or an
//! error when the system failed any request (a run that saw an error reports no figure).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tonic::{transport::Channel, Streaming};

use grpc_chat_proto::{
    auth::v1::{self as authpb, auth_service_client::AuthServiceClient},
    chat::v1::{self as chatpb, chat_service_client::ChatServiceClient, connect_response::Event},
    saga::v1::{self as sagapb, saga_orchestrator_client::SagaOrchestratorClient},
};

use crate::{
    client::{self, channel, channels, create_chat, histogram, text_of_size, User},
    report::Row,
    system::{self, System},
};

/// What every scenario is told.
#[derive(Debug, Clone)]
pub struct Opts {
    pub duration: Duration,
    pub concurrency: usize,
    pub chats: usize,
    pub message_size: usize,
    /// Senders writing into `fanout`'s chat at once.
    pub fanout_senders: usize,
}

/// Members of every chat `send`, `busy-chat` and `saga` write into (the same users in
/// each): every message owes an email to the 7 others. Enough to be realistic, few enough
/// that registering them at bcrypt cost 12 takes seconds, not minutes.
pub const CHAT_MEMBERS: usize = 8;

/// Channels per endpoint for unary load: a few HTTP/2 connections, as several clients
/// would open.
const LOAD_CHANNELS: usize = 4;

/// The outcome of a closed-loop run.
struct Load {
    hist: Histogram<u64>,
    count: u64,
    elapsed: Duration,
}

/// Runs `concurrency` workers for `duration`, each calling its operation back to back
/// (worker `i` gets `make(i)`), and records every call's latency. Fails when any call
/// failed, after printing the first few errors.
async fn closed_loop<F, Fut>(
    what: &str,
    concurrency: usize,
    duration: Duration,
    make: impl Fn(usize) -> F,
) -> anyhow::Result<Load>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let mut op = make(i);
        let errors = errors.clone();
        let what = what.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match op(n).await {
                    Ok(()) => h.record(t.elapsed().as_micros() as u64)?,
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("{what} failed: {e:#}");
                        }
                    }
                }
                n += 1;
            }
            anyhow::Ok(h)
        }));
    }
    let mut hist = histogram()?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let elapsed = started.elapsed();
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("{errors} of {} {what} calls failed", hist.len() + errors);
    }
    Ok(Load {
        count: hist.len(),
        hist,
        elapsed,
    })
}

/// Users and chats for unary load on `systems` (all replicas of one system).
async fn chats_for_load(systems: &[System], opts: &Opts) -> anyhow::Result<(Vec<User>, Vec<i64>)> {
    let first = systems.first().context("no system to drive")?;
    let users = client::users(&first.auth, "s", CHAT_MEMBERS).await?;
    let mut chat = ChatServiceClient::new(channel(&first.chat).await?);
    let mut chats = Vec::new();
    for _ in 0..opts.chats.max(1) {
        chats.push(create_chat(&mut chat, &users[0], &users).await?);
    }
    Ok((users, chats))
}

/// [`LOAD_CHANNELS`] channels to every replica in `systems`, at the endpoint `url_of`
/// picks: worker `i` of a closed loop takes channel `i % len`, so the load spreads over
/// every replica.
async fn load_channels(
    systems: &[System],
    url_of: impl Fn(&System) -> &str,
) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for s in systems {
        out.extend(channels(url_of(s), LOAD_CHANNELS).await?);
    }
    if out.is_empty() {
        bail!("no system to drive");
    }
    Ok(out)
}

/// `send`: N senders into M chats through ChatService.SendMessage, spread over every
/// replica in `systems`: messages stored per second and send latency.
pub async fn send(name: &str, systems: &[System], opts: &Opts) -> anyhow::Result<Row> {
    let (users, chats) = chats_for_load(systems, opts).await?;
    let clients: Vec<_> = load_channels(systems, |s| &s.chat)
        .await?
        .into_iter()
        .map(ChatServiceClient::new)
        .collect();
    let size = opts.message_size;
    let cpu_start = system::cpu_sample(systems);
    let load = closed_loop("SendMessage", opts.concurrency, opts.duration, |i| {
        let client = clients[i % clients.len()].clone();
        let user = users[i % users.len()].clone();
        let chat_id = chats[i % chats.len()];
        move |n| {
            let mut client = client.clone();
            let req = user.req(chatpb::SendMessageRequest {
                chat_id,
                text: text_of_size(&format!("send {i} {n} "), size),
                ..Default::default()
            });
            async move {
                client.send_message(req).await?;
                Ok(())
            }
        }
    })
    .await?;
    Ok(Row::new(name, "msg", load.count)
        .cpu_from(cpu_start)
        .loaded_for(load.elapsed)
        .latencies(&load.hist)
        .extra("concurrency", opts.concurrency)
        .extra("chats", chats.len())
        .extra("members", users.len())
        .extra("replicas", systems.len())
        .extra("message_bytes", size)
        .note(format!(
            "{} senders, {} chats of {} members; {}",
            opts.concurrency,
            chats.len(),
            users.len(),
            label(systems)
        )))
}

fn label(systems: &[System]) -> String {
    match systems {
        [one] => one.label.clone(),
        many => format!("{} replicas: {}", many.len(), many[0].label),
    }
}

/// `saga`: the same load through SagaOrchestrator.SendMessage (user → message →
/// notification, with the server's stub email sender), spread over every replica in
/// `systems`; every saga must complete.
pub async fn saga(systems: &[System], opts: &Opts) -> anyhow::Result<Row> {
    let (users, chats) = chats_for_load(systems, opts).await?;
    let clients: Vec<_> = load_channels(systems, |s| &s.saga)
        .await?
        .into_iter()
        .map(SagaOrchestratorClient::new)
        .collect();
    let size = opts.message_size;
    let cpu_start = system::cpu_sample(systems);
    let load = closed_loop("saga SendMessage", opts.concurrency, opts.duration, |i| {
        let client = clients[i % clients.len()].clone();
        let user = users[i % users.len()].clone();
        let chat_id = chats[i % chats.len()];
        move |n| {
            let mut client = client.clone();
            let req = user.req(sagapb::SendMessageRequest {
                chat_id,
                from: user.username.clone(),
                text: text_of_size(&format!("saga {i} {n} "), size),
                idempotency_key: String::new(),
            });
            async move {
                let saga = client
                    .send_message(req)
                    .await?
                    .into_inner()
                    .saga
                    .context("no saga in the answer")?;
                if saga.state != sagapb::SagaState::Completed as i32 {
                    bail!(
                        "saga {} ended in state {} ({})",
                        saga.id,
                        saga.state,
                        saga.error
                    );
                }
                Ok(())
            }
        }
    })
    .await?;
    Ok(Row::new("saga", "saga", load.count)
        .cpu_from(cpu_start)
        .loaded_for(load.elapsed)
        .latencies(&load.hist)
        .extra("concurrency", opts.concurrency)
        .extra("chats", opts.chats)
        .extra("replicas", systems.len())
        .note(format!("{}, stub email sender", label(systems))))
}

/// Opens a Connect stream and reads it up to the end of history: from there on every
/// event is live. Returns the stream and how many messages the history held.
async fn open_stream(
    client: &mut ChatServiceClient<Channel>,
    user: &User,
    chat_id: i64,
) -> anyhow::Result<(Streaming<chatpb::ConnectResponse>, usize)> {
    let mut stream = client
        .connect(user.req(chatpb::ConnectRequest {
            chat_id,
            ..Default::default()
        }))
        .await
        .context("Connect")?
        .into_inner();
    let mut history = 0;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .context("no end of history within 60 s")?
            .context("stream failed before the end of history")?
            .context("stream ended before the end of history")?;
        match item.event {
            Some(Event::HistoryEnd(_)) => return Ok((stream, history)),
            Some(Event::Message(_)) => history += 1,
            _ => {}
        }
    }
}

/// Messages in the chat `history` opens its streams on.
pub const HISTORY_MESSAGES: usize = 20;

/// `history`: `concurrency` clients each opening a Connect stream on a chat of
/// [`HISTORY_MESSAGES`] messages and reading it to the end of history, then closing it
/// and opening the next, spread over every replica: streams opened per second and the
/// time from Connect to HistoryEnd. Every history must hold every message.
pub async fn history(systems: &[System], opts: &Opts) -> anyhow::Result<Row> {
    let first = systems.first().context("no system to drive")?;
    let users = client::users(&first.auth, "h", 2).await?;
    let mut chat = ChatServiceClient::new(channel(&first.chat).await?);
    let chat_id = create_chat(&mut chat, &users[0], &users).await?;
    for n in 0..HISTORY_MESSAGES {
        chat.send_message(users[n % users.len()].req(chatpb::SendMessageRequest {
            chat_id,
            text: text_of_size(&format!("history {n} "), opts.message_size),
            ..Default::default()
        }))
        .await
        .context("SendMessage")?;
    }
    let clients: Vec<_> = load_channels(systems, |s| &s.chat)
        .await?
        .into_iter()
        .map(ChatServiceClient::new)
        .collect();
    let load = closed_loop("Connect", opts.concurrency, opts.duration, |i| {
        let client = clients[i % clients.len()].clone();
        let user = users[i % users.len()].clone();
        move |_| {
            let (mut client, user) = (client.clone(), user.clone());
            async move {
                let (_, history) = open_stream(&mut client, &user, chat_id).await?;
                if history != HISTORY_MESSAGES {
                    bail!("a history held {history} of {HISTORY_MESSAGES} messages");
                }
                Ok(())
            }
        }
    })
    .await?;
    Ok(Row::new("history", "stream", load.count)
        .loaded_for(load.elapsed)
        .latencies(&load.hist)
        .extra("concurrency", opts.concurrency)
        .extra("history_messages", HISTORY_MESSAGES)
        .extra("replicas", systems.len())
        .note(format!(
            "Connect to HistoryEnd on a chat of {HISTORY_MESSAGES} messages, {} at a time; {}",
            opts.concurrency,
            label(systems)
        )))
}

/// `s` streams on `chat_id`, over `s / STREAMS_PER_CHANNEL` channels, as `users` in turn,
/// opened `in_flight` at a time. Returns the streams with their channel index, and the
/// time it took.
async fn open_streams(
    system: &System,
    users: &[User],
    chat_id: i64,
    s: usize,
) -> anyhow::Result<(Vec<(usize, Streaming<chatpb::ConnectResponse>)>, Duration)> {
    let n_channels = s.div_ceil(client::STREAMS_PER_CHANNEL).max(1);
    let chans = channels(&system.chat, n_channels).await?;
    let started = Instant::now();
    let streams: Vec<_> = futures::stream::iter(0..s)
        .map(|j| {
            let c = j % n_channels;
            let mut client = ChatServiceClient::new(chans[c].clone());
            let user = users[j % users.len()].clone();
            async move {
                let (stream, _) = open_stream(&mut client, &user, chat_id)
                    .await
                    .with_context(|| format!("opening stream {j}"))?;
                anyhow::Ok((c, stream))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    Ok((streams, started.elapsed()))
}

/// Aborts the tasks when dropped (so an early return closes every stream).
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// `fanout`: `s` streams on one chat and `opts.fanout_senders` senders writing into it
/// back to back, as the members of a busy chat do. Every message carries the time its
/// send began; each stream checks that messages arrive in seq order (none twice) and the
/// run ends when every stream has every message: send-start→arrival per stream, and
/// deliveries per second from the first send until the last arrival. With one sender a
/// message is in flight at a time and the figure is bound by one send's latency.
pub async fn fanout(system: &System, s: usize, opts: &Opts) -> anyhow::Result<Row> {
    let users = client::users(&system.auth, "f", 4).await?;
    let mut creator = ChatServiceClient::new(channel(&system.chat).await?);
    let chat_id = create_chat(&mut creator, &users[0], &users).await?;
    let (streams, opened_in) = open_streams(system, &users[1..], chat_id, s).await?;
    let n_channels = s.div_ceil(client::STREAMS_PER_CHANNEL).max(1);
    let senders = opts.fanout_senders.max(1);

    let t0 = Instant::now();
    let arrived = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut hists = Vec::new();
    for _ in 0..n_channels {
        hists.push(Arc::new(std::sync::Mutex::new(histogram()?)));
    }
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut readers = Tasks(Vec::with_capacity(s));
    for (c, stream) in streams {
        readers.0.push(tokio::spawn(read_fanout(
            stream,
            t0,
            hists[c].clone(),
            arrived.clone(),
            progress.clone(),
            err_tx.clone(),
        )));
    }
    drop(err_tx);

    let started = Instant::now();
    let load = closed_loop("fanout SendMessage", senders, opts.duration, |_| {
        let client = creator.clone();
        let user = users[0].clone();
        let size = opts.message_size;
        move |_| {
            let sent_us = t0.elapsed().as_micros() as u64;
            let req = user.req(chatpb::SendMessageRequest {
                chat_id,
                text: text_of_size(&format!("fanout {sent_us} "), size),
                ..Default::default()
            });
            let mut client = client.clone();
            async move {
                client.send_message(req).await.context("SendMessage")?;
                Ok(())
            }
        }
    })
    .await?;
    let messages = load.count;
    let want = messages * s as u64;
    let wait_until = Instant::now() + Duration::from_secs(30);
    while arrived.load(Ordering::Acquire) < want {
        tokio::select! {
            _ = progress.notified() => {}
            e = err_rx.recv() => bail!("{}", e.unwrap_or_else(|| "every stream ended".into())),
            _ = tokio::time::sleep_until(wait_until.into()) => bail!(
                "{} of {want} deliveries ({messages} messages to {s} streams) arrived within 30 s of the last send",
                arrived.load(Ordering::Relaxed)
            ),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let elapsed = started.elapsed();
    drop(readers);
    // A stream that got a message twice or one of another chat would have failed above;
    // one more than expected would show here.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Ok(e) = err_rx.try_recv() {
        bail!("{e}");
    }
    let mut hist = histogram()?;
    for h in &hists {
        if let Ok(h) = h.lock() {
            hist.add(&*h)?;
        }
    }
    let deliveries = hist.len();
    if deliveries != want {
        bail!("{deliveries} deliveries recorded for {messages} messages to {s} streams");
    }
    Ok(Row::new(format!("fanout/{s}"), "delivery", deliveries)
        .rate(deliveries as f64 / elapsed.as_secs_f64())
        .latencies(&hist)
        .extra("streams", s)
        .extra("messages", messages)
        .extra("senders", senders)
        .extra("channels", n_channels)
        .extra(
            "send_p99_ms",
            load.hist.value_at_quantile(0.99) as f64 / 1000.0,
        )
        .extra("open_secs", opened_in.as_secs_f64())
        .note(format!(
            "{messages} msgs from {senders} senders (send p99 {:.1} ms); {s} streams opened at {:.0}/s",
            load.hist.value_at_quantile(0.99) as f64 / 1000.0,
            s as f64 / opened_in.as_secs_f64()
        )))
}

/// One stream of `fanout`: records send-start→arrival of every message, and fails (through
/// `errors`) when a message arrives out of seq order or twice, or the stream ends.
async fn read_fanout(
    mut stream: Streaming<chatpb::ConnectResponse>,
    t0: Instant,
    hist: Arc<std::sync::Mutex<Histogram<u64>>>,
    arrived: Arc<AtomicU64>,
    progress: Arc<tokio::sync::Notify>,
    errors: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut last_seq = 0;
    loop {
        let m = match stream.message().await {
            Ok(Some(chatpb::ConnectResponse {
                event: Some(Event::Message(m)),
            })) => m,
            Ok(Some(_)) => continue,
            Ok(None) => {
                let _ = errors.send("a stream ended".into());
                return;
            }
            Err(e) => {
                let _ = errors.send(format!("a stream failed: {e}"));
                return;
            }
        };
        let now = t0.elapsed().as_micros() as u64;
        let sent = m.text.split(' ').nth(1).and_then(|k| k.parse::<u64>().ok());
        let Some(sent) = sent.filter(|_| m.seq > last_seq) else {
            let _ = errors.send(format!(
                "a stream got seq {} after seq {last_seq}: {:?}",
                m.seq,
                m.text.get(..24)
            ));
            return;
        };
        last_seq = m.seq;
        if let Ok(mut h) = hist.lock() {
            let _ = h.record(now.saturating_sub(sent).max(1));
        }
        arrived.fetch_add(1, Ordering::AcqRel);
        progress.notify_one();
    }
}

/// Resident memory of `pid` in KiB, from `/proc/<pid>/status`.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// Target for idle streams (issue 7).
pub const STREAM_KIB_TARGET: f64 = 10.0;

/// `streams`: `s` idle streams on one chat: the server's resident memory before and after,
/// and per stream.
pub async fn streams(system: &System, s: usize) -> anyhow::Result<Row> {
    let users = client::users(&system.auth, "i", 4).await?;
    let mut chat = ChatServiceClient::new(channel(&system.chat).await?);
    let chat_id = create_chat(&mut chat, &users[0], &users).await?;
    // Warm the server's allocator and caches on a few streams first, so "before" is a
    // running server and not a fresh one.
    drop(open_streams(system, &users, chat_id, 10).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = system.pid.map(vm_rss_kib).transpose()?;
    let (opened, opened_in) = open_streams(system, &users, chat_id, s).await?;
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stopping = Arc::new(AtomicBool::new(false));
    let mut holders = Tasks(Vec::with_capacity(s));
    for (_, mut stream) in opened {
        let (err_tx, stopping) = (err_tx.clone(), stopping.clone());
        holders.0.push(tokio::spawn(async move {
            let item = stream.message().await;
            if !stopping.load(Ordering::Relaxed) {
                let _ = err_tx.send(match item {
                    Ok(Some(_)) => "an idle stream got an event".into(),
                    Ok(None) => "an idle stream ended".into(),
                    Err(e) => format!("an idle stream failed: {e}"),
                });
            }
        }));
    }
    drop(err_tx);
    // Let the server settle (buffers, lazily allocated state) before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = system.pid.map(vm_rss_kib).transpose()?;
    if let Ok(e) = err_rx.try_recv() {
        bail!("{e}");
    }
    stopping.store(true, Ordering::Relaxed);
    drop(holders);
    let mut row = Row::new("streams", "stream", s as u64)
        .extra("open_secs", opened_in.as_secs_f64())
        .extra(
            "opened_per_sec",
            (s as f64 / opened_in.as_secs_f64()).round(),
        );
    match (before, after) {
        (Some(b), Some(a)) => {
            let per = a.saturating_sub(b) as f64 / s as f64;
            row = row
                .extra("rss_before_kib", b)
                .extra("rss_after_kib", a)
                .extra("kib_per_stream", (per * 100.0).round() / 100.0)
                .note(format!(
                    "RSS {:.0} → {:.0} MiB: {per:.1} KiB/stream; opened at {:.0}/s",
                    b as f64 / 1024.0,
                    a as f64 / 1024.0,
                    s as f64 / opened_in.as_secs_f64()
                ));
            row.limit = Some(format!("target {STREAM_KIB_TARGET:.0} KiB/stream"));
            row.ratio = Some(STREAM_KIB_TARGET / per.max(0.01));
        }
        _ => {
            row = row.note("no server pid: memory not read (give --server-pid)");
        }
    }
    Ok(row)
}

/// `cross-replica`: a stream on replica `b`, sends to replica `a`, one message in flight:
/// the time from the start of SendMessage to the message's arrival on `b`.
pub async fn cross_replica(a: &System, b: &System, opts: &Opts) -> anyhow::Result<Row> {
    let users = client::users(&a.auth, "x", 2).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let mut client = ChatServiceClient::new(channel(&a.chat).await?);
    let chat_id = create_chat(&mut client, alice, &users).await?;
    let mut on_b = ChatServiceClient::new(channel(&b.chat).await?);
    let (mut stream, _) = open_stream(&mut on_b, bob, chat_id).await?;
    let mut hist = histogram()?;
    let deadline = Instant::now() + opts.duration;
    let mut n = 0u64;
    while Instant::now() < deadline {
        let start = Instant::now();
        let sent = client
            .send_message(alice.req(chatpb::SendMessageRequest {
                chat_id,
                text: text_of_size(&format!("ping {n} "), opts.message_size),
                ..Default::default()
            }))
            .await
            .context("SendMessage on replica a")?
            .into_inner()
            .message
            .context("no message in the answer")?;
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .context("message did not arrive on replica b within 10 s")?
                .context("stream on replica b failed")?
                .context("stream on replica b ended")?;
            if let Some(Event::Message(m)) = item.event {
                if m.seq == sent.seq {
                    break;
                }
            }
        }
        hist.record(start.elapsed().as_micros() as u64)?;
        n += 1;
    }
    Ok(Row::new("cross-replica", "msg", hist.len())
        .latencies(&hist)
        .note(format!(
            "send on a, stream on b; {}",
            label(&[a.clone(), b.clone()])
        )))
}

/// `login`: `concurrency` clients logging in back to back at the server's bcrypt cost,
/// each as a user of its own, as many people log in (one account's logins take turns on a
/// replica, which would measure the turns rather than bcrypt).
pub async fn login(system: &System, opts: &Opts) -> anyhow::Result<Row> {
    let users = client::users(&system.auth, "l", opts.concurrency).await?;
    let ch = channel(&system.auth).await?;
    let load = closed_loop("Login", opts.concurrency, opts.duration, |i| {
        let client = AuthServiceClient::new(ch.clone());
        let user = &users[i % users.len()];
        let req = authpb::LoginRequest {
            email: user.email.clone(),
            password: user.password.clone(),
        };
        move |_| {
            let mut client = client.clone();
            let req = req.clone();
            async move {
                client.login(req).await?;
                Ok(())
            }
        }
    })
    .await?;
    Ok(Row::new("login", "login", load.count)
        .rate(load.count as f64 / load.elapsed.as_secs_f64())
        .latencies(&load.hist)
        .extra("concurrency", opts.concurrency)
        .extra("bcrypt_cost", system.bcrypt_cost)
        .note(format!("bcrypt cost {}", system.bcrypt_cost)))
}

/// The address the legitimate client of `guess` connects from: another loopback address
/// than the attacker's 127.0.0.1, so per-address limits tell them apart as they would two
/// hosts.
const LEGIT_ADDRESS: &str = "127.0.0.2";

/// `guess`: `concurrency` attackers send wrong-password logins back to back from one
/// address, at one account (or, with `spray`, each at a different unknown email), while one
/// legitimate user logs in back to back from another address. Counts the guesses the server
/// answered (checked: UNAUTHENTICATED) and refused (RESOURCE_EXHAUSTED), and the legitimate
/// login's latency during the attack, beside its latency alone. Fails on any other answer,
/// and when the legitimate login is refused.
pub async fn guess(system: &System, opts: &Opts, spray: bool) -> anyhow::Result<Row> {
    let mut users = client::users(&system.auth, "g", 2).await?;
    let (victim, legit) = match (users.pop(), users.pop()) {
        (Some(v), Some(l)) => (v, l),
        _ => bail!("no users"),
    };
    let legit_ch = client::channel_from(&system.auth, LEGIT_ADDRESS).await?;
    let legit_login = move || {
        let client = AuthServiceClient::new(legit_ch.clone());
        let req = authpb::LoginRequest {
            email: legit.email.clone(),
            password: legit.password.clone(),
        };
        move |_| {
            let mut client = client.clone();
            let req = req.clone();
            async move {
                client.login(req).await.context("legitimate Login")?;
                Ok(())
            }
        }
    };
    // The legitimate login alone first: what the attack is compared with.
    let quiet = closed_loop(
        "Login",
        1,
        opts.duration.min(Duration::from_secs(3)),
        |_| legit_login(),
    )
    .await?;

    let ch = channel(&system.auth).await?;
    let checked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for i in 0..opts.concurrency.max(1) {
        let mut client = AuthServiceClient::new(ch.clone());
        let (checked, refused, other, stop) = (
            checked.clone(),
            refused.clone(),
            other.clone(),
            stop.clone(),
        );
        let victim = victim.email.clone();
        attackers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let email = if spray {
                    format!("spray{i}-{n}@guess.example.com")
                } else {
                    victim.clone()
                };
                let req = authpb::LoginRequest {
                    email,
                    password: format!("guess-{i}-{n}"),
                };
                match client.login(req).await {
                    Err(s) if s.code() == tonic::Code::Unauthenticated => &checked,
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => &refused,
                    Err(s) => {
                        if other.load(Ordering::Relaxed) < 5 {
                            eprintln!("guess: unexpected answer: {s:?}");
                        }
                        &other
                    }
                    Ok(_) => &other,
                }
                .fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    let during = closed_loop("Login", 1, opts.duration, |_| legit_login()).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for a in attackers {
        a.await?;
    }
    let during = during?;
    let other = other.load(Ordering::Relaxed);
    if other > 0 {
        bail!("{other} guesses were answered neither UNAUTHENTICATED nor RESOURCE_EXHAUSTED");
    }
    let (checked, refused) = (
        checked.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let secs = elapsed.as_secs_f64();
    let quiet_p50 = quiet.hist.value_at_quantile(0.5) as f64 / 1000.0;
    let name = if spray { "guess-spray" } else { "guess" };
    Ok(Row::new(name, "guess", checked)
        .rate(checked as f64 / secs)
        .latencies(&during.hist)
        .extra("refused", refused)
        .extra("refused_per_s", refused as f64 / secs)
        .extra("legit_logins", during.count)
        .extra("quiet_login_p50_ms", quiet_p50)
        .extra("concurrency", opts.concurrency)
        .extra("bcrypt_cost", system.bcrypt_cost)
        .note(format!(
            "{} attackers at {}; wrong passwords checked {checked}, refused {refused} ({:.0}/s); \
             latencies: a legitimate login from another address during the attack \
             ({} logins), alone p50 {quiet_p50:.0} ms; bcrypt cost {}",
            opts.concurrency,
            if spray {
                "a new email each"
            } else {
                "one account"
            },
            refused as f64 / secs,
            during.count,
            system.bcrypt_cost
        )))
}
