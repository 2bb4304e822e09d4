//! The agent's errors, and what the wire is told of them.
//!
//! Policy. A step of a transfer or of a request that cannot go on returns an
//! [`AgentError`], which keeps its cause. The wire's `ErrorReply` is made
//! from it only where a reply is sent (a handler's answer, a transfer's
//! outcome), by [`AgentError::to_reply`]; the codes and messages are those
//! the agent has always sent. A file that cannot be read or written is not
//! an error of the transfer: it is reported as a file error and the
//! transfer goes on.
//!
//! - [`Media`](AgentError::Media): a request to media failed. Media or
//!   nats-server down, slow or restarting: a retry can help (the
//!   [`Patience`](crate::patience::Patience) already retried until the job's
//!   deadline). Media refused: its own reply says whether a retry can help.
//! - [`MediaAnswer`](AgentError::MediaAnswer): media answered, but not what
//!   was asked. Internal; a retry does not help.
//! - [`NoCheckValue`](AgentError::NoCheckValue): within a restore session,
//!   media sent a chunk without its check value. Internal; no retry.
//! - [`Chunk`](AgentError::Chunk): what media sent does not decode or
//!   verify under the key, or a tree chunk holds no tree. Corrupt (or the
//!   wrong key); a retry does not help.
//! - [`Codec`](AgentError::Codec): a tree batch could not be encoded.
//!   Internal; a retry does not help.
//! - [`Selection`](AgentError::Selection), [`Filter`](AgentError::Filter),
//!   [`BadRequest`](AgentError::BadRequest): the request or the system's
//!   configuration is wrong (patterns, the target, paths that do not
//!   exist). A retry helps only once it is corrected.
//! - [`Forbidden`](AgentError::Forbidden): the job token does not allow it.
//!   A retry does not help.
//! - [`Io`](AgentError::Io): reading or writing on this system failed where
//!   the whole transfer depends on it. Internal; a retry may help once the
//!   cause is fixed.
//! - [`Application`](AgentError::Application): an application's backup mode
//!   could not be ended, so the snapshot would not be consistent. Internal.
//! - [`Stopped`](AgentError::Stopped): a part of the transfer stopped (a
//!   thread crashed, the sender or the readers ended early). Internal.

use arca_runtime::rpc::RpcError;
use arca_schemas::error::ErrorReply;
use arca_schemas::{ChunkId, ErrorCode};

use crate::select::PatternError;

/// Why a transfer or a request of the agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A request to media failed.
    #[error(transparent)]
    Media(#[from] RpcError),
    /// Media answered for something else than what was asked.
    #[error("{0}")]
    MediaAnswer(&'static str),
    /// Within a restore session, media sent a chunk without the check
    /// value it is verified against.
    #[error("chunk {0}: media sent no check value for the restore session")]
    NoCheckValue(ChunkId),
    /// A chunk from media does not decode or verify.
    #[error(transparent)]
    Chunk(#[from] arca_frame::FrameError),
    /// A tree batch could not be encoded.
    #[error(transparent)]
    Codec(arca_schemas::codec::CodecError),
    /// The system's selection holds a pattern that does not compile.
    #[error("the system's selection: {0}")]
    Selection(#[source] PatternError),
    /// The restore's filter holds a pattern that does not compile.
    #[error(transparent)]
    Filter(PatternError),
    /// The request, or what it names on this system, is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The job token does not allow the request.
    #[error("{0}")]
    Forbidden(String),
    /// Reading or writing `what` on this system failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and to which path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An application's backup mode could not be ended.
    #[error("the application backup could not be completed: {0}")]
    Application(String),
    /// A part of the transfer stopped before its end.
    #[error("{0}")]
    Stopped(String),
}

impl AgentError {
    /// `what` failed on this system with `source`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> AgentError {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }

    /// A part of the transfer stopped, as `why` says.
    pub fn stopped(why: impl Into<String>) -> AgentError {
        AgentError::Stopped(why.into())
    }

    /// True when the same request may succeed later as it is.
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::Media(e) => e.retryable(),
            AgentError::Chunk(e) => e.to_reply().retryable,
            _ => false,
        }
    }

    /// The typed error the wire carries.
    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            AgentError::Media(e) => return e.to_reply(),
            AgentError::Chunk(e) => return e.to_reply(),
            AgentError::Selection(_) | AgentError::Filter(_) | AgentError::BadRequest(_) => {
                ErrorCode::BadRequest
            }
            AgentError::Forbidden(_) => ErrorCode::Forbidden,
            AgentError::MediaAnswer(_)
            | AgentError::NoCheckValue(_)
            | AgentError::Codec(_)
            | AgentError::Io { .. }
            | AgentError::Application(_)
            | AgentError::Stopped(_) => ErrorCode::Internal,
        };
        ErrorReply::new(code, self.to_string())
    }
}

impl From<AgentError> for ErrorReply {
    fn from(e: AgentError) -> ErrorReply {
        e.to_reply()
    }
}
