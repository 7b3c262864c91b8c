//! What every grpc-chat service really shares, written once: reading configuration from the
//! environment, telemetry and the trace context that crosses services, the access-token
//! check, the service credential for internal calls, serving with health and reflection,
//! graceful shutdown, and the mapping of internal errors to a status that leaks nothing.
//! (The chat events and their JetStream stream are the `chat-events` crate's.)

#![warn(missing_docs)]

pub mod batch;
pub mod binary;
pub mod client;
pub mod config;
pub mod convert;
pub mod db;
pub mod domain;
pub mod error;
pub mod guard;
pub mod layer;
pub mod local;
pub mod metrics;
pub mod nats;
pub mod server;
pub mod service_token;
pub mod shutdown;
pub mod token;
pub mod trace;

#[doc(hidden)]
pub use tracing as __tracing;

/// Logs and traces: the services' binaries and the operator share one setup.
pub use chat_telemetry as telemetry;
pub use shutdown::Shutdown;
pub use token::{Caller, Claims, Role, TokenVerifier};
