//! `chat-server`: AuthService, ChatService, NotificationService and SagaOrchestrator in
//! one process, on one port, so a person can run the whole system with one command.
//!
//! Nothing here is service logic: each service is built by its own crate's constructor,
//! exactly as its split binary builds it, on the storage and event bus chosen here. By
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
    time::Duration,
};

use secrecy::SecretString;
use tokio::{net::TcpListener, sync::mpsc};
use tonic::server::NamedService;

use chat_common::{
    client::lazy_channel,
    config::{Database, Listen, Nats, ServiceSecret, Upstream},
    server, Shutdown, TokenVerifier,
};
use chat_service::events::{Envelope, EventBus, LocalBus};
use grpc_chat_proto::auth::v1::auth_service_client::AuthServiceClient;
use grpc_chat_proto::chat::v1::chat_service_client::ChatServiceClient;
use grpc_chat_proto::notification::v1::notification_service_client::NotificationServiceClient;
use notification_service::{email::StubEmailSender, EmailConfig, Notifier};
use saga_orchestrator::Orchestrator;

pub use config::{AdminCommand, Args, Command, Config, Storage};

/// Where the notifier's events come from.
enum EventSource {
    /// The in-process bus's tap.
    Local(mpsc::Receiver<Envelope>),
    /// The JetStream consumer shared with other replicas.
    JetStream(Box<async_nats::jetstream::consumer::PullConsumer>),
}

