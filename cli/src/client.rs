//! Connections to the services and authenticated calls.
//!
//! Every authenticated call goes through [`Client::authed`], which is where tokens are kept
//! fresh: an access token about to expire is refreshed before the call, and a call that
//! still comes back UNAUTHENTICATED (a token revoked or signed with a rotated key) is
//! refreshed and retried once. Commands never see tokens.
//!
//! Channels connect lazily: a command that needs only one service never waits on another,
//! and an unreachable server shows up as the failing call's error, worded by `error.rs`.
//! They carry the running command's trace context when `--trace` asked for one
//! (`trace.rs`).

use std::{future::Future, time::Duration};

use grpc_chat_proto::{
    auth::v1::{auth_service_client::AuthServiceClient, RefreshRequest, TokenPair},
    chat::v1::chat_service_client::ChatServiceClient,
    saga::v1::saga_orchestrator_client::SagaOrchestratorClient,
};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
    Code, Request, Response, Status,
};

use crate::{
    args::ServerArgs,
    error::{from_status, CliError, Op},
    session::{Session, SessionStore},
    trace::{TracedChannel, Tracer},
};

/// How long a unary call may take before it is given up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Refresh an access token this long before it expires, so it never expires in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// One service's address, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// With scheme: `http://host:port` or `https://host:port`.
    pub uri: String,
    /// Whether connections use TLS.
    pub tls: bool,
}

impl Address {
    /// Accepts `host:port`, `http://...` and `https://...`. TLS is used for `https://`, with
    /// `force_tls`, or for a bare address on port 443 (an ingress).
    pub fn parse(raw: &str, force_tls: bool) -> Result<Self, CliError> {
        let raw = raw.trim().trim_end_matches('/');
        if raw.is_empty() {
            return Err(CliError::new("the server address is empty"));
        }
        let (tls, rest) = if let Some(rest) = raw.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = raw.strip_prefix("http://") {
            (force_tls, rest)
        } else if raw.contains("://") {
            return Err(CliError::new(format!(
                "the server address {raw} must start with http:// or https://"
            )));
        } else {
            (force_tls || raw.ends_with(":443"), raw)
        };
        let scheme = if tls { "https" } else { "http" };
        let uri = format!("{scheme}://{rest}");
        Endpoint::from_shared(uri.clone())
            .map_err(|_| CliError::new(format!("{raw} is not a valid server address")))?;
        Ok(Self { uri, tls })
    }

