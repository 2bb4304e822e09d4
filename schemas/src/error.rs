//! The typed error every failed reply carries.
//!
//! Policy: a handler never stringifies an error into a success reply. It
//! answers with an [`ErrorReply`] whose [`ErrorCode`] tells the caller
//! whether trying again can help; callers map `retryable` mechanically
//! (retry later, or fail the step and emit an event).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What kind of failure a reply reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request was malformed or named something invalid.
    BadRequest,
    /// A named system, job, snapshot or session does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. a job already running).
    Conflict,
    /// The responder is busy or a dependency is not reachable yet.
    Unavailable,
    /// A hook or external command failed.
    HookFailed,
    /// Local storage failed (disk full, I/O error).
    Storage,
    /// Stored data failed its integrity check.
    Corrupt,
    /// The request lacks a valid authorization: no token, or one that is
    /// forged, expired, replayed or for another system; a signature that
    /// does not match.
    Forbidden,
    /// Anything else; a bug or an unexpected condition.
    Internal,
}

/// A failed reply: code, human message, and whether a retry can help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct ErrorReply {
    /// Kind of failure.
    pub code: ErrorCode,
    /// What went wrong and, where possible, what to do next.
    pub message: String,
    /// True when the same request may succeed later.
    pub retryable: bool,
}

impl ErrorReply {
    /// An error with the retry hint taken from the code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retryable = matches!(code, ErrorCode::Unavailable | ErrorCode::Storage);
        Self {
            code,
            message: message.into(),
            retryable,
        }
    }

    /// Shorthand for [`ErrorCode::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// Shorthand for [`ErrorCode::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// Shorthand for [`ErrorCode::Forbidden`].
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// Shorthand for [`ErrorCode::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// The body of every reply: the answer or a typed error.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Reply<T> {
    /// The request succeeded.
    Ok(T),
    /// The request failed.
    Err(ErrorReply),
}

impl<T> From<Result<T, ErrorReply>> for Reply<T> {
    fn from(r: Result<T, ErrorReply>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Err(e),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, ErrorReply> {
    fn from(r: Reply<T>) -> Self {
        match r {
            Reply::Ok(v) => Ok(v),
            Reply::Err(e) => Err(e),
        }
    }
}
