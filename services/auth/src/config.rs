//! The auth service's configuration, read once from the environment at start-up
//! (through [`chat_common::config`]: the shared sections, the loader, the rules for
//! unset, empty and secret values).
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

use std::time::Duration;

use anyhow::Result;
use chat_common::config::{secs, server_defaults, vars, Database, Env, Listen};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use crate::limits::{IpNet, Limit, RateLimits};

/// `DATABASE_URL` when unset: the `users` database of a local PostgreSQL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/users";

/// The defaults of the shared sections, as the module's table gives them.
const SECTION_DEFAULTS: &[(&str, &str)] =
    &server_defaults("0.0.0.0:50051", DEFAULT_DATABASE_URL, "10");

/// The defaults of [`Settings`], as the module's table gives them (the same values as
/// [`Settings::default`], which a test checks).
const SETTINGS_DEFAULTS: &[(&str, &str)] = &[
    (vars::BCRYPT_COST, "12"),
    (vars::ACCESS_TOKEN_TTL_SECS, "900"),
    (vars::REFRESH_TOKEN_TTL_SECS, "2592000"),
    (vars::SERVICE_TOKEN_TTL_SECS, "900"),
    (vars::JWT_ISSUER, "grpc-chat-auth"),
    (vars::JWT_AUDIENCE, "grpc-chat"),
    (vars::RATE_LIMIT_LOGIN_PER_ACCOUNT, "10/300"),
    (vars::RATE_LIMIT_LOGIN_PER_ADDRESS, "30/60"),
    (vars::RATE_LIMIT_REGISTER_PER_ADDRESS, "20/600"),
    (vars::RATE_LIMIT_SERVICE_TOKEN_PER_ADDRESS, "10/60"),
];

/// The split binary's configuration: where to listen, the database, and the service [`Settings`].
/// The table in the module documentation lists the variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`; port 0 picks a free port (see [`crate::Application::local_addr`]).
    pub listen: Listen,
    /// `DATABASE_URL` and `DATABASE_MAX_CONNECTIONS`: the users database.
    pub database: Database,
    /// What the service logic needs, besides its storage.
    pub settings: Settings,
}

/// Everything the service logic needs beyond its storage; shared by the split binary and
/// the embedded server.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// bcrypt work factor, 4 to 31; each step doubles the time of a login and a registration.
    pub bcrypt_cost: u32,
    /// How long an access token is valid.
    #[serde(rename = "access_token_ttl_secs", deserialize_with = "secs")]
    pub access_ttl: Duration,
    /// How long a refresh token is valid, from its issue (each rotation issues a new one).
    #[serde(rename = "refresh_token_ttl_secs", deserialize_with = "secs")]
    pub refresh_ttl: Duration,
    /// How long a service token (from `IssueServiceToken`) is valid.
    #[serde(rename = "service_token_ttl_secs", deserialize_with = "secs")]
    pub service_token_ttl: Duration,
    /// The `iss` claim of every token issued; verifiers must expect the same.
    #[serde(rename = "jwt_issuer")]
    pub issuer: String,
    /// The `aud` claim of every token issued; verifiers must expect the same.
    #[serde(rename = "jwt_audience")]
    pub audience: String,
    /// Ed25519 PKCS#8 PEM private key; `None` generates a key per process (development only: tokens
    /// die with it, and replicas do not accept each other's).
    #[serde(rename = "jwt_signing_key")]
    pub signing_key_pem: Option<SecretString>,
    /// A retired key's public PEM, still published by `GetPublicKeys` during a key rotation so that
    /// tokens it signed keep verifying until they expire.
    #[serde(rename = "jwt_previous_public_key")]
    pub previous_public_key_pem: Option<String>,
    /// The pre-shared secret for `IssueServiceToken`; `None` disables service tokens (the call
    /// fails with FAILED_PRECONDITION).
    pub service_secret: Option<SecretString>,
    /// Rate limits on logins, registrations and service-token requests (read by
    /// [`Settings::load`] from the `RATE_LIMIT_*` variables).
    #[serde(skip)]
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

