//! The PostgreSQL backend of [`DeliveryStore`](super::DeliveryStore).
//!
//! A message's emails live in the message's own row while they share one fate: recorded
//! and claimed together, then all delivered on the first try, which is what almost every
//! message does. That is one insert and one update (kept on its page) per message instead
//! of an insert and an update per recipient. As soon as the emails part ways (one fails a
//! try, is given back, or ends alone) the message is *split*: in one statement its row
//! turns `split` and each email becomes a row of `deliveries` in the state they shared,
//! and from then on every operation works on those rows as before. Readers see either
//! form whole, never a mix: the split is one statement and a read is one snapshot.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{postgres::PgRow, FromRow, PgPool, Row};

use chat_common::batch::Batcher;

use super::{
    DeliveryRecord, DeliveryState, DeliveryStore, DirectEmailRecord, MessageRecord, NewEmail,
    Recipient, DELIVERY_COLUMNS, EMAIL_COLUMNS,
};

/// The PostgreSQL schema of the delivery records.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/notification");

/// Most messages recorded, or outcomes written, in one statement.
const MAX_BATCH: usize = 128;
/// Batches in the database at once, per batcher. One: what comes in while a batch is in
/// the database waits and goes in the next one, so batches grow with the load. Two (one
/// committing while the next forms) split the same callers into batches of about two
/// messages and cost PostgreSQL a quarter more a message: `chat-bench send`, three
/// alternating runs, 1,148-1,227 msg/s with two, 1,470-1,482 with one (PostgreSQL 926-993
/// against 709-731 µs a message), every email drained in both.
const IN_FLIGHT: usize = 1;

/// The delivery records on PostgreSQL, for the split deployment.
pub struct PgDeliveryStore {
    pool: PgPool,
    /// Records and claims of concurrent messages, one statement per batch.
    records: Batcher<RecordItem, (bool, Vec<DeliveryRecord>)>,
    /// First-try deliveries of concurrent messages, one statement per batch.
    delivered: Batcher<DeliveredItem, Option<DateTime<Utc>>>,
}

impl PgDeliveryStore {
    /// The store on `pool`, with a relaxed pool of `relaxed` connections beside it for
    /// records and claims.
    pub fn new(pool: PgPool, relaxed: u32) -> Self {
        let records = {
            // Records and claims are redone when lost (see `record_and_claim`).
            let pool = chat_common::db::relaxed_commits(&pool, relaxed);
            Batcher::start("notification_record", MAX_BATCH, IN_FLIGHT, move |items| {
                record_and_claim(pool.clone(), items)
            })
        };
        let delivered = {
            let pool = pool.clone();
            Batcher::start(
                "notification_delivered",
                MAX_BATCH,
                IN_FLIGHT,
                move |items| finish_delivered(pool.clone(), items),
            )
        };
        Self {
            pool,
            records,
            delivered,
        }
    }

    /// The message's deliveries, by recipient, in whichever form it is kept (whole or
    /// split, read in one snapshot); none when it is not recorded.
    async fn read_deliveries(&self, chat_id: i64, seq: i64) -> anyhow::Result<Vec<DeliveryRecord>> {
        sqlx::query_as(&READ_DELIVERIES)
            .bind(chat_id)
            .bind(seq)
            .fetch_all(&self.pool)
            .await
            .context("reading deliveries")
    }

    /// Splits the message (see [`split`]) before an operation on one of its deliveries.
    async fn split(&self, chat_id: i64, seq: i64) -> anyhow::Result<()> {
        split(&self.pool, [(chat_id, seq)]).await
    }
}

/// The statement of [`PgDeliveryStore::read_deliveries`]: `$1` chat id, `$2` seq.
static READ_DELIVERIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {WHOLE_FIELDS} FROM notified_messages w, {WHOLE_RECIPIENTS} \
         WHERE w.chat_id = $1 AND w.seq = $2 AND w.state <> 'split' \
         UNION ALL \
         SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE chat_id = $1 AND seq = $2 \
         ORDER BY recipient_id"
    )
});

