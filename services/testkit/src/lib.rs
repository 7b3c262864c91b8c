//! Test support, after zero2prod's `spawn_app`: every test gets its own freshly created
//! PostgreSQL database (so tests run in parallel and never see each other's rows) and real
//! services on port 0, with connected tonic clients. Tests then read like user stories.

#![warn(missing_docs)]

pub mod fault;
pub mod fuzz;
pub mod otlp;
pub mod smtp;

pub use fault::{FaultProxy, PrivateNats, PrivatePostgres, ServiceProcess, StopMode, TcpProxy};

use std::{net::SocketAddr, sync::Once, time::Duration};

use secrecy::SecretString;
use sqlx::{Connection, Executor, PgConnection};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

use chat_common::{
    config::{Database, Listen, Nats, ServiceSecret, Upstream},
    server,
    service_token::with_bearer,
    Shutdown,
};
use grpc_chat_proto::auth::v1::{self as authpb, auth_service_client::AuthServiceClient};

/// The server that test databases are created on (`TEST_DATABASE_URL`, default the local
/// PostgreSQL as `postgres`).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The NATS server tests use (`TEST_NATS_URL`, default `nats://127.0.0.1:4222`).
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The longest status message a well-behaved server sends (its status guard cuts at 1 KiB).
pub const MAX_STATUS_MESSAGE: usize = 2048;

/// The shared secret test services exchange for service tokens.
pub const SERVICE_SECRET: &str = "test-service-secret";

/// Logs for tests, once per process, shown with `--nocapture` and filtered by `RUST_LOG`.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// The storage engine a test's services run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh PostgreSQL database on [`admin_url`]'s server (the default).
    Postgres,
    /// A fresh SQLite file under the system's temporary directory.
    Sqlite,
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// The backend of the running test: PostgreSQL unless the test runs inside
/// [`with_backend`] (which [`backend_tests!`] does for its `sqlite` variants).
pub fn backend() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Postgres)
}

/// Runs `test` with every [`TestDb`] it creates on `backend`.
pub async fn with_backend<F: std::future::Future>(backend: Backend, test: F) -> F::Output {
    BACKEND.scope(backend, test).await
}

/// Runs each listed `async fn` (taking no arguments) twice, as `<name>::postgres` and
/// `<name>::sqlite`: the whole service, end to end, on each storage engine.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    $crate::with_backend($crate::Backend::Postgres, super::$name()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    $crate::with_backend($crate::Backend::Sqlite, super::$name()).await
                }
            }
        )*
    };
}

/// A database that exists for one test and is dropped with it: a fresh PostgreSQL
/// database, or a fresh SQLite file, depending on the test's [`backend`].
pub struct TestDb {
    /// The database's name (for SQLite, the file's name without `.db`).
    pub name: String,
    /// The URL to give a service's configuration.
    pub url: String,
    backend: Backend,
    /// Whether it is removed on drop (not for a database on a test's private server).
    owned: bool,
}

impl TestDb {
    /// A fresh database on the running test's [`backend`], removed when dropped. Panics when
    /// PostgreSQL is not reachable at [`admin_url`].
    pub async fn new() -> Self {
        let name = format!("grpcchat_test_{}", uuid::Uuid::new_v4().simple());
        match backend() {
            Backend::Postgres => {
                let admin = admin_url();
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .expect("PostgreSQL must run on 127.0.0.1:5432 (see README)");
                conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                let url = format!("{base}/{name}");
                Self {
                    name,
                    url,
                    backend: Backend::Postgres,
                    owned: true,
                }
            }
            Backend::Sqlite => {
                let path = sqlite_dir().join(format!("{name}.db"));
                Self {
                    url: chat_common::db::sqlite_url(&path),
                    name,
                    backend: Backend::Sqlite,
                    owned: true,
                }
            }
        }
    }
}

fn sqlite_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("grpcchat-tests")
}

