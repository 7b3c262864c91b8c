//! The delivery store under concurrent callers, on both engines (`backend_tests!` at the
//! end): records and claims of many messages at once (on PostgreSQL, batched into shared
//! statements) give every delivery to exactly one claimer, and outcomes written together
//! land on the right rows. PostgreSQL keeps a message's emails in the message's row until
//! they part ways; the same calls must find the same states there as SQLite's rows give,
//! whichever form the message is in, and rows written before that form existed are kept.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chat_common::Shutdown;
use chat_testkit::TestDb;
use notification_service::store::{
    self, DeliveryRecord, DeliveryState, DeliveryStore, MessageRecord, Recipient,
};

const LEASE: Duration = Duration::from_secs(60);

fn message(chat_id: i64, seq: i64) -> MessageRecord {
    MessageRecord {
        chat_id,
        seq,
        sender_id: 1,
        sender_username: "alice".into(),
        chat_title: format!("chat {chat_id}"),
        text: format!("message {seq} of chat {chat_id}"),
        sent_at: chrono::Utc::now(),
    }
}

fn recipients(chat_id: i64) -> Vec<Recipient> {
    (2..=6)
        .map(|u| Recipient {
            user_id: u + chat_id * 100,
            email: format!("u{u}@c{chat_id}.example"),
            username: format!("u{u}"),
        })
        .collect()
}

/// The store on `db`, with at most `connections`.
async fn open(db: &TestDb, connections: u32) -> Arc<dyn DeliveryStore> {
    store::open(&db.url, connections, &Shutdown::new())
        .await
        .expect("store")
}

/// A fresh database on the test's engine (kept until the test ends) and its store.
async fn fresh(connections: u32) -> (TestDb, Arc<dyn DeliveryStore>) {
    let db = TestDb::new().await;
    let store = open(&db, connections).await;
    (db, store)
}

/// The deliveries of a recorded message.
async fn deliveries_of(store: &dyn DeliveryStore, chat_id: i64, seq: i64) -> Vec<DeliveryRecord> {
    store
        .deliveries(chat_id, seq)
        .await
        .expect("read")
        .expect("recorded")
}

async fn many_concurrent_records_give_each_delivery_to_one_claimer() {
    let (_db, store) = fresh(4).await;
    // 40 messages over 4 chats, each recorded twice at once (its event and the saga's
    // call), all concurrently: on PostgreSQL they share batches, duplicates included.
    let calls: Vec<_> = (0..80)
        .map(|i| {
            let store = store.clone();
            let (chat_id, seq) = (1 + (i / 2) % 4, 1 + (i / 2) / 4);
            tokio::spawn(async move {
                let out = store
                    .record_and_claim(&message(chat_id, seq), &recipients(chat_id), LEASE)
                    .await
                    .expect("record");
                (chat_id, seq, out)
            })
        })
        .collect();
    let mut firsts: HashMap<(i64, i64), usize> = HashMap::new();
    let mut claimed: HashMap<(i64, i64), Vec<i64>> = HashMap::new();
    for c in calls {
        let (chat_id, seq, (new, deliveries)) = c.await.expect("task");
        if new {
            *firsts.entry((chat_id, seq)).or_default() += 1;
        }
        for d in deliveries {
            assert_eq!(d.state, DeliveryState::Sending);
            assert_eq!(d.attempts, 0);
            claimed
                .entry((chat_id, seq))
                .or_default()
                .push(d.recipient.user_id);
        }
    }
    assert_eq!(firsts.len(), 40, "every message recorded once: {firsts:?}");
    assert!(firsts.values().all(|n| *n == 1), "{firsts:?}");
    for ((chat_id, seq), mut ids) in claimed.clone() {
        ids.sort();
        let want: Vec<i64> = recipients(chat_id).iter().map(|r| r.user_id).collect();
        assert_eq!(ids, want, "each delivery of {chat_id}/{seq} claimed once");
        let recorded = store
            .message(chat_id, seq)
            .await
            .expect("read")
            .expect("recorded");
        assert_eq!(recorded.text, format!("message {seq} of chat {chat_id}"));
    }
    assert_eq!(claimed.len(), 40);

    // Held claims are not taken again, by a record or a claim.
    let (new, again) = store
        .record_and_claim(&message(1, 1), &recipients(1), LEASE)
        .await
        .expect("record again");
    assert!(!new);
    assert!(again.is_empty(), "{again:?}");
    assert!(store.claim(1, 1, LEASE).await.expect("claim").is_empty());

    // Outcomes of many messages written at once land on their own rows.
    let finishes: Vec<_> = claimed
        .iter()
        .map(|((chat_id, seq), ids)| {
            let store = store.clone();
            let (chat_id, seq) = (*chat_id, *seq);
            // Every message but one recipient, who fails for good.
            let delivered: Vec<i64> = ids.iter().copied().filter(|id| id % 100 != 6).collect();
            tokio::spawn(async move {
                store
                    .finish_delivered(chat_id, seq, &delivered)
                    .await
                    .expect("finish");
                store
                    .finish(chat_id, seq, chat_id * 100 + 6, Some("550 no such user"))
                    .await
                    .expect("fail");
            })
        })
        .collect();
    for f in finishes {
        f.await.expect("task");
    }
    for (chat_id, seq) in claimed.keys() {
        let deliveries = deliveries_of(&*store, *chat_id, *seq).await;
        assert_eq!(deliveries.len(), 5);
        for d in deliveries {
            let want = if d.recipient.user_id % 100 == 6 {
                DeliveryState::Failed
            } else {
                DeliveryState::Delivered
            };
            assert_eq!(d.state, want, "{chat_id}/{seq} {:?}", d.recipient);
            assert_eq!(d.attempts, 1);
        }
    }
}