/// The statement of [`DeliveryStore::claim`]: `$1` chat id, `$2` seq, `$3` the lease in
/// seconds; the message's recipients when it was claimed whole and that claim ran out, or
/// its split deliveries that are pending or whose claim ran out.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {whole}, \
         due AS ( \
             SELECT chat_id, seq, recipient_id FROM deliveries \
             WHERE chat_id = $1 AND seq = $2 \
               AND (state = 'pending' OR (state = 'sending' AND lease_until < now())) \
             FOR UPDATE SKIP LOCKED), \
         {taken} \
         SELECT {WHOLE_FIELDS} FROM whole w, {WHOLE_RECIPIENTS} \
         UNION ALL SELECT {DELIVERY_COLUMNS} FROM taken",
        whole = take_whole(
            "JOIN (VALUES ($1::bigint, $2::bigint)) AS k(chat_id, seq) \
             ON n.chat_id = k.chat_id AND n.seq = k.seq",
            "$3"
        ),
        taken = take_split("$3"),
    )
});

/// One message to record with its recipients and claim.
#[derive(Clone)]
struct RecordItem {
    message: Arc<MessageRecord>,
    recipients: Arc<Vec<Recipient>>,
    lease: Duration,
}

/// Recipients of one message whose email went out on the first try.
#[derive(Clone)]
struct DeliveredItem {
    chat_id: i64,
    seq: i64,
    recipient_ids: Arc<Vec<i64>>,
}

/// Records and claims a batch of messages in one statement on `pool`, whose commits do not
/// wait for the disk (see [`DeliveryStore::record_and_claim`] for why that is safe): the
/// messages that are new, each with its recipients and claimed whole; and, for the messages
/// recorded before, what of them is free to take: a whole claim that ran out, or split
/// deliveries that are pending or whose claim ran out (`SKIP LOCKED`: what a concurrent
/// claimer holds is left to it). Rows inserted by the statement are not in its snapshot, so
/// the second part never sees the first part's messages.
///
/// A message twice in one batch (its event and the saga's call at once) is recorded by
/// the first item; the second claims nothing, as if it had come just after.
async fn record_and_claim(
    pool: PgPool,
    items: Vec<RecordItem>,
) -> anyhow::Result<Vec<(bool, Vec<DeliveryRecord>)>> {
    let first = first_of_each_message(&items);
    let lease = items.iter().map(|i| i.lease).max().unwrap_or_default();
    let (m, r) = batch_columns(&items, &first);
    let rows = sqlx::query(&RECORD_AND_CLAIM)
        .bind(&m.chat_ids)
        .bind(&m.seqs)
        .bind(&m.sender_ids)
        .bind(&m.sender_usernames)
        .bind(&m.chat_titles)
        .bind(&m.texts)
        .bind(&m.sent_ats)
        .bind(&m.firsts)
        .bind(&m.lasts)
        .bind(&r.user_ids)
        .bind(&r.emails)
        .bind(&r.usernames)
        .bind(lease_secs(lease))
        .fetch_all(&pool)
        .await
        .context("recording messages and claiming their deliveries")?;
    let mut out = by_message(&rows)?;
    // The first item of each message gets what the statement did for it, the others nothing.
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let key = (item.message.chat_id, item.message.seq);
            match first.get(&key) {
                Some(&f) if f == i => {
                    let (new, mut claimed) = out.remove(&key).unwrap_or_default();
                    claimed.sort_by_key(|d| d.recipient.user_id);
                    (new, claimed)
                }
                _ => (false, Vec::new()),
            }
        })
        .collect())
}

/// The fields of a delivery (in [`DELIVERY_COLUMNS`]' order) for each recipient `r` of
/// a message claimed or delivered whole, `w` (see [`WHOLE_RECIPIENTS`]): attempts are 0
/// while it is claimed and 1 once delivered.
const WHOLE_FIELDS: &str = "r.recipient_id, r.email, r.username, w.state, \
     CASE w.state WHEN 'delivered' THEN 1 ELSE 0 END AS attempts, '' AS error, \
     COALESCE(w.updated_at, w.recorded_at) AS updated_at";

