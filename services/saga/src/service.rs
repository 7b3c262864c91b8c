//! The gRPC face of the orchestrator. Callers are authenticated by the token interceptor;
//! `SendMessage` runs for users (the `from` must be the caller), `GetSaga` shows a saga to
//! its initiator or to a service.

use tonic::{Request, Response, Status};

use chat_common::{domain::FieldError, Caller};
use grpc_chat_proto::saga::v1::{self as pb, saga_orchestrator_server::SagaOrchestrator};

use crate::{
    convert::saga_to_pb, domain::SendRequest, error::SagaError, orchestrator::Orchestrator,
};

/// The `SagaOrchestrator` gRPC service: parses requests and hands them to the [`Orchestrator`].
#[derive(Clone)]
pub struct SagaApi {
    orchestrator: Orchestrator,
}

impl SagaApi {
    /// Serves `orchestrator`.
    pub fn new(orchestrator: Orchestrator) -> Self {
        Self { orchestrator }
    }
}

#[tonic::async_trait]
impl SagaOrchestrator for SagaApi {
    #[tracing::instrument(skip_all, fields(chat_id = request.get_ref().chat_id))]
    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let (caller, _) = Caller::require_user(&request)?;
        let req = request.into_inner();
        let parsed = SendRequest::parse(req.chat_id, &req.from, req.text, &req.idempotency_key)?;
        let saga = self.orchestrator.send(caller, parsed).await?;
        Ok(Response::new(pb::SendMessageResponse {
            saga: Some(saga_to_pb(&saga)),
        }))
    }

    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::GetSagaResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let id = uuid::Uuid::parse_str(request.get_ref().saga_id.trim())
            .map_err(|_| FieldError::new("saga_id", "not a saga id (UUID)"))?;
        let not_found = || SagaError::NotFound(format!("saga {id} not found"));
        let saga = self.orchestrator.get(id).await?.ok_or_else(not_found)?;
        if let Some(user) = caller.user_id() {
            if user != saga.initiator_id {
                return Err(not_found().into());
            }
        }
        Ok(Response::new(pb::GetSagaResponse {
            saga: Some(saga_to_pb(&saga)),
        }))
    }
}
