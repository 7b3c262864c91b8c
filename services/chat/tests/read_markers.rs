//! Read markers and unread counts: MarkRead moves a member's marker forward only, within the
//! chat's messages, members only; ListChats (and ListMembers) report the caller's marker and
//! unread count, which leaves out the caller's own messages and deleted ones.

mod support;

use chat_testkit::{TestChat, TestUser};
use grpc_chat_proto::chat::v1 as pb;
use support::*;
use tonic::Code;

async fn mark_read(
    chat: &TestChat,
    user: &TestUser,
    chat_id: i64,
    seq: i64,
) -> Result<i64, tonic::Status> {
    chat.client
        .clone()
        .mark_read(user.req(pb::MarkReadRequest { chat_id, seq }))
        .await
        .map(|r| r.into_inner().last_read_seq)
}

/// The chat `chat_id` as `user`'s ListChats shows it.
async fn listed(chat: &TestChat, user: &TestUser, chat_id: i64) -> pb::Chat {
    chat.client
        .clone()
        .list_chats(user.req(pb::ListChatsRequest::default()))
        .await
        .expect("list chats")
        .into_inner()
        .chats
        .into_iter()
        .find(|c| c.id == chat_id)
        .expect("the chat is listed")
}

/// (last_read_seq, unread_count) of `chat_id` for `user`.
async fn unread(chat: &TestChat, user: &TestUser, chat_id: i64) -> (i64, i64) {
    let c = listed(chat, user, chat_id).await;
    (c.last_read_seq, c.unread_count)
}

async fn unread_counts_follow_sends_and_markers() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    assert_eq!(unread(&chat, &alice, id).await, (0, 0));
    assert_eq!(unread(&chat, &bob, id).await, (0, 0));

    for text in ["one", "two", "three"] {
        send(&chat, &alice, id, text).await;
    }
    send(&chat, &bob, id, "four").await;
    // Own messages are never unread.
    assert_eq!(unread(&chat, &alice, id).await, (0, 1));
    assert_eq!(unread(&chat, &bob, id).await, (0, 3));

    assert_eq!(mark_read(&chat, &bob, id, 2).await.expect("mark read"), 2);
    assert_eq!(unread(&chat, &bob, id).await, (2, 1));
    assert_eq!(
        unread(&chat, &alice, id).await,
        (0, 1),
        "alice's marker is hers"
    );
    assert_eq!(mark_read(&chat, &alice, id, 4).await.expect("mark read"), 4);
    assert_eq!(unread(&chat, &alice, id).await, (4, 0));

    // ListMembers carries the member's own view of the chat too.
    let members = chat
        .client
        .clone()
        .list_members(bob.req(pb::ListMembersRequest { chat_id: id }))
        .await
        .expect("list members")
        .into_inner()
        .chat
        .expect("chat");
    assert_eq!((members.last_read_seq, members.unread_count), (2, 1));
}

async fn deleted_messages_are_not_unread() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    let first = send(&chat, &alice, id, "kept").await;
    let second = send(&chat, &alice, id, "regretted").await;
    assert_eq!(unread(&chat, &bob, id).await, (0, 2));
    chat.client
        .clone()
        .delete_message(alice.req(pb::DeleteMessageRequest {
            chat_id: id,
            seq: second.seq,
        }))
        .await
        .expect("delete");
    assert_eq!(unread(&chat, &bob, id).await, (0, 1));
    mark_read(&chat, &bob, id, first.seq)
        .await
        .expect("mark read");
    assert_eq!(unread(&chat, &bob, id).await, (first.seq, 0));
}

async fn markers_move_forward_only() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    for text in ["a", "b", "c"] {
        send(&chat, &alice, id, text).await;
    }
    assert_eq!(mark_read(&chat, &bob, id, 3).await.expect("mark read"), 3);
    // Lower or repeated: accepted, nothing changes, the stored marker is returned.
    assert_eq!(mark_read(&chat, &bob, id, 1).await.expect("lower"), 3);
    assert_eq!(mark_read(&chat, &bob, id, 0).await.expect("zero"), 3);
    assert_eq!(mark_read(&chat, &bob, id, 3).await.expect("again"), 3);
    assert_eq!(unread(&chat, &bob, id).await, (3, 0));
    send(&chat, &alice, id, "d").await;
    assert_eq!(unread(&chat, &bob, id).await, (3, 1));
}

async fn bad_markers_are_refused() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob, eve) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("eve").await,
    );
    let id = create_chat(&chat, &alice, &[&bob]).await;
    send(&chat, &alice, id, "a").await;
    send(&chat, &alice, id, "b").await;

    let e = mark_read(&chat, &eve, id, 1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        e.message(),
        format!("chat {id} does not exist or you are not a member of it")
    );
    let e = mark_read(&chat, &eve, id + 1000, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let e = mark_read(&chat, &bob, id, 3).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("beyond"), "{e:?}");
    let e = mark_read(&chat, &bob, id, -1).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(unread(&chat, &bob, id).await, (0, 2), "nothing moved");
}

chat_testkit::backend_tests!(
    unread_counts_follow_sends_and_markers,
    deleted_messages_are_not_unread,
    markers_move_forward_only,
    bad_markers_are_refused,
);