/// The recipients `r` of the whole message `w`, which has [`WHOLE_COLUMNS`].
const WHOLE_RECIPIENTS: &str = "UNNEST(w.recipient_ids, w.recipient_emails, \
     w.recipient_usernames) AS r(recipient_id, email, username)";

/// What a whole message's `RETURNING` gives for [`WHOLE_FIELDS`].
const WHOLE_COLUMNS: &str = "chat_id, seq, recipient_ids, recipient_emails, \
     recipient_usernames, state, recorded_at, updated_at";

/// The statement of [`record_and_claim`]: `$1`..`$7` the new messages' columns, `$8`/`$9`
/// where each one's recipients start and end (1-based, inclusive) in `$10`..`$12`, the
/// recipients' columns; `$13` the lease in seconds. A row per recorded message (`recorded`
/// true, no delivery) and per delivery claimed.
static RECORD_AND_CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH msg AS ( \
         INSERT INTO notified_messages \
           (chat_id, seq, sender_id, sender_username, chat_title, text, sent_at, \
            recipient_ids, recipient_emails, recipient_usernames, state, lease_until, \
            updated_at) \
         SELECT m.chat_id, m.seq, m.sender_id, m.sender_username, m.chat_title, m.text, \
                m.sent_at, ($10::bigint[])[m.lo:m.hi], ($11::text[])[m.lo:m.hi], \
                ($12::text[])[m.lo:m.hi], \
                CASE WHEN m.lo > m.hi THEN 'delivered' ELSE 'sending' END, \
                CASE WHEN m.lo > m.hi THEN NULL \
                     ELSE now() + make_interval(secs => $13) END, now() \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], \
                     $6::text[], $7::timestamptz[], $8::int[], $9::int[]) \
           AS m(chat_id, seq, sender_id, sender_username, chat_title, text, sent_at, lo, hi) \
         ON CONFLICT DO NOTHING RETURNING {WHOLE_COLUMNS}), \
     {whole}, \
     due AS ( \
         SELECT d.chat_id, d.seq, d.recipient_id FROM deliveries d \
         JOIN UNNEST($1::bigint[], $2::bigint[]) AS k(chat_id, seq) \
           ON d.chat_id = k.chat_id AND d.seq = k.seq \
         WHERE d.state = 'pending' OR (d.state = 'sending' AND d.lease_until < now()) \
         FOR UPDATE OF d SKIP LOCKED), \
     {taken} \
     SELECT true AS recorded, chat_id, seq, NULL::bigint AS recipient_id, NULL AS email, \
            NULL AS username, NULL AS state, NULL::int AS attempts, NULL AS error, \
            NULL::timestamptz AS updated_at FROM msg \
     UNION ALL SELECT false, w.chat_id, w.seq, {WHOLE_FIELDS} \
       FROM (SELECT * FROM msg UNION ALL SELECT * FROM whole) w, {WHOLE_RECIPIENTS} \
       WHERE w.state = 'sending' \
     UNION ALL SELECT false, * FROM taken",
        whole = take_whole(
            "JOIN UNNEST($1::bigint[], $2::bigint[]) AS k(chat_id, seq) \
             ON n.chat_id = k.chat_id AND n.seq = k.seq",
            "$13"
        ),
        taken = take_split("$13"),
    )
});

