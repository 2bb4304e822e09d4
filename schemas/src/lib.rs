//! Every name Arca puts on the wire, in one place.
//!
//! - [`subject`]: every NATS subject; no other crate formats one.
//! - [`names`]: JetStream stream and key-value bucket names.
//! - [`msg`]: request and reply bodies of the control protocol (MessagePack).
//! - [`event`]: job events, JSON, published on `arca.events.<job>.<kind>`.
//! - [`tree`]: the file tree a backup records, carried inside tree chunks;
//!   [`path`]: the check every node's path passes before it is used.
//! - [`text`]: text from the lower-trust zone made safe to print.
//! - [`chunk`]: chunk ids and the self-describing chunk framing.
//! - [`codec`]: how bodies are encoded.
//! - [`trust`]: job tokens, the signed snapshot manifest, audit records.
//!
//! [`PROTOCOL_VERSION`] changes whenever a message changes incompatibly.

pub mod chunk;
pub mod codec;
pub mod error;
pub mod event;
pub mod job;
pub mod json_schema;
pub mod msg;
pub mod names;
pub mod path;
pub mod subject;
pub mod system;
pub mod text;
pub mod tree;
pub mod trust;

pub use chunk::ChunkId;
pub use error::{ErrorCode, ErrorReply};
pub use job::{JobId, JobKind, JobRecord, JobStatus, JobStep, PathFilter, SnapshotId};
pub use system::{Application, BackupType, HookSpec, PostgresqlSpec, SuspendSpec, SystemConfig};

/// Version of the control protocol and event format spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Oldest nats-server release Arca works with: 2.9 silently ignores options
/// the services rely on (see the operator guide).
pub const MIN_NATS_SERVER: (u64, u64, u64) = (2, 10, 0);
