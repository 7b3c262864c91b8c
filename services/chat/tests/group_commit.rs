//! Group commit of messages on PostgreSQL: concurrent senders share one statement and one
//! commit, and must not be able to tell. Seqs stay gapless and in order per chat, every
//! sender's answer is what is stored, every message has its outbox row, a non-member in a
//! group is refused alone, and an idempotency key repeated in one group or across groups
//! answers with the first message. The tests drive the store itself (two stores on one
//! database stand for two replicas), where the groups can be steered.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chat_common::db::Database;
use chat_service::{
    domain::{ChatId, IdempotencyKey, MessageText, Title},
    store::{postgres::PgChatStore, ChatStore, Inserted, MessageRecord, NewMessage, MIGRATIONS},
};
use chat_testkit::TestDb;
use sqlx::{Connection, PgConnection};

async fn store(db: &TestDb) -> Arc<PgChatStore> {
    match Database::connect(&db.url, MIGRATIONS, 8)
        .await
        .expect("connect")
    {
        Database::Postgres(pool) => Arc::new(PgChatStore::new(pool)),
        Database::Sqlite(_) => panic!("these tests are about PostgreSQL"),
    }
}

/// A chat of users 1..=members, created by user 1.
async fn chat_of(store: &PgChatStore, members: i64) -> ChatId {
    let people: Vec<(i64, String)> = (1..=members).map(|u| (u, format!("user{u}"))).collect();
    let chat = store
        .create_chat(1, &Title::parse("busy").expect("title"), &people)
        .await
        .expect("create chat");
    ChatId(chat.id)
}

async fn send(
    store: &PgChatStore,
    chat: ChatId,
    sender: i64,
    text: &str,
    key: Option<&str>,
) -> Inserted {
    let text = MessageText::parse(text.to_owned()).expect("text");
    let key = key.map(|k| IdempotencyKey::parse(k).expect("key").expect("non-empty"));
    store
        .insert_message(NewMessage {
            chat_id: chat,
            sender_id: sender,
            sender_username: &format!("user{sender}"),
            text: &text,
            idempotency_key: key.as_ref(),
        })
        .await
        .expect("insert")
}

fn new_message(inserted: Inserted) -> MessageRecord {
    match inserted {
        Inserted::New(m, _) => m,
        other => panic!("expected a new message, got {other:?}"),
    }
}

async fn stored(store: &PgChatStore, chat: ChatId) -> Vec<MessageRecord> {
    store
        .messages_after(chat, 0, None, 100_000)
        .await
        .expect("messages")
}

/// (chat_id, seq) of every outbox row, in id order.
async fn outbox(db: &TestDb) -> Vec<(i64, i64)> {
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query_as("SELECT chat_id, seq FROM outbox WHERE kind = 'message_created' ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("outbox")
}

/// Holds `chat`'s row lock from another connection until the returned transaction ends:
/// the groups in flight wait for it, and senders arriving meanwhile gather into one group.
async fn hold_lock(db: &TestDb, chat: ChatId) -> PgConnection {
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    sqlx::query("SELECT id FROM chats WHERE id = $1 FOR UPDATE")
        .bind(chat.0)
        .execute(&mut conn)
        .await
        .expect("lock");
    conn
}

async fn release(mut conn: PgConnection) {
    sqlx::query("COMMIT")
        .execute(&mut conn)
        .await
        .expect("commit");
}

/// 16 senders on two replicas into one chat, and as many into a second chat, 20 messages
/// each: every chat's seqs are 1..=n with no gap or repeat, every answer is the stored
/// message, every message has exactly one outbox row, and sends did share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_gapless_seqs_and_their_own_message() {
    let db = TestDb::new().await;
    let replicas = [store(&db).await, store(&db).await];
    let chats = [
        chat_of(&replicas[0], 16).await,
        chat_of(&replicas[0], 16).await,
    ];
    let mut tasks = Vec::new();
    for sender in 1..=16i64 {
        for (c, chat) in chats.iter().enumerate() {
            let store = replicas[(sender as usize + c) % 2].clone();
            let chat = *chat;
            tasks.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0..20 {
                    let text = format!("{sender}/{i}");
                    answers.push(new_message(send(&store, chat, sender, &text, None).await));
                }
                answers
            }));
        }
    }
    let mut answered: BTreeMap<(i64, i64), MessageRecord> = BTreeMap::new();
    for t in tasks {
        let answers = t.await.expect("sender");
        // One sender's messages are stored in the order it sent them.
        assert!(answers.windows(2).all(|w| w[0].seq < w[1].seq));
        for m in answers {
            assert!(
                answered.insert((m.chat_id, m.seq), m).is_none(),
                "seq given twice"
            );
        }
    }
    for chat in chats {
        let stored = stored(&replicas[1], chat).await;
        let seqs: Vec<i64> = stored.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=320).collect::<Vec<_>>(), "chat {}", chat.0);
        for m in &stored {
            let a = &answered[&(chat.0, m.seq)];
            assert_eq!(
                (&a.text, a.sender_id, &a.sender_username, a.created_at),
                (&m.text, m.sender_id, &m.sender_username, m.created_at)
            );
        }
        let last = replicas[0].last_seq(chat).await.expect("last seq");
        assert_eq!(last, Some(320));
        // Grouped or alone, each message was stored under the chat's membership version.
        let version = replicas[0]
            .chat(chat)
            .await
            .expect("chat")
            .expect("exists")
            .members_version;
        assert!(answered
            .values()
            .filter(|m| m.chat_id == chat.0)
            .all(|m| m.members_version == Some(version)));
        let commits: std::collections::HashSet<_> = stored.iter().map(|m| m.created_at).collect();
        assert!(
            commits.len() < stored.len(),
            "no two sends shared a commit in chat {}",
            chat.0
        );
    }
    let mut events = outbox(&db).await;
    events.sort();
    let mut expected: Vec<(i64, i64)> = answered.keys().copied().collect();
    expected.sort();
    assert_eq!(events, expected, "one outbox row per message");
}