/// The CTE `whole`: the messages claimed whole whose claim ran out, among those `keys`
/// joins to `notified_messages n`, claimed again for `lease` seconds (`SKIP LOCKED`);
/// returns [`WHOLE_COLUMNS`].
fn take_whole(keys: &str, lease: &str) -> String {
    let returning = WHOLE_COLUMNS
        .split(", ")
        .map(|c| format!("w.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "whole AS ( \
         UPDATE notified_messages w SET lease_until = now() + make_interval(secs => {lease}), \
            updated_at = now() \
         FROM (SELECT n.chat_id, n.seq FROM notified_messages n {keys} \
               WHERE n.state = 'sending' AND n.lease_until < now() \
               FOR UPDATE OF n SKIP LOCKED) o \
         WHERE w.chat_id = o.chat_id AND w.seq = o.seq \
         RETURNING {returning})"
    )
}

/// The CTE `taken`: the split deliveries the CTE `due` names (chat id, seq, recipient
/// id), claimed for `lease` seconds; returns the key with [`DELIVERY_COLUMNS`].
fn take_split(lease: &str) -> String {
    format!(
        "taken AS ( \
         UPDATE deliveries d SET state = 'sending', \
            lease_until = now() + make_interval(secs => {lease}), updated_at = now() \
         FROM due WHERE d.chat_id = due.chat_id AND d.seq = due.seq \
           AND d.recipient_id = due.recipient_id \
         RETURNING d.chat_id, d.seq, d.recipient_id, d.email, d.username, d.state, \
                   d.attempts, d.error, d.updated_at)"
    )
}

/// Which item of the batch does the work for each message (chat id, seq): its first one.
fn first_of_each_message(items: &[RecordItem]) -> HashMap<(i64, i64), usize> {
    let mut first = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        first
            .entry((item.message.chat_id, item.message.seq))
            .or_insert(i);
    }
    first
}

/// The columns to bind for the items that do the work (`first`), messages and recipients.
fn batch_columns<'a>(
    items: &'a [RecordItem],
    first: &HashMap<(i64, i64), usize>,
) -> (MessageColumns<'a>, RecipientColumns<'a>) {
    let mut m = MessageColumns::default();
    let mut r = RecipientColumns::default();
    for (i, item) in items.iter().enumerate() {
        let msg = &item.message;
        if first.get(&(msg.chat_id, msg.seq)) != Some(&i) {
            continue;
        }
        // PostgreSQL's array slices count from 1 and include both ends.
        let from = r.user_ids.len() as i32 + 1;
        for rc in item.recipients.iter() {
            r.push(rc);
        }
        m.push(msg, from, r.user_ids.len() as i32);
    }
    (m, r)
}

/// What [`record_and_claim`] did for one message: whether it recorded it, and the
/// deliveries it created or claimed.
type Outcome = (bool, Vec<DeliveryRecord>);

/// The statement's rows by message (chat id, seq).
fn by_message(rows: &[PgRow]) -> anyhow::Result<HashMap<(i64, i64), Outcome>> {
    let mut out: HashMap<(i64, i64), Outcome> = HashMap::new();
    for row in rows {
        let key = (row.try_get("chat_id")?, row.try_get("seq")?);
        let entry = out.entry(key).or_default();
        if row.try_get("recorded")? {
            entry.0 = true;
        } else {
            entry.1.push(DeliveryRecord::from_row(row)?);
        }
    }
    Ok(out)
}

/// The messages of a batch, column by column, for `UNNEST`, each with the first and last
/// index of its recipients in the batch's [`RecipientColumns`].
#[derive(Default)]
struct MessageColumns<'a> {
    chat_ids: Vec<i64>,
    seqs: Vec<i64>,
    sender_ids: Vec<i64>,
    sender_usernames: Vec<&'a str>,
    chat_titles: Vec<&'a str>,
    texts: Vec<&'a str>,
    sent_ats: Vec<DateTime<Utc>>,
    firsts: Vec<i32>,
    lasts: Vec<i32>,
}

impl<'a> MessageColumns<'a> {
    fn push(&mut self, m: &'a MessageRecord, first: i32, last: i32) {
        self.chat_ids.push(m.chat_id);
        self.seqs.push(m.seq);
        self.sender_ids.push(m.sender_id);
        self.sender_usernames.push(&m.sender_username);
        self.chat_titles.push(&m.chat_title);
        self.texts.push(&m.text);
        self.sent_ats.push(m.sent_at);
        self.firsts.push(first);
        self.lasts.push(last);
    }
}

/// The recipients of a batch's messages, column by column, one after the other.
#[derive(Default)]
struct RecipientColumns<'a> {
    user_ids: Vec<i64>,
    emails: Vec<&'a str>,
    usernames: Vec<&'a str>,
}

impl<'a> RecipientColumns<'a> {
    fn push(&mut self, r: &'a Recipient) {
        self.user_ids.push(r.user_id);
        self.emails.push(&r.email);
        self.usernames.push(&r.username);
    }
}

