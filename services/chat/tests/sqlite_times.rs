//! The SQLite chat database's move from integer microseconds to RFC 3339 text times
//! (migration 7): a database written before it, with rows in every table that has a time,
//! is migrated by opening the store, and reads back the same times to the microsecond, in
//! the same orders (chat list pages by last activity), with AUTOINCREMENT ids never handed
//! out again and foreign keys still cascading.

use std::time::Duration;

use chat_common::db::connect_sqlite;
use chat_service::{
    domain::{ChatId, MessageText, Title},
    store::{sqlite::MIGRATOR, ChatCursor, ChatStore, EventKind, Inserted, NewMessage},
};
use chat_testkit::{with_backend, Backend, TestDb};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{
    error::BoxDynError,
    migrate::{Migration, MigrationSource, Migrator},
    SqlitePool,
};

/// The first migration that stores times as text.
const TEXT_TIMES: i64 = 7;

/// Some migrations of the chat schema, as a source for a migrator.
#[derive(Debug)]
struct Before(Vec<Migration>);

impl MigrationSource<'static> for Before {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { Ok(self.0) })
    }
}

/// The schema as it was before times became text.
async fn migrate_to_integer_times(pool: &SqlitePool) {
    let old: Vec<Migration> = MIGRATOR
        .iter()
        .filter(|m| m.version < TEXT_TIMES)
        .cloned()
        .collect();
    assert_eq!(old.len(), 6, "migrations 1 to 6 store integer microseconds");
    Migrator::new(Before(old))
        .await
        .expect("old migrator")
        .run(pool)
        .await
        .expect("old migrations");
}

async fn exec(pool: &SqlitePool, sql: &str) {
    sqlx::query(sql).execute(pool).await.expect(sql);
}

fn at(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).expect("a time")
}

/// 2024-12-07T02:53:20Z, in microseconds.
const T: i64 = 1_733_540_000_000_000;

/// Every chat `user` sees, a page of `limit` at a time, as the service pages them.
async fn all_pages(store: &dyn ChatStore, user: i64, limit: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_chats(user, limit, cursor).await.expect("a page");
        ids.extend(page.iter().map(|c| c.id));
        match page.last() {
            Some(last) if page.len() as i64 == limit => {
                cursor = Some(ChatCursor {
                    last_activity_micros: last.last_activity_at.timestamp_micros(),
                    id: last.id,
                });
            }
            _ => return ids,
        }
    }
}

