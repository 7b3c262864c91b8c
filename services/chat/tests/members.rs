//! Membership over time (issue 16): AddMembers, RemoveMember, LeaveChat and account
//! deletions. A removed member loses access at once and their open streams end; others'
//! streams see members come and go, on any replica; an owner who leaves hands the chat on;
//! a deleted account leaves every chat and its messages stay without its name. Every test
//! runs on PostgreSQL and on SQLite (`backend_tests!` at the end).

mod support;

use std::time::Duration;

use auth_service::admin::{set_role, AdminAction};
use chat_testkit::{TestChat, TestUser};
use grpc_chat_proto::{
    auth::v1 as authpb,
    chat::v1::{self as pb, connect_response::Event},
};
use support::*;
use tonic::{Code, Streaming};

async fn invite(
    chat: &TestChat,
    user: &TestUser,
    chat_id: i64,
    names: &[&str],
) -> Result<pb::AddMembersResponse, tonic::Status> {
    chat.client
        .clone()
        .add_members(user.req(pb::AddMembersRequest {
            chat_id,
            members: names.iter().map(|n| n.to_string()).collect(),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn remove(
    chat: &TestChat,
    user: &TestUser,
    chat_id: i64,
    user_id: i64,
) -> Result<bool, tonic::Status> {
    chat.client
        .clone()
        .remove_member(user.req(pb::RemoveMemberRequest { chat_id, user_id }))
        .await
        .map(|r| r.into_inner().removed)
}

async fn leave(chat: &TestChat, user: &TestUser, chat_id: i64) -> Result<(), tonic::Status> {
    chat.client
        .clone()
        .leave_chat(user.req(pb::LeaveChatRequest { chat_id }))
        .await
        .map(|_| ())
}

async fn member_ids(chat: &TestChat, user: &TestUser, chat_id: i64) -> Vec<i64> {
    chat.client
        .clone()
        .list_members(user.req(pb::ListMembersRequest { chat_id }))
        .await
        .expect("list members")
        .into_inner()
        .members
        .iter()
        .map(|m| m.user_id)
        .collect()
}

async fn owner(chat: &TestChat, user: &TestUser, chat_id: i64) -> i64 {
    chat.client
        .clone()
        .list_members(user.req(pb::ListMembersRequest { chat_id }))
        .await
        .expect("list members")
        .into_inner()
        .chat
        .expect("chat")
        .creator_id
}

/// The next item of a stream that is not a message or the end of history (those are
/// skipped): a member event, or the status the stream ended with.
async fn next_event(stream: &mut Streaming<pb::ConnectResponse>) -> Result<Event, tonic::Status> {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("an event within 30 s")?;
        match item.and_then(|r| r.event) {
            Some(Event::Message(_) | Event::HistoryEnd(_)) => continue,
            Some(e) => return Ok(e),
            None => panic!("the stream ended without a status"),
        }
    }
}

async fn a_send(chat: &TestChat, user: &TestUser, chat_id: i64) -> Result<(), tonic::Status> {
    chat.client
        .clone()
        .send_message(user.req(pb::SendMessageRequest {
            chat_id,
            text: "anyone?".into(),
            ..Default::default()
        }))
        .await
        .map(|_| ())
}

async fn members_come_and_go_and_streams_follow() {
    let w = World::new().await;
    let (a, b) = (w.replica().await, w.replica().await);
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let id = create_chat(&a, &alice, &[&bob]).await;
    let mut bobs = connect(&b, &bob, id, 0).await;

    // Any member invites; bob's stream on the other replica sees carol join.
    let added = invite(&a, &alice, id, &["carol", "bob"])
        .await
        .expect("invite");
    assert_eq!(
        added.added.iter().map(|m| m.user_id).collect::<Vec<_>>(),
        vec![carol.id],
        "bob already was a member"
    );
    assert_eq!(added.chat.expect("chat").member_count, 3);
    match next_event(&mut bobs).await.expect("event") {
        Event::MemberAdded(e) => assert_eq!(e.member.expect("member").user_id, carol.id),
        other => panic!("expected carol's join, got {other:?}"),
    }
    // Idempotent: nobody new, nothing announced.
    let again = invite(&b, &bob, id, &["carol"])
        .await
        .expect("invite again");
    assert!(again.added.is_empty());
    send(&a, &carol, id, "hello from carol").await;

    // An unknown name is named; a non-member cannot invite (or learn the chat exists).
    let e = invite(&a, &alice, id, &["nobody"]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nobody"), "{e:?}");
    let eve = w.user("eve").await;
    let e = invite(&a, &eve, id, &["eve"]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = invite(&a, &alice, id, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Only the owner removes others.
    let e = remove(&a, &bob, id, carol.id).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = remove(&a, &alice, id, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Carol, streaming on replica b, is removed through replica a: her stream is told and
    // ends; bob's sees her go; she has no access any more.
    let mut carols = connect(&b, &carol, id, 0).await;
    assert!(remove(&a, &alice, id, carol.id).await.expect("remove"));
    match next_event(&mut carols).await.expect("removal event") {
        Event::MemberRemoved(r) => assert_eq!(r.user_id, carol.id),
        other => panic!("expected carol's removal, got {other:?}"),
    }
    let end = next_event(&mut carols).await.expect_err("the stream ends");
    assert_eq!(end.code(), Code::NotFound, "{end:?}");
    assert!(end.message().contains("no longer a member"), "{end:?}");
    assert_eq!(
        grpc_chat_proto::reasons::reason(&end).as_deref(),
        Some(grpc_chat_proto::reasons::MEMBERSHIP_ENDED)
    );
    match next_event(&mut bobs).await.expect("event") {
        Event::MemberRemoved(r) => assert_eq!(r.user_id, carol.id),
        other => panic!("expected carol's removal, got {other:?}"),
    }
    let e = a
        .client
        .clone()
        .send_message(carol.req(pb::SendMessageRequest {
            chat_id: id,
            text: "still here?".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = a
        .client
        .clone()
        .list_messages(carol.req(pb::ListMessagesRequest {
            chat_id: id,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Removing her again changes nothing; her message stays.
    assert!(!remove(&a, &alice, id, carol.id)
        .await
        .expect("remove again"));
    assert_eq!(member_ids(&a, &alice, id).await, vec![alice.id, bob.id]);
    let history = a
        .client
        .clone()
        .list_messages(alice.req(pb::ListMessagesRequest {
            chat_id: id,
            ..Default::default()
        }))
        .await
        .expect("history")
        .into_inner()
        .messages;
    assert_eq!(history[0].sender_username, "carol");
}

async fn owners_hand_on_and_the_last_to_leave_deletes_the_chat() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let id = create_chat(&chat, &alice, &[&bob]).await;
    invite(&chat, &bob, id, &["carol"]).await.expect("invite");
    assert_eq!(owner(&chat, &bob, id).await, alice.id);

    leave(&chat, &alice, id).await.expect("alice leaves");
    assert_eq!(
        owner(&chat, &bob, id).await,
        bob.id,
        "the earliest member owns it"
    );
    let e = leave(&chat, &alice, id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // The new owner may remove others now.
    let mut carols = connect(&chat, &carol, id, 0).await;
    leave(&chat, &bob, id).await.expect("bob leaves");
    assert_eq!(owner(&chat, &carol, id).await, carol.id);
    match next_event(&mut carols).await.expect("event") {
        Event::MemberRemoved(r) => assert_eq!(r.user_id, bob.id),
        other => panic!("expected bob's leaving, got {other:?}"),
    }
    // The last member leaves: the chat is gone, her own stream says so.
    leave(&chat, &carol, id).await.expect("carol leaves");
    match next_event(&mut carols).await {
        Ok(Event::ChatDeleted(_)) | Err(_) => {}
        Ok(other) => panic!("expected the chat's end, got {other:?}"),
    }
    let e = chat
        .client
        .clone()
        .list_members(carol.req(pb::ListMembersRequest { chat_id: id }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A service caller cannot leave (it is no member).
    let service = w.auth.service_token("saga").await;
    let mut req = tonic::Request::new(pb::LeaveChatRequest { chat_id: id });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {service}").parse().expect("header"),
    );
    let e = chat.client.clone().leave_chat(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

async fn administrators_remove_members_of_any_chat() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob, eve) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("eve").await,
    );
    let id = create_chat(&chat, &alice, &[&bob]).await;
    // Not an admin, not a member: the chat does not exist for eve.
    let e = remove(&chat, &eve, id, bob.id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    set_role(&w.auth.db.url, AdminAction::Grant, &eve.email)
        .await
        .expect("grant");
    // The role travels in the access token: a new login carries it.
    let login = w
        .auth
        .client
        .clone()
        .login(authpb::LoginRequest {
            email: eve.email.clone(),
            password: eve.password.clone(),
        })
        .await
        .expect("login")
        .into_inner();
    let admin = TestUser {
        access_token: login.tokens.expect("tokens").access_token,
        ..eve
    };
    assert!(remove(&chat, &admin, id, bob.id)
        .await
        .expect("admin removes"));
    assert_eq!(member_ids(&chat, &alice, id).await, vec![alice.id]);
}

async fn a_deleted_account_leaves_every_chat() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let first = create_chat(&chat, &alice, &[&bob]).await;
    let second = create_chat(&chat, &bob, &[&alice]).await;
    send(&chat, &bob, first, "bob was here").await;
    send(&chat, &alice, first, "alice too").await;
    let mut bobs = connect(&chat, &bob, first, 0).await;
    let mut alices = connect(&chat, &alice, second, 0).await;

    w.auth
        .client
        .clone()
        .delete_user(bob.req(authpb::DeleteUserRequest {
            user_id: 0,
            current_password: bob.password.clone(),
        }))
        .await
        .expect("bob deletes his account");

    // Applied within a poll: bob's stream ends, alice sees him leave the chat he owned
    // (and now owns it).
    match next_event(&mut bobs).await.expect("event") {
        Event::MemberRemoved(r) => assert_eq!(r.user_id, bob.id),
        other => panic!("expected bob's removal, got {other:?}"),
    }
    let end = next_event(&mut bobs).await.expect_err("bob's stream ends");
    assert_eq!(end.code(), Code::NotFound, "{end:?}");
    match next_event(&mut alices).await.expect("event") {
        Event::MemberRemoved(r) => assert_eq!(r.user_id, bob.id),
        other => panic!("expected bob's removal, got {other:?}"),
    }
    assert_eq!(owner(&chat, &alice, second).await, alice.id);
    assert_eq!(member_ids(&chat, &alice, first).await, vec![alice.id]);

    // His access token has not expired, but it makes no membership any more.
    let e = chat
        .client
        .clone()
        .create_chat(bob.req(pb::CreateChatRequest {
            title: "after".into(),
            members: vec!["alice".into()],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(e.message(), "this account has been deleted");
    assert_eq!(
        grpc_chat_proto::reasons::reason(&e).as_deref(),
        Some(grpc_chat_proto::reasons::ACCOUNT_DELETED)
    );
    let e = invite(&chat, &bob, first, &["alice"]).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = a_send(&chat, &bob, first).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // His message stays, without his name; hers keeps hers. The deletion takes his name
    // off his messages after it ended his memberships, so the name may still be there
    // for a moment after his removal was seen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (history, his) = loop {
        let history = chat
            .client
            .clone()
            .list_messages(alice.req(pb::ListMessagesRequest {
                chat_id: first,
                after_seq: 0,
                ..Default::default()
            }))
            .await
            .expect("history")
            .into_inner()
            .messages;
        let his = history
            .iter()
            .find(|m| m.sender_id == bob.id)
            .expect("his message")
            .clone();
        if his.sender_deleted || tokio::time::Instant::now() > deadline {
            break (history, his);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        his.sender_deleted && his.sender_username.is_empty(),
        "{his:?}"
    );
    assert_eq!(his.text, "bob was here");
    let hers = history
        .iter()
        .find(|m| m.sender_id == alice.id)
        .expect("hers");
    assert!(
        !hers.sender_deleted && hers.sender_username == "alice",
        "{hers:?}"
    );
}

/// A membership of a deleted account committed after its deletion was applied (a request
/// that passed the account check just before) is ended by the next poll, which applies
/// recent deletions again.
async fn a_membership_that_slipped_past_a_deletion_is_ended_at_the_next_poll() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    w.auth
        .client
        .clone()
        .delete_user(bob.req(authpb::DeleteUserRequest {
            user_id: 0,
            current_password: bob.password.clone(),
        }))
        .await
        .expect("bob deletes his account");
    for _ in 0..100 {
        if member_ids(&chat, &alice, id).await == vec![alice.id] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(member_ids(&chat, &alice, id).await, vec![alice.id]);

    // The race, played by hand: the store makes bob a member after all.
    let store = chat_service::store::open(&w.db.url, 1, &chat_common::Shutdown::new())
        .await
        .expect("store");
    let late = chat_service::domain::Title::parse("late").expect("title");
    let late = store
        .create_chat(
            bob.id,
            &late,
            &[(bob.id, "bob".into()), (alice.id, "alice".into())],
        )
        .await
        .expect("create");
    let mut gone = false;
    for _ in 0..100 {
        if member_ids(&chat, &alice, late.id).await == vec![alice.id] {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "bob's late membership is ended");
    assert_eq!(owner(&chat, &alice, late.id).await, alice.id);
}

chat_testkit::backend_tests!(
    a_membership_that_slipped_past_a_deletion_is_ended_at_the_next_poll,
    members_come_and_go_and_streams_follow,
    owners_hand_on_and_the_last_to_leave_deletes_the_chat,
    administrators_remove_members_of_any_chat,
    a_deleted_account_leaves_every_chat,
);
