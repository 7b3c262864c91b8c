//! Reaching the other services: a lazily connected channel (so a service starts even when
//! the one it calls is not up yet, and reconnects by itself) that carries each call's trace
//! context, and a token verifier loaded from AuthService's public keys. Every service that calls another or checks tokens
//! builds these the same way, so they live here.

use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use grpc_chat_proto::auth::v1::{auth_service_client::AuthServiceClient, GetPublicKeysRequest};
use tonic::transport::Endpoint;

pub use crate::trace::TracedChannel;
use crate::{Shutdown, TokenVerifier};

/// A lazily connected channel to `url`, passing trace context on (see `trace.rs`).
pub fn lazy_channel(url: &str) -> anyhow::Result<TracedChannel> {
    Ok(TracedChannel::new(
        Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("invalid URL {url}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect_lazy(),
    ))
}

/// A verifier loaded with AuthService's keys, retried for up to a minute while auth starts
/// (pauses from a quarter second doubling to 4 s, so a quick start costs little wait).
/// The keys are then refreshed every five minutes until `shutdown`.
pub async fn verifier_from_auth(
    auth: &AuthServiceClient<TracedChannel>,
    shutdown: &Shutdown,
) -> anyhow::Result<TokenVerifier> {
    let mut client = auth.clone();
    let mut pauses = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(4))
        .without_max_times()
        .with_total_delay(Some(Duration::from_secs(60)))
        .build();
    let keys = loop {
        match client.get_public_keys(GetPublicKeysRequest {}).await {
            Ok(r) => break r.into_inner(),
            Err(e) => match pauses.next() {
                Some(pause) => {
                    tracing::warn!(error = %e.message(), "auth service not reachable yet, retrying");
                    tokio::time::sleep(pause).await;
                }
                None => anyhow::bail!(
                    "cannot load token keys from the auth service: {}",
                    e.message()
                ),
            },
        }
    };
    let verifier = TokenVerifier::new(&keys.issuer, &keys.audience);
    verifier.set_keys(
        keys.keys
            .iter()
            .map(|k| (k.key_id.as_str(), k.public_key_pem.as_str())),
    )?;
    verifier.spawn_refresh(client, Duration::from_secs(300), shutdown.clone());
    Ok(verifier)
}
