//! Group commit for SQLite writes.
//!
//! With `synchronous=FULL` every commit is an fsync, and SQLite has one writer: a store that
//! commits each write alone is capped at what the disk syncs per second, however many
//! callers wait. [`GroupWriter`] puts the writes of concurrent callers into one
//! transaction: one task owns the store's writer connection, takes everything queued while
//! the previous commit was syncing, runs it in one `BEGIN IMMEDIATE`, commits once, and
//! only then answers each caller. A lone caller still gets its own commit at once.
//!
//! A write is a closure over the connection that may run twice: when anything in a group
//! fails, the group rolls back whole and each write runs again in a transaction of its own,
//! so one bad write fails alone and nothing is stored half-way. A write must therefore
//! only touch the database, and must turn the statement errors it expects (a unique
//! violation it reports as a result) into values: such errors end only their statement,
//! while any error it returns ends the group at once, before a transaction that SQLite may
//! already have rolled back (I/O error, full disk) runs anything more.

use anyhow::Context;
use futures::future::BoxFuture;
use sqlx::{sqlite::SqliteArguments, Arguments as _, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::begin_write;

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 256;

/// The future of one write on the writer's connection.
pub type WriteFuture<'c, T> = BoxFuture<'c, anyhow::Result<T>>;

/// A handle on a store's writer task; cheap to clone. The task ends when the last handle
/// is dropped.
#[derive(Clone)]
pub struct GroupWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl GroupWriter {
    /// Starts the writer task on `write`, a pool of one connection (see
    /// [`sqlite_writer`](super::sqlite_writer)).
    pub fn start(write: SqlitePool) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_GROUP);
        // Not tracked for shutdown: it ends when the last handle drops, and every group has
        // callers awaiting it (a group cut off commits nothing).
        tokio::spawn(run(write, queue));
        Self { jobs }
    }

    /// Runs `work` in the next group and returns its result once the group is committed.
    /// A caller that stops waiting before its group starts is left out of it.
    pub async fn write<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut SqliteConnection) -> WriteFuture<'c, T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Typed {
            work,
            out: None,
            reply,
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the database writer stopped before committing"))?
    }

    /// Runs one statement with `args` in the next group (the common case of [`write`]);
    /// returns the rows it changed. `what` names the statement in errors.
    ///
    /// [`write`]: GroupWriter::write
    pub async fn execute(
        &self,
        sql: &'static str,
        args: Args,
        what: &'static str,
    ) -> anyhow::Result<u64> {
        if let Some(e) = args.error {
            anyhow::bail!("{what}: an argument does not encode: {e}");
        }
        let values = args.values;
        self.write(move |conn| {
            let values = values.clone();
            Box::pin(async move {
                let done = sqlx::query_with(sql, values)
                    .execute(&mut *conn)
                    .await
                    .context(what)?;
                Ok(done.rows_affected())
            })
        })
        .await
    }
}

/// The owned arguments of one statement for [`GroupWriter::execute`], bound in order.
#[derive(Clone, Default)]
pub struct Args {
    values: SqliteArguments<'static>,
    error: Option<String>,
}

impl Args {
    /// No arguments yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `value` as the next placeholder's argument. A value that fails to encode is
    /// kept as an error, which [`GroupWriter::execute`] returns before running anything.
    pub fn bind<T>(mut self, value: T) -> Self
    where
        T: sqlx::Encode<'static, Sqlite> + sqlx::Type<Sqlite> + 'static,
    {
        if self.error.is_none() {
            if let Err(e) = self.values.add(value) {
                self.error = Some(e.to_string());
            }
        }
        self
    }
}

trait Job: Send {
    fn abandoned(&self) -> bool;
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, ()>;
    fn answer(self: Box<Self>, committed: anyhow::Result<()>);
}

struct Typed<T, F> {
    work: F,
    out: Option<T>,
    reply: oneshot::Sender<anyhow::Result<T>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send + 'static,
    F: for<'c> FnMut(&'c mut SqliteConnection) -> WriteFuture<'c, T> + Send + 'static,
{
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, ()> {
        Box::pin(async move {
            self.out = Some((self.work)(conn).await?);
            Ok(())
        })
    }

    fn answer(self: Box<Self>, committed: anyhow::Result<()>) {
        let Typed { out, reply, .. } = *self;
        let result = committed
            .and_then(|()| out.ok_or_else(|| anyhow::anyhow!("a committed write has no result")));
        let _ = reply.send(result);
    }
}

