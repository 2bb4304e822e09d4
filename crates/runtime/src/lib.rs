//! What every Arca service shares: configuration files, tracing, the NATS
//! connection with its version check, JetStream bootstrap, request/reply
//! helpers and shutdown, identities and job tokens.

pub mod config;
pub mod events;
pub mod identity;
pub mod jetstream;
pub mod nats;
pub mod natsconf;
pub mod rpc;
pub mod shutdown;
pub mod telemetry;
pub mod trust;

pub use nats::{NatsError, connect};
pub use rpc::{RpcError, request, request_with_timeout};

/// Refuses a service id or system name that cannot be one subject token
/// (`what` names it in the message, e.g. "media id").
pub fn ensure_name(what: &str, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        arca_schemas::subject::valid_token(name),
        "{what} {name:?} is not a valid name (letters, digits, '-', '_')"
    );
    Ok(())
}