async fn an_expired_claim_is_taken_over_by_the_next_record() {
    let (_db, store) = fresh(2).await;
    let short = Duration::from_millis(200);
    let (new, first) = store
        .record_and_claim(&message(7, 1), &recipients(7), short)
        .await
        .expect("record");
    assert!(new);
    assert_eq!(first.len(), 5);
    // One delivery went out; the sender then died holding the rest.
    store
        .finish_delivered(7, 1, &[first[0].recipient.user_id])
        .await
        .expect("finish");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (new, taken) = store
        .record_and_claim(&message(7, 1), &recipients(7), LEASE)
        .await
        .expect("record again");
    assert!(!new, "the first record wins");
    let ids: Vec<i64> = taken.iter().map(|d| d.recipient.user_id).collect();
    let want: Vec<i64> = first[1..].iter().map(|d| d.recipient.user_id).collect();
    assert_eq!(ids, want, "the four left, not the one delivered");
}

async fn a_message_without_recipients_is_recorded_with_nothing_to_claim() {
    let (_db, store) = fresh(2).await;
    let (new, claimed) = store
        .record_and_claim(&message(9, 3), &[], LEASE)
        .await
        .expect("record");
    assert!(new);
    assert!(claimed.is_empty());
    assert_eq!(
        store.deliveries(9, 3).await.expect("read").map(|d| d.len()),
        Some(0)
    );
    // A message never recorded is not one without recipients.
    assert!(store.deliveries(9, 4).await.expect("read").is_none());
}

async fn a_message_claimed_whole_reads_and_ends_as_its_deliveries() {
    let (_db, store) = fresh(2).await;
    let (new, claimed) = store
        .record_and_claim(&message(3, 1), &recipients(3), LEASE)
        .await
        .expect("record");
    assert!(new);
    let ids: Vec<i64> = recipients(3).iter().map(|r| r.user_id).collect();
    let claimed_ids: Vec<i64> = claimed.iter().map(|d| d.recipient.user_id).collect();
    assert_eq!(claimed_ids, ids);
    let read = deliveries_of(&*store, 3, 1).await;
    assert_eq!(read.len(), 5);
    for (d, r) in read.iter().zip(recipients(3)) {
        assert_eq!(d.recipient.user_id, r.user_id);
        assert_eq!(d.recipient.email, r.email);
        assert_eq!(d.recipient.username, r.username);
        assert_eq!((d.state, d.attempts), (DeliveryState::Sending, 0));
    }
    // Held: neither a claim nor a second record takes any of it.
    assert!(store.claim(3, 1, LEASE).await.expect("claim").is_empty());
    let (new, again) = store
        .record_and_claim(&message(3, 1), &recipients(3), LEASE)
        .await
        .expect("record again");
    assert!(!new && again.is_empty(), "{again:?}");

    let at = store.finish_delivered(3, 1, &ids).await.expect("finish");
    // PostgreSQL keeps the message whole and says when; SQLite keeps a row per email.
    assert_eq!(
        at.is_some(),
        chat_testkit::backend() == chat_testkit::Backend::Postgres
    );
    let read = deliveries_of(&*store, 3, 1).await;
    assert_eq!(read.len(), 5);
    for d in &read {
        assert_eq!(
            (d.state, d.attempts),
            (DeliveryState::Delivered, 1),
            "{d:?}"
        );
        assert!(d.error.is_empty());
        // A store that says when it delivered the message whole says what a read returns.
        if let Some(at) = at {
            assert_eq!(d.updated_at, at);
        }
    }
    assert!(store.claim(3, 1, LEASE).await.expect("claim").is_empty());
}

async fn a_whole_claim_that_ran_out_is_taken_whole_by_one_claimer() {
    let (_db, store) = fresh(4).await;
    let (_, first) = store
        .record_and_claim(&message(4, 2), &recipients(4), Duration::from_millis(200))
        .await
        .expect("record");
    assert_eq!(first.len(), 5);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The sender died holding all five; four claimers and a record race for them.
    let claims: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(4, 2, LEASE).await.expect("claim") })
        })
        .collect();
    let (new, by_record) = store
        .record_and_claim(&message(4, 2), &recipients(4), LEASE)
        .await
        .expect("record again");
    assert!(!new);
    let mut taken = vec![by_record];
    for c in claims {
        taken.push(c.await.expect("task"));
    }
    let winners: Vec<_> = taken.iter().filter(|t| !t.is_empty()).collect();
    assert_eq!(winners.len(), 1, "one claimer takes it: {taken:?}");
    let ids: Vec<i64> = winners[0].iter().map(|d| d.recipient.user_id).collect();
    let want: Vec<i64> = recipients(4).iter().map(|r| r.user_id).collect();
    assert_eq!(ids, want);
    assert!(winners[0]
        .iter()
        .all(|d| d.state == DeliveryState::Sending && d.attempts == 0));
}

