//! Brute force is slowed: `Login`, `Register` and `IssueServiceToken` are rate-limited per
//! account and per client address, refused with RESOURCE_EXHAUSTED and a retry delay before
//! any bcrypt runs, and counted in the database so that replicas share the count. Every
//! test runs on PostgreSQL and on SQLite (`backend_tests!` at the end). Other client
//! addresses are real: a second client binds its socket to 127.0.0.2.

use std::{net::SocketAddr, time::Duration};

use chat_common::Shutdown;
use chat_testkit::{auth_settings, spawn_auth_with, SERVICE_SECRET};
use chrono::Utc;
use grpc_chat_proto::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use tonic::{transport::Channel, transport::Endpoint, Code};
use tonic_types::StatusExt;

use auth_service::{limits::IpNet, Limit, RateLimits, Settings};

fn settings(rate_limits: RateLimits) -> Settings {
    Settings {
        rate_limits,
        ..auth_settings()
    }
}

/// A client of the auth service at `addr` whose connections come from `local` (any
/// 127.x.y.z address is this machine's loopback).
async fn client_from(addr: SocketAddr, local: &str) -> AuthServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .local_address(Some(local.parse().expect("ip")))
        .connect()
        .await
        .expect("connect");
    AuthServiceClient::new(channel)
}

fn login(email: &str, password: &str) -> pb::LoginRequest {
    pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    }
}

/// Asserts a rate-limit refusal: RESOURCE_EXHAUSTED, a message that says when to retry,
/// and a RetryInfo delay within `window`. Returns the delay.
fn assert_limited<T: std::fmt::Debug>(
    res: Result<tonic::Response<T>, tonic::Status>,
    window: Duration,
    says: &str,
) -> Duration {
    let status = res.expect_err("call should be refused");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "unexpected: {status:?}"
    );
    assert!(
        status.message().contains(says) && status.message().contains("try again in"),
        "message {:?} should say {says:?} and when to retry",
        status.message()
    );
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= window,
        "retry delay {delay:?} should be within the {window:?} window"
    );
    delay
}

fn assert_code<T: std::fmt::Debug>(res: Result<tonic::Response<T>, tonic::Status>, code: Code) {
    let status = res.expect_err("call should fail");
    assert_eq!(status.code(), code, "unexpected: {status:?}");
}

async fn eleventh_wrong_password_is_refused_even_when_right_and_runs_no_bcrypt() {
    // The defaults: 10 failed logins per account in 300 s.
    let app = spawn_auth_with(auth_settings()).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut c = app.client.clone();
    for _ in 0..10 {
        assert_code(
            c.login(login(&alice.email, "not the password")).await,
            Code::Unauthenticated,
        );
    }
    let before = app.api.bcrypt_runs();
    assert_limited(
        c.login(login(&alice.email, &alice.password)).await,
        Duration::from_secs(300),
        "too many failed logins for this account",
    );
    assert_limited(
        c.login(login("ALICE@example.com", "not the password"))
            .await,
        Duration::from_secs(300),
        "for this account",
    );
    assert_eq!(
        app.api.bcrypt_runs(),
        before,
        "a refused login must not run bcrypt"
    );

    // Another account is unaffected, from this address or another one.
    c.login(login(&bob.email, &bob.password))
        .await
        .expect("bob logs in from the same address");
    let mut elsewhere = client_from(app.addr, "127.0.0.2").await;
    elsewhere
        .login(login(&bob.email, &bob.password))
        .await
        .expect("bob logs in from another address");
    // The account's limit holds from every address.
    assert_limited(
        elsewhere.login(login(&alice.email, &alice.password)).await,
        Duration::from_secs(300),
        "for this account",
    );
}

