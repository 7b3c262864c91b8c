//! Typing and presence across replicas: ephemeral events that cross replicas over NATS
//! core subjects, never stored, never in the JetStream stream, and online/offline of
//! members while they hold a stream; also in one process over the in-process bus.

mod support;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use chat_common::Shutdown;
use chat_events::{EventBus, LocalBus};
use chat_service::presence::Beat;
use chat_testkit::{channel, nats_url, spawn_chat, TestChat, TestUser};
use grpc_chat_proto::auth::v1::auth_service_client::AuthServiceClient;
use grpc_chat_proto::chat::v1::{
    self as pb, chat_service_client::ChatServiceClient, connect_response::Event,
};
use prost::Message as _;
use support::*;
use tonic::{transport::Channel, Code, Streaming};

type Stream = Streaming<pb::ConnectResponse>;

/// A stream that asks for typing and presence (as the CLI's connect does).
async fn connect(chat: &TestChat, user: &TestUser, chat_id: i64, after_seq: i64) -> Stream {
    connect_with(chat, user, chat_id, after_seq, true).await
}

async fn connect_with(
    chat: &TestChat,
    user: &TestUser,
    chat_id: i64,
    after_seq: i64,
    typing_and_presence: bool,
) -> Stream {
    chat.client
        .clone()
        .connect(user.req(pb::ConnectRequest {
            chat_id,
            after_seq,
            history_limit: 500,
            typing_and_presence,
        }))
        .await
        .expect("connect")
        .into_inner()
}

/// The next event that is not a message, within `wait`.
async fn next_live(stream: &mut Stream, wait: Duration) -> Option<Event> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.message())
            .await
            .ok()?;
        match item.expect("stream ok").expect("stream open").event {
            Some(Event::Message(_)) | None => continue,
            other => return other,
        }
    }
}

/// Reads the history up to its end and the presence snapshot that follows it: the
/// usernames online, in order.
async fn opened(stream: &mut Stream) -> Vec<String> {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("history in time")
            .expect("stream ok")
            .expect("stream open");
        if let Some(Event::HistoryEnd(_)) = item.event {
            break;
        }
    }
    match next_live(stream, Duration::from_secs(10)).await {
        Some(Event::Presence(p)) if p.snapshot => {
            p.online_members.into_iter().map(|m| m.username).collect()
        }
        other => panic!("expected the presence snapshot right after HistoryEnd, got {other:?}"),
    }
}

/// The next presence change (as `(username, online)`), skipping typing, within `wait`.
async fn next_change(stream: &mut Stream, wait: Duration) -> Option<(String, bool)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_live(stream, left).await? {
            Event::Presence(p) if !p.snapshot => return Some((p.username, p.online)),
            Event::Presence(p) => panic!("a second snapshot: {p:?}"),
            _ => continue,
        }
    }
}

async fn typing(
    client: &ChatServiceClient<Channel>,
    user: &TestUser,
    chat_id: i64,
) -> Result<bool, tonic::Status> {
    client
        .clone()
        .send_typing(user.req(pb::SendTypingRequest { chat_id }))
        .await
        .map(|r| r.into_inner().forwarded)
}

/// The typing events `stream` receives within `wait`, as usernames.
async fn typers(stream: &mut Stream, wait: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_live(stream, left).await {
            None => return seen,
            Some(Event::Typing(t)) => seen.push(t.username),
            Some(_) => {}
        }
    }
}

