//! The notifier when its own database goes away: a private PostgreSQL (the shared one is
//! never stopped) holds the delivery records, and is stopped while messages keep coming.
//! Events that could not be recorded are not lost with the outage: they come again, and
//! once the database is back every email goes out, each exactly once. Likewise when NATS
//! (a private `nats-server`, killed and started again) goes away under the notifier.

use std::{collections::HashMap, time::Duration};

use chat_testkit::{
    chat_config,
    fault::{PrivateNats, PrivatePostgres, StopMode},
    notification_config,
    smtp::{SmtpMode, TestSmtp},
    spawn_auth, spawn_chat, spawn_notification, TestDb, TestNats,
};
use grpc_chat_proto::chat::v1 as chatpb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_of_messages_sent_while_the_notifier_database_was_down_go_out_once_after() {
    let mut pg = PrivatePostgres::start().await.expect("private postgres");
    let auth = spawn_auth().await;
    let chat_db = TestDb::new().await;
    let nats = TestNats::new();
    let chat = spawn_chat(chat_config(&auth, &chat_db.url, &nats)).await;
    let smtp = TestSmtp::start(SmtpMode::Accept).await;
    let mut config = notification_config(&auth, &chat, &pg.url("notify"), &nats, smtp.addr);
    config.database.max_connections = 4;
    let _notifier = spawn_notification(config).await;

    let (alice, bob, carol) = (
        auth.user("alice").await,
        auth.user("bob").await,
        auth.user("carol").await,
    );
    let chat_id = chat.create_chat(&alice, "outage", &[&bob, &carol]).await;
    let send = |text: String| {
        let client = chat.client.clone();
        let req = alice.req(chatpb::SendMessageRequest {
            chat_id,
            text,
            ..Default::default()
        });
        async move {
            client
                .clone()
                .send_message(req)
                .await
                .expect("send")
                .into_inner()
        }
    };
    // Concurrent sends, so that the notifier records them in shared batches.
    let before: Vec<_> = (0..10).map(|i| send(format!("before {i}"))).collect();
    futures::future::join_all(before).await;
    smtp.wait_for(20).await;

    pg.stop(StopMode::Immediate).await.expect("stop postgres");
    let during: Vec<_> = (0..10).map(|i| send(format!("during {i}"))).collect();
    futures::future::join_all(during).await;
    // Long enough for every event to be tried, and refused, at least once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        smtp.mails().len(),
        20,
        "nothing can be recorded, so nothing is sent"
    );

    pg.start_again().await.expect("start postgres");
    let mails = smtp.wait_for(40).await;
    // Give a duplicate, if any were to come, the time to arrive (a redelivery waits 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails_now = smtp.mails();
    assert_eq!(mails_now.len(), 40, "each email once");
    let mut per_recipient: HashMap<String, usize> = HashMap::new();
    for m in &mails {
        *per_recipient.entry(m.to.join(",")).or_default() += 1;
    }
    assert_eq!(
        per_recipient.get("bob@example.com"),
        Some(&20),
        "{per_recipient:?}"
    );
    assert_eq!(
        per_recipient.get("carol@example.com"),
        Some(&20),
        "{per_recipient:?}"
    );
    for i in 0..10 {
        for phase in ["before", "during"] {
            let text = format!("{phase} {i}");
            let n = mails_now.iter().filter(|m| m.data.contains(&text)).count();
            assert_eq!(n, 2, "{text:?} emailed to bob and carol once each");
        }
    }
}

/// The notifier's JetStream pull breaks when NATS dies; it must open a new one once NATS is
/// back (JetStream keeps the stream on disk), so that the events of messages sent during
/// and after the outage are emailed, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_of_messages_sent_around_a_nats_restart_go_out_once() {
    let mut nats_server = PrivateNats::start().await.expect("private nats");
    let auth = spawn_auth().await;
    let (chat_db, notify_db) = (TestDb::new().await, TestDb::new().await);
    let nats = TestNats::new();
    let mut chat_config = chat_config(&auth, &chat_db.url, &nats);
    chat_config.nats.url = nats_server.url();
    let chat = spawn_chat(chat_config).await;
    let smtp = TestSmtp::start(SmtpMode::Accept).await;
    let mut config = notification_config(&auth, &chat, &notify_db.url, &nats, smtp.addr);
    config.nats.url = nats_server.url();
    let _notifier = spawn_notification(config).await;

    let (alice, bob) = (auth.user("alice").await, auth.user("bob").await);
    let chat_id = chat.create_chat(&alice, "nats restart", &[&bob]).await;
    let send = |text: &str| {
        let mut client = chat.client.clone();
        let req = alice.req(chatpb::SendMessageRequest {
            chat_id,
            text: text.into(),
            ..Default::default()
        });
        async move { client.send_message(req).await.expect("send") }
    };
    send("sent before the outage").await;
    smtp.wait_for(1).await;

    nats_server.kill().await;
    // Stored while NATS is away; its event leaves through the outbox once NATS is back.
    send("sent during the outage").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats_server.restart().await.expect("restart nats");
    send("sent after the outage").await;

    smtp.wait_for(3).await;
    // Give a duplicate, if any were to come, the time to arrive (a redelivery waits 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = smtp.mails();
    for text in [
        "sent before the outage",
        "sent during the outage",
        "sent after the outage",
    ] {
        let n = mails.iter().filter(|m| m.data.contains(text)).count();
        assert_eq!(n, 1, "{text:?} emailed to bob once: {mails:?}");
    }
    assert_eq!(mails.len(), 3, "{mails:?}");
}
