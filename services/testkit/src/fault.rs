//! Fault injection for tests, usable from every service's suite: the failures a deployment
//! meets, played with the real thing rather than mocks.
//!
//! - [`FaultProxy`]: a TCP proxy between a service and PostgreSQL, NATS or another service.
//!   [`FaultProxy::cut`] closes every live connection and refuses new ones (a peer that
//!   crashed or a reset link); [`FaultProxy::blackhole`] keeps connections open but
//!   forwards nothing, and accepts new ones without ever connecting them (a partition,
//!   where only timeouts tell); [`FaultProxy::restore`] lets traffic through again.
//! - [`PrivateNats`]: a `nats-server` of the test's own, with JetStream on a temporary store,
//!   that the test may SIGKILL and start again on the same port and store.
//! - [`PrivatePostgres`]: a PostgreSQL cluster of the test's own (initdb + pg_ctl in a
//!   temporary directory, trust auth, a free port) that the test may stop (fast or
//!   immediate) and start again. Running as root (CI does), the server runs as the
//!   `postgres` user, since PostgreSQL refuses to run as root.
//! - [`ServiceProcess`]: a built service binary run as a child process, ready once its gRPC
//!   health check answers SERVING, that the test may SIGKILL and restart on the same port.
//!
//! The shared PostgreSQL and NATS are never stopped: a test that needs to kill one starts
//! its own. Everything here is stopped and removed on drop, so a failing test leaves no
//! stray process behind.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::watch,
    task::JoinHandle,
};

/// A free loopback port, for a server that must keep its port across restarts. (Bound
/// and released: another process could take it in between, which on a test machine is
/// rare enough.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls until a TCP connection to `addr` succeeds, for at most `within`.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a [`FaultProxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards both ways.
    Up,
    /// Closes live connections and new ones as soon as they are accepted.
    Refuse,
    /// Holds live and new connections open and forwards nothing.
    Blackhole,
}

/// A TCP proxy that a test can cut, blackhole and restore (see the module docs).
pub struct FaultProxy {
    /// Where clients connect instead of the target.
    pub addr: SocketAddr,
    link: Arc<watch::Sender<Link>>,
    accept: JoinHandle<()>,
}

/// The proxy under its first name.
pub type TcpProxy = FaultProxy;

impl FaultProxy {
    /// A proxy on a free loopback port to `target`, passing traffic.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let link = Arc::new(watch::channel(Link::Up).0);
        let accept = tokio::spawn(accept_loop(listener, target, link.clone()));
        Self { addr, link, accept }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.link.send_replace(Link::Refuse);
    }

    /// Forwards nothing, closes nothing: connections hang until the caller's timeouts.
    pub fn blackhole(&self) {
        self.link.send_replace(Link::Blackhole);
    }

    /// Passes traffic again (connections a cut closed stay closed).
    pub fn restore(&self) {
        self.link.send_replace(Link::Up);
    }

    /// How the proxy treats traffic right now.
    pub fn link(&self) -> Link {
        *self.link.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.link.send_replace(Link::Refuse);
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, link: Arc<watch::Sender<Link>>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let mut state = link.subscribe();
        tokio::spawn(async move {
            // A connection accepted while blackholed waits for the link to come back.
            let up = state
                .wait_for(|l| *l != Link::Blackhole)
                .await
                .map(|l| *l == Link::Up)
                .unwrap_or(false);
            if !up {
                return;
            }
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = outbound.set_nodelay(true);
            let (in_r, in_w) = inbound.into_split();
            let (out_r, out_w) = outbound.into_split();
            tokio::join!(pump(in_r, out_w, state.clone()), pump(out_r, in_w, state));
        });
    }
}

/// Copies one direction, holding bytes while blackholed and stopping when refused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = state.wait_for(|l| *l == Link::Refuse) => return,
        };
        let up = state
            .wait_for(|l| *l != Link::Blackhole)
            .await
            .map(|l| *l == Link::Up)
            .unwrap_or(false);
        if !up || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Whether this process runs as root, where servers that refuse root run as `postgres`.
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The last lines of a log file, for a failure message.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends SIGKILL to `child` and reaps it.
async fn sigkill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// A private `nats-server` with JetStream (see the module docs).
pub struct PrivateNats {
    /// The loopback port it listens on, the same across restarts.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// A configuration file (`-c`), for a server that requires authentication.
    config: Option<PathBuf>,
}