/// One group with members of two chats, a non-member, a sender of a chat that does not
/// exist: the non-members get NoChat, the others consecutive seqs in the group's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_in_a_group_is_refused_alone() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let (a, b) = (chat_of(&store, 3).await, chat_of(&store, 2).await);
    let texts: Vec<MessageText> = (0..6)
        .map(|i| MessageText::parse(format!("m{i}")).expect("text"))
        .collect();
    let msg = |i: usize, chat: ChatId, sender: i64| NewMessage {
        chat_id: chat,
        sender_id: sender,
        sender_username: "someone",
        text: &texts[i],
        idempotency_key: None,
    };
    let group = [
        msg(0, a, 1),
        msg(1, b, 3), // not a member of b
        msg(2, b, 2),
        msg(3, ChatId(a.0 + b.0 + 100), 1), // no such chat
        msg(4, a, 3),
        msg(5, a, 9), // not a member of a
    ];
    let out = store.insert_batch(&group).await.expect("group");
    let seqs: Vec<Option<(i64, i64, String)>> = out
        .into_iter()
        .map(|i| match i {
            Inserted::New(m, _) => Some((m.chat_id, m.seq, m.text)),
            Inserted::NoChat => None,
            Inserted::Duplicate(m) => panic!("no key was given, yet {m:?}"),
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            Some((a.0, 1, "m0".into())),
            None,
            Some((b.0, 1, "m2".into())),
            None,
            Some((a.0, 2, "m4".into())),
            None,
        ]
    );
    assert_eq!(store.last_seq(a).await.expect("a"), Some(2));
    assert_eq!(store.last_seq(b).await.expect("b"), Some(1));
    assert_eq!(outbox(&db).await.len(), 3);

    // The same through the batcher: senders gathered behind a held lock into one group.
    let lock = hold_lock(&db, a).await;
    let store2 = store.clone();
    let outsider = tokio::spawn(async move { send(&store2, a, 7, "outsider", None).await });
    let members: Vec<_> = (1..=3)
        .map(|s| {
            let store = store.clone();
            tokio::spawn(async move { send(&store, a, s, &format!("member {s}"), None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    release(lock).await;
    assert!(matches!(
        outsider.await.expect("outsider"),
        Inserted::NoChat
    ));
    for m in members {
        new_message(m.await.expect("member"));
    }
    let seqs: Vec<i64> = stored(&store, a).await.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

/// A key repeated inside one group, and the same key again in a later group, are answered
/// with the first message; one message is stored, and the seqs stay gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_answers_with_the_first_message() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let chat = chat_of(&store, 4).await;

    // A group that names one key twice fails whole: the two are never both stored.
    let text = MessageText::parse("twice".into()).expect("text");
    let key = IdempotencyKey::parse("k-twice").expect("key");
    let twice = NewMessage {
        chat_id: chat,
        sender_id: 1,
        sender_username: "user1",
        text: &text,
        idempotency_key: key.as_ref(),
    };
    let copy = NewMessage { ..twice };
    assert!(store.insert_batch(&[twice, copy]).await.is_err());
    assert_eq!(store.last_seq(chat).await.expect("seq"), Some(0));

    // Through the batcher: retries of one send, with other sends, gathered into a group.
    let lock = hold_lock(&db, chat).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                send(&store, chat, 2, "retried", Some("k-1")).await
            } else {
                send(&store, chat, 3, &format!("other {i}"), None).await
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    release(lock).await;
    let mut firsts = Vec::new();
    let mut duplicates = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match (i % 2, t.await.expect("sender")) {
            (0, Inserted::New(m, _)) => firsts.push(m),
            (0, Inserted::Duplicate(m)) => duplicates.push(m),
            (1, Inserted::New(..)) => {}
            (_, other) => panic!("send {i}: {other:?}"),
        }
    }
    assert_eq!(firsts.len(), 1, "one of the retries is stored");
    assert_eq!(duplicates.len(), 3);
    let first = &firsts[0];
    for d in &duplicates {
        assert_eq!((d.seq, &d.text), (first.seq, &first.text));
    }

    // Across groups: the key again, alone and inside a later group.
    match send(&store, chat, 2, "retried", Some("k-1")).await {
        Inserted::Duplicate(m) => assert_eq!(m.seq, first.seq),
        other => panic!("expected the first message, got {other:?}"),
    }
    let lock = hold_lock(&db, chat).await;
    let later: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                if i == 0 {
                    send(&store, chat, 2, "retried", Some("k-1")).await
                } else {
                    send(
                        &store,
                        chat,
                        4,
                        &format!("later {i}"),
                        Some(&format!("k-l{i}")),
                    )
                    .await
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    release(lock).await;
    for (i, t) in later.into_iter().enumerate() {
        match (i, t.await.expect("sender")) {
            (0, Inserted::Duplicate(m)) => assert_eq!(m.seq, first.seq),
            (0, other) => panic!("expected the first message, got {other:?}"),
            (_, m) => {
                new_message(m);
            }
        }
    }
    let stored = stored(&store, chat).await;
    let seqs: Vec<i64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert_eq!(stored.iter().filter(|m| m.text == "retried").count(), 1);
    assert_eq!(outbox(&db).await.len(), 8);
}
