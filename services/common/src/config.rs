//! Configuration, read once from the environment into typed structs.
//!
//! Each service's configuration is a struct made of sections: the ones every service
//! shares, defined here ([`Listen`], [`Database`], [`Nats`], [`Upstream`],
//! [`ServiceSecret`]), and the service's own `Settings`. Every section is a serde struct
//! whose field names are the variables' names (the constants of [`vars`]), loaded by the
//! one loader, [`Env::extract`] (figment underneath). A service's `config.rs` keeps the
//! table of its variables and a table of defaults in the same form, so a default is
//! parsed exactly like a value someone set.
//!
//! The rules every variable follows, as before this loader:
//! - unset and empty (or blank) are the same: the default applies;
//! - surrounding blanks are ignored, except in a secret given directly;
//! - a secret (see [`vars::SECRETS`]) may be given as `<NAME>_FILE`, the path of a file
//!   holding it (Kubernetes secrets mounted as files); its value never appears in an error;
//! - a value that does not parse fails start-up, with a message that names the variable:
//!   `BCRYPT_COST="x" is not valid: ...`.
//!
//! Why the sections are loaded one by one rather than flattened into one serde struct:
//! serde's `flatten` buffers the values, after which the loader can neither parse a
//! number out of its text nor say which variable was wrong. And why figment's own `Env`
//! provider is not used: it guesses a type from each value (`8080` becomes a number), so
//! a numeric secret or name would fail to load as a string; here every value stays text
//! until its field's type asks for a number.

use std::{collections::BTreeMap, fmt::Display, net::SocketAddr, str::FromStr, time::Duration};

use anyhow::{Context, Result};
use figment::{providers::Serialized, Figment};
use secrecy::SecretString;
use serde::{de::DeserializeOwned, Deserialize, Deserializer};

pub use chat_env as vars;

/// Loads `.env` from the working directory when there is one (development convenience);
/// variables already set in the environment win.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

/// The variable's value, or `None` when unset or empty (for the few variables read outside
/// a configuration struct: telemetry's, which are read before any configuration).
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A snapshot of the environment, with defaults, from which configuration sections are
/// extracted. Cheap to layer: [`Env::with_defaults`] returns a new one.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// Values by lower-case name (serde's field names), defaults already under the set ones.
    values: BTreeMap<String, String>,
}

