//! `chat-server`: AuthService, ChatService, NotificationService and SagaOrchestrator in
//! one process, on one port, so a person can run the whole system with one command.
//!
//! Nothing here is service logic: each service is assembled by its own crate's `parts`,
//! exactly as its split binary assembles it, on the storage and event bus chosen here, and
//! the parts are served together by `chat_common::server::serve_parts`. By
//! default that is an SQLite file per service under the data directory and the in-process
//! `LocalBus` (with a tap feeding the notifier); with `--database-url` and `--nats-url` it
//! is PostgreSQL and NATS, and several `chat-server`s are replicas of one system. The
//! services still call each other over gRPC, on this process's own port, with service
//! tokens, so the embedded server exercises the same paths as the split deployment.

#![warn(missing_docs)]

pub mod config;
mod keys;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use secrecy::SecretString;
use tokio::net::TcpListener;

use chat_common::{
    client::{lazy_channel, TracedChannel},
    config::{Database, Listen, Nats, ServiceSecret, Upstream},
    local::LocalRoutes,
    server::{self, Parts},
    Shutdown, TokenVerifier,
};
use chat_events::{EventBus, LocalBus, TAP_CAPACITY};
use grpc_chat_proto::auth::v1::auth_service_client::AuthServiceClient;
use grpc_chat_proto::chat::v1::chat_service_client::ChatServiceClient;
use grpc_chat_proto::notification::v1::notification_service_client::NotificationServiceClient;
use notification_service::{
    email::StubEmailSender, EmailConfig, EventSource, JetStreamSource, LocalSource,
};

pub use config::{AdminCommand, Args, Command, Config, Storage};

/// A bound, ready-to-run server.
pub struct Server {
    addr: SocketAddr,
    listener: TcpListener,
    /// The services' calls to each other, answered in process once serving starts.
    local: LocalRoutes,
    /// The four services, assembled by their crates.
    parts: Vec<Parts>,
}

/// The address this process reaches its own port on.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// What the four services of this process share: where they reach each other (this
/// process's own port), the service secret and the shutdown.
struct Wiring<'a> {
    config: &'a Config,
    listen: Listen,
    upstream: Upstream,
    channel: TracedChannel,
    secret: SecretString,
    shutdown: Shutdown,
}

impl Wiring<'_> {
    /// The database section of `service` (`users`, `chat`, ...), whose pool is `default_pool`
    /// connections unless `DATABASE_MAX_CONNECTIONS` says otherwise.
    fn database(&self, service: &str, default_pool: u32) -> Database {
        Database {
            url: self.config.database_url(service),
            max_connections: self.config.database_max_connections.unwrap_or(default_pool),
        }
    }

    fn auth(&self) -> AuthServiceClient<TracedChannel> {
        AuthServiceClient::new(self.channel.clone())
    }

    fn chat(&self) -> ChatServiceClient<TracedChannel> {
        ChatServiceClient::new(self.channel.clone())
    }

    fn service_secret(&self) -> ServiceSecret {
        ServiceSecret::new(self.secret.clone())
    }

    /// AuthService, signing with `JWT_SIGNING_KEY` or the data directory's key; returns the
    /// verifier the other services check tokens with.
    async fn auth_parts(&self) -> anyhow::Result<(Parts, TokenVerifier)> {
        let signing_key_pem = match &self.config.auth.signing_key_pem {
            Some(key) => key.clone(),
            None => keys::signing_key(&self.config.data_dir)?,
        };
        let config = auth_service::Config {
            listen: self.listen.clone(),
            // The users database's pool is 10 here, whatever the variable says.
            database: Database {
                url: self.config.database_url("users"),
                max_connections: 10,
            },
            settings: auth_service::Settings {
                signing_key_pem: Some(signing_key_pem),
                service_secret: Some(self.secret.clone()),
                ..self.config.auth.clone()
            },
        };
        let database = &config.database;
        let store =
            auth_service::store::open(&database.url, database.max_connections, &self.shutdown)
                .await?;
        let api =
            auth_service::AuthApi::new(store, config.settings.clone(), &self.shutdown).await?;
        let verifier = api.verifier();
        let parts = auth_service::parts(&config, auth_service::Deps { api }).await?;
        Ok((parts, verifier))
    }

    /// ChatService on NATS when `--nats-url` is given, else on the in-process bus; returns
    /// where the notifier's events come from.
    async fn chat_parts(
        &self,
        verifier: &TokenVerifier,
    ) -> anyhow::Result<(Parts, Box<dyn EventSource>)> {
        let config = chat_service::Config {
            listen: self.listen.clone(),
            database: self.database("chat", 20),
            nats: self.nats(),
            upstream: self.upstream.clone(),
            service_secret: self.service_secret(),
            settings: self.config.chat.clone(),
        };
        let (bus, events): (Arc<dyn EventBus>, Box<dyn EventSource>) = match &self.config.nats_url {
            Some(_) => {
                let bus = chat_service::nats_bus(&config).await?;
                let settings = &self.config.notification;
                let source = JetStreamSource::connect(&config.nats, settings);
                (bus, Box::new(source.await?))
            }
            None => {
                let (bus, tap) = LocalBus::with_tap(TAP_CAPACITY);
                (Arc::new(bus), Box::new(LocalSource::new(tap)))
            }
        };
        let deps = chat_service::Deps {
            bus,
            auth: self.auth(),
            verifier: verifier.clone(),
            shutdown: self.shutdown.clone(),
        };
        Ok((chat_service::parts(&config, deps).await?, events))
    }

    fn nats(&self) -> Nats {
        Nats {
            url: self.config.nats_url.clone().unwrap_or_default(),
            subject_prefix: self.config.subject_prefix.clone(),
        }
    }

    /// NotificationService, emailing through SMTP when asked for, else through the stub
    /// that records into the data directory.
    async fn notification_parts(
        &self,
        verifier: &TokenVerifier,
        events: Box<dyn EventSource>,
    ) -> anyhow::Result<Parts> {
        let config = notification_service::Config {
            listen: self.listen.clone(),
            database: self.database("notification", 10),
            nats: self.nats(),
            upstream: self.upstream.clone(),
            service_secret: self.service_secret(),
            settings: self.config.notification.clone(),
        };
        let sender = match &config.settings.email {
            EmailConfig::Smtp(_) => notification_service::email_sender(&config.settings.email)?,
            EmailConfig::Stub => {
                let record = self.config.data_dir.join("sent-emails.jsonl");
                tracing::info!(record = %record.display(), "emails go to the stub sender");
                Arc::new(StubEmailSender::with_record_file(record))
            }
        };
        let deps = notification_service::Deps {
            sender,
            auth: self.auth(),
            chat: self.chat(),
            verifier: verifier.clone(),
            events,
            shutdown: self.shutdown.clone(),
        };
        notification_service::parts(&config, deps).await
    }

    /// The SagaOrchestrator.
    async fn saga_parts(&self, verifier: &TokenVerifier) -> anyhow::Result<Parts> {
        let config = saga_orchestrator::Config {
            listen: self.listen.clone(),
            database: self.database("saga", 10),
            upstream: self.upstream.clone(),
            service_secret: self.service_secret(),
            settings: self.config.saga.clone(),
        };
        let deps = saga_orchestrator::Deps {
            auth: self.auth(),
            chat: self.chat(),
            notification: NotificationServiceClient::new(self.channel.clone()),
            verifier: verifier.clone(),
            shutdown: self.shutdown.clone(),
        };
        saga_orchestrator::parts(&config, deps).await
    }
}

