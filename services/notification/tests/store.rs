//! The delivery store under concurrent callers, on both engines (`backend_tests!` at the
//! end): records and claims of many messages at once (on PostgreSQL, batched into shared
//! statements) give every delivery to exactly one claimer, and outcomes written together
//! land on the right rows.

use std::{collections::HashMap, time::Duration};

use chat_common::Shutdown;
use chat_testkit::TestDb;
use notification_service::store::{self, DeliveryState, MessageRecord, Recipient};

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

async fn many_concurrent_records_give_each_delivery_to_one_claimer() {
    let db = TestDb::new().await;
    let store = store::open(&db.url, 4, &Shutdown::new())
        .await
        .expect("store");
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
        let deliveries = store
            .deliveries(*chat_id, *seq)
            .await
            .expect("read")
            .expect("recorded");
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
    let db = TestDb::new().await;
    let store = store::open(&db.url, 2, &Shutdown::new())
        .await
        .expect("store");
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
    let db = TestDb::new().await;
    let store = store::open(&db.url, 2, &Shutdown::new())
        .await
        .expect("store");
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

chat_testkit::backend_tests!(
    many_concurrent_records_give_each_delivery_to_one_claimer,
    an_expired_claim_is_taken_over_by_the_next_record,
    a_message_without_recipients_is_recorded_with_nothing_to_claim,
);
