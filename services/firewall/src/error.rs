//! The controller's errors.
//!
//! Policy: a request handler returns [`FirewallError`], which keeps its
//! cause; the reply on the wire is made from it in one place
//! ([`FirewallError::to_reply`]) when the request is answered. Whether the
//! scheduler may try again follows from the kind:
//!
//! - the request was wrong ([`FirewallError::Malformed`],
//!   [`FirewallError::Lease`], [`FirewallError::Address`],
//!   [`FirewallError::SystemName`], [`FirewallError::UnknownVerb`]): trying
//!   the same request again cannot help; the step fails;
//! - the window is gone ([`FirewallError::NoWindow`]): the lease ran out or
//!   the window was closed; the scheduler opens it again or fails the step;
//! - the backend failed ([`FirewallError::Backend`]): `nft` refused or could
//!   not run. Not retried at once either: the lease bounds any window that
//!   was half opened, and the error says what to install or check.

use arca_schemas::JobId;
use arca_schemas::codec::CodecError;
use arca_schemas::error::{ErrorCode, ErrorReply};

use crate::backend::BackendError;

/// Why the controller refused or failed a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// The request's body does not decode as the verb's message.
    #[error("malformed request: {0}")]
    Malformed(#[source] CodecError),
    /// The subject names no verb of the controller.
    #[error("unknown verb in {0}")]
    UnknownVerb(String),
    /// The lease asked for is zero or longer than the controller allows.
    #[error("lease of {secs}s outside 1..={max}s")]
    Lease {
        /// Lease asked for.
        secs: u64,
        /// `max-lease-secs` of the controller.
        max: u64,
    },
    /// The system's address is not an IP address.
    #[error("address {address:?} of system {system} is not an IP address")]
    Address {
        /// Address as sent.
        address: String,
        /// System it was sent for.
        system: String,
    },
    /// The system's name cannot be a subject token.
    #[error("{0:?} is not a valid system name")]
    SystemName(String),
    /// No window is open for the job.
    #[error("no window open for job {0} (closed, or its lease ran out)")]
    NoWindow(JobId),
    /// The backend failed to filter as asked.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl FirewallError {
    /// The reply on the wire.
    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            FirewallError::Malformed(_)
            | FirewallError::UnknownVerb(_)
            | FirewallError::Lease { .. }
            | FirewallError::Address { .. }
            | FirewallError::SystemName(_) => ErrorCode::BadRequest,
            FirewallError::NoWindow(_) => ErrorCode::NotFound,
            FirewallError::Backend(_) => ErrorCode::Internal,
        };
        ErrorReply::new(code, self.to_string())
    }
}

/// Decodes a request's body.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, FirewallError> {
    arca_schemas::codec::decode(payload).map_err(FirewallError::Malformed)
}
