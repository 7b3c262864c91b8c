//! One result per scenario or limit: a table row for people and a JSON line for tools.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

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
    /// The servers' CPU time (clock ticks) when the measured load started, for the CPU
    /// per unit once they have settled; not printed.
    pub cpu_start: Option<u64>,
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
        }
    }

    pub fn server_cpu_from(mut self, ticks: Option<u64>) -> Self {
        self.cpu_start = ticks;
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
    let w = widths(&all);
    println!("{}", md_line(&HEADER.map(String::from), &w));
    println!(
        "|{}|",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for c in &all {
        println!("{}", md_line(c, &w));
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

fn md_line(c: &[String; 9], w: &[usize; 9]) -> String {
    let mut s = String::from("|");
    for (i, x) in c.iter().enumerate() {
        s.push_str(&format!(" {x:<width$} |", width = w[i]));
    }
    s
}
