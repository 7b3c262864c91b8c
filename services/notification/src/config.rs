//! The notification service's configuration, read once from the environment (and `.env` in
//! development, loaded by `main`) through [`chat_common::config`]: the shared sections, the
//! loader, the rules for unset, empty and secret values.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LISTEN_ADDR` | `0.0.0.0:50053` | gRPC address |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/notification` | delivery records (created when missing) |
//! | `DATABASE_MAX_CONNECTIONS` | `10` | pool size |
//! | `NATS_URL` | `nats://127.0.0.1:4222` | NATS server; `nats://user:password@host:4222` (percent-encoded) logs in as that user ([`chat_common::nats`]) |
//! | `NATS_SUBJECT_PREFIX` | `chat` | chat events are `<prefix>.<chat_id>.<kind>` |
//! | `NATS_STREAM` | `CHAT_EVENTS` | the JetStream stream chat-service publishes into |
//! | `NATS_STREAM_REPLICAS`, `NATS_STREAM_MAX_BYTES`, `NATS_STREAM_MAX_AGE` | `1`, `-1`, `7d` | the stream's copies and limits ([`chat_events::stream`]): set them as for chat-service |
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

use std::time::Duration;

use anyhow::{bail, Result};
use backon::{BackoffBuilder, ExponentialBuilder};
use chat_common::config::{
    millis, secs, server_defaults, vars, Database, Env, Listen, Nats, ServiceSecret, Upstream,
    NATS_DEFAULTS, UPSTREAM_DEFAULTS,
};
use chat_events::{stream, StreamSettings};
use secrecy::SecretString;
use serde::Deserialize;

/// The defaults of the shared sections, as the module's table gives them.
const SECTION_DEFAULTS: &[(&str, &str)] = &server_defaults(
    "0.0.0.0:50053",
    "postgres://postgres@127.0.0.1:5432/notification",
    "10",
);

/// The defaults of [`Settings`], as the module's table gives them (`SMTP_PORT`'s depends on
/// `SMTP_TLS`).
const SETTINGS_DEFAULTS: &[(&str, &str)] = &[
    (vars::NATS_STREAM, stream::DEFAULT_NAME),
    (vars::NATS_CONSUMER, "notification"),
    (vars::NATS_ACK_WAIT_SECS, "60"),
    (vars::EMAIL_SENDER, "smtp"),
    (vars::SMTP_HOST, "127.0.0.1"),
    (vars::SMTP_TLS, "starttls"),
    (vars::SMTP_FROM, "grpc-chat <noreply@localhost>"),
    (vars::SMTP_TIMEOUT_SECS, "10"),
    (vars::SMTP_MAX_ATTEMPTS, "5"),
    (vars::SMTP_RETRY_BACKOFF_MS, "500"),
    (vars::SMTP_RETRY_MAX_BACKOFF_MS, "30000"),
    (vars::DELIVERY_LEASE_SECS, "120"),
];

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
    /// The pauses between tries, in order: `backoff`, doubled after each further failure,
    /// capped at `max_backoff`; one fewer than `max_attempts`.
    pub fn pauses(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_min_delay(self.backoff)
            .with_max_delay(self.max_backoff)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build()
    }

    /// The pause after the `attempt`-th try (1-based), counted across restarts (the tries
    /// are recorded with the delivery); `max_backoff` past the last scheduled pause.
    pub fn pause_after(&self, attempt: u32) -> Duration {
        self.pauses()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max_backoff)
    }
}

/// The service's configuration: the shared sections and its own [`Settings`]; the
/// module's table gives each variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the gRPC server binds (`LISTEN_ADDR`).
    pub listen: Listen,
    /// The delivery records' database and its pool size.
    pub database: Database,
    /// NATS server (credentials in the URL when it wants them) and the subject prefix: chat
    /// events are published on `<prefix>.<chat_id>.<kind>`.
    pub nats: Nats,
    /// AuthService (`AUTH_URL`: verifying keys, this service's token, recipients' emails)
    /// and ChatService (`CHAT_URL`: a chat's members and its messages).
    pub upstream: Upstream,
    /// Exchanged with AuthService for this service's token.
    pub service_secret: ServiceSecret,
    /// What the service logic needs besides the above.
    pub settings: Settings,
}

/// The service's own settings, shared by the split binary and the embedded server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The JetStream stream chat-service publishes events into.
    pub nats_stream: String,
    /// Replicas and limits of `nats_stream`, shared with chat-service.
    pub nats_stream_settings: StreamSettings,
    /// Durable consumer name; every replica pulls from the same one, so each event goes to one.
    pub nats_consumer: String,
    /// How long an event may stay unacknowledged before JetStream redelivers it.
    pub ack_wait: Duration,
    /// Which sender delivers the emails.
    pub email: EmailConfig,
    /// Tries per email before it is recorded as failed.
    pub retry: RetryPolicy,
    /// How long a claimed email belongs to the replica sending it; after that another may take it.
    pub delivery_lease: Duration,
}

