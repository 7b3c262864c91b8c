//! The system under test, as scenarios see it: the addresses of AuthService, ChatService
//! and SagaOrchestrator (often one address), and the server's pid when its memory can be
//! read. Where it comes from:
//! - `chat-server` child processes this bench starts (the default): one on SQLite files in
//!   a temporary directory, or two replicas on a fresh PostgreSQL database and NATS subject
//!   space; killed and cleaned up when dropped;
//! - a server someone else runs (`--server URL`);
//! - the split services in this process, from `chat-testkit` (`--in-process`).

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use futures::StreamExt;
use sqlx::{Connection, Executor, PgConnection, Row as _};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::client::run_id;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    Sqlite,
    Postgres,
}

/// One replica of every service, as endpoints.
#[derive(Debug, Clone)]
pub struct System {
    /// How it runs, for the report.
    pub label: String,
    pub auth: String,
    pub chat: String,
    pub saga: String,
    /// The process whose memory `streams` reads; `None` when unknown or shared with the
    /// bench itself.
    pub pid: Option<u32>,
    pub storage: Storage,
    /// The server's bcrypt cost, for the login limit.
    pub bcrypt_cost: u32,
}

/// Systems and what keeps them alive; dropping it stops and cleans up.
pub struct Deployment {
    pub systems: Vec<System>,
    _guard: Vec<Box<dyn Send>>,
}

/// How to start `chat-server` processes.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub bin: PathBuf,
    pub bcrypt_cost: Option<u32>,
    pub admin_url: String,
    pub nats_url: String,
}

/// `chat-server` next to this executable (both are built into the same target directory).
pub fn default_server_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the chat-bench executable")?;
    Ok(exe.with_file_name(format!("chat-server{}", std::env::consts::EXE_SUFFIX)))
}

pub fn check_server_bin(bin: &Path) -> anyhow::Result<()> {
    if !bin.is_file() {
        bail!(
            "{} not found: chat-bench starts chat-server from its own target directory; \
             build it first with `cargo build --release --bin chat-server` (the same profile \
             as chat-bench), pass --server-bin PATH, or drive a running server with --server URL",
            bin.display()
        );
    }
    Ok(())
}

