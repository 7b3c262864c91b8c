//! A world for chat tests: auth, one database, one NATS space, replicas on demand, users.
#![allow(dead_code)]

use std::time::Duration;

use chat_testkit::{
    chat_config, spawn_auth, spawn_chat, TestAuth, TestChat, TestDb, TestNats, TestUser,
};
use grpc_chat_proto::chat::v1::{self as pb, connect_response::Event};
use tonic::Streaming;

pub struct World {
    pub auth: TestAuth,
    pub db: TestDb,
    pub nats: TestNats,
}

impl World {
    pub async fn new() -> Self {
        let auth = spawn_auth().await;
        Self {
            auth,
            db: TestDb::new().await,
            nats: TestNats::new(),
        }
    }

    pub fn config(&self) -> chat_service::Config {
        chat_config(&self.auth, &self.db.url, &self.nats)
    }

    pub async fn replica(&self) -> TestChat {
        spawn_chat(self.config()).await
    }

    pub async fn user(&self, name: &str) -> TestUser {
        self.auth.user(name).await
    }
}

pub async fn create_chat(chat: &TestChat, owner: &TestUser, members: &[&TestUser]) -> i64 {
    chat.create_chat(owner, "test chat", members).await
}

pub async fn send(chat: &TestChat, user: &TestUser, chat_id: i64, text: &str) -> pb::Message {
    chat.client
        .clone()
        .send_message(user.req(pb::SendMessageRequest {
            chat_id,
            text: text.into(),
            ..Default::default()
        }))
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message")
}

pub async fn connect(
    chat: &TestChat,
    user: &TestUser,
    chat_id: i64,
    after_seq: i64,
) -> Streaming<pb::ConnectResponse> {
    chat.client
        .clone()
        .connect(user.req(pb::ConnectRequest {
            chat_id,
            after_seq,
            history_limit: 500,
            ..Default::default()
        }))
        .await
        .expect("connect")
        .into_inner()
}

/// Reads a stream until it has seen `upto` (a seq), returning every message seq in the
/// order received (history and live), and whether HistoryEnd was seen.
pub async fn read_until(stream: &mut Streaming<pb::ConnectResponse>, upto: i64) -> Vec<i64> {
    let mut seqs = Vec::new();
    // A stall, not a slow machine, fails the test: the wait is per message.
    while seqs.last().copied().unwrap_or(0) < upto {
        let item = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no message for 30 s at {seqs:?} waiting for seq {upto}"))
            .expect("stream ok")
            .expect("stream open");
        if let Some(Event::Message(m)) = item.event {
            seqs.push(m.seq);
        }
    }
    seqs
}

/// Asserts that `seqs` is exactly `from..=to`: each once, in order.
pub fn assert_contiguous(seqs: &[i64], from: i64, to: i64) {
    let want: Vec<i64> = (from..=to).collect();
    assert_eq!(
        seqs,
        want.as_slice(),
        "stream must see every message once and in order"
    );
}
