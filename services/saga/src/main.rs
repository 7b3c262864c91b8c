//! `saga-orchestrator` serves SagaOrchestrator and resumes unfinished sagas;
//! `saga-orchestrator migrate` only applies the migrations.
chat_common::service_main!("saga-orchestrator", saga_orchestrator);
