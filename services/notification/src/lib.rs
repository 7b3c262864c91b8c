//! grpc-chat's NotificationService: emails every member of a chat but the sender about each
//! new message, once per recipient however many replicas run and however often an event is
//! redelivered, and tells the saga orchestrator whether a message's emails went out.
//!
//! Events arrive through an [`EventSource`] (`source.rs`): the JetStream durable consumer
//! (`consumer.rs`), or the in-process bus's tap in `chat-server` (`local.rs`), both handled
//! by one loop. The saga can also ask for a message directly (`service.rs`); both paths go
//! through the same [`notifier::Notifier`],
//! which records deliveries in this service's own database (`store`) and sends through an
//! [`email::EmailSender`]. [`parts`] assembles it for serving, for the split binary
//! ([`Application::build`], which the tests use too) and the all-in-one `chat-server` alike.

#![warn(missing_docs)]

pub mod config;
pub mod consumer;
mod convert;
pub mod email;
pub mod error;
pub mod local;
pub mod notifier;
pub mod service;
pub mod source;
pub mod store;

use std::sync::Arc;

use tonic::{codegen::InterceptedService, service::Interceptor};

use chat_common::{
    client::{lazy_channel, verifier_from_auth, TracedChannel},
    server::{Bound, Parts},
    service_token::ServiceCredential,
    Shutdown, TokenVerifier,
};
use grpc_chat_proto::auth::v1::auth_service_client::AuthServiceClient;
use grpc_chat_proto::chat::v1::chat_service_client::ChatServiceClient;
use grpc_chat_proto::notification::v1::notification_service_server::NotificationServiceServer;

pub use config::{Config, EmailConfig};
pub use consumer::JetStreamSource;
use email::{smtp::SmtpEmailSender, EmailSender, StubEmailSender};
pub use local::LocalSource;
pub use notifier::Notifier;
pub use service::NotificationApi;
pub use source::EventSource;

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

/// What the notification service is served with besides its configuration.
pub struct Deps {
    /// Delivers the emails ([`email_sender`] makes the configured one).
    pub sender: Arc<dyn EmailSender>,
    /// AuthService: this service's token, recipients' emails.
    pub auth: AuthServiceClient<TracedChannel>,
    /// ChatService: a chat's members and its messages.
    pub chat: ChatServiceClient<TracedChannel>,
    /// Checks every call's token.
    pub verifier: TokenVerifier,
    /// The chat events to notify about: a [`JetStreamSource`], or a [`LocalSource`] on
    /// an in-process bus's tap (`chat-server` without NATS).
    pub events: Box<dyn EventSource>,
    /// Stops the event loop and the email sweeper.
    pub shutdown: Shutdown,
}

/// The notification service's share of a server: NotificationService, every call checked by
/// the verifier and answered UNAVAILABLE at once while the records' database is known to be
/// down, its health following that database; and the event loop, which settles the events
/// being handled before the server's exit, so no claim is left behind.
pub async fn parts(config: &Config, deps: Deps) -> anyhow::Result<Parts> {
    let shutdown = deps.shutdown;
    let notifier =
        build_notifier(config, deps.sender, deps.auth, deps.chat, shutdown.clone()).await?;
    let handler = notifier.clone();
    let events = source::run(deps.events, handler, shutdown);
    let url = &config.database.url;
    Ok(Parts::new()
        .service(grpc_service(notifier, &deps.verifier, url), url)
        .background(events))
}

/// The notification service as the split binary and the tests run it:
/// [`Application::build`] gives it bound and ready to run.
pub struct Application;

impl Application {
    /// Builds with the email sender the configuration names.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Bound> {
        let sender = email_sender(&config.settings.email)?;
        Self::build_with_sender(config, sender, shutdown).await
    }

    /// Connects to its database (migrating it), NATS (creating the consumer), AuthService and
    /// ChatService, and binds the listener; emails go through `sender`.
    pub async fn build_with_sender(
        config: Config,
        sender: Arc<dyn EmailSender>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Bound> {
        let auth = AuthServiceClient::new(lazy_channel(&config.upstream.auth_url)?);
        let chat = ChatServiceClient::new(lazy_channel(&config.upstream.chat_url)?);
        let verifier = verifier_from_auth(&auth, &shutdown).await?;
        let events = JetStreamSource::connect(&config.nats, &config.settings).await?;
        let deps = Deps {
            sender,
            auth,
            chat,
            verifier,
            events: Box::new(events),
            shutdown,
        };
        let parts = parts(&config, deps).await?;
        Bound::bind("notification-service", config.listen.addr, parts).await
    }
}

/// Creates the database when missing and applies the migrations, then returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    store::migrate(&config.database.url).await?;
    tracing::info!("notification database migrated");
    Ok(())
}

/// The notifier on `config`'s database, emailing through `sender` and calling the other
/// services through `auth` and `chat`.
async fn build_notifier(
    config: &Config,
    sender: Arc<dyn EmailSender>,
    auth: AuthServiceClient<TracedChannel>,
    chat: ChatServiceClient<TracedChannel>,
    shutdown: Shutdown,
) -> anyhow::Result<Notifier> {
    let store = store::open(
        &config.database.url,
        config.database.max_connections,
        &shutdown,
    )
    .await?;
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
fn grpc_service(
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
