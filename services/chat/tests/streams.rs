//! Connect streams: history + live with no gap and no duplicate, across replicas sharing
//! NATS, through deletions, slow clients and a lost NATS connection.

mod support;

use std::{net::SocketAddr, time::Duration};

use chat_testkit::{spawn_chat, TcpProxy};
use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};
use support::*;
use tonic::Code;

async fn two_replicas_every_stream_sees_every_message_once_in_order() {
    let w = World::new().await;
    let (a, b) = (w.replica().await, w.replica().await);
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&a, &alice, &[&bob]).await;
    let mut on_a = connect(&a, &bob, id, 0).await;
    let mut on_b = connect(&b, &alice, id, 0).await;
    let mut on_b2 = connect(&b, &bob, id, 0).await;

    // Concurrent senders on both replicas.
    const PER_SENDER: i64 = 25;
    let mut tasks = Vec::new();
    for (replica, user) in [(&a, &alice), (&b, &bob), (&a, &bob), (&b, &alice)] {
        let client = replica.client.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                client
                    .clone()
                    .send_message(user.req(pb::SendMessageRequest {
                        chat_id: id,
                        text: format!("{} #{i}", user.username),
                        ..Default::default()
                    }))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 4 * PER_SENDER;
    for s in [&mut on_a, &mut on_b, &mut on_b2] {
        let seqs = read_until(s, total).await;
        assert_contiguous(&seqs, 1, total);
    }
}

async fn history_and_live_meet_without_gap_or_duplicate() {
    let w = World::new().await;
    let (a, b) = (w.replica().await, w.replica().await);
    let alice = w.user("alice").await;
    let id = create_chat(&a, &alice, &[]).await;
    const TOTAL: i64 = 120;
    let sender = {
        let client = a.client.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                client
                    .clone()
                    .send_message(alice.req(pb::SendMessageRequest {
                        chat_id: id,
                        text: format!("m{i}"),
                        ..Default::default()
                    }))
                    .await
                    .unwrap();
            }
        })
    };
    // Streams open while messages keep arriving, on both replicas.
    let mut streams = Vec::new();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let replica = if i % 2 == 0 { &a } else { &b };
        streams.push(connect(replica, &alice, id, 0).await);
    }
    sender.await.unwrap();
    for mut s in streams {
        let seqs = read_until(&mut s, TOTAL).await;
        let first = seqs[0];
        assert_contiguous(&seqs, first, TOTAL);
    }
}

async fn a_resumed_stream_gets_exactly_what_it_missed() {
    let w = World::new().await;
    let a = w.replica().await;
    let alice = w.user("alice").await;
    let id = create_chat(&a, &alice, &[]).await;
    for i in 1..=10 {
        send(&a, &alice, id, &format!("m{i}")).await;
    }
    let mut s = connect(&a, &alice, id, 0).await;
    assert_contiguous(&read_until(&mut s, 10).await, 1, 10);
    // HistoryEnd marks where live begins.
    let end = s.message().await.unwrap().unwrap();
    assert_eq!(
        end.event,
        Some(Event::HistoryEnd(pb::HistoryEnd { last_seq: 10 }))
    );
    drop(s);
    for i in 11..=15 {
        send(&a, &alice, id, &format!("m{i}")).await;
    }
    let mut resumed = connect(&a, &alice, id, 12).await;
    let mut seqs = read_until(&mut resumed, 15).await;
    send(&a, &alice, id, "live").await;
    seqs.extend(read_until(&mut resumed, 16).await);
    assert_contiguous(&seqs, 13, 16);

    // A chat with many messages resumes across several history pages.
    for i in 17..=1100 {
        send(&a, &alice, id, &format!("m{i}")).await;
    }
    let mut far = connect(&a, &alice, id, 3).await;
    assert_contiguous(&read_until(&mut far, 1100).await, 4, 1100);
}