/// Records the first-try deliveries of a batch of messages, committed durably: a delivery
/// recorded here is never sent again. A message claimed whole whose emails all went out
/// is marked delivered in its own row, all in one statement: what almost every message
/// does. The others (some emails failed their first try, or the message was split since)
/// are split first and their deliveries written one by one.
async fn finish_delivered(
    pool: PgPool,
    items: Vec<DeliveredItem>,
) -> anyhow::Result<Vec<Option<DateTime<Utc>>>> {
    let (mut chat_ids, mut seqs, mut firsts, mut lasts, mut ids) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for item in &items {
        chat_ids.push(item.chat_id);
        seqs.push(item.seq);
        firsts.push(ids.len() as i32 + 1);
        ids.extend(item.recipient_ids.iter().copied());
        lasts.push(ids.len() as i32);
    }
    let whole: Vec<(i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE notified_messages m SET state = 'delivered', lease_until = NULL, \
            updated_at = now() \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::int[], $4::int[]) AS f(chat_id, seq, lo, hi) \
         WHERE m.chat_id = f.chat_id AND m.seq = f.seq AND m.state = 'sending' \
           AND m.recipient_ids <@ ($5::bigint[])[f.lo:f.hi] \
           AND ($5::bigint[])[f.lo:f.hi] <@ m.recipient_ids \
         RETURNING m.chat_id, m.seq, m.updated_at",
    )
    .bind(&chat_ids)
    .bind(&seqs)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .context("recording deliveries")?;
    let rest: Vec<&DeliveredItem> = items
        .iter()
        .filter(|i| !whole.iter().any(|w| (w.0, w.1) == (i.chat_id, i.seq)))
        .collect();
    if !rest.is_empty() {
        split(&pool, rest.iter().map(|i| (i.chat_id, i.seq))).await?;
        let (mut chat_ids, mut seqs, mut recipient_ids) = (Vec::new(), Vec::new(), Vec::new());
        for item in rest {
            for id in item.recipient_ids.iter() {
                chat_ids.push(item.chat_id);
                seqs.push(item.seq);
                recipient_ids.push(*id);
            }
        }
        sqlx::query(
            "UPDATE deliveries d SET state = 'delivered', attempts = d.attempts + 1, \
                lease_until = NULL, updated_at = now() \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) \
               AS f(chat_id, seq, recipient_id) \
             WHERE d.chat_id = f.chat_id AND d.seq = f.seq AND d.recipient_id = f.recipient_id",
        )
        .bind(&chat_ids)
        .bind(&seqs)
        .bind(&recipient_ids)
        .execute(&pool)
        .await
        .context("recording deliveries")?;
    }
    // A message delivered whole: its every email, at the time the update wrote.
    Ok(items
        .iter()
        .map(|i| {
            whole
                .iter()
                .find(|w| (w.0, w.1) == (i.chat_id, i.seq))
                .map(|w| w.2)
        })
        .collect())
}

/// Splits the messages (chat id, seq) that are claimed or delivered whole: each turns
/// `split`, and each of its emails becomes a row of `deliveries` in the state, claim and
/// time the message had, in the same statement. Messages split already are left as they
/// are, so concurrent splits of one message write its rows once.
async fn split(
    pool: &PgPool,
    messages: impl IntoIterator<Item = (i64, i64)>,
) -> anyhow::Result<()> {
    let mut keys: Vec<(i64, i64)> = messages.into_iter().collect();
    // One order of row locks for every splitter, so two never wait for each other.
    keys.sort_unstable();
    keys.dedup();
    let (chat_ids, seqs): (Vec<i64>, Vec<i64>) = keys.into_iter().unzip();
    sqlx::query(&SPLIT)
        .bind(&chat_ids)
        .bind(&seqs)
        .execute(pool)
        .await
        .context("splitting a message's deliveries")?;
    Ok(())
}

