//! grpc-chat's AuthService: accounts (bcrypt), EdDSA-signed access tokens that every service
//! verifies locally, and rotating refresh tokens with reuse detection.
//!
//! [`parts`] is the one place that assembles the service for serving: the binary (through
//! [`Application::build`]), the embedded all-in-one server and the tests all go through it
//! (or through [`AuthApi`] directly when they bring their own storage and listener).

#![warn(missing_docs)]

pub mod admin;
pub mod config;
mod convert;
pub mod domain;
pub mod error;
pub mod keys;
pub mod limits;
pub mod service;
pub mod store;

use std::net::SocketAddr;

use tokio::net::TcpListener;

use chat_common::{
    db::fail_fast,
    server::{self, Parts},
    Shutdown,
};
use grpc_chat_proto::auth::v1::auth_service_server::AuthServiceServer;

pub use config::{Config, Settings};
pub use limits::{Limit, RateLimits};
pub use service::AuthApi;

/// The methods that never touch the users database: they answer during its outage.
pub const WITHOUT_STORAGE: &[&str] = &["CheckAccess", "GetPublicKeys"];

/// What the auth service is served with besides its configuration: its logic, which the
/// caller keeps too (the embedded server takes the token verifier from it, the tests its
/// state).
pub struct Deps {
    /// The service logic on its opened store.
    pub api: AuthApi,
}

/// The auth service's share of a server: AuthService, answering UNAVAILABLE at once while
/// the users database is known to be down (except [`WITHOUT_STORAGE`]), its health following
/// that database.
pub async fn parts(config: &Config, deps: Deps) -> anyhow::Result<Parts> {
    let url = &config.database.url;
    let service = fail_fast(url, WITHOUT_STORAGE, AuthServiceServer::new(deps.api));
    Ok(Parts::new().service(service, url))
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
    parts: Parts,
}

impl Application {
    /// Connects to and migrates the database, and binds the listener; the service's
    /// background work runs on `shutdown`.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let store = store::open(
            &config.database.url,
            config.database.max_connections,
            &shutdown,
        )
        .await?;
        let api = AuthApi::new(store, config.settings.clone(), &shutdown).await?;
        let parts = parts(&config, Deps { api: api.clone() }).await?;
        let (listener, addr) = server::bind(config.listen.addr).await?;
        Ok(Self {
            addr,
            listener,
            api,
            parts,
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
        server::serve_parts(
            "auth-service",
            vec![self.parts],
            self.listener,
            None,
            shutdown,
        )
        .await
    }
}
