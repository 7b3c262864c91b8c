//! What `chat-server` runs on, from its flags (and the environment for everything the
//! individual services read: `BCRYPT_COST`, `SMTP_*`, `NATS_SUBJECT_PREFIX`, ...).
//!
//! | flag | env | default | meaning |
//! | --- | --- | --- | --- |
//! | `--listen` | `LISTEN_ADDR` | `127.0.0.1:50051` | the one gRPC port of all four services |
//! | `--data` | `CHAT_DATA_DIR` | the user's data directory + `grpc-chat` | SQLite files, the signing key, the stub's email record |
//! | `--database-url` | `CHAT_DATABASE_URL` | none: SQLite | a PostgreSQL server; each service gets its own database, named after the URL's database (`chat` → `chat_users`, `chat_chat`, ...; none → `users`, `chat`, `notification`, `saga`, as the split services) |
//! | `--nats-url` | `CHAT_NATS_URL` | none: in-process events | NATS with JetStream, so several `chat-server`s on one PostgreSQL are replicas of each other |
//!
//! The services' own settings (`BCRYPT_COST`, `SMTP_*`, `NATS_SUBJECT_PREFIX`, ...) are read
//! once, by [`Config::from_args`] and [`Config::embedded`], with each service's loader; the
//! rest of each service's configuration (its database, where the others are, the service
//! secret) is decided here and composed in code by [`crate::Server::build`].
//!
//! Email goes to the stub sender (logged and appended to `<data>/sent-emails.jsonl`) unless
//! `EMAIL_SENDER=smtp` or `SMTP_HOST` is set. The token signing key is `JWT_SIGNING_KEY`
//! when given, else `<data>/signing-key.pem`, generated at the first start; replicas on
//! one machine share it through the data directory, replicas elsewhere need
//! `JWT_SIGNING_KEY`.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use chat_common::config::{vars, Env, ServiceSecret, NATS_DEFAULTS};
use clap::{Parser, Subcommand};
use notification_service::EmailConfig;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "chat-server",
    about = "grpc-chat's four services in one process, on one port",
    version
)]
/// The command line (flags may also come from the environment, see the module documentation).
pub struct Args {
    // The flags are global so that they may come before or after `migrate`.
    /// Address of the gRPC port every service answers on.
    #[arg(
        long,
        env = vars::LISTEN_ADDR,
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,
    /// Directory for the SQLite files, the signing key and the stub's email record.
    #[arg(long, env = vars::CHAT_DATA_DIR, global = true)]
    pub data: Option<PathBuf>,
    /// Store in PostgreSQL instead of SQLite (postgres://user@host:port/name).
    #[arg(long, env = vars::CHAT_DATABASE_URL, global = true)]
    pub database_url: Option<String>,
    /// Carry events over NATS (nats://host:port) instead of in-process.
    #[arg(long, env = vars::CHAT_NATS_URL, global = true)]
    pub nats_url: Option<String>,
    /// What to do instead of serving; none serves.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The one-shot subcommands: each does its work and exits.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the databases and apply migrations, then exit.
    Migrate,
    /// Manage administrators in the users database, then exit (the only way anyone
    /// becomes an administrator: nothing over the API can).
    Admin {
        /// Grant or revoke.
        #[command(subcommand)]
        action: AdminCommand,
    },
}

/// What `chat-server admin` does to an account.
#[derive(Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// Make the account with this email an administrator.
    Grant {
        /// The account's email address.
        email: String,
    },
    /// Make the account with this email a plain user again.
    Revoke {
        /// The account's email address.
        email: String,
    },
}

/// Where the services keep their data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// One SQLite file per service in this directory.
    Sqlite(PathBuf),
    /// One database per service on this PostgreSQL server.
    Postgres(String),
}

/// What the server runs on, from [`Args`] ([`Config::from_args`]) or built in code by tests
/// ([`Config::embedded`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// The gRPC address; port 0 picks a free port (see [`crate::Server::local_addr`]).
    pub listen: SocketAddr,
    /// The data directory: SQLite files (when [`Storage::Sqlite`]), the generated signing key and
    /// the stub sender's email record.
    pub data_dir: PathBuf,
    /// Where the four services keep their databases.
    pub storage: Storage,
    /// NATS with JetStream for the events; `None` carries them in-process, which only works for a
    /// single server.
    pub nats_url: Option<String>,
    /// `NATS_SUBJECT_PREFIX`, for the events on NATS.
    pub subject_prefix: String,
    /// `DATABASE_MAX_CONNECTIONS`: the pool size of chat's, notification's and saga's
    /// databases; each service's own default when `None` (the users database's is 10).
    pub database_max_connections: Option<u32>,
    /// `SERVICE_SECRET`; `None` makes a random one per process (only this process's services
    /// use it).
    pub service_secret: ServiceSecret,
    /// AuthService's settings; the signing key defaults to the data directory's.
    pub auth: auth_service::Settings,
    /// ChatService's settings.
    pub chat: chat_service::config::Settings,
    /// NotificationService's settings; email goes to a stub recording into the data directory
    /// unless `EMAIL_SENDER=smtp` or `SMTP_HOST` is set.
    pub notification: notification_service::config::Settings,
    /// The orchestrator's settings.
    pub saga: saga_orchestrator::config::Settings,
}