async fn run(write: SqlitePool, mut queue: mpsc::Receiver<Box<dyn Job>>) {
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        group.retain(|j| !j.abandoned());
        if group.is_empty() {
            continue;
        }
        metrics::histogram!("sqlite_group_commit_writes").record(group.len() as f64);
        match commit(&write, &mut group).await {
            Ok(()) => {
                for job in group.drain(..) {
                    job.answer(Ok(()));
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some(job) = group.pop() {
                    job.answer(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, writes = group.len(), "a group commit failed; committing its writes one by one");
                for mut job in group.drain(..) {
                    let alone = commit(&write, std::slice::from_mut(&mut job)).await;
                    job.answer(alone);
                }
            }
        }
    }
}

/// Runs `jobs` in one transaction and commits it; on error, nothing of it is stored.
async fn commit(write: &SqlitePool, jobs: &mut [Box<dyn Job>]) -> anyhow::Result<()> {
    let mut tx = begin_write(write)
        .await
        .context("starting a write transaction")?;
    for job in jobs.iter_mut() {
        job.run(&mut tx).await?;
    }
    tx.commit().await.context("committing")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{connect_sqlite, sqlite_url, sqlite_writer};

    async fn setup() -> (tempfile::TempDir, SqlitePool, GroupWriter) {
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = connect_sqlite(&sqlite_url(&dir.path().join("t.db")), 4)
            .await
            .expect("sqlite");
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .execute(&pool)
            .await
            .expect("table");
        let writer = GroupWriter::start(sqlite_writer(&pool).await.expect("writer"));
        (dir, pool, writer)
    }

    /// Inserts (k, v) and answers with k.
    fn insert(
        writer: &GroupWriter,
        k: i64,
        v: &'static str,
    ) -> impl Future<Output = anyhow::Result<i64>> {
        let writer = writer.clone();
        async move {
            writer
                .write(move |conn| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO t (k, v) VALUES (?1, ?2)")
                            .bind(k)
                            .bind(v)
                            .execute(&mut *conn)
                            .await?;
                        Ok(k)
                    })
                })
                .await
        }
    }

    async fn stored(pool: &SqlitePool) -> Vec<i64> {
        sqlx::query_scalar("SELECT k FROM t ORDER BY k")
            .fetch_all(pool)
            .await
            .expect("read")
    }

    use std::future::Future;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_concurrent_write_is_committed_before_its_answer() {
        let (_dir, pool, writer) = setup().await;
        let writes: Vec<_> = (1..=200)
            .map(|k| tokio::spawn(insert(&writer, k, "x")))
            .collect();
        for (i, w) in writes.into_iter().enumerate() {
            let k = w.await.expect("task").expect("write");
            assert_eq!(k, i as i64 + 1);
            // Answered means committed: another connection sees it.
            let seen: Option<i64> = sqlx::query_scalar("SELECT k FROM t WHERE k = ?1")
                .bind(k)
                .fetch_optional(&pool)
                .await
                .expect("read");
            assert_eq!(seen, Some(k));
        }
        assert_eq!(stored(&pool).await, (1..=200).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone_and_leaves_nothing() {
        let (_dir, pool, writer) = setup().await;
        // Hold the writer, so that everything below queues and forms one group.
        let slow = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(|_conn| {
                        Box::pin(async move {
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            Ok(())
                        })
                    })
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let early: Vec<_> = (1..=25)
            .map(|k| tokio::spawn(insert(&writer, k, "x")))
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // A write of two rows whose second statement fails (NOT NULL): neither row may stay.
        let bad = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(|conn| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO t (k, v) VALUES (1000, 'half')")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("INSERT INTO t (k, v) VALUES (1001, NULL)")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let late: Vec<_> = (26..=50)
            .map(|k| tokio::spawn(insert(&writer, k, "x")))
            .collect();
        slow.await.expect("task").expect("slow write");
        assert!(bad.await.expect("task").is_err());
        for g in early.into_iter().chain(late) {
            g.await
                .expect("task")
                .expect("a good write must not fail with a bad one");
        }
        assert_eq!(stored(&pool).await, (1..=50).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn execute_binds_in_order_and_counts_the_rows_it_changed() {
        let (_dir, pool, writer) = setup().await;
        for k in 1..=3 {
            insert(&writer, k, "x").await.expect("insert");
        }
        let changed = writer
            .execute(
                "UPDATE t SET v = ?1 WHERE k >= ?2",
                Args::new().bind("y".to_owned()).bind(2_i64),
                "updating",
            )
            .await
            .expect("update");
        assert_eq!(changed, 2);
        let v: Vec<String> = sqlx::query_scalar("SELECT v FROM t ORDER BY k")
            .fetch_all(&pool)
            .await
            .expect("read");
        assert_eq!(v, ["x", "y", "y"]);
        let err = writer
            .execute("UPDATE t SET v = NULL", Args::new(), "clearing")
            .await
            .expect_err("NOT NULL");
        assert!(format!("{err:#}").starts_with("clearing"), "{err:#}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_still_work_after_a_failure() {
        let (_dir, pool, writer) = setup().await;
        insert(&writer, 1, "x").await.expect("first");
        assert!(insert(&writer, 1, "again").await.is_err(), "duplicate key");
        insert(&writer, 2, "y").await.expect("after the failure");
        assert_eq!(stored(&pool).await, vec![1, 2]);
    }
}
