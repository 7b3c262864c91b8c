//! Records of the notifier's store as the messages of the notification contract, in one
//! place: GetDeliveryStatus and NotifyMessage answer with the same deliveries, SendEmail
//! and GetEmailStatus with the same email status.

use chat_common::convert::timestamp;
use grpc_chat_proto::notification::v1 as pb;

use crate::{
    notifier::overall,
    store::{DeliveryRecord, DeliveryState, DirectEmailRecord},
};

/// A delivery's state as the contract's: one being sent is still pending to a caller.
fn state_to_pb(s: DeliveryState) -> pb::DeliveryState {
    match s {
        DeliveryState::Pending | DeliveryState::Sending => pb::DeliveryState::Pending,
        DeliveryState::Delivered => pb::DeliveryState::Delivered,
        DeliveryState::Failed => pb::DeliveryState::Failed,
    }
}

/// A message's deliveries and, first, their overall state (final only when every one is).
pub(crate) fn deliveries_to_pb(deliveries: &[DeliveryRecord]) -> (i32, Vec<pb::Delivery>) {
    let state = state_to_pb(overall(deliveries)) as i32;
    let list = deliveries
        .iter()
        .map(|d| pb::Delivery {
            recipient_id: d.recipient.user_id,
            state: state_to_pb(d.state) as i32,
            attempts: d.attempts,
            error: d.error.clone(),
            updated_at: Some(timestamp(d.updated_at)),
        })
        .collect();
    (state, list)
}

/// A direct email's status.
pub(crate) fn email_to_pb(e: &DirectEmailRecord) -> pb::EmailStatus {
    pb::EmailStatus {
        email_id: e.id,
        state: state_to_pb(e.state) as i32,
        attempts: e.attempts,
        error: e.error.clone(),
        updated_at: Some(timestamp(e.updated_at)),
    }
}
