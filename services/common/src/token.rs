//! The access-token check every service runs on every call, from the public keys alone.
//!
//! Auth signs access tokens with Ed25519 (EdDSA) and publishes the public keys through
//! `GetPublicKeys`. A [`TokenVerifier`] holds those keys by `kid` and verifies a token
//! without any network call; [`TokenVerifier::refresh_from`] reloads them from AuthService
//! (at start-up, periodically, and after an unknown `kid` is seen, which is how a key
//! rotation reaches every replica). The verified caller is put into the request's
//! extensions as a [`Caller`] by [`TokenVerifier::interceptor`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use crate::trace::TracedChannel;
use grpc_chat_proto::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tonic::{metadata::MetadataMap, Request, Status};

/// What a token's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An account holder; a user's calls act on their own behalf.
    User,
    /// An administrator: a user who may also call the administrative RPCs.
    Admin,
    /// Another service, holding a service token for internal calls.
    Service,
}

impl Role {
    /// The lowercase name used in tokens and in storage (`user`, `admin`, `service`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    /// The role named by [`Role::as_str`]; `None` for any other text.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::User => pb::Role::User,
            Role::Admin => pb::Role::Admin,
            Role::Service => pb::Role::Service,
        }
    }
}

/// The claims of an access token. `sub` is the user id in decimal, or `service:<name>` for
/// service tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the user id in decimal, or `service:<name>`.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch; verification allows no leeway.
    pub exp: i64,
    /// Issue time, in seconds since the Unix epoch; a token more than [`IAT_LEEWAY_SECS`] in the
    /// future is refused.
    pub iat: i64,
    /// Issuer; must match the verifier's issuer.
    pub iss: String,
    /// Audience; must match the verifier's audience.
    pub aud: String,
    /// A fresh random id per token (a UUID), so two tokens issued in the same second differ.
    pub jti: String,
    /// What the holder is; decides which RPCs it may call.
    pub role: Role,
    /// The username, so services can show a sender without a lookup. Absent for services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A person, calling with a user access token.
    User {
        /// The user id.
        id: i64,
        /// The username from the token's `name` claim, as it was when the token was issued;
        /// empty when the token did not carry one.
        username: String,
        /// [`Role::User`] or [`Role::Admin`].
        role: Role,
    },
    /// Another service, calling with a service token.
    Service {
        /// The service's name, from the token's `service:<name>` subject.
        name: String,
    },
}

impl Caller {
    /// The user's id; `None` for a service caller.
    pub fn user_id(&self) -> Option<i64> {
        match self {
            Caller::User { id, .. } => Some(*id),
            Caller::Service { .. } => None,
        }
    }

    /// True for a service token, whose holder may make internal calls.
    pub fn is_service(&self) -> bool {
        matches!(self, Caller::Service { .. })
    }

    /// The caller put into the request by the interceptor; UNAUTHENTICATED when absent
    /// (a handler mounted without the interceptor).
    pub fn from_request<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("missing access token"))
    }

    /// The calling user; PERMISSION_DENIED for a service token.
    pub fn require_user<T>(req: &Request<T>) -> Result<(i64, String), Status> {
        match Self::from_request(req)? {
            Caller::User { id, username, .. } => Ok((id, username)),
            Caller::Service { .. } => Err(Status::permission_denied(
                "this call must be made on behalf of a user",
            )),
        }
    }

    /// Succeeds only for service callers; PERMISSION_DENIED for users.
    pub fn require_service<T>(req: &Request<T>) -> Result<String, Status> {
        match Self::from_request(req)? {
            Caller::Service { name } => Ok(name),
            Caller::User { .. } => Err(Status::permission_denied(
                "this call is internal: it needs a service token",
            )),
        }
    }
}

impl TryFrom<Claims> for Caller {
    type Error = Status;

    fn try_from(c: Claims) -> Result<Self, Status> {
        match c.role {
            Role::Service => {
                let name = c
                    .sub
                    .strip_prefix("service:")
                    .ok_or_else(|| Status::unauthenticated("malformed service token subject"))?;
                Ok(Caller::Service {
                    name: name.to_owned(),
                })
            }
            role => {
                let id = c
                    .sub
                    .parse::<i64>()
                    .map_err(|_| Status::unauthenticated("malformed token subject"))?;
                Ok(Caller::User {
                    id,
                    username: c.name.unwrap_or_default(),
                    role,
                })
            }
        }
    }
}