async fn times_survive_the_move_to_text() {
    let db = TestDb::new().await;
    let pool = connect_sqlite(&db.url, 1).await.expect("open");
    migrate_to_integer_times(&pool).await;
    // Chats 1 to 5 for user 7 (2 and 3 tie on last activity, the id breaks the tie; 4 is
    // the only one with microseconds at the end of a second), chat 6 of another user, and
    // chat 7 created and deleted: its id must not come back.
    let chats = [
        (1, T + 1, T + 10),
        (2, T + 2, T + 500_000),
        (3, T + 3, T + 500_000),
        (4, T + 4, T + 999_999),
        (5, T + 5, T + 1_000_000),
        (6, T + 6, T + 2_000_000),
        (7, T + 7, T + 7),
    ];
    for (id, created, active) in chats {
        exec(
            &pool,
            &format!(
                "INSERT INTO chats (id, title, creator_id, created_at, last_activity_at) \
                 VALUES ({id}, 'chat {id}', 7, {created}, {active})"
            ),
        )
        .await;
        let member = if id == 6 { 8 } else { 7 };
        exec(
            &pool,
            &format!(
                "INSERT INTO chat_members (chat_id, user_id, username, joined_at) \
                 VALUES ({id}, {member}, 'user{member}', {})",
                created + 1
            ),
        )
        .await;
    }
    exec(&pool, "DELETE FROM chats WHERE id = 7").await;
    exec(
        &pool,
        &format!(
            "INSERT INTO chat_members (chat_id, user_id, username, joined_at, last_read_seq) \
             VALUES (1, 9, 'user9', {}, 1)",
            T + 123_457
        ),
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO messages (chat_id, seq, sender_id, sender_username, text, \
             created_at, edited_at, preview_url, preview_title) \
             VALUES (1, 1, 7, 'user7', 'edited', {}, {}, 'https://example.com/', 'Example')",
            T + 100,
            T + 200_001
        ),
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO messages (chat_id, seq, sender_id, sender_username, text, \
             idempotency_key, created_at, deleted_at) \
             VALUES (1, 2, 9, 'user9', '', 'k', {}, {})",
            T + 300,
            T + 400
        ),
    )
    .await;
    exec(&pool, "UPDATE chats SET last_seq = 2 WHERE id = 1").await;
    let now = Utc::now().timestamp_micros();
    let hour = 3_600_000_000;
    // Outbox: 1 is claimable, 2 is claimed for an hour yet, 3 was published: its id must
    // not come back either.
    for (id, claimed) in [
        (1, "NULL".to_owned()),
        (2, (now + hour).to_string()),
        (3, "NULL".into()),
    ] {
        exec(
            &pool,
            &format!(
                "INSERT INTO outbox (id, chat_id, seq, kind, created_at, claimed_until) \
                 VALUES ({id}, 1, 1, 'message_edited', {T}, {claimed})"
            ),
        )
        .await;
    }
    exec(&pool, "DELETE FROM outbox WHERE id = 3").await;
    exec(
        &pool,
        &format!(
            "INSERT INTO deleted_users (user_id, deleted_at) VALUES (20, {}), (21, {T})",
            now - 1
        ),
    )
    .await;
    pool.close().await;

    // Opening the store applies migration 7.
    let store = chat_service::store::open(&db.url, 2, &chat_common::Shutdown::new())
        .await
        .expect("migrated");

    let chat = store.chat(ChatId(4)).await.expect("read").expect("chat 4");
    assert_eq!(chat.created_at, at(T + 4));
    assert_eq!(chat.last_activity_at, at(T + 999_999));
    let chat = store
        .chat_for_member(ChatId(1), 9)
        .await
        .expect("read")
        .expect("chat 1");
    assert_eq!(
        (chat.last_seq, chat.last_read_seq, chat.unread_count),
        (2, 1, 0)
    );
    assert_eq!(chat.member_count, 2);
    assert_eq!(chat.last_activity_at, at(T + 10));

    let members = store.list_members(ChatId(1)).await.expect("members");
    let joined: Vec<_> = members.iter().map(|m| (m.user_id, m.joined_at)).collect();
    assert_eq!(joined, [(7, at(T + 2)), (9, at(T + 123_457))]);

    let edited = store.message(ChatId(1), 1).await.expect("read").expect("1");
    assert_eq!(edited.created_at, at(T + 100));
    assert_eq!(edited.edited_at, Some(at(T + 200_001)));
    assert!(!edited.deleted);
    let preview = edited.link_preview.expect("its preview");
    assert_eq!(
        (preview.url.as_str(), preview.title.as_str()),
        ("https://example.com/", "Example")
    );
    let deleted = store.message(ChatId(1), 2).await.expect("read").expect("2");
    assert_eq!((deleted.created_at, deleted.edited_at), (at(T + 300), None));
    assert!(deleted.deleted);

    // Newest activity first, ties by id, across pages of every size.
    for limit in 1..=6 {
        assert_eq!(
            all_pages(store.as_ref(), 7, limit).await,
            [5, 4, 3, 2, 1],
            "pages of {limit}"
        );
    }

    let claimed = store
        .claim_events(Duration::from_secs(1), Duration::from_secs(30), 10)
        .await
        .expect("claim");
    let claimed: Vec<_> = claimed.iter().map(|e| (e.id, e.kind)).collect();
    assert_eq!(claimed, [(1, EventKind::MessageEdited)]);
    assert_eq!(
        store
            .deleted_within(Duration::from_secs(3600))
            .await
            .expect("deleted"),
        [20]
    );

    // New rows: ids continue after the highest ever handed out, times are text and sort
    // after the old ones.
    let title = Title::parse("new").expect("title");
    let new = store
        .create_chat(7, &title, &[(7, "user7".into())])
        .await
        .expect("create");
    assert_eq!(new.id, 8, "chat 7's id is not handed out again");
    let text = MessageText::parse("after the move".into()).expect("text");
    let sent = store
        .insert_message(NewMessage {
            chat_id: ChatId(2),
            sender_id: 7,
            sender_username: "user7",
            text: &text,
            idempotency_key: None,
        })
        .await
        .expect("send");
    let Inserted::New(sent, event) = sent else {
        panic!("stored: {sent:?}");
    };
    assert_eq!(sent.seq, 1);
    assert_eq!(event, 4, "outbox row 3's id is not handed out again");
    assert_eq!(all_pages(store.as_ref(), 7, 2).await, [2, 8, 5, 4, 3, 1]);

    let pool = connect_sqlite(&db.url, 1).await.expect("open");
    for (table, column) in [
        ("chats", "created_at"),
        ("chats", "last_activity_at"),
        ("chat_members", "joined_at"),
        ("messages", "created_at"),
        ("outbox", "created_at"),
        ("deleted_users", "deleted_at"),
    ] {
        let kinds: Vec<String> =
            sqlx::query_scalar(&format!("SELECT DISTINCT typeof({column}) FROM {table}"))
                .fetch_all(&pool)
                .await
                .expect("types");
        assert_eq!(kinds, ["text"], "{table}.{column}");
    }
    let stored: String = sqlx::query_scalar("SELECT last_activity_at FROM chats WHERE id = 4")
        .fetch_one(&pool)
        .await
        .expect("time");
    assert_eq!(stored, "2024-12-07T02:53:20.999999Z");
    // Members and messages still go with their chat.
    assert!(store.delete_chat(ChatId(1)).await.expect("delete"));
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM chat_members WHERE chat_id = 1) \
         + (SELECT count(*) FROM messages WHERE chat_id = 1)",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(left, 0);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_times_survive_the_move_to_text() {
    with_backend(Backend::Sqlite, times_survive_the_move_to_text()).await;
}
