//! The first page of a stream's history, read with the caller's membership (what
//! `Connect` does when the chat's fan-out already runs on the replica), on both engines:
//! nothing for a non-member or a chat that does not exist, an empty page for a member of a
//! chat without messages, and otherwise the same page the stream would read alone.

use std::sync::Arc;

use chat_service::{
    domain::{ChatId, MessageText, Title},
    store::{ChatStore, HistoryFrom, Inserted, MessageRecord, NewMessage},
};
use chat_testkit::TestDb;

async fn open(db: &TestDb) -> Arc<dyn ChatStore> {
    chat_service::store::open(&db.url, 2, &chat_common::Shutdown::new())
        .await
        .expect("store")
}

async fn send(store: &dyn ChatStore, chat: ChatId, text: &str) -> MessageRecord {
    let text = MessageText::parse(text.to_owned()).expect("text");
    match store
        .insert_message(NewMessage {
            chat_id: chat,
            sender_id: 1,
            sender_username: "",
            text: &text,
            idempotency_key: None,
        })
        .await
        .expect("insert")
    {
        Inserted::New(m, _) => m,
        other => panic!("expected a new message, got {other:?}"),
    }
}

fn seqs(page: &[MessageRecord]) -> Vec<i64> {
    page.iter().map(|m| m.seq).collect()
}

async fn a_members_history_is_read_with_their_membership() {
    let db = TestDb::new().await;
    let store = open(&db).await;
    let people = [(1, "alice".to_owned()), (2, "bob".to_owned())];
    let chat = store
        .create_chat(1, &Title::parse("h").expect("title"), &people)
        .await
        .expect("create");
    let chat = ChatId(chat.id);
    let latest = HistoryFrom::Latest(3);

    let empty = store
        .history_for_member(chat, 2, latest)
        .await
        .expect("read");
    assert_eq!(
        empty.map(|p| p.len()),
        Some(0),
        "a member of a chat without messages"
    );
    assert!(store
        .history_for_member(chat, 3, latest)
        .await
        .expect("read")
        .is_none());
    assert!(store
        .history_for_member(ChatId(chat.0 + 1000), 1, latest)
        .await
        .expect("read")
        .is_none());

    for n in 1..=5 {
        send(store.as_ref(), chat, &format!("m{n}")).await;
    }
    store.delete_message(chat, 4).await.expect("delete");
    for from in [
        latest,
        HistoryFrom::Latest(50),
        HistoryFrom::After(1, 2),
        HistoryFrom::After(3, 50),
        HistoryFrom::After(5, 50),
    ] {
        let page = store
            .history_for_member(chat, 2, from)
            .await
            .expect("read")
            .expect("bob is a member");
        let alone = store.history(chat, from).await.expect("read alone");
        assert_eq!(seqs(&page), seqs(&alone), "{from:?}");
        assert!(page.iter().all(|m| !m.deleted && !m.text.is_empty()));
    }
    let page = store
        .history_for_member(chat, 2, latest)
        .await
        .expect("read")
        .expect("member");
    assert_eq!(
        seqs(&page),
        [2, 3, 5],
        "the latest three live ones, oldest first"
    );
    assert_eq!(page[0].text, "m2");

    store.remove_member(chat, 2).await.expect("remove bob");
    assert!(store
        .history_for_member(chat, 2, latest)
        .await
        .expect("read")
        .is_none());
}

chat_testkit::backend_tests!(a_members_history_is_read_with_their_membership);
