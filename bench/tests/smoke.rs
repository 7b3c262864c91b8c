//! Smoke runs of every chat-bench scenario: a second or two each, tiny sizes, against a
//! `chat-server` the bench starts itself (and PostgreSQL + NATS for the replicated ones, as
//! the rest of the test suite). They check that each scenario succeeds and reports
//! non-zero counts, never how fast anything is.
//!
//! `chat-server` is another package's binary, which `cargo test` does not necessarily
//! build for this package's tests; the tests run `cargo build --bin chat-server` once (a
//! no-op when it is up to date), in the same profile and target directory as this test's
//! own chat-bench, so the bench finds it next to itself.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

fn bench_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chat-bench"))
}

/// Builds chat-server into the directory chat-bench lives in; the outcome is shared by
/// every test of this binary.
fn ensure_server_built() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = bench_exe();
        let profile_dir = exe.parent().ok_or("chat-bench has no directory")?;
        let target_dir = profile_dir
            .parent()
            .ok_or("chat-bench's directory has no parent")?;
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(other) => other.to_owned(),
            None => return Err("cannot tell the build profile".into()),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("no workspace directory")?;
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "chat-server",
                "--bin",
                "chat-server",
                "--profile",
            ])
            .arg(&profile)
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(workspace)
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build --bin chat-server failed: {status}"));
        }
        let server = exe.with_file_name(format!("chat-server{}", std::env::consts::EXE_SUFFIX));
        if !server.is_file() {
            return Err(format!("{} missing after the build", server.display()));
        }
        Ok(())
    })
}

/// Runs `chat-bench <args>` with tiny sizes, expects success, and returns its JSON lines.
fn run_bench(args: &[&str]) -> Vec<serde_json::Value> {
    if let Err(e) = ensure_server_built() {
        panic!("{e}");
    }
    let mut child = Command::new(bench_exe())
        .args([
            "--duration",
            "1",
            "--concurrency",
            "2",
            "--chats",
            "2",
            "--streams",
            "10",
            "--idle-streams",
            "10",
            "--bcrypt-cost",
            "4",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chat-bench");
    // Read stdout while the bench runs, so a full pipe never stalls it.
    let mut out = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chat-bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chat-bench {args:?} still running after 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader.join().expect("stdout reader");
    println!("{stdout}");
    assert!(status.success(), "chat-bench {args:?} failed: {status}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!rows.is_empty(), "chat-bench {args:?} printed no JSON line");
    for row in &rows {
        let count = row["count"].as_u64().unwrap_or(0);
        assert!(count > 0, "zero count in {row}");
        if let Some(rate) = row.get("per_sec") {
            assert!(rate.as_f64().unwrap_or(0.0) > 0.0, "zero rate in {row}");
        }
    }
    rows
}

fn row<'a>(rows: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["scenario"] == name)
        .unwrap_or_else(|| panic!("no {name} row in {rows:?}"))
}

#[test]
fn send_with_the_sqlite_limit() {
    let rows = run_bench(&["send"]);
    row(&rows, "limit:sqlite");
    let send = row(&rows, "send");
    assert!(send["ratio"].as_f64().is_some(), "{send}");
    assert!(send["p99_ms"].as_f64().is_some(), "{send}");
    // The rate is sustained: the load and the drain of what it owes.
    assert!(send["accepted_per_sec"].as_f64().is_some(), "{send}");
    assert!(send["drain_s"].as_f64().is_some(), "{send}");
    assert!(send["cpu_servers_us_per_unit"].as_f64().is_some(), "{send}");
}

#[test]
fn send_on_postgres_counts_every_process_beside_both_pgbench_limits() {
    let rows = run_bench(&["send", "--backend", "postgres"]);
    row(&rows, "limit:pgbench");
    row(&rows, "limit:pgbench-per-message");
    let send = row(&rows, "send");
    assert_eq!(send["replicas"], 2, "{send}");
    assert!(send["ratio_per_message_sql"].as_f64().is_some(), "{send}");
    for part in ["servers", "postgres", "nats"] {
        let key = format!("cpu_{part}_us_per_unit");
        assert!(send[key.as_str()].as_f64().is_some(), "{key} in {send}");
    }
    let total = send["cpu_us_per_unit"].as_f64().unwrap_or(0.0);
    assert!(total > 0.0, "{send}");
}

#[test]
fn busy_chat_sends_into_one_chat() {
    let rows = run_bench(&["busy-chat"]);
    let b = row(&rows, "busy-chat");
    assert_eq!(b["chats"], 1, "{b}");
    assert!(b["ratio"].as_f64().is_some(), "{b}");
}

#[test]
fn history_opens_streams_on_a_chat_of_twenty_messages() {
    let rows = run_bench(&["history"]);
    let h = row(&rows, "history");
    assert_eq!(h["history_messages"], 20, "{h}");
    assert!(h["p99_ms"].as_f64().is_some(), "{h}");
}

#[test]
fn saga_with_direct_sends_as_its_limit() {
    let rows = run_bench(&["saga"]);
    row(&rows, "send");
    assert!(row(&rows, "saga")["ratio"].as_f64().is_some());
}

#[test]
fn fanout_to_ten_streams() {
    let rows = run_bench(&["fanout"]);
    row(&rows, "limit:nats-fanout/10");
    let f = row(&rows, "fanout/10");
    assert_eq!(f["streams"], 10);
    assert!(f["messages"].as_u64().unwrap_or(0) > 0, "{f}");
}

#[test]
fn idle_streams_report_memory() {
    let rows = run_bench(&["streams"]);
    let s = row(&rows, "streams");
    assert_eq!(s["count"], 10);
    assert!(s["rss_after_kib"].as_u64().unwrap_or(0) > 0, "{s}");
}

#[test]
fn login_with_the_bcrypt_limit() {
    let rows = run_bench(&["login"]);
    row(&rows, "limit:bcrypt");
    assert!(row(&rows, "login")["ratio"].as_f64().is_some());
}

#[test]
fn cross_replica_on_postgres_and_nats() {
    let rows = run_bench(&["cross-replica"]);
    row(&rows, "limit:nats-rtt");
    assert!(row(&rows, "cross-replica")["p50_ms"].as_f64().is_some());
}

#[test]
fn limits_alone() {
    let rows = run_bench(&["limits"]);
    for name in [
        "limit:sqlite",
        "limit:pgbench",
        "limit:pgbench-per-message",
        "limit:nats-rtt",
        "limit:nats-rate",
        "limit:bcrypt",
    ] {
        row(&rows, name);
    }
}

#[test]
fn guessing_one_account_is_refused_after_ten_wrong_passwords() {
    let rows = run_bench(&["guess"]);
    let g = row(&rows, "guess");
    // The server's default: 10 failed logins per account in 5 minutes. Exactly ten guesses
    // are checked, however many attackers race, and the rest are refused while the user
    // from another address keeps logging in (the scenario fails if they are refused).
    assert_eq!(g["count"], 10, "{g}");
    assert!(g["refused"].as_u64().unwrap_or(0) > 0, "{g}");
    assert!(g["legit_logins"].as_u64().unwrap_or(0) > 0, "{g}");
}
