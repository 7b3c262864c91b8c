//! User management (issue 16): GetUser, ListUsers, UpdateUser, DeleteUser, and how a role
//! is granted (only by the operator's `admin grant`, here its library function). Every test
//! runs on PostgreSQL and on SQLite (`backend_tests!` at the end).

use auth_service::admin::{set_role, AdminAction};
use chat_testkit::{spawn_auth, TestAuth, TestUser};
use grpc_chat_proto::auth::v1::{self as pb};
use tonic::Code;

async fn grant(app: &TestAuth, user: &TestUser) {
    set_role(&app.db.url, AdminAction::Grant, &user.email)
        .await
        .expect("grant");
}

fn code<T: std::fmt::Debug>(res: Result<tonic::Response<T>, tonic::Status>) -> Code {
    res.expect_err("call should fail").code()
}

async fn login(app: &TestAuth, email: &str, password: &str) -> Result<pb::LoginResponse, Code> {
    app.client
        .clone()
        .login(pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.code())
}

async fn refresh(app: &TestAuth, token: &str) -> Result<pb::RefreshResponse, Code> {
    app.client
        .clone()
        .refresh(pb::RefreshRequest {
            refresh_token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.code())
}

fn list(page_size: i32, page_token: &str, prefix: &str) -> pb::ListUsersRequest {
    pb::ListUsersRequest {
        page_size,
        page_token: page_token.into(),
        prefix: prefix.into(),
    }
}

async fn admin_only_calls_follow_the_granted_role_not_the_token() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    // Anyone sees themselves, with user_id 0 or their own id.
    for id in [0, alice.id] {
        let me = c
            .get_user(alice.req(pb::GetUserRequest { user_id: id }))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        assert_eq!((me.id, me.username.as_str()), (alice.id, "alice"));
        assert_eq!(me.role, pb::Role::User as i32);
    }
    // A user asking for another account, or for one that does not exist: the same answer.
    assert_eq!(
        code(
            c.get_user(alice.req(pb::GetUserRequest { user_id: bob.id }))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            c.get_user(alice.req(pb::GetUserRequest { user_id: 9999 }))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(c.list_users(alice.req(list(0, "", ""))).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            c.delete_user(alice.req(pb::DeleteUserRequest {
                user_id: bob.id,
                current_password: String::new()
            }))
            .await
        ),
        Code::PermissionDenied
    );

    // Granted by the operator: alice's token from before the grant acts as an admin at
    // once (the role is read from the database, not from the token).
    grant(&app, &alice).await;
    let other = c
        .get_user(alice.req(pb::GetUserRequest { user_id: bob.id }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(other.username, "bob");
    assert_eq!(
        code(
            c.get_user(alice.req(pb::GetUserRequest { user_id: 9999 }))
                .await
        ),
        Code::NotFound
    );
    let all = c
        .list_users(alice.req(list(0, "", "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.users.len(), 2);
    assert_eq!(all.users[0].role, pb::Role::Admin as i32);
    // bob, not granted, still may not.
    assert_eq!(
        code(c.list_users(bob.req(list(0, "", ""))).await),
        Code::PermissionDenied
    );

    // Revoked: the same token loses the rights at once.
    set_role(&app.db.url, AdminAction::Revoke, &alice.email)
        .await
        .unwrap();
    assert_eq!(
        code(c.list_users(alice.req(list(0, "", ""))).await),
        Code::PermissionDenied
    );

    // An admin deletes another account without its password; bob's sessions end.
    grant(&app, &alice).await;
    c.delete_user(alice.req(pb::DeleteUserRequest {
        user_id: bob.id,
        current_password: String::new(),
    }))
    .await
    .unwrap();
    assert_eq!(
        refresh(&app, &bob.refresh_token).await.unwrap_err(),
        Code::Unauthenticated
    );
    assert_eq!(
        login(&app, &bob.email, &bob.password).await.unwrap_err(),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            c.delete_user(alice.req(pb::DeleteUserRequest {
                user_id: bob.id,
                current_password: String::new()
            }))
            .await
        ),
        Code::NotFound
    );
    // Service tokens act for nobody here.
    let service = app.service_token("chat").await;
    let req = chat_common::service_token::with_bearer(
        tonic::Request::new(pb::GetUserRequest { user_id: 0 }),
        &service,
    );
    assert_eq!(code(c.get_user(req).await), Code::PermissionDenied);
    // No RPC takes a role: a new account is a user.
    let carol = app.user("carol").await;
    let me = c
        .get_user(carol.req(pb::GetUserRequest { user_id: 0 }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.role, pb::Role::User as i32);
}

async fn list_users_pages_and_filters_by_prefix() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let admin = app.user("root").await;
    grant(&app, &admin).await;
    for name in ["anna", "andy", "bert", "anton", "zoe"] {
        app.user(name).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_users(admin.req(list(2, &token, "")))
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 2);
        pages += 1;
        seen.extend(page.users.into_iter().map(|u| u.username));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["root", "anna", "andy", "bert", "anton", "zoe"]);
    assert_eq!(pages, 3);

    // By username prefix, case-insensitively, and by email prefix.
    let names =
        |r: pb::ListUsersResponse| r.users.into_iter().map(|u| u.username).collect::<Vec<_>>();
    let an = c
        .list_users(admin.req(list(0, "", "AN")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(an), ["anna", "andy", "anton"]);
    let first = c
        .list_users(admin.req(list(2, "", "an")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.users.len(), 2);
    let rest = c
        .list_users(admin.req(list(2, &first.next_page_token, "an")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(rest.clone()), ["anton"]);
    assert!(rest.next_page_token.is_empty());
    let by_email = c
        .list_users(admin.req(list(0, "", "zoe@")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(by_email), ["zoe"]);
    // Matched literally: a LIKE wildcard matches nothing.
    let wild = c
        .list_users(admin.req(list(0, "", "%")))
        .await
        .unwrap()
        .into_inner();
    assert!(wild.users.is_empty());

    for bad in [
        list(101, "", ""),
        list(-1, "", ""),
        list(0, "nope", ""),
        list(0, "", &"a".repeat(300)),
    ] {
        assert_eq!(
            code(c.list_users(admin.req(bad)).await),
            Code::InvalidArgument
        );
    }
}

async fn update_user_changes_names_and_refuses_taken_ones() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let alice = app.user("alice").await;
    app.user("bob").await;
    let update =
        |username: Option<&str>, email: Option<&str>, current: &str| pb::UpdateUserRequest {
            username: username.map(Into::into),
            email: email.map(Into::into),
            new_password: None,
            current_password: current.into(),
        };
    let s = c
        .update_user(alice.req(update(Some("bob"), None, &alice.password)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists);
    assert!(s.message().contains("username"), "{s:?}");
    let s = c
        .update_user(alice.req(update(None, Some("BOB@example.com"), &alice.password)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists);
    assert!(s.message().contains("email"), "{s:?}");
    // Malformed, nothing to change, no or a wrong current password.
    assert_eq!(
        code(
            c.update_user(alice.req(update(Some("x"), None, &alice.password)))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.update_user(alice.req(update(None, None, &alice.password)))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.update_user(alice.req(update(Some("alicia"), None, "")))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.update_user(alice.req(update(Some("alicia"), None, "wrong-password")))
                .await
        ),
        Code::Unauthenticated
    );

    let user = c
        .update_user(alice.req(update(
            Some("Alicia"),
            Some("alicia@example.com"),
            &alice.password,
        )))
        .await
        .unwrap()
        .into_inner();
    let u = user.user.unwrap();
    assert_eq!(
        (u.username.as_str(), u.email.as_str()),
        ("alicia", "alicia@example.com")
    );
    assert!(user.tokens.is_none(), "no password change, no new tokens");
    // The old email no longer logs in, the new one does; the session still refreshes.
    assert_eq!(
        login(&app, &alice.email, &alice.password)
            .await
            .unwrap_err(),
        Code::Unauthenticated
    );
    login(&app, "alicia@example.com", &alice.password)
        .await
        .unwrap();
    refresh(&app, &alice.refresh_token).await.unwrap();
}

async fn a_password_change_needs_the_current_one_and_ends_other_sessions() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let alice = app.user("alice").await;
    // A second session, as on another device.
    let other = login(&app, &alice.email, &alice.password)
        .await
        .unwrap()
        .tokens
        .unwrap();
    let change = |current: &str, new: &str| pb::UpdateUserRequest {
        new_password: Some(new.into()),
        current_password: current.into(),
        ..Default::default()
    };
    assert_eq!(
        code(
            c.update_user(alice.req(change("not-the-password", "new-password-1")))
                .await
        ),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            c.update_user(alice.req(change(&alice.password, "short")))
                .await
        ),
        Code::InvalidArgument
    );
    // Refused attempts changed nothing.
    login(&app, &alice.email, &alice.password).await.unwrap();

    let changed = c
        .update_user(alice.req(change(&alice.password, "new-password-1")))
        .await
        .unwrap()
        .into_inner();
    let tokens = changed.tokens.expect("new tokens for this client");
    // Every earlier refresh token is revoked; the new one works.
    assert_eq!(
        refresh(&app, &alice.refresh_token).await.unwrap_err(),
        Code::Unauthenticated
    );
    assert_eq!(
        refresh(&app, &other.refresh_token).await.unwrap_err(),
        Code::Unauthenticated
    );
    refresh(&app, &tokens.refresh_token).await.unwrap();
    assert_eq!(
        login(&app, &alice.email, &alice.password)
            .await
            .unwrap_err(),
        Code::Unauthenticated
    );
    login(&app, &alice.email, "new-password-1").await.unwrap();
}

async fn wrong_current_passwords_are_rate_limited_like_logins() {
    let mut settings = chat_testkit::auth_settings();
    settings.rate_limits.login_per_account = auth_service::Limit::new(2, 300);
    let app = chat_testkit::spawn_auth_with(settings).await;
    let mut c = app.client.clone();
    let alice = app.user("alice").await;
    let wrong = || pb::DeleteUserRequest {
        user_id: 0,
        current_password: "wrong-password".into(),
    };
    assert_eq!(
        code(c.delete_user(alice.req(wrong())).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(c.delete_user(alice.req(wrong())).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(c.delete_user(alice.req(wrong())).await),
        Code::ResourceExhausted
    );
    let runs = app.api.bcrypt_runs();
    let right = pb::DeleteUserRequest {
        user_id: 0,
        current_password: alice.password.clone(),
    };
    assert_eq!(
        code(c.delete_user(alice.req(right)).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        app.api.bcrypt_runs(),
        runs,
        "a refused attempt costs no bcrypt"
    );
}

async fn deleting_ones_own_account_needs_the_password_and_ends_everything() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let alice = app.user("alice").await;
    let del = |p: &str| pb::DeleteUserRequest {
        user_id: 0,
        current_password: p.into(),
    };
    assert_eq!(
        code(c.delete_user(alice.req(del(""))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.delete_user(alice.req(del("wrong-password"))).await),
        Code::Unauthenticated
    );
    c.delete_user(alice.req(del(&alice.password)))
        .await
        .unwrap();

    assert_eq!(
        login(&app, &alice.email, &alice.password)
            .await
            .unwrap_err(),
        Code::Unauthenticated
    );
    assert_eq!(
        refresh(&app, &alice.refresh_token).await.unwrap_err(),
        Code::Unauthenticated
    );
    // The still-unexpired access token is refused by the user RPCs.
    assert_eq!(
        code(
            c.get_user(alice.req(pb::GetUserRequest { user_id: 0 }))
                .await
        ),
        Code::Unauthenticated
    );
    // The email and the username are free again.
    app.user("alice").await;
}

/// `auth-service admin grant|revoke EMAIL` as an operator runs it: on the database of
/// `DATABASE_URL`, says what it did and exits; a bad command line or an unknown email fails.
async fn the_admin_subcommand_grants_and_revokes() {
    let app = spawn_auth().await;
    let alice = app.user("alice").await;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env("RUST_LOG", "warn")
            .env("METRICS_ADDR", "off")
            .output()
            .expect("run auth-service")
    };
    let out = run(&["admin", "grant", "alice@example.com"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("now has the role admin"),
        "{out:?}"
    );
    let mut c = app.client.clone();
    let me = c
        .get_user(alice.req(pb::GetUserRequest { user_id: 0 }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.role, pb::Role::Admin as i32);
    for bad in [
        &["admin", "grant"][..],
        &["admin", "promote", "alice@example.com"],
        &["admin", "grant", "nobody@example.com"],
    ] {
        assert!(!run(bad).status.success(), "{bad:?}");
    }
    assert!(run(&["admin", "revoke", "alice@example.com"])
        .status
        .success());
    assert_eq!(
        code(c.list_users(alice.req(list(0, "", ""))).await),
        Code::PermissionDenied
    );
}

/// Every deletion leaves a tombstone, listed to services only, oldest first, from where a
/// reader stopped.
async fn deletions_are_listed_to_services_in_order() {
    let app = spawn_auth().await;
    let mut c = app.client.clone();
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let service = app.service_token("chat-service").await;
    let listed = |after_id: i64, page_size: i32| {
        let mut c = app.client.clone();
        let service = service.clone();
        async move {
            c.list_deleted_users(chat_common::service_token::with_bearer(
                tonic::Request::new(pb::ListDeletedUsersRequest {
                    after_id,
                    page_size,
                }),
                &service,
            ))
            .await
            .map(|r| r.into_inner().deleted)
        }
    };
    assert!(listed(0, 0).await.expect("list").is_empty());
    for user in [&carol, &alice] {
        c.delete_user(user.req(pb::DeleteUserRequest {
            user_id: 0,
            current_password: user.password.clone(),
        }))
        .await
        .expect("delete");
    }
    let all = listed(0, 0).await.expect("list");
    assert_eq!(
        all.iter().map(|d| d.user_id).collect::<Vec<_>>(),
        vec![carol.id, alice.id]
    );
    assert!(all[0].id < all[1].id && all.iter().all(|d| d.deleted_at.is_some()));
    let rest = listed(all[0].id, 1).await.expect("list");
    assert_eq!(
        rest.iter().map(|d| d.user_id).collect::<Vec<_>>(),
        vec![alice.id]
    );
    assert!(listed(all[1].id, 0).await.expect("list").is_empty());
    // A failed deletion leaves no tombstone.
    assert_eq!(
        code(
            c.delete_user(bob.req(pb::DeleteUserRequest {
                user_id: 0,
                current_password: "wrong password".into(),
            }))
            .await
        ),
        Code::Unauthenticated
    );
    assert_eq!(listed(0, 0).await.expect("list").len(), 2);

    assert_eq!(
        listed(-1, 0).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        listed(0, 1001).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.list_deleted_users(bob.req(pb::ListDeletedUsersRequest::default()))
                .await
        ),
        Code::PermissionDenied
    );
}

chat_testkit::backend_tests!(
    the_admin_subcommand_grants_and_revokes,
    admin_only_calls_follow_the_granted_role_not_the_token,
    list_users_pages_and_filters_by_prefix,
    update_user_changes_names_and_refuses_taken_ones,
    a_password_change_needs_the_current_one_and_ends_other_sessions,
    wrong_current_passwords_are_rate_limited_like_logins,
    deleting_ones_own_account_needs_the_password_and_ends_everything,
    deletions_are_listed_to_services_in_order,
);