async fn deliveries_that_part_ways_at_once_each_keep_their_own_outcome() {
    let (_db, store) = fresh(6).await;
    let (_, claimed) = store
        .record_and_claim(&message(5, 1), &recipients(5), LEASE)
        .await
        .expect("record");
    let id = |u: i64| 500 + u;
    assert_eq!(claimed.len(), 5);
    // Five different fates for the five emails of one message, written at the same time:
    // on PostgreSQL each of them splits the message, which must happen once.
    let s = &*store;
    let delivered = [id(6)];
    let (a, b, c, d, e) = tokio::join!(
        s.attempt_failed(5, 1, id(2), "421 busy", LEASE),
        s.release(5, 1, id(3)),
        s.finish(5, 1, id(4), Some("550 no such user")),
        s.finish(5, 1, id(5), None),
        s.finish_delivered(5, 1, &delivered),
    );
    for outcome in [a, b, c, d] {
        outcome.expect("outcome");
    }
    // One email of five: not the whole message.
    assert_eq!(e.expect("delivered"), None);
    let read = deliveries_of(s, 5, 1).await;
    let got: Vec<(i64, DeliveryState, i32, &str)> = read
        .iter()
        .map(|d| (d.recipient.user_id, d.state, d.attempts, d.error.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (id(2), DeliveryState::Sending, 1, "421 busy"),
            (id(3), DeliveryState::Pending, 0, ""),
            (id(4), DeliveryState::Failed, 1, "550 no such user"),
            (id(5), DeliveryState::Delivered, 1, ""),
            (id(6), DeliveryState::Delivered, 1, ""),
        ]
    );
    // Only the email given back is free; the one between tries is still held.
    let ids: Vec<i64> = store
        .claim(5, 1, LEASE)
        .await
        .expect("claim")
        .iter()
        .map(|d| d.recipient.user_id)
        .collect();
    assert_eq!(ids, vec![id(3)]);
}

/// A notifier upgraded while messages were in flight: their deliveries, written as rows
/// of their own before messages carried their recipients, read and claim as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_recorded_before_the_upgrade_are_kept() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    let all =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/notification");
    let before = tempfile::tempdir().expect("tempdir");
    for name in [
        "0001_deliveries.sql",
        "0002_direct_emails.sql",
        "0003_deliveries_without_foreign_key.sql",
    ] {
        std::fs::copy(all.join(name), before.path().join(name)).expect("copy migration");
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::migrate::Migrator::new(before.path())
        .await
        .expect("migrations")
        .run(&mut conn)
        .await
        .expect("migrate to before");
    sqlx::raw_sql(
        "INSERT INTO notified_messages (chat_id, seq, sender_id, sender_username, chat_title, \
            text, sent_at) VALUES (8, 1, 1, 'alice', 'old', 'from before', now()); \
         INSERT INTO deliveries (chat_id, seq, recipient_id, email, username, state, attempts, \
            lease_until) VALUES \
            (8, 1, 2, 'b@x.example', 'bob', 'delivered', 1, NULL), \
            (8, 1, 3, 'c@x.example', 'carol', 'sending', 0, now() - interval '1 minute')",
    )
    .execute(&mut conn)
    .await
    .expect("rows from before");
    conn.close().await.expect("close");

    let store = open(&db, 2).await;
    let read = deliveries_of(&*store, 8, 1).await;
    let got: Vec<(i64, DeliveryState)> = read
        .iter()
        .map(|d| (d.recipient.user_id, d.state))
        .collect();
    assert_eq!(
        got,
        vec![(2, DeliveryState::Delivered), (3, DeliveryState::Sending)]
    );
    let (new, taken) = store
        .record_and_claim(&message(8, 1), &recipients(8), LEASE)
        .await
        .expect("record again");
    assert!(!new, "recorded before the upgrade");
    let ids: Vec<i64> = taken.iter().map(|d| d.recipient.user_id).collect();
    assert_eq!(
        ids,
        vec![3],
        "the expired claim, not the recipients of the new record"
    );
    store.finish_delivered(8, 1, &[3]).await.expect("finish");
    let read = deliveries_of(&*store, 8, 1).await;
    assert!(
        read.iter().all(|d| d.state == DeliveryState::Delivered),
        "{read:?}"
    );
}

chat_testkit::backend_tests!(
    many_concurrent_records_give_each_delivery_to_one_claimer,
    an_expired_claim_is_taken_over_by_the_next_record,
    a_message_without_recipients_is_recorded_with_nothing_to_claim,
    a_message_claimed_whole_reads_and_ends_as_its_deliveries,
    a_whole_claim_that_ran_out_is_taken_whole_by_one_claimer,
    deliveries_that_part_ways_at_once_each_keep_their_own_outcome,
);
