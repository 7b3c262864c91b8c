//! One result per scenario or limit: a table row for people and a JSON line for tools.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::system::CpuSample;

/// What one scenario (or one limit measurement) produced.
#[derive(Debug, Clone)]
pub struct Row {
    /// `send`, `fanout/1000`, `limit:pgbench`, ...
    pub name: String,
    /// What `count` and `rate` count: messages, deliveries, sagas, logins, streams, ...
    pub unit: &'static str,
    pub count: u64,
    /// Per second; `None` for scenarios that are not a rate (idle streams, round trips).
    pub rate: Option<f64>,
    /// Latency percentiles in milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// The limit this figure is compared with, as people read it ("pgbench 5463 tx/s").
    pub limit: Option<String>,
    /// The share of the limit reached: `figure / limit` for rates, `limit / figure` for
    /// latencies and sizes, so 1.0 means "at the limit" and lower is further from it.
    pub ratio: Option<f64>,
    /// Anything else, in the JSON line only (and `note` in the table).
    pub extra: Map<String, Value>,
    /// A short remark for the table's last column.
    pub note: String,
    /// The CPU time of the servers, PostgreSQL and NATS when the measured load started,
    /// for the CPU per unit once they have settled; not printed.
    pub cpu_start: Option<CpuSample>,
    /// How long the measured load ran, for the sustained rate once the system has
    /// drained what the load left it; not printed.
    pub load: Option<Duration>,
}

impl Row {
    pub fn new(name: impl Into<String>, unit: &'static str, count: u64) -> Self {
        Self {
            name: name.into(),
            unit,
            count,
            rate: None,
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            limit: None,
            ratio: None,
            extra: Map::new(),
            note: String::new(),
            cpu_start: None,
            load: None,
        }
    }

    pub fn cpu_from(mut self, sample: CpuSample) -> Self {
        self.cpu_start = Some(sample);
        self
    }

    /// `count` done in `elapsed`: the rate accepted during the load.
    pub fn loaded_for(mut self, elapsed: Duration) -> Self {
        self.load = Some(elapsed);
        self.rate = Some(self.count as f64 / elapsed.as_secs_f64().max(1e-9));
        self
    }

    pub fn rate(mut self, per_sec: f64) -> Self {
        self.rate = Some(per_sec);
        self
    }

    pub fn latencies(mut self, h: &Histogram<u64>) -> Self {
        if !h.is_empty() {
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            self.p50_ms = Some(ms(0.5));
            self.p99_ms = Some(ms(0.99));
            self.p999_ms = Some(ms(0.999));
            self.extra
                .insert("max_ms".into(), json!(h.max() as f64 / 1000.0));
        }
        self
    }

    pub fn extra(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Compares this row's rate with `limit`'s rate (a share of it).
    pub fn against_rate(mut self, what: &str, limit: &Row) -> Self {
        if let (Some(mine), Some(theirs)) = (self.rate, limit.rate) {
            self.limit = Some(format!("{what} {}", fmt_rate(theirs, limit.unit)));
            if theirs > 0.0 {
                self.ratio = Some(mine / theirs);
            }
        }
        self
    }

    /// Compares this row's p50 latency with `limit`'s p50 (limit / mine).
    pub fn against_p50(mut self, what: &str, limit: &Row) -> Self {
        if let (Some(mine), Some(theirs)) = (self.p50_ms, limit.p50_ms) {
            self.limit = Some(format!("{what} p50 {}", fmt_ms(theirs)));
            if mine > 0.0 {
                self.ratio = Some(theirs / mine);
            }
        }
        self
    }

    pub fn to_json(&self) -> Value {
        let mut v = Map::new();
        v.insert("scenario".into(), json!(self.name));
        v.insert("unit".into(), json!(self.unit));
        v.insert("count".into(), json!(self.count));
        let round = |x: f64, digits: i32| {
            let f = 10f64.powi(digits);
            (x * f).round() / f
        };
        if let Some(r) = self.rate {
            v.insert("per_sec".into(), json!(round(r, 1)));
        }
        for (k, x) in [
            ("p50_ms", self.p50_ms),
            ("p99_ms", self.p99_ms),
            ("p999_ms", self.p999_ms),
        ] {
            if let Some(x) = x {
                v.insert(k.into(), json!(round(x, 3)));
            }
        }
        if let Some(l) = &self.limit {
            v.insert("limit".into(), json!(l));
        }
        if let Some(r) = self.ratio {
            v.insert("ratio".into(), json!(round(r, 3)));
        }
        for (k, x) in &self.extra {
            v.insert(k.clone(), x.clone());
        }
        Value::Object(v)
    }
}

pub fn fmt_rate(per_sec: f64, unit: &str) -> String {
    if per_sec >= 100.0 {
        format!("{per_sec:.0} {unit}/s")
    } else {
        format!("{per_sec:.1} {unit}/s")
    }
}

pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.3} ms")
    }
}

const HEADER: [&str; 9] = [
    "scenario", "count", "rate", "p50", "p99", "p99.9", "limit", "ratio", "note",
];

fn cells(r: &Row) -> [String; 9] {
    let opt_ms = |x: Option<f64>| x.map(fmt_ms).unwrap_or_else(|| "-".into());
    [
        r.name.clone(),
        format!("{} {}", r.count, r.unit),
        r.rate
            .map(|x| fmt_rate(x, r.unit))
            .unwrap_or_else(|| "-".into()),
        opt_ms(r.p50_ms),
        opt_ms(r.p99_ms),
        opt_ms(r.p999_ms),
        r.limit.clone().unwrap_or_else(|| "-".into()),
        r.ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into()),
        r.note.clone(),
    ]
}

