//! The AuthService RPCs. Handlers parse the request into domain types, call the store, and
//! turn the outcome into a response; every error goes through `AuthError` into a status.
//! bcrypt runs on the blocking pool: at cost 12 one hash takes a few hundred milliseconds,
//! which would stall every other call on an async worker. `Login`, `Register` and
//! `IssueServiceToken` count each attempt against their rate limits (`limits`) before any
//! bcrypt or secret comparison, so a refused attempt costs no bcrypt.

use chat_common::convert::timestamp;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use chrono::Utc;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use chat_common::{telemetry::spawn_blocking_with_tracing, Caller, Role, Shutdown, TokenVerifier};
use grpc_chat_proto::auth::v1::{self as pb, auth_service_server::AuthService};

use crate::{
    config::Settings,
    convert::{
        deletion_to_pb, email_to_pb, public_key_to_pb, resolved_to_pb, token_pair, user_to_pb,
    },
    domain::{Email, FieldError, Password, UserRef, Username},
    error::AuthError,
    keys::{hash_refresh_token, new_refresh_token, TokenSigner},
    limits::{client_address, Limiter, Scope},
    store::{NewRefreshToken, Rotation, UserChange, UserRecord, UserStore},
};

/// Most identifiers or ids one internal lookup may carry.
const MAX_LOOKUP: usize = 1000;
/// Longest refresh token or access token accepted before even looking at it.
const MAX_TOKEN_LEN: usize = 8192;
/// Longest password accepted at login (bcrypt reads 72 bytes; anything longer never matched).
const MAX_LOGIN_PASSWORD: usize = 1024;
/// ListUsers' page size when none is asked for, and the most it answers.
const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 100;
/// Longest ListUsers prefix (the longest email).
const MAX_PREFIX: usize = 254;

/// The state behind the RPCs; cheap to clone.
#[derive(Clone)]
pub struct AuthApi {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn UserStore>,
    signer: TokenSigner,
    verifier: TokenVerifier,
    settings: Settings,
    /// A hash of a random password at the configured cost, verified against when the email
    /// is unknown so that a login takes as long whether or not the account exists. Hashed
    /// in the background from start-up (a second at the default cost), not before serving.
    fallback_hash: Arc<tokio::sync::OnceCell<String>>,
    limiter: Limiter,
    /// bcrypt hashes and verifications run for requests (not the fallback hash).
    bcrypt_runs: AtomicU64,
}