async fn deletions_reach_streams_and_a_deleted_chat_ends_them() {
    let w = World::new().await;
    let (a, b) = (w.replica().await, w.replica().await);
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&a, &alice, &[&bob]).await;
    let m = send(&a, &bob, id, "oops").await;
    let mut streams = vec![
        connect(&a, &alice, id, 0).await,
        connect(&b, &bob, id, 0).await,
    ];
    for s in streams.iter_mut() {
        read_until(s, m.seq).await;
    }
    b.client
        .clone()
        .delete_message(bob.req(pb::DeleteMessageRequest {
            chat_id: id,
            seq: m.seq,
        }))
        .await
        .unwrap();
    a.client
        .clone()
        .delete_chat(alice.req(pb::DeleteChatRequest { chat_id: id }))
        .await
        .unwrap();
    for mut s in streams {
        let mut saw_deleted_message = false;
        let mut saw_chat_deleted = false;
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(20), s.message())
                .await
                .expect("stream ends")
            {
                Ok(Some(item)) => match item.event {
                    Some(Event::MessageDeleted(d)) => {
                        assert_eq!((d.chat_id, d.seq), (id, m.seq));
                        saw_deleted_message = true;
                    }
                    Some(Event::ChatDeleted(d)) => {
                        assert_eq!(d.chat_id, id);
                        saw_chat_deleted = true;
                    }
                    _ => {}
                },
                Ok(None) => panic!("stream must end with a status"),
                Err(status) => break status,
            }
        };
        assert!(saw_deleted_message && saw_chat_deleted);
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("deleted"));
    }
}

async fn a_slow_stream_is_cut_off_and_others_go_on() {
    let w = World::new().await;
    let mut config = w.config();
    config.settings.stream_buffer = 4;
    let a = spawn_chat(config).await;
    let alice = w.user("alice").await;
    let id = create_chat(&a, &alice, &[]).await;
    const TOTAL: i64 = 600;
    let mut slow = connect(&a, &alice, id, 0).await;
    let mut fast = connect(&a, &alice, id, 0).await;
    let reader = tokio::spawn(async move {
        let seqs = read_until(&mut fast, TOTAL).await;
        assert_contiguous(&seqs, 1, TOTAL);
    });
    // 8 KiB a message: more than HTTP/2's flow-control windows hold for the slow client.
    let big = "я".repeat(4096);
    for _ in 0..TOTAL {
        send(&a, &alice, id, &big).await;
    }
    reader.await.unwrap();
    // The slow stream, once read, ends with RESOURCE_EXHAUSTED telling where to resume.
    let mut last = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.message())
            .await
            .expect("ends")
        {
            Ok(Some(item)) => {
                if let Some(Event::Message(m)) = item.event {
                    assert_eq!(m.seq, last + 1);
                    last = m.seq;
                }
            }
            Ok(None) => panic!("must end with a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(last < TOTAL, "the slow stream was cut off before the end");
    assert!(
        status.message().contains(&format!("after_seq={last}")),
        "{status:?}"
    );
    // Resuming from there loses nothing.
    let mut resumed = connect(&a, &alice, id, last).await;
    assert_contiguous(&read_until(&mut resumed, TOTAL).await, last + 1, TOTAL);
}

async fn a_replica_that_loses_nats_fills_the_gap_from_the_database() {
    let w = World::new().await;
    let nats_addr: SocketAddr = chat_testkit::nats_url()
        .trim_start_matches("nats://")
        .parse()
        .unwrap();
    let proxy = TcpProxy::start(nats_addr).await;
    let a = w.replica().await;
    let mut config_b = w.config();
    config_b.nats.url = format!("nats://{}", proxy.addr);
    config_b.settings.catch_up_every = Duration::from_secs(60);
    let b = spawn_chat(config_b).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&a, &alice, &[&bob]).await;
    let mut on_b = connect(&b, &bob, id, 0).await;
    send(&a, &alice, id, "before").await;
    assert_eq!(read_until(&mut on_b, 1).await, vec![1]);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 2..=6 {
        send(&a, &alice, id, &format!("while away {i}")).await;
    }
    proxy.restore();
    // On reconnect B catches up from PostgreSQL, before any later event arrives.
    let seqs = read_until(&mut on_b, 6).await;
    assert_contiguous(&seqs, 2, 6);
    send(&a, &alice, id, "after").await;
    assert_eq!(read_until(&mut on_b, 7).await, vec![7]);
}