/// The variables of [`Settings`] as given; [`Settings::load`] converts them.
#[derive(Deserialize)]
struct SettingsVars {
    nats_stream: String,
    nats_consumer: String,
    #[serde(deserialize_with = "secs")]
    nats_ack_wait_secs: Duration,
    email_sender: String,
    smtp_max_attempts: u32,
    #[serde(deserialize_with = "millis")]
    smtp_retry_backoff_ms: Duration,
    #[serde(deserialize_with = "millis")]
    smtp_retry_max_backoff_ms: Duration,
    #[serde(deserialize_with = "secs")]
    delivery_lease_secs: Duration,
}

/// The `SMTP_*` variables as given.
#[derive(Deserialize)]
struct SmtpVars {
    smtp_host: String,
    smtp_port: Option<u16>,
    smtp_tls: String,
    smtp_username: Option<String>,
    smtp_password: Option<SecretString>,
    smtp_from: String,
    #[serde(deserialize_with = "secs")]
    smtp_timeout_secs: Duration,
}

impl SmtpConfig {
    fn load(env: &Env) -> Result<Self> {
        let v: SmtpVars = env.extract()?;
        let tls = SmtpTls::parse(&v.smtp_tls)?;
        Ok(Self {
            host: v.smtp_host,
            port: v.smtp_port.unwrap_or(tls.default_port()),
            tls,
            username: v.smtp_username,
            password: v.smtp_password,
            from: v.smtp_from,
            timeout: v.smtp_timeout_secs,
        })
    }
}

impl Settings {
    /// Reads the service's own variables from `env`; fails on a value that does not parse
    /// or an unknown `EMAIL_SENDER`, not on a missing variable.
    pub fn load(env: &Env) -> Result<Self> {
        let env = env.with_defaults(SETTINGS_DEFAULTS);
        let v: SettingsVars = env.extract()?;
        let email = match v.email_sender.to_ascii_lowercase().as_str() {
            "stub" => EmailConfig::Stub,
            "smtp" => EmailConfig::Smtp(SmtpConfig::load(&env)?),
            other => bail!("EMAIL_SENDER={other:?} is not valid: use smtp or stub"),
        };
        Ok(Self {
            nats_stream: v.nats_stream,
            nats_stream_settings: StreamSettings::load(&env)?,
            nats_consumer: v.nats_consumer,
            ack_wait: v.nats_ack_wait_secs,
            email,
            retry: RetryPolicy {
                max_attempts: v.smtp_max_attempts.max(1),
                backoff: v.smtp_retry_backoff_ms,
                max_backoff: v.smtp_retry_max_backoff_ms,
            },
            delivery_lease: v.delivery_lease_secs,
        })
    }
}

chat_common::config_loader!(
    Config { listen, database, nats, upstream, service_secret }
    with [SECTION_DEFAULTS, NATS_DEFAULTS, UPSTREAM_DEFAULTS]
);

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
        // backon multiplies in f32: a doubled pause may be off by some nanoseconds.
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round() as u64;
        assert_eq!(ms(p.pause_after(1)), 100);
        assert_eq!(ms(p.pause_after(2)), 200);
        assert_eq!(ms(p.pause_after(3)), 350);
        assert_eq!(ms(p.pause_after(4)), 350);
        assert_eq!(p.pause_after(40), Duration::from_millis(350));
        assert_eq!(p.pauses().count(), 4, "one pause fewer than tries");
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let c = Config::load(&Env::default()).unwrap();
        assert_eq!(c.listen.addr.to_string(), "0.0.0.0:50053");
        assert_eq!(c.database.max_connections, 10);
        assert_eq!(c.upstream.chat_url, "http://127.0.0.1:50052");
        let s = c.settings;
        assert_eq!(
            (s.nats_stream.as_str(), s.nats_consumer.as_str()),
            ("CHAT_EVENTS", "notification")
        );
        assert_eq!(s.ack_wait, Duration::from_secs(60));
        let EmailConfig::Smtp(smtp) = s.email else {
            panic!("smtp by default")
        };
        assert_eq!((smtp.port, smtp.tls), (587, SmtpTls::StartTls));
        assert_eq!(s.retry.max_backoff, Duration::from_secs(30));
        let e = |k: &str, v: &str| Settings::load(&Env::from_vars([(k, v)]).unwrap());
        assert!(matches!(
            e("EMAIL_SENDER", "Stub").unwrap().email,
            EmailConfig::Stub
        ));
        let err = e("EMAIL_SENDER", "pigeon").unwrap_err().to_string();
        assert!(
            err.starts_with("EMAIL_SENDER=\"pigeon\" is not valid"),
            "{err}"
        );
        let err = e("SMTP_PORT", "x").unwrap_err().to_string();
        assert!(err.starts_with("SMTP_PORT=\"x\" is not valid"), "{err}");
        let EmailConfig::Smtp(smtp) = e("SMTP_TLS", "tls").unwrap().email else {
            panic!("smtp")
        };
        assert_eq!(smtp.port, 465);
    }

    #[test]
    fn tls_modes() {
        assert_eq!(SmtpTls::parse("STARTTLS").unwrap(), SmtpTls::StartTls);
        assert_eq!(SmtpTls::parse("none").unwrap(), SmtpTls::None);
        assert!(SmtpTls::parse("maybe").is_err());
    }
}