impl AuthApi {
    /// Builds the signer from the settings' keys (failing on a malformed PEM) and starts hashing
    /// the fallback password in the background, on `shutdown`'s tracker (a shutdown before it
    /// is done abandons it: nothing waits for the hash then); nothing is served yet.
    pub async fn new(
        store: Arc<dyn UserStore>,
        settings: Settings,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let signer = TokenSigner::new(
            settings.signing_key_pem.as_ref().map(|s| s.expose_secret()),
            settings.previous_public_key_pem.as_slice(),
            &settings.issuer,
            &settings.audience,
        )?;
        let verifier = TokenVerifier::new(&settings.issuer, &settings.audience);
        verifier.set_keys(
            signer
                .public_keys()
                .map(|k| (k.kid.as_str(), k.pem.as_str())),
        )?;
        let fallback_hash = Arc::new(tokio::sync::OnceCell::new());
        let limiter = Limiter::new(store.clone());
        let api = Self {
            inner: Arc::new(Inner {
                store,
                limiter,
                bcrypt_runs: AtomicU64::new(0),
                signer,
                verifier,
                settings,
                fallback_hash,
            }),
        };
        let warm = api.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let hashed = tokio::select! {
                _ = stop.wait() => return,
                hashed = warm.fallback_hash() => hashed,
            };
            if let Err(e) = hashed {
                tracing::warn!(error = %e, "hashing the fallback password failed; retried at login");
            }
        });
        Ok(api)
    }

    async fn fallback_hash(&self) -> Result<String, AuthError> {
        let cost = self.inner.settings.bcrypt_cost;
        let hash = self
            .inner
            .fallback_hash
            .get_or_try_init(|| async move {
                spawn_blocking_with_tracing(move || bcrypt::hash(Uuid::new_v4().to_string(), cost))
                    .await
                    .map_err(|e| AuthError::Internal(e.into()))?
                    .map_err(|e| AuthError::Internal(e.into()))
            })
            .await?;
        Ok(hash.clone())
    }

    /// A verifier for the tokens this service signs (what other services build from
    /// `GetPublicKeys`).
    pub fn verifier(&self) -> TokenVerifier {
        self.inner.verifier.clone()
    }

    /// How many bcrypt hashes and verifications requests have run (the start-up fallback
    /// hash is not counted): what a refused attempt must not add to.
    pub fn bcrypt_runs(&self) -> u64 {
        self.inner.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// The address `request` is rate-limited as, as a key subject.
    fn client_key<T>(&self, request: &Request<T>) -> String {
        client_address(
            request.remote_addr(),
            request.metadata(),
            &self.inner.settings.rate_limits.trusted_proxies,
        )
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }

    async fn hash_password(&self, password: Password) -> Result<String, AuthError> {
        self.inner.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let cost = self.inner.settings.bcrypt_cost;
        let hash = spawn_blocking_with_tracing(move || bcrypt::hash(password.expose(), cost))
            .await
            .map_err(|e| anyhow::anyhow!("bcrypt task failed: {e}"))?
            .map_err(|e| anyhow::anyhow!("bcrypt failed: {e}"))?;
        Ok(hash)
    }

    async fn verify_password(&self, password: String, hash: String) -> Result<bool, AuthError> {
        self.inner.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let ok = spawn_blocking_with_tracing(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| anyhow::anyhow!("bcrypt task failed: {e}"))?
            .map_err(|e| anyhow::anyhow!("bcrypt failed: {e}"))?;
        Ok(ok)
    }

    /// The account `email` with `password`, or BadCredentials, after the same work for a
    /// wrong password, an unknown email and a malformed one (`None`).
    ///
    /// Counted before any lookup or bcrypt, for known and unknown emails alike (so the limit
    /// says nothing about which accounts exist); taken back when the password is right, so
    /// only failures count. Logins of one account take turns, so right passwords checked at
    /// once do not add up past its limit (see `limits.rs`); the turn is held until the count
    /// is final.
    async fn check_credentials(
        &self,
        address: &str,
        email: Option<&Email>,
        password: String,
    ) -> Result<UserRecord, AuthError> {
        let limits = &self.inner.settings.rate_limits;
        let mut checks = vec![(Scope::LoginAddress, limits.login_per_address, address)];
        let _turn = match email {
            Some(email) => Some(
                self.inner
                    .limiter
                    .account_turn(limits.login_per_account, email.as_str())
                    .await?,
            ),
            None => None,
        };
        if let Some(email) = email {
            checks.push((
                Scope::LoginAccount,
                limits.login_per_account,
                email.as_str(),
            ));
        }
        let counted = self.inner.limiter.count(&checks).await?;
        let user = match email {
            Some(email) => self.inner.store.user_by_email(email).await?,
            None => None,
        };
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.fallback_hash().await?,
        };
        let ok = self.verify_password(password, hash).await?;
        let user = match user {
            Some(u) if ok => u,
            _ => return Err(AuthError::BadCredentials),
        };
        self.inner.limiter.uncount(counted).await;
        Ok(user)
    }

    /// Signs an access token for `user` and stores a new refresh token in `family`.
    async fn issue_tokens(
        &self,
        user: &UserRecord,
        family: Uuid,
    ) -> Result<pb::TokenPair, AuthError> {
        let s = &self.inner.settings;
        let (access, access_exp) = self.inner.signer.sign(
            user.id.to_string(),
            user.role,
            Some(user.username.clone()),
            s.access_ttl,
        )?;
        let (refresh, hash) = new_refresh_token();
        let refresh_exp =
            Utc::now() + chrono::Duration::from_std(s.refresh_ttl).map_err(anyhow::Error::from)?;
        self.inner
            .store
            .insert_refresh_token(&NewRefreshToken {
                id: Uuid::new_v4(),
                family_id: family,
                user_id: user.id,
                token_hash: hash,
                expires_at: refresh_exp,
            })
            .await?;
        Ok(token_pair(access, access_exp, refresh, refresh_exp))
    }

    /// The calling user's account as stored now (its role included: admin checks read the
    /// role from here, never from the token, so a grant or revoke takes effect at once).
    /// PERMISSION_DENIED for a service token, UNAUTHENTICATED when the account is gone.
    async fn caller_account(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<UserRecord, Status> {
        let id = match self.inner.verifier.authenticate(metadata)? {
            Caller::User { id, .. } => id,
            Caller::Service { .. } => {
                return Err(AuthError::PermissionDenied(
                    "this call must be made on behalf of a user".into(),
                )
                .into())
            }
        };
        self.inner
            .store
            .user_by_id(id)
            .await
            .map_err(AuthError::from)?
            .ok_or_else(|| {
                AuthError::Unauthenticated("this account no longer exists".into()).into()
            })
    }

    /// Checks `password` against `user`'s, counted against the failed-login limits of the
    /// account and of `address` (a right password is taken back), so that a stolen access
    /// token cannot be used to guess the password faster than a login could.
    async fn check_current_password(
        &self,
        address: &str,
        user: &UserRecord,
        password: String,
    ) -> Result<(), AuthError> {
        if password.is_empty() {
            return Err(FieldError::new("current_password", "is required").into());
        }
        if password.len() > MAX_LOGIN_PASSWORD {
            return Err(FieldError::new("current_password", "is too long").into());
        }
        let limits = &self.inner.settings.rate_limits;
        let counted = self
            .inner
            .limiter
            .count(&[
                (Scope::LoginAddress, limits.login_per_address, address),
                (Scope::LoginAccount, limits.login_per_account, &user.email),
            ])
            .await?;
        if !self
            .verify_password(password, user.password_hash.clone())
            .await?
        {
            return Err(AuthError::Unauthenticated(
                "the current password is wrong".into(),
            ));
        }
        self.inner.limiter.uncount(counted).await;
        Ok(())
    }

    fn require_service(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match self.inner.verifier.authenticate(metadata)? {
            Caller::Service { .. } => Ok(()),
            Caller::User { .. } => Err(Status::permission_denied(
                "this call is internal: it needs a service token",
            )),
        }
    }
}

