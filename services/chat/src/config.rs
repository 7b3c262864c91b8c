//! The chat service's configuration, read once from the environment.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LISTEN_ADDR` | `0.0.0.0:50052` | gRPC address |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/chat` | the `chat` database (created when missing) |
//! | `DATABASE_MAX_CONNECTIONS` | `20` | pool size |
//! | `NATS_URL` | `nats://127.0.0.1:4222` | NATS server; `nats://user:password@host:4222` (percent-encoded) logs in as that user ([`chat_common::nats`]) |
//! | `NATS_SUBJECT_PREFIX` | `chat` | events go to `<prefix>.<chat_id>.<kind>`; typing and presence, never stored, to `<prefix>_live.<chat_id>.<kind>` (core NATS, outside the stream) |
//! | `NATS_STREAM` | `CHAT_EVENTS` | JetStream stream that keeps events for the notifier; `off` publishes on core NATS only |
//! | `NATS_STREAM_REPLICAS`, `NATS_STREAM_MAX_BYTES`, `NATS_STREAM_MAX_AGE` | `1`, `-1`, `7d` | the stream's copies and limits ([`chat_common::event_stream`]); an existing stream is updated to them |
//! | `AUTH_URL` | `http://127.0.0.1:50051` | AuthService, for public keys and user lookups |
//! | `SERVICE_SECRET` (or `_FILE`) | required for `CreateChat` | shared secret for this service's service token |
//! | `STREAM_BUFFER` | `1024` | events buffered per stream before a slow stream is cut off |
//! | `CATCH_UP_INTERVAL_SECS` | `5` | how often a chat's fan-out checks storage for missed messages |
//! | `MESSAGE_EDIT_WINDOW_SECS` | `900` | how long after sending a sender may edit a message; `0`: no limit |
//! | `ACCOUNT_DELETIONS_POLL_SECS` | `5` | how often deleted accounts are asked of AuthService and applied (memberships end) |
//! | `LINK_PREVIEWS` | `on` | `off`: no previews at all |
//! | `LINK_PREVIEW_ALLOW_HOSTS` | (any public host) | comma-separated hosts; when set, only these are fetched (every redirect hop too); `*.example.com` means its subdomains |
//! | `LINK_PREVIEW_TIMEOUT_MS` | `5000` | the whole fetch: DNS, connect, TLS, redirects, body |
//! | `LINK_PREVIEW_MAX_BYTES` | `524288` | most body bytes read (reading stops early at `</head>`) |
//! | `LINK_PREVIEW_MAX_REDIRECTS` | `3` | redirects followed, each checked as a new URL |
//! | `LINK_PREVIEW_CACHE_TTL_SECS` | `3600` | how long a URL's preview (or its lack of one) is reused; `0`: no cache |
//! | `LINK_PREVIEW_HOST_TTL_SECS` | `600` | how long a host that was refused, unreachable or too slow is left alone |
//! | `LINK_PREVIEW_CONCURRENCY` | `16` | fetches at once; more are dropped |
//! | `LINK_PREVIEW_RESOLVE` | (none) | `host=ip,...`: pins hosts to addresses, skipping DNS and the public-address check and allowing any port. For tests and deliberately internal sites only: anything pinned can be fetched by any user who links to it |
//! | `LINK_PREVIEW_CA_FILE` | (none) | PEM file of roots trusted besides the public ones (a test's CA, an internal site's) |
//! | `PRESENCE_HEARTBEAT_SECS` | `10` | how often a replica repeats who is online through it; a replica's word expires after three of these (how long a crashed replica's users still show online) |

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use chat_common::{
    config::{parse_or, secret_var, secs_or, var, var_or},
    event_stream::StreamSettings,
};
use secrecy::SecretString;

use crate::preview::PreviewConfig;

/// The service's settings; the module's table gives each field's variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the gRPC server binds (`LISTEN_ADDR`).
    pub listen_addr: SocketAddr,
    /// The chats' database, `postgres://` or `sqlite://`.
    pub database_url: String,
    /// Size of the chats' connection pool.
    pub database_max_connections: u32,
    /// NATS server, credentials in the URL when it wants them.
    pub nats_url: String,
    /// Events are published on `<prefix>.<chat_id>.<kind>`, live ones under `<prefix>_live`.
    pub subject_prefix: String,
    /// The JetStream stream that keeps events for the notifier; None (`NATS_STREAM=off`):
    /// core NATS only, nothing kept.
    pub nats_stream: Option<String>,
    /// Replicas and limits of `nats_stream`, shared with notification-service.
    pub nats_stream_settings: StreamSettings,
    /// AuthService: verifying keys, this service's token, resolving members.
    pub auth_url: String,
    /// Exchanged with AuthService for this service's token; empty when `SERVICE_SECRET` is unset.
    pub service_secret: SecretString,
    /// Events buffered per `Connect` stream before a stream that reads too slowly is cut off.
    pub stream_buffer: usize,
    /// How often a chat's fan-out checks storage for messages the bus did not bring.
    pub catch_up_every: Duration,
    /// How long after sending a message its sender may edit it; None: no limit.
    pub edit_window: Option<Duration>,
    /// How often to apply the accounts AuthService deleted (`deletions.rs`).
    pub deletions_every: Duration,
    /// Link previews of messages' URLs (`preview.rs`); None: off.
    pub link_previews: Option<PreviewConfig>,
    /// How often a replica repeats each chat's online users (`presence.rs`).
    pub presence_heartbeat: Duration,
}

impl Config {
    /// Reads the environment once; fails on a value that does not parse, not on a missing one.
    pub fn from_env() -> Result<Self> {
        let nats_stream = match var("NATS_STREAM") {
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(v) => Some(v),
            None => Some("CHAT_EVENTS".into()),
        };
        Ok(Self {
            listen_addr: parse_or("LISTEN_ADDR", SocketAddr::from(([0, 0, 0, 0], 50052)))?,
            database_url: var_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chat"),
            database_max_connections: parse_or("DATABASE_MAX_CONNECTIONS", 20)?,
            nats_url: var_or("NATS_URL", "nats://127.0.0.1:4222"),
            subject_prefix: var_or("NATS_SUBJECT_PREFIX", "chat"),
            nats_stream,
            nats_stream_settings: StreamSettings::from_env()?,
            auth_url: var_or("AUTH_URL", "http://127.0.0.1:50051"),
            service_secret: SecretString::from(secret_var("SERVICE_SECRET")?.unwrap_or_default()),
            stream_buffer: parse_or("STREAM_BUFFER", 1024)?,
            catch_up_every: secs_or("CATCH_UP_INTERVAL_SECS", Duration::from_secs(5))?,
            edit_window: Some(secs_or(
                "MESSAGE_EDIT_WINDOW_SECS",
                Duration::from_secs(900),
            )?)
            .filter(|w| !w.is_zero()),
            deletions_every: secs_or("ACCOUNT_DELETIONS_POLL_SECS", Duration::from_secs(5))?
                .max(Duration::from_millis(100)),
            link_previews: PreviewConfig::from_env()?,
            presence_heartbeat: secs_or("PRESENCE_HEARTBEAT_SECS", Duration::from_secs(10))?
                .max(Duration::from_secs(1)),
        })
    }
}