impl Env {
    /// The process's environment (call [`load_dotenv`] first to include `.env`); fails when
    /// a `<SECRET>_FILE` cannot be read.
    pub fn load() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// An environment of exactly `vars` (tests, and callers that compose one in code).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let set: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, v)| !v.trim().is_empty() && *k == k.to_ascii_uppercase())
            .collect();
        let mut values = BTreeMap::new();
        for (name, value) in &set {
            let value = if vars::SECRETS.contains(&name.as_str()) {
                value.clone()
            } else {
                value.trim().to_owned()
            };
            values.insert(name.to_ascii_lowercase(), value);
        }
        for secret in vars::SECRETS {
            let file_var = format!("{secret}{}", vars::FILE_SUFFIX);
            if let (None, Some(path)) = (set.get(*secret), set.get(&file_var)) {
                let value = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {file_var}={path}"))?;
                values.insert(secret.to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        Ok(Self { values })
    }

    /// This environment with `defaults` (`(variable, value)`, values written as someone
    /// would set them) for the variables it does not set.
    pub fn with_defaults(&self, defaults: &[(&str, &str)]) -> Self {
        let mut values = self.values.clone();
        for (name, value) in defaults {
            values
                .entry(name.to_ascii_lowercase())
                .or_insert_with(|| (*value).to_owned());
        }
        Self { values }
    }

    /// Whether `name` is set (not merely defaulted), for a choice that depends on it.
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(&name.to_ascii_lowercase())
    }

    /// The section `T`, its fields read from the variables of the same names; fails on a
    /// value that does not parse, naming the variable.
    pub fn extract<T: DeserializeOwned>(&self) -> Result<T> {
        Figment::from(Serialized::defaults(&self.values))
            .extract_lossy()
            .map_err(|e| self.explain(e))
    }

    /// Turns figment's error into `NAME="value" is not valid: reason`.
    fn explain(&self, error: figment::Error) -> anyhow::Error {
        let Some(key) = error.path.last() else {
            return anyhow::anyhow!("{}", error.kind);
        };
        let name = key.to_ascii_uppercase();
        match self.values.get(key) {
            Some(_) if vars::SECRETS.contains(&name.as_str()) => {
                anyhow::anyhow!("{name} is not valid: {}", error.kind)
            }
            Some(value) => anyhow::anyhow!("{name}={value:?} is not valid: {}", error.kind),
            None => anyhow::anyhow!("{name} is required: {}", error.kind),
        }
    }
}

/// A service's defaults for [`Listen`] and [`Database`] (its port, its database, its
/// pool size), as a table of defaults like the others.
pub const fn server_defaults(
    listen_addr: &'static str,
    database_url: &'static str,
    max_connections: &'static str,
) -> [(&'static str, &'static str); 3] {
    [
        (vars::LISTEN_ADDR, listen_addr),
        (vars::DATABASE_URL, database_url),
        (vars::DATABASE_MAX_CONNECTIONS, max_connections),
    ]
}

/// Writes a service `Config`'s `load(&Env)` and `from_env()`, the same in every service:
/// each named shared section extracted from the environment with the given tables of
/// defaults (layered in that order), one by one (see the module documentation for why),
/// and the `settings` field read by the service's own `Settings::load`, with its own
/// defaults.
///
/// `chat_common::config_loader!(Config { listen, database } with [SECTION_DEFAULTS]);`
#[macro_export]
macro_rules! config_loader {
    ($config:ident { $($section:ident),+ $(,)? } with [$($defaults:expr),+ $(,)?]) => {
        impl $config {
            /// Reads the whole configuration from `env`; fails on a value that does not
            /// parse, naming its variable, not on a missing one that has a default.
            pub fn load(env: &$crate::config::Env) -> ::anyhow::Result<Self> {
                let sections = env$(.with_defaults($defaults))+;
                Ok(Self {
                    $($section: sections.extract()?,)+
                    settings: Settings::load(env)?,
                })
            }

            /// Reads the whole configuration from the process's environment.
            pub fn from_env() -> ::anyhow::Result<Self> {
                Self::load(&$crate::config::Env::load()?)
            }
        }
    };
}

/// Where a service listens.
#[derive(Debug, Clone, Deserialize)]
pub struct Listen {
    /// `LISTEN_ADDR`; port 0 picks a free port.
    #[serde(rename = "listen_addr", deserialize_with = "parsed")]
    pub addr: SocketAddr,
}

/// A service's own database.
#[derive(Debug, Clone, Deserialize)]
pub struct Database {
    /// `DATABASE_URL`: `postgres://...` or `sqlite://...`; the database is created when missing.
    #[serde(rename = "database_url")]
    pub url: String,
    /// `DATABASE_MAX_CONNECTIONS`: the pool size.
    #[serde(rename = "database_max_connections")]
    pub max_connections: u32,
}

/// The NATS server and the subjects the chat events travel on.
#[derive(Debug, Clone, Deserialize)]
pub struct Nats {
    /// `NATS_URL`; `nats://user:password@host:4222` (percent-encoded) logs in as that user.
    #[serde(rename = "nats_url")]
    pub url: String,
    /// `NATS_SUBJECT_PREFIX`: events are `<prefix>.<chat_id>.<kind>`.
    #[serde(rename = "nats_subject_prefix")]
    pub subject_prefix: String,
}

/// The defaults of [`Nats`], the same for every service.
pub const NATS_DEFAULTS: &[(&str, &str)] = &[
    (vars::NATS_URL, "nats://127.0.0.1:4222"),
    (vars::NATS_SUBJECT_PREFIX, "chat"),
];

/// Where the other services are; each service uses those it calls.
#[derive(Debug, Clone, Deserialize)]
pub struct Upstream {
    /// `AUTH_URL`: AuthService.
    pub auth_url: String,
    /// `CHAT_URL`: ChatService.
    pub chat_url: String,
    /// `NOTIFICATION_URL`: NotificationService.
    pub notification_url: String,
}

/// The defaults of [`Upstream`]: the split services on one machine.
pub const UPSTREAM_DEFAULTS: &[(&str, &str)] = &[
    (vars::AUTH_URL, "http://127.0.0.1:50051"),
    (vars::CHAT_URL, "http://127.0.0.1:50052"),
    (vars::NOTIFICATION_URL, "http://127.0.0.1:50053"),
];

impl Upstream {
    /// Every service at `url` (the all-in-one server's own port).
    pub fn all_at(url: &str) -> Self {
        Self {
            auth_url: url.to_owned(),
            chat_url: url.to_owned(),
            notification_url: url.to_owned(),
        }
    }
}

/// The pre-shared secret a service exchanges at AuthService for its service token.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceSecret {
    /// `SERVICE_SECRET` (or `SERVICE_SECRET_FILE`); `None` when unset: the service then asks
    /// with an empty secret, which AuthService refuses, so internal calls fail (and say so).
    #[serde(rename = "service_secret")]
    pub secret: Option<SecretString>,
}

