//! ChatService RPCs over real gRPC, PostgreSQL and NATS.

mod support;

use grpc_chat_proto::chat::v1::{self as pb};
use support::*;
use tonic::Code;

async fn create_list_and_members() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let mut c = chat.client.clone();

    let created = c
        .create_chat(alice.req(pb::CreateChatRequest {
            title: "  Проект 🚀 ".into(),
            members: vec!["bob".into(), "bob@example.com".into(), "alice".into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .chat
        .unwrap();
    assert_eq!(created.title, "Проект 🚀");
    assert_eq!(created.creator_id, alice.id);
    assert_eq!(
        created.member_count, 2,
        "duplicates and the creator are counted once"
    );

    let bobs = c
        .list_chats(bob.req(pb::ListChatsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        bobs.chats.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![created.id]
    );
    let carols = c
        .list_chats(carol.req(pb::ListChatsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(carols.chats.is_empty());

    let members = c
        .list_members(bob.req(pb::ListMembersRequest {
            chat_id: created.id,
        }))
        .await
        .unwrap()
        .into_inner()
        .members;
    let mut names: Vec<String> = members.into_iter().map(|m| m.username).collect();
    names.sort();
    assert_eq!(names, vec!["alice", "bob"]);

    // Unknown members are named; nothing is created.
    let err = c
        .create_chat(alice.req(pb::CreateChatRequest {
            title: String::new(),
            members: vec!["bob".into(), "nobody".into(), "ghost@example.com".into()],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("nobody") && err.message().contains("ghost@example.com"),
        "{err:?}"
    );
    let alices = c
        .list_chats(alice.req(pb::ListChatsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alices.chats.len(), 1);

    let err = c
        .create_chat(alice.req(pb::CreateChatRequest {
            title: "t".repeat(201),
            members: vec![],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("title"));
}

async fn list_chats_pages_by_recent_activity() {
    let w = World::new().await;
    let chat = w.replica().await;
    let alice = w.user("alice").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create_chat(&chat, &alice, &[]).await);
    }
    // Activity moves the first chat to the top.
    send(&chat, &alice, ids[0], "bump").await;
    let mut c = chat.client.clone();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_chats(alice.req(pb::ListChatsRequest {
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.chats.len() <= 2);
        seen.extend(page.chats.iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec![ids[0], ids[4], ids[3], ids[2], ids[1]]);
    let err = c
        .list_chats(alice.req(pb::ListChatsRequest {
            page_size: 2,
            page_token: "garbage!".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn messages_get_gapless_seqs_and_page_both_ways() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    for i in 1..=7 {
        let m = send(
            &chat,
            if i % 2 == 0 { &bob } else { &alice },
            id,
            &format!("msg {i} — привет 👋"),
        )
        .await;
        assert_eq!(m.seq, i);
    }
    let mut c = chat.client.clone();
    let newest = c
        .list_messages(bob.req(pb::ListMessagesRequest {
            chat_id: id,
            page_size: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![7, 6, 5]
    );
    assert!(newest.has_more);
    assert_eq!(newest.messages[0].text, "msg 7 — привет 👋");
    assert_eq!(newest.messages[0].sender_username, "alice");
    let older = c
        .list_messages(bob.req(pb::ListMessagesRequest {
            chat_id: id,
            page_size: 10,
            before_seq: 5,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        older.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4, 3, 2, 1]
    );
    assert!(!older.has_more);
    let after = c
        .list_messages(bob.req(pb::ListMessagesRequest {
            chat_id: id,
            after_seq: 5,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![6, 7]
    );
}

async fn bad_texts_are_refused_and_nothing_is_stored() {
    let w = World::new().await;
    let chat = w.replica().await;
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    let mut c = chat.client.clone();
    for (text, what) in [
        ("", "empty"),
        ("  \n\t ", "empty"),
        (&"x".repeat(4097), "4096"),
    ] {
        let err = c
            .send_message(alice.req(pb::SendMessageRequest {
                chat_id: id,
                text: text.to_string(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(what), "{err:?}");
    }
    let err = c
        .send_message(alice.req(pb::SendMessageRequest {
            chat_id: id,
            text: "ok".into(),
            idempotency_key: "k".repeat(129),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .send_message(alice.req(pb::SendMessageRequest {
            chat_id: 0,
            text: "ok".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Nothing was stored: the next message is seq 1.
    assert_eq!(send(&chat, &alice, id, "first").await.seq, 1);
}

async fn idempotent_retries_store_one_message() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    let req = |u: &chat_testkit::TestUser, key: &str| {
        u.req(pb::SendMessageRequest {
            chat_id: id,
            text: "once".into(),
            idempotency_key: key.into(),
            ..Default::default()
        })
    };
    // Concurrent retries with one key: one message.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut c = chat.client.clone();
        let r = req(&alice, "key-1");
        tasks.push(tokio::spawn(async move {
            c.send_message(r).await.unwrap().into_inner()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(results.iter().all(|r| r.message.as_ref().unwrap().seq == 1));
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    // The same key from another sender is another message.
    let bobs = chat
        .client
        .clone()
        .send_message(req(&bob, "key-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.message.unwrap().seq, 2);
    assert!(!bobs.duplicate);
    let all = chat
        .client
        .clone()
        .list_messages(alice.req(pb::ListMessagesRequest {
            chat_id: id,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.messages.len(), 2);
}

async fn non_members_cannot_see_a_chat_exists() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, mallory) = (w.user("alice").await, w.user("mallory").await);
    let id = create_chat(&chat, &alice, &[]).await;
    send(&chat, &alice, id, "secret").await;
    let mut c = chat.client.clone();
    let missing = id + 1000;
    for chat_id in [id, missing] {
        let errs = [
            c.send_message(mallory.req(pb::SendMessageRequest {
                chat_id,
                text: "hi".into(),
                ..Default::default()
            }))
            .await
            .map(|_| ())
            .unwrap_err(),
            c.list_messages(mallory.req(pb::ListMessagesRequest {
                chat_id,
                ..Default::default()
            }))
            .await
            .map(|_| ())
            .unwrap_err(),
            c.list_members(mallory.req(pb::ListMembersRequest { chat_id }))
                .await
                .map(|_| ())
                .unwrap_err(),
            c.delete_chat(mallory.req(pb::DeleteChatRequest { chat_id }))
                .await
                .map(|_| ())
                .unwrap_err(),
            c.connect(mallory.req(pb::ConnectRequest {
                chat_id,
                ..Default::default()
            }))
            .await
            .map(|_| ())
            .unwrap_err(),
        ];
        for e in errs {
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            assert_eq!(
                e.message(),
                format!("chat {chat_id} does not exist or you are not a member of it")
            );
        }
    }
    // With alice's stream open the chat's fan-out runs on the replica, and a Connect joins
    // it before one read checks the membership: mallory is still refused alike.
    let _open = connect(&chat, &alice, id, 0).await;
    let e = c
        .connect(mallory.req(pb::ConnectRequest {
            chat_id: id,
            ..Default::default()
        }))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        e.message(),
        format!("chat {id} does not exist or you are not a member of it")
    );
    // No token, a bad token.
    let e = c
        .list_chats(pb::ListChatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut forged = mallory.clone();
    forged.access_token.push('x');
    let e = c
        .list_chats(forged.req(pb::ListChatsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

async fn deleting_messages_and_chats_is_restricted() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let id = create_chat(&chat, &alice, &[&bob, &carol]).await;
    let m1 = send(&chat, &bob, id, "bob's").await;
    let m2 = send(&chat, &carol, id, "carol's").await;
    let mut c = chat.client.clone();
    let del =
        |u: &chat_testkit::TestUser, seq| u.req(pb::DeleteMessageRequest { chat_id: id, seq });
    // Carol may not delete Bob's message; Bob may; Alice (creator) may delete Carol's.
    assert_eq!(
        c.delete_message(del(&carol, m1.seq))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    c.delete_message(del(&bob, m1.seq)).await.unwrap();
    c.delete_message(del(&bob, m1.seq))
        .await
        .expect("deleting twice succeeds");
    c.delete_message(del(&alice, m2.seq)).await.unwrap();
    assert_eq!(
        c.delete_message(del(&alice, 99)).await.unwrap_err().code(),
        Code::NotFound
    );
    // Someone outside the chat learns nothing: a message that exists and one that does
    // not are both a chat not found.
    let mallory = w.user("mallory").await;
    let mut answers = Vec::new();
    for seq in [m2.seq, 99] {
        let e = c.delete_message(del(&mallory, seq)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        answers.push(e.message().to_owned());
    }
    assert_eq!(answers[0], answers[1]);
    let left = c
        .list_messages(alice.req(pb::ListMessagesRequest {
            chat_id: id,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(left.messages.is_empty());
    // A deleted seq is never reused.
    assert_eq!(send(&chat, &bob, id, "next").await.seq, 3);

    assert_eq!(
        c.delete_chat(bob.req(pb::DeleteChatRequest { chat_id: id }))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    c.delete_chat(alice.req(pb::DeleteChatRequest { chat_id: id }))
        .await
        .unwrap();
    assert_eq!(
        c.list_members(alice.req(pb::ListMembersRequest { chat_id: id }))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

async fn a_service_sends_on_behalf_of_a_member_only() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[]).await;
    let token = w.auth.service_token("saga-orchestrator").await;
    let mut c = chat.client.clone();
    let as_service = |on_behalf_of_user_id| {
        chat_common::service_token::with_bearer(
            tonic::Request::new(pb::SendMessageRequest {
                chat_id: id,
                text: "via saga".into(),
                on_behalf_of_user_id,
                ..Default::default()
            }),
            &token,
        )
    };
    let m = c
        .send_message(as_service(alice.id))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(
        (m.sender_id, m.sender_username.as_str()),
        (alice.id, "alice")
    );
    // At once, so that they are stored together (PostgreSQL's group insert): each takes
    // the member's name from the membership the insert checks.
    let at_once = futures::future::join_all((0..8).map(|_| {
        let mut c = c.clone();
        let req = as_service(alice.id);
        async move { c.send_message(req).await }
    }))
    .await;
    for sent in at_once {
        let m = sent.unwrap().into_inner().message.unwrap();
        assert_eq!(
            (m.sender_id, m.sender_username.as_str()),
            (alice.id, "alice")
        );
    }
    assert_eq!(
        c.send_message(as_service(bob.id)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.send_message(as_service(0)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // A service may delete any message.
    c.delete_message(chat_common::service_token::with_bearer(
        tonic::Request::new(pb::DeleteMessageRequest {
            chat_id: id,
            seq: m.seq,
        }),
        &token,
    ))
    .await
    .unwrap();
}

chat_testkit::backend_tests!(
    create_list_and_members,
    list_chats_pages_by_recent_activity,
    messages_get_gapless_seqs_and_page_both_ways,
    bad_texts_are_refused_and_nothing_is_stored,
    idempotent_retries_store_one_message,
    non_members_cannot_see_a_chat_exists,
    deleting_messages_and_chats_is_restricted,
    a_service_sends_on_behalf_of_a_member_only,
);
