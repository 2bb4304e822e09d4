//! Repository errors.
//!
//! Policy: I/O failures are [`RepoError::Io`] and may succeed on retry (disk
//! full, transient errors); data that fails its check is
//! [`RepoError::Corrupt`] and never will; unknown names are `NotFound`.
//! The reply a request gets for one is made by the media service, which
//! owns the wire.

/// What went wrong in the repository.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// Reading or writing a file failed.
    #[error("repository I/O on {path}: {source}")]
    Io {
        /// File or folder.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A stored or received object failed its integrity check.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Object.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The key file is missing, malformed, too open, or not this repository's.
    #[error("{0}")]
    Key(String),
    /// No such chunk or snapshot.
    #[error("{0} not found")]
    NotFound(String),
    /// The repository was made by a newer or unknown format.
    #[error(
        "repository at {path} has format version {found}, this build reads {supported}; keep that folder for the release that wrote it and point the media service at a new folder"
    )]
    Version {
        /// Root.
        path: String,
        /// Found.
        found: u32,
        /// Supported.
        supported: u32,
    },
}

impl RepoError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        RepoError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A frame that fails to decode is a corrupt chunk (or tree chunk); the
/// message is the one the frame codec gives.
impl From<arca_frame::FrameError> for RepoError {
    fn from(e: arca_frame::FrameError) -> Self {
        let (what, detail) = match e {
            arca_frame::FrameError::Corrupt { id, detail } => (format!("chunk {id}"), detail),
            arca_frame::FrameError::NotATree { id, detail } => (format!("tree chunk {id}"), detail),
            other => ("chunk".to_owned(), other.to_string()),
        };
        RepoError::Corrupt { what, detail }
    }
}
