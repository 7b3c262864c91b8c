//! The chat service's configuration, read once from the environment (through
//! [`chat_common::config`]: the shared sections, the loader, the rules for unset, empty
//! and secret values).
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `LISTEN_ADDR` | `0.0.0.0:50052` | gRPC address |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/chat` | the `chat` database (created when missing) |
//! | `DATABASE_MAX_CONNECTIONS` | `20` | pool size |
//! | `NATS_URL` | `nats://127.0.0.1:4222` | NATS server; `nats://user:password@host:4222` (percent-encoded) logs in as that user ([`chat_common::nats`]) |
//! | `NATS_SUBJECT_PREFIX` | `chat` | events go to `<prefix>.<chat_id>.<kind>`; typing and presence, never stored, to `<prefix>_live.<chat_id>.<kind>` (core NATS, outside the stream) |
//! | `NATS_STREAM` | `CHAT_EVENTS` | JetStream stream that keeps events for the notifier; `off` publishes on core NATS only |
//! | `NATS_STREAM_REPLICAS`, `NATS_STREAM_MAX_BYTES`, `NATS_STREAM_MAX_AGE` | `1`, `-1`, `7d` | the stream's copies and limits ([`chat_events::stream`]); an existing stream is updated to them |
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

use std::time::Duration;

use anyhow::Result;
use chat_common::config::{
    secs, server_defaults, vars, Database, Env, Listen, Nats, ServiceSecret, Upstream,
    NATS_DEFAULTS, UPSTREAM_DEFAULTS,
};
use chat_events::{stream, StreamSettings};
use serde::Deserialize;

use crate::preview::PreviewConfig;

/// The defaults of the shared sections, as the module's table gives them.
const SECTION_DEFAULTS: &[(&str, &str)] = &server_defaults(
    "0.0.0.0:50052",
    "postgres://postgres@127.0.0.1:5432/chat",
    "20",
);

/// The defaults of [`Settings`], as the module's table gives them.
const SETTINGS_DEFAULTS: &[(&str, &str)] = &[
    (vars::NATS_STREAM, stream::DEFAULT_NAME),
    (vars::STREAM_BUFFER, "1024"),
    (vars::CATCH_UP_INTERVAL_SECS, "5"),
    (vars::MESSAGE_EDIT_WINDOW_SECS, "900"),
    (vars::ACCOUNT_DELETIONS_POLL_SECS, "5"),
    (vars::PRESENCE_HEARTBEAT_SECS, "10"),
];

/// The service's configuration: the shared sections and its own [`Settings`]; the
/// module's table gives each variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the gRPC server binds (`LISTEN_ADDR`).
    pub listen: Listen,
    /// The chats' database and its pool size.
    pub database: Database,
    /// NATS server (credentials in the URL when it wants them) and the subject prefix:
    /// events are published on `<prefix>.<chat_id>.<kind>`, live ones under `<prefix>_live`.
    pub nats: Nats,
    /// AuthService (`AUTH_URL`): verifying keys, this service's token, resolving members.
    pub upstream: Upstream,
    /// Exchanged with AuthService for this service's token (required for `CreateChat`).
    pub service_secret: ServiceSecret,
    /// What the service logic needs besides the above.
    pub settings: Settings,
}

/// The service's own settings, shared by the split binary and the embedded server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The JetStream stream that keeps events for the notifier; None (`NATS_STREAM=off`):
    /// core NATS only, nothing kept.
    pub nats_stream: Option<String>,
    /// Replicas and limits of `nats_stream`, shared with notification-service.
    pub nats_stream_settings: StreamSettings,
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

/// The variables of [`Settings`] as given; [`Settings::load`] converts them.
#[derive(Deserialize)]
struct SettingsVars {
    nats_stream: String,
    stream_buffer: usize,
    #[serde(deserialize_with = "secs")]
    catch_up_interval_secs: Duration,
    #[serde(deserialize_with = "secs")]
    message_edit_window_secs: Duration,
    #[serde(deserialize_with = "secs")]
    account_deletions_poll_secs: Duration,
    #[serde(deserialize_with = "secs")]
    presence_heartbeat_secs: Duration,
}

impl Settings {
    /// Reads the service's own variables from `env`; fails on a value that does not parse,
    /// not on a missing one.
    pub fn load(env: &Env) -> Result<Self> {
        let env = env.with_defaults(SETTINGS_DEFAULTS);
        let v: SettingsVars = env.extract()?;
        Ok(Self {
            nats_stream: Some(v.nats_stream).filter(|s| !s.eq_ignore_ascii_case("off")),
            nats_stream_settings: StreamSettings::load(&env)?,
            stream_buffer: v.stream_buffer,
            catch_up_every: v.catch_up_interval_secs,
            edit_window: Some(v.message_edit_window_secs).filter(|w| !w.is_zero()),
            deletions_every: v
                .account_deletions_poll_secs
                .max(Duration::from_millis(100)),
            link_previews: PreviewConfig::load(&env)?,
            presence_heartbeat: v.presence_heartbeat_secs.max(Duration::from_secs(1)),
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
    fn the_defaults_are_the_documented_ones() {
        let c = Config::load(&Env::default()).unwrap();
        assert_eq!(c.listen.addr.to_string(), "0.0.0.0:50052");
        assert_eq!(c.database.max_connections, 20);
        assert_eq!(c.nats.subject_prefix, "chat");
        assert_eq!(c.upstream.auth_url, "http://127.0.0.1:50051");
        assert!(c.service_secret.secret.is_none());
        let s = c.settings;
        assert_eq!(s.nats_stream.as_deref(), Some("CHAT_EVENTS"));
        assert_eq!(s.nats_stream_settings, StreamSettings::default());
        assert_eq!(s.stream_buffer, 1024);
        assert_eq!(s.edit_window, Some(Duration::from_secs(900)));
        assert_eq!(s.presence_heartbeat, Duration::from_secs(10));
        let previews = s.link_previews.unwrap();
        assert_eq!(previews.concurrency, 16);
        assert_eq!(previews.settings.timeout, Duration::from_secs(5));
    }

    #[test]
    fn special_values() {
        let env = Env::from_vars([
            ("NATS_STREAM", "OFF"),
            ("MESSAGE_EDIT_WINDOW_SECS", "0"),
            ("ACCOUNT_DELETIONS_POLL_SECS", "0"),
            ("LINK_PREVIEWS", "off"),
        ])
        .unwrap();
        let s = Settings::load(&env).unwrap();
        assert_eq!(s.nats_stream, None);
        assert_eq!(s.edit_window, None);
        assert_eq!(s.deletions_every, Duration::from_millis(100));
        assert!(s.link_previews.is_none());
        let err = Settings::load(&Env::from_vars([("LINK_PREVIEWS", "maybe")]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("LINK_PREVIEWS=\"maybe\" is not valid"),
            "{err}"
        );
        let err = Settings::load(&Env::from_vars([("NATS_STREAM_MAX_AGE", "7y")]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("NATS_STREAM_MAX_AGE=\"7y\" is not valid"),
            "{err}"
        );
    }
}
