//! What every Arca service shares: configuration files, tracing, the NATS
//! connection with its version check, JetStream bootstrap, request/reply
//! helpers and shutdown, identities and job tokens.

pub mod config;
pub mod events;
pub mod identity;
pub mod jetstream;
pub mod memory;
pub mod nats;
pub mod natsconf;
pub mod peer;
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

/// Threads of a service's blocking pool (file and repository work).
///
/// Each thread that allocates gets its own glibc malloc arena, which keeps
/// what was freed in it: tokio's default of up to 512 blocking threads let
/// the agent and media hold some 100 MiB more at peak than they use.
pub const BLOCKING_THREADS: usize = 4;

/// The runtime a service runs on: a thread per CPU and a blocking pool of
/// [`BLOCKING_THREADS`], over a heap of [`memory::ARENAS`] arenas. Call it
/// first thing in `main`, before any other thread starts.
pub fn service_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    memory::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
}
