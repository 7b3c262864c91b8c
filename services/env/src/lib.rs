//! The names of the environment variables grpc-chat's services read, in one place.
//!
//! The services load them (`chat_common::config`) and the operator writes them into each
//! Deployment (`chat-operator`'s `render.rs`); both name a variable through these
//! constants, so a rename cannot reach one side only. What each variable means, and its
//! default, is documented in the table of the `config` module of the service that reads it.
//!
//! This crate has no dependencies on purpose: the operator must not pull in the services'
//! database drivers and gRPC server, and the protocol crate (which it does not use
//! either) is the wire contract, not the deployment's.

#![warn(missing_docs)]

/// Appended to a secret's name, names a file holding the secret instead (Kubernetes
/// secrets mounted as files): `SERVICE_SECRET_FILE=/run/secrets/service`.
pub const FILE_SUFFIX: &str = "_FILE";

/// The variables that hold secrets: each may be given as `<NAME>_FILE` instead, and their
/// values never appear in an error message.
pub const SECRETS: &[&str] = &[
    SERVICE_SECRET,
    JWT_SIGNING_KEY,
    JWT_PREVIOUS_PUBLIC_KEY,
    SMTP_PASSWORD,
];

// Every service.
/// The gRPC address a service binds.
pub const LISTEN_ADDR: &str = "LISTEN_ADDR";
/// Where Prometheus metrics are served, or `off`.
pub const METRICS_ADDR: &str = "METRICS_ADDR";
/// `json` for JSON logs.
pub const LOG_FORMAT: &str = "LOG_FORMAT";
/// The log filter.
pub const RUST_LOG: &str = "RUST_LOG";
/// Where traces are exported (OTLP over gRPC); unset exports none.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The service's own database.
pub const DATABASE_URL: &str = "DATABASE_URL";
/// The size of the service's connection pool.
pub const DATABASE_MAX_CONNECTIONS: &str = "DATABASE_MAX_CONNECTIONS";
/// The pre-shared secret exchanged for service tokens (auth checks it, the others present it).
pub const SERVICE_SECRET: &str = "SERVICE_SECRET";
/// AuthService's URL.
pub const AUTH_URL: &str = "AUTH_URL";
/// ChatService's URL.
pub const CHAT_URL: &str = "CHAT_URL";
/// NotificationService's URL.
pub const NOTIFICATION_URL: &str = "NOTIFICATION_URL";

// NATS (chat and notification).
/// The NATS server, credentials in the URL when it wants them.
pub const NATS_URL: &str = "NATS_URL";
/// The first token of every event subject.
pub const NATS_SUBJECT_PREFIX: &str = "NATS_SUBJECT_PREFIX";
/// The JetStream stream that keeps chat events.
pub const NATS_STREAM: &str = "NATS_STREAM";
/// The stream's copies in a JetStream cluster.
pub const NATS_STREAM_REPLICAS: &str = "NATS_STREAM_REPLICAS";
/// The stream's size limit in bytes.
pub const NATS_STREAM_MAX_BYTES: &str = "NATS_STREAM_MAX_BYTES";
/// The stream's age limit.
pub const NATS_STREAM_MAX_AGE: &str = "NATS_STREAM_MAX_AGE";

// Auth.
/// bcrypt work factor.
pub const BCRYPT_COST: &str = "BCRYPT_COST";
/// Access token lifetime in seconds.
pub const ACCESS_TOKEN_TTL_SECS: &str = "ACCESS_TOKEN_TTL_SECS";
/// Refresh token lifetime in seconds.
pub const REFRESH_TOKEN_TTL_SECS: &str = "REFRESH_TOKEN_TTL_SECS";
/// Service token lifetime in seconds.
pub const SERVICE_TOKEN_TTL_SECS: &str = "SERVICE_TOKEN_TTL_SECS";
/// The `iss` claim.
pub const JWT_ISSUER: &str = "JWT_ISSUER";
/// The `aud` claim.
pub const JWT_AUDIENCE: &str = "JWT_AUDIENCE";
/// The Ed25519 PKCS#8 PEM signing key.
pub const JWT_SIGNING_KEY: &str = "JWT_SIGNING_KEY";
/// A retired key's public PEM, still accepted during a rotation.
pub const JWT_PREVIOUS_PUBLIC_KEY: &str = "JWT_PREVIOUS_PUBLIC_KEY";
/// Failed logins per account per window.
pub const RATE_LIMIT_LOGIN_PER_ACCOUNT: &str = "RATE_LIMIT_LOGIN_PER_ACCOUNT";
/// Failed logins per client address per window.
pub const RATE_LIMIT_LOGIN_PER_ADDRESS: &str = "RATE_LIMIT_LOGIN_PER_ADDRESS";
/// Registrations per client address per window.
pub const RATE_LIMIT_REGISTER_PER_ADDRESS: &str = "RATE_LIMIT_REGISTER_PER_ADDRESS";
/// Wrong service secrets per client address per window.
pub const RATE_LIMIT_SERVICE_TOKEN_PER_ADDRESS: &str = "RATE_LIMIT_SERVICE_TOKEN_PER_ADDRESS";
/// Proxies whose `x-forwarded-for` names the client.
pub const RATE_LIMIT_TRUSTED_PROXIES: &str = "RATE_LIMIT_TRUSTED_PROXIES";

