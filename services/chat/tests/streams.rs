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
    config.stream_buffer = 4;
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
    config_b.nats_url = format!("nats://{}", proxy.addr);
    config_b.catch_up_every = Duration::from_secs(60);
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
