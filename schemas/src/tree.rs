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
    /// A named pipe.
    Fifo,
    /// A character or block device (which one is in the node's `mode`).
    Device {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
    /// A Unix socket's file (recreated as an inode; no program listens).
    Socket,
}

impl NodeKind {
    /// A short name for listings: `dir`, `file`, `symlink`, `fifo`,
    /// `device`, `socket`.
    pub fn name(&self) -> &'static str {
        match self {
            NodeKind::Dir => "dir",
            NodeKind::File { .. } => "file",
            NodeKind::Symlink { .. } => "symlink",
            NodeKind::Fifo => "fifo",
            NodeKind::Device { .. } => "device",
            NodeKind::Socket => "socket",
        }
    }
}

/// One extended attribute (POSIX ACLs are the `system.posix_acl_access`
/// and `system.posix_acl_default` attributes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Xattr {
    /// Attribute name with its namespace, e.g. `user.comment`.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub name: Vec<u8>,
    /// Raw value.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub value: Vec<u8>,
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
    /// Owner's user name on the system, where it had one; a restore uses
    /// the id this name has on the target when the name exists there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name on the system, where it had one (as `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Extended attributes, ACLs included, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// For a file with several names: the path of its first name in this
    /// tree. The node still lists the chunks, so a restore that leaves the
    /// first name out writes the content instead of linking.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    #[schemars(with = "Option<Vec<u8>>")]
    pub hardlink: Option<Vec<u8>>,
    /// The file had holes (fewer blocks allocated than its size needs); a
    /// restore leaves every all-zero block unwritten.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
    /// The file's size or mtime changed while it was read: its content may
    /// mix old and new bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed: bool,
}

impl Node {
    /// A node of `kind` at `path` with `mode` (type bits included) and no
    /// other metadata: owned by root, dated the epoch, no attributes. For
    /// fixtures and tests; a backup records every field from the file.
    pub fn bare(path: &[u8], kind: NodeKind, mode: u32) -> Node {
        Node {
            path: path.to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            ctime: 0,
            ctime_nsec: 0,
            inode: 0,
            user: None,
            group: None,
            xattrs: Vec::new(),
            hardlink: None,
            sparse: false,
            changed: false,
        }
    }

    /// The file's chunks, none for other kinds.
    pub fn chunks(&self) -> &[ChunkId] {
        match &self.kind {
            NodeKind::File { chunks, .. } => chunks,
            _ => &[],
        }
    }
}

/// A batch of nodes: the content of one tree chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TreeBatch {
    /// Nodes in walk order.
    pub nodes: Vec<Node>,
}

/// The order of two node paths as `std::path::Path` orders them (component
/// by component), for paths as a backup's walk makes them (no `.`, no
/// doubled or trailing `/`): bytes in order, with `/` before any other
/// byte. A snapshot's tree is in this order.
pub fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.iter().map(key).cmp(b.iter().map(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_ordered_as_components_are() {
        let paths: &[&str] = &[
            "/a",
            "/a/b",
            "/a/b/c",
            "/a-b",
            "/a.b",
            "/a/b-c",
            "/a/b.c",
            "/a/bc",
            "/ab",
            "/a b",
            "/a/\u{e9}",
            "/z",
            "/a/b/c/d-e/f",
            "/a/b/c/d/e",
        ];
        for a in paths {
            for b in paths {
                assert_eq!(
                    path_order(a.as_bytes(), b.as_bytes()),
                    std::path::Path::new(a).cmp(std::path::Path::new(b)),
                    "{a} vs {b}"
                );
            }
        }
    }
}