/// Why a token was not accepted; the message is safe to show a client.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token's `exp` is past.
    #[error("token expired")]
    Expired,
    /// The token's `kid` is not among the verifier's keys: a key rotation that has not reached this
    /// replica yet, or a forged token.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// Not a JWT, not EdDSA, no `kid`, a bad signature, or required claims missing.
    #[error("token is malformed or its signature is invalid")]
    Invalid,
    /// Signed by a known key but meant for another issuer or audience.
    #[error("token was issued for another issuer or audience")]
    WrongIssuerOrAudience,
    /// The token's `iat` is more than [`IAT_LEEWAY_SECS`] ahead of this host's clock.
    #[error("token is issued in the future; check the clocks")]
    IssuedInTheFuture,
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        Status::unauthenticated(e.to_string())
    }
}

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
}

/// How far in the future a token's `iat` may be (clock drift between hosts), in seconds.
pub const IAT_LEEWAY_SECS: i64 = 60;

/// Most verified tokens remembered; past it the memory starts over.
const VERIFIED_CACHE: usize = 16_384;

/// Verifies access tokens with the issuer's public keys; cheap to clone.
///
/// An Ed25519 check costs tens of microseconds, and a client sends the same token with
/// every call for its whole lifetime; so a token that verified is remembered, byte for byte,
/// with its claims until it expires. Only an exact copy of a token that passed the full
/// check skips the signature, and new keys (a rotation, a revoked key) forget them all.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<RwLock<Keys>>,
    validation: Arc<Validation>,
    verified: Arc<Mutex<HashMap<Box<str>, Claims>>>,
}

