//! The media service's errors.
//!
//! Policy: everything inside media returns [`MediaError`], which keeps its
//! cause (the repository's [`RepoError`], the frame codec's
//! [`FrameError`]); the wire's [`ErrorReply`] is made from it once, where a
//! request is answered ([`MediaError::to_reply`]). Whether a retry can help
//! follows from the code, mechanically: storage failures and a busy media
//! may pass, the rest will not. Messages are what operators and agents
//! read, and the end-to-end tests assert on them: keep them as they are.

use arca_frame::FrameError;
use arca_repo::RepoError;
use arca_schemas::{ErrorCode, ErrorReply};

/// What went wrong while media served a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The repository failed (I/O, damage, an unknown name).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A chunk frame failed to decode or to match its id.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The request is malformed, or breaks a bound.
    #[error("{0}")]
    BadRequest(String),
    /// The request names a session, snapshot or chunk that is not there.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this (refusals are audited).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with what is stored (a quota).
    #[error("{0}")]
    Conflict(String),
    /// Media is busy; the same request may pass shortly.
    #[error("{0}")]
    Busy(String),
    /// Repository work off the async threads panicked or was cancelled.
    #[error("{0}")]
    Task(String),
    /// A request body that did not decode, as the runtime answered it.
    #[error("{}", .0.message)]
    Request(ErrorReply),
}

impl MediaError {
    /// The wire's reply for this error: code, message, retry hint.
    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            MediaError::Repo(e) => match e {
                RepoError::Io { .. } => ErrorCode::Storage,
                RepoError::Corrupt { .. } => ErrorCode::Corrupt,
                RepoError::NotFound(_) => ErrorCode::NotFound,
                _ => ErrorCode::Internal,
            },
            MediaError::Frame(_) => ErrorCode::Corrupt,
            MediaError::BadRequest(_) => ErrorCode::BadRequest,
            MediaError::NotFound(_) => ErrorCode::NotFound,
            MediaError::Forbidden(_) => ErrorCode::Forbidden,
            MediaError::Conflict(_) => ErrorCode::Conflict,
            MediaError::Busy(_) => ErrorCode::Unavailable,
            MediaError::Task(_) => ErrorCode::Internal,
            MediaError::Request(r) => return r.clone(),
        };
        ErrorReply::new(code, self.to_string())
    }
}

/// A request body that did not decode, or a refusal made by a shared
/// helper of the runtime.
impl From<ErrorReply> for MediaError {
    fn from(r: ErrorReply) -> Self {
        MediaError::Request(r)
    }
}

/// Media's result type.
pub type Result<T, E = MediaError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_errors_keep_their_code_and_message() {
        let e = MediaError::from(RepoError::NotFound("snapshot 0123456789abcdef".into()));
        let r = e.to_reply();
        assert_eq!(r.code, ErrorCode::NotFound);
        assert_eq!(r.message, "snapshot 0123456789abcdef not found");
        let e = MediaError::from(RepoError::Io {
            path: "/x".into(),
            source: std::io::Error::other("disk full"),
        });
        assert!(e.to_reply().retryable);
        assert!(MediaError::Busy("busy".into()).to_reply().retryable);
        assert!(!MediaError::Forbidden("no".into()).to_reply().retryable);
    }
}