/// The statement of [`split`]: `$1`, `$2` the messages' chat ids and seqs, in order.
static SPLIT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH w AS ( \
         UPDATE notified_messages m SET state = 'split', lease_until = NULL, \
            updated_at = now() \
         FROM (SELECT n.chat_id, n.seq, n.state, n.lease_until, n.recorded_at, n.updated_at \
               FROM UNNEST($1::bigint[], $2::bigint[]) WITH ORDINALITY AS k(chat_id, seq, i) \
               JOIN notified_messages n ON n.chat_id = k.chat_id AND n.seq = k.seq \
               WHERE n.state <> 'split' ORDER BY k.i FOR UPDATE OF n) old \
         WHERE m.chat_id = old.chat_id AND m.seq = old.seq \
         RETURNING m.chat_id, m.seq, m.recipient_ids, m.recipient_emails, \
                   m.recipient_usernames, old.state, old.lease_until, old.recorded_at, \
                   old.updated_at) \
     INSERT INTO deliveries \
       (chat_id, seq, recipient_id, email, username, state, attempts, error, updated_at, \
        lease_until) \
     SELECT w.chat_id, w.seq, {WHOLE_FIELDS}, w.lease_until FROM w, {WHOLE_RECIPIENTS} \
     ON CONFLICT DO NOTHING"
    )
});

fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

#[async_trait]
impl DeliveryStore for PgDeliveryStore {
    async fn record_and_claim(
        &self,
        message: &MessageRecord,
        recipients: &[Recipient],
        lease: Duration,
    ) -> anyhow::Result<(bool, Vec<DeliveryRecord>)> {
        self.records
            .run(RecordItem {
                message: Arc::new(message.clone()),
                recipients: Arc::new(recipients.to_vec()),
                lease,
            })
            .await
    }

    async fn message(&self, chat_id: i64, seq: i64) -> anyhow::Result<Option<MessageRecord>> {
        sqlx::query_as(
            "SELECT chat_id, seq, sender_id, sender_username, chat_title, text, sent_at \
             FROM notified_messages WHERE chat_id = $1 AND seq = $2",
        )
        .bind(chat_id)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .context("reading a notified message")
    }

    async fn claim(
        &self,
        chat_id: i64,
        seq: i64,
        lease: Duration,
    ) -> anyhow::Result<Vec<DeliveryRecord>> {
        let mut claimed: Vec<DeliveryRecord> = sqlx::query_as(&CLAIM)
            .bind(chat_id)
            .bind(seq)
            .bind(lease_secs(lease))
            .fetch_all(&self.pool)
            .await
            .context("claiming deliveries")?;
        claimed.sort_by_key(|d| d.recipient.user_id);
        Ok(claimed)
    }

