//! The Arca repository on disk, and the chunk frame codec.
//!
//! Layout under the repository root (format version 0, the walking
//! skeleton's; `docs/repository-format.md` describes it):
//!
//! ```text
//! config                                  MessagePack RepoConfig
//! tmp/                                    files being written
//! systems/<system>/chunks/<xx>/<id-hex>   one chunk frame per file
//! systems/<system>/snapshots/<snapshot>   MessagePack SnapshotRecord
//! ```
//!
//! Every file is written under `tmp/`, fsynced, renamed into place, and
//! its folder fsynced, so a file that exists is whole and durable. A
//! snapshot is written only after every chunk it names exists.

pub mod error;
pub mod frame;
mod fsutil;
mod store;

pub use error::RepoError;
pub use store::{Repository, SnapshotRecord};
