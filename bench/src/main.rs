//! `chat-bench`: drives a running grpc-chat system with real load and prints what it
//! sustains, each figure beside the limit this machine sets for the same work.
//!
//! By default it starts `chat-server` itself (the binary next to its own executable): one
//! process on SQLite files in a temporary directory for most scenarios, and two replicas on
//! a fresh PostgreSQL database and NATS subject space for `cross-replica` (and, in `all`,
//! for sends on PostgreSQL). `--server URL` drives a server someone else runs;
//! `--in-process` runs the split services inside this process instead.
//!
//! Every scenario prints a table row and a JSON line, and exits non-zero when the system
//! returned any error, so a failing system cannot report a figure. The client shares the
//! machine with the server: figures are for the whole system on this machine.

mod client;
mod limits;
mod report;
mod scenarios;
mod system;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use report::Row;
use scenarios::Opts;
use system::{Deployment, ServerOptions, Storage, System};

/// Longest wait for a server to finish the background work a scenario left it.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Parser, Debug)]
#[command(about = "Load generator for grpc-chat: every figure beside its limit on this machine")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// How long each scenario (and each limit) runs, in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    duration: u64,
    /// Concurrent clients (senders, logins; pgbench clients for the limit).
    #[arg(long, default_value_t = 16, global = true)]
    concurrency: usize,
    /// Chats the senders spread over.
    #[arg(long, default_value_t = 16, global = true)]
    chats: usize,
    /// Message text size in bytes (NATS limits use the same payload size).
    #[arg(long, default_value_t = 64, global = true)]
    message_size: usize,
    /// Stream counts for `fanout`, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,1000,10000",
        global = true
    )]
    streams: Vec<usize>,
    /// Idle streams for `streams`.
    #[arg(long, default_value_t = 10_000, global = true)]
    idle_streams: usize,
    /// Drive a running server at this URL (e.g. http://127.0.0.1:50051) instead of
    /// starting one.
    #[arg(long, global = true)]
    server: Option<String>,
    /// A second replica of the same system, for `cross-replica` with `--server`.
    #[arg(long, global = true, requires = "server")]
    server_b: Option<String>,
    /// The pid of the `--server` process, for `streams`' memory figure.
    #[arg(long, global = true, requires = "server")]
    server_pid: Option<u32>,
    /// What the `--server` stores in, for the storage limit `send` is compared with.
    #[arg(long, value_enum, default_value_t = Storage::Sqlite, global = true)]
    storage: Storage,
    /// Which storage the chat-server this bench starts uses for the single-server
    /// scenarios (`postgres` starts two replicas on PostgreSQL + NATS).
    #[arg(long, value_enum, default_value_t = Storage::Sqlite, global = true)]
    backend: Storage,
    /// The chat-server binary to start (default: next to chat-bench).
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Run the split services (auth, two chat replicas, notification, saga) inside this
    /// process on PostgreSQL + NATS instead of starting chat-server. No memory figure.
    #[arg(long, global = true, conflicts_with = "server")]
    in_process: bool,
    /// The server's bcrypt cost: given to servers this bench starts (as BCRYPT_COST), and
    /// what the login limit hashes at.
    #[arg(long, default_value_t = 12, global = true)]
    bcrypt_cost: u32,
    /// PostgreSQL to create scratch databases on (pgbench, replicated servers).
    #[arg(
        long,
        env = "TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        global = true
    )]
    database_url: String,
    /// NATS for the replicated servers and the NATS limits.
    #[arg(
        long,
        env = "TEST_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    /// Skip the limit measurements (scenarios only).
    #[arg(long, global = true)]
    no_limits: bool,
    /// For `guess`: each guess names a different unknown email instead of one account, so
    /// only the per-address limit applies.
    #[arg(long, global = true)]
    spray: bool,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// N senders into M chats: messages stored per second and send latency; limit: the
    /// storage engine's one-row commit rate (SQLite, or pgbench on PostgreSQL).
    Send,
    /// The same load through SagaOrchestrator.SendMessage (stub email sender); limit:
    /// direct sends.
    Saga,
    /// S streams on one chat, one sender: send→arrival per stream and deliveries per
    /// second; limit: raw NATS fan-out to S subscriptions.
    Fanout,
    /// Streams on replica b, sends to replica a: send→arrival; limit: raw NATS round trip.
    CrossReplica,
    /// S idle streams: the server's resident memory per stream; target 10 KiB.
    Streams,
    /// Concurrent logins at the server's bcrypt cost; limit: bcrypt on every core.
    Login,
    /// Password guessing: N attackers send wrong passwords from one address while a user
    /// logs in from another (127.0.0.2): guesses checked and refused per second, and the
    /// user's login latency during the attack beside it alone. Not part of `all`.
    Guess,
    /// Only the limits.
    Limits,
    /// Every scenario with its limit, then the whole table.
    All,
}