/// A `chat-server` child process, killed when dropped.
struct ServerProcess {
    child: Child,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("chat-bench-{tag}-{}", run_id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("finding a free port")?
        .local_addr()?
        .port())
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Starts `chat-server --listen <free port> <args>` with `envs`, its output in `log`, and
/// waits until gRPC health says SERVING.
async fn start_server(
    opts: &ServerOptions,
    args: &[String],
    envs: &[(String, String)],
    log: &Path,
) -> anyhow::Result<(ServerProcess, String)> {
    check_server_bin(&opts.bin)?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&opts.bin);
    cmd.arg("--listen")
        .arg(&addr)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // Request logs at info level would be part of what is measured; the bench keeps them
    // at warn unless told otherwise.
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    // Metrics stay on (production serves them), each server on its own free port rather
    // than the shared default 0.0.0.0:9090.
    if std::env::var_os("METRICS_ADDR").is_none() {
        cmd.env("METRICS_ADDR", format!("127.0.0.1:{}", free_port()?));
    }
    if let Some(cost) = opts.bcrypt_cost {
        cmd.env("BCRYPT_COST", cost.to_string());
    }
    // The bench registers all its users from one address, more than the default
    // registration limit allows; the limits that `guess` measures stay as configured.
    if std::env::var_os("RATE_LIMIT_REGISTER_PER_ADDRESS").is_none() {
        cmd.env("RATE_LIMIT_REGISTER_PER_ADDRESS", "off");
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", opts.bin.display()))?;
    let mut proc = ServerProcess { child };
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "chat-server exited ({status}) before serving; its output ({}):\n{}",
                log.display(),
                log_tail(log)
            );
        }
        if serving(&url).await {
            return Ok((proc, url));
        }
        if Instant::now() > deadline {
            bail!(
                "chat-server on {addr} was not SERVING after 120 s; its output ({}):\n{}",
                log.display(),
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the server at `url` answers gRPC health with SERVING.
pub async fn serving(url: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.to_owned()) else {
        return false;
    };
    let Ok(ch) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    let mut client = HealthClient::new(ch);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

impl Deployment {
    /// One `chat-server` on SQLite files in a fresh temporary directory, events in-process.
    pub async fn embedded(opts: &ServerOptions) -> anyhow::Result<Self> {
        let dir = TempDir::new("sqlite")?;
        let data = dir.0.join("data");
        let (proc, url) = start_server(
            opts,
            &["--data".into(), data.display().to_string()],
            &[],
            &dir.0.join("server.log"),
        )
        .await?;
        let system = System {
            label: "chat-server, SQLite".into(),
            auth: url.clone(),
            chat: url.clone(),
            saga: url,
            pid: Some(proc.child.id()),
            storage: Storage::Sqlite,
            bcrypt_cost: opts.bcrypt_cost.unwrap_or(12),
        };
        // Dropped in order: the process first, then its directory.
        Ok(Self {
            systems: vec![system],
            _guard: vec![Box::new(proc), Box::new(dir)],
        })
    }

    /// Two `chat-server` replicas on one fresh PostgreSQL database name and one fresh NATS
    /// subject space: every service runs twice, and events cross between them over NATS.
    pub async fn replicated(opts: &ServerOptions) -> anyhow::Result<Self> {
        let id = run_id();
        // Declared first, so that on an early return it is dropped last, after the
        // processes: a failed start cleans up too.
        let cleanup = PgNatsCleanup {
            admin_url: opts.admin_url.clone(),
            nats_url: opts.nats_url.clone(),
            db_prefix: format!("grpcchat_bench_{id}"),
            stream_prefix: format!("BENCH{id}"),
        };
        let dir = TempDir::new("pg")?;
        let base = opts
            .admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&opts.admin_url);
        let database_url = format!("{base}/{}", cleanup.db_prefix);
        let envs = vec![
            ("NATS_SUBJECT_PREFIX".to_owned(), format!("bench{id}")),
            ("NATS_STREAM".to_owned(), cleanup.stream_prefix.clone()),
        ];
        let mut procs = Vec::new();
        let mut systems = Vec::new();
        // One after the other, so migrations run once and the second finds them applied.
        for name in ["a", "b"] {
            let (proc, url) = start_server(
                opts,
                &[
                    "--database-url".into(),
                    database_url.clone(),
                    "--nats-url".into(),
                    opts.nats_url.clone(),
                    // One data directory for both: it holds the token signing key, which
                    // replicas must share.
                    "--data".into(),
                    dir.0.join("data").display().to_string(),
                ],
                &envs,
                &dir.0.join(format!("{name}.log")),
            )
            .await?;
            systems.push(System {
                label: format!("chat-server {name}, PostgreSQL + NATS"),
                auth: url.clone(),
                chat: url.clone(),
                saga: url,
                pid: Some(proc.child.id()),
                storage: Storage::Postgres,
                bcrypt_cost: opts.bcrypt_cost.unwrap_or(12),
            });
            procs.push(proc);
        }
        // Dropped in order: processes, their directory, then databases and streams.
        let mut guard: Vec<Box<dyn Send>> = Vec::new();
        for p in procs {
            guard.push(Box::new(p));
        }
        guard.push(Box::new(dir));
        guard.push(Box::new(cleanup));
        Ok(Self {
            systems,
            _guard: guard,
        })
    }

    /// A server someone else runs; `b` is a second replica of the same system, if any.
    pub fn external(
        a: &str,
        b: Option<&str>,
        pid: Option<u32>,
        storage: Storage,
        bcrypt_cost: u32,
    ) -> Self {
        let sys = |url: &str, pid| System {
            label: format!("server at {url}"),
            auth: url.into(),
            chat: url.into(),
            saga: url.into(),
            pid,
            storage,
            bcrypt_cost,
        };
        let mut systems = vec![sys(a, pid)];
        if let Some(b) = b {
            systems.push(sys(b, None));
        }
        Self {
            systems,
            _guard: Vec::new(),
        }
    }

    /// The split services in this process on the local PostgreSQL and NATS (from
    /// `chat-testkit`): auth, two chat replicas, notification with the stub sender, saga.
    pub async fn in_process(bcrypt_cost: u32) -> anyhow::Result<Self> {
        use chat_testkit::*;
        let auth = spawn_auth_with(auth_service::Settings {
            bcrypt_cost,
            rate_limits: auth_service::RateLimits {
                register_per_address: auth_service::Limit::OFF,
                ..Default::default()
            },
            ..auth_settings()
        })
        .await;
        let (chat_db, notify_db, saga_db) = (
            TestDb::new().await,
            TestDb::new().await,
            TestDb::new().await,
        );
        let nats = TestNats::new();
        let mut config = chat_config(&auth, &chat_db.url, &nats);
        config.database.max_connections = 32;
        let a = spawn_chat(config.clone()).await;
        let b = spawn_chat(config).await;
        // The stub sender never connects to this address.
        let unused_smtp = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let mut n_config = notification_config(&auth, &a, &notify_db.url, &nats, unused_smtp);
        n_config.settings.email = notification_service::EmailConfig::Stub;
        let notifier = spawn_notification(n_config).await;
        let saga = spawn_saga(saga_config(&auth, a.addr, notifier.addr, &saga_db.url)).await;
        let sys = |label: &str, chat: std::net::SocketAddr| System {
            label: label.into(),
            auth: format!("http://{}", auth.addr),
            chat: format!("http://{chat}"),
            saga: format!("http://{}", saga.addr),
            pid: None,
            storage: Storage::Postgres,
            bcrypt_cost,
        };
        let systems = vec![
            sys("in-process split services, replica a", a.addr),
            sys("in-process split services, replica b", b.addr),
        ];
        Ok(Self {
            systems,
            _guard: vec![
                Box::new(saga),
                Box::new(notifier),
                Box::new(b),
                Box::new(a),
                Box::new(nats),
                Box::new(saga_db),
                Box::new(notify_db),
                Box::new(chat_db),
                Box::new(auth),
            ],
        })
    }
}

/// Drops the run's databases and JetStream streams.
struct PgNatsCleanup {
    admin_url: String,
    nats_url: String,
    db_prefix: String,
    stream_prefix: String,
}

impl Drop for PgNatsCleanup {
    fn drop(&mut self) {
        let (admin, nats, dbs, streams) = (
            self.admin_url.clone(),
            self.nats_url.clone(),
            self.db_prefix.clone(),
            self.stream_prefix.clone(),
        );
        // Drop may run inside the runtime, which cannot be blocked on: a thread with its own
        // runtime does the work.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Err(e) = drop_databases(&admin, &dbs).await {
                    eprintln!("chat-bench: dropping the databases {dbs}*: {e:#}");
                }
                if let Err(e) = delete_streams(&nats, &streams).await {
                    eprintln!("chat-bench: deleting the streams {streams}*: {e:#}");
                }
            });
        })
        .join();
    }
}