chat_testkit::backend_tests!(
    two_replicas_every_stream_sees_every_message_once_in_order,
    history_and_live_meet_without_gap_or_duplicate,
    a_resumed_stream_gets_exactly_what_it_missed,
    deletions_reach_streams_and_a_deleted_chat_ends_them,
    a_slow_stream_is_cut_off_and_others_go_on,
    a_replica_that_loses_nats_fills_the_gap_from_the_database,
);

/// `url` with its `host:port` replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (userinfo, rest) = rest.split_once('@').map_or(("", rest), |(u, r)| (u, r));
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let at = if userinfo.is_empty() { "" } else { "@" };
    format!("{scheme}://{userinfo}{at}{addr}/{path}")
}

/// A replica whose gap repair cannot read the database (its database link is cut while
/// a later event arrives) must not deliver the later message over the hole: its stream
/// ends UNAVAILABLE naming the last seq it delivered, and resuming from there gives every
/// message. (Before, the stream went on with `[1, 3, 4, ...]` and 2 was lost for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_that_cannot_be_read_ends_the_stream_and_resuming_gives_every_message() {
    let w = World::new().await;
    let nats_addr: SocketAddr = chat_testkit::nats_url()
        .trim_start_matches("nats://")
        .parse()
        .unwrap();
    let nats_link = TcpProxy::start(nats_addr).await;
    let pg_addr: SocketAddr = tokio::net::lookup_host(
        chat_testkit::admin_url()
            .split_once('@')
            .and_then(|(_, r)| r.split_once('/'))
            .map(|(h, _)| h.to_owned())
            .unwrap(),
    )
    .await
    .unwrap()
    .next()
    .unwrap();
    let db_link = TcpProxy::start(pg_addr).await;
    let a = w.replica().await;
    let mut config_b = w.config();
    config_b.nats.url = format!("nats://{}", nats_link.addr);
    config_b.database.url = via(&w.db.url, db_link.addr);
    config_b.settings.catch_up_every = Duration::from_secs(60);
    let b = spawn_chat(config_b).await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let id = create_chat(&a, &alice, &[&bob]).await;
    let mut on_b = connect(&b, &bob, id, 0).await;
    send(&a, &alice, id, "one").await;
    assert_eq!(read_until(&mut on_b, 1).await, vec![1]);

    // B misses 2's event, then loses its database; its NATS link comes back.
    nats_link.cut();
    send(&a, &alice, id, "two: B misses its event").await;
    db_link.cut();
    nats_link.restore();

    // Later messages keep coming until B's stream shows what it does with the gap.
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let sender = {
        let a_client = a.client.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut last = 2;
            loop {
                tokio::select! {
                    _ = stop.changed() => return last,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                last = a_client
                    .clone()
                    .send_message(alice.req(pb::SendMessageRequest {
                        chat_id: id,
                        text: format!("later {}", last + 1),
                        ..Default::default()
                    }))
                    .await
                    .expect("send via A")
                    .into_inner()
                    .message
                    .expect("message")
                    .seq;
            }
        })
    };
    let mut seqs = vec![1];
    let ended = loop {
        let item = tokio::time::timeout(Duration::from_secs(30), on_b.message())
            .await
            .expect("B's stream neither delivers nor ends");
        match item {
            Ok(Some(pb::ConnectResponse {
                event: Some(Event::Message(m)),
            })) => {
                seqs.push(m.seq);
                if seqs.len() >= 5 {
                    break None;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break Some(status),
        }
    };
    let delivered = *seqs.last().unwrap();
    assert_contiguous(&seqs, 1, delivered);
    if let Some(status) = &ended {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains(&format!("after_seq={delivered}")),
            "{status:?}"
        );
    }

    // Resuming from what was delivered brings every message, once the database is back.
    db_link.restore();
    stop_tx.send_replace(true);
    let last = sender.await.unwrap();
    // B answers UNAVAILABLE at once while it knows its database is down; a client waits for
    // it to serve again (readiness) before reconnecting.
    let healed = tokio::time::Instant::now() + Duration::from_secs(15);
    while !chat_testkit::fault::health_serving(b.addr, "grpcchat.chat.v1.ChatService").await {
        assert!(
            tokio::time::Instant::now() < healed,
            "B never served again after its database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut resumed = connect(&b, &bob, id, delivered).await;
    assert_contiguous(&read_until(&mut resumed, last).await, delivered + 1, last);
}