    fn channel(&self, ca: Option<&Certificate>) -> Result<Channel, CliError> {
        let invalid = |_| CliError::new(format!("{} is not a valid server address", self.uri));
        let mut endpoint = Endpoint::from_shared(self.uri.clone())
            .map_err(invalid)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        if self.tls {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = ca {
                tls = tls.ca_certificate(ca.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| CliError::new(format!("cannot set up TLS for {}: {e}", self.uri)))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// The three service addresses, and the private CA to trust for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// The chat service.
    pub chat: Address,
    /// The auth service (`--auth-server`, else the chat server's address).
    pub auth: Address,
    /// The saga orchestrator (`--saga-server`, else the chat server's address).
    pub saga: Address,
    /// `--ca-cert`: PEM certificates trusted for TLS besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// Reads `--ca-cert`: a PEM file with at least one certificate. Read once at start-up, so
/// a wrong path fails the command at once rather than as a TLS error later.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    let pem = std::fs::read(path).map_err(|e| {
        CliError::new(format!(
            "cannot read the CA certificate {}: {e}",
            path.display()
        ))
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::new(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(pem)
}

impl Servers {
    /// Reads the addresses of the command line: `--auth-server` and `--saga-server` default to
    /// `--server` (an empty one counts as unset), and `--ca-cert` is read now. Fails on an address
    /// that does not parse or a CA file that cannot be read or holds no certificate.
    pub fn from_args(args: &ServerArgs) -> Result<Self, CliError> {
        let chat = Address::parse(&args.server, args.tls)?;
        let or_main = |a: &Option<String>| match a {
            Some(a) if !a.trim().is_empty() => Address::parse(a, args.tls),
            _ => Ok(chat.clone()),
        };
        Ok(Self {
            auth: or_main(&args.auth_server)?,
            saga: or_main(&args.saga_server)?,
            chat,
            ca_pem: args.ca_cert.as_deref().map(read_ca).transpose()?,
        })
    }
}

/// Connected service clients and the session.
pub struct Client {
    /// The addresses the clients were made for.
    pub servers: Servers,
    /// AuthService.
    pub auth: AuthServiceClient<TracedChannel>,
    /// ChatService.
    pub chat: ChatServiceClient<TracedChannel>,
    /// SagaOrchestrator.
    pub saga: SagaOrchestratorClient<TracedChannel>,
    /// Starts each command's trace, with `--trace`.
    pub tracer: Tracer,
    store: SessionStore,
    /// The session as this process last saw it; re-read from disk before refreshing.
    session: Option<Session>,
}

/// Which service a call goes to, for naming it in errors.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// AuthService.
    Auth,
    /// ChatService.
    Chat,
    /// SagaOrchestrator.
    Saga,
}

impl Client {
    /// Clients for `servers`; `trace`: start a trace for each command (`--trace`).
    pub fn new(servers: Servers, trace: bool) -> Result<Self, CliError> {
        let store = SessionStore::for_server(&servers.auth.uri)?;
        let tracer = Tracer::new(trace)?;
        let ca = servers.ca_pem.as_ref().map(Certificate::from_pem);
        let chat_channel = servers.chat.channel(ca.as_ref())?;
        let channel_for = |a: &Address| {
            if *a == servers.chat {
                Ok(tracer.channel(chat_channel.clone()))
            } else {
                Ok(tracer.channel(a.channel(ca.as_ref())?))
            }
        };
        let auth = AuthServiceClient::new(channel_for(&servers.auth)?);
        let saga = SagaOrchestratorClient::new(channel_for(&servers.saga)?);
        let session = store.load()?;
        Ok(Self {
            chat: ChatServiceClient::new(tracer.channel(chat_channel)),
            auth,
            saga,
            tracer,
            store,
            session,
            servers,
        })
    }

    /// The address `service` is called at, for messages such as "cannot reach the server at ...".
    pub fn address(&self, service: Service) -> &str {
        match service {
            Service::Auth => &self.servers.auth.uri,
            Service::Chat => &self.servers.chat.uri,
            Service::Saga => &self.servers.saga.uri,
        }
    }

    /// Words a status from `service`.
    pub fn error(&self, status: &Status, service: Service, op: Op) -> CliError {
        from_status(status, op, self.address(service))
    }

    /// The session loaded at start-up or since kept; `None` when not logged in.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Where the session is kept.
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// Keeps a new login.
    pub fn set_session(&mut self, session: Session) -> Result<(), CliError> {
        self.store.save(&session)?;
        self.session = Some(session);
        Ok(())
    }

    /// Forgets the login here (the caller revokes it on the server).
    pub fn forget_session(&mut self) -> Result<(), CliError> {
        self.session = None;
        self.store.clear()
    }

    /// Runs `call` with a valid access token; on UNAUTHENTICATED, refreshes and runs it
    /// once more. `call` gets the token and builds its request each time.
    pub async fn authed<T, F, Fut>(
        &mut self,
        service: Service,
        op: Op,
        call: F,
    ) -> Result<T, CliError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        match self.authed_status(call).await? {
            Ok(r) => Ok(r),
            Err(s) => Err(self.error(&s, service, op)),
        }
    }

    /// [`Client::authed`] on ChatService: `call` gets a client and `message` as a request
    /// carrying the token, built again for the retry after a refresh.
    pub async fn chat_call<M, T, F, Fut>(
        &mut self,
        op: Op,
        message: M,
        call: F,
    ) -> Result<T, CliError>
    where
        M: Clone,
        F: Fn(ChatServiceClient<TracedChannel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let chat = self.chat.clone();
        self.authed(Service::Chat, op, |t| {
            call(chat.clone(), authed_request(message.clone(), &t))
        })
        .await
    }

    /// Reads a listing page by page: `call(access_token, page_token)` asks for one page
    /// (the first with an empty page token), `show` shows it and returns the token of the
    /// next one, empty after the last.
    pub async fn each_page<T, F, Fut>(
        &mut self,
        service: Service,
        mut call: F,
        mut show: impl FnMut(T) -> String,
    ) -> Result<(), CliError>
    where
        F: FnMut(String, String) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut page_token = String::new();
        loop {
            let token = page_token;
            let page = self
                .authed(service, Op::Other, |t| call(t, token.clone()))
                .await?;
            page_token = show(page);
            if page_token.is_empty() {
                return Ok(());
            }
        }
    }

    /// As [`Client::authed`], but a failed call's status is returned as it is, for a
    /// command that must tell "not reached" from "accepted" from "refused" (the outer error:
    /// no usable login).
    pub async fn authed_status<T, F, Fut>(
        &mut self,
        mut call: F,
    ) -> Result<Result<T, Status>, CliError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let token = self.access_token().await?;
        match call(token).await {
            Ok(r) => Ok(Ok(r.into_inner())),
            Err(s) if s.code() == Code::Unauthenticated => {
                let token = self.refresh().await?;
                Ok(call(token).await.map(Response::into_inner))
            }
            Err(s) => Ok(Err(s)),
        }
    }