/// Drops every database whose name starts with `prefix` (the server derives one per
/// service from the name it was given).
pub async fn drop_databases(admin_url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin_url).await?;
    let names: Vec<String> = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE $1")
        .bind(format!("{prefix}%"))
        .fetch_all(&mut conn)
        .await?
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    for name in names {
        conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
            .await?;
    }
    Ok(())
}

async fn delete_streams(nats_url: &str, prefix: &str) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    for name in names.iter().filter(|n| n.starts_with(prefix)) {
        js.delete_stream(name).await?;
    }
    Ok(())
}

/// Total CPU of every watched process, over one half-second sample, under which the
/// system counts as idle: a tenth of one core (5 clock ticks of 10 ms). PostgreSQL's
/// background processes and NATS tick over well below it on an idle machine.
const IDLE_TICKS_PER_SAMPLE: u64 = 5;
/// How long each idleness sample lasts.
const IDLE_SAMPLE: Duration = Duration::from_millis(500);
/// Length of a clock tick, the unit of `/proc/<pid>/stat`'s CPU times.
pub const TICK: Duration = Duration::from_millis(10);

/// How long the system stayed busy after a scenario's load.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// From the call until the start of the first idle sample: the time the owed work
    /// (emails and their bookkeeping, outbox publishes) took to drain.
    pub busy: Duration,
    /// False when the limit ran out first (the figure is then a lower bound, and
    /// something else may be loading the machine).
    pub idle: bool,
}