impl PrivateNats {
    /// The server binary: `NATS_SERVER_BIN`, default `/usr/sbin/nats-server`.
    fn binary() -> String {
        std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".into())
    }

    /// Starts a server on a free port with an empty store; returns once it accepts
    /// connections.
    pub async fn start() -> anyhow::Result<Self> {
        let mut nats = Self {
            port: free_port(),
            dir: tempfile::tempdir().context("a store directory")?,
            child: None,
            config: None,
        };
        nats.launch().await?;
        Ok(nats)
    }

    /// Like [`PrivateNats::start`], with `config` (nats-server configuration syntax, e.g.
    /// an `authorization` block) as its configuration file; the address and store set by
    /// [`PrivateNats::start`] win over the file's.
    pub async fn start_with_config(config: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a store directory")?;
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, config).context("writing nats.conf")?;
        let mut nats = Self {
            port: free_port(),
            dir,
            child: None,
            config: Some(path),
        };
        nats.launch().await?;
        Ok(nats)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `nats://127.0.0.1:<port>`, for a service's configuration.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr())
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let store = self.dir.path().join("store");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let mut command = Command::new(Self::binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", Self::binary()))?;
        self.child = Some(child);
        wait_for_port(self.addr(), Duration::from_secs(20))
            .await
            .with_context(|| format!("nats-server log:\n{}", tail(&self.log(), 20)))
    }

    /// SIGKILL: no goodbye to clients, JetStream recovers its store on the next start.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigkill(&mut child).await;
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.launch().await
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// How [`PrivatePostgres::stop`] shuts the server down (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Sessions are terminated, then a clean shutdown.
    Fast,
    /// Every process quits at once, as in a crash; recovery runs on the next start.
    Immediate,
}

/// A private PostgreSQL cluster (see the module docs).
pub struct PrivatePostgres {
    /// The loopback port it listens on, the same across restarts.
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    running: bool,
}

impl PrivatePostgres {
    /// The server's binaries: `PG_BIN`, or the newest `/usr/lib/postgresql/<v>/bin`.
    fn bin_dir() -> anyhow::Result<PathBuf> {
        if let Ok(dir) = std::env::var("PG_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .context("looking for PostgreSQL's binaries in /usr/lib/postgresql (or set PG_BIN)")?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, p)| p.join("pg_ctl").exists())
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, p)| p)
            .context("no PostgreSQL under /usr/lib/postgresql (or set PG_BIN)")
    }

    /// Creates a cluster in a temporary directory and starts it on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a data directory")?;
        let as_postgres = is_root();
        if as_postgres {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("chown of the data directory to postgres failed");
            }
        }
        let mut pg = Self {
            port: free_port(),
            dir,
            bin: Self::bin_dir()?,
            as_postgres,
            running: false,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().context("utf-8 path")?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        .await?;
        pg.start_again().await?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL of `database` as reached through `proxy` (a [`FaultProxy`] to this server).
    pub fn url_via(&self, proxy: &FaultProxy, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", proxy.addr)
    }

    /// Runs one of the server's tools, as `postgres` when this process is root.
    async fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}\n{}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log(), 20)
            );
        }
        Ok(())
    }

    /// Starts the (stopped) server again on the same port and data; returns once it
    /// accepts connections.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let data = self.data();
        let log = self.log();
        let socket_dir = self.dir.path().to_str().context("utf-8 path")?.to_owned();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {socket_dir} -c fsync=off -c max_connections=60",
            self.port
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().context("utf-8 path")?,
                "-l",
                log.to_str().context("utf-8 path")?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await?;
        self.running = true;
        Ok(())
    }

    /// Stops the server; clients see their connections closed and new ones refused.
    pub async fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        let data = self.data();
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().context("utf-8 path")?,
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
        .await?;
        self.running = false;
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        // Drop cannot await: the tool runs to completion on this thread (immediate mode
        // takes a moment).
        let program = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let _ = cmd
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A built service binary running as a child process (see the module docs).
pub struct ServiceProcess {
    /// The name it was started as, for its log file and failure messages.
    pub name: String,
    /// The gRPC address it listens on, the same across restarts.
    pub addr: SocketAddr,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `program` with `args` and `env` (which must make it listen on `addr`), its
    /// output going to a log file; returns once its gRPC health check answers SERVING.
    pub async fn start(
        name: &str,
        program: impl AsRef<Path>,
        args: &[&str],
        env: Vec<(String, String)>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            name: name.into(),
            addr,
            program: program.as_ref().to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
            dir: tempfile::tempdir().context("a log directory")?,
            child: None,
        };
        process.launch().await?;
        Ok(process)
    }

    /// `http://<addr>`, for another service's configuration or a client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.name))
    }

    /// The last lines the process wrote, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("METRICS_ADDR", "off")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "{} exited with {status} while starting:\n{}",
                        self.name,
                        self.log_tail(30)
                    );
                }
            }
            if health_serving(self.addr, "").await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} is not SERVING after 60 s:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reaps it: no graceful shutdown, no drained calls.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigkill(&mut child).await;
        }
    }

    /// Starts it again with the same arguments, on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.launch().await
    }

    /// True while the child process has not exited (it reaps it when it has).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Whether `service` ("" for the whole server) at `addr` answers SERVING to a gRPC health