    /// A usable access token, refreshed first when it is about to expire.
    pub async fn access_token(&mut self) -> Result<String, CliError> {
        if self.session.is_none() {
            self.session = self.store.load()?;
        }
        let Some(session) = &self.session else {
            return Err(CliError::not_logged_in());
        };
        if session.access_expiring(EXPIRY_MARGIN) {
            return self.refresh().await;
        }
        Ok(session.access_token.clone())
    }

    /// Rotates the refresh token and returns the new access token. Under the store's lock,
    /// tokens another process rotated meanwhile are adopted instead of rotated again (a
    /// second use of a refresh token would end the login).
    pub async fn refresh(&mut self) -> Result<String, CliError> {
        let _lock = self.store.lock().await?;
        let on_disk = self.store.load()?;
        let Some(current) = on_disk else {
            self.session = None;
            return Err(CliError::not_logged_in());
        };
        let seen = self.session.as_ref().map(|s| s.refresh_token.as_str());
        if seen != Some(current.refresh_token.as_str()) && !current.access_expiring(EXPIRY_MARGIN) {
            let token = current.access_token.clone();
            self.session = Some(current);
            return Ok(token);
        }
        let mut request = Request::new(RefreshRequest {
            refresh_token: current.refresh_token.clone(),
        });
        request.set_timeout(CALL_TIMEOUT);
        let tokens = match self.auth.refresh(request).await {
            Ok(r) => r.into_inner().tokens,
            Err(s) if s.code() == Code::Unauthenticated => {
                self.session = None;
                self.store.clear()?;
                return Err(CliError::session_expired());
            }
            Err(s) => return Err(self.error(&s, Service::Auth, Op::Other)),
        };
        let tokens = tokens.ok_or_else(|| CliError::new("the server sent no tokens"))?;
        let session = with_tokens(current, tokens);
        let token = session.access_token.clone();
        self.set_session(session)?;
        Ok(token)
    }
}

/// `session` with `tokens` in place of its old ones.
pub fn with_tokens(session: Session, tokens: TokenPair) -> Session {
    let secs = |t: Option<prost_types::Timestamp>, default: i64| {
        t.map(|t| t.seconds)
            .unwrap_or_else(|| crate::session::now_unix() + default)
    };
    Session {
        access_expires_at: secs(tokens.access_expires_at, 60),
        refresh_expires_at: secs(tokens.refresh_expires_at, 3600),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        ..session
    }
}

/// `message` as a request with the access token and the call timeout.
pub fn authed_request<T>(message: T, token: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(CALL_TIMEOUT);
    with_bearer(req, token)
}

/// Adds `authorization: Bearer <token>`.
pub fn with_bearer<T>(mut req: Request<T>, token: &str) -> Request<T> {
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = Address::parse("127.0.0.1:50051", false).expect("parse");
        assert_eq!(a.uri, "http://127.0.0.1:50051");
        assert!(!a.tls);
        let a = Address::parse("chat.example.com:443", false).expect("parse");
        assert_eq!(a.uri, "https://chat.example.com:443");
        assert!(a.tls);
        let a = Address::parse("http://h:1", true).expect("parse");
        assert_eq!(a.uri, "https://h:1");
        assert!(Address::parse("ftp://h", false).is_err());
    }
}