/// Runs scenarios and limits, printing each row as it comes.
struct Run {
    cli: Cli,
    opts: Opts,
    rows: Vec<Row>,
}

impl Run {
    fn push(&mut self, row: Row) -> Row {
        report::print_row(&row, self.rows.is_empty());
        self.rows.push(row.clone());
        row
    }

    fn starts_servers(&self) -> bool {
        self.cli.server.is_none() && !self.cli.in_process
    }

    fn limits(&self) -> bool {
        !self.cli.no_limits
    }

    fn server_options(&self) -> anyhow::Result<ServerOptions> {
        Ok(ServerOptions {
            bin: match &self.cli.server_bin {
                Some(b) => b.clone(),
                None => system::default_server_bin()?,
            },
            bcrypt_cost: Some(self.cli.bcrypt_cost),
            admin_url: self.cli.database_url.clone(),
            nats_url: self.cli.nats_url.clone(),
        })
    }

    /// The system the single-server scenarios run on.
    async fn deploy_single(&self) -> anyhow::Result<Deployment> {
        let c = &self.cli;
        if let Some(url) = &c.server {
            return Ok(Deployment::external(
                url,
                c.server_b.as_deref(),
                c.server_pid,
                c.storage,
                c.bcrypt_cost,
            ));
        }
        if c.in_process {
            return Deployment::in_process(c.bcrypt_cost).await;
        }
        let opts = self.server_options()?;
        match c.backend {
            Storage::Sqlite => Deployment::embedded(&opts).await,
            Storage::Postgres => Deployment::replicated(&opts).await,
        }
    }

    /// Two replicas of one system: `current` if it has them, else two chat-servers on
    /// PostgreSQL + NATS when this bench starts servers; `None` for a single `--server`.
    async fn deploy_pair(&self, current: Option<Deployment>) -> anyhow::Result<Option<Deployment>> {
        let current = match current {
            None if self.cli.server.is_some() || self.cli.in_process => {
                Some(self.deploy_single().await?)
            }
            other => other,
        };
        if let Some(d) = current {
            if d.systems.len() >= 2 {
                return Ok(Some(d));
            }
            if self.cli.server.is_some() {
                return Ok(None);
            }
        }
        Ok(Some(Deployment::replicated(&self.server_options()?).await?))
    }

    async fn storage_limit(&mut self, storage: Storage) -> anyhow::Result<Option<Row>> {
        if !self.limits() {
            return Ok(None);
        }
        let o = &self.opts;
        let row = match storage {
            Storage::Sqlite => {
                limits::sqlite(o.concurrency, o.chats, o.duration, o.message_size).await?
            }
            Storage::Postgres => {
                limits::pgbench(
                    &self.cli.database_url,
                    o.concurrency,
                    o.chats,
                    o.duration,
                    o.message_size,
                )
                .await?
            }
        };
        Ok(Some(self.push(row)))
    }

