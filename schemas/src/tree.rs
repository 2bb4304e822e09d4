//! The file tree of a snapshot.
//!
//! A tree is a flat list of [`Node`]s in walk order (a folder before what
//! it holds), cut into batches; each batch is encoded with
//! [`crate::codec::encode`] and stored as one chunk (a *tree chunk*). A
//! snapshot names its tree chunks in order. Paths are raw bytes: Unix file
//! names need not be UTF-8.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ChunkId;

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A folder.
    Dir,
    /// A regular file; its contents are the concatenation of its chunks.
    File {
        /// Chunks in order.
        chunks: Vec<ChunkId>,
        /// Plain length of each chunk, so that a restore can write chunks
        /// at their offsets in any order.
        sizes: Vec<u32>,
    },
    /// A symbolic link.
    Symlink {
        /// Link target, raw bytes.
        #[serde(with = "serde_bytes")]
        #[schemars(with = "Vec<u8>")]
        target: Vec<u8>,
    },
}

/// One file system object and its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Node {
    /// Absolute path on the system, raw bytes.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub path: Vec<u8>,
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits and file type bits (`st_mode`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Modification time, nanoseconds within the second.
    pub mtime_nsec: u32,
    /// Size in bytes (files), 0 otherwise.
    pub size: u64,
    /// Status change time, seconds since the epoch.
    #[serde(default)]
    pub ctime: i64,
    /// Status change time, nanoseconds within the second.
    #[serde(default)]
    pub ctime_nsec: u32,
    /// Inode number, to notice a file replaced by another.
    #[serde(default)]
    pub inode: u64,
}

/// A batch of nodes: the content of one tree chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TreeBatch {
    /// Nodes in walk order.
    pub nodes: Vec<Node>,
}