fn refresh_token_arg(token: &str) -> Result<&str, AuthError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(FieldError {
            field: "refresh_token",
            message: "is required".into(),
        }
        .into());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Unauthenticated("unknown refresh token".into()));
    }
    Ok(token)
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    #[tracing::instrument(skip_all)]
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let address = self.client_key(&request);
        let req = request.into_inner();
        let mut errors = Vec::new();
        let email = Email::parse(&req.email).map_err(|e| errors.push(e)).ok();
        let username = Username::parse(&req.username)
            .map_err(|e| errors.push(e))
            .ok();
        let password = Password::parse(req.password)
            .map_err(|e| errors.push(e))
            .ok();
        let (Some(email), Some(username), Some(password)) = (email, username, password) else {
            return Err(AuthError::InvalidInput(errors).into());
        };
        // Every well-formed attempt costs a bcrypt, so every one counts.
        let limit = self.inner.settings.rate_limits.register_per_address;
        let _counted = self
            .inner
            .limiter
            .count(&[(Scope::Register, limit, address.as_str())])
            .await?;
        let hash = self.hash_password(password).await?;
        let user = self
            .inner
            .store
            .insert_user(&email, &username, &hash)
            .await
            .map_err(AuthError::from)?;
        tracing::info!(user_id = user.id, "user registered");
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_to_pb(&user)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let address = self.client_key(&request);
        let req = request.into_inner();
        let email = login_email(&req)?;
        let user = self
            .check_credentials(&address, email.as_ref(), req.password)
            .await?;
        let tokens = self.issue_tokens(&user, Uuid::new_v4()).await?;
        tracing::info!(user_id = user.id, "user logged in");
        Ok(Response::new(pb::LoginResponse {
            user: Some(user_to_pb(&user)),
            tokens: Some(tokens),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let req = request.into_inner();
        let presented = hash_refresh_token(refresh_token_arg(&req.refresh_token)?);
        let s = &self.inner.settings;
        let (refresh, hash) = new_refresh_token();
        let refresh_exp = Utc::now()
            + chrono::Duration::from_std(s.refresh_ttl)
                .map_err(|e| AuthError::Internal(e.into()))?;
        let next = NewRefreshToken {
            id: Uuid::new_v4(),
            family_id: Uuid::nil(),
            user_id: 0,
            token_hash: hash,
            expires_at: refresh_exp,
        };
        let user = match self
            .inner
            .store
            .rotate_refresh_token(&presented, next)
            .await
            .map_err(AuthError::from)?
        {
            Rotation::Rotated(user) => user,
            Rotation::Unknown => {
                return Err(AuthError::Unauthenticated("unknown refresh token".into()).into())
            }
            Rotation::Expired => {
                return Err(AuthError::Unauthenticated(
                    "refresh token expired; log in again".into(),
                )
                .into())
            }
            Rotation::Revoked => {
                return Err(AuthError::Unauthenticated(
                    "refresh token revoked; log in again".into(),
                )
                .into())
            }
            Rotation::Reused => {
                tracing::warn!("refresh token reused: its session has been revoked");
                return Err(AuthError::Unauthenticated(
                    "refresh token was already used; the session has been revoked, log in again"
                        .into(),
                )
                .into());
            }
        };
        let (access, access_exp) = self
            .inner
            .signer
            .sign(
                user.id.to_string(),
                user.role,
                Some(user.username.clone()),
                s.access_ttl,
            )
            .map_err(AuthError::from)?;
        Ok(Response::new(pb::RefreshResponse {
            tokens: Some(token_pair(access, access_exp, refresh, refresh_exp)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let req = request.into_inner();
        let hash = hash_refresh_token(refresh_token_arg(&req.refresh_token)?);
        if !self
            .inner
            .store
            .revoke_family(&hash)
            .await
            .map_err(AuthError::from)?
        {
            return Err(AuthError::Unauthenticated("unknown refresh token".into()).into());
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn check_access(
        &self,
        request: Request<pb::CheckAccessRequest>,
    ) -> Result<Response<pb::CheckAccessResponse>, Status> {
        let req = request.into_inner();
        let token = req.access_token.trim();
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        if token.is_empty() {
            return Err(AuthError::from(FieldError {
                field: "access_token",
                message: "is required".into(),
            })
            .into());
        }
        let action = match pb::Action::try_from(req.action) {
            Ok(pb::Action::Unspecified) | Err(_) => {
                return Err(AuthError::from(FieldError {
                    field: "action",
                    message: "must be one of READ_CHAT, WRITE_CHAT, DELETE, INTERNAL".into(),
                })
                .into())
            }
            Ok(a) => a,
        };
        let denied = |reason: String| pb::CheckAccessResponse {
            allowed: false,
            user_id: 0,
            role: pb::Role::Unspecified as i32,
            reason,
        };
        if token.len() > MAX_TOKEN_LEN {
            return Ok(Response::new(denied("token is too long".into())));
        }
        let claims = match self.inner.verifier.verify(token) {
            Ok(c) => c,
            Err(e) => return Ok(Response::new(denied(e.to_string()))),
        };
        // The same test every service applies to a caller: a signed token whose subject
        // is not a user id (or `service:<name>`) is refused everywhere, so here too.
        if let Err(s) = Caller::try_from(claims.clone()) {
            return Ok(Response::new(denied(s.message().to_owned())));
        }
        let allowed = match (claims.role, action) {
            (Role::Service, _) => true,
            (_, pb::Action::Internal) => false,
            (Role::User | Role::Admin, _) => true,
        };
        Ok(Response::new(pb::CheckAccessResponse {
            allowed,
            user_id: if claims.role == Role::Service {
                0
            } else {
                claims.sub.parse().unwrap_or(0)
            },
            role: pb::Role::from(claims.role) as i32,
            reason: if allowed {
                String::new()
            } else {
                "only services may perform this action".into()
            },
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user_ids_by_emails(
        &self,
        request: Request<pb::GetUserIdsByEmailsRequest>,
    ) -> Result<Response<pb::GetUserIdsByEmailsResponse>, Status> {
        self.require_service(request.metadata())?;
        let req = request.into_inner();
        if req.emails.len() > MAX_LOOKUP {
            return Err(AuthError::from(FieldError {
                field: "emails",
                message: format!("at most {MAX_LOOKUP} per call"),
            })
            .into());
        }
        let mut parsed = Vec::with_capacity(req.emails.len());
        for raw in &req.emails {
            // The error quotes at most the start of the value (see `domain::echo`).
            let r = UserRef::parse_as("emails", raw).map_err(AuthError::from)?;
            parsed.push((raw, r));
        }
        let emails: Vec<Email> = parsed
            .iter()
            .filter_map(|(_, r)| match r {
                UserRef::Email(e) => Some(e.clone()),
                UserRef::Username(_) => None,
            })
            .collect();
        let usernames: Vec<Username> = parsed
            .iter()
            .filter_map(|(_, r)| match r {
                UserRef::Username(u) => Some(u.clone()),
                UserRef::Email(_) => None,
            })
            .collect();
        let users = self
            .inner
            .store
            .users_by_refs(&emails, &usernames)
            .await
            .map_err(AuthError::from)?;
        let mut resp = pb::GetUserIdsByEmailsResponse::default();
        for (raw, r) in parsed {
            let found = users.iter().find(|u| match &r {
                UserRef::Email(e) => u.email == e.as_str(),
                UserRef::Username(n) => u.username == n.as_str(),
            });
            match found {
                Some(u) => resp.users.push(resolved_to_pb(raw, u)),
                None => resp.not_found.push(raw.clone()),
            }
        }
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user_emails(
        &self,
        request: Request<pb::GetUserEmailsRequest>,
    ) -> Result<Response<pb::GetUserEmailsResponse>, Status> {
        self.require_service(request.metadata())?;
        let req = request.into_inner();
        if req.user_ids.len() > MAX_LOOKUP {
            return Err(AuthError::from(FieldError {
                field: "user_ids",
                message: format!("at most {MAX_LOOKUP} per call"),
            })
            .into());
        }
        let users = self
            .inner
            .store
            .users_by_ids(&req.user_ids)
            .await
            .map_err(AuthError::from)?;
        Ok(Response::new(pb::GetUserEmailsResponse {
            users: users.iter().map(email_to_pb).collect(),
        }))
    }

    async fn get_public_keys(
        &self,
        _request: Request<pb::GetPublicKeysRequest>,
    ) -> Result<Response<pb::GetPublicKeysResponse>, Status> {
        let signer = &self.inner.signer;
        Ok(Response::new(pb::GetPublicKeysResponse {
            keys: signer.public_keys().map(public_key_to_pb).collect(),
            issuer: signer.issuer.clone(),
            audience: signer.audience.clone(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        let address = self.client_key(&request);
        let req = request.into_inner();
        let name = req.service_name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(AuthError::from(FieldError {
                field: "service_name",
                message: "must be 1 to 64 characters of letters, digits, '-' and '_'".into(),
            })
            .into());
        }
        let Some(secret) = &self.inner.settings.service_secret else {
            return Err(AuthError::FailedPrecondition(
                "service tokens are disabled: SERVICE_SECRET is not set on the auth service".into(),
            )
            .into());
        };
        // Wrong secrets count; a right one is taken back.
        let limit = self.inner.settings.rate_limits.service_token_per_address;
        let counted = self
            .inner
            .limiter
            .count(&[(Scope::ServiceToken, limit, address.as_str())])
            .await?;
        // Compare digests in constant time, so neither content nor length leaks.
        let want = Sha256::digest(secret.expose_secret().as_bytes());
        let got = Sha256::digest(req.secret.as_bytes());
        if !bool::from(want.ct_eq(&got)) {
            tracing::warn!(service = name, "service token refused: wrong secret");
            return Err(AuthError::Unauthenticated("wrong service secret".into()).into());
        }
        self.inner.limiter.uncount(counted).await;
        let (token, exp) = self
            .inner
            .signer
            .sign(
                format!("service:{name}"),
                Role::Service,
                None,
                self.inner.settings.service_token_ttl,
            )
            .map_err(AuthError::from)?;
        Ok(Response::new(pb::IssueServiceTokenResponse {
            access_token: token,
            expires_at: Some(timestamp(exp)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let me = self.caller_account(request.metadata()).await?;
        let id = request.into_inner().user_id;
        if id == 0 || id == me.id {
            return Ok(Response::new(pb::GetUserResponse {
                user: Some(user_to_pb(&me)),
            }));
        }
        if me.role != Role::Admin {
            return Err(AuthError::PermissionDenied(
                "only administrators may look at other accounts".into(),
            )
            .into());
        }
        let user = self
            .inner
            .store
            .user_by_id(id)
            .await
            .map_err(AuthError::from)?
            .ok_or_else(|| AuthError::NotFound(format!("no user has the id {id}")))?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user_to_pb(&user)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let me = self.caller_account(request.metadata()).await?;
        if me.role != Role::Admin {
            return Err(
                AuthError::PermissionDenied("only administrators may list users".into()).into(),
            );
        }
        let req = request.into_inner();
        let mut errors = Vec::new();
        let page_size = match i64::from(req.page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    "page_size",
                    format!("must be 0 (the default, {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}"),
                ));
                DEFAULT_PAGE_SIZE
            }
        };
        let after_id = if req.page_token.is_empty() {
            0
        } else {
            match req.page_token.parse::<i64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    errors.push(FieldError::new(
                        "page_token",
                        "is not a next_page_token this service gave",
                    ));
                    0
                }
            }
        };
        let prefix = req.prefix.trim().to_lowercase();
        if prefix.len() > MAX_PREFIX {
            errors.push(FieldError::new(
                "prefix",
                format!("must be at most {MAX_PREFIX} bytes long"),
            ));
        }
        if !errors.is_empty() {
            return Err(AuthError::InvalidInput(errors).into());
        }
        // One more than asked: whether there is a next page, without a second query.
        let mut users = self
            .inner
            .store
            .list_users(after_id, &prefix, page_size + 1)
            .await
            .map_err(AuthError::from)?;
        let next_page_token = if users.len() as i64 > page_size {
            users.truncate(page_size as usize);
            users.last().map(|u| u.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let me = self.caller_account(request.metadata()).await?;
        let address = self.client_key(&request);
        let req = request.into_inner();
        let mut errors = Vec::new();
        let username = req
            .username
            .as_deref()
            .map(|u| Username::parse(u).map_err(|e| errors.push(e)).ok())
            .unwrap_or(None);
        let email = req
            .email
            .as_deref()
            .map(|e| Email::parse(e).map_err(|e| errors.push(e)).ok())
            .unwrap_or(None);
        let password = req
            .new_password
            .map(|p| {
                Password::parse(p)
                    .map_err(|mut e| {
                        e.field = "new_password";
                        errors.push(e)
                    })
                    .ok()
            })
            .unwrap_or(None);
        if !errors.is_empty() {
            return Err(AuthError::InvalidInput(errors).into());
        }
        if username.is_none() && email.is_none() && password.is_none() {
            return Err(AuthError::from(FieldError::new(
                "username",
                "nothing to change: give a username, an email or a new_password",
            ))
            .into());
        }
        self.check_current_password(&address, &me, req.current_password)
            .await?;
        let password_hash = match password {
            Some(p) => Some(self.hash_password(p).await?),
            None => None,
        };
        let password_changed = password_hash.is_some();
        let user = self
            .inner
            .store
            .update_user(
                me.id,
                &UserChange {
                    email,
                    username,
                    password_hash,
                },
            )
            .await
            .map_err(AuthError::from)?
            .ok_or_else(|| AuthError::Unauthenticated("this account no longer exists".into()))?;
        let tokens = if password_changed {
            tracing::info!(user_id = user.id, "password changed; sessions revoked");
            Some(self.issue_tokens(&user, Uuid::new_v4()).await?)
        } else {
            None
        };
        tracing::info!(user_id = user.id, "user updated");
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(user_to_pb(&user)),
            tokens,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let me = self.caller_account(request.metadata()).await?;
        let address = self.client_key(&request);
        let req = request.into_inner();
        let target = if req.user_id == 0 || req.user_id == me.id {
            // One's own account: the password, so that a stolen access token cannot.
            self.check_current_password(&address, &me, req.current_password)
                .await?;
            me.id
        } else if me.role == Role::Admin {
            req.user_id
        } else {
            return Err(AuthError::PermissionDenied(
                "only administrators may delete other accounts".into(),
            )
            .into());
        };
        if !self
            .inner
            .store
            .delete_user(target)
            .await
            .map_err(AuthError::from)?
        {
            return Err(AuthError::NotFound(format!("no user has the id {target}")).into());
        }
        tracing::info!(user_id = target, by = me.id, "user deleted");
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_deleted_users(
        &self,
        request: Request<pb::ListDeletedUsersRequest>,
    ) -> Result<Response<pb::ListDeletedUsersResponse>, Status> {
        self.require_service(request.metadata())?;
        let req = request.into_inner();
        let limit = chat_common::domain::page_size("page_size", req.page_size, 100, 1000)
            .map_err(AuthError::from)?;
        if req.after_id < 0 {
            return Err(AuthError::from(FieldError::new(
                "after_id",
                "must not be negative (0 lists every deletion)",
            ))
            .into());
        }
        let deleted = self
            .inner
            .store
            .deletions_after(req.after_id, limit)
            .await
            .map_err(AuthError::from)?;
        Ok(Response::new(pb::ListDeletedUsersResponse {
            deleted: deleted.into_iter().map(deletion_to_pb).collect(),
        }))
    }
}

/// The login's email, checked for presence and the password for presence and size; `None`
/// for a malformed email, which cannot belong to an account and so gets the same answer as
/// a wrong password, after the same work.
fn login_email(req: &pb::LoginRequest) -> Result<Option<Email>, AuthError> {
    let missing = |field| {
        AuthError::from(FieldError {
            field,
            message: "is required".into(),
        })
    };
    if req.email.trim().is_empty() {
        return Err(missing("email"));
    }
    if req.password.is_empty() {
        return Err(missing("password"));
    }
    if req.password.len() > MAX_LOGIN_PASSWORD {
        return Err(AuthError::from(FieldError {
            field: "password",
            message: "is too long".into(),
        }));
    }
    Ok(Email::parse(&req.email).ok())
}