/// The secret the services exchange for service tokens: `SERVICE_SECRET` when set, else a
/// random one that lives as long as the process (only this process's services use it).
fn service_secret(config: &Config) -> SecretString {
    match &config.service_secret.secret {
        Some(s) => s.clone(),
        None => SecretString::from(hex::encode(rand::random::<[u8; 32]>())),
    }
}

impl Server {
    /// Binds the port, opens (and migrates) the four databases, connects NATS when asked,
    /// and assembles every service. Nothing is served until [`Server::run_until_stopped`].
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}",
                config.data_dir.display()
            )
        })?;
        let (listener, addr) = server::bind(config.listen).await?;
        let own_url = format!("http://{}", loopback(addr));
        let local = LocalRoutes::default();
        let wiring = Wiring {
            config: &config,
            listen: Listen { addr },
            upstream: Upstream::all_at(&own_url),
            channel: lazy_channel(&own_url)?.with_local(local.clone()),
            secret: service_secret(&config),
            shutdown,
        };
        let (auth, verifier) = wiring.auth_parts().await?;
        let (chat, events) = wiring.chat_parts(&verifier).await?;
        let notification = wiring.notification_parts(&verifier, events).await?;
        let saga = wiring.saga_parts(&verifier).await?;
        Ok(Self {
            addr,
            listener,
            local,
            parts: vec![auth, chat, notification, saga],
        })
    }

    /// The address actually bound (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves every service until `shutdown`, then drains open calls and streams, and lets
    /// the events being handled settle.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        println!("chat-server listening on {}", self.addr);
        server::serve_parts(
            "chat-server",
            self.parts,
            self.listener,
            Some(&self.local),
            shutdown,
        )
        .await
    }
}

/// Creates every database when missing and applies the migrations, then returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    auth_service::store::migrate(&config.database_url("users")).await?;
    chat_service::store::migrate(&config.database_url("chat")).await?;
    notification_service::store::migrate(&config.database_url("notification")).await?;
    saga_orchestrator::store::migrate(&config.database_url("saga")).await?;
    tracing::info!("databases migrated");
    Ok(())
}

/// Runs `chat-server admin grant|revoke EMAIL` against the users database (migrating it
/// first) and says what was done.
pub async fn admin(config: &Config, command: &AdminCommand) -> anyhow::Result<String> {
    use auth_service::admin::AdminAction;
    let (action, email) = match command {
        AdminCommand::Grant { email } => (AdminAction::Grant, email),
        AdminCommand::Revoke { email } => (AdminAction::Revoke, email),
    };
    auth_service::admin::set_role(&config.database_url("users"), action, email).await
}

/// What [`migrate`] did, for `chat-server migrate` to print: which databases, where
/// (without credentials).
pub fn migrated(config: &Config) -> String {
    const SERVICES: [&str; 4] = ["users", "chat", "notification", "saga"];
    match &config.storage {
        Storage::Sqlite(dir) => format!(
            "migrated the SQLite databases {} in {}",
            SERVICES.map(|s| format!("{s}.db")).join(", "),
            dir.display()
        ),
        Storage::Postgres(_) => {
            let names = SERVICES.map(|s| {
                let url = config.database_url(s);
                let path = url.split('?').next().unwrap_or_default();
                path.rsplit('/').next().unwrap_or_default().to_owned()
            });
            format!("migrated the PostgreSQL databases {}", names.join(", "))
        }
    }
}
