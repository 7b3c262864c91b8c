//! grpc-chat's NotificationService: emails every member of a chat but the sender about each
//! new message, once per recipient however many replicas run and however often an event is
//! redelivered, and tells the saga orchestrator whether a message's emails went out.
//!
//! Events arrive through a JetStream durable consumer (`consumer.rs`); the saga can also ask
//! for a message directly (`service.rs`); both go through the same [`notifier::Notifier`],
//! which records deliveries in this service's own database (`store`) and sends through an
//! [`email::EmailSender`]. [`Application::build`] wires it for the binary and the tests.

#![warn(missing_docs)]

pub mod config;
pub mod consumer;
pub mod email;
pub mod error;
pub mod local;
pub mod notifier;
pub mod service;
pub mod store;

use std::{net::SocketAddr, sync::Arc};

use async_nats::jetstream::consumer::PullConsumer;
use tokio::net::TcpListener;
use tonic::{codegen::InterceptedService, service::Interceptor};

use chat_common::{
    client::{lazy_channel, verifier_from_auth, TracedChannel},
    server,
    service_token::ServiceCredential,
    Shutdown, TokenVerifier,
};
use grpc_chat_proto::auth::v1::auth_service_client::AuthServiceClient;
use grpc_chat_proto::chat::v1::chat_service_client::ChatServiceClient;
use grpc_chat_proto::notification::v1::notification_service_server::NotificationServiceServer;

pub use config::{Config, EmailConfig};
use email::{smtp::SmtpEmailSender, EmailSender, StubEmailSender};
pub use notifier::Notifier;
pub use service::NotificationApi;

/// The sender `config` asks for.
pub fn email_sender(config: &EmailConfig) -> anyhow::Result<Arc<dyn EmailSender>> {
    Ok(match config {
        EmailConfig::Stub => {
            tracing::warn!("EMAIL_SENDER=stub: emails are logged, not sent");
            Arc::new(StubEmailSender::new())
        }
        EmailConfig::Smtp(smtp) => Arc::new(SmtpEmailSender::new(smtp)?),
    })
}

/// A bound, ready-to-run notification service.
pub struct Application {
    addr: SocketAddr,
    listener: TcpListener,
    notifier: Notifier,
    consumer: PullConsumer,
    verifier: TokenVerifier,
    /// Whose reachability the health service reports.
    database_url: String,
}

impl Application {
    /// Builds with the email sender the configuration names.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let sender = email_sender(&config.settings.email)?;
        Self::build_with_sender(config, sender, shutdown).await
    }

    /// Connects to its database (migrating it), NATS (creating the consumer), AuthService and
    /// ChatService, and binds the listener; emails go through `sender`.
    pub async fn build_with_sender(
        config: Config,
        sender: Arc<dyn EmailSender>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let auth = AuthServiceClient::new(lazy_channel(&config.upstream.auth_url)?);
        let chat = ChatServiceClient::new(lazy_channel(&config.upstream.chat_url)?);
        let verifier = verifier_from_auth(&auth, &shutdown).await?;
        let consumer = consumer::connect(&config.nats, &config.settings).await?;
        let notifier = build_notifier(&config, sender, auth, chat, shutdown).await?;
        let (listener, addr) = chat_common::server::bind(config.listen.addr).await?;
        Ok(Self {
            addr,
            listener,
            notifier,
            consumer,
            verifier,
            database_url: config.database.url,
        })
    }

    /// The address the server is bound to; the actual port when the configuration asked for 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Consumes events and serves until `shutdown` is triggered.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let events = tokio::spawn(consumer::run(
            self.consumer,
            self.notifier.clone(),
            shutdown.clone(),
        ));
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<NotificationServiceServer<NotificationApi>>()
            .await;
        chat_common::db::StorageHealth::of(&self.database_url).report(
            health.clone(),
            vec![
                <NotificationServiceServer<NotificationApi> as tonic::server::NamedService>::NAME
                    .into(),
                String::new(),
            ],
        );
        let (reflection_v1, reflection_v1alpha) = server::reflection(&[
            <NotificationServiceServer<NotificationApi> as tonic::server::NamedService>::NAME,
        ])?;
        tracing::info!(addr = %self.addr, "notification-service serving");
        let router = server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(grpc_service(
                self.notifier,
                &self.verifier,
                &self.database_url,
            ));
        let served = server::serve(router, self.listener, shutdown).await;
        // Events being handled settle before the exit: no claim is left behind.
        if let Err(e) = events.await {
            tracing::error!(error = %e, "the event consumer failed");
        }
        served
    }
}

/// Creates the database when missing and applies the migrations, then returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    store::migrate(&config.database.url).await?;
    tracing::info!("notification database migrated");
    Ok(())
}

/// The notifier on `config`'s database, emailing through `sender` and calling the other
/// services through `auth` and `chat`: what the split binary and `chat-server` both run.
pub async fn build_notifier(
    config: &Config,
    sender: Arc<dyn EmailSender>,
    auth: AuthServiceClient<TracedChannel>,
    chat: ChatServiceClient<TracedChannel>,
    shutdown: Shutdown,
) -> anyhow::Result<Notifier> {
    let store = store::open(&config.database.url, config.database.max_connections).await?;
    let credential = ServiceCredential::new(
        auth.clone(),
        "notification-service",
        config.service_secret.secret.clone(),
    );
    let notifier = Notifier::new(
        store,
        sender,
        chat,
        auth,
        credential,
        config.settings.retry,
        config.settings.delivery_lease,
        shutdown,
    );
    // Direct emails have no event to come again: the sweeper finds those left unsent.
    notifier.start_email_sweeper();
    Ok(notifier)
}

/// The gRPC service for `notifier`, every call checked by `verifier`, then answered
/// UNAVAILABLE at once while the database on `database_url` is known to be down (every
/// method needs it).
pub fn grpc_service(
    notifier: Notifier,
    verifier: &TokenVerifier,
    database_url: &str,
) -> InterceptedService<
    chat_common::db::Guarded<NotificationServiceServer<NotificationApi>>,
    impl Interceptor + Clone,
> {
    InterceptedService::new(
        chat_common::db::fail_fast(
            database_url,
            &[],
            NotificationServiceServer::new(NotificationApi::new(notifier)),
        ),
        verifier.interceptor(),
    )
}