    /// Lets every server of `systems` finish what the scenario left it (see
    /// [`system::settle`]) and notes on `row` how long that took.
    ///
    /// When the row knows the servers' CPU time at the start of its load
    /// ([`Row::cpu_start`]), it also notes their CPU time per counted unit, the background
    /// work included: a steadier figure than a rate on a shared machine.
    async fn settle(&self, systems: &[System], row: Row) -> Row {
        let mut longest = None;
        for s in systems {
            if let Some(t) = system::settle(s.pid, SETTLE_LIMIT).await {
                longest = longest.max(Some(t));
            }
        }
        let mut row = match longest {
            Some(t) if t >= Duration::from_secs(1) => {
                let note = format!("{}; server busy {:.0} s after", row.note, t.as_secs_f64());
                row.extra("settle_s", t.as_secs_f64()).note(note)
            }
            _ => row,
        };
        if let (Some(before), Some(after)) = (row.cpu_start, system::cpu_ticks(systems)) {
            if row.count > 0 {
                let us = after.saturating_sub(before) as f64 * 10_000.0 / row.count as f64;
                let note = format!("{}; server CPU {us:.0} µs/{}", row.note, row.unit);
                row = row.extra("server_cpu_us_per_unit", us).note(note);
            }
        }
        row
    }

    async fn send(&mut self, name: &str, systems: &[System]) -> anyhow::Result<Row> {
        let row = scenarios::send(name, systems, &self.opts).await?;
        let row = self.settle(systems, row).await;
        let limit = self.storage_limit(systems[0].storage).await?;
        let what = match systems[0].storage {
            Storage::Sqlite => "sqlite",
            Storage::Postgres => "pgbench",
        };
        Ok(self.push(match limit {
            Some(l) => row.against_rate(what, &l),
            None => row,
        }))
    }

    async fn saga(&mut self, system: &System, send: Option<Row>) -> anyhow::Result<()> {
        let send = match send {
            Some(s) => s,
            None => self.send("send", std::slice::from_ref(system)).await?,
        };
        let row = scenarios::saga(system, &self.opts).await?;
        let row = self.settle(std::slice::from_ref(system), row).await;
        self.push(row.against_rate("send", &send));
        Ok(())
    }

    async fn fanout(&mut self, system: &System) -> anyhow::Result<()> {
        for s in self.cli.streams.clone() {
            let row = scenarios::fanout(system, s, &self.opts).await?;
            let row = self.settle(std::slice::from_ref(system), row).await;
            let row = if self.limits() {
                let o = &self.opts;
                let l = self.push(
                    limits::nats_fanout(&self.cli.nats_url, s, o.message_size, o.duration).await?,
                );
                row.against_rate("nats fanout", &l)
            } else {
                row
            };
            self.push(row);
        }
        Ok(())
    }

    async fn streams(&mut self, system: &System) -> anyhow::Result<()> {
        let row = scenarios::streams(system, self.cli.idle_streams).await?;
        self.push(row);
        Ok(())
    }

    async fn login(&mut self, system: &System) -> anyhow::Result<()> {
        let row = scenarios::login(system, &self.opts).await?;
        let row = if self.limits() {
            // A few seconds of bcrypt give a stable rate.
            let l = self.push(
                limits::bcrypt(
                    system.bcrypt_cost,
                    self.opts.duration.min(Duration::from_secs(5)),
                )
                .await?,
            );
            row.against_rate("bcrypt", &l)
        } else {
            row
        };
        self.push(row);
        Ok(())
    }

    async fn cross_replica(&mut self, a: &System, b: &System) -> anyhow::Result<()> {
        let row = scenarios::cross_replica(a, b, &self.opts).await?;
        let row = if self.limits() {
            let o = &self.opts;
            let l =
                self.push(limits::nats_rtt(&self.cli.nats_url, o.message_size, o.duration).await?);
            row.against_p50("nats rtt", &l)
        } else {
            row
        };
        self.push(row);
        Ok(())
    }

