//! The scheduler's client of one system's agent: ping, the pre and post
//! hooks, starting, watching and stopping a transfer.

use std::time::Duration;

use arca_schemas::msg::{
    CancelTransfer, GetTransferStatus, HookReply, Ping, Pong, RunHook, StartBackupTransfer,
    StartRestoreTransfer, TransferAccepted, TransferCancelled, TransferState,
};
use arca_schemas::subject::{self, AgentVerb};

use super::{JobSigner, Link};
use crate::rpc::{DEFAULT_TIMEOUT, RpcError};
use crate::trust::Grant;

/// How long one ping may take while the agent is waited for.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stop of the transfer is asked for again.
const CANCEL_WINDOW: Duration = Duration::from_secs(10);

/// One system's agent, for one job.
#[derive(Clone)]
pub struct AgentPeer {
    link: Link,
    system: String,
    signer: JobSigner,
    /// How long the agent is waited for: pings, and hook requests.
    patience: Duration,
}

impl AgentPeer {
    /// The agent of `system`, its requests signed by `signer`. Pings and
    /// hook requests are retried for `patience` (the agent may be
    /// reconnecting behind a window that just opened); the others for the
    /// link's window.
    pub fn new(link: Link, system: &str, signer: JobSigner, patience: Duration) -> Self {
        AgentPeer {
            link,
            system: system.to_owned(),
            signer,
            patience,
        }
    }

    fn subject(&self, verb: AgentVerb) -> String {
        subject::agent(&self.system, verb)
    }

    /// Pings until the agent answers, for the patience window.
    pub async fn wait_present(&self) -> Result<Pong, RpcError> {
        let s = self.subject(AgentVerb::Ping);
        self.link
            .retried(self.patience, s, &Ping {}, PING_TIMEOUT, None)
            .await
    }

    /// One ping, answered within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, RpcError> {
        let s = self.subject(AgentVerb::Ping);
        self.link.once(s, &Ping {}, timeout, None).await
    }

    /// Runs the pre hook; each attempt may take `timeout`.
    pub async fn prepare(&self, req: &RunHook, timeout: Duration) -> Result<HookReply, RpcError> {
        self.hook(AgentVerb::Prepare, req, timeout).await
    }

    /// Runs the post hook; each attempt may take `timeout`.
    pub async fn finish(&self, req: &RunHook, timeout: Duration) -> Result<HookReply, RpcError> {
        self.hook(AgentVerb::Finish, req, timeout).await
    }

    async fn hook(
        &self,
        verb: AgentVerb,
        req: &RunHook,
        timeout: Duration,
    ) -> Result<HookReply, RpcError> {
        let token = self.signer.with(Grant::default());
        let s = self.subject(verb);
        self.link
            .retried(self.patience, s, req, timeout, Some(&*token))
            .await
    }

    /// Starts a backup transfer.
    pub async fn start_backup(
        &self,
        req: &StartBackupTransfer,
    ) -> Result<TransferAccepted, RpcError> {
        let token = self.signer.with(Grant::default());
        let s = self.subject(AgentVerb::Backup);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, Some(&*token))
            .await
    }

    /// Starts a restore transfer, with the grant that lets it read the
    /// snapshot.
    pub async fn start_restore(
        &self,
        req: &StartRestoreTransfer,
        grant: Grant,
    ) -> Result<TransferAccepted, RpcError> {
        let token = self.signer.with(grant);
        let s = self.subject(AgentVerb::Restore);
        self.link
            .retried(self.link.retry, s, req, DEFAULT_TIMEOUT, Some(&*token))
            .await
    }

    /// Asks once how the transfer goes; the answer may take `timeout`.
    pub async fn status(
        &self,
        req: &GetTransferStatus,
        timeout: Duration,
    ) -> Result<TransferState, RpcError> {
        let s = self.subject(AgentVerb::Status);
        self.link.once(s, req, timeout, None).await
    }

    /// Asks the agent to stop the transfer (retried for 10 s).
    pub async fn cancel_transfer(
        &self,
        req: &CancelTransfer,
    ) -> Result<TransferCancelled, RpcError> {
        let token = self.signer.with(Grant::default());
        let s = self.subject(AgentVerb::Cancel);
        self.link
            .retried(CANCEL_WINDOW, s, req, DEFAULT_TIMEOUT, Some(&*token))
            .await
    }
}