async fn stream_messages(w: &World) -> u64 {
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"));
    let mut stream = js.get_stream(&w.nats.stream).await.expect("the stream");
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test]
async fn typing_crosses_replicas_reaches_others_only_and_is_never_stored() {
    let w = World::new().await;
    let (a, b) = (w.replica().await, w.replica().await);
    let (alice, bob, eve) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("eve").await,
    );
    let id = create_chat(&a, &alice, &[&bob]).await;
    let mut bobs = connect(&a, &bob, id, 0).await;
    opened(&mut bobs).await;
    let mut alices = connect(&b, &alice, id, 0).await;
    opened(&mut alices).await;

    assert!(typing(&b.client, &alice, id).await.expect("typing"));
    assert_eq!(
        next_typing(&mut bobs).await,
        "alice",
        "bob's stream on replica A sees alice typing through replica B"
    );
    // Within the rate limit: accepted, not passed on.
    assert!(!typing(&b.client, &alice, id).await.expect("typing again"));

    // Alice's own stream never shows her typing; it does show bob's.
    assert!(typing(&a.client, &bob, id).await.expect("bob types"));
    let seen = typers(&mut alices, Duration::from_secs(2)).await;
    assert_eq!(
        seen,
        ["bob"],
        "alice's stream sees bob's typing, never her own"
    );
    assert!(
        typers(&mut bobs, Duration::from_millis(500))
            .await
            .is_empty(),
        "bob's stream does not see his own, nor alice's rate-limited call"
    );

    // A non-member is told the chat does not exist; a service may not type.
    let err = typing(&a.client, &eve, id)
        .await
        .expect_err("eve is no member");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let missing = typing(&a.client, &alice, id + 1000)
        .await
        .expect_err("no chat");
    assert_eq!(missing.code(), Code::NotFound);
    let token = w.auth.service_token("saga-orchestrator").await;
    let denied = a
        .client
        .clone()
        .send_typing(chat_common::service_token::with_bearer(
            tonic::Request::new(pb::SendTypingRequest { chat_id: id }),
            &token,
        ))
        .await
        .expect_err("a service does not type");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let bad = typing(&a.client, &alice, 0).await.expect_err("chat 0");
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Never stored: the stream holds only the message, history only the message.
    let m = send(&a, &alice, id, "hi").await;
    assert_eq!(
        stream_messages(&w).await,
        1,
        "only the message's event is kept"
    );
    let listed = a
        .client
        .clone()
        .list_messages(bob.req(pb::ListMessagesRequest {
            chat_id: id,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.messages.len(), 1);
    let mut resumed = connect(&b, &bob, id, 0).await;
    let mut history = Vec::new();
    loop {
        let item = resumed.message().await.expect("ok").expect("open");
        match item.event {
            Some(Event::HistoryEnd(_)) => break,
            other => history.push(other),
        }
    }
    assert_eq!(
        history.len(),
        1,
        "history holds the message only: {history:?}"
    );
    assert!(matches!(&history[0], Some(Event::Message(h)) if h.seq == m.seq));
}

async fn next_typing(stream: &mut Stream) -> String {
    loop {
        match next_live(stream, Duration::from_secs(10)).await {
            Some(Event::Typing(t)) => return t.username,
            Some(_) => continue,
            None => panic!("no typing event within 10 s"),
        }
    }
}

#[tokio::test]
async fn presence_follows_streams_across_replicas() {
    let w = World::new().await;
    let (a, b) = (w.replica().await, w.replica().await);
    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let id = create_chat(&a, &alice, &[&bob, &carol]).await;
    let wait = Duration::from_secs(10);

    let mut bobs = connect(&a, &bob, id, 0).await;
    assert_eq!(opened(&mut bobs).await, ["bob"], "alone: only oneself");

    // Alice opens a stream on B, a replica with no stream on the chat yet: her snapshot
    // has bob (replica A answers B's query), and bob's stream on A learns she is online.
    let mut alice_b = connect(&b, &alice, id, 0).await;
    assert_eq!(opened(&mut alice_b).await, ["alice", "bob"]);
    assert_eq!(
        next_change(&mut bobs, wait).await,
        Some(("alice".into(), true))
    );

    // A new stream gets the current set.
    let mut carols = connect(&a, &carol, id, 0).await;
    assert_eq!(opened(&mut carols).await, ["alice", "bob", "carol"]);
    assert_eq!(
        next_change(&mut bobs, wait).await,
        Some(("carol".into(), true))
    );
    assert_eq!(
        next_change(&mut alice_b, wait).await,
        Some(("carol".into(), true)),
        "through the replicas"
    );
    drop(carols);
    assert_eq!(
        next_change(&mut bobs, wait).await,
        Some(("carol".into(), false))
    );

    // Alice with streams on both replicas: closing one keeps her online.
    let mut alice_a = connect(&a, &alice, id, 0).await;
    assert_eq!(opened(&mut alice_a).await, ["alice", "bob"]);
    drop(alice_b);
    assert_eq!(
        next_change(&mut bobs, Duration::from_secs(2)).await,
        None,
        "alice still holds a stream on A"
    );
    drop(alice_a);
    assert_eq!(
        next_change(&mut bobs, wait).await,
        Some(("alice".into(), false))
    );

    // Presence is never stored either: nothing was sent, nothing is in the stream.
    assert_eq!(stream_messages(&w).await, 0);
}

#[tokio::test]
async fn a_replica_that_vanishes_without_a_goodbye_expires() {
    let w = World::new().await;
    let mut config = w.config();
    config.settings.presence_heartbeat = Duration::from_secs(1);
    let a = spawn_chat(config).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&a, &alice, &[&bob]).await;
    let mut bobs = connect(&a, &bob, id, 0).await;
    opened(&mut bobs).await;

    // A replica that announces alice once and is never heard of again (it crashed).
    let nats = async_nats::connect(nats_url()).await.expect("NATS");
    let beat = Beat {
        chat_id: id,
        replica: 42,
        version: 1,
        users: vec![pb::OnlineMember {
            user_id: alice.id,
            username: alice.username.clone(),
        }],
    };
    let subject = format!("{}_live.{id}.presence", w.nats.prefix);
    nats.publish(subject, beat.encode_to_vec().into())
        .await
        .expect("publish");
    nats.flush().await.expect("flush");
    let started = tokio::time::Instant::now();
    assert_eq!(
        next_change(&mut bobs, Duration::from_secs(5)).await,
        Some(("alice".into(), true))
    );
    // Three heartbeats (3 s) later, and within a check period after that, she is offline.
    assert_eq!(
        next_change(&mut bobs, Duration::from_secs(10)).await,
        Some(("alice".into(), false))
    );
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(6),
        "expired after {after:?}"
    );
}

