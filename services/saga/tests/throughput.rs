//! Saga throughput and latency with the stub email sender, on the real PostgreSQL and NATS:
//! `cargo test --release -p saga-orchestrator --test throughput -- --ignored --nocapture`
//! (`SAGAS`, default 1000, and `CONCURRENCY`, default 32, tune it). Ignored by default: it
//! measures, it does not check.

use std::time::{Duration, Instant};

use chat_testkit::{
    chat_config, notification_config, saga_config, smtp::SmtpMode, smtp::TestSmtp, spawn_auth,
    spawn_chat, spawn_notification, spawn_saga, TestDb, TestNats,
};
use grpc_chat_proto::{chat::v1 as chatpb, saga::v1 as pb};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn saga_throughput_with_the_stub_sender() {
    let (sagas, concurrency) = (env_or("SAGAS", 1000), env_or("CONCURRENCY", 32));
    let auth = spawn_auth().await;
    let (chat_db, notify_db, saga_db) = (
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
    );
    let nats = TestNats::new();
    let chat = spawn_chat(chat_config(&auth, &chat_db.url, &nats)).await;
    let smtp = TestSmtp::start(SmtpMode::Accept).await;
    let mut n_config = notification_config(&auth, &chat, &notify_db.url, &nats, smtp.addr);
    n_config.settings.email = notification_service::EmailConfig::Stub;
    let notifier = spawn_notification(n_config).await;
    let saga = spawn_saga(saga_config(&auth, chat.addr, notifier.addr, &saga_db.url)).await;
    let (alice, bob, carol) = (
        auth.user("alice").await,
        auth.user("bob").await,
        auth.user("carol").await,
    );
    let chat_id = chat
        .client
        .clone()
        .create_chat(alice.req(chatpb::CreateChatRequest {
            title: "bench".into(),
            members: vec![bob.username.clone(), carol.username.clone()],
        }))
        .await
        .expect("chat")
        .into_inner()
        .chat
        .expect("chat")
        .id;

    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, alice, tx, next) =
            (saga.client.clone(), alice.clone(), tx.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= sagas {
                    return;
                }
                let t = Instant::now();
                client
                    .clone()
                    .send_message(alice.req(pb::SendMessageRequest {
                        chat_id,
                        from: "alice".into(),
                        text: format!("message {i}"),
                        idempotency_key: String::new(),
                    }))
                    .await
                    .expect("saga");
                let _ = tx.send(t.elapsed());
            }
        }));
    }
    drop(tx);
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    while let Some(l) = rx.recv().await {
        latencies.push(l);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{sagas} sagas, concurrency {concurrency}: {:.0} sagas/s, p50 {:.1} ms, p99 {:.1} ms",
        sagas as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
    );
}
