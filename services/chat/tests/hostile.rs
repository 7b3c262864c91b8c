//! ChatService against hostile input, over real gRPC on both storage engines: one user's
//! oversized request must not fail another user's calls, bytes that do not decode and
//! NUL characters are the client's mistake (INVALID_ARGUMENT, nothing stored), and errors
//! stay small whatever the input.

mod support;

use chat_testkit::fuzz;
use grpc_chat_proto::chat::v1::{self as pb};
use support::*;
use tonic::Code;

/// The connection from chat to auth is shared by every user: an error with a 9000-char
/// identifier in it once tore it down (a header block over 16 KiB), failing other users'
/// calls in flight on it.
async fn a_huge_member_does_not_break_other_users_calls() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob, _carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    // Bob's calls go through chat to auth (members are resolved there), as Alice's do.
    let bobs = (0..30).map(|i| {
        let mut c = chat.client.clone();
        let req = bob.req(pb::CreateChatRequest {
            title: format!("bob {i}"),
            members: vec!["carol".into()],
        });
        async move { c.create_chat(req).await }
    });
    let alices = (0..30).map(|i| {
        let mut c = chat.client.clone();
        let member = if i % 2 == 0 {
            "x".repeat(9000)
        } else {
            format!("{}@example.com", "x".repeat(9000))
        };
        let req = alice.req(pb::CreateChatRequest {
            title: "mine".into(),
            members: vec![member],
        });
        async move { c.create_chat(req).await }
    });
    let (bobs, alices) = futures::future::join(
        futures::future::join_all(bobs),
        futures::future::join_all(alices),
    )
    .await;
    for r in bobs {
        r.expect("bob's call succeeds while alice sends huge members");
    }
    for r in alices {
        let err = r.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().len() < 300, "{}", err.message());
        assert!(err.message().contains("members"), "{}", err.message());
    }
    let alices = chat
        .client
        .clone()
        .list_chats(alice.req(pb::ListChatsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(alices.chats.is_empty(), "nothing created for alice");
}

async fn a_thousand_unknown_members_get_a_small_answer() {
    let w = World::new().await;
    let chat = w.replica().await;
    let alice = w.user("alice").await;
    let err = chat
        .client
        .clone()
        .create_chat(alice.req(pb::CreateChatRequest {
            title: "crowd".into(),
            members: (0..1000).map(|i| format!("ghost{i}@example.com")).collect(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().len() < 1024, "{} bytes", err.message().len());
    assert!(err.message().contains("and 990 more"), "{}", err.message());
}

async fn a_chat_needs_another_member() {
    let w = World::new().await;
    let chat = w.replica().await;
    let alice = w.user("alice").await;
    for members in [vec![], vec![" ".to_owned()]] {
        let err = chat
            .client
            .clone()
            .create_chat(alice.req(pb::CreateChatRequest {
                title: "alone".into(),
                members,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("members:"), "{}", err.message());
    }
}

/// PostgreSQL refuses NUL in text where SQLite stores it: refused at the edge on both.
async fn nul_characters_are_invalid_argument_and_store_nothing() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    let mut c = chat.client.clone();
    for (text, key, field) in [
        ("hi", "\0", "idempotency_key"),
        ("h\0i", "", "text"),
        ("hi", "k\u{1}", "idempotency_key"),
    ] {
        let err = c
            .send_message(alice.req(pb::SendMessageRequest {
                chat_id: id,
                text: text.into(),
                idempotency_key: key.into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let err = c
        .create_chat(alice.req(pb::CreateChatRequest {
            title: "a\0b".into(),
            members: vec!["bob".into()],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .create_chat(alice.req(pb::CreateChatRequest {
            title: "t".into(),
            members: vec!["b\0b".into()],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let page = c
        .list_messages(alice.req(pb::ListMessagesRequest {
            chat_id: id,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(page.messages.is_empty());
}

/// Bytes that are not the method's message were answered INTERNAL with the decoder's
/// own words.
async fn requests_that_do_not_decode_are_invalid_argument() {
    let w = World::new().await;
    let chat = w.replica().await;
    let alice = w.user("alice").await;
    let channel = chat_testkit::channel(chat.addr).await;
    for (path, streaming) in [
        ("/grpcchat.chat.v1.ChatService/CreateChat", false),
        ("/grpcchat.chat.v1.ChatService/SendMessage", false),
        ("/grpcchat.chat.v1.ChatService/Connect", true),
    ] {
        for body in [
            vec![0xff, 0xff, 0xff, 0xff],
            // Field 1 as a string of invalid UTF-8.
            vec![0x0a, 0x02, 0xc3, 0x28],
            // A length that runs past the end.
            vec![0x12, 0x7f, b'a'],
        ] {
            let err = fuzz::call_raw(
                channel.clone(),
                path,
                streaming,
                body.clone(),
                Some(&alice.access_token),
            )
            .await
            .unwrap_err();
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{path} {body:?}: {err:?}"
            );
            assert!(
                !err.message().contains("Protobuf message:"),
                "{}",
                err.message()
            );
        }
    }
    // The server is fine and the channel still works.
    assert!(fuzz::serving(channel).await);
}

async fn reflection_lists_only_the_chat_service() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let w = World::new().await;
    let chat = w.replica().await;
    let mut reflection = ServerReflectionClient::new(chat_testkit::channel(chat.addr).await);
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
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["grpc.health.v1.Health", "grpcchat.chat.v1.ChatService"]
    );
}

chat_testkit::backend_tests!(
    a_huge_member_does_not_break_other_users_calls,
    a_thousand_unknown_members_get_a_small_answer,
    a_chat_needs_another_member,
    nul_characters_are_invalid_argument_and_store_nothing,
    requests_that_do_not_decode_are_invalid_argument,
    reflection_lists_only_the_chat_service,
);