async fn failed_logins_from_one_address_limit_it_for_every_account() {
    let window = Duration::from_secs(300);
    let app = spawn_auth_with(settings(RateLimits {
        login_per_address: Limit::new(5, 300),
        ..RateLimits::default()
    }))
    .await;
    let carol = app.user("carol").await;
    let mut c = app.client.clone();
    // Five different accounts, known or not, each failing once.
    for i in 0..5 {
        assert_code(
            c.login(login(&format!("guess{i}@example.com"), "password1"))
                .await,
            Code::Unauthenticated,
        );
    }
    let before = app.api.bcrypt_runs();
    assert_limited(
        c.login(login(&carol.email, &carol.password)).await,
        window,
        "from this address",
    );
    // Malformed emails are limited by address too.
    assert_limited(
        c.login(login("not-an-email", "password1")).await,
        window,
        "from this address",
    );
    assert_eq!(
        app.api.bcrypt_runs(),
        before,
        "no bcrypt for a refused login"
    );
    client_from(app.addr, "127.0.0.2")
        .await
        .login(login(&carol.email, &carol.password))
        .await
        .expect("another address is unaffected");
}

async fn right_passwords_do_not_count() {
    let app = spawn_auth_with(settings(RateLimits {
        login_per_account: Limit::new(2, 300),
        login_per_address: Limit::new(2, 300),
        ..RateLimits::default()
    }))
    .await;
    let dave = app.user("dave").await;
    let mut c = app.client.clone();
    for _ in 0..5 {
        c.login(login(&dave.email, &dave.password))
            .await
            .expect("successful logins are not limited");
    }
    assert_code(
        c.login(login(&dave.email, "wrong password")).await,
        Code::Unauthenticated,
    );
    c.login(login(&dave.email, &dave.password))
        .await
        .expect("one failure is within the limit");
}

async fn right_passwords_at_once_are_not_refused() {
    // An account's limit is counted while each password is checked; logins of one
    // account take turns, so twenty-four devices logging in at once all get in, and a
    // wrong password among them still counts.
    let app = spawn_auth_with(settings(RateLimits {
        login_per_account: Limit::new(4, 300),
        login_per_address: Limit::OFF,
        ..RateLimits::default()
    }))
    .await;
    let frank = app.user("frank").await;
    let logins = (0..24).map(|_| {
        let mut c = app.client.clone();
        let (email, password) = (frank.email.clone(), frank.password.clone());
        async move { c.login(login(&email, &password)).await }
    });
    for r in futures_join_all(logins).await {
        r.expect("a right password is never refused while others are checked");
    }
    let mut c = app.client.clone();
    for _ in 0..4 {
        assert_code(
            c.login(login(&frank.email, "wrong password")).await,
            Code::Unauthenticated,
        );
    }
    assert_limited(
        c.login(login(&frank.email, &frank.password)).await,
        Duration::from_secs(300),
        "for this account",
    );
}

