//! Group commit for PostgreSQL: one statement and one commit for the same work of many
//! concurrent callers.
//!
//! PostgreSQL shares WAL flushes between concurrent commits, but every commit still costs
//! a round trip, a transaction and a turn at the WAL insert lock, and a row lock held
//! across it (a busy chat's `last_seq`) serialises its callers one commit at a time. A
//! [`Batcher`] takes what concurrent callers asked for while the previous batch was in the
//! database and hands it to one run of its handler, which writes it all with multi-row
//! statements (`UNNEST`) in one transaction; each caller gets its own result after that
//! commit. A lone caller is handled at once, so a quiet system pays no delay for it.
//!
//! When a whole batch fails (a constraint one item broke, a statement error), the batcher
//! runs every item of it again alone, so one bad item fails alone and the others are
//! stored. Handlers therefore must be idempotent over a failed transaction: they may only
//! touch the database, in one transaction that either commits or leaves nothing. Outcomes
//! that belong to one item (not a member, a duplicate key answered with the first
//! message) are part of that item's output, not an error of the batch. A batch that failed
//! because the database is out of reach is not rerun: every caller gets an UNAVAILABLE
//! error at once rather than one acquire timeout after another.
//!
//! `in_flight` batches may be in the database at once, so a batch that waits for a lock
//! does not hold up callers whose work does not need it; 1 gives the classic group commit.

use std::{future::Future, sync::Arc};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// A queue of work items that a handler runs in batches; cheap to clone. Its task ends when
/// the last handle is dropped.
pub struct Batcher<I, O> {
    queue: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

struct Pending<I, O> {
    item: I,
    reply: oneshot::Sender<anyhow::Result<O>>,
}

/// Runs one batch: one output per item, in the items' order, or an error for the batch.
pub type Handler<I, O> =
    Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, anyhow::Result<Vec<O>>> + Send + Sync>;

impl<I, O> Batcher<I, O>
where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    /// Starts the batcher's task. `name` labels the `db_batch_items` histogram, `max_batch`
    /// bounds one batch, `in_flight` how many run at once.
    pub fn start<F, Fut>(name: &'static str, max_batch: usize, in_flight: usize, handler: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Vec<O>>> + Send + 'static,
    {
        let handler: Handler<I, O> = Arc::new(move |items| Box::pin(handler(items)));
        let max_batch = max_batch.max(1);
        let (queue, pending) = mpsc::channel(4 * max_batch);
        // Not tracked for shutdown: every batch has callers awaiting it, and they are.
        tokio::spawn(run(name, pending, max_batch, in_flight.max(1), handler));
        Self { queue }
    }

    /// Runs `item` in the next batch and returns its output once that batch is committed.
    /// A caller that stops waiting before its batch starts is left out of it.
    pub async fn run(&self, item: I) -> anyhow::Result<O> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { item, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the database batcher has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the database batcher stopped before committing"))?
    }
}

async fn run<I, O>(
    name: &'static str,
    mut pending: mpsc::Receiver<Pending<I, O>>,
    max_batch: usize,
    in_flight: usize,
    handler: Handler<I, O>,
) where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // Wait for a free slot first: what arrives meanwhile joins the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if pending.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!("db_batch_items", "batch" => name).record(batch.len() as f64);
        let handler = handler.clone();
        // Not tracked either: its callers await it, and a batch cut off commits nothing.
        tokio::spawn(async move {
            answer(name, &handler, batch).await;
            drop(slot);
        });
    }
}

/// Runs `batch` and answers its callers; a failed batch of several runs each item alone.
async fn answer<I, O>(name: &'static str, handler: &Handler<I, O>, batch: Vec<Pending<I, O>>)
where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    let items: Vec<I> = batch.iter().map(|p| p.item.clone()).collect();
    let count = items.len();
    match handler(items).await {
        Ok(outputs) if outputs.len() == count => {
            for (p, out) in batch.into_iter().zip(outputs) {
                let _ = p.reply.send(Ok(out));
            }
        }
        Ok(outputs) => {
            let e = format!(
                "batch {name} answered {} outputs for {count} items",
                outputs.len()
            );
            tracing::error!("{e}");
            for p in batch {
                let _ = p.reply.send(Err(anyhow::anyhow!("{e}")));
            }
        }
        Err(e) if count == 1 => {
            if let Some(p) = batch.into_iter().next() {
                let _ = p.reply.send(Err(e));
            }
        }
        Err(e) if crate::db::is_unavailable(&e) => {
            // The database is out of reach: each item alone would meet the same outage, one
            // acquire timeout after another. Every caller is told so at once, in an error
            // that still reads as "unavailable" (UNAVAILABLE on the wire, retry).
            let text = format!("{e:#}");
            let mut original = Some(e);
            for p in batch {
                let e = original.take().unwrap_or_else(|| unavailable(&text));
                let _ = p.reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(batch = name, items = count, error = ?e,
                "a batch failed; running its items one by one");
            for p in batch {
                let alone = match handler(vec![p.item]).await {
                    Ok(mut outs) if outs.len() == 1 => {
                        outs.pop().ok_or_else(|| unreachable_output(name))
                    }
                    Ok(_) => Err(unreachable_output(name)),
                    Err(e) => Err(e),
                };
                let _ = p.reply.send(alone);
            }
        }
    }
}

/// A copy of an outage's error for another caller of the same batch.
fn unavailable(text: &str) -> anyhow::Error {
    anyhow::Error::new(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        text.to_owned(),
    )))
    .context("the database did not answer a batch this call was in")
}

