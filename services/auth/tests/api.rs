//! AuthService over real gRPC against a fresh database per test; every test runs twice,
//! on PostgreSQL and on an SQLite file (`backend_tests!` at the end).

use std::time::Duration;

use chat_common::service_token::with_bearer;
use chat_testkit::{auth_settings, spawn_auth, spawn_auth_with, TestAuth};
use grpc_chat_proto::auth::v1::{self as pb};
use tonic::{Code, Request};
use tonic_types::StatusExt;

fn register(email: &str, username: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        username: username.into(),
        password: password.into(),
    }
}

fn login(email: &str, password: &str) -> pb::LoginRequest {
    pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    }
}

async fn assert_status<T: std::fmt::Debug>(
    res: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    message_contains: &str,
) -> tonic::Status {
    let status = res.expect_err("call should fail");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(
        status.message().contains(message_contains),
        "message {:?} should contain {message_contains:?}",
        status.message()
    );
    status
}

async fn register_then_login_returns_tokens_that_verify_with_the_published_key() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let user = c
        .register(register("Alice@Example.com", "Alice", "correct horse"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, "alice@example.com");
    assert_eq!(user.username, "alice");
    assert_eq!(user.role, pb::Role::User as i32);

    let resp = c
        .login(login("ALICE@example.com", "correct horse"))
        .await
        .unwrap()
        .into_inner();
    let tokens = resp.tokens.unwrap();
    assert_eq!(tokens.token_type, "Bearer");
    assert!(!tokens.refresh_token.is_empty());

    // A client that is not ours: verify with a standard JWT library and the published key.
    let keys = c
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let header = jsonwebtoken::decode_header(&tokens.access_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let key = keys
        .keys
        .iter()
        .find(|k| Some(&k.key_id) == header.kid.as_ref())
        .expect("the token's kid is published");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&[&keys.issuer]);
    validation.set_audience(&[&keys.audience]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &tokens.access_token,
        &jsonwebtoken::DecodingKey::from_ed_pem(key.public_key_pem.as_bytes()).unwrap(),
        &validation,
    )
    .expect("token verifies with the published key");
    let claims = data.claims;
    assert_eq!(claims["sub"], user.id.to_string());
    assert_eq!(claims["role"], "user");
    for claim in ["exp", "iat", "iss", "aud", "jti"] {
        assert!(claims.get(claim).is_some(), "claim {claim} missing");
    }
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 900, "default access token lifetime is 15 minutes");
}

async fn register_rejects_bad_input_with_the_field_named() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let cases = [
        (register("not-an-email", "bob", "long enough"), "email"),
        (register("bob@example", "bob", "long enough"), "email"),
        (register("bob@example.com", "b", "long enough"), "username"),
        (
            register("bob@example.com", "bob!", "long enough"),
            "username",
        ),
        (
            register("bob@example.com", &"b".repeat(33), "long enough"),
            "username",
        ),
        (register("bob@example.com", "bob", "short"), "password"),
        (
            register("bob@example.com", "bob", &"p".repeat(73)),
            "password",
        ),
        (
            register(
                &format!("{}@example.com", "x".repeat(300)),
                "bob",
                "long enough",
            ),
            "email",
        ),
    ];
    for (req, field) in cases {
        let status = assert_status(c.register(req).await, Code::InvalidArgument, field).await;
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, field);
    }
    // Several bad fields are all reported.
    let status = assert_status(
        c.register(register("nope", "x", "y")).await,
        Code::InvalidArgument,
        "email",
    )
    .await;
    assert!(status.message().contains("username") && status.message().contains("password"));
    // Nothing was stored: the name is still free.
    c.register(register("bob@example.com", "bob", "long enough"))
        .await
        .expect("nothing was stored by the failed attempts");
}

async fn duplicate_email_or_username_is_already_exists() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    c.register(register("carol@example.com", "carol", "password1"))
        .await
        .unwrap();
    assert_status(
        c.register(register("CAROL@example.com", "carol2", "password1"))
            .await,
        Code::AlreadyExists,
        "email",
    )
    .await;
    assert_status(
        c.register(register("carol2@example.com", "Carol", "password1"))
            .await,
        Code::AlreadyExists,
        "username",
    )
    .await;
}

async fn wrong_password_and_unknown_email_give_the_same_error() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    app.user("dave").await;
    let wrong = assert_status(
        c.login(login("dave@example.com", "not the password")).await,
        Code::Unauthenticated,
        "invalid email or password",
    )
    .await;
    let unknown = assert_status(
        c.login(login("nobody@example.com", "not the password"))
            .await,
        Code::Unauthenticated,
        "invalid email or password",
    )
    .await;
    assert_eq!(wrong.message(), unknown.message());
    assert_status(
        c.login(login("", "x")).await,
        Code::InvalidArgument,
        "email",
    )
    .await;
    assert_status(
        c.login(login("dave@example.com", "")).await,
        Code::InvalidArgument,
        "password",
    )
    .await;
}

