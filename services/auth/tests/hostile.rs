//! AuthService against hostile input: tokens that are signed but say what no service
//! accepts, and identifiers large enough to make an error too big for a connection.

use chat_common::{service_token::with_bearer, Claims, Role};
use chat_testkit::{auth_settings, spawn_auth, spawn_auth_with};
use grpc_chat_proto::auth::v1::{self as pb};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use tonic::Code;

/// A token signed with the auth service's own key, saying whatever `claims` say.
fn signed(pem: &str, kid: &str, claims: &Claims) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).expect("key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

async fn check_access_refuses_what_services_refuse() {
    let pem = auth_service::keys::generate_private_key_pem().unwrap();
    let mut settings = auth_settings();
    settings.signing_key_pem = Some(SecretString::from(pem.clone()));
    let app = spawn_auth_with(settings).await;
    let mut c = app.client.clone();
    let keys = c
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let kid = keys.keys[0].key_id.clone();
    let now = chrono::Utc::now().timestamp();
    let claims = |sub: &str, iat: i64| Claims {
        sub: sub.into(),
        exp: now + 3600,
        iat,
        iss: keys.issuer.clone(),
        aud: keys.audience.clone(),
        jti: "j".into(),
        role: Role::User,
        name: Some("ivan".into()),
    };
    let check = |token: String| pb::CheckAccessRequest {
        access_token: token,
        action: pb::Action::ReadChat as i32,
    };

    let fine = c
        .check_access(check(signed(&pem, &kid, &claims("7", now))))
        .await
        .unwrap()
        .into_inner();
    assert!(fine.allowed, "{fine:?}");
    assert_eq!(fine.user_id, 7);

    let not_a_number = c
        .check_access(check(signed(&pem, &kid, &claims("ivan", now))))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !not_a_number.allowed,
        "a subject that is no user id: {not_a_number:?}"
    );

    let tomorrow = c
        .check_access(check(signed(&pem, &kid, &claims("7", now + 86_400))))
        .await
        .unwrap()
        .into_inner();
    assert!(!tomorrow.allowed, "issued a day from now: {tomorrow:?}");
    let drift = c
        .check_access(check(signed(&pem, &kid, &claims("7", now + 20))))
        .await
        .unwrap()
        .into_inner();
    assert!(drift.allowed, "20 s of clock drift is allowed: {drift:?}");
}

async fn lookups_bound_what_they_echo() {
    let app = spawn_auth().await;
    let token = app.service_token("chat-service").await;
    let mut c = app.client.clone();
    for emails in [
        vec!["x".repeat(9000)],
        vec![format!("{}@example.com", "y".repeat(9000))],
        (0..1000).map(|i| format!("bad user {i}")).collect(),
    ] {
        let err = c
            .get_user_ids_by_emails(with_bearer(
                tonic::Request::new(pb::GetUserIdsByEmailsRequest { emails }),
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().len() < 300, "{}", err.message());
        assert!(err.details().len() < 1024, "{} bytes", err.details().len());
    }
}

chat_testkit::backend_tests!(
    check_access_refuses_what_services_refuse,
    lookups_bound_what_they_echo
);
