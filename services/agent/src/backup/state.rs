//! The walker's state: what it holds from one entry to the next (the
//! parent's nodes, its sink, the files handed to the readers, the entries
//! waiting to go into the tree, the tree batch). Its methods live with
//! the step they perform: `walk`, `file` and `tree`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use arca_schemas::ChunkId;
use arca_schemas::tree::{Node, TreeBatch};

use crate::error::AgentError;
use crate::meta::Names;
use crate::progress::Progress;
use crate::select::Filter;

use super::chunking::ChunkParams;
use super::parent::Parent;
use super::readers::{FileRead, ReadJob};
use super::sink::ChunkSink;

/// The walker.
pub(super) struct Reader<'a> {
    pub(super) parent: Parent,
    pub(super) params: ChunkParams,
    pub(super) key: [u8; 32],
    /// The walker's own sink: tree chunks, files with several names and
    /// what the application hooks add.
    pub(super) sink: ChunkSink,
    /// Files for the readers.
    pub(super) jobs: Option<std::sync::mpsc::SyncSender<ReadJob>>,
    /// The tree's entries in walk order, from the oldest not yet in it.
    pub(super) slots: std::collections::VecDeque<Slot>,
    pub(super) progress: &'a Mutex<Progress>,
    pub(super) filter: Filter,
    pub(super) one_file_system: bool,
    pub(super) exclude_caches: bool,
    pub(super) names: Names,
    /// Files with several names, by (device, inode).
    pub(super) links: HashMap<(u64, u64), FirstName>,
    /// With include patterns: folders met but not yet written, because
    /// nothing under them was taken yet (each is inside the one before).
    pub(super) held: Vec<Node>,
    /// PostgreSQL data directories in backup mode: what a base backup
    /// omits is left out.
    pub(super) postgresql: Vec<PathBuf>,
    pub(super) batch: TreeBatch,
    pub(super) tree: Vec<ChunkId>,
}

/// A file with several names, as first met.
pub(super) struct FirstName {
    pub(super) path: Vec<u8>,
    pub(super) chunks: Vec<ChunkId>,
    pub(super) sizes: Vec<u32>,
    pub(super) size: u64,
}

/// An entry of the tree in walk order, maybe still being read.
pub(super) enum Slot {
    Dir(Node),
    Node(Node),
    File {
        path: PathBuf,
        read: std::sync::mpsc::Receiver<Result<FileRead, AgentError>>,
    },
}
