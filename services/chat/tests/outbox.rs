//! The transactional outbox: an event whose publish failed after the change was committed
//! still reaches the bus, published by another replica (or the same one later), and the
//! deletions that open streams missed while NATS was away reach them.

mod support;

use std::{net::SocketAddr, time::Duration};

use chat_events::ChatEvent;
use chat_testkit::{spawn_chat, TcpProxy};
use futures::StreamExt;
use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};
use support::*;

/// Replica A loses NATS, stores a message and deletes an earlier one (both committed, both
/// publishes fail), then stops before NATS comes back: what its NATS client held is gone.
/// The events still reach the bus (a plain subscriber sees them) and bob's open stream on
/// replica B gets the deletion, which no catch-up from storage would ever tell it.
async fn events_a_replica_could_not_publish_reach_the_bus_after_it_stopped() {
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
    // B's periodic catch-up would deliver the message from storage on its own; the test
    // is about the events.
    config_b.settings.catch_up_every = Duration::from_secs(600);
    let b = spawn_chat(config_b).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&a, &alice, &[&bob]).await;
    // Each message's event carries the membership version it was stored under, also when
    // the relay publishes it from its outbox row.
    let version = a
        .client
        .clone()
        .list_members(alice.req(pb::ListMembersRequest { chat_id: id }))
        .await
        .expect("members")
        .into_inner()
        .members_version;
    assert!(
        version > 0,
        "creating the chat with its members is a change"
    );

    let nats = async_nats::connect(chat_testkit::nats_url())
        .await
        .expect("NATS");
    let mut bus = nats
        .subscribe(format!("{}.{id}.*", w.nats.prefix))
        .await
        .expect("subscribe");
    let first = send(&a, &alice, id, "seen by all").await;
    let mut on_b = connect(&b, &bob, id, 0).await;
    assert_eq!(read_until(&mut on_b, first.seq).await, vec![first.seq]);
    match next_event(&mut bus).await {
        ChatEvent::MessageCreated(m, v) => assert_eq!((m.seq, v), (first.seq, Some(version))),
        other => panic!("expected the first message, got {other:?}"),
    }

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send(&a, &alice, id, "stored while NATS was away").await;
    a.client
        .clone()
        .delete_message(alice.req(pb::DeleteMessageRequest {
            chat_id: id,
            seq: first.seq,
        }))
        .await
        .expect("delete");
    a.shutdown.trigger();
    drop(a);

    // Both events arrive, published from the outbox (the proxy stays cut).
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next_event(&mut bus).await {
            ChatEvent::MessageCreated(m, v) if m.seq == second.seq => {
                assert_eq!(m.text, "stored while NATS was away");
                assert_eq!(v, Some(version), "the relayed event keeps the version");
                seen.push("created");
            }
            ChatEvent::MessageDeleted { chat_id, seq } if (chat_id, seq) == (id, first.seq) => {
                seen.push("deleted")
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["created", "deleted"]);

    // Bob's stream gets the message and, above all, the deletion.
    let mut got_message = false;
    let mut got_deletion = false;
    while !(got_message && got_deletion) {
        let item = tokio::time::timeout(Duration::from_secs(40), on_b.message())
            .await
            .expect("the stream hears of both within 40 s")
            .expect("stream ok")
            .expect("stream open");
        match item.event {
            Some(Event::Message(m)) => {
                assert_eq!(m.seq, second.seq);
                got_message = true;
            }
            Some(Event::MessageDeleted(d)) => {
                assert_eq!((d.chat_id, d.seq), (id, first.seq));
                got_deletion = true;
            }
            Some(Event::HistoryEnd(_)) => {}
            other => panic!("unexpected stream item {other:?}"),
        }
    }
}

async fn next_event(bus: &mut async_nats::Subscriber) -> ChatEvent {
    let msg = tokio::time::timeout(Duration::from_secs(40), bus.next())
        .await
        .expect("an event on the bus within 40 s")
        .expect("subscription open");
    chat_events::Envelope::from_nats(&msg)
        .expect("a chat event")
        .event
}

/// An outbox row of a kind this version does not know (a newer version wrote it; this one
/// runs after a rollback) is left for a replica that knows it: the relay neither fails on it
/// nor claims it, and still claims the rows it can publish.
async fn the_relay_leaves_kinds_it_does_not_know_and_claims_the_rest() {
    let w = World::new().await;
    let store = chat_service::store::open(&w.db.url, 1, &chat_common::Shutdown::new())
        .await
        .expect("store");
    let rows = [(1_i64, "message_pinned"), (2, "message_deleted")];
    if w.db.url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&w.db.url).await.expect("connect");
        for (seq, kind) in rows {
            sqlx::query(
                "INSERT INTO outbox (chat_id, seq, kind, created_at) \
                 VALUES (7, $1, $2, now() - interval '1 minute')",
            )
            .bind(seq)
            .bind(kind)
            .execute(&pool)
            .await
            .expect("insert");
        }
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&w.db.url).await.expect("connect");
        for (seq, kind) in rows {
            sqlx::query(
                "INSERT INTO outbox (chat_id, seq, kind, created_at) VALUES (7, ?1, ?2, 0)",
            )
            .bind(seq)
            .bind(kind)
            .execute(&pool)
            .await
            .expect("insert");
        }
        pool.close().await;
    }
    let claimed = store
        .claim_events(Duration::from_secs(1), Duration::from_secs(30), 10)
        .await
        .expect("a row of an unknown kind fails nothing");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].seq, 2);
    assert_eq!(
        claimed[0].kind,
        chat_service::store::EventKind::MessageDeleted
    );
}

chat_testkit::backend_tests!(
    events_a_replica_could_not_publish_reach_the_bus_after_it_stopped,
    the_relay_leaves_kinds_it_does_not_know_and_claims_the_rest,
);
