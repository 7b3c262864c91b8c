//! grpc-chat's ChatService: chats and members, messages stored durably with a gapless
//! per-chat sequence number, and `Connect` streams that deliver history then live events
//! exactly once and in order, across any number of replicas sharing NATS.
//!
//! [`parts`] assembles the service for serving, for the split binary ([`Application::build`],
//! which the tests use too) and the all-in-one `chat-server` alike.

#![warn(missing_docs)]

pub mod config;
mod convert;
mod deletions;
pub mod directory;
pub mod domain;
pub mod error;
pub mod hub;
mod members;
pub mod outbox;
pub mod presence;
pub mod preview;
pub mod service;
pub mod store;
mod stream;

use std::sync::Arc;

use tonic::{codegen::InterceptedService, service::Interceptor};

pub use chat_common::client::{lazy_channel, verifier_from_auth, TracedChannel};
use chat_common::{
    db::{fail_fast, Guarded},
    server::{Bound, Parts},
    service_token::ServiceCredential,
    Shutdown, TokenVerifier,
};
use chat_events::{EventBus, NatsBus};
use grpc_chat_proto::auth::v1::auth_service_client::AuthServiceClient;
use grpc_chat_proto::chat::v1::chat_service_server::ChatServiceServer;

pub use config::Config;
pub use service::ChatApi;

/// The chat service as the split binary and the tests run it: [`Application::build`]
/// gives it bound and ready to run.
pub struct Application;

/// What the chat service is served with besides its configuration.
pub struct Deps {
    /// Where events go and come from: NATS ([`nats_bus`]) or in-process.
    pub bus: Arc<dyn EventBus>,
    /// AuthService, for this service's token and resolving members.
    pub auth: AuthServiceClient<TracedChannel>,
    /// Checks every call's token.
    pub verifier: TokenVerifier,
    /// Stops the streams and background tasks.
    pub shutdown: Shutdown,
}

/// The chat service's share of a server: ChatService, every call checked by the verifier
/// and answered UNAVAILABLE at once while the chats' database is known to be down, its
/// health following that database. Its background work (fan-out, outbox, deletions,
/// previews) runs on `deps.shutdown`.
pub async fn parts(config: &Config, deps: Deps) -> anyhow::Result<Parts> {
    let api = build_api(config, deps.bus, deps.auth, deps.shutdown).await?;
    let url = &config.database.url;
    Ok(Parts::new().service(grpc_service(api, &deps.verifier, url), url))
}

/// The service's logic on `bus`, calling AuthService through `auth`: what the split
/// binary and the all-in-one `chat-server` both run.
pub async fn build_api(
    config: &Config,
    bus: Arc<dyn EventBus>,
    auth: AuthServiceClient<TracedChannel>,
    shutdown: Shutdown,
) -> anyhow::Result<ChatApi> {
    let store = store::open(
        &config.database.url,
        config.database.max_connections,
        &shutdown,
    )
    .await?;
    let credential = ServiceCredential::new(
        auth.clone(),
        "chat-service",
        config.service_secret.secret.clone(),
    );
    let hub = hub::Hub::with_presence(
        bus,
        store.clone(),
        config.settings.stream_buffer,
        config.settings.catch_up_every,
        shutdown.clone(),
        presence::PresenceSettings {
            heartbeat: config.settings.presence_heartbeat,
        },
    );
    Ok(ChatApi::new(
        store,
        hub,
        directory::Directory::new(auth, credential),
        config.settings.edit_window,
        config.settings.deletions_every,
        shutdown,
        config
            .settings
            .link_previews
            .as_ref()
            .map(preview::LinkPreviews::new)
            .transpose()?,
    ))
}

/// The NATS bus `config` names.
pub async fn nats_bus(config: &Config) -> anyhow::Result<Arc<dyn EventBus>> {
    Ok(Arc::new(
        NatsBus::connect(
            &config.nats.url,
            &config.nats.subject_prefix,
            config
                .settings
                .nats_stream
                .as_deref()
                .map(|name| (name, &config.settings.nats_stream_settings)),
        )
        .await?,
    ))
}

/// The gRPC service for `api`, every call checked by `verifier`, then answered UNAVAILABLE
/// at once while the database on `database_url` is known to be down (every method
/// needs it).
pub fn grpc_service(
    api: ChatApi,
    verifier: &TokenVerifier,
    database_url: &str,
) -> InterceptedService<Guarded<ChatServiceServer<ChatApi>>, impl Interceptor + Clone> {
    InterceptedService::new(
        fail_fast(database_url, &[], ChatServiceServer::new(api)),
        verifier.interceptor(),
    )
}

impl Application {
    /// Connects to the database (migrating it), NATS and AuthService, and binds the
    /// listener. `shutdown` stops the streams and background tasks as well as the server.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Bound> {
        let bus = nats_bus(&config).await?;
        let auth = AuthServiceClient::new(lazy_channel(&config.upstream.auth_url)?);
        let verifier = verifier_from_auth(&auth, &shutdown).await?;
        let deps = Deps {
            bus,
            auth,
            verifier,
            shutdown,
        };
        let parts = parts(&config, deps).await?;
        Bound::bind("chat-service", config.listen.addr, parts).await
    }
}

/// Creates the database when missing and applies the migrations, then returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    store::migrate(&config.database.url).await?;
    tracing::info!("chat database migrated");
    Ok(())
}