/// check within a second.
pub async fn health_serving(addr: SocketAddr, service: &str) -> bool {
    matches!(
        health_status(addr, service).await,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving)
    )
}

/// The gRPC health status of `service` at `addr`, or None when it does not answer within
/// a second.
pub async fn health_status(
    addr: SocketAddr,
    service: &str,
) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .ok()?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()?;
        Some(resp.into_inner().status())
    };
    tokio::time::timeout(Duration::from_secs(1), check)
        .await
        .ok()
        .flatten()
}

/// The environment that makes a `chat-service` binary run with `config`.
pub fn chat_service_env(config: &chat_service::Config) -> Vec<(String, String)> {
    use chat_common::config::vars;
    use secrecy::ExposeSecret;
    let settings = &config.settings;
    let mut env = vec![
        (vars::LISTEN_ADDR, config.listen.addr.to_string()),
        (vars::DATABASE_URL, config.database.url.clone()),
        (
            vars::DATABASE_MAX_CONNECTIONS,
            config.database.max_connections.to_string(),
        ),
        (vars::NATS_URL, config.nats.url.clone()),
        (
            vars::NATS_SUBJECT_PREFIX,
            config.nats.subject_prefix.clone(),
        ),
        (
            vars::NATS_STREAM,
            settings.nats_stream.clone().unwrap_or_else(|| "off".into()),
        ),
        (vars::AUTH_URL, config.upstream.auth_url.clone()),
        (vars::STREAM_BUFFER, settings.stream_buffer.to_string()),
        (
            vars::CATCH_UP_INTERVAL_SECS,
            settings.catch_up_every.as_secs().max(1).to_string(),
        ),
        (
            vars::MESSAGE_EDIT_WINDOW_SECS,
            settings
                .edit_window
                .map_or(0, |w| w.as_secs().max(1))
                .to_string(),
        ),
        (
            vars::ACCOUNT_DELETIONS_POLL_SECS,
            settings.deletions_every.as_secs().max(1).to_string(),
        ),
    ];
    if let Some(secret) = &config.service_secret.secret {
        env.push((vars::SERVICE_SECRET, secret.expose_secret().to_owned()));
    }
    // A subprocess gets previews only as the environment says: none here.
    if settings.link_previews.is_none() {
        env.push((vars::LINK_PREVIEWS, "off".into()));
    }
    env.push((
        vars::RUST_LOG,
        std::env::var(vars::RUST_LOG).unwrap_or("warn".into()),
    ));
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
