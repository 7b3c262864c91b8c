//! The notification service's configuration, read once from the environment (and `.env` in
//! development, loaded by `main`).
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LISTEN_ADDR` | `0.0.0.0:50053` | gRPC address |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/notification` | delivery records (created when missing) |
//! | `DATABASE_MAX_CONNECTIONS` | `10` | pool size |
//! | `NATS_URL` | `nats://127.0.0.1:4222` | NATS server; `nats://user:password@host:4222` (percent-encoded) logs in as that user ([`chat_common::nats`]) |
//! | `NATS_SUBJECT_PREFIX` | `chat` | chat events are `<prefix>.<chat_id>.<kind>` |
//! | `NATS_STREAM` | `CHAT_EVENTS` | the JetStream stream chat-service publishes into |
//! | `NATS_STREAM_REPLICAS`, `NATS_STREAM_MAX_BYTES`, `NATS_STREAM_MAX_AGE` | `1`, `-1`, `7d` | the stream's copies and limits ([`chat_common::event_stream`]): set them as for chat-service |
//! | `NATS_CONSUMER` | `notification` | durable consumer shared by every replica |
//! | `NATS_ACK_WAIT_SECS` | `60` | an unacknowledged event is redelivered after this |
//! | `AUTH_URL` | `http://127.0.0.1:50051` | AuthService: keys, service token, emails |
//! | `CHAT_URL` | `http://127.0.0.1:50052` | ChatService: members, messages |
//! | `SERVICE_SECRET` (or `_FILE`) | required | exchanged for this service's service token |
//! | `EMAIL_SENDER` | `smtp` | `smtp`, or `stub` (log and keep emails, send nothing) |
//! | `SMTP_HOST` | `127.0.0.1` | mail server |
//! | `SMTP_PORT` | 25 / 587 / 465 by `SMTP_TLS` | mail server port |
//! | `SMTP_TLS` | `starttls` | `none`, `starttls` or `tls` (implicit TLS) |
//! | `SMTP_USERNAME`, `SMTP_PASSWORD` (or `_FILE`) | none | credentials, when the server wants them |
//! | `SMTP_FROM` | `grpc-chat <noreply@localhost>` | the From address |
//! | `SMTP_TIMEOUT_SECS` | `10` | per SMTP command |
//! | `SMTP_MAX_ATTEMPTS` | `5` | tries per email before it is recorded as failed |
//! | `SMTP_RETRY_BACKOFF_MS` | `500` | first pause between tries, doubled each time |
//! | `SMTP_RETRY_MAX_BACKOFF_MS` | `30000` | longest pause between tries |
//! | `DELIVERY_LEASE_SECS` | `120` | how long a claimed email is owned by the replica sending it |

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Result};
use chat_common::{
    config::{parse_or, secret_var, secs_or, var, var_or},
    event_stream::StreamSettings,
};
use secrecy::SecretString;

/// How the mail server connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a local relay or a test server).
    None,
    /// Plain connection upgraded with STARTTLS (required).
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

impl SmtpTls {
    /// Reads `SMTP_TLS`: `none` (or `off`, `plain`), `starttls`, `tls` (or `smtps`), in any case.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" | "plain" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" | "smtps" => Ok(SmtpTls::Tls),
            other => bail!("SMTP_TLS={other:?} is not valid: use none, starttls or tls"),
        }
    }

    fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

/// How to reach and log in to the mail server.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Host name; also the name TLS checks the certificate against.
    pub host: String,
    /// Defaults by `tls`: 25, 587 or 465.
    pub port: u16,
    /// How the connection is secured.
    pub tls: SmtpTls,
    /// Logs in when set; None sends without authentication.
    pub username: Option<String>,
    /// Used with `username`; None means an empty password.
    pub password: Option<SecretString>,
    /// The From header, `Name <address>` or a bare address.
    pub from: String,
    /// Limit on each SMTP command, not on a whole email.
    pub timeout: Duration,
}

/// Which email sender to run.
#[derive(Debug, Clone)]
pub enum EmailConfig {
    /// Send through a mail server.
    Smtp(SmtpConfig),
    /// [`crate::email::StubEmailSender`]: logs and keeps emails, sends nothing.
    Stub,
}

