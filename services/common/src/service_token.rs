//! The credential a service presents when it calls another service's internal RPCs.
//!
//! A service exchanges the pre-shared `SERVICE_SECRET` for a short-lived service token at
//! AuthService (`IssueServiceToken`) and caches it until shortly before it expires, so an
//! internal call costs no extra round trip. The token verifies like any access token, with
//! role `service`.

use std::{sync::Arc, time::Duration};

use crate::trace::TracedChannel;
use grpc_chat_proto::auth::v1::{auth_service_client::AuthServiceClient, IssueServiceTokenRequest};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tonic::{metadata::MetadataValue, Request, Status};

struct Cached {
    token: String,
    refresh_at: tokio::time::Instant,
}

/// Fetches and caches this service's token; cheap to clone.
#[derive(Clone)]
pub struct ServiceCredential {
    client: AuthServiceClient<TracedChannel>,
    name: String,
    /// None when the service has no secret: it then asks with an empty one, which
    /// AuthService refuses, so the caller sees AuthService's own answer.
    secret: Option<SecretString>,
    cached: Arc<Mutex<Option<Cached>>>,
}

impl ServiceCredential {
    /// A credential for the service called `name` (the `service:<name>` subject of its tokens) that
    /// exchanges `secret` at AuthService through `client`. Nothing is fetched until the first
    /// [`ServiceCredential::token`].
    pub fn new(
        client: AuthServiceClient<TracedChannel>,
        name: &str,
        secret: Option<SecretString>,
    ) -> Self {
        Self {
            client,
            name: name.to_owned(),
            secret,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// A valid service token, fetched when the cached one is missing or about to expire.
    pub async fn token(&self) -> Result<String, Status> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if tokio::time::Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        let resp = self
            .client
            .clone()
            .issue_service_token(IssueServiceTokenRequest {
                service_name: self.name.clone(),
                secret: self
                    .secret
                    .as_ref()
                    .map(|s| s.expose_secret().to_owned())
                    .unwrap_or_default(),
            })
            .await?
            .into_inner();
        let lifetime = resp
            .expires_at
            .map(|t| t.seconds - chrono::Utc::now().timestamp())
            .unwrap_or(60)
            .max(1) as u64;
        // Renew at 80% of the lifetime so a token never expires in flight.
        let refresh_at = tokio::time::Instant::now() + Duration::from_secs(lifetime * 4 / 5);
        *cached = Some(Cached {
            token: resp.access_token.clone(),
            refresh_at,
        });
        Ok(resp.access_token)
    }

    /// Wraps `message` in a request that carries the service token.
    pub async fn request<T>(&self, message: T) -> Result<Request<T>, Status> {
        let token = self.token().await?;
        Ok(with_bearer(Request::new(message), &token))
    }
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn with_bearer<T>(mut req: Request<T>, token: &str) -> Request<T> {
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
        req.metadata_mut().insert("authorization", v);
    }
    req
}
