//! Graceful shutdown as one small value handed to every long-running task (the server,
//! stream fan-out, consumers, recovery loops) instead of a global flag. Cancelling it asks
//! every holder to finish what it is doing and stop; SIGTERM and Ctrl-C cancel it in `main`.

use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been asked for.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A shutdown that follows this one but can also be triggered on its own.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
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