/// A second auth replica on the database of `app`, with `settings`.
async fn replica(db_url: &str, settings: Settings) -> (SocketAddr, Shutdown) {
    let shutdown = Shutdown::new();
    let app = auth_service::Application::build(
        auth_service::Config {
            listen: chat_common::config::Listen {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            database: chat_common::config::Database {
                url: db_url.to_owned(),
                max_connections: 3,
            },
            settings,
        },
        shutdown.clone(),
    )
    .await
    .expect("build the second replica");
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    (addr, shutdown)
}

async fn two_replicas_on_one_database_share_the_count() {
    let limits = RateLimits {
        login_per_account: Limit::new(6, 300),
        ..RateLimits::default()
    };
    let a = spawn_auth_with(settings(limits.clone())).await;
    let (b_addr, b_shutdown) = replica(&a.db.url, settings(limits)).await;
    let erin = a.user("erin").await;
    let mut on_a = a.client.clone();
    let mut on_b = client_from(b_addr, "127.0.0.1").await;

    // Twenty wrong passwords at once, spread over both replicas: the count is atomic and
    // shared, so exactly six are answered and the rest refused.
    let attempts = (0..20).map(|i| {
        let mut c = if i % 2 == 0 {
            on_a.clone()
        } else {
            on_b.clone()
        };
        let email = erin.email.clone();
        async move { c.login(login(&email, "wrong password")).await }
    });
    let results = futures_join_all(attempts).await;
    let codes: Vec<Code> = results
        .iter()
        .map(|r| r.as_ref().expect_err("all wrong").code())
        .collect();
    let answered = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    let refused = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert_eq!(
        (answered, refused),
        (6, 14),
        "six answered, the rest refused: {codes:?}"
    );
    // And the right password is refused on either replica.
    for c in [&mut on_a, &mut on_b] {
        assert_limited(
            c.login(login(&erin.email, &erin.password)).await,
            Duration::from_secs(300),
            "for this account",
        );
    }
    b_shutdown.trigger();
}

/// `futures::future::join_all` without the dependency: runs every future concurrently.
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

async fn login_works_again_after_the_window() {
    let window = Duration::from_secs(2);
    let app = spawn_auth_with(settings(RateLimits {
        login_per_account: Limit { max: 2, window },
        ..RateLimits::default()
    }))
    .await;
    let frank = app.user("frank").await;
    let mut c = app.client.clone();
    for _ in 0..2 {
        assert_code(
            c.login(login(&frank.email, "wrong password")).await,
            Code::Unauthenticated,
        );
    }
    assert_limited(
        c.login(login(&frank.email, &frank.password)).await,
        window,
        "for this account",
    );
    // Refused attempts do not keep the window open: polling with the right password gets
    // in once the window has passed.
    let deadline = tokio::time::Instant::now() + window * 5;
    loop {
        match c.login(login(&frank.email, &frank.password)).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still refused long after the window"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("unexpected: {s:?}"),
        }
    }
}

async fn wrong_service_secrets_are_limited_per_address() {
    let window = Duration::from_secs(300);
    let app = spawn_auth_with(settings(RateLimits {
        service_token_per_address: Limit::new(3, 300),
        ..RateLimits::default()
    }))
    .await;
    let req = |secret: &str| pb::IssueServiceTokenRequest {
        service_name: "chat".into(),
        secret: secret.into(),
    };
    let mut c = app.client.clone();
    // Right secrets are not counted.
    for _ in 0..5 {
        c.issue_service_token(req(SERVICE_SECRET))
            .await
            .expect("right secret");
    }
    for _ in 0..3 {
        assert_code(
            c.issue_service_token(req("guess")).await,
            Code::Unauthenticated,
        );
    }
    assert_limited(
        c.issue_service_token(req("guess")).await,
        window,
        "wrong service secrets",
    );
    assert_limited(
        c.issue_service_token(req(SERVICE_SECRET)).await,
        window,
        "wrong service secrets",
    );
    client_from(app.addr, "127.0.0.2")
        .await
        .issue_service_token(req(SERVICE_SECRET))
        .await
        .expect("another address is unaffected");
}

async fn registrations_are_limited_per_address_and_a_refused_one_stores_nothing() {
    let app = spawn_auth_with(settings(RateLimits {
        register_per_address: Limit::new(2, 300),
        ..RateLimits::default()
    }))
    .await;
    let reg = |name: &str| pb::RegisterRequest {
        email: format!("{name}@example.com"),
        username: name.into(),
        password: "long enough".into(),
    };
    let mut c = app.client.clone();
    c.register(reg("gina")).await.expect("first");
    c.register(reg("hank")).await.expect("second");
    let before = app.api.bcrypt_runs();
    assert_limited(
        c.register(reg("ivan")).await,
        Duration::from_secs(300),
        "too many registrations from this address",
    );
    assert_eq!(app.api.bcrypt_runs(), before, "no bcrypt for a refused one");
    // Bad input is still answered as bad input (it costs nothing).
    assert_code(
        c.register(pb::RegisterRequest {
            email: "nope".into(),
            ..reg("ivan")
        })
        .await,
        Code::InvalidArgument,
    );
    // Nothing was stored: the name is free from another address.
    client_from(app.addr, "127.0.0.2")
        .await
        .register(reg("ivan"))
        .await
        .expect("ivan was not stored by the refused call");
}

