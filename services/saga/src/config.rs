//! The orchestrator's configuration, read once from the environment.
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

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use chat_common::config::{parse_or, secret_var, secs_or, var_or};
use secrecy::SecretString;

/// The orchestrator's settings; the module's table gives each field's variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the gRPC server binds (`LISTEN_ADDR`).
    pub listen_addr: SocketAddr,
    /// The saga log's database, `postgres://` or `sqlite://` (`DATABASE_URL`).
    pub database_url: String,
    /// Size of the log's connection pool.
    pub database_max_connections: u32,
    /// AuthService: verifying keys, this service's token, resolving the sender.
    pub auth_url: String,
    /// ChatService, which stores the message and deletes it on compensation.
    pub chat_url: String,
    /// NotificationService, which the notify step asks about the message's emails.
    pub notification_url: String,
    /// Exchanged with AuthService for this service's token; empty when `SERVICE_SECRET` is unset.
    pub service_secret: SecretString,
    /// How long the notify step may take before the saga compensates.
    pub notify_deadline: Duration,
    /// A saga's owner renews its lease every third of this; another orchestrator takes
    /// the saga over once it runs out.
    pub lease: Duration,
    /// How often sagas left without an owner are looked for and resumed.
    pub recovery_interval: Duration,
}

impl Config {
    /// Reads the environment once; fails on a value that does not parse, not on a missing one.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            listen_addr: parse_or("LISTEN_ADDR", SocketAddr::from(([0, 0, 0, 0], 50054)))?,
            database_url: var_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/saga"),
            database_max_connections: parse_or("DATABASE_MAX_CONNECTIONS", 10)?,
            auth_url: var_or("AUTH_URL", "http://127.0.0.1:50051"),
            chat_url: var_or("CHAT_URL", "http://127.0.0.1:50052"),
            notification_url: var_or("NOTIFICATION_URL", "http://127.0.0.1:50053"),
            service_secret: SecretString::from(secret_var("SERVICE_SECRET")?.unwrap_or_default()),
            notify_deadline: secs_or("NOTIFY_DEADLINE_SECS", Duration::from_secs(30))?,
            lease: secs_or("SAGA_LEASE_SECS", Duration::from_secs(10))?,
            recovery_interval: secs_or("SAGA_RECOVERY_INTERVAL_SECS", Duration::from_secs(10))?,
        })
    }
}
