//! Applying account deletions. AuthService records a tombstone for each deleted account
//! (`ListDeletedUsers`); this service keeps data about users that must follow: the user's
//! memberships end (their open streams end, other members see them go, chats they owned
//! pass on) and their messages stay but lose the sender's name. Every replica polls the
//! list from the last deletion this database applied; applying is idempotent (a removal
//! that finds no membership does nothing), so replicas racing on one deletion are harmless,
//! and a deletion made while this service was down is applied when it is back.
//!
//! A deletion is applied in this order: the account is recorded as deleted here first
//! (from then on its access token, still valid for minutes, can neither create a chat nor
//! invite: `service.rs` asks), then it leaves every chat. A membership committed while that
//! ran (a CreateChat that passed the check just before) is caught by applying every
//! deletion of the last [`RECHECK`] again at each poll, which costs one index lookup per
//! such account. Until a deletion is first applied (at most one poll, by default 5 s, while
//! AuthService is reachable), the account's token works here as before.

use std::{sync::Arc, time::Duration};

use chat_common::Shutdown;

use chat_events::EventBus;

use crate::{directory::Directory, members, outbox::Outbox, store::ChatStore};

/// Deletions read per call.
const PAGE: i32 = 100;

/// How long after its first application a deletion is applied again at each poll: longer
/// than an access token lives.
pub const RECHECK: Duration = Duration::from_secs(3600);

/// What the sweeper works with.
pub(crate) struct Deletions {
    pub store: Arc<dyn ChatStore>,
    pub outbox: Arc<Outbox>,
    pub bus: Arc<dyn EventBus>,
    pub directory: Directory,
}

impl Deletions {
    /// Polls every `every` until `shutdown`.
    pub fn start(self, every: Duration, shutdown: Shutdown) {
        shutdown.clone().spawn(async move {
            loop {
                match self.apply_new().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(accounts = n, "applied account deletions"),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "applying account deletions failed; trying again")
                    }
                }
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    /// Applies every deletion after the last one applied, and the recent ones again;
    /// returns how many new ones.
    pub async fn apply_new(&self) -> anyhow::Result<usize> {
        for user_id in self.store.deleted_within(RECHECK).await? {
            self.leave_everything(user_id).await?;
        }
        let mut after = self.store.applied_deletion().await?;
        let mut applied = 0;
        loop {
            let page = self.directory.deleted_users(after, PAGE).await?;
            for deletion in &page {
                self.apply(deletion.user_id).await?;
                self.store.set_applied_deletion(deletion.id).await?;
                after = deletion.id;
                applied += 1;
            }
            if page.len() < PAGE as usize {
                return Ok(applied);
            }
        }
    }

    async fn apply(&self, user_id: i64) -> anyhow::Result<()> {
        self.store.mark_deleted(user_id).await?;
        self.leave_everything(user_id).await?;
        let renamed = self.store.forget_sender(user_id).await?;
        tracing::info!(user_id, messages = renamed, "deleted account applied");
        Ok(())
    }

    /// Ends every membership of `user_id` (none, usually, when applied again).
    async fn leave_everything(&self, user_id: i64) -> anyhow::Result<()> {
        for chat in self.store.chats_of(user_id).await? {
            members::remove(
                self.store.as_ref(),
                &self.outbox,
                self.bus.as_ref(),
                chat,
                user_id,
            )
            .await
            .map_err(|e| anyhow::anyhow!("removing user {user_id} from chat {chat}: {e}"))?;
        }
        Ok(())
    }
}
