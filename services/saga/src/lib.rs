//! grpc-chat's SagaOrchestrator: sending a message as a saga (resolve the sender, store the
//! message, have it notified) with a durable log, so that a failed notification is
//! compensated by deleting the message and a crashed orchestrator's sagas are finished by
//! the next one. It talks to the other services over gRPC only, with its service token.
//!
//! [`Application::build`] wires it for the binary and the tests.

#![warn(missing_docs)]

pub mod config;
pub mod domain;
pub mod error;
pub mod orchestrator;
pub mod service;
pub mod store;

use std::net::SocketAddr;

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
use grpc_chat_proto::notification::v1::notification_service_client::NotificationServiceClient;
use grpc_chat_proto::saga::v1::saga_orchestrator_server::SagaOrchestratorServer;

pub use config::Config;
pub use orchestrator::Orchestrator;
pub use service::SagaApi;

/// A bound, ready-to-run orchestrator.
pub struct Application {
    addr: SocketAddr,
    listener: TcpListener,
    orchestrator: Orchestrator,
    verifier: TokenVerifier,
    recovery_interval: std::time::Duration,
    /// Whose reachability the health service reports.
    database_url: String,
}

impl Application {
    /// Connects to and migrates the saga database, loads AuthService's keys, and binds the
    /// listener. The other services are reached lazily.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let auth = AuthServiceClient::new(lazy_channel(&config.upstream.auth_url)?);
        let chat = ChatServiceClient::new(lazy_channel(&config.upstream.chat_url)?);
        let notification =
            NotificationServiceClient::new(lazy_channel(&config.upstream.notification_url)?);
        let verifier = verifier_from_auth(&auth, &shutdown).await?;
        let orchestrator = build_orchestrator(&config, auth, chat, notification, shutdown).await?;
        let (listener, addr) = chat_common::server::bind(config.listen.addr).await?;
        Ok(Self {
            addr,
            listener,
            orchestrator,
            verifier,
            recovery_interval: config.settings.recovery_interval,
            database_url: config.database.url,
        })
    }

    /// The address the server is bound to; the actual port when the configuration asked for 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resumes unfinished sagas (now and periodically) and serves until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        self.orchestrator.spawn_recovery(self.recovery_interval);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<SagaOrchestratorServer<SagaApi>>()
            .await;
        chat_common::db::StorageHealth::of(&self.database_url).report(
            health.clone(),
            vec![
                <SagaOrchestratorServer<SagaApi> as tonic::server::NamedService>::NAME.into(),
                String::new(),
            ],
        );
        let (reflection_v1, reflection_v1alpha) = server::reflection(&[<SagaOrchestratorServer<
            SagaApi,
        > as tonic::server::NamedService>::NAME])?;
        tracing::info!(addr = %self.addr, "saga-orchestrator serving");
        let router = server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(grpc_service(
                self.orchestrator,
                &self.verifier,
                &self.database_url,
            ));
        server::serve(router, self.listener, shutdown).await
    }
}

/// Creates the database when missing and applies the migrations, then returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    store::migrate(&config.database.url).await?;
    tracing::info!("saga database migrated");
    Ok(())
}

/// The orchestrator on `config`'s saga log, calling the other services through these
/// clients: what the split binary and `chat-server` both run.
pub async fn build_orchestrator(
    config: &Config,
    auth: AuthServiceClient<TracedChannel>,
    chat: ChatServiceClient<TracedChannel>,
    notification: NotificationServiceClient<TracedChannel>,
    shutdown: Shutdown,
) -> anyhow::Result<Orchestrator> {
    let store = store::open(&config.database.url, config.database.max_connections).await?;
    let credential = ServiceCredential::new(
        auth.clone(),
        "saga-orchestrator",
        config.service_secret.secret.clone(),
    );
    Ok(Orchestrator::new(
        store,
        auth,
        chat,
        notification,
        credential,
        config.settings.notify_deadline,
        config.settings.lease,
        shutdown,
    ))
}

/// The gRPC service for `orchestrator`, every call checked by `verifier`, then answered
/// UNAVAILABLE at once while the database on `database_url` is known to be down (every
/// method needs it).
pub fn grpc_service(
    orchestrator: Orchestrator,
    verifier: &TokenVerifier,
    database_url: &str,
) -> InterceptedService<
    chat_common::db::Guarded<SagaOrchestratorServer<SagaApi>>,
    impl Interceptor + Clone,
> {
    InterceptedService::new(
        chat_common::db::fail_fast(
            database_url,
            &[],
            SagaOrchestratorServer::new(SagaApi::new(orchestrator)),
        ),
        verifier.interceptor(),
    )
}