async fn behind_a_trusted_proxy_the_forwarded_address_is_limited() {
    let app = spawn_auth_with(settings(RateLimits {
        login_per_address: Limit::new(2, 300),
        trusted_proxies: IpNet::parse_list("127.0.0.1").expect("nets"),
        ..RateLimits::default()
    }))
    .await;
    let judy = app.user("judy").await;
    let mut c = app.client.clone();
    let via_proxy = |client: &str, req: pb::LoginRequest| {
        let mut r = tonic::Request::new(req);
        r.metadata_mut().insert(
            "x-forwarded-for",
            client.parse().expect("a valid header value"),
        );
        r
    };
    for _ in 0..2 {
        assert_code(
            c.login(via_proxy("203.0.113.1", login(&judy.email, "wrong")))
                .await,
            Code::Unauthenticated,
        );
    }
    assert_limited(
        c.login(via_proxy("203.0.113.1", login(&judy.email, &judy.password)))
            .await,
        Duration::from_secs(300),
        "from this address",
    );
    // Another client behind the same proxy is unaffected.
    c.login(via_proxy("203.0.113.2", login(&judy.email, &judy.password)))
        .await
        .expect("another forwarded address");
}

async fn ended_windows_are_pruned() {
    let db = chat_testkit::TestDb::new().await;
    let store = auth_service::store::open(&db.url, 1, &Shutdown::new())
        .await
        .expect("store");
    let t0 = Utc::now();
    let s = chrono::Duration::seconds;
    assert_eq!(
        store
            .hit_rate_limit("k:short", t0, t0 + s(1))
            .await
            .unwrap()
            .0,
        1
    );
    assert_eq!(
        store
            .hit_rate_limit("k:short", t0, t0 + s(1))
            .await
            .unwrap()
            .0,
        2
    );
    let long = store
        .hit_rate_limit("k:long", t0, t0 + s(100))
        .await
        .unwrap();
    assert_eq!(long.0, 1);
    // Two seconds later the short window has ended: it alone is deleted.
    let t2 = t0 + s(2);
    assert_eq!(store.prune_rate_limits(t2).await.unwrap(), 1);
    assert_eq!(store.prune_rate_limits(t2).await.unwrap(), 0);
    let (hits, reset_at) = store
        .hit_rate_limit("k:long", t2, t2 + s(100))
        .await
        .unwrap();
    assert_eq!(hits, 2, "the open window was kept");
    assert_eq!(reset_at.timestamp_micros(), long.1.timestamp_micros());
    assert_eq!(
        store
            .hit_rate_limit("k:short", t2, t2 + s(1))
            .await
            .unwrap()
            .0,
        1,
        "a new window after the pruned one"
    );
    // An ended window that was not yet pruned starts over too.
    let t4 = t0 + s(4);
    assert_eq!(
        store
            .hit_rate_limit("k:short", t4, t4 + s(1))
            .await
            .unwrap()
            .0,
        1
    );
    store.unhit_rate_limit("k:short").await.unwrap();
    store.unhit_rate_limit("k:short").await.unwrap();
    assert_eq!(
        store
            .hit_rate_limit("k:short", t4, t4 + s(1))
            .await
            .unwrap()
            .0,
        1,
        "taking back never goes below zero"
    );
}

chat_testkit::backend_tests!(
    eleventh_wrong_password_is_refused_even_when_right_and_runs_no_bcrypt,
    failed_logins_from_one_address_limit_it_for_every_account,
    right_passwords_do_not_count,
    right_passwords_at_once_are_not_refused,
    two_replicas_on_one_database_share_the_count,
    login_works_again_after_the_window,
    wrong_service_secrets_are_limited_per_address,
    registrations_are_limited_per_address_and_a_refused_one_stores_nothing,
    behind_a_trusted_proxy_the_forwarded_address_is_limited,
    ended_windows_are_pruned,
);
