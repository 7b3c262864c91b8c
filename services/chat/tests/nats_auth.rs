//! chat-service reaches a NATS server that requires a user and password, as the
//! operator's managed NATS does: the credentials come in `NATS_URL`
//! (`nats://user:password@host:port`), and the subject permissions the operator grants
//! chat-service are enough to create the events stream, publish into it and receive live
//! events. A wrong password never connects.

use std::time::Duration;

use chat_events::{ChatEvent, EventBus, NatsBus, StreamSettings};
use chat_service::presence::LiveEvent;
use chat_testkit::PrivateNats;
use futures::StreamExt;
use grpc_chat_proto::chat::v1::Typing;

/// The users the operator's managed NATS gives chat-service and notification-service
/// (see the operator's `nats_config`: the same permissions), with fixed passwords.
const CONFIG: &str = r#"
authorization {
  users: [
    {user: chat, password: "chat-pass", permissions: {
      publish: {allow: ["chat.>", "chat_live.>", "$JS.API.>"]},
      subscribe: {allow: ["chat.>", "chat_live.>", "_INBOX.>"]}
    }},
    {user: notification, password: "notification-pass", permissions: {
      publish: {allow: ["$JS.API.>", "$JS.ACK.>"]},
      subscribe: {allow: ["_INBOX.>"]}
    }},
    {user: other, password: "other-pass", permissions: {
      publish: {allow: ["other.>"]},
      subscribe: {allow: ["other.>", "_INBOX.>"]}
    }}
  ]
}
"#;

fn url(nats: &PrivateNats, user: &str, password: &str) -> String {
    format!("nats://{user}:{password}@{}", nats.addr())
}

#[tokio::test]
async fn chat_connects_with_the_credentials_in_its_url_and_its_permissions_suffice() {
    let nats = PrivateNats::start_with_config(CONFIG)
        .await
        .expect("a nats-server requiring authentication");
    let settings = StreamSettings::default();
    let bus = tokio::time::timeout(
        Duration::from_secs(20),
        NatsBus::connect(
            &url(&nats, "chat", "chat-pass"),
            "chat",
            Some(("CHAT_EVENTS", &settings)),
        ),
    )
    .await
    .expect("connecting in time")
    .expect("connecting as chat, and creating the stream");

    let mut events = bus.subscribe(7).await.expect("subscribing");
    bus.publish(&ChatEvent::ChatDeleted { chat_id: 7 })
        .await
        .expect("publishing into the stream");
    let got = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the event in time")
        .expect("an event");
    assert_eq!(got.event, ChatEvent::ChatDeleted { chat_id: 7 });

    // Typing and presence, on their own subjects outside the stream, get through too.
    let typing = ChatEvent::Live(LiveEvent::Typing(Typing {
        chat_id: 7,
        user_id: 1,
        username: "alice".into(),
    }));
    bus.publish(&typing)
        .await
        .expect("publishing a typing event");
    let got = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the typing event in time")
        .expect("an event");
    assert_eq!(got.event, typing);
}

#[tokio::test]
async fn a_wrong_password_or_a_user_without_permission_does_not_get_in() {
    let nats = PrivateNats::start_with_config(CONFIG)
        .await
        .expect("a nats-server requiring authentication");
    let settings = StreamSettings::default();
    // The connection is made in the background and retried (the server may be
    // starting): making the stream, which needs it, never succeeds.
    let wrong = tokio::time::timeout(
        Duration::from_secs(3),
        NatsBus::connect(
            &url(&nats, "chat", "nope"),
            "chat",
            Some(("CHAT_EVENTS", &settings)),
        ),
    )
    .await;
    assert!(!matches!(wrong, Ok(Ok(_))), "a wrong password connected");
    // Without credentials: refused too.
    let anonymous = tokio::time::timeout(
        Duration::from_secs(3),
        NatsBus::connect(
            &format!("nats://{}", nats.addr()),
            "chat",
            Some(("CHAT_EVENTS", &settings)),
        ),
    )
    .await;
    assert!(!matches!(anonymous, Ok(Ok(_))), "no credentials connected");
    // Another user is authenticated but may not create chat's stream.
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        NatsBus::connect(
            &url(&nats, "other", "other-pass"),
            "chat",
            Some(("CHAT_EVENTS", &settings)),
        ),
    )
    .await;
    assert!(
        !matches!(other, Ok(Ok(_))),
        "a user without permission made the stream"
    );
}

#[tokio::test]
async fn notification_reads_and_acknowledges_the_stream_with_its_permissions() {
    use async_nats::jetstream::{
        self,
        consumer::{pull, AckPolicy, DeliverPolicy},
    };
    let nats = PrivateNats::start_with_config(CONFIG)
        .await
        .expect("a nats-server requiring authentication");
    let settings = StreamSettings::default();
    let bus = NatsBus::connect(
        &url(&nats, "chat", "chat-pass"),
        "chat",
        Some(("CHAT_EVENTS", &settings)),
    )
    .await
    .expect("chat connects");
    bus.publish(&ChatEvent::ChatDeleted { chat_id: 3 })
        .await
        .expect("publishing");

    // As notification-service's consumer does (`notification_service::consumer`).
    let address =
        chat_common::nats::NatsAddress::parse(&url(&nats, "notification", "notification-pass"));
    let client = address
        .apply(async_nats::ConnectOptions::new())
        .connect(address.url.as_str())
        .await
        .expect("notification connects");
    let js = jetstream::new(client);
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        chat_events::stream::ensure(&js, "CHAT_EVENTS", "chat", &settings),
    )
    .await
    .expect("in time")
    .expect("the stream, as notification sees it");
    let consumer = stream
        .get_or_create_consumer(
            "notification",
            pull::Config {
                durable_name: Some("notification".into()),
                filter_subject: "chat.*.chat_deleted".into(),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .expect("the durable consumer");
    let mut messages = consumer.messages().await.expect("pulling");
    let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("an event in time")
        .expect("an event")
        .expect("a message");
    assert_eq!(message.subject.as_str(), "chat.3.chat_deleted");
    // A double ack waits for the server: refused without `$JS.ACK.>`.
    tokio::time::timeout(Duration::from_secs(10), message.double_ack())
        .await
        .expect("the acknowledgement in time")
        .expect("acknowledged");
}