impl TokenVerifier {
    /// A verifier for tokens with this issuer and audience, and no key yet.
    pub fn new(issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 0;
        Self {
            keys: Arc::new(RwLock::new(Keys {
                by_kid: HashMap::new(),
            })),
            validation: Arc::new(validation),
            verified: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Claims>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the key set with these `(kid, SPKI PEM)` pairs.
    pub fn set_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> anyhow::Result<()> {
        let mut by_kid = HashMap::new();
        for (kid, pem) in keys {
            let key = DecodingKey::from_ed_pem(pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("public key {kid} is not an Ed25519 PEM: {e}"))?;
            by_kid.insert(kid.to_owned(), key);
        }
        match self.keys.write() {
            Ok(mut k) => k.by_kid = by_kid,
            Err(poisoned) => poisoned.into_inner().by_kid = by_kid,
        }
        self.verified().clear();
        Ok(())
    }

    /// Loads the keys from AuthService's `GetPublicKeys`.
    pub async fn refresh_from(
        &self,
        client: &mut AuthServiceClient<TracedChannel>,
    ) -> anyhow::Result<()> {
        let resp = client
            .get_public_keys(pb::GetPublicKeysRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("GetPublicKeys failed: {}", s.message()))?
            .into_inner();
        self.set_keys(
            resp.keys
                .iter()
                .map(|k| (k.key_id.as_str(), k.public_key_pem.as_str())),
        )
    }

    /// Reloads the keys from AuthService every `every`, until shutdown (which tracks the
    /// task, and stops a reload in flight: the old keys serve out the process). Failures are
    /// logged and retried at the next tick; the old keys stay in use.
    pub fn spawn_refresh(
        &self,
        mut client: AuthServiceClient<TracedChannel>,
        every: Duration,
        shutdown: crate::Shutdown,
    ) {
        let this = self.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.wait() => return,
                    _ = tick.tick() => {}
                }
                let refreshed = tokio::select! {
                    _ = stop.wait() => return,
                    refreshed = this.refresh_from(&mut client) => refreshed,
                };
                if let Err(e) = refreshed {
                    tracing::warn!(error = %e, "refreshing token keys failed");
                }
            }
        });
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now = chrono::Utc::now().timestamp();
        if let Some(claims) = self.verified().get(token) {
            // The same expiry rule as the full check (no leeway).
            return if claims.exp >= now {
                Ok(claims.clone())
            } else {
                Err(TokenError::Expired)
            };
        }
        let claims = self.verify_signed(token)?;
        let mut verified = self.verified();
        if verified.len() >= VERIFIED_CACHE {
            verified.retain(|_, c| c.exp >= now);
            if verified.len() >= VERIFIED_CACHE / 2 {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// The full check: signature by a known key, algorithm, issuer, audience, expiry.
    fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let keys = match self.keys.read() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = keys.by_kid.get(&kid).ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::InvalidIssuer | K::InvalidAudience => TokenError::WrongIssuerOrAudience,
                _ => TokenError::Invalid,
            }
        })?;
        // A token from the future was not issued by a clock we trust: allow the drift
        // between two hosts' clocks, no more.
        if data.claims.iat > chrono::Utc::now().timestamp() + IAT_LEEWAY_SECS {
            return Err(TokenError::IssuedInTheFuture);
        }
        Ok(data.claims)
    }

    /// The caller of a request, from its `authorization: Bearer <token>` header.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer_token(metadata)?;
        let claims = self.verify(token)?;
        Caller::try_from(claims)
    }

    /// A tonic interceptor that rejects calls without a valid token and puts the [`Caller`]
    /// into the request's extensions.
    pub fn interceptor(&self) -> impl tonic::service::Interceptor + Clone {
        let this = self.clone();
        move |mut req: Request<()>| {
            let caller = this.authenticate(req.metadata())?;
            req.extensions_mut().insert(caller);
            Ok(req)
        }
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing access token (authorization header)"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization header must be 'Bearer <token>'"))?
        .trim();
    if token.is_empty() {
        return Err(Status::unauthenticated("empty access token"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    // A key pair made for these tests only.
    const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGtCSgPYdhgQ8NNdViTUf4KtOF0szfN+jBQxl+2SA4yB\n-----END PRIVATE KEY-----\n";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAaeJoSAkCreP++U5ZLpl1XBT8IbD67TuHEyBn0tgWt/s=\n-----END PUBLIC KEY-----\n";
    const OTHER_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA1AVH5FhhqwATRqboITfJTQdEwCcLvoM9yoTqgqkajRc=\n-----END PUBLIC KEY-----\n";

    fn token(kid: &str, exp: i64) -> String {
        token_issued(kid, chrono::Utc::now().timestamp(), exp)
    }

    fn token_issued(kid: &str, iat: i64, exp: i64) -> String {
        let claims = Claims {
            sub: "7".into(),
            exp,
            iat,
            iss: "grpc-chat".into(),
            aud: "grpc-chat".into(),
            jti: "j".into(),
            role: Role::User,
            name: Some("alice".into()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_ed_pem(PRIVATE.as_bytes()).expect("test key");
        encode(&header, &claims, &key).expect("signing")
    }

    fn verifier() -> TokenVerifier {
        let v = TokenVerifier::new("grpc-chat", "grpc-chat");
        v.set_keys([("k1", PUBLIC)]).expect("keys");
        v
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let v = verifier();
        let t = token("k1", chrono::Utc::now().timestamp() + 1);
        assert_eq!(v.verify(&t).expect("valid").sub, "7");
        assert_eq!(v.verify(&t).expect("valid again").sub, "7");
        std::thread::sleep(Duration::from_millis(2100));
        assert!(matches!(v.verify(&t), Err(TokenError::Expired)));
    }

    #[test]
    fn new_keys_forget_tokens_verified_with_the_old_ones() {
        let v = verifier();
        let t = token("k1", chrono::Utc::now().timestamp() + 600);
        v.verify(&t).expect("valid");
        v.set_keys([("k1", OTHER_PUBLIC)]).expect("keys");
        assert!(matches!(v.verify(&t), Err(TokenError::Invalid)));
        v.set_keys([("k2", PUBLIC)]).expect("keys");
        assert!(matches!(v.verify(&t), Err(TokenError::UnknownKey)));
    }

    #[test]
    fn only_the_exact_token_is_remembered() {
        let v = verifier();
        let t = token("k1", chrono::Utc::now().timestamp() + 600);
        v.verify(&t).expect("valid");
        // Same header and claims, signature altered in its last character.
        let mut forged = t.clone();
        let last = forged.pop().expect("non-empty");
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(v.verify(&forged).is_err());
    }

    #[test]
    fn a_token_from_the_future_is_refused_beyond_the_leeway() {
        let v = verifier();
        let now = chrono::Utc::now().timestamp();
        let drifted = token_issued("k1", now + 30, now + 600);
        assert!(v.verify(&drifted).is_ok(), "30 s of clock drift is allowed");
        let tomorrow = token_issued("k1", now + 86_400, now + 90_000);
        assert!(matches!(
            v.verify(&tomorrow),
            Err(TokenError::IssuedInTheFuture)
        ));
    }
}