async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let user = app.user("erin").await;

    let first = c
        .refresh(pb::RefreshRequest {
            refresh_token: user.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(first.refresh_token, user.refresh_token);
    let second = c
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    // The original token again: reuse. It fails and revokes the family...
    assert_status(
        c.refresh(pb::RefreshRequest {
            refresh_token: user.refresh_token.clone(),
        })
        .await,
        Code::Unauthenticated,
        "already used",
    )
    .await;
    // ...so even the newest token of the family no longer works.
    assert_status(
        c.refresh(pb::RefreshRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await,
        Code::Unauthenticated,
        "revoked",
    )
    .await;

    // Another login is another family, unaffected.
    let other = c
        .login(login(&user.email, &user.password))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    c.refresh(pb::RefreshRequest {
        refresh_token: other.refresh_token,
    })
    .await
    .expect("a separate session still refreshes");
}

async fn concurrent_refreshes_of_one_token_let_exactly_one_through() {
    let app = spawn_auth().await;
    let user = app.user("frank").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = app.client.clone();
        let token = user.refresh_token.clone();
        tasks.push(tokio::spawn(async move {
            c.refresh(pb::RefreshRequest {
                refresh_token: token,
            })
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1, "a refresh token is single-use even under a race");
}

async fn logout_revokes_the_session() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let user = app.user("grace").await;
    c.logout(pb::LogoutRequest {
        refresh_token: user.refresh_token.clone(),
    })
    .await
    .unwrap();
    // Idempotent.
    c.logout(pb::LogoutRequest {
        refresh_token: user.refresh_token.clone(),
    })
    .await
    .unwrap();
    assert_status(
        c.refresh(pb::RefreshRequest {
            refresh_token: user.refresh_token.clone(),
        })
        .await,
        Code::Unauthenticated,
        "revoked",
    )
    .await;
    assert_status(
        c.logout(pb::LogoutRequest {
            refresh_token: "never-issued".into(),
        })
        .await,
        Code::Unauthenticated,
        "unknown",
    )
    .await;
    assert_status(
        c.logout(pb::LogoutRequest {
            refresh_token: " ".into(),
        })
        .await,
        Code::InvalidArgument,
        "refresh_token",
    )
    .await;
}

async fn expired_tokens_are_refused() {
    let app = spawn_auth_with(auth_service::Settings {
        access_ttl: Duration::from_secs(1),
        refresh_ttl: Duration::from_secs(1),
        ..auth_settings()
    })
    .await;
    let mut c = app.client.clone();
    let user = app.user("heidi").await;
    let check = |token: String| pb::CheckAccessRequest {
        access_token: token,
        action: pb::Action::ReadChat as i32,
    };
    assert!(
        c.check_access(check(user.access_token.clone()))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = c
        .check_access(check(user.access_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.allowed);
    assert_eq!(resp.reason, "token expired");
    assert_status(
        c.refresh(pb::RefreshRequest {
            refresh_token: user.refresh_token,
        })
        .await,
        Code::Unauthenticated,
        "expired",
    )
    .await;
}

async fn check_access_answers_by_token_and_role() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let user = app.user("ivan").await;
    let check = |token: &str, action: pb::Action| pb::CheckAccessRequest {
        access_token: token.into(),
        action: action as i32,
    };
    let ok = c
        .check_access(check(&user.access_token, pb::Action::WriteChat))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.allowed);
    assert_eq!(ok.user_id, user.id);
    assert_eq!(ok.role, pb::Role::User as i32);

    let internal = c
        .check_access(check(&user.access_token, pb::Action::Internal))
        .await
        .unwrap()
        .into_inner();
    assert!(!internal.allowed, "users may not perform internal actions");

    // A forged token: valid shape, signature of another key.
    let other = spawn_auth().await;
    let foreign = other.user("ivan").await;
    let forged = c
        .check_access(check(&foreign.access_token, pb::Action::ReadChat))
        .await
        .unwrap()
        .into_inner();
    assert!(!forged.allowed);
    assert_eq!(forged.reason, "token signed by an unknown key");

    // A tampered token: payload changed, signature kept.
    let mut parts: Vec<String> = user.access_token.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    let tampered = c
        .check_access(check(&parts.join("."), pb::Action::ReadChat))
        .await
        .unwrap()
        .into_inner();
    assert!(!tampered.allowed);

    let garbage = c
        .check_access(check("garbage", pb::Action::ReadChat))
        .await
        .unwrap()
        .into_inner();
    assert!(!garbage.allowed);

    assert_status(
        c.check_access(check("", pb::Action::ReadChat)).await,
        Code::InvalidArgument,
        "access_token",
    )
    .await;
    assert_status(
        c.check_access(check(&user.access_token, pb::Action::Unspecified))
            .await,
        Code::InvalidArgument,
        "action",
    )
    .await;
}

async fn internal_lookups_need_a_service_token() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let lookup = pb::GetUserIdsByEmailsRequest {
        emails: vec![
            "Alice@example.com".into(),
            "bob".into(),
            "zed@example.com".into(),
        ],
    };

    assert_status(
        c.get_user_ids_by_emails(lookup.clone()).await,
        Code::Unauthenticated,
        "token",
    )
    .await;
    assert_status(
        c.get_user_ids_by_emails(alice.req(lookup.clone())).await,
        Code::PermissionDenied,
        "service",
    )
    .await;
    assert_status(
        c.get_user_emails(alice.req(pb::GetUserEmailsRequest {
            user_ids: vec![bob.id],
        }))
        .await,
        Code::PermissionDenied,
        "service",
    )
    .await;

    let token = app.service_token("chat-service").await;
    let resolved = c
        .get_user_ids_by_emails(with_bearer(Request::new(lookup), &token))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<(String, i64)> = resolved
        .users
        .iter()
        .map(|u| (u.identifier.clone(), u.user_id))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("Alice@example.com".into(), alice.id),
            ("bob".into(), bob.id)
        ]
    );
    assert_eq!(resolved.not_found, vec!["zed@example.com".to_string()]);

    let emails = c
        .get_user_emails(with_bearer(
            Request::new(pb::GetUserEmailsRequest {
                user_ids: vec![alice.id, bob.id, 999_999],
            }),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<String> = emails.users.into_iter().map(|u| u.email).collect();
    got.sort();
    assert_eq!(got, vec!["alice@example.com", "bob@example.com"]);

    assert_status(
        c.get_user_ids_by_emails(with_bearer(
            Request::new(pb::GetUserIdsByEmailsRequest {
                emails: vec!["bad@@".into()],
            }),
            &token,
        ))
        .await,
        Code::InvalidArgument,
        "emails",
    )
    .await;
    assert_status(
        c.get_user_emails(with_bearer(
            Request::new(pb::GetUserEmailsRequest {
                user_ids: vec![1; 1001],
            }),
            &token,
        ))
        .await,
        Code::InvalidArgument,
        "at most 1000",
    )
    .await;
}

async fn service_tokens_need_the_shared_secret() {
    let app: TestAuth = spawn_auth().await;
    let mut c = app.client.clone();
    assert_status(
        c.issue_service_token(pb::IssueServiceTokenRequest {
            service_name: "chat-service".into(),
            secret: "guess".into(),
        })
        .await,
        Code::Unauthenticated,
        "secret",
    )
    .await;
    assert_status(
        c.issue_service_token(pb::IssueServiceTokenRequest {
            service_name: "".into(),
            secret: chat_testkit::SERVICE_SECRET.into(),
        })
        .await,
        Code::InvalidArgument,
        "service_name",
    )
    .await;
    let token = app.service_token("saga").await;
    let check = c
        .check_access(pb::CheckAccessRequest {
            access_token: token,
            action: pb::Action::Internal as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.allowed);
    assert_eq!(check.role, pb::Role::Service as i32);
}

async fn health_and_reflection_answer_standard_clients() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let app = spawn_auth().await;
    let channel = chat_testkit::channel(app.addr).await;
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "grpcchat.auth.v1.AuthService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    // What this server serves, not every contract of the project.
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["grpc.health.v1.Health", "grpcchat.auth.v1.AuthService"]
    );
}

chat_testkit::backend_tests!(
    register_then_login_returns_tokens_that_verify_with_the_published_key,
    register_rejects_bad_input_with_the_field_named,
    duplicate_email_or_username_is_already_exists,
    wrong_password_and_unknown_email_give_the_same_error,
    refresh_rotates_and_reuse_revokes_the_family,
    concurrent_refreshes_of_one_token_let_exactly_one_through,
    logout_revokes_the_session,
    expired_tokens_are_refused,
    check_access_answers_by_token_and_role,
    internal_lookups_need_a_service_token,
    service_tokens_need_the_shared_secret,
    health_and_reflection_answer_standard_clients,
);
