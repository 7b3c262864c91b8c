//! The one definition of the JetStream stream that keeps chat events (`CHAT_EVENTS`).
//!
//! chat-service publishes into it and notification-service consumes from it; whichever
//! starts first creates it, so both must want exactly the same stream, or they would undo
//! each other's settings on every start. Both call [`ensure`] (through [`crate::NatsBus`]
//! and the notifier's consumer) with [`StreamSettings`] read from the same variables:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `NATS_STREAM_REPLICAS` | `1` | copies of the stream in a JetStream cluster (1 to 5; 3 survives a node) |
//! | `NATS_STREAM_MAX_BYTES` | `-1` (no limit) | size at which the oldest events are dropped |
//! | `NATS_STREAM_MAX_AGE` | `7d` | age at which events are dropped (`90s`, `12h`, `7d`, or seconds) |
//!
//! A stream that already exists with other settings (made by an older version, or before
//! the NATS cluster grew) is updated to these: a stream created with async-nats' defaults
//! is R1 and unbounded, and nothing would ever correct it otherwise. Only the settings
//! defined here are changed; whatever else the server or an operator set is kept.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, stream};

use serde::Deserialize;

use chat_common::config::{vars, Env};

use crate::subject;

/// The stream's name unless `NATS_STREAM` names another: the name other tools (the
/// operator, dashboards) know it by.
pub const DEFAULT_NAME: &str = "CHAT_EVENTS";

/// The settings of the events stream that are configurable per installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// `num_replicas`: 1 for a single NATS server, up to 5 in a cluster.
    pub replicas: usize,
    /// `max_bytes`; -1 for no limit.
    pub max_bytes: i64,
    /// `max_age`; zero for no limit.
    pub max_age: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_bytes: -1,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl StreamSettings {
    /// Reads `NATS_STREAM_REPLICAS`, `NATS_STREAM_MAX_BYTES` and `NATS_STREAM_MAX_AGE`
    /// from `env`, with the defaults of the module's table.
    pub fn load(env: &Env) -> Result<Self> {
        /// The variables as given, checked below.
        #[derive(Deserialize)]
        struct Vars {
            nats_stream_replicas: usize,
            nats_stream_max_bytes: i64,
            nats_stream_max_age: String,
        }
        let v: Vars = env
            .with_defaults(&[
                (vars::NATS_STREAM_REPLICAS, "1"),
                (vars::NATS_STREAM_MAX_BYTES, "-1"),
                (vars::NATS_STREAM_MAX_AGE, "7d"),
            ])
            .extract()?;
        let replicas = v.nats_stream_replicas;
        if !(1..=5).contains(&replicas) {
            bail!("NATS_STREAM_REPLICAS={replicas} is not valid: JetStream keeps 1 to 5 copies");
        }
        let max_bytes = v.nats_stream_max_bytes;
        if max_bytes == 0 || max_bytes < -1 {
            bail!("NATS_STREAM_MAX_BYTES={max_bytes} is not valid: a positive size in bytes, or -1 for no limit");
        }
        let age = v.nats_stream_max_age;
        let max_age = parse_duration(&age)
            .with_context(|| format!("NATS_STREAM_MAX_AGE={age:?} is not valid"))?;
        Ok(Self {
            replicas,
            max_bytes,
            max_age,
        })
    }
}

/// `90s`, `15m`, `12h`, `7d`, or a plain number of seconds; `0` is no limit.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("{s:?} is not a number followed by s, m, h or d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        other => bail!("unknown unit {other:?}: use s, m, h or d"),
    };
    n.checked_mul(unit)
        .map(Duration::from_secs)
        .context("the duration is too long")
}

/// The stream `name` capturing every event under `<prefix>.>`, with `settings`.
pub fn config(name: &str, prefix: &str, settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject::all(prefix)],
        max_age: settings.max_age,
        max_bytes: settings.max_bytes,
        num_replicas: settings.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Copies onto `existing` what this module defines; `None` when nothing differs.
fn reconciled(existing: &stream::Config, wanted: &stream::Config) -> Option<stream::Config> {
    let mut next = existing.clone();
    next.subjects = wanted.subjects.clone();
    next.max_age = wanted.max_age;
    next.max_bytes = wanted.max_bytes;
    next.num_replicas = wanted.num_replicas;
    (next != *existing).then_some(next)
}

/// Makes sure the stream exists with these settings: creates it when missing, updates it
/// when it differs. Fails when the server refuses (e.g. more replicas than NATS servers).
pub async fn ensure(
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
    settings: &StreamSettings,
) -> Result<stream::Stream> {
    let wanted = config(name, prefix, settings);
    let stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| anyhow::anyhow!("opening JetStream stream {name}: {e}"))?;
    let Some(next) = reconciled(&stream.cached_info().config, &wanted) else {
        return Ok(stream);
    };
    let before = &stream.cached_info().config;
    tracing::info!(
        stream = name,
        replicas.from = before.num_replicas,
        replicas.to = next.num_replicas,
        max_bytes.from = before.max_bytes,
        max_bytes.to = next.max_bytes,
        max_age_secs.from = before.max_age.as_secs(),
        max_age_secs.to = next.max_age.as_secs(),
        "updating the JetStream stream to the configured settings"
    );
    js.update_stream(&next).await.map_err(|e| {
        anyhow::anyhow!(
            "updating JetStream stream {name} to {} replicas, max_bytes {}, max_age {}s: {e}",
            next.num_replicas,
            next.max_bytes,
            next.max_age.as_secs()
        )
    })?;
    js.get_stream(name)
        .await
        .map_err(|e| anyhow::anyhow!("reading JetStream stream {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn only_the_defined_settings_are_changed() {
        let settings = StreamSettings {
            replicas: 3,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        };
        let wanted = config("S", "p", &settings);
        let mut existing = config("S", "p", &StreamSettings::default());
        existing.duplicate_window = Duration::from_secs(120);
        let next = reconciled(&existing, &wanted).unwrap();
        assert_eq!(next.num_replicas, 3);
        assert_eq!(next.max_bytes, 1 << 20);
        assert_eq!(next.max_age, Duration::from_secs(3600));
        assert_eq!(next.duplicate_window, Duration::from_secs(120));
        assert_eq!(reconciled(&next, &wanted), None);
    }
}
