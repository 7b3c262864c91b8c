//! What this machine allows for the same work without the project in the way: the
//! storage engines' one-row commit rate, NATS delivery rate, round trip and fan-out at the
//! same message size, bcrypt hashes per second. Each returns a [`Row`] named `limit:...`.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use sqlx::{Connection, Executor, PgConnection};

use crate::{
    client::{histogram, run_id, text_of_size, STREAMS_PER_CHANNEL},
    per_message_sql,
    report::Row,
    scenarios::Opts,
    system::drop_databases,
};

/// `pgbench`: on PATH, else the newest under /usr/lib/postgresql/*/bin.
fn pgbench_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("pgbench");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin/pgbench"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .context("pgbench not found on PATH nor in /usr/lib/postgresql/*/bin")
}

/// One pgbench run: a scratch database, what to create in it, the script, and how to
/// talk to PostgreSQL.
struct Pgbench<'a> {
    /// The row's name: `limit:pgbench`, ...
    name: &'a str,
    /// SQL run (simple protocol, several statements each) on the scratch database before
    /// the run: tables, seed rows.
    setup: Vec<String>,
    /// The pgbench script (`-f`).
    script: String,
    /// `-M prepared` (as sqlx sends statements), else pgbench's simple protocol.
    prepared: bool,
    /// Clients (`-c`) and time (`-T`).
    load: &'a Opts,
    /// What the script does, for the note (the command line follows it).
    what: String,
}

impl Pgbench<'_> {
    /// The command line, as the note shows it.
    fn args(&self) -> Vec<String> {
        let c = self.load.concurrency.max(1);
        let mut args: Vec<String> = vec![
            "-n".into(),
            "-c".into(),
            c.to_string(),
            "-j".into(),
            c.min(2).to_string(),
            "-T".into(),
            self.load.duration.as_secs().max(1).to_string(),
        ];
        if self.prepared {
            args.extend(["-M".into(), "prepared".into()]);
        }
        args
    }

    /// Runs pgbench against a scratch database created (and dropped) on `admin_url`.
    async fn run(self, admin_url: &str) -> anyhow::Result<Row> {
        let bin = pgbench_bin()?;
        let db = format!("grpcchat_bench_pgbench_{}", run_id());
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(admin_url);
        let url = format!("{base}/{db}");
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin_url}"))?;
        admin
            .execute(format!(r#"CREATE DATABASE "{db}""#).as_str())
            .await?;
        let shown = format!("pgbench {}", self.args().join(" "));
        let result = async {
            let mut conn = PgConnection::connect(&url).await?;
            for sql in &self.setup {
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("setting up the pgbench database: {sql:.60}"))?;
            }
            conn.close().await?;
            let script = std::env::temp_dir().join(format!("{db}.sql"));
            std::fs::write(&script, &self.script)?;
            let mut args = self.args();
            args.extend(["-f".into(), script.display().to_string(), url.clone()]);
            let bin2 = bin.clone();
            let out = tokio::task::spawn_blocking(move || Command::new(bin2).args(args).output())
                .await?
                .with_context(|| format!("running {}", bin.display()));
            let _ = std::fs::remove_file(&script);
            let out = out?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!(
                    "pgbench failed ({}):\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let field = |prefix: &str| {
                stdout.lines().find_map(|l| {
                    l.trim()
                        .strip_prefix(prefix)
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<f64>().ok())
                })
            };
            let tps = field("tps = ").context("no tps in pgbench's output")?;
            let tx = field("number of transactions actually processed: ").unwrap_or(0.0);
            let failed = field("number of failed transactions: ").unwrap_or(0.0);
            if failed > 0.0 {
                bail!("pgbench: {failed} transactions failed");
            }
            let mut row = Row::new(self.name, "tx", tx as u64)
                .rate(tps)
                .extra("concurrency", self.load.concurrency.max(1));
            if let Some(avg) = field("latency average = ") {
                row = row.extra("latency_avg_ms", avg);
            }
            Ok(row)
        }
        .await;
        let dropped = drop_databases(admin_url, &db).await;
        let row = result?;
        dropped?;
        Ok(row.note(format!("{}; {shown}", self.what)))
    }
}

/// The PostgreSQL ceiling: `pgbench -n -c <concurrency> -j 2 -T <duration>` with a one-row
/// INSERT per transaction into a table shaped like the messages table, in a scratch
/// database created and dropped here, spread over `load.chats` chat ids.
pub async fn pgbench(admin_url: &str, load: &Opts) -> anyhow::Result<Row> {
    Pgbench {
        name: "limit:pgbench",
        setup: vec![
            "CREATE TABLE messages (id bigserial PRIMARY KEY, chat_id bigint NOT NULL, \
             sender_id bigint NOT NULL, body text NOT NULL, \
             created_at timestamptz NOT NULL DEFAULT now())"
                .into(),
        ],
        script: format!(
            "\\set chat random(1, {})\nINSERT INTO messages (chat_id, sender_id, body) \
             VALUES (:chat, :client_id, '{}');\n",
            load.chats.max(1),
            text_of_size("pgbench", load.message_size)
        ),
        prepared: false,
        load,
        what: "one-row INSERT".into(),
    }
    .run(admin_url)
    .await
}

/// What one message costs PostgreSQL on the production path, as a pgbench limit: the
/// statements of [`per_message_sql`] (the chat service's insert, the outbox delete, the
/// notifier's bookkeeping for every other member), on a scratch database migrated with the
/// real migrations, messages spread over `load.chats` chats. Its rate is messages per
/// second.
pub async fn pgbench_per_message(admin_url: &str, load: &Opts) -> anyhow::Result<Row> {
    let chats = load.chats.max(1);
    Pgbench {
        name: if chats == 1 {
            "limit:pgbench-per-message/1-chat"
        } else {
            "limit:pgbench-per-message"
        },
        setup: per_message_sql::setup(chats),
        script: per_message_sql::script(chats, load.message_size),
        prepared: true,
        load,
        what: format!(
            "pgbench per-message SQL, {chats} chat(s) of {} members: {}",
            per_message_sql::MEMBERS,
            per_message_sql::WHAT
        ),
    }
    .run(admin_url)
    .await
}

/// The SQLite ceiling, as the embedded server stores: one-row INSERT transactions
/// (`BEGIN IMMEDIATE`) on a WAL file with `synchronous=FULL`, queued on one writer
/// connection, from `concurrency` tasks.
pub async fn sqlite(
    concurrency: usize,
    chats: usize,
    duration: Duration,
    message_size: usize,
) -> anyhow::Result<Row> {
    let dir = std::env::temp_dir().join(format!("chat-bench-sqlite-limit-{}", run_id()));
    let url = chat_common::db::sqlite_url(&dir.join("limit.db"));
    let result = async {
        let pool = chat_common::db::connect_sqlite(&url, 1).await?;
        sqlx::query(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, chat_id INTEGER NOT NULL, \
             sender_id INTEGER NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let body = text_of_size("sqlite", message_size);
        let count = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for i in 0..concurrency.max(1) {
            let (pool, body, count) = (pool.clone(), body.clone(), count.clone());
            let chat = (i % chats.max(1)) as i64;
            tasks.push(tokio::spawn(async move {
                let mut h = histogram()?;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut tx = chat_common::db::begin_write(&pool).await?;
                    sqlx::query(
                        "INSERT INTO messages (chat_id, sender_id, body, created_at) \
                         VALUES (?, ?, ?, ?)",
                    )
                    .bind(chat)
                    .bind(i as i64)
                    .bind(&body)
                    .bind(t.elapsed().as_micros() as i64)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    h.record(t.elapsed().as_micros() as u64)?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(h)
            }));
        }
        let mut hist = histogram()?;
        for t in tasks {
            hist.add(t.await??)?;
        }
        let n = count.load(Ordering::Relaxed);
        pool.close().await;
        Ok(Row::new("limit:sqlite", "tx", n)
            .rate(n as f64 / started.elapsed().as_secs_f64())
            .latencies(&hist)
            .extra("concurrency", concurrency)
            .note("one-row INSERT transactions, WAL, synchronous=FULL, one writer"))
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn nats_connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 17)
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// Returns once the server has processed everything `conn` sent before (its SUBs, in
/// particular): the server handles a connection's protocol in order, so a message the
/// connection publishes to itself arrives only after its earlier subscriptions took effect.
/// (`flush` only writes the socket.)
async fn synced(conn: &async_nats::Client) -> anyhow::Result<()> {
    let inbox = conn.new_inbox();
    let mut sub = conn
        .subscribe(inbox.clone())
        .await
        .context("NATS subscribe")?;
    conn.publish(inbox, bytes::Bytes::new())
        .await
        .context("NATS publish")?;
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .context("NATS did not echo a connection's own message within 10 s")?
        .context("NATS subscription ended")?;
    Ok(())
}

/// Raw NATS: one publisher connection, one subscriber connection, `size`-byte messages
/// published as fast as the subscriber keeps up (at most 20,000 ahead): messages per
/// second from publish to receipt.
pub async fn nats_rate(url: &str, size: usize, duration: Duration) -> anyhow::Result<Row> {
    let (publisher, subscriber) = (nats_connect(url).await?, nats_connect(url).await?);
    let subject = format!("bench.{}.rate", run_id());
    let mut sub = subscriber.subscribe(subject.clone()).await?;
    synced(&subscriber).await?;
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while sub.next().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let payload = bytes_of(size);
    let started = Instant::now();
    let deadline = started + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1000 {
            publisher.publish(subject.clone(), payload.clone()).await?;
        }
        sent += 1000;
        while sent.saturating_sub(received.load(Ordering::Relaxed)) > 20_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    publisher.flush().await?;
    let wait_until = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < sent {
        if Instant::now() > wait_until {
            bail!(
                "NATS delivered {} of {sent} messages",
                received.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    reader.abort();
    Ok(Row::new("limit:nats-rate", "msg", sent)
        .rate(sent as f64 / elapsed.as_secs_f64())
        .extra("message_bytes", size)
        .note("core NATS publish→subscribe, two connections"))
}

fn bytes_of(size: usize) -> bytes::Bytes {
    bytes::Bytes::from(text_of_size("", size))
}

/// Raw NATS round trip: publish on one connection, receive on another, one in flight.
pub async fn nats_rtt(url: &str, size: usize, duration: Duration) -> anyhow::Result<Row> {
    let (publisher, subscriber) = (nats_connect(url).await?, nats_connect(url).await?);
    let subject = format!("bench.{}.rtt", run_id());
    let mut sub = subscriber.subscribe(subject.clone()).await?;
    synced(&subscriber).await?;
    let payload = bytes_of(size);
    let mut hist = histogram()?;
    let deadline = Instant::now() + duration;
    // Core NATS is at most once: a message lost on the way is counted and sent again, not
    // an error of the system under test; more than a few is.
    let mut lost = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        publisher
            .publish(subject.clone(), payload.clone())
            .await
            .context("NATS publish")?;
        match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            Ok(Some(_)) => hist.record(t.elapsed().as_micros() as u64)?,
            Ok(None) => bail!("NATS subscription ended"),
            Err(_) => {
                lost += 1;
                if lost > 3 {
                    bail!("NATS lost {lost} round-trip messages");
                }
            }
        }
    }
    Ok(Row::new("limit:nats-rtt", "msg", hist.len())
        .latencies(&hist)
        .extra("lost", lost)
        .extra("message_bytes", size)
        .note("core NATS publish→receipt, two connections, one in flight"))
}

/// Raw NATS fan-out, shaped like the `fanout` scenario: `s` subscriptions on one subject
/// over `s / 100` connections, one publisher; each message is published when the previous
/// one has reached every subscription.
pub async fn nats_fanout(
    url: &str,
    s: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Row> {
    let publisher = nats_connect(url).await?;
    let subject = format!("bench.{}.fanout", run_id());
    let n_conns = s.div_ceil(STREAMS_PER_CHANNEL).max(1);
    let mut conns = Vec::new();
    for _ in 0..n_conns {
        conns.push(nats_connect(url).await?);
    }
    struct Shared {
        t0: Instant,
        round: AtomicU64,
        sent_at_us: AtomicU64,
        arrived: AtomicUsize,
        all_arrived: tokio::sync::Notify,
        hists: Vec<std::sync::Mutex<Histogram<u64>>>,
    }
    let mut hists = Vec::new();
    for _ in 0..n_conns {
        hists.push(std::sync::Mutex::new(histogram()?));
    }
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        round: AtomicU64::new(u64::MAX),
        sent_at_us: AtomicU64::new(0),
        arrived: AtomicUsize::new(0),
        all_arrived: tokio::sync::Notify::new(),
        hists,
    });
    let mut readers = Vec::new();
    for j in 0..s {
        let c = j % n_conns;
        let mut sub = conns[c]
            .subscribe(subject.clone())
            .await
            .context("NATS subscribe")?;
        let shared = shared.clone();
        readers.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let now = shared.t0.elapsed().as_micros() as u64;
                let k = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|t| t.split(' ').nth(1))
                    .and_then(|k| k.parse::<u64>().ok());
                if k != Some(shared.round.load(Ordering::Acquire)) {
                    continue;
                }
                let sent = shared.sent_at_us.load(Ordering::Acquire);
                if let Ok(mut h) = shared.hists[c].lock() {
                    let _ = h.record(now.saturating_sub(sent).max(1));
                }
                if shared.arrived.fetch_add(1, Ordering::AcqRel) + 1 == s {
                    shared.all_arrived.notify_one();
                }
            }
        }));
    }
    for c in &conns {
        synced(c).await?;
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut rounds = 0u64;
    let result = async {
        while Instant::now() < deadline {
            shared.arrived.store(0, Ordering::Release);
            shared.round.store(rounds, Ordering::Release);
            shared
                .sent_at_us
                .store(shared.t0.elapsed().as_micros() as u64, Ordering::Release);
            publisher
                .publish(
                    subject.clone(),
                    text_of_size(&format!("fanout {rounds} "), size).into(),
                )
                .await
                .context("NATS publish")?;
            tokio::time::timeout(Duration::from_secs(30), shared.all_arrived.notified())
                .await
                .with_context(|| {
                    format!(
                        "NATS message {rounds} reached {} of {s} subscriptions within 30 s",
                        shared.arrived.load(Ordering::Relaxed)
                    )
                })?;
            rounds += 1;
        }
        anyhow::Ok(())
    }
    .await;
    let elapsed = started.elapsed();
    for r in &readers {
        r.abort();
    }
    result?;
    let mut hist = histogram()?;
    for h in &shared.hists {
        if let Ok(h) = h.lock() {
            hist.add(&*h)?;
        }
    }
    Ok(
        Row::new(format!("limit:nats-fanout/{s}"), "delivery", hist.len())
            .rate(hist.len() as f64 / elapsed.as_secs_f64())
            .latencies(&hist)
            .extra("subscriptions", s)
            .extra("connections", n_conns)
            .extra("messages", rounds)
            .note(format!(
                "core NATS, {s} subscriptions on {n_conns} connections"
            )),
    )
}

/// bcrypt at `cost` on every core for about `duration` (at least two hashes per core):
/// what Login can reach at best, since each login verifies one hash.
pub async fn bcrypt(cost: u32, duration: Duration) -> anyhow::Result<Row> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for _ in 0..threads {
        handles.push(tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            while n < 2 || Instant::now() < deadline {
                bcrypt::hash("bench-password", cost)?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(Row::new("limit:bcrypt", "hash", total)
        .rate(total as f64 / started.elapsed().as_secs_f64())
        .extra("cost", cost)
        .extra("threads", threads)
        .note(format!("bcrypt cost {cost} on {threads} threads")))
}
