//! The Arca repository on disk, and the chunk frame codec.
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
pub mod frame;
mod fsutil;
pub mod pack;
mod prune;
mod store;
pub mod verify;

pub use crypto::Keys;
pub use error::RepoError;
pub use pack::Kind;
pub use store::{
    DEFAULT_PACK_SIZE, FORMAT_VERSION, IndexEntry, OpenReport, RepairReport, Repository,
    SnapshotRecord,
};

/// Parses 64 hex digits.
pub(crate) fn hex32(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}
