//! EditMessage: only the sender, within the edit window, with SendMessage's text rules;
//! history shows the new text and `edited_at`, live streams get a MESSAGE_EDITED event
//! (through the outbox when the editing replica could not publish it), and a stream that
//! resumes reads the edited text from storage.

mod support;

use std::{net::SocketAddr, time::Duration};

use chat_testkit::{spawn_chat, TcpProxy, TestChat, TestUser};
use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};
use support::*;
use tonic::{Code, Streaming};

async fn edit(
    chat: &TestChat,
    user: &TestUser,
    chat_id: i64,
    seq: i64,
    text: &str,
) -> Result<pb::EditMessageResponse, tonic::Status> {
    chat.client
        .clone()
        .edit_message(user.req(pb::EditMessageRequest {
            chat_id,
            seq,
            text: text.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// The chat's history as `user` reads it, oldest first.
async fn history(chat: &TestChat, user: &TestUser, chat_id: i64) -> Vec<pb::Message> {
    let mut messages = chat
        .client
        .clone()
        .list_messages(user.req(pb::ListMessagesRequest {
            chat_id,
            ..Default::default()
        }))
        .await
        .expect("list messages")
        .into_inner()
        .messages;
    messages.reverse();
    messages
}

/// The next item of a stream that is not a HistoryEnd.
async fn next_item(stream: &mut Streaming<pb::ConnectResponse>) -> Event {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a stream item within 30 s")
            .expect("stream ok")
            .expect("stream open");
        match item.event {
            Some(Event::HistoryEnd(_)) => continue,
            Some(e) => return e,
            None => panic!("an empty stream item"),
        }
    }
}

async fn the_sender_edits_and_everyone_sees_it() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&chat, &alice, &[&bob]).await;
    let first = send(&chat, &alice, id, "helo").await;
    let second = send(&chat, &bob, id, "hi").await;
    assert_eq!(first.edited_at, None);

    let mut live = connect(&chat, &bob, id, 0).await;
    assert_eq!(read_until(&mut live, second.seq).await, vec![1, 2]);

    let edited = edit(&chat, &alice, id, first.seq, "hello")
        .await
        .expect("edit");
    assert!(!edited.unchanged);
    let m = edited.message.expect("message");
    assert_eq!((m.seq, m.text.as_str()), (first.seq, "hello"));
    assert_eq!(m.created_at, first.created_at);
    let edited_at = m.edited_at.expect("edited_at is set");

    // Bob's live stream gets the edit.
    match next_item(&mut live).await {
        Event::MessageEdited(e) => {
            let e = e.message.expect("message");
            assert_eq!((e.seq, e.text.as_str()), (first.seq, "hello"));
            assert_eq!(e.edited_at, Some(edited_at));
        }
        other => panic!("expected the edit, got {other:?}"),
    }

    // History: new text, same seq and order, edited_at set; the other message untouched.
    let h = history(&chat, &bob, id).await;
    let texts: Vec<_> = h.iter().map(|m| (m.seq, m.text.as_str())).collect();
    assert_eq!(texts, [(1, "hello"), (2, "hi")]);
    assert_eq!(h[0].edited_at, Some(edited_at));
    assert_eq!(h[1].edited_at, None);

    // The same edit again: succeeds, changes nothing, publishes nothing.
    let again = edit(&chat, &alice, id, first.seq, "hello")
        .await
        .expect("repeat");
    assert!(again.unchanged);
    assert_eq!(again.message.expect("message").edited_at, Some(edited_at));
    let third = send(&chat, &alice, id, "next").await;
    match next_item(&mut live).await {
        Event::Message(m) => assert_eq!(m.seq, third.seq, "no second edit event"),
        other => panic!("expected the next message, got {other:?}"),
    }

    // A stream that starts or resumes after the edit reads it from storage.
    for after_seq in [0, first.seq - 1] {
        let mut resumed = connect(&chat, &bob, id, after_seq).await;
        match next_item(&mut resumed).await {
            Event::Message(m) => {
                assert_eq!((m.seq, m.text.as_str()), (first.seq, "hello"));
                assert_eq!(m.edited_at, Some(edited_at));
            }
            other => panic!("expected the edited message, got {other:?}"),
        }
    }
}

async fn only_the_sender_may_edit() {
    let w = World::new().await;
    let chat = w.replica().await;
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let id = create_chat(&chat, &alice, &[&bob]).await;
    let m = send(&chat, &bob, id, "bob's words").await;

    // Another member, even the chat's creator.
    let e = edit(&chat, &alice, id, m.seq, "alice's words")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A non-member is told the chat does not exist, as by every RPC.
    let e = edit(&chat, &carol, id, m.seq, "carol's words")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        e.message(),
        format!("chat {id} does not exist or you are not a member of it")
    );
    // A service caller is not the sender either.
    let saga = TestUser {
        access_token: w.auth.service_token("saga-orchestrator").await,
        ..carol.clone()
    };
    let e = edit(&chat, &saga, id, m.seq, "a service's words")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let h = history(&chat, &bob, id).await;
    assert_eq!(h[0].text, "bob's words");
    assert_eq!(h[0].edited_at, None);
}