/// The `RATE_LIMIT_*` variables, as [`RateLimits`].
#[derive(Deserialize)]
struct RateLimitVars {
    #[serde(rename = "rate_limit_login_per_account", deserialize_with = "limit")]
    login_per_account: Limit,
    #[serde(rename = "rate_limit_login_per_address", deserialize_with = "limit")]
    login_per_address: Limit,
    #[serde(rename = "rate_limit_register_per_address", deserialize_with = "limit")]
    register_per_address: Limit,
    #[serde(
        rename = "rate_limit_service_token_per_address",
        deserialize_with = "limit"
    )]
    service_token_per_address: Limit,
    #[serde(
        rename = "rate_limit_trusted_proxies",
        default,
        deserialize_with = "proxies"
    )]
    trusted_proxies: Vec<IpNet>,
}

fn limit<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Limit, D::Error> {
    let text = String::deserialize(d)?;
    Limit::parse(&text).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
}

fn proxies<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<IpNet>, D::Error> {
    let text = String::deserialize(d)?;
    IpNet::parse_list(&text).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
}

impl Settings {
    /// Reads the variables of the module documentation's table from `env`, defaults for
    /// those unset; fails on a malformed value (a `BCRYPT_COST` out of range, a bad duration
    /// or rate limit) rather than guessing.
    pub fn load(env: &Env) -> Result<Self> {
        let env = env.with_defaults(SETTINGS_DEFAULTS);
        let settings: Settings = env.extract()?;
        let bcrypt_cost = settings.bcrypt_cost;
        if !(4..=31).contains(&bcrypt_cost) {
            anyhow::bail!("BCRYPT_COST={bcrypt_cost} must be between 4 and 31");
        }
        let l: RateLimitVars = env.extract()?;
        Ok(Self {
            rate_limits: RateLimits {
                login_per_account: l.login_per_account,
                login_per_address: l.login_per_address,
                register_per_address: l.register_per_address,
                service_token_per_address: l.service_token_per_address,
                trusted_proxies: l.trusted_proxies,
            },
            ..settings
        })
    }
}

chat_common::config_loader!(Config { listen, database } with [SECTION_DEFAULTS]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let config = Config::load(&Env::default()).unwrap();
        assert_eq!(config.listen.addr.to_string(), "0.0.0.0:50051");
        assert_eq!(config.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(config.database.max_connections, 10);
        assert_eq!(
            format!("{:?}", config.settings),
            format!("{:?}", Settings::default())
        );
    }

    #[test]
    fn values_are_read_and_checked() {
        let env = Env::from_vars([
            ("BCRYPT_COST", "5"),
            ("REFRESH_TOKEN_TTL_SECS", "60"),
            ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "off"),
            ("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
        ])
        .unwrap();
        let s = Settings::load(&env).unwrap();
        assert_eq!(s.bcrypt_cost, 5);
        assert_eq!(s.refresh_ttl, Duration::from_secs(60));
        assert!(s.rate_limits.login_per_account.is_off());
        assert_eq!(s.rate_limits.trusted_proxies.len(), 2);
        let bad = |k: &str, v: &str| {
            Settings::load(&Env::from_vars([(k, v)]).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("BCRYPT_COST", "40").starts_with("BCRYPT_COST=40 must be"));
        assert!(bad("BCRYPT_COST", "x").starts_with("BCRYPT_COST=\"x\" is not valid"));
        let e = bad("RATE_LIMIT_LOGIN_PER_ADDRESS", "ten");
        assert!(
            e.starts_with("RATE_LIMIT_LOGIN_PER_ADDRESS=\"ten\" is not valid: must be"),
            "{e}"
        );
        let e = bad("RATE_LIMIT_TRUSTED_PROXIES", "nope");
        assert!(
            e.starts_with("RATE_LIMIT_TRUSTED_PROXIES=\"nope\" is not valid"),
            "{e}"
        );
    }
}
