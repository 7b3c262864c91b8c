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
//! Email goes to the stub sender (logged and appended to `<data>/sent-emails.jsonl`) unless
//! `EMAIL_SENDER=smtp` or `SMTP_HOST` is set. The token signing key is `JWT_SIGNING_KEY`
//! when given, else `<data>/signing-key.pem`, generated at the first start; replicas on
//! one machine share it through the data directory, replicas elsewhere need
//! `JWT_SIGNING_KEY`.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

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
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,
    /// Directory for the SQLite files, the signing key and the stub's email record.
    #[arg(long, env = "CHAT_DATA_DIR", global = true)]
    pub data: Option<PathBuf>,
    /// Store in PostgreSQL instead of SQLite (postgres://user@host:port/name).
    #[arg(long, env = "CHAT_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Carry events over NATS (nats://host:port) instead of in-process.
    #[arg(long, env = "CHAT_NATS_URL", global = true)]
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
    /// Overrides `BCRYPT_COST` (tests, which cannot set the environment per server).
    pub bcrypt_cost: Option<u32>,
}

impl Config {
    /// An embedded server on SQLite in `data_dir` with in-process events.
    pub fn embedded(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            storage: Storage::Sqlite(data_dir.clone()),
            data_dir,
            nats_url: None,
            bcrypt_cost: None,
        }
    }

    /// Reads the flags: the data directory defaults to the user's data directory + `grpc-chat`;
    /// fails when there is none, or when `--database-url` is not a `postgres://` URL.
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
        Ok(Self {
            listen: args.listen,
            data_dir,
            storage,
            nats_url: args.nats_url,
            bcrypt_cost: None,
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