impl ServiceSecret {
    /// The secret `secret`.
    pub fn new(secret: SecretString) -> Self {
        Self {
            secret: Some(secret),
        }
    }
}

/// For `#[serde(deserialize_with)]`: the value parsed with `T`'s `FromStr`.
pub fn parsed<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = String::deserialize(d)?;
    text.trim().parse().map_err(serde::de::Error::custom)
}

/// For `#[serde(deserialize_with)]`: a whole number of seconds.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// For `#[serde(deserialize_with)]`: a whole number of milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// Where to serve Prometheus metrics: `METRICS_ADDR` (default `0.0.0.0:9090`), or `None`
/// when it is set to `off`.
pub fn metrics_addr() -> Result<Option<SocketAddr>> {
    #[derive(Deserialize)]
    struct Metrics {
        metrics_addr: String,
    }
    let env = Env::load()?.with_defaults(&[(vars::METRICS_ADDR, "0.0.0.0:9090")]);
    let Metrics { metrics_addr } = env.extract()?;
    if metrics_addr.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    metrics_addr
        .parse()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{}={metrics_addr:?} is not valid: {e}", vars::METRICS_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_vars(vars.iter().copied()).unwrap()
    }

    #[test]
    fn sections_read_their_variables_and_defaults() {
        let e = env(&[
            (vars::LISTEN_ADDR, " 127.0.0.1:1 "),
            (vars::DATABASE_MAX_CONNECTIONS, "7"),
            (vars::NATS_URL, ""),
            (vars::SERVICE_SECRET, "12345"),
        ])
        .with_defaults(&[
            (vars::DATABASE_URL, "sqlite://x.db"),
            (vars::DATABASE_MAX_CONNECTIONS, "10"),
        ])
        .with_defaults(NATS_DEFAULTS)
        .with_defaults(UPSTREAM_DEFAULTS);
        let listen: Listen = e.extract().unwrap();
        assert_eq!(listen.addr, SocketAddr::from(([127, 0, 0, 1], 1)));
        let db: Database = e.extract().unwrap();
        assert_eq!((db.url.as_str(), db.max_connections), ("sqlite://x.db", 7));
        let nats: Nats = e.extract().unwrap();
        assert_eq!(nats.url, "nats://127.0.0.1:4222", "empty means unset");
        assert_eq!(nats.subject_prefix, "chat");
        let up: Upstream = e.extract().unwrap();
        assert_eq!(up.notification_url, "http://127.0.0.1:50053");
        let secret: ServiceSecret = e.extract().unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(secret.secret.unwrap().expose_secret(), "12345");
        let none: ServiceSecret = env(&[]).extract().unwrap();
        assert!(none.secret.is_none());
    }

    #[test]
    fn a_value_that_does_not_parse_names_its_variable() {
        let e = env(&[
            (vars::DATABASE_URL, "x"),
            (vars::DATABASE_MAX_CONNECTIONS, "many"),
        ]);
        let err = e.extract::<Database>().unwrap_err().to_string();
        assert!(
            err.starts_with("DATABASE_MAX_CONNECTIONS=\"many\" is not valid"),
            "{err}"
        );
        let err = env(&[(vars::LISTEN_ADDR, "nowhere")])
            .extract::<Listen>()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("LISTEN_ADDR=\"nowhere\" is not valid"),
            "{err}"
        );
    }

    #[test]
    fn secrets_come_from_files_and_stay_out_of_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let file_var = format!("{}{}", vars::SERVICE_SECRET, vars::FILE_SUFFIX);
        let e = env(&[(&file_var, path.to_str().unwrap())]);
        let secret: ServiceSecret = e.extract().unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(secret.secret.unwrap().expose_secret(), "from-file");
        let missing = Env::from_vars([(file_var.as_str(), "/nonexistent/secret")]);
        assert!(missing.unwrap_err().to_string().contains(&file_var));
        // A variable that merely ends in _FILE is not a secret's file.
        let e = env(&[("LINK_PREVIEW_CA_FILE", "/nonexistent")]);
        assert!(!e.is_set("LINK_PREVIEW_CA"));
    }
}