fn unreachable_output(name: &str) -> anyhow::Error {
    anyhow::anyhow!("batch {name} did not answer its one item")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<Vec<i64>>>>;
    type Answer = BoxFuture<'static, anyhow::Result<Vec<i64>>>;

    /// A handler that records each batch and fails any batch holding a negative item.
    fn recording() -> (Log, impl Fn(Vec<i64>) -> Answer) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler = move |items: Vec<i64>| -> Answer {
            let log = log.clone();
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                log.lock().expect("log").push(items.clone());
                if items.iter().any(|i| *i < 0) {
                    anyhow::bail!("negative item");
                }
                Ok(items.into_iter().map(|i| i * 10).collect())
            })
        };
        (seen, handler)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_batches_and_get_their_own_output() {
        let (seen, handler) = recording();
        let batcher = Batcher::start("test", 64, 1, handler);
        let calls: Vec<_> = (1..=100)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.run(i).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let out = c.await.expect("task").expect("output");
            assert_eq!(out, (i as i64 + 1) * 10);
        }
        let batches = seen.lock().expect("log").clone();
        assert!(batches.iter().all(|b| b.len() <= 64));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 100);
        assert!(batches.len() < 100, "callers were not batched: {batches:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_item_fails_alone() {
        let (seen, handler) = recording();
        let batcher = Batcher::start("test", 64, 1, handler);
        // Hold the single slot so that the next three queue into one batch.
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.run(1).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let calls: Vec<_> = [2, -3, 4]
            .into_iter()
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.run(i).await })
            })
            .collect();
        assert_eq!(first.await.expect("task").expect("first"), 10);
        let mut outs = Vec::new();
        for c in calls {
            outs.push(c.await.expect("task"));
        }
        assert_eq!(outs[0].as_ref().expect("2"), &20);
        assert!(outs[1]
            .as_ref()
            .is_err_and(|e| e.to_string().contains("negative")));
        assert_eq!(outs[2].as_ref().expect("4"), &40);
        let batches = seen.lock().expect("log").clone();
        // The bad item was in a batch with others (in whichever order their tasks ran),
        // which failed, and every item of it then ran alone.
        let sorted = |mut b: Vec<i64>| {
            b.sort();
            b
        };
        let failed = batches
            .iter()
            .position(|b| b.len() > 1 && b.contains(&-3))
            .unwrap_or_else(|| panic!("the bad item was never batched: {batches:?}"));
        let alone: Vec<i64> = batches[failed + 1..]
            .iter()
            .map(|b| match b.as_slice() {
                [one] => *one,
                _ => panic!("not rerun alone: {batches:?}"),
            })
            .collect();
        assert_eq!(
            sorted(alone),
            sorted(batches[failed].clone()),
            "{batches:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_fails_the_whole_batch_at_once_as_unavailable() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let log = runs.clone();
        let batcher = Batcher::start("test", 64, 1, move |items: Vec<i64>| {
            let log = log.clone();
            async move {
                log.lock().expect("log").push(items.len());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err::<Vec<i64>, _>(anyhow::Error::new(sqlx::Error::PoolTimedOut).context("x"))
            }
        });
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.run(0).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let calls: Vec<_> = (1..=5)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.run(i).await })
            })
            .collect();
        let mut errors = vec![first.await.expect("task").expect_err("down")];
        for c in calls {
            errors.push(c.await.expect("task").expect_err("down"));
        }
        for e in &errors {
            assert!(crate::db::is_unavailable(e), "{e:#}");
        }
        // However the six were batched, none ran again alone: each item was run once.
        let runs = runs.lock().expect("log").clone();
        assert_eq!(runs.iter().sum::<usize>(), 6, "{runs:?}");
    }

    #[tokio::test]
    async fn a_stopped_handler_is_an_error_not_a_hang() {
        let batcher: Batcher<i64, i64> = Batcher::start("test", 4, 1, |_items: Vec<i64>| async {
            Ok::<Vec<i64>, anyhow::Error>(Vec::new())
        });
        let e = batcher.run(1).await.expect_err("no output");
        assert!(e.to_string().contains("0 outputs for 1 items"), "{e}");
    }
}
