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
mod per_message_sql;
mod report;
mod scenarios;
mod system;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use report::Row;
use scenarios::Opts;
use system::{Deployment, ServerOptions, Storage, System};

/// Longest wait for the system to finish the background work a scenario left it. A drain
/// takes about as long as the load that caused it; longer means something else (another
/// user of this PostgreSQL) keeps it busy, and the note says the system was not idle.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

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
    /// Stream counts for `fanout`, comma-separated (default 100,1000,10000; 100,1000 for
    /// `all` on PostgreSQL + NATS).
    #[arg(long, value_delimiter = ',', global = true)]
    streams: Option<Vec<usize>>,
    /// Senders writing into `fanout`'s chat at once (1: one message in flight, the
    /// figure bound by one send's latency).
    #[arg(long, default_value_t = 4, global = true)]
    fanout_senders: usize,
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
    /// scenarios (`postgres` starts two replicas on PostgreSQL + NATS, and the load
    /// spreads over both). Default: `postgres` for `all` (the production path), `sqlite`
    /// (one embedded server) for a scenario alone.
    #[arg(long, value_enum, global = true)]
    backend: Option<Storage>,
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
    /// N senders into M chats: messages stored per second (sustained: until the emails
    /// they owe are sent) and send latency; limit: the storage engine's one-row commit
    /// rate (SQLite, or pgbench on PostgreSQL, beside pgbench running the per-message SQL).
    Send,
    /// N senders into one chat of 8 members, as `send`; limit on PostgreSQL: pgbench
    /// running the per-message SQL on one chat.
    BusyChat,
    /// The same load through SagaOrchestrator.SendMessage (stub email sender); limit:
    /// direct sends.
    Saga,
    /// S streams on one chat, `--fanout-senders` senders into it: send→arrival per stream
    /// and deliveries per second; limit: raw NATS fan-out to S subscriptions.
    Fanout,
    /// N clients opening a Connect stream on a chat of 20 messages until HistoryEnd, over
    /// and over: streams opened per second and the time to HistoryEnd.
    History,
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
    /// Every scenario with its limit, then the whole table and the goals of issue 18. On
    /// PostgreSQL + NATS (default): send, busy-chat, saga, fanout, history, login and
    /// cross-replica on two replicas; with `--backend sqlite`: the single-server
    /// scenarios on one embedded server (and streams), then cross-replica on the pair.
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
        match self.backend() {
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

    /// The storage this bench's own servers use: `--backend`, else PostgreSQL + NATS for
    /// `all` and SQLite for a scenario alone.
    fn backend(&self) -> Storage {
        self.cli
            .backend
            .unwrap_or(if self.cli.scenario == Scenario::All {
                Storage::Postgres
            } else {
                Storage::Sqlite
            })
    }

    fn stream_counts(&self) -> Vec<usize> {
        match &self.cli.streams {
            Some(s) => s.clone(),
            None if self.cli.scenario == Scenario::All && self.backend() == Storage::Postgres => {
                vec![100, 1000]
            }
            None => vec![100, 1000, 10_000],
        }
    }

    /// Waits until the system is idle before a load starts, so that no backlog of an
    /// earlier scenario (this run's or someone else's, for `--server`) is measured.
    async fn quiesce(&self, systems: &[System]) {
        let s = system::settle(systems, SETTLE_LIMIT).await;
        if s.busy >= Duration::from_secs(1) {
            eprintln!(
                "chat-bench: waited {:.0} s for the system to go idle{}",
                s.busy.as_secs_f64(),
                if s.idle { "" } else { " (it did not)" }
            );
        }
    }

    /// Lets `systems`, PostgreSQL and NATS finish what the scenario left them (see
    /// [`system::settle`]) and notes on `row` how long that took.
    ///
    /// With `sustained`, the row's rate becomes its count over the load and the drain
    /// together: the rate the system sustains, not the rate it accepted while a backlog
    /// grew (the accepted rate stays in the note). When the row knows the CPU time at the
    /// start of its load ([`Row::cpu_start`]), it also notes the CPU time per counted unit
    /// of the servers, PostgreSQL and NATS, the background work included: a steadier
    /// figure than a rate on a shared machine.
    async fn settle(&self, systems: &[System], row: Row, sustained: bool) -> Row {
        let settled = system::settle(systems, SETTLE_LIMIT).await;
        let end = system::cpu_sample(systems);
        let busy = settled.busy.as_secs_f64();
        let mut notes = vec![row.note.clone()];
        let mut row = row.extra("drain_s", (busy * 10.0).round() / 10.0);
        if !settled.idle {
            notes.push(format!("NOT idle after {busy:.0} s (other load?)"));
        }
        match (sustained, row.load, row.rate) {
            (true, Some(load), Some(accepted)) => {
                let load = load.as_secs_f64();
                row.rate = Some(row.count as f64 / (load + busy));
                row = row
                    .extra("accepted_per_sec", accepted.round())
                    .extra("load_s", (load * 10.0).round() / 10.0);
                notes.push(format!(
                    "sustained: {load:.1} s load + {busy:.1} s drain; accepted {}",
                    report::fmt_rate(accepted, row.unit)
                ));
            }
            _ if busy >= 1.0 => notes.push(format!("system busy {busy:.0} s after")),
            _ => {}
        }
        if let Some(start) = row.cpu_start.take() {
            if row.count > 0 {
                let used = end.since(&start);
                let count = row.count as f64;
                let per =
                    |ticks: u64| (ticks as f64 * system::TICK.as_micros() as f64 / count).round();
                let total = per(used.total_ticks());
                let servers = used.servers.map(per);
                notes.push(format!(
                    "CPU {total:.0} µs/{} (servers {}, postgres {:.0}, nats {:.0})",
                    row.unit,
                    servers.map_or("unknown".to_owned(), |s| format!("{s:.0}")),
                    per(used.postgres),
                    per(used.nats)
                ));
                row = row
                    .extra("cpu_us_per_unit", total)
                    .extra("cpu_servers_us_per_unit", servers)
                    .extra("cpu_postgres_us_per_unit", per(used.postgres))
                    .extra("cpu_nats_us_per_unit", per(used.nats));
            }
        }
        let note = notes.join("; ");
        row.note(note)
    }

    /// Measures the storage limit beside a send row (SQLite's one-row commits, or on
    /// PostgreSQL pgbench's one-row INSERT and pgbench running the per-message SQL on as
    /// many chats), and compares the row with it: with the one-row INSERT when it ran,
    /// else with the per-message SQL.
    async fn against_storage(
        &mut self,
        row: Row,
        storage: Storage,
        chats: usize,
    ) -> anyhow::Result<Row> {
        if !self.limits() {
            return Ok(row);
        }
        let o = Opts {
            chats,
            ..self.opts.clone()
        };
        let url = self.cli.database_url.clone();
        Ok(match storage {
            Storage::Sqlite => {
                let l = self
                    .push(limits::sqlite(o.concurrency, chats, o.duration, o.message_size).await?);
                row.against_rate("sqlite", &l)
            }
            Storage::Postgres => {
                let one_row = if chats > 1 {
                    Some(self.push(limits::pgbench(&url, &o).await?))
                } else {
                    None
                };
                let sql = self.push(limits::pgbench_per_message(&url, &o).await?);
                let row = match (row.rate, sql.rate) {
                    (Some(mine), Some(theirs)) if theirs > 0.0 => {
                        let r = mine / theirs;
                        let note = format!("{}; {r:.2} of pgbench per-message SQL", row.note);
                        row.extra("ratio_per_message_sql", (r * 1000.0).round() / 1000.0)
                            .note(note)
                    }
                    _ => row,
                };
                match one_row {
                    Some(l) => row.against_rate("pgbench one-row INSERT", &l),
                    None => row.against_rate("pgbench per-message SQL", &sql),
                }
            }
        })
    }

    /// `send` (or `busy-chat` with `chats` 1) on `systems`, drained, beside its storage
    /// limit.
    async fn sends(&mut self, name: &str, systems: &[System], chats: usize) -> anyhow::Result<Row> {
        self.quiesce(systems).await;
        let opts = Opts {
            chats,
            ..self.opts.clone()
        };
        let row = scenarios::send(name, systems, &opts).await?;
        let row = self.settle(systems, row, true).await;
        let row = self.against_storage(row, systems[0].storage, chats).await?;
        Ok(self.push(row))
    }

    async fn send(&mut self, name: &str, systems: &[System]) -> anyhow::Result<Row> {
        self.sends(name, systems, self.opts.chats).await
    }

    async fn busy_chat(&mut self, systems: &[System]) -> anyhow::Result<Row> {
        self.sends("busy-chat", systems, 1).await
    }

    async fn saga(&mut self, systems: &[System], send: Option<Row>) -> anyhow::Result<()> {
        let send = match send {
            Some(s) => s,
            None => self.send("send", systems).await?,
        };
        // Against a server someone else runs too: no figure taken against the backlog
        // of the sends above.
        self.quiesce(systems).await;
        let row = scenarios::saga(systems, &self.opts).await?;
        let row = self.settle(systems, row, true).await;
        self.push(row.against_rate("send", &send));
        Ok(())
    }

    async fn fanout(&mut self, system: &System) -> anyhow::Result<()> {
        let systems = std::slice::from_ref(system);
        for s in self.stream_counts() {
            self.quiesce(systems).await;
            let row = scenarios::fanout(system, s, &self.opts).await?;
            let row = self.settle(systems, row, false).await;
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

    async fn history(&mut self, systems: &[System]) -> anyhow::Result<()> {
        self.quiesce(systems).await;
        let row = scenarios::history(systems, &self.opts).await?;
        self.push(row);
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
                | Scenario::BusyChat
                | Scenario::Saga
                | Scenario::Fanout
                | Scenario::History
                | Scenario::Streams
                | Scenario::Login
                | Scenario::Guess
                | Scenario::All
        );
        let mut deployment = None;
        let mut send_row = None;
        if single {
            let d = self.deploy_single().await?;
            let systems = d.systems.clone();
            let sys = systems[0].clone();
            eprintln!(
                "chat-bench: driving {} at {}",
                sys.label,
                systems
                    .iter()
                    .map(|s| s.chat.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            if matches!(scenario, Scenario::Send | Scenario::All) {
                send_row = Some(self.send("send", &systems).await?);
            }
            if matches!(scenario, Scenario::BusyChat | Scenario::All) {
                self.busy_chat(&systems).await?;
            }
            if matches!(scenario, Scenario::Saga | Scenario::All) {
                self.saga(&systems, send_row.clone()).await?;
            }
            if matches!(scenario, Scenario::Fanout | Scenario::All) {
                self.fanout(&sys).await?;
            }
            if matches!(scenario, Scenario::History | Scenario::All) {
                self.history(&systems).await?;
            }
            let sqlite_all = scenario == Scenario::All && self.backend() == Storage::Sqlite;
            if scenario == Scenario::Streams || sqlite_all {
                if self.starts_servers() && self.backend() == Storage::Sqlite {
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
            let l = limits::pgbench(&self.cli.database_url, &o).await?;
            self.push(l);
            let l = limits::pgbench_per_message(&self.cli.database_url, &o).await?;
            self.push(l);
            let l = limits::nats_rtt(&self.cli.nats_url, o.message_size, o.duration).await?;
            self.push(l);
            for s in self.stream_counts() {
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
    if cli.streams.as_ref().is_some_and(|s| s.contains(&0)) || cli.idle_streams == 0 {
        bail!("stream counts must be at least 1");
    }
    let opts = Opts {
        duration: Duration::from_secs(cli.duration),
        concurrency: cli.concurrency,
        chats: cli.chats.max(1),
        message_size: cli.message_size,
        fanout_senders: cli.fanout_senders.max(1),
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
        report::print_goals(&run.rows, run.backend() == Storage::Postgres);
    }
    result.context(
        "chat-bench failed: no figure above this line is to be trusted for the failing scenario",
    )
}
