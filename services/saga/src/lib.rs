//! grpc-chat's SagaOrchestrator: sending a message as a saga (resolve the sender, store the
//! message, have it notified) with a durable log, so that a failed notification is
//! compensated by deleting the message and a crashed orchestrator's sagas are finished by
//! the next one. It talks to the other services over gRPC only, with its service token.
//!
//! [`parts`] assembles it for serving, for the split binary ([`Application::build`], which
//! the tests use too) and the all-in-one `chat-server` alike.

#![warn(missing_docs)]

pub mod config;
mod convert;
pub mod domain;
pub mod error;
pub mod machine;
pub mod orchestrator;
pub mod service;
pub mod store;

use tonic::{codegen::InterceptedService, service::Interceptor};

use chat_common::{
    client::{lazy_channel, verifier_from_auth, TracedChannel},
    server::{Bound, Parts},
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

/// What the orchestrator is served with besides its configuration.
pub struct Deps {
    /// AuthService: this service's token, resolving the sender.
    pub auth: AuthServiceClient<TracedChannel>,
    /// ChatService, which stores the message and deletes it on compensation.
    pub chat: ChatServiceClient<TracedChannel>,
    /// NotificationService, which the notify step asks about the message's emails.
    pub notification: NotificationServiceClient<TracedChannel>,
    /// Checks every call's token.
    pub verifier: TokenVerifier,
    /// Stops the sagas' steps and the recovery sweep.
    pub shutdown: Shutdown,
}

/// The orchestrator's share of a server: SagaOrchestrator, every call checked by the
/// verifier and answered UNAVAILABLE at once while the saga log's database is known to be
/// down, its health following that database; and the recovery of unfinished sagas (now
/// and every `SAGA_RECOVERY_INTERVAL_SECS`), started when serving starts.
pub async fn parts(config: &Config, deps: Deps) -> anyhow::Result<Parts> {
    let orchestrator = build_orchestrator(
        config,
        deps.auth,
        deps.chat,
        deps.notification,
        deps.shutdown,
    )
    .await?;
    let recovery = orchestrator.clone();
    let every = config.settings.recovery_interval;
    let url = &config.database.url;
    Ok(Parts::new()
        .service(grpc_service(orchestrator, &deps.verifier, url), url)
        // The sweep is a task of the orchestrator's own, on the shutdown.
        .background(async move { recovery.spawn_recovery(every) }))
}

/// The orchestrator as the split binary and the tests run it: [`Application::build`]
/// gives it bound and ready to run; serving resumes unfinished sagas (now and
/// periodically).
pub struct Application;

impl Application {
    /// Connects to and migrates the saga database, loads AuthService's keys, and binds the
    /// listener. The other services are reached lazily.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Bound> {
        let upstream = &config.upstream;
        let auth = AuthServiceClient::new(lazy_channel(&upstream.auth_url)?);
        let verifier = verifier_from_auth(&auth, &shutdown).await?;
        let deps = Deps {
            auth,
            chat: ChatServiceClient::new(lazy_channel(&upstream.chat_url)?),
            notification: NotificationServiceClient::new(lazy_channel(&upstream.notification_url)?),
            verifier,
            shutdown,
        };
        let parts = parts(&config, deps).await?;
        Bound::bind("saga-orchestrator", config.listen.addr, parts).await
    }
}

/// Creates the database when missing and applies the migrations, then returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    store::migrate(&config.database.url).await?;
    tracing::info!("saga database migrated");
    Ok(())
}

/// The orchestrator on `config`'s saga log, calling the other services through these
/// clients.
async fn build_orchestrator(
    config: &Config,
    auth: AuthServiceClient<TracedChannel>,
    chat: ChatServiceClient<TracedChannel>,
    notification: NotificationServiceClient<TracedChannel>,
    shutdown: Shutdown,
) -> anyhow::Result<Orchestrator> {
    let store = store::open(
        &config.database.url,
        config.database.max_connections,
        &shutdown,
    )
    .await?;
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
        config.settings.unlogged_success,
        shutdown,
    ))
}

/// The gRPC service for `orchestrator`, every call checked by `verifier`, then answered
/// UNAVAILABLE at once while the database on `database_url` is known to be down (every
/// method needs it).
fn grpc_service(
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