/// Bounded retries of one email.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_attempts: u32,
    /// Pause after the first failed try; doubled after each further one.
    pub backoff: Duration,
    /// Longest pause between tries, however many failed.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The pause after the `attempt`-th try (1-based): `backoff * 2^(attempt-1)`, capped.
    pub fn pause_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// The service's settings; the module's table gives each field's variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the gRPC server binds (`LISTEN_ADDR`).
    pub listen_addr: SocketAddr,
    /// The delivery records' database, `postgres://` or `sqlite://`.
    pub database_url: String,
    /// Size of the records' connection pool.
    pub database_max_connections: u32,
    /// NATS server, credentials in the URL when it wants them.
    pub nats_url: String,
    /// Chat events are published on `<prefix>.<chat_id>.<kind>`.
    pub subject_prefix: String,
    /// The JetStream stream chat-service publishes events into.
    pub nats_stream: String,
    /// Replicas and limits of `nats_stream`, shared with chat-service.
    pub nats_stream_settings: StreamSettings,
    /// Durable consumer name; every replica pulls from the same one, so each event goes to one.
    pub nats_consumer: String,
    /// How long an event may stay unacknowledged before JetStream redelivers it.
    pub ack_wait: Duration,
    /// AuthService: verifying keys, this service's token, recipients' emails.
    pub auth_url: String,
    /// ChatService: a chat's members and its messages.
    pub chat_url: String,
    /// Exchanged with AuthService for this service's token; empty when `SERVICE_SECRET` is unset.
    pub service_secret: SecretString,
    /// Which sender delivers the emails.
    pub email: EmailConfig,
    /// Tries per email before it is recorded as failed.
    pub retry: RetryPolicy,
    /// How long a claimed email belongs to the replica sending it; after that another may take it.
    pub delivery_lease: Duration,
}

impl Config {
    /// Reads the environment once; fails on a value that does not parse or an unknown
    /// `EMAIL_SENDER`, not on a missing variable.
    pub fn from_env() -> Result<Self> {
        let email = match var_or("EMAIL_SENDER", "smtp").to_ascii_lowercase().as_str() {
            "stub" => EmailConfig::Stub,
            "smtp" => {
                let tls = SmtpTls::parse(&var_or("SMTP_TLS", "starttls"))?;
                EmailConfig::Smtp(SmtpConfig {
                    host: var_or("SMTP_HOST", "127.0.0.1"),
                    port: parse_or("SMTP_PORT", tls.default_port())?,
                    tls,
                    username: var("SMTP_USERNAME"),
                    password: secret_var("SMTP_PASSWORD")?.map(SecretString::from),
                    from: var_or("SMTP_FROM", "grpc-chat <noreply@localhost>"),
                    timeout: secs_or("SMTP_TIMEOUT_SECS", Duration::from_secs(10))?,
                })
            }
            other => bail!("EMAIL_SENDER={other:?} is not valid: use smtp or stub"),
        };
        Ok(Self {
            listen_addr: parse_or("LISTEN_ADDR", SocketAddr::from(([0, 0, 0, 0], 50053)))?,
            database_url: var_or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/notification",
            ),
            database_max_connections: parse_or("DATABASE_MAX_CONNECTIONS", 10)?,
            nats_url: var_or("NATS_URL", "nats://127.0.0.1:4222"),
            subject_prefix: var_or("NATS_SUBJECT_PREFIX", "chat"),
            nats_stream: var_or("NATS_STREAM", "CHAT_EVENTS"),
            nats_stream_settings: StreamSettings::from_env()?,
            nats_consumer: var_or("NATS_CONSUMER", "notification"),
            ack_wait: secs_or("NATS_ACK_WAIT_SECS", Duration::from_secs(60))?,
            auth_url: var_or("AUTH_URL", "http://127.0.0.1:50051"),
            chat_url: var_or("CHAT_URL", "http://127.0.0.1:50052"),
            service_secret: SecretString::from(secret_var("SERVICE_SECRET")?.unwrap_or_default()),
            email,
            retry: RetryPolicy {
                max_attempts: parse_or("SMTP_MAX_ATTEMPTS", 5u32)?.max(1),
                backoff: Duration::from_millis(parse_or("SMTP_RETRY_BACKOFF_MS", 500u64)?),
                max_backoff: Duration::from_millis(parse_or(
                    "SMTP_RETRY_MAX_BACKOFF_MS",
                    30_000u64,
                )?),
            },
            delivery_lease: secs_or("DELIVERY_LEASE_SECS", Duration::from_secs(120))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(p.pause_after(1), Duration::from_millis(100));
        assert_eq!(p.pause_after(2), Duration::from_millis(200));
        assert_eq!(p.pause_after(3), Duration::from_millis(350));
        assert_eq!(p.pause_after(40), Duration::from_millis(350));
    }

    #[test]
    fn tls_modes() {
        assert_eq!(SmtpTls::parse("STARTTLS").unwrap(), SmtpTls::StartTls);
        assert_eq!(SmtpTls::parse("none").unwrap(), SmtpTls::None);
        assert!(SmtpTls::parse("maybe").is_err());
    }
}
