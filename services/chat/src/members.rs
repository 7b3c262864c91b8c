//! Membership changes that more than one caller makes: RemoveMember and LeaveChat, and
//! the account-deletion sweeper (`deletions.rs`), which removes a deleted user from every
//! chat the same way, so that their streams end and others see them go.

use chat_events::{ChatEvent, EventBus};

use crate::{
    domain::ChatId,
    error::ChatError,
    outbox::Outbox,
    store::{ChatStore, Removed},
};

/// Removes `user_id` from `chat` and announces it: a `MemberRemoved` event through the
/// outbox (the stream of the removed user ends on it), or the chat's deletion when they
/// were its last member. False when they were not a member.
pub(crate) async fn remove(
    store: &dyn ChatStore,
    outbox: &Outbox,
    bus: &dyn EventBus,
    chat: ChatId,
    user_id: i64,
) -> Result<bool, ChatError> {
    match store.remove_member(chat, user_id).await? {
        Removed::NotMember => Ok(false),
        Removed::Member { event, new_owner } => {
            let removal = ChatEvent::MemberRemoved {
                chat_id: chat.0,
                user_id,
            };
            outbox.publish(&removal, event).await;
            tracing::info!(chat_id = chat.0, user_id, ?new_owner, "member removed");
            Ok(true)
        }
        Removed::ChatDeleted => {
            publish_direct(bus, &ChatEvent::ChatDeleted { chat_id: chat.0 }).await;
            tracing::info!(chat_id = chat.0, user_id, "last member left; chat deleted");
            Ok(true)
        }
    }
}

/// Publishes an event that has no outbox row (a chat's deletion) to every replica. A
/// failure is logged, not returned: the change is committed, and open streams of the
/// chat find it gone at their next catch-up (see `hub.rs`).
pub(crate) async fn publish_direct(bus: &dyn EventBus, event: &ChatEvent) {
    if let Err(e) = bus.publish(event).await {
        metrics::counter!("chat_publish_failures_total").increment(1);
        tracing::error!(chat_id = event.chat_id(), kind = event.kind(), error = %e, "publishing an event failed");
    }
}
