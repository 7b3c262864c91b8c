//! Graceful shutdown as one small value handed to every long-running task (the server,
//! stream fan-out, consumers, recovery loops) instead of a global flag. Cancelling it asks
//! every holder to finish what it is doing and stop; SIGTERM and Ctrl-C cancel it in `main`.
//!
//! It also tracks the background work started through [`Shutdown::spawn`] (outbox relays,
//! email sends, saga drives, stream fan-outs), so that `main` can wait for it, with a
//! deadline, after the server stopped: a send in flight finishes and records its outcome
//! instead of being cut off when the runtime drops, and whatever does not finish in time is
//! counted in the log rather than lost silently (mini-redis's `shutdown_complete`, here
//! tokio-util's `TaskTracker`).

use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The process's shutdown signal and the set of background tasks it waits for; clones share both.
/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    /// Shared by every clone and child: one process, one set of tasks to wait for.
    tasks: TaskTracker,
}

impl Shutdown {
    /// A shutdown not triggered yet, with no tasks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once [`Shutdown::trigger`] was called on this one or a parent; for loops that check
    /// between steps instead of waiting.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been asked for.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A shutdown that follows this one but can also be triggered on its own. Its tasks
    /// are this one's.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tasks: self.tasks.clone(),
        }
    }

    /// Spawns background work that [`Shutdown::finish`] waits for. The task must end on
    /// its own once shutdown is triggered (it watches [`Shutdown::wait`], or it is short).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// How many spawned tasks are still running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Triggers shutdown and waits up to `deadline` for the spawned tasks to end. Returns
    /// how many were still running at the deadline (0: everything finished); tasks
    /// spawned after this call are not waited for.
    pub async fn finish(&self, deadline: Duration) -> usize {
        self.trigger();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.tasks.len();
        tracing::warn!(
            tasks = left,
            deadline = ?deadline,
            "background tasks still running at the shutdown deadline; stopping anyway"
        );
        left
    }

    /// Triggers this shutdown when the process receives SIGTERM or Ctrl-C.
    pub fn on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        std::future::pending::<()>().await
                    }
                }
            };
            #[cfg(not(unix))]
            let term = std::future::pending::<()>();
            tokio::select! {
                _ = ctrl_c => tracing::info!("interrupt received, shutting down"),
                _ = term => tracing::info!("SIGTERM received, shutting down"),
            }
            this.trigger();
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    use super::*;

    #[tokio::test]
    async fn finish_waits_for_tasks_that_end_on_shutdown() {
        let shutdown = Shutdown::new();
        let done = Arc::new(AtomicBool::new(false));
        let (s, d) = (shutdown.child(), done.clone());
        shutdown.spawn(async move {
            s.wait().await;
            // Work that takes a moment after the signal: a last write, a send.
            tokio::time::sleep(Duration::from_millis(50)).await;
            d.store(true, Ordering::SeqCst);
        });
        assert_eq!(shutdown.running(), 1);
        assert_eq!(shutdown.finish(Duration::from_secs(5)).await, 0);
        assert!(done.load(Ordering::SeqCst), "the task finished its work");
    }

    #[tokio::test]
    async fn finish_gives_up_at_the_deadline_and_says_how_many_are_left() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        shutdown.spawn(async {});
        assert_eq!(shutdown.finish(Duration::from_millis(50)).await, 1);
    }
}
