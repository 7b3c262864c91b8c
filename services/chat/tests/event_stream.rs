//! The JetStream events stream follows the configured settings: a chat-service started
//! against an existing stream made with other settings (an older version's defaults:
//! unbounded, a week) brings it to the configured ones, and the events still flow.

mod support;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use chat_events::StreamSettings;
use chat_testkit::{nats_url, spawn_chat};
use support::*;

#[tokio::test]
async fn an_existing_stream_with_other_settings_is_updated_to_the_configured_ones() {
    let w = World::new().await;
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"));
    // As the services created it before the settings existed.
    js.create_stream(stream::Config {
        name: w.nats.stream.clone(),
        subjects: vec![format!("{}.>", w.nats.prefix)],
        max_age: Duration::from_secs(7 * 24 * 3600),
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(30),
        ..Default::default()
    })
    .await
    .expect("creating the old stream");

    let settings = StreamSettings {
        replicas: 1,
        max_bytes: 8 * 1024 * 1024,
        max_age: Duration::from_secs(3600),
    };
    let mut config = w.config();
    config.settings.nats_stream_settings = settings;
    let chat = spawn_chat(config).await;

    let mut s = js.get_stream(&w.nats.stream).await.expect("the stream");
    let info = s.info().await.expect("stream info").config.clone();
    assert_eq!(info.max_bytes, settings.max_bytes);
    assert_eq!(info.max_age, settings.max_age);
    assert_eq!(info.num_replicas, settings.replicas);
    assert_eq!(
        info.duplicate_window,
        Duration::from_secs(30),
        "what the settings do not define is kept"
    );

    // Events still go into it.
    let alice = w.user("alice").await;
    let id = create_chat(&chat, &alice, &[]).await;
    send(&chat, &alice, id, "hello").await;
    let messages = s.info().await.expect("stream info").state.messages;
    assert!(messages >= 1, "the stream holds {messages} events");

    // A second start with the same settings changes nothing (no update at all).
    let before = s.info().await.expect("stream info").config.clone();
    let mut again = w.config();
    again.settings.nats_stream_settings = settings;
    let _second = spawn_chat(again).await;
    assert_eq!(s.info().await.expect("stream info").config, before);
}

#[tokio::test]
async fn settings_the_server_refuses_stop_the_start_with_a_clear_error() {
    let w = World::new().await;
    // One NATS server cannot keep three copies.
    let mut config = w.config();
    config.settings.nats_stream_settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    let shutdown = chat_common::Shutdown::new();
    let err = match chat_service::Application::build(config, shutdown).await {
        Ok(_) => panic!("three replicas on one NATS server were accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&w.nats.stream), "{err}");
}
