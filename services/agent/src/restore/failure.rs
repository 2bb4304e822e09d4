//! Why one entry of a restore was not restored. The entry is reported by
//! name (a file error) and the restore goes on; a retry of the restore
//! helps only where the cause is on this system (a full disk, a folder
//! that cannot be created).

use std::io;

use arca_schemas::ChunkId;

use crate::error::AgentError;

use super::metadata::MetadataError;

/// Why an entry was not restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The folder to hold it could not be made.
    #[error("cannot create folder: {0}")]
    Folder(io::Error),
    /// A file (or another entry) in the snapshot stands at the root.
    #[error("the root cannot be replaced by a file")]
    FileAtRoot,
    /// An entry other than a file stands at the root.
    #[error("the root cannot be replaced")]
    AtRoot,
    /// The temporary file could not be made.
    #[error("cannot create file: {0}")]
    Create(io::Error),
    /// The temporary file could not be given its size.
    #[error("cannot size file: {0}")]
    Size(io::Error),
    /// A chunk came after the file was moved into place or given up.
    #[error("the file was already closed")]
    Closed,
    /// Media did not send a chunk; its reason as it gave it.
    #[error("chunk {id}: {reason}")]
    Fetch {
        /// The chunk.
        id: ChunkId,
        /// Media's word, or why the request failed.
        reason: String,
    },
    /// The chunk cannot be verified.
    #[error(transparent)]
    Check(AgentError),
    /// The chunk does not decode or verify.
    #[error(transparent)]
    Chunk(arca_frame::FrameError),
    /// The chunk holds another length than the tree records.
    #[error("chunk {id} holds {got} bytes where the snapshot's tree says {size}")]
    ChunkLength {
        /// The chunk.
        id: ChunkId,
        /// Its length.
        got: usize,
        /// The length the tree records.
        size: usize,
    },
    /// Writing into the temporary file failed.
    #[error("write failed: {0}")]
    Write(io::Error),
    /// The entry could not be moved into place.
    #[error("cannot move into place: {0}")]
    Place(io::Error),
    /// Its metadata could not be set.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The symbolic link could not be made.
    #[error("cannot create symlink: {0}")]
    Symlink(io::Error),
    /// The node is no FIFO, socket or device.
    #[error("not a special file")]
    NotSpecial,
    /// A device node, and the agent does not run as root.
    #[error("device nodes can only be created by root; run the agent as root")]
    DeviceNotRoot,
    /// The FIFO, socket or device node could not be made.
    #[error("cannot create {kind}: {source}")]
    Special {
        /// The kind of node.
        kind: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The folder could not be opened to set its metadata.
    #[error("cannot open folder: {0}")]
    OpenFolder(io::Error),
    /// Another name of a file that was not restored.
    #[error("not restored: it is another name of {0}, which was not restored")]
    FirstNotRestored(String),
    /// The other name could not be linked to the first.
    #[error("cannot link to {first}: {source}")]
    Link {
        /// The first name, as shown.
        first: String,
        /// The cause.
        source: io::Error,
    },
}
