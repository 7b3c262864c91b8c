//! The orchestrator's configuration, read once from the environment (through
//! [`chat_common::config`]: the shared sections, the loader, the rules for unset, empty
//! and secret values).
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LISTEN_ADDR` | `0.0.0.0:50054` | gRPC address |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/saga` | the saga log (created when missing) |
//! | `DATABASE_MAX_CONNECTIONS` | `10` | pool size |
//! | `AUTH_URL` | `http://127.0.0.1:50051` | AuthService: keys, service token, resolving `from` |
//! | `CHAT_URL` | `http://127.0.0.1:50052` | ChatService: storing and deleting the message |
//! | `NOTIFICATION_URL` | `http://127.0.0.1:50053` | NotificationService |
//! | `SERVICE_SECRET` (or `_FILE`) | required | exchanged for this service's service token |
//! | `NOTIFY_DEADLINE_SECS` | `30` | how long the notify step may take before the saga compensates |
//! | `SAGA_LEASE_SECS` | `10` | how long a saga stays owned by an orchestrator that stopped renewing it (shorter than the notify deadline, so a crashed orchestrator's sagas are usually taken over in time) |
//! | `SAGA_RECOVERY_INTERVAL_SECS` | `10` | how often unfinished sagas without an owner are resumed |

use std::time::Duration;

use anyhow::Result;
use chat_common::config::{
    secs, server_defaults, vars, Database, Env, Listen, ServiceSecret, Upstream, UPSTREAM_DEFAULTS,
};
use serde::Deserialize;

/// The defaults of the shared sections, as the module's table gives them.
const SECTION_DEFAULTS: &[(&str, &str)] = &server_defaults(
    "0.0.0.0:50054",
    "postgres://postgres@127.0.0.1:5432/saga",
    "10",
);

/// The defaults of [`Settings`], as the module's table gives them.
const SETTINGS_DEFAULTS: &[(&str, &str)] = &[
    (vars::NOTIFY_DEADLINE_SECS, "30"),
    (vars::SAGA_LEASE_SECS, "10"),
    (vars::SAGA_RECOVERY_INTERVAL_SECS, "10"),
];

/// The orchestrator's configuration: the shared sections and its own [`Settings`]; the
/// module's table gives each variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the gRPC server binds (`LISTEN_ADDR`).
    pub listen: Listen,
    /// The saga log's database and its pool size.
    pub database: Database,
    /// AuthService (verifying keys, this service's token, resolving the sender), ChatService
    /// (which stores the message and deletes it on compensation) and NotificationService
    /// (which the notify step asks about the message's emails).
    pub upstream: Upstream,
    /// Exchanged with AuthService for this service's token.
    pub service_secret: ServiceSecret,
    /// What the orchestrator needs besides the above.
    pub settings: Settings,
}

/// The orchestrator's own settings, shared by the split binary and the embedded server.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// How long the notify step may take before the saga compensates.
    #[serde(rename = "notify_deadline_secs", deserialize_with = "secs")]
    pub notify_deadline: Duration,
    /// A saga's owner renews its lease every third of this; another orchestrator takes
    /// the saga over once it runs out.
    #[serde(rename = "saga_lease_secs", deserialize_with = "secs")]
    pub lease: Duration,
    /// How often sagas left without an owner are looked for and resumed.
    #[serde(rename = "saga_recovery_interval_secs", deserialize_with = "secs")]
    pub recovery_interval: Duration,
    /// How long the success of a step followed by another may go unlogged while that next
    /// step runs (see the orchestrator's module docs). Not read from the environment: a
    /// fixed short time in production, widened by tests that crash inside it.
    #[serde(skip, default = "unlogged_success")]
    pub unlogged_success: Duration,
}

/// [`Settings::unlogged_success`] in production: far above a saga's usual NOTIFY (tens of
/// milliseconds), far below what a saga stuck in NOTIFY shows in its log.
pub fn unlogged_success() -> Duration {
    Duration::from_millis(200)
}

impl Settings {
    /// Reads the orchestrator's own variables from `env`; fails on a value that does not
    /// parse, not on a missing one.
    pub fn load(env: &Env) -> Result<Self> {
        env.with_defaults(SETTINGS_DEFAULTS).extract()
    }
}

chat_common::config_loader!(
    Config { listen, database, upstream, service_secret }
    with [SECTION_DEFAULTS, UPSTREAM_DEFAULTS]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let c = Config::load(&Env::default()).unwrap();
        assert_eq!(c.listen.addr.to_string(), "0.0.0.0:50054");
        assert_eq!(c.database.url, "postgres://postgres@127.0.0.1:5432/saga");
        assert_eq!(c.upstream.notification_url, "http://127.0.0.1:50053");
        assert_eq!(c.settings.notify_deadline, Duration::from_secs(30));
        assert_eq!(c.settings.lease, Duration::from_secs(10));
        let err = Settings::load(&Env::from_vars([("SAGA_LEASE_SECS", "-1")]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("SAGA_LEASE_SECS=\"-1\" is not valid"),
            "{err}"
        );
    }
}