// Chat.
/// Events buffered per stream.
pub const STREAM_BUFFER: &str = "STREAM_BUFFER";
/// How often a chat's fan-out checks storage, in seconds.
pub const CATCH_UP_INTERVAL_SECS: &str = "CATCH_UP_INTERVAL_SECS";
/// How long a message may be edited, in seconds.
pub const MESSAGE_EDIT_WINDOW_SECS: &str = "MESSAGE_EDIT_WINDOW_SECS";
/// How often deleted accounts are applied, in seconds.
pub const ACCOUNT_DELETIONS_POLL_SECS: &str = "ACCOUNT_DELETIONS_POLL_SECS";
/// How often a replica repeats who is online, in seconds.
pub const PRESENCE_HEARTBEAT_SECS: &str = "PRESENCE_HEARTBEAT_SECS";
/// `off` turns link previews off.
pub const LINK_PREVIEWS: &str = "LINK_PREVIEWS";
/// The only hosts previews are fetched from.
pub const LINK_PREVIEW_ALLOW_HOSTS: &str = "LINK_PREVIEW_ALLOW_HOSTS";
/// A preview fetch's time limit in milliseconds.
pub const LINK_PREVIEW_TIMEOUT_MS: &str = "LINK_PREVIEW_TIMEOUT_MS";
/// The most body bytes a preview fetch reads.
pub const LINK_PREVIEW_MAX_BYTES: &str = "LINK_PREVIEW_MAX_BYTES";
/// Redirects a preview fetch follows.
pub const LINK_PREVIEW_MAX_REDIRECTS: &str = "LINK_PREVIEW_MAX_REDIRECTS";
/// How long a URL's preview is reused, in seconds.
pub const LINK_PREVIEW_CACHE_TTL_SECS: &str = "LINK_PREVIEW_CACHE_TTL_SECS";
/// How long a failing host is left alone, in seconds.
pub const LINK_PREVIEW_HOST_TTL_SECS: &str = "LINK_PREVIEW_HOST_TTL_SECS";
/// Preview fetches at once.
pub const LINK_PREVIEW_CONCURRENCY: &str = "LINK_PREVIEW_CONCURRENCY";
/// `host=ip,...` pins for preview fetches.
pub const LINK_PREVIEW_RESOLVE: &str = "LINK_PREVIEW_RESOLVE";
/// A PEM file of extra roots for preview fetches.
pub const LINK_PREVIEW_CA_FILE: &str = "LINK_PREVIEW_CA_FILE";

// Notification.
/// The durable consumer's name.
pub const NATS_CONSUMER: &str = "NATS_CONSUMER";
/// Seconds before an unacknowledged event is redelivered.
pub const NATS_ACK_WAIT_SECS: &str = "NATS_ACK_WAIT_SECS";
/// `smtp` or `stub`.
pub const EMAIL_SENDER: &str = "EMAIL_SENDER";
/// The mail server's host.
pub const SMTP_HOST: &str = "SMTP_HOST";
/// The mail server's port.
pub const SMTP_PORT: &str = "SMTP_PORT";
/// `none`, `starttls` or `tls`.
pub const SMTP_TLS: &str = "SMTP_TLS";
/// The mail server login.
pub const SMTP_USERNAME: &str = "SMTP_USERNAME";
/// The mail server password.
pub const SMTP_PASSWORD: &str = "SMTP_PASSWORD";
/// The From address.
pub const SMTP_FROM: &str = "SMTP_FROM";
/// Per SMTP command, in seconds.
pub const SMTP_TIMEOUT_SECS: &str = "SMTP_TIMEOUT_SECS";
/// Tries per email.
pub const SMTP_MAX_ATTEMPTS: &str = "SMTP_MAX_ATTEMPTS";
/// First pause between tries, in milliseconds.
pub const SMTP_RETRY_BACKOFF_MS: &str = "SMTP_RETRY_BACKOFF_MS";
/// Longest pause between tries, in milliseconds.
pub const SMTP_RETRY_MAX_BACKOFF_MS: &str = "SMTP_RETRY_MAX_BACKOFF_MS";
/// How long a claimed email is owned, in seconds.
pub const DELIVERY_LEASE_SECS: &str = "DELIVERY_LEASE_SECS";

// Saga.
/// How long the notify step may take, in seconds.
pub const NOTIFY_DEADLINE_SECS: &str = "NOTIFY_DEADLINE_SECS";
/// How long an abandoned saga stays owned, in seconds.
pub const SAGA_LEASE_SECS: &str = "SAGA_LEASE_SECS";
/// How often abandoned sagas are resumed, in seconds.
pub const SAGA_RECOVERY_INTERVAL_SECS: &str = "SAGA_RECOVERY_INTERVAL_SECS";

// chat-server (its flags' variables).
/// `chat-server --data`.
pub const CHAT_DATA_DIR: &str = "CHAT_DATA_DIR";
/// `chat-server --database-url`.
pub const CHAT_DATABASE_URL: &str = "CHAT_DATABASE_URL";
/// `chat-server --nats-url`.
pub const CHAT_NATS_URL: &str = "CHAT_NATS_URL";
