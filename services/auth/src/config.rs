//! The auth service's configuration, read once from the environment at start-up.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LISTEN_ADDR` | `0.0.0.0:50051` | gRPC address |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/users` | the `users` database (created when missing) |
//! | `DATABASE_MAX_CONNECTIONS` | `10` | pool size |
//! | `BCRYPT_COST` | `12` | bcrypt work factor (4 to 31) |
//! | `ACCESS_TOKEN_TTL_SECS` | `900` | access token lifetime |
//! | `REFRESH_TOKEN_TTL_SECS` | `2592000` | refresh token lifetime (30 days) |
//! | `SERVICE_TOKEN_TTL_SECS` | `900` | service token lifetime |
//! | `JWT_ISSUER` / `JWT_AUDIENCE` | `grpc-chat-auth` / `grpc-chat` | `iss` and `aud` claims |
//! | `JWT_SIGNING_KEY` (or `JWT_SIGNING_KEY_FILE`) | generated, with a warning | Ed25519 PKCS#8 PEM |
//! | `JWT_PREVIOUS_PUBLIC_KEY` (or `_FILE`) | none | a retired key's public PEM, still accepted during a rotation |
//! | `SERVICE_SECRET` (or `SERVICE_SECRET_FILE`) | none: service tokens disabled | pre-shared secret for `IssueServiceToken` |
//! | `RATE_LIMIT_LOGIN_PER_ACCOUNT` | `10/300` | failed logins per account (email) per window: `<count>/<seconds>`, or `off` |
//! | `RATE_LIMIT_LOGIN_PER_ADDRESS` | `30/60` | failed logins per client address per window |
//! | `RATE_LIMIT_REGISTER_PER_ADDRESS` | `20/600` | registrations per client address per window |
//! | `RATE_LIMIT_SERVICE_TOKEN_PER_ADDRESS` | `10/60` | wrong service secrets per client address per window |
//! | `RATE_LIMIT_TRUSTED_PROXIES` | none | comma-separated IPs or networks (`10.0.0.0/8`) whose `x-forwarded-for` names the client |
//!
//! The rate limits are counted in the `users` database, so they hold across replicas; see
//! [`crate::limits`].

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use chat_common::config::{parse_or, secret_var, secs_or, var, var_or};
use secrecy::SecretString;

use crate::limits::{IpNet, Limit, RateLimits};

/// `DATABASE_URL` when unset: the `users` database of a local PostgreSQL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/users";

