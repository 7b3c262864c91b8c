//! Typed reads of environment variables. Every service's configuration struct is built from
//! these in one place (its `Config::from_env`), so a missing or malformed variable is reported
//! once, at start-up, with the variable's name.

use std::{fmt::Display, str::FromStr, time::Duration};

use anyhow::{Context, Result};

/// Loads `.env` from the working directory when there is one (development convenience);
/// variables already set in the environment win.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

/// The variable's value, or `None` when unset or empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The variable's value, or `default`.
pub fn var_or(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|| default.to_owned())
}

/// The variable parsed as `T`, or `default` when unset.
pub fn parse_or<T>(name: &str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<T>()
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is not valid: {e}")),
    }
}

/// A duration in seconds, or `default` when unset.
pub fn secs_or(name: &str, default: Duration) -> Result<Duration> {
    let secs: u64 = parse_or(name, default.as_secs())?;
    Ok(Duration::from_secs(secs))
}

/// The variable, read as a file path when `<NAME>_FILE` is set instead (Kubernetes secrets
/// mounted as files).
pub fn secret_var(name: &str) -> Result<Option<String>> {
    if let Some(v) = var(name) {
        return Ok(Some(v));
    }
    let file_var = format!("{name}_FILE");
    match var(&file_var) {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading {file_var}={path}"))
            .map(|s| Some(s.trim().to_owned())),
    }
}

/// Where to serve Prometheus metrics: `METRICS_ADDR` (default `0.0.0.0:9090`), or `None`
/// when it is set to `off`.
pub fn metrics_addr() -> Result<Option<std::net::SocketAddr>> {
    match var("METRICS_ADDR") {
        Some(v) if v.eq_ignore_ascii_case("off") => Ok(None),
        _ => parse_or(
            "METRICS_ADDR",
            std::net::SocketAddr::from(([0, 0, 0, 0], 9090)),
        )
        .map(Some),
    }
}
