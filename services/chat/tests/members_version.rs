//! A chat's membership version, on both engines: every join and every leave raises it, a
//! change that changes nobody does not, and a message is stored under the version its
//! insert saw (on the record the insert returns and on its outbox row, from which the relay
//! publishes it). The notifier trusts the members it keeps only for messages up to the
//! version it read them at, so a version that stood still across a removal would email
//! the removed member.

use std::sync::Arc;

use chat_service::{
    domain::{ChatId, MessageText, Title},
    store::{ChatStore, Inserted, Removed},
};
use chat_testkit::TestDb;

async fn open(db: &TestDb) -> Arc<dyn ChatStore> {
    chat_service::store::open(&db.url, 2, &chat_common::Shutdown::new())
        .await
        .expect("store")
}

async fn version(store: &dyn ChatStore, chat: ChatId) -> i64 {
    store
        .chat(chat)
        .await
        .expect("chat")
        .expect("the chat exists")
        .members_version
}

/// The version `sender`'s next message in `chat` is stored under.
async fn stored_under(store: &dyn ChatStore, chat: ChatId, sender: i64) -> Option<i64> {
    let text = MessageText::parse("hello".to_owned()).expect("text");
    match store
        .insert_message(chat_service::store::NewMessage {
            chat_id: chat,
            sender_id: sender,
            sender_username: "",
            text: &text,
            idempotency_key: None,
        })
        .await
        .expect("insert")
    {
        Inserted::New(m, _) => m.members_version,
        other => panic!("expected a new message, got {other:?}"),
    }
}

async fn joins_and_leaves_raise_the_version_and_messages_carry_it() {
    let db = TestDb::new().await;
    let store = open(&db).await;
    let people = [(1, "alice".to_owned()), (2, "bob".to_owned())];
    let chat = store
        .create_chat(1, &Title::parse("v").expect("title"), &people)
        .await
        .expect("create");
    let chat = ChatId(chat.id);
    let created = version(store.as_ref(), chat).await;
    assert!(created > 0, "the first members are a change");
    assert_eq!(stored_under(store.as_ref(), chat, 1).await, Some(created));

    store
        .add_members(chat, &[(3, "carol".to_owned())], 100)
        .await
        .expect("add carol");
    let joined = version(store.as_ref(), chat).await;
    assert!(joined > created, "a join raises it: {created} → {joined}");
    assert_eq!(stored_under(store.as_ref(), chat, 2).await, Some(joined));

    // Adding someone who is a member already changes nobody.
    store
        .add_members(chat, &[(3, "carol".to_owned())], 100)
        .await
        .expect("add carol again");
    assert_eq!(version(store.as_ref(), chat).await, joined);
    // Nor does a read marker.
    store.mark_read(chat, 2, 1).await.expect("mark read");
    assert_eq!(version(store.as_ref(), chat).await, joined);

    let removed = store.remove_member(chat, 3).await.expect("remove carol");
    assert!(matches!(removed, Removed::Member { .. }), "{removed:?}");
    let left = version(store.as_ref(), chat).await;
    assert!(left > joined, "a leave raises it: {joined} → {left}");
    assert_eq!(stored_under(store.as_ref(), chat, 1).await, Some(left));

    // Removing someone who is not a member changes nobody.
    store.remove_member(chat, 3).await.expect("remove again");
    assert_eq!(version(store.as_ref(), chat).await, left);

    // The outbox rows keep the versions, for the relay to publish with their events.
    let rows = store
        .claim_events(
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(60),
            100,
        )
        .await
        .expect("claim");
    let created_rows: Vec<Option<i64>> = rows
        .iter()
        .filter(|r| r.kind == chat_service::store::EventKind::MessageCreated)
        .map(|r| r.members_version)
        .collect();
    assert_eq!(created_rows, [Some(created), Some(joined), Some(left)]);

    // A chat deleted with its members (the last one leaving) is still deleted whole.
    store.remove_member(chat, 1).await.expect("alice leaves");
    let last = store.remove_member(chat, 2).await.expect("bob leaves");
    assert!(matches!(last, Removed::ChatDeleted), "{last:?}");
    assert!(store.chat(chat).await.expect("chat").is_none());
}

chat_testkit::backend_tests!(joins_and_leaves_raise_the_version_and_messages_carry_it);