/// The variables `chat-server` reads for itself besides its flags.
#[derive(Deserialize)]
struct ServerVars {
    nats_subject_prefix: String,
    database_max_connections: Option<u32>,
}

impl Config {
    /// An embedded server on SQLite in `data_dir` with in-process events, the services'
    /// settings from the environment; fails on a variable that does not parse.
    pub fn embedded(listen: SocketAddr, data_dir: PathBuf) -> anyhow::Result<Self> {
        let storage = Storage::Sqlite(data_dir.clone());
        Self::compose(&Env::load()?, listen, data_dir, storage, None)
    }

    /// Reads the flags: the data directory defaults to the user's data directory + `grpc-chat`;
    /// fails when there is none, or when `--database-url` is not a `postgres://` URL, or when
    /// a variable does not parse.
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        let data_dir = match args.data {
            Some(d) => d,
            None => dirs::data_dir()
                .context("no data directory is known for this user: pass --data DIR")?
                .join("grpc-chat"),
        };
        let storage = match args.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Storage::Postgres(url)
            }
            Some(url) => anyhow::bail!(
                "--database-url must be a postgres:// URL (without it, data is kept in SQLite under --data), got {url:?}"
            ),
            None => Storage::Sqlite(data_dir.clone()),
        };
        Self::compose(&Env::load()?, args.listen, data_dir, storage, args.nats_url)
    }

    /// The configuration from what the flags decided and the services' settings in `env`.
    fn compose(
        env: &Env,
        listen: SocketAddr,
        data_dir: PathBuf,
        storage: Storage,
        nats_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let own: ServerVars = env.with_defaults(NATS_DEFAULTS).extract()?;
        let mut notification = notification_service::config::Settings::load(env)?;
        if !(env.is_set(vars::EMAIL_SENDER) || env.is_set(vars::SMTP_HOST)) {
            notification.email = EmailConfig::Stub;
        }
        Ok(Self {
            listen,
            data_dir,
            storage,
            nats_url,
            subject_prefix: own.nats_subject_prefix,
            database_max_connections: own.database_max_connections,
            service_secret: env.extract()?,
            auth: auth_service::Settings::load(env)?,
            chat: chat_service::config::Settings::load(env)?,
            notification,
            saga: saga_orchestrator::config::Settings::load(env)?,
        })
    }

    /// The database URL of one service (`users`, `chat`, `notification`, `saga`).
    pub fn database_url(&self, service: &str) -> String {
        match &self.storage {
            Storage::Sqlite(dir) => chat_common::db::sqlite_url(&dir.join(format!("{service}.db"))),
            Storage::Postgres(url) => postgres_database_url(url, service),
        }
    }
}

/// `url` with its database name replaced by `<name>_<service>` (or `<service>` when the
/// URL names no database), keeping credentials and query parameters.
fn postgres_database_url(url: &str, service: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let (server, name) = match base[after_scheme..].find('/') {
        Some(i) => (&base[..after_scheme + i], &base[after_scheme + i + 1..]),
        None => (base, ""),
    };
    let database = if name.is_empty() {
        service.to_owned()
    } else {
        format!("{name}_{service}")
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_databases_are_named_per_service() {
        assert_eq!(
            postgres_database_url("postgres://u:p@h:5432/chat", "users"),
            "postgres://u:p@h:5432/chat_users"
        );
        assert_eq!(
            postgres_database_url("postgres://u@h:5432", "saga"),
            "postgres://u@h:5432/saga"
        );
        assert_eq!(
            postgres_database_url("postgres://u@h/", "chat"),
            "postgres://u@h/chat"
        );
        assert_eq!(
            postgres_database_url("postgresql://h/x?sslmode=require", "chat"),
            "postgresql://h/x_chat?sslmode=require"
        );
    }

    #[test]
    fn sqlite_files_live_in_the_data_dir() {
        let config = Config::from_args(Args::parse_from(["chat-server", "--data", "/d"])).unwrap();
        assert_eq!(config.database_url("chat"), "sqlite:///d/chat.db");
        assert!(Config::from_args(Args::parse_from([
            "chat-server",
            "--database-url",
            "mysql://x"
        ]))
        .is_err());
    }
}
