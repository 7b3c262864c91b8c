//! grpc-chat's AuthService: accounts (bcrypt), EdDSA-signed access tokens that every service
//! verifies locally, and rotating refresh tokens with reuse detection.
//!
//! [`Application::build`] is the one place that wires the service: the binary, the embedded
//! all-in-one server and the tests all go through it (or through [`AuthApi`] directly when
//! they bring their own storage and listener).

#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod domain;
pub mod error;
pub mod keys;
pub mod limits;
pub mod service;
pub mod store;

use std::net::SocketAddr;

use tokio::net::TcpListener;

use chat_common::{
    db::{fail_fast, Guarded},
    server, Shutdown,
};
use grpc_chat_proto::auth::v1::auth_service_server::AuthServiceServer;

pub use config::{Config, Settings};
pub use limits::{Limit, RateLimits};
pub use service::AuthApi;

/// The methods that never touch the users database: they answer during its outage.
pub const WITHOUT_STORAGE: &[&str] = &["CheckAccess", "GetPublicKeys"];

/// The gRPC service for `api`, with its health status set to serving, answering
/// UNAVAILABLE at once while the database on `database_url` is known to be down.
pub async fn grpc_service(
    api: AuthApi,
    health: &tonic_health::server::HealthReporter,
    database_url: &str,
) -> Guarded<AuthServiceServer<AuthApi>> {
    health.set_serving::<AuthServiceServer<AuthApi>>().await;
    fail_fast(database_url, WITHOUT_STORAGE, AuthServiceServer::new(api))
}

/// Creates the database when missing and applies the migrations, then returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    store::migrate(&config.database.url).await?;
    tracing::info!("users database migrated");
    Ok(())
}

/// A bound, ready-to-run auth service.
pub struct Application {
    addr: SocketAddr,
    listener: TcpListener,
    api: AuthApi,
    /// Whose reachability the health service reports.
    database_url: String,
}

impl Application {
    /// Connects to and migrates the database, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = store::open(&config.database.url, config.database.max_connections).await?;
        let api = AuthApi::new(store, config.settings).await?;
        let (listener, addr) = chat_common::server::bind(config.listen.addr).await?;
        Ok(Self {
            addr,
            listener,
            api,
            database_url: config.database.url,
        })
    }

    /// The address actually bound (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service logic, for callers that also need it in-process (the tests' direct calls, the
    /// embedded server).
    pub fn api(&self) -> &AuthApi {
        &self.api
    }

    /// Serves until `shutdown` is triggered, then drains open calls.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let auth = grpc_service(self.api, &health, &self.database_url).await;
        chat_common::db::StorageHealth::of(&self.database_url).report(
            health.clone(),
            vec![
                <AuthServiceServer<AuthApi> as tonic::server::NamedService>::NAME.into(),
                String::new(),
            ],
        );
        let (reflection_v1, reflection_v1alpha) = server::reflection(&[<AuthServiceServer<
            AuthApi,
        > as tonic::server::NamedService>::NAME])?;
        tracing::info!(addr = %self.addr, "auth-service serving");
        let router = server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(auth);
        server::serve(router, self.listener, shutdown).await
    }
}