    async fn nats_rate(&mut self) -> anyhow::Result<()> {
        let o = &self.opts;
        let row = limits::nats_rate(&self.cli.nats_url, o.message_size, o.duration).await?;
        self.push(row);
        Ok(())
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let scenario = self.cli.scenario;
        let single = matches!(
            scenario,
            Scenario::Send
                | Scenario::Saga
                | Scenario::Fanout
                | Scenario::Streams
                | Scenario::Login
                | Scenario::Guess
                | Scenario::All
        );
        let mut deployment = None;
        let mut send_row = None;
        if single {
            let d = self.deploy_single().await?;
            let sys = d.systems[0].clone();
            eprintln!("chat-bench: driving {} at {}", sys.label, sys.chat);
            if matches!(scenario, Scenario::Send | Scenario::All) {
                send_row = Some(self.send("send", std::slice::from_ref(&sys)).await?);
            }
            if matches!(scenario, Scenario::Saga | Scenario::All) {
                self.saga(&sys, send_row.clone()).await?;
            }
            if matches!(scenario, Scenario::Fanout | Scenario::All) {
                self.fanout(&sys).await?;
            }
            if matches!(scenario, Scenario::Streams | Scenario::All) {
                if self.starts_servers() && self.cli.backend == Storage::Sqlite {
                    // A fresh server: one that already served other scenarios keeps their
                    // memory in its allocator and would make streams look free.
                    let fresh = self.deploy_single().await?;
                    self.streams(&fresh.systems[0]).await?;
                } else {
                    self.streams(&sys).await?;
                }
            }
            if matches!(scenario, Scenario::Login | Scenario::All) {
                self.login(&sys).await?;
            }
            if scenario == Scenario::Guess {
                let row = scenarios::guess(&sys, &self.opts, self.cli.spray).await?;
                self.push(row);
            }
            deployment = Some(d);
        }
        if matches!(scenario, Scenario::CrossReplica | Scenario::All) {
            let already_replicated = deployment.as_ref().is_some_and(|d| d.systems.len() >= 2);
            if !already_replicated {
                // One server at a time on these two cores.
                drop(deployment.take());
            }
            match self.deploy_pair(deployment.take()).await? {
                Some(pair) => {
                    let (a, b) = (pair.systems[0].clone(), pair.systems[1].clone());
                    eprintln!(
                        "chat-bench: driving two replicas: {} and {}",
                        a.chat, b.chat
                    );
                    // Sends on the replicated system, when `send` above ran on another.
                    if scenario == Scenario::All && send_row.is_some() && !already_replicated {
                        self.send("send-replicated", &[a.clone(), b.clone()])
                            .await?;
                    }
                    self.cross_replica(&a, &b).await?;
                    deployment = Some(pair);
                }
                None => {
                    if scenario == Scenario::CrossReplica {
                        bail!("cross-replica needs two replicas: give --server-b URL too");
                    }
                    eprintln!("chat-bench: cross-replica skipped: one --server and no --server-b");
                }
            }
        }
        drop(deployment);
        if scenario == Scenario::Limits {
            let o = self.opts.clone();
            let l = limits::sqlite(o.concurrency, o.chats, o.duration, o.message_size).await?;
            self.push(l);
            let l = limits::pgbench(
                &self.cli.database_url,
                o.concurrency,
                o.chats,
                o.duration,
                o.message_size,
            )
            .await?;
            self.push(l);
            let l = limits::nats_rtt(&self.cli.nats_url, o.message_size, o.duration).await?;
            self.push(l);
            for s in self.cli.streams.clone() {
                let l =
                    limits::nats_fanout(&self.cli.nats_url, s, o.message_size, o.duration).await?;
                self.push(l);
            }
            let l = limits::bcrypt(self.cli.bcrypt_cost, o.duration.min(Duration::from_secs(5)))
                .await?;
            self.push(l);
        }
        if matches!(scenario, Scenario::Limits | Scenario::All) && self.limits() {
            self.nats_rate().await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.concurrency == 0 || cli.duration == 0 {
        bail!("--concurrency and --duration must be at least 1");
    }
    if cli.streams.contains(&0) || cli.idle_streams == 0 {
        bail!("stream counts must be at least 1");
    }
    let opts = Opts {
        duration: Duration::from_secs(cli.duration),
        concurrency: cli.concurrency,
        chats: cli.chats.max(1),
        message_size: cli.message_size,
    };
    let all = cli.scenario == Scenario::All;
    let mut run = Run {
        cli,
        opts,
        rows: Vec::new(),
    };
    let result = run.run().await;
    if all || run.rows.len() > 2 {
        println!();
        report::print_table(&run.rows);
    }
    result.context(
        "chat-bench failed: no figure above this line is to be trusted for the failing scenario",
    )
}