/// The split binary's configuration: where to listen, the database, and the service [`Settings`].
/// The table in the module documentation lists the variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`; port 0 picks a free port (see [`crate::Application::local_addr`]).
    pub listen_addr: SocketAddr,
    /// `DATABASE_URL`: `postgres://...` or `sqlite://...`; the database is created when missing.
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS`: the pool size.
    pub database_max_connections: u32,
    /// What the service logic needs, besides its storage.
    pub settings: Settings,
}

/// Everything the service logic needs beyond its storage; shared by the split binary and
/// the embedded server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// bcrypt work factor, 4 to 31; each step doubles the time of a login and a registration.
    pub bcrypt_cost: u32,
    /// How long an access token is valid.
    pub access_ttl: Duration,
    /// How long a refresh token is valid, from its issue (each rotation issues a new one).
    pub refresh_ttl: Duration,
    /// How long a service token (from `IssueServiceToken`) is valid.
    pub service_token_ttl: Duration,
    /// The `iss` claim of every token issued; verifiers must expect the same.
    pub issuer: String,
    /// The `aud` claim of every token issued; verifiers must expect the same.
    pub audience: String,
    /// Ed25519 PKCS#8 PEM private key; `None` generates a key per process (development only: tokens
    /// die with it, and replicas do not accept each other's).
    pub signing_key_pem: Option<SecretString>,
    /// A retired key's public PEM, still published by `GetPublicKeys` during a key rotation so that
    /// tokens it signed keep verifying until they expire.
    pub previous_public_key_pem: Option<String>,
    /// The pre-shared secret for `IssueServiceToken`; `None` disables service tokens (the call
    /// fails with FAILED_PRECONDITION).
    pub service_secret: Option<SecretString>,
    /// Rate limits on logins, registrations and service-token requests.
    pub rate_limits: RateLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bcrypt_cost: 12,
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            service_token_ttl: Duration::from_secs(900),
            issuer: "grpc-chat-auth".into(),
            audience: "grpc-chat".into(),
            signing_key_pem: None,
            previous_public_key_pem: None,
            service_secret: None,
            rate_limits: RateLimits::default(),
        }
    }
}

impl Settings {
    /// Reads the variables of the module documentation's table, defaults for those unset; fails on
    /// a malformed value (a `BCRYPT_COST` out of range, a bad duration or rate limit) rather than
    /// guessing.
    pub fn from_env() -> Result<Self> {
        let d = Settings::default();
        let bcrypt_cost: u32 = parse_or("BCRYPT_COST", d.bcrypt_cost)?;
        if !(4..=31).contains(&bcrypt_cost) {
            anyhow::bail!("BCRYPT_COST={bcrypt_cost} must be between 4 and 31");
        }
        Ok(Self {
            bcrypt_cost,
            access_ttl: secs_or("ACCESS_TOKEN_TTL_SECS", d.access_ttl)?,
            refresh_ttl: secs_or("REFRESH_TOKEN_TTL_SECS", d.refresh_ttl)?,
            service_token_ttl: secs_or("SERVICE_TOKEN_TTL_SECS", d.service_token_ttl)?,
            issuer: var_or("JWT_ISSUER", &d.issuer),
            audience: var_or("JWT_AUDIENCE", &d.audience),
            signing_key_pem: secret_var("JWT_SIGNING_KEY")?.map(SecretString::from),
            previous_public_key_pem: secret_var("JWT_PREVIOUS_PUBLIC_KEY")?,
            service_secret: secret_var("SERVICE_SECRET")?.map(SecretString::from),
            rate_limits: rate_limits_from_env(d.rate_limits)?,
        })
    }
}

fn limit_or(name: &str, default: Limit) -> Result<Limit> {
    match var(name) {
        None => Ok(default),
        Some(v) => {
            Limit::parse(&v).map_err(|e| anyhow::anyhow!("{name}={v:?} is not valid: {e:#}"))
        }
    }
}

fn rate_limits_from_env(d: RateLimits) -> Result<RateLimits> {
    let trusted_proxies = match var("RATE_LIMIT_TRUSTED_PROXIES") {
        None => d.trusted_proxies,
        Some(v) => IpNet::parse_list(&v)
            .map_err(|e| anyhow::anyhow!("RATE_LIMIT_TRUSTED_PROXIES={v:?} is not valid: {e:#}"))?,
    };
    Ok(RateLimits {
        login_per_account: limit_or("RATE_LIMIT_LOGIN_PER_ACCOUNT", d.login_per_account)?,
        login_per_address: limit_or("RATE_LIMIT_LOGIN_PER_ADDRESS", d.login_per_address)?,
        register_per_address: limit_or("RATE_LIMIT_REGISTER_PER_ADDRESS", d.register_per_address)?,
        service_token_per_address: limit_or(
            "RATE_LIMIT_SERVICE_TOKEN_PER_ADDRESS",
            d.service_token_per_address,
        )?,
        trusted_proxies,
    })
}

impl Config {
    /// Reads the whole configuration from the environment; see [`Settings::from_env`] for what
    /// fails.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            listen_addr: parse_or("LISTEN_ADDR", SocketAddr::from(([0, 0, 0, 0], 50051)))?,
            database_url: var_or("DATABASE_URL", DEFAULT_DATABASE_URL),
            database_max_connections: parse_or("DATABASE_MAX_CONNECTIONS", 10)?,
            settings: Settings::from_env()?,
        })
    }
}