impl TestDb {
    /// A PostgreSQL database at `url` that the test does not own (on a
    /// [`PrivatePostgres`], which goes away as a whole): created by the service that opens
    /// it, never dropped.
    pub fn external(url: String) -> Self {
        Self {
            name: url.rsplit('/').next().unwrap_or_default().to_owned(),
            url,
            backend: Backend::Postgres,
            owned: false,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let name = self.name.clone();
        if self.backend == Backend::Sqlite {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(sqlite_dir().join(format!("{name}.db{suffix}")));
            }
            return;
        }
        let admin = admin_url();
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // thread with its own runtime removes the database.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect(&admin).await {
                        let _ = conn
                            .execute(
                                format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)
                                    .as_str(),
                            )
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// How many rows `table` of the database at `url` (PostgreSQL or SQLite) holds: what a
/// test reads to show a refused request stored nothing.
pub async fn count_rows(url: &str, table: &str) -> i64 {
    let q = format!("SELECT count(*) FROM {table}");
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url)
            .await
            .expect("open sqlite");
        sqlx::query_scalar(&q)
            .fetch_one(&mut c)
            .await
            .expect("count")
    } else {
        let mut c = PgConnection::connect(url).await.expect("connect postgres");
        sqlx::query_scalar(&q)
            .fetch_one(&mut c)
            .await
            .expect("count")
    }
}

/// A channel to `addr`, connected eagerly.
pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to the test server")
}

/// A running auth service on its own database.
pub struct TestAuth {
    /// The address it listens on (a free loopback port).
    pub addr: SocketAddr,
    /// A client connected to it, without a token.
    pub client: AuthServiceClient<Channel>,
    /// The service logic itself, for a test that checks state without a call.
    pub api: auth_service::AuthApi,
    /// Stops the server when triggered; dropping a `TestAuth` does not trigger it.
    pub shutdown: Shutdown,
    /// Its database, removed when the `TestAuth` is dropped.
    pub db: TestDb,
}

/// A free loopback port, for a service's configuration.
pub fn loopback_port_0() -> Listen {
    Listen {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// Upstream URLs that lead nowhere, for the services a test's service does not call.
fn no_upstream() -> Upstream {
    Upstream::all_at("http://127.0.0.1:9")
}

/// Auth settings for tests: cheap bcrypt, a known service secret.
pub fn auth_settings() -> auth_service::Settings {
    auth_service::Settings {
        bcrypt_cost: 4,
        service_secret: Some(SecretString::from(SERVICE_SECRET)),
        ..Default::default()
    }
}

/// An auth service on a fresh database with [`auth_settings`].
pub async fn spawn_auth() -> TestAuth {
    spawn_auth_with(auth_settings()).await
}

/// An auth service on `database_url` (created when missing), not on a fresh test database:
/// for a test that runs its own PostgreSQL.
pub async fn spawn_auth_on(database_url: String) -> TestAuth {
    spawn_auth_in(TestDb::external(database_url), auth_settings()).await
}

/// An auth service on a fresh database with `settings`, for a test that needs other limits,
/// lifetimes or keys.
pub async fn spawn_auth_with(settings: auth_service::Settings) -> TestAuth {
    spawn_auth_in(TestDb::new().await, settings).await
}

async fn spawn_auth_in(db: TestDb, settings: auth_service::Settings) -> TestAuth {
    init_logs();
    let config = auth_service::Config {
        listen: loopback_port_0(),
        database: Database {
            url: db.url.clone(),
            max_connections: 5,
        },
        settings,
    };
    let shutdown = Shutdown::new();
    let app = auth_service::Application::build(config, shutdown.clone())
        .await
        .expect("build auth");
    let addr = app.local_addr();
    let api = app.api().clone();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = AuthServiceClient::new(channel(addr).await);
    TestAuth {
        addr,
        client,
        api,
        shutdown,
        db,
    }
}

/// A registered and logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// The user id.
    pub id: i64,
    /// `<username>@example.com`.
    pub email: String,
    /// The username as registered.
    pub username: String,
    /// `<username>-password`.
    pub password: String,
    /// An access token from the login; it expires as configured (15 minutes by default).
    pub access_token: String,
    /// The refresh token from the login.
    pub refresh_token: String,
}

impl TestUser {
    /// Wraps `message` in a request carrying this user's access token.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        with_bearer(tonic::Request::new(message), &self.access_token)
    }
}

/// Registers `username` (email `<username>@example.com`, password `<username>-password`)
/// through `client` and logs in: for tests that reach auth through a server they started
/// themselves rather than a [`TestAuth`].
pub async fn register_user(mut client: AuthServiceClient<Channel>, username: &str) -> TestUser {
    let email = format!("{username}@example.com");
    let password = format!("{username}-password");
    let reg = client
        .register(authpb::RegisterRequest {
            email: email.clone(),
            username: username.into(),
            password: password.clone(),
        })
        .await
        .expect("register")
        .into_inner();
    let login = client
        .login(authpb::LoginRequest {
            email: email.clone(),
            password: password.clone(),
        })
        .await
        .expect("login")
        .into_inner();
    let tokens = login.tokens.expect("tokens");
    TestUser {
        id: reg.user.expect("user").id,
        email,
        username: username.into(),
        password,
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    }
}