/// Waits until the whole system is idle: the servers of `systems` whose pid is known,
/// every PostgreSQL process and NATS together under a tenth of a core for half a second
/// (see [`cpu_sample`]), at most `limit`.
///
/// A load scenario leaves work behind (every stored message owes an email to each other
/// member, sent in the background with its delivery records in PostgreSQL, and its event
/// goes through JetStream), and the next scenario must not be measured against that
/// backlog. How long it took to drain is a figure of its own: the rate the system
/// sustains counts it in.
pub async fn settle(systems: &[System], limit: Duration) -> Settled {
    let started = Instant::now();
    let mut before = cpu_sample(systems);
    loop {
        let sample_start = started.elapsed();
        tokio::time::sleep(IDLE_SAMPLE).await;
        let now = cpu_sample(systems);
        let used = now.since(&before).total_ticks();
        before = now;
        if used <= IDLE_TICKS_PER_SAMPLE {
            return Settled {
                busy: sample_start,
                idle: true,
            };
        }
        if started.elapsed() >= limit {
            return Settled {
                busy: started.elapsed(),
                idle: false,
            };
        }
    }
}

/// Which part of the system a process belongs to, for the CPU breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    /// A chat-server replica this bench knows the pid of.
    Server,
    /// A `postgres` process: the postmaster and every backend (whoever they serve).
    Postgres,
    /// A `nats-server` process.
    Nats,
}

/// The CPU time of the processes that serve a run, at one moment, per process: user plus
/// system time, and that of its exited children (the postmaster reaps backends that end,
/// so a connection closed meanwhile is still counted).
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    ticks: std::collections::HashMap<(Part, u32), u64>,
    /// Whether every server's pid is known (else servers are left out of the figures).
    servers_known: bool,
}

/// CPU used between two [`CpuSample`]s, in clock ticks, by part.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// The chat-server replicas; `None` when a pid is unknown (a server someone else runs,
    /// or the services inside this bench).
    pub servers: Option<u64>,
    pub postgres: u64,
    pub nats: u64,
}

impl CpuUse {
    /// Everything that was counted.
    pub fn total_ticks(&self) -> u64 {
        self.servers.unwrap_or(0) + self.postgres + self.nats
    }
}

impl CpuSample {
    /// What was used from `earlier` to this sample. A process that started meanwhile
    /// counts whole; one that ended meanwhile is in its parent's children times.
    pub fn since(&self, earlier: &CpuSample) -> CpuUse {
        let mut used = CpuUse::default();
        let mut servers = 0;
        for (key, now) in &self.ticks {
            let delta = now.saturating_sub(earlier.ticks.get(key).copied().unwrap_or(0));
            match key.0 {
                Part::Server => servers += delta,
                Part::Postgres => used.postgres += delta,
                Part::Nats => used.nats += delta,
            }
        }
        used.servers = (self.servers_known && earlier.servers_known).then_some(servers);
        used
    }
}

/// Samples the CPU time of `systems`' servers (where the pid is known) and of every
/// `postgres` and `nats-server` process on this machine (read from `/proc`; pgbench is a
/// process of its own name and is not counted).
pub fn cpu_sample(systems: &[System]) -> CpuSample {
    let mut sample = CpuSample {
        servers_known: !systems.is_empty() && systems.iter().all(|s| s.pid.is_some()),
        ..Default::default()
    };
    for pid in systems.iter().filter_map(|s| s.pid) {
        if let Some((_, ticks)) = process_stat(pid) {
            sample.ticks.insert((Part::Server, pid), ticks);
        }
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return sample;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((comm, ticks)) = process_stat(pid) else {
            continue;
        };
        let part = match comm.as_str() {
            "postgres" => Part::Postgres,
            "nats-server" => Part::Nats,
            _ => continue,
        };
        sample.ticks.insert((part, pid), ticks);
    }
    sample
}

/// The command name of `pid` and its CPU time in clock ticks (user + system, its own and
/// its reaped children's), from `/proc/<pid>/stat`.
fn process_stat(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; the fields after its last
    // closing parenthesis don't.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the man page; utime 14, stime 15, cutime 16, cstime 17.
    let mut ticks = 0u64;
    for i in 11..=14 {
        ticks += fields.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some((comm, ticks))
}