    async fn attempt_failed(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_id: i64,
        error: &str,
        lease: Duration,
    ) -> anyhow::Result<()> {
        self.split(chat_id, seq).await?;
        sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, error = $4, \
                lease_until = now() + make_interval(secs => $5), updated_at = now() \
             WHERE chat_id = $1 AND seq = $2 AND recipient_id = $3",
        )
        .bind(chat_id)
        .bind(seq)
        .bind(recipient_id)
        .bind(error)
        .bind(lease_secs(lease))
        .execute(&self.pool)
        .await
        .context("recording a failed attempt")?;
        Ok(())
    }

    async fn release(&self, chat_id: i64, seq: i64, recipient_id: i64) -> anyhow::Result<()> {
        self.split(chat_id, seq).await?;
        sqlx::query(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, updated_at = now() \
             WHERE chat_id = $1 AND seq = $2 AND recipient_id = $3 AND state = 'sending'",
        )
        .bind(chat_id)
        .bind(seq)
        .bind(recipient_id)
        .execute(&self.pool)
        .await
        .context("releasing a delivery")?;
        Ok(())
    }

    async fn finish(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_id: i64,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let state = DeliveryState::finished(error);
        self.split(chat_id, seq).await?;
        sqlx::query(
            "UPDATE deliveries SET state = $4, attempts = attempts + 1, \
                error = COALESCE($5, error), lease_until = NULL, updated_at = now() \
             WHERE chat_id = $1 AND seq = $2 AND recipient_id = $3",
        )
        .bind(chat_id)
        .bind(seq)
        .bind(recipient_id)
        .bind(state.as_str())
        .bind(error)
        .execute(&self.pool)
        .await
        .context("recording a delivery's outcome")?;
        Ok(())
    }

    async fn finish_delivered(
        &self,
        chat_id: i64,
        seq: i64,
        recipient_ids: &[i64],
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        self.delivered
            .run(DeliveredItem {
                chat_id,
                seq,
                recipient_ids: Arc::new(recipient_ids.to_vec()),
            })
            .await
    }

    async fn deliveries(
        &self,
        chat_id: i64,
        seq: i64,
    ) -> anyhow::Result<Option<Vec<DeliveryRecord>>> {
        // Deliveries are written in the statement that records their message, so finding
        // some answers both questions in one read. Only none leaves it open whether the
        // message is unknown, known with no recipient, or recorded since the read.
        let deliveries = self.read_deliveries(chat_id, seq).await?;
        if !deliveries.is_empty() {
            return Ok(Some(deliveries));
        }
        if !self.is_recorded(chat_id, seq).await? {
            return Ok(None);
        }
        Ok(Some(self.read_deliveries(chat_id, seq).await?))
    }

    async fn create_email(&self, email: &NewEmail) -> anyhow::Result<(DirectEmailRecord, bool)> {
        let inserted: Option<DirectEmailRecord> = sqlx::query_as(&format!(
            "INSERT INTO direct_emails (idempotency_key, to_address, subject, body) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING \
             RETURNING {EMAIL_COLUMNS}"
        ))
        .bind(&email.idempotency_key)
        .bind(&email.to_address)
        .bind(&email.subject)
        .bind(&email.body)
        .fetch_optional(&self.pool)
        .await
        .context("recording an email")?;
        if let Some(record) = inserted {
            return Ok((record, true));
        }
        let record: DirectEmailRecord = sqlx::query_as(&format!(
            "SELECT {EMAIL_COLUMNS} FROM direct_emails WHERE idempotency_key = $1"
        ))
        .bind(&email.idempotency_key)
        .fetch_one(&self.pool)
        .await
        .context("reading an email")?;
        Ok((record, false))
    }

    async fn email(&self, id: i64) -> anyhow::Result<Option<DirectEmailRecord>> {
        sqlx::query_as(&format!(
            "SELECT {EMAIL_COLUMNS} FROM direct_emails WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("reading an email")
    }

    async fn claim_emails(
        &self,
        id: Option<i64>,
        lease: Duration,
        limit: i64,
    ) -> anyhow::Result<Vec<DirectEmailRecord>> {
        // SKIP LOCKED: concurrent claimers take different rows.
        sqlx::query_as(&format!(
            "UPDATE direct_emails SET state = 'sending', \
                lease_until = now() + make_interval(secs => $2), updated_at = now() \
             WHERE id IN (SELECT id FROM direct_emails \
                WHERE ($1::BIGINT IS NULL OR id = $1) \
                  AND (state = 'pending' OR (state = 'sending' AND lease_until < now())) \
                ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {EMAIL_COLUMNS}"
        ))
        .bind(id)
        .bind(lease_secs(lease))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("claiming emails")
    }

    async fn email_attempt_failed(
        &self,
        id: i64,
        error: &str,
        lease: Duration,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE direct_emails SET attempts = attempts + 1, error = $2, \
                lease_until = now() + make_interval(secs => $3), updated_at = now() \
             WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(lease_secs(lease))
        .execute(&self.pool)
        .await
        .context("recording a failed attempt")?;
        Ok(())
    }

    async fn release_email(&self, id: i64) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE direct_emails SET state = 'pending', lease_until = NULL, updated_at = now() \
             WHERE id = $1 AND state = 'sending'",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .context("releasing an email")?;
        Ok(())
    }

    async fn finish_email(&self, id: i64, error: Option<&str>) -> anyhow::Result<()> {
        let state = DeliveryState::finished(error);
        sqlx::query(
            "UPDATE direct_emails SET state = $2, attempts = attempts + 1, \
                error = COALESCE($3, error), lease_until = NULL, updated_at = now() \
             WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(error)
        .execute(&self.pool)
        .await
        .context("recording an email's outcome")?;
        Ok(())
    }
}
