//! What every Arca service shares: configuration files, tracing, the NATS
//! connection with its version check, JetStream bootstrap, request/reply
//! helpers and shutdown.

pub mod config;
pub mod events;
pub mod jetstream;
pub mod nats;
pub mod rpc;
pub mod shutdown;
pub mod telemetry;

pub use nats::{NatsError, connect};
pub use rpc::{RpcError, request, request_with_timeout};