/// Prints one row the moment it is known (with the header before the first), then its
/// JSON line.
pub fn print_row(r: &Row, first: bool) {
    if first {
        println!("{}", line(&HEADER.map(String::from), &widths(&[])));
    }
    println!("{}", line(&cells(r), &widths(&[])));
    println!("{}", r.to_json());
}

/// The whole table, aligned, as a Markdown table (readable in a terminal and pasteable
/// into the docs).
pub fn print_table(rows: &[Row]) {
    let all: Vec<[String; 9]> = rows.iter().map(cells).collect();
    print_md(&HEADER.map(String::from), &all, &widths(&all));
}

/// A Markdown table: the header, the separator line, the rows, in columns `w` wide.
fn print_md(header: &[String], rows: &[impl AsRef<[String]>], w: &[usize]) {
    println!("{}", md_line(header, w));
    println!(
        "|{}|",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for c in rows {
        println!("{}", md_line(c.as_ref(), w));
    }
}

fn widths(rows: &[[String; 9]]) -> [usize; 9] {
    let mut w = [18, 18, 16, 9, 9, 9, 26, 5, 0];
    for (i, h) in HEADER.iter().enumerate() {
        w[i] = w[i].max(h.len());
    }
    if !rows.is_empty() {
        w = HEADER.map(str::len);
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    w
}

fn line(c: &[String; 9], w: &[usize; 9]) -> String {
    let mut s = String::new();
    for (i, x) in c.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{x:<width$}", width = w[i]));
    }
    s.trim_end().to_owned()
}

fn md_line(c: &[String], w: &[usize]) -> String {
    let mut s = String::from("|");
    for (i, x) in c.iter().enumerate() {
        s.push_str(&format!(" {x:<width$} |", width = w[i]));
    }
    s
}

/// Issue 18's figure for 16 senders into one chat before the work on it (msg/s): a fixed
/// reference, not measured here.
pub const BUSY_CHAT_BEFORE: f64 = 927.0;
/// The original (Go) system's saga rate on this machine, from issue 18 (saga/s): a fixed
/// reference, not measured here.
pub const ORIGINAL_SAGA_RATE: f64 = 850.0;

/// One goal of issue 18: a figure of this run and the bound it must reach.
struct Goal {
    what: &'static str,
    figure: Option<f64>,
    bound: f64,
    /// The figure must be at most the bound (a latency), else at least.
    at_most: bool,
}

/// The goals of issue 18, from this run's rows: ratios measured side by side, and two
/// ratios against the fixed reference figures above. Prints nothing when no row of
/// theirs ran. The goals are for PostgreSQL + NATS: `production` false (the single-server
/// scenarios ran on SQLite) says so above them, and sends on PostgreSQL are then
/// `send-replicated`.
pub fn print_goals(rows: &[Row], production: bool) {
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let rate = |name: &str| find(name).and_then(|r| r.rate);
    let p99 = |name: &str| find(name).and_then(|r| r.p99_ms);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let at_least = |what, figure, bound| Goal {
        what,
        figure,
        bound,
        at_most: false,
    };
    let goals = [
        at_least(
            "send ÷ pgbench one-row INSERT",
            ratio(
                rate("send-replicated").or(rate("send")),
                rate("limit:pgbench"),
            ),
            0.5,
        ),
        at_least(
            "busy-chat ÷ 927 msg/s (issue 18's figure before; fixed reference)",
            ratio(rate("busy-chat"), Some(BUSY_CHAT_BEFORE)),
            3.0,
        ),
        at_least("saga ÷ send", ratio(rate("saga"), rate("send")), 0.5),
        at_least(
            "saga ÷ 850 saga/s (the original system's; fixed reference)",
            ratio(rate("saga"), Some(ORIGINAL_SAGA_RATE)),
            1.5,
        ),
        at_least("fanout/100 deliveries/s", rate("fanout/100"), 150_000.0),
        Goal {
            what: "fanout/100 p99 ms",
            figure: p99("fanout/100"),
            bound: 10.0,
            at_most: true,
        },
        at_least("fanout/1000 deliveries/s", rate("fanout/1000"), 300_000.0),
        Goal {
            what: "fanout/1000 p99 ms",
            figure: p99("fanout/1000"),
            bound: 10.0,
            at_most: true,
        },
        at_least("history streams/s", rate("history"), 4_000.0),
    ];
    if goals.iter().all(|g| g.figure.is_none()) {
        return;
    }
    let fmt = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    println!();
    println!("Goals of issue 18 (rates are sustained: load and drain):");
    if !production {
        println!(
            "(the goals are for PostgreSQL + NATS; the single-server scenarios ran on \
             SQLite here: for reference only)"
        );
    }
    println!();
    let cells: Vec<[String; 4]> = goals
        .iter()
        .map(|g| {
            let bound = format!("{} {}", if g.at_most { "≤" } else { "≥" }, fmt(g.bound));
            match g.figure {
                Some(x) => {
                    let met = if g.at_most {
                        x <= g.bound
                    } else {
                        x >= g.bound
                    };
                    [
                        g.what.to_owned(),
                        fmt(x),
                        bound,
                        if met { "met" } else { "NOT met" }.to_owned(),
                    ]
                }
                None => [g.what.to_owned(), "-".into(), bound, "not run".into()],
            }
        })
        .collect();
    let header = ["goal", "figure", "target", ""].map(String::from);
    let mut w = header.clone().map(|h| h.chars().count());
    for c in &cells {
        for (i, x) in c.iter().enumerate() {
            w[i] = w[i].max(x.chars().count());
        }
    }
    print_md(&header, &cells, &w);
}
