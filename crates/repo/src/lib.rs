//! The Arca repository on disk.
//!
//! `docs/repository-format.md` is the specification; in short:
//!
//! ```text
//! config                                  MessagePack: format version, id, key check
//! data/<system>/<xx>/<pack-id>            packs of sealed chunk records
//! index/<system>/<pack-id>                index of one pack (rebuildable from it)
//! snapshots/<system>/<snapshot-id>        sealed snapshot record
//! tmp/                                    open packs and files being written
//! ```
//!
//! The key file lives where the media service's configuration says (mode
//! 0600); without it nothing in the repository can be read.

pub mod crypto;
pub mod error;
pub mod forget;
mod fsutil;
pub mod pack;
mod prune;
pub mod record;
mod store;
pub mod verify;

pub use crypto::Keys;
pub use error::RepoError;
pub use forget::RetentionPolicy;
pub use pack::Kind;
pub use record::{
    FileErrorV1, SnapshotInfoV1, SnapshotRecord, SnapshotV1, StoredSnapshot, TransferStatsV1,
};
pub use store::{
    DEFAULT_PACK_SIZE, FORMAT_VERSION, IndexEntry, OpenReport, RepairReport, Repository,
};

/// Parses 64 hex digits.
pub(crate) fn hex32(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}