async fn the_edit_window_closes() {
    let w = World::new().await;
    let mut config = w.config();
    config.settings.edit_window = Some(Duration::from_secs(1));
    let chat = spawn_chat(config).await;
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    let m = send(&chat, &alice, id, "quick").await;
    edit(&chat, &alice, id, m.seq, "quick fix")
        .await
        .expect("within the window");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = edit(&chat, &alice, id, m.seq, "too late")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // A retry of the edit that went through still succeeds, as an unchanged one.
    let retry = edit(&chat, &alice, id, m.seq, "quick fix")
        .await
        .expect("a retry");
    assert!(retry.unchanged);
    assert_eq!(history(&chat, &alice, id).await[0].text, "quick fix");
}

async fn bad_texts_are_refused_and_nothing_changes() {
    let w = World::new().await;
    let chat = w.replica().await;
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    let m = send(&chat, &alice, id, "original").await;
    for bad in [
        String::new(),
        "  \n\t ".into(),
        "a\0b".into(),
        "x".repeat(4097),
    ] {
        let e = edit(&chat, &alice, id, m.seq, &bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    let e = edit(&chat, &alice, id, 0, "fine").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let h = history(&chat, &alice, id).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "original");
    assert_eq!(h[0].edited_at, None);
    // The longest text is fine.
    let longest = "я".repeat(4096);
    edit(&chat, &alice, id, m.seq, &longest)
        .await
        .expect("4096 characters");
}

async fn deleted_and_missing_messages_are_not_found() {
    let w = World::new().await;
    let chat = w.replica().await;
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    let m = send(&chat, &alice, id, "soon gone").await;
    chat.client
        .clone()
        .delete_message(alice.req(pb::DeleteMessageRequest {
            chat_id: id,
            seq: m.seq,
        }))
        .await
        .expect("delete");
    let e = edit(&chat, &alice, id, m.seq, "back").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = edit(&chat, &alice, id, m.seq + 1, "never sent")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(history(&chat, &alice, id).await.is_empty());
}

/// Replica A loses NATS and stores an edit (its publish fails), then stops: bob's open
/// stream on replica B still gets the edit, published from the outbox.
async fn an_edit_a_replica_could_not_publish_reaches_streams() {
    let w = World::new().await;
    let nats_addr: SocketAddr = chat_testkit::nats_url()
        .trim_start_matches("nats://")
        .parse()
        .expect("NATS address");
    let proxy = TcpProxy::start(nats_addr).await;
    let mut config_a = w.config();
    config_a.nats.url = format!("nats://{}", proxy.addr);
    let a = spawn_chat(config_a).await;
    let mut config_b = w.config();
    config_b.settings.catch_up_every = Duration::from_secs(600);
    let b = spawn_chat(config_b).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&a, &alice, &[&bob]).await;
    let m = send(&a, &alice, id, "typo").await;
    let mut on_b = connect(&b, &bob, id, 0).await;
    assert_eq!(read_until(&mut on_b, m.seq).await, vec![m.seq]);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    edit(&a, &alice, id, m.seq, "no typo")
        .await
        .expect("edit while NATS is away");
    a.shutdown.trigger();
    drop(a);

    let item = tokio::time::timeout(Duration::from_secs(40), next_item(&mut on_b))
        .await
        .expect("the stream hears of the edit within 40 s");
    match item {
        Event::MessageEdited(e) => {
            let e = e.message.expect("message");
            assert_eq!((e.seq, e.text.as_str()), (m.seq, "no typo"));
            assert!(e.edited_at.is_some());
        }
        other => panic!("expected the edit, got {other:?}"),
    }
}

chat_testkit::backend_tests!(
    the_sender_edits_and_everyone_sees_it,
    only_the_sender_may_edit,
    the_edit_window_closes,
    bad_texts_are_refused_and_nothing_changes,
    deleted_and_missing_messages_are_not_found,
    an_edit_a_replica_could_not_publish_reaches_streams,
);
