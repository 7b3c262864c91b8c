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
        config.database_max_connections = 32;
        let a = spawn_chat(config.clone()).await;
        let b = spawn_chat(config).await;
        // The stub sender never connects to this address.
        let unused_smtp = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let mut n_config = notification_config(&auth, &a, &notify_db.url, &nats, unused_smtp);
        n_config.email = notification_service::EmailConfig::Stub;
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

/// Waits until process `pid` is idle (under 5% of one core over half a second), at most
/// `limit`, and returns how long that took; `None` when the pid is unknown or unreadable.
///
/// A load scenario leaves work behind in the server (every stored message owes an email to
/// each other member, sent in the background), and the next scenario must not be measured
/// against that backlog. How long it took to drain is itself a figure worth printing.
pub async fn settle(pid: Option<u32>, limit: Duration) -> Option<Duration> {
    const CLOCK_TICKS_PER_SEC: u64 = 100;
    const SAMPLE: Duration = Duration::from_millis(500);
    let pid = pid?;
    let started = std::time::Instant::now();
    let mut before = process_ticks(pid)?;
    loop {
        tokio::time::sleep(SAMPLE).await;
        let now = process_ticks(pid)?;
        let used = now.saturating_sub(before);
        before = now;
        // 5% of one core for half a second: 2.5 ticks.
        if used * 20 * 2 <= CLOCK_TICKS_PER_SEC || started.elapsed() >= limit {
            return Some(started.elapsed());
        }
    }
}

/// The CPU time all of `systems`' server processes have used, in clock ticks (10 ms);
/// `None` when a pid is unknown (a server someone else runs, or the in-process one).
pub fn cpu_ticks(systems: &[System]) -> Option<u64> {
    systems.iter().map(|s| process_ticks(s.pid?)).sum()
}

/// User plus system CPU time of `pid`, in clock ticks, from `/proc/<pid>/stat`.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after its closing parenthesis don't.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the man page, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