impl TestAuth {
    /// Registers `username` (email `<username>@example.com`) and logs in.
    pub async fn user(&self, username: &str) -> TestUser {
        register_user(self.client.clone(), username).await
    }

    /// A service token, as an internal caller holds.
    pub async fn service_token(&self, name: &str) -> String {
        self.client
            .clone()
            .issue_service_token(authpb::IssueServiceTokenRequest {
                service_name: name.into(),
                secret: SERVICE_SECRET.into(),
            })
            .await
            .expect("service token")
            .into_inner()
            .access_token
    }
}

/// Binds a listener on a free loopback port.
pub async fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// `chat_common::server::serve`, re-exported for test helpers of other crates.
pub use server::serve;

/// A subject space and JetStream stream of one test on the shared NATS; the stream is
/// deleted with it.
pub struct TestNats {
    /// The prefix of every subject this test's services publish on.
    pub prefix: String,
    /// The name of this test's JetStream stream.
    pub stream: String,
}

impl TestNats {
    /// A subject space and stream name no other test uses (from a fresh UUID); nothing is created
    /// on the server until a service does it.
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("t{id}"),
            stream: format!("T{id}"),
        }
    }
}

impl Default for TestNats {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let stream = self.stream.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(client) = async_nats::connect(nats_url()).await {
                        let _ = async_nats::jetstream::new(client)
                            .delete_stream(&stream)
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A running chat-service replica.
pub struct TestChat {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// A client connected to it, without a token.
    pub client: grpc_chat_proto::chat::v1::chat_service_client::ChatServiceClient<Channel>,
    /// Stops the replica; dropping the `TestChat` triggers it.
    pub shutdown: Shutdown,
}

impl TestChat {
    /// Creates a chat titled `title`, owned by `owner`, with `members`: [`create_chat`]
    /// through this replica.
    pub async fn create_chat(&self, owner: &TestUser, title: &str, members: &[&TestUser]) -> i64 {
        create_chat(&self.client, owner, title, members).await
    }
}

/// Creates through `client` a chat titled `title`, owned by `owner`, with `members` (the
/// owner alone when there are none: a list naming no one is refused); returns its id.
pub async fn create_chat(
    client: &grpc_chat_proto::chat::v1::chat_service_client::ChatServiceClient<Channel>,
    owner: &TestUser,
    title: &str,
    members: &[&TestUser],
) -> i64 {
    let members = if members.is_empty() {
        vec![owner.username.clone()]
    } else {
        members.iter().map(|m| m.username.clone()).collect()
    };
    client
        .clone()
        .create_chat(owner.req(grpc_chat_proto::chat::v1::CreateChatRequest {
            title: title.into(),
            members,
        }))
        .await
        .expect("create chat")
        .into_inner()
        .chat
        .expect("chat")
        .id
}

/// Chat settings for tests: this test's NATS space and database, the test auth service.
pub fn chat_config(auth: &TestAuth, database_url: &str, nats: &TestNats) -> chat_service::Config {
    chat_service::Config {
        listen: loopback_port_0(),
        database: Database {
            url: database_url.to_owned(),
            max_connections: 10,
        },
        nats: Nats {
            url: nats_url(),
            subject_prefix: nats.prefix.clone(),
        },
        upstream: Upstream {
            auth_url: format!("http://{}", auth.addr),
            ..no_upstream()
        },
        service_secret: ServiceSecret::new(SecretString::from(SERVICE_SECRET)),
        settings: chat_service::config::Settings {
            nats_stream: Some(nats.stream.clone()),
            nats_stream_settings: Default::default(),
            stream_buffer: 1024,
            catch_up_every: Duration::from_secs(5),
            edit_window: Some(Duration::from_secs(900)),
            deletions_every: Duration::from_millis(200),
            // Off unless a test points them at a site of its own (link_preview::test_site).
            link_previews: None,
            presence_heartbeat: Duration::from_secs(10),
        },
    }
}

/// Starts a chat-service replica with `config`.
pub async fn spawn_chat(config: chat_service::Config) -> TestChat {
    init_logs();
    let shutdown = Shutdown::new();
    let app = chat_service::Application::build(config, shutdown.clone())
        .await
        .expect("build chat");
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client =
        grpc_chat_proto::chat::v1::chat_service_client::ChatServiceClient::new(channel(addr).await);
    TestChat {
        addr,
        client,
        shutdown,
    }
}

impl Drop for TestChat {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A running notification-service replica.
pub struct TestNotification {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// A client connected to it, without a token.
    pub client:
        grpc_chat_proto::notification::v1::notification_service_client::NotificationServiceClient<
            Channel,
        >,
    /// Stops the replica; dropping the `TestNotification` triggers it.
    pub shutdown: Shutdown,
}

impl Drop for TestNotification {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Notification settings for tests: this test's NATS space, the given database, chat and
/// auth, SMTP in plain text to `smtp` (a [`smtp::TestSmtp`]), and short retry pauses.
pub fn notification_config(
    auth: &TestAuth,
    chat: &TestChat,
    database_url: &str,
    nats: &TestNats,
    smtp: SocketAddr,
) -> notification_service::Config {
    use notification_service::config::{EmailConfig, RetryPolicy, Settings, SmtpConfig, SmtpTls};
    notification_service::Config {
        listen: loopback_port_0(),
        database: Database {
            url: database_url.to_owned(),
            max_connections: 10,
        },
        nats: Nats {
            url: nats_url(),
            subject_prefix: nats.prefix.clone(),
        },
        upstream: Upstream {
            auth_url: format!("http://{}", auth.addr),
            chat_url: format!("http://{}", chat.addr),
            ..no_upstream()
        },
        service_secret: ServiceSecret::new(SecretString::from(SERVICE_SECRET)),
        settings: Settings {
            nats_stream: nats.stream.clone(),
            nats_stream_settings: Default::default(),
            nats_consumer: "notification".into(),
            ack_wait: Duration::from_secs(10),
            email: EmailConfig::Smtp(SmtpConfig {
                host: smtp.ip().to_string(),
                port: smtp.port(),
                tls: SmtpTls::None,
                username: None,
                password: None,
                from: "grpc-chat <noreply@example.com>".into(),
                timeout: Duration::from_secs(5),
            }),
            retry: RetryPolicy {
                max_attempts: 3,
                backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
            },
            delivery_lease: Duration::from_secs(10),
        },
    }
}

/// Starts a notification-service replica with `config`.
pub async fn spawn_notification(config: notification_service::Config) -> TestNotification {
    init_logs();
    let shutdown = Shutdown::new();
    let app = notification_service::Application::build(config, shutdown.clone())
        .await
        .expect("build notification");
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = grpc_chat_proto::notification::v1::notification_service_client::NotificationServiceClient::new(
        channel(addr).await,
    );
    TestNotification {
        addr,
        client,
        shutdown,
    }
}

/// A running saga-orchestrator.
pub struct TestSaga {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// A client connected to it, without a token.
    pub client:
        grpc_chat_proto::saga::v1::saga_orchestrator_client::SagaOrchestratorClient<Channel>,
    /// Stops the orchestrator; dropping the `TestSaga` triggers it.
    pub shutdown: Shutdown,
}

impl Drop for TestSaga {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Orchestrator settings for tests: the given database and services (addresses, so a test
/// can put a [`TcpProxy`] in between), a short notify deadline, lease and recovery sweep.
pub fn saga_config(
    auth: &TestAuth,
    chat: SocketAddr,
    notification: SocketAddr,
    database_url: &str,
) -> saga_orchestrator::Config {
    saga_orchestrator::Config {
        listen: loopback_port_0(),
        database: Database {
            url: database_url.to_owned(),
            max_connections: 10,
        },
        upstream: Upstream {
            auth_url: format!("http://{}", auth.addr),
            chat_url: format!("http://{chat}"),
            notification_url: format!("http://{notification}"),
        },
        service_secret: ServiceSecret::new(SecretString::from(SERVICE_SECRET)),
        settings: saga_orchestrator::config::Settings {
            notify_deadline: Duration::from_secs(10),
            lease: Duration::from_secs(3),
            recovery_interval: Duration::from_millis(200),
            unlogged_success: saga_orchestrator::config::unlogged_success(),
        },
    }
}

/// Starts an orchestrator with `config`.
pub async fn spawn_saga(config: saga_orchestrator::Config) -> TestSaga {
    init_logs();
    let shutdown = Shutdown::new();
    let app = saga_orchestrator::Application::build(config, shutdown.clone())
        .await
        .expect("build saga");
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = grpc_chat_proto::saga::v1::saga_orchestrator_client::SagaOrchestratorClient::new(
        channel(addr).await,
    );
    TestSaga {
        addr,
        client,
        shutdown,
    }
}