#[tokio::test]
async fn in_one_process_typing_and_presence_use_the_local_bus_skip_the_tap_and_are_opt_in() {
    let w = World::new().await;
    let config = w.config();
    let shutdown = Shutdown::new();
    let auth =
        AuthServiceClient::new(chat_service::lazy_channel(&config.upstream.auth_url).expect("url"));
    let verifier = chat_service::verifier_from_auth(&auth, &shutdown)
        .await
        .expect("verifier");
    let (bus, mut tap) = LocalBus::with_tap(64);
    let bus: Arc<dyn EventBus> = Arc::new(bus);
    let api = chat_service::build_api(&config, bus, auth, shutdown.clone())
        .await
        .expect("api");
    let (listener, addr) = chat_common::server::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let router = chat_common::server::builder().add_service(chat_service::grpc_service(
        api,
        &verifier,
        &config.database.url,
    ));
    tokio::spawn(chat_common::server::serve(
        router,
        listener,
        shutdown.clone(),
    ));
    let chat = TestChat {
        addr,
        client: ChatServiceClient::new(channel(addr).await),
        shutdown,
    };

    let (alice, bob, carol) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
    );
    let id = create_chat(&chat, &alice, &[&bob, &carol]).await;
    let mut bobs = connect(&chat, &bob, id, 0).await;
    assert_eq!(opened(&mut bobs).await, ["bob"]);
    let mut alices = connect(&chat, &alice, id, 0).await;
    assert_eq!(opened(&mut alices).await, ["alice", "bob"]);
    assert_eq!(
        next_change(&mut bobs, Duration::from_secs(10)).await,
        Some(("alice".into(), true))
    );
    // A stream that did not ask for typing and presence gets none of it, and still makes
    // its user online.
    let mut carols = connect_with(&chat, &carol, id, 0, false).await;
    loop {
        let item = carols.message().await.expect("ok").expect("open");
        if let Some(Event::HistoryEnd(_)) = item.event {
            break;
        }
    }
    assert_eq!(
        next_change(&mut bobs, Duration::from_secs(10)).await,
        Some(("carol".into(), true))
    );
    assert!(typing(&chat.client, &alice, id).await.expect("typing"));
    assert_eq!(next_typing(&mut bobs).await, "alice");
    assert!(typers(&mut alices, Duration::from_millis(500))
        .await
        .is_empty());
    assert_eq!(
        next_live(&mut carols, Duration::from_millis(500)).await,
        None,
        "no snapshot, no change, no typing on a stream that did not ask"
    );
    drop(alices);
    assert_eq!(
        next_change(&mut bobs, Duration::from_secs(10)).await,
        Some(("alice".into(), false))
    );
    // The notifier's tap got nothing: no message was sent, and live events skip it.
    assert!(
        tap.try_recv().is_err(),
        "an ephemeral event reached the tap"
    );
}
