//! What a backend does for the controller: keep filtering in place, and add,
//! refresh and remove (source address, port) pairs under a lease.
//!
//! The controller owns the policy (which job holds which window, leases,
//! reconciliation); a backend only touches packets. Calls are blocking (the
//! nftables backend runs `nft`); the controller runs them off the async
//! workers.
//!
//! Errors: [`BackendError`]; none of them is helped by retrying the same
//! request at once, so the controller answers them as internal errors and
//! the scheduler fails the step (the lease still bounds any window).

use std::net::IpAddr;
use std::time::Duration;

/// One (source address, port) pair let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pair {
    /// Source address allowed.
    pub address: IpAddr,
    /// Guarded port it may reach.
    pub port: u16,
}

/// A pair found in place at start, with what is left of its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The pair.
    pub pair: Pair,
    /// Time left before it expires by itself.
    pub expires_in: Duration,
    /// The tag it was added with (see [`Backend::open`]), if any.
    pub tag: Option<String>,
}

/// A backend operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The `nft` program could not be run.
    #[error("cannot run {program}: {source}; install nftables (e.g. `apt-get install nftables`)")]
    Spawn {
        /// Program tried.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// `nft` refused a script or a listing.
    #[error("nft failed to {what}: {stderr}")]
    Nft {
        /// What was being done.
        what: String,
        /// What nft said.
        stderr: String,
    },
    /// A table of the configured name exists and was not made by Arca.
    #[error(
        "nftables table inet {table} exists but was not created by arca-firewall; \
         it is left alone: choose another `table` name in the configuration"
    )]
    ForeignTable {
        /// Table name.
        table: String,
    },
    /// A listing could not be understood.
    #[error("cannot read nft's listing of {what}: {source}")]
    Parse {
        /// What was listed.
        what: String,
        /// Why it did not parse.
        source: crate::nft::ListingError,
    },
}

/// Filtering behind the controller. Implementations must be idempotent:
/// opening an open pair refreshes its lease, closing a closed pair succeeds.
pub trait Backend: Send + Sync + 'static {
    /// Name in replies and events (`none`, `nftables`).
    fn name(&self) -> &'static str;

    /// Puts filtering in place and returns the pairs found already open
    /// (left by an earlier run), for the controller to reconcile.
    fn start(&self) -> Result<Vec<Element>, BackendError>;

    /// Lets `pairs` through for `lease`, after which they close by
    /// themselves. `tag` is stored with each pair (found again by
    /// [`Backend::start`] after a restart).
    fn open(&self, pairs: &[Pair], lease: Duration, tag: &str) -> Result<(), BackendError>;

    /// Stops letting `pairs` through.
    fn close(&self, pairs: &[Pair]) -> Result<(), BackendError>;
}

/// The `none` backend: filters nothing. For hosts whose firewall is managed
/// by other means; the controller still records and reports windows.
#[derive(Debug, Default)]
pub struct NoneBackend;

impl Backend for NoneBackend {
    fn name(&self) -> &'static str {
        "none"
    }

    fn start(&self) -> Result<Vec<Element>, BackendError> {
        Ok(Vec::new())
    }

    fn open(&self, _: &[Pair], _: Duration, _: &str) -> Result<(), BackendError> {
        Ok(())
    }

    fn close(&self, _: &[Pair]) -> Result<(), BackendError> {
        Ok(())
    }
}
