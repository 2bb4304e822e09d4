//! One client per peer: everything a request to a service needs besides its
//! body lives here, so that a call site reads as the step it performs
//! (`media.open_session(...)`, `agent.wait_present()`).
//!
//! A peer client carries the NATS connection, the peer's subjects, the
//! timeout of each request, how long a failed request is tried again
//! ([`crate::rpc::retry_capped`]) and the job token it signs with. The
//! windows and timeouts are the caller's, given when the client is made;
//! each method documents which it uses.

mod agent;
mod firewall;
mod media;

pub use agent::AgentPeer;
pub use firewall::FirewallPeer;
pub use media::MediaPeer;

use std::sync::Arc;
use std::time::Duration;

use arca_schemas::JobId;
use arca_schemas::msg::Request;
use async_nats::Client;

use crate::rpc::{self, RpcError, Signer};
use crate::trust::{Grant, Issuer};

/// What every peer client shares: the connection, how long a failed request
/// is tried again, and the time no retry goes past.
#[derive(Clone)]
pub struct Link {
    client: Client,
    retry: Duration,
    cap: Option<tokio::time::Instant>,
}

impl Link {
    /// Requests on `client`, each retried for `retry` after its first
    /// failure, and never past `cap` when one is given.
    pub fn new(client: Client, retry: Duration, cap: Option<tokio::time::Instant>) -> Self {
        Link { client, retry, cap }
    }

    /// The connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One attempt.
    async fn once<R: Request>(
        &self,
        subject: String,
        body: &R,
        timeout: Duration,
        sign: Option<&Signer>,
    ) -> Result<R::Reply, RpcError> {
        rpc::call(&self.client, subject, body, timeout, sign).await
    }

    /// Tried again for `within` after the first failure (see
    /// [`rpc::retry_capped`]).
    async fn retried<R: Request>(
        &self,
        within: Duration,
        subject: String,
        body: &R,
        timeout: Duration,
        sign: Option<&Signer>,
    ) -> Result<R::Reply, RpcError> {
        rpc::call_retried(within, self.cap, &self.client, subject, body, timeout, sign).await
    }
}

/// Signs requests of one job for one system: a fresh token for each
/// attempt, so that a retried request is not a replay.
#[derive(Clone)]
pub struct JobSigner {
    issuer: Issuer,
    job: JobId,
    system: String,
}

impl JobSigner {
    /// Tokens of `job` for `system`, issued by `issuer`.
    pub fn new(issuer: Issuer, job: JobId, system: &str) -> Self {
        JobSigner {
            issuer,
            job,
            system: system.to_owned(),
        }
    }

    /// The token maker of requests that carry `grant`.
    pub fn with(&self, grant: Grant) -> Arc<Signer> {
        let (issuer, job, system) = (self.issuer.clone(), self.job, self.system.clone());
        Arc::new(move |subject: &str, body: &[u8]| {
            issuer.issue(job, &system, subject, body, &grant)
        })
    }
}