/// A bound, ready-to-run server.
pub struct Server {
    addr: SocketAddr,
    listener: TcpListener,
    verifier: TokenVerifier,
    auth: auth_service::AuthApi,
    chat: chat_service::ChatApi,
    notifier: Notifier,
    events: EventSource,
    orchestrator: Orchestrator,
    recovery_interval: Duration,
    /// Each service's gRPC health name with the database whose reachability it reports.
    storage: Vec<(&'static str, String)>,
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
    /// and builds every service. Nothing is served until [`Server::run_until_stopped`].
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}",
                config.data_dir.display()
            )
        })?;
        let (listener, addr) = server::bind(config.listen).await?;
        let own_url = format!("http://{}", loopback(addr));
        let secret = service_secret(&config);
        let channel = lazy_channel(&own_url)?;
        let auth_client = AuthServiceClient::new(channel.clone());
        let chat_client = ChatServiceClient::new(channel.clone());
        let upstream = Upstream::all_at(&own_url);
        let database = |service: &str, default_pool: u32| Database {
            url: config.database_url(service),
            max_connections: config.database_max_connections.unwrap_or(default_pool),
        };

        let signing_key_pem = match &config.auth.signing_key_pem {
            Some(key) => key.clone(),
            None => keys::signing_key(&config.data_dir)?,
        };
        let settings = auth_service::Settings {
            signing_key_pem: Some(signing_key_pem),
            service_secret: Some(secret.clone()),
            ..config.auth.clone()
        };
        let users = auth_service::store::open(&config.database_url("users"), 10).await?;
        let auth = auth_service::AuthApi::new(users, settings).await?;
        let verifier = auth.verifier();

        let nats = Nats {
            url: config.nats_url.clone().unwrap_or_default(),
            subject_prefix: config.subject_prefix.clone(),
        };
        let chat_config = chat_service::Config {
            listen: Listen { addr },
            database: database("chat", 20),
            nats: nats.clone(),
            upstream: upstream.clone(),
            service_secret: ServiceSecret::new(secret.clone()),
            settings: config.chat.clone(),
        };
        let (bus, tap): (Arc<dyn EventBus>, _) = match &config.nats_url {
            Some(_) => (chat_service::nats_bus(&chat_config).await?, None),
            None => {
                let (bus, tap) = LocalBus::with_tap(chat_service::events::TAP_CAPACITY);
                (Arc::new(bus), Some(tap))
            }
        };
        let chat =
            chat_service::build_api(&chat_config, bus, auth_client.clone(), shutdown.clone())
                .await?;

        let notify_config = notification_service::Config {
            listen: Listen { addr },
            database: database("notification", 10),
            nats,
            upstream: upstream.clone(),
            service_secret: ServiceSecret::new(secret.clone()),
            settings: config.notification.clone(),
        };
        let sender = match &notify_config.settings.email {
            EmailConfig::Smtp(_) => {
                notification_service::email_sender(&notify_config.settings.email)?
            }
            EmailConfig::Stub => {
                let record = config.data_dir.join("sent-emails.jsonl");
                tracing::info!(record = %record.display(), "emails go to the stub sender");
                Arc::new(StubEmailSender::with_record_file(record))
            }
        };
        let notifier = notification_service::build_notifier(
            &notify_config,
            sender,
            auth_client.clone(),
            chat_client.clone(),
            shutdown.clone(),
        )
        .await?;
        let events = match tap {
            Some(tap) => EventSource::Local(tap),
            None => EventSource::JetStream(Box::new(
                notification_service::consumer::connect(
                    &notify_config.nats,
                    &notify_config.settings,
                )
                .await?,
            )),
        };

        let saga_config = saga_orchestrator::Config {
            listen: Listen { addr },
            database: database("saga", 10),
            upstream,
            service_secret: ServiceSecret::new(secret),
            settings: config.saga.clone(),
        };
        let orchestrator = saga_orchestrator::build_orchestrator(
            &saga_config,
            auth_client,
            chat_client,
            NotificationServiceClient::new(channel),
            shutdown,
        )
        .await?;

        Ok(Self {
            addr,
            listener,
            verifier,
            auth,
            chat,
            notifier,
            events,
            orchestrator,
            recovery_interval: saga_config.settings.recovery_interval,
            storage: vec![
                (AuthServer::NAME, config.database_url("users")),
                (ChatServer::NAME, config.database_url("chat")),
                (
                    NotificationServer::NAME,
                    config.database_url("notification"),
                ),
                (SagaServer::NAME, config.database_url("saga")),
            ],
        })
    }

    /// The address actually bound (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves every service until `shutdown`, then drains open calls and streams.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let events = match self.events {
            EventSource::Local(tap) => tokio::spawn(notification_service::local::run(
                tap,
                self.notifier.clone(),
                shutdown.clone(),
            )),
            EventSource::JetStream(consumer) => tokio::spawn(notification_service::consumer::run(
                *consumer,
                self.notifier.clone(),
                shutdown.clone(),
            )),
        };
        self.orchestrator.spawn_recovery(self.recovery_interval);

        let (health, health_service) = tonic_health::server::health_reporter();
        // Each service answers UNAVAILABLE at once while its own database is down.
        let url = |name: &str| {
            self.storage
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, url)| url.clone())
                .unwrap_or_default()
        };
        let auth = auth_service::grpc_service(self.auth, &health, &url(AuthServer::NAME)).await;
        let chat = chat_service::grpc_service(self.chat, &self.verifier, &url(ChatServer::NAME));
        let notification = notification_service::grpc_service(
            self.notifier,
            &self.verifier,
            &url(NotificationServer::NAME),
        );
        let saga = saga_orchestrator::grpc_service(
            self.orchestrator,
            &self.verifier,
            &url(SagaServer::NAME),
        );
        health.set_serving::<ChatServer>().await;
        health.set_serving::<NotificationServer>().await;
        health.set_serving::<SagaServer>().await;
        // Each service NOT_SERVING while its database is unreachable; the server as a
        // whole ("") stays SERVING, since the others may still work.
        for (name, url) in &self.storage {
            chat_common::db::StorageHealth::of(url).report(health.clone(), vec![(*name).into()]);
        }
        let (reflection_v1, reflection_v1alpha) = server::reflection(&[
            <AuthServer as tonic::server::NamedService>::NAME,
            <ChatServer as tonic::server::NamedService>::NAME,
            <NotificationServer as tonic::server::NamedService>::NAME,
            <SagaServer as tonic::server::NamedService>::NAME,
        ])?;
        let router = server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(auth)
            .add_service(chat)
            .add_service(notification)
            .add_service(saga);
        tracing::info!(addr = %self.addr, "chat-server serving");
        println!("chat-server listening on {}", self.addr);
        let served = server::serve(router, self.listener, shutdown).await;
        // Events being handled settle before the exit: no claim is left behind.
        if let Err(e) = events.await {
            tracing::error!(error = %e, "the event handler failed");
        }
        served
    }
}

type AuthServer =
    grpc_chat_proto::auth::v1::auth_service_server::AuthServiceServer<auth_service::AuthApi>;
type ChatServer =
    grpc_chat_proto::chat::v1::chat_service_server::ChatServiceServer<chat_service::ChatApi>;
type NotificationServer =
    grpc_chat_proto::notification::v1::notification_service_server::NotificationServiceServer<
        notification_service::NotificationApi,
    >;
type SagaServer = grpc_chat_proto::saga::v1::saga_orchestrator_server::SagaOrchestratorServer<
    saga_orchestrator::SagaApi,
>;

/// Creates every database when missing and applies the migrations, then returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    drop(auth_service::store::open(&config.database_url("users"), 1).await?);
    chat_service::store::migrate(&config.database_url("chat")).await?;
    drop(notification_service::store::open(&config.database_url("notification"), 1).await?);
    drop(saga_orchestrator::store::open(&config.database_url("saga"), 1).await?);
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
