//! The saga log's records as the messages of the orchestrator's contract, and the
//! notifier's answers as what the saga decides on, in one place: SendMessage and GetSaga
//! answer with the same `Saga`, and the log's enums map onto the contract's one variant
//! each (the contract's `UNSPECIFIED` is never sent).

use chat_common::convert::timestamp;
use grpc_chat_proto::notification::v1::{DeliveryState, NotifyMessageResponse};
use grpc_chat_proto::saga::v1 as pb;

use crate::{
    domain::{SagaState, StepKind, StepState},
    machine::NotifyAnswer,
    store::{SagaRecord, StepRecord},
};

/// A saga as logged, its steps in the order they started; ids not known yet are 0.
pub(crate) fn saga_to_pb(s: &SagaRecord) -> pb::Saga {
    pb::Saga {
        id: s.id.to_string(),
        state: state_to_pb(s.state) as i32,
        chat_id: s.chat_id,
        sender_id: s.sender_id.unwrap_or(0),
        message_seq: s.message_seq.unwrap_or(0),
        steps: s.steps.iter().map(step_to_pb).collect(),
        created_at: Some(timestamp(s.created_at)),
        updated_at: Some(timestamp(s.updated_at)),
        error: s.error.clone(),
    }
}

/// One logged step.
fn step_to_pb(st: &StepRecord) -> pb::SagaStep {
    pb::SagaStep {
        kind: kind_to_pb(st.kind) as i32,
        state: step_state_to_pb(st.state) as i32,
        started_at: Some(timestamp(st.started_at)),
        finished_at: st.finished_at.map(timestamp),
        error: st.error.clone(),
    }
}

fn state_to_pb(s: SagaState) -> pb::SagaState {
    match s {
        SagaState::Running => pb::SagaState::Running,
        SagaState::Completed => pb::SagaState::Completed,
        SagaState::Compensating => pb::SagaState::Compensating,
        SagaState::Compensated => pb::SagaState::Compensated,
        SagaState::Failed => pb::SagaState::Failed,
    }
}

fn kind_to_pb(k: StepKind) -> pb::StepKind {
    match k {
        StepKind::ResolveSender => pb::StepKind::ResolveSender,
        StepKind::StoreMessage => pb::StepKind::StoreMessage,
        StepKind::Notify => pb::StepKind::Notify,
        StepKind::Compensate => pb::StepKind::Compensate,
    }
}

fn step_state_to_pb(s: StepState) -> pb::StepState {
    match s {
        StepState::Started => pb::StepState::Started,
        StepState::Succeeded => pb::StepState::Succeeded,
        StepState::Failed => pb::StepState::Failed,
    }
}

/// What a NotifyMessage answer says of the message's emails: failed ones with why, user by
/// user; anything but delivered or failed is still pending.
pub(crate) fn notify_answer(resp: NotifyMessageResponse) -> NotifyAnswer {
    match DeliveryState::try_from(resp.state) {
        Ok(DeliveryState::Delivered) => NotifyAnswer::Delivered,
        Ok(DeliveryState::Failed) => NotifyAnswer::Failed(
            resp.deliveries
                .iter()
                .filter(|d| d.state == DeliveryState::Failed as i32)
                .map(|d| format!("user {}: {}", d.recipient_id, d.error))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => NotifyAnswer::Pending,
    }
}
