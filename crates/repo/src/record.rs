//! The snapshot record as it is sealed on disk, versioned on its own.
//!
//! These types are the repository format, not the wire: the catalog's
//! `SnapshotInfo` reply may change without changing a byte of a stored
//! snapshot, because the media service converts between the two. Each
//! version is a struct of its own ([`SnapshotV1`]); [`StoredSnapshot`]
//! names them all, and [`SnapshotRecord`] is the one this build writes.
//!
//! A record is MessagePack with field names (`codec::encode`), exactly as
//! version 1 has always written it: the version is not a tag inside the
//! record (that would change its bytes) but the repository's
//! `FORMAT_VERSION`, which [`StoredSnapshot::decode`] dispatches on. The
//! test `crates/repo/tests/format_v1.rs` reads a repository written by the
//! first release against these types and fails when their bytes change.
//!
//! The ids inside a record (`SnapshotId`, `JobId`, `ChunkId`) are the
//! shared id types of `arca-schemas`; their encodings are part of this
//! format too and the same fixture pins them.

use arca_schemas::{ChunkId, JobId, SnapshotId, codec};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The snapshot record this build writes.
pub type SnapshotRecord = SnapshotV1;

/// A stored snapshot record of any version this build reads.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StoredSnapshot {
    /// Format version 1.
    V1(SnapshotV1),
}

impl StoredSnapshot {
    /// Decodes the plain bytes of a record of a repository at
    /// `format_version`; `None` for a version this build does not know.
    pub fn decode(format_version: u32, plain: &[u8]) -> Option<Result<Self, codec::CodecError>> {
        match format_version {
            1 => Some(codec::decode(plain).map(StoredSnapshot::V1)),
            _ => None,
        }
    }

    /// The record's plain bytes, as its version lays them out.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StoredSnapshot::V1(r) => r.encode(),
        }
    }

    /// The record as this build's current version.
    pub fn into_current(self) -> SnapshotRecord {
        match self {
            StoredSnapshot::V1(r) => r,
        }
    }
}

/// A snapshot as stored (version 1): what the catalog shows of it, and
/// its tree chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotV1 {
    /// What the catalog shows.
    pub info: SnapshotInfoV1,
    /// Tree chunks in order.
    pub tree: Vec<ChunkId>,
}

/// The catalog view of a stored snapshot (version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfoV1 {
    /// Snapshot id.
    pub id: SnapshotId,
    /// System it was taken of.
    pub system: String,
    /// Job that made it.
    pub job: JobId,
    /// When it was committed.
    pub time: DateTime<Utc>,
    /// Paths backed up.
    pub paths: Vec<String>,
    /// Media service holding it.
    pub media: String,
    /// Counters of the backup.
    pub stats: TransferStatsV1,
    /// Files that could not be read; a snapshot with any is partial.
    pub file_errors: Vec<FileErrorV1>,
    /// Public key of the agent that signed the snapshot's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The manifest signature (ed25519, hex), checkable against `signer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Counters of the backup that made a snapshot (version 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TransferStatsV1 {
    /// Files, folders and links seen.
    pub entries: u64,
    /// Regular files read.
    pub files: u64,
    /// Plain bytes of file contents read.
    pub bytes: u64,
    /// Chunks sent.
    pub chunks: u64,
    /// Chunks the repository did not have yet.
    pub new_chunks: u64,
    /// Bytes that crossed the network after compression.
    pub wire_bytes: u64,
    /// Files not read because the parent snapshot has them unchanged.
    #[serde(default)]
    pub unchanged_files: u64,
}

/// A file a backup could not read (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileErrorV1 {
    /// Path of the file, lossily converted to UTF-8 for display.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

impl SnapshotV1 {
    /// The record's plain bytes (before sealing).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("snapshot record encodes")
    }
}
