//! The transfer requests: start a backup or a restore, cancel one, and
//! say how one is going.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::rpc::decode_request;
use arca_schemas::JobId;
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::{
    CancelTransfer, GetTransferStatus, StartBackupTransfer, StartRestoreTransfer, TransferAccepted,
    TransferCancelled, TransferOutcome, TransferState,
};
use arca_schemas::trust::TokenClaims;

use crate::progress::Progress;
use crate::{backup, patience, restore};

use super::Agent;

/// The longest a status question waits for its transfer to end.
const STATUS_WAIT_MAX: Duration = Duration::from_secs(5);

impl Agent {
    /// True when the job's transfer ended without an error.
    pub(super) fn transfer_succeeded(&self, job: JobId) -> bool {
        let transfers = self.transfers.lock().expect("transfers lock");
        transfers.get(&job).is_some_and(|p| {
            p.lock()
                .expect("progress lock")
                .outcome
                .as_ref()
                .is_some_and(|o| o.error.is_none())
        })
    }

    /// Runs a hook once per (job, phase); repeated requests share the
    /// How a transfer waits for media and retries (`deadline_secs`: what
    /// is left of the job's deadline).
    fn patience(&self, deadline_secs: Option<u64>) -> patience::Patience {
        patience::Patience::new(
            Duration::from_secs(self.config.media_timeout_secs),
            Duration::from_secs(self.config.media_retry_secs),
            deadline_secs,
        )
    }

    /// Registers a transfer for `job`; `None` when it is already known.
    fn register(&self, job: JobId) -> Option<Arc<Mutex<Progress>>> {
        let mut transfers = self.transfers.lock().expect("transfers lock");
        if transfers.contains_key(&job) {
            return None;
        }
        let p = Arc::new(Mutex::new(Progress::default()));
        transfers.insert(job, p.clone());
        Some(p)
    }

    pub(super) fn start_backup(
        self: Arc<Self>,
        payload: &[u8],
    ) -> Result<TransferAccepted, ErrorReply> {
        let req: StartBackupTransfer = decode_request(payload)?;
        let Some(progress) = self.register(req.job) else {
            return Ok(TransferAccepted { started: false });
        };
        tracing::info!(job = %req.job, paths = ?req.paths, "backup transfer started");
        let job = req.job;
        let apps = self.apps.lock().expect("apps lock").get(&job).cloned();
        let (me, shown) = (self.clone(), progress.clone());
        let work = async move {
            let deadline_secs = req.deadline_secs;
            let outcome = backup::run(
                me.client.clone(),
                me.config.system.clone(),
                me.identity.clone(),
                backup::Request {
                    transfer: req,
                    apps,
                    readers: me.config.readers,
                },
                me.params,
                me.config.window,
                me.patience(deadline_secs),
                shown,
            )
            .await;
            tracing::info!(%job, snapshot = ?outcome.snapshot, error = ?outcome.error, "backup transfer ended");
            outcome
        };
        Ok(self.spawn_transfer(job, progress, work))
    }

    pub(super) fn start_restore(
        self: Arc<Self>,
        payload: &[u8],
        claims: TokenClaims,
    ) -> Result<TransferAccepted, ErrorReply> {
        let req: StartRestoreTransfer = decode_request(payload)?;
        // Invariant 4, checked by the system written to: another system's
        // snapshot only with the operator's override in the signed token.
        restore::check_grant(&self.config.system, &req, &claims, None)?;
        let Some(progress) = self.register(req.job) else {
            return Ok(TransferAccepted { started: false });
        };
        tracing::info!(job = %req.job, snapshot = %req.snapshot, target = ?req.target, "restore transfer started");
        let job = req.job;
        let (me, shown) = (self.clone(), progress.clone());
        let work = async move {
            let deadline_secs = req.deadline_secs;
            let outcome = restore::run(
                me.client.clone(),
                me.config.system.clone(),
                req,
                claims,
                me.config.window,
                me.patience(deadline_secs),
                shown,
            )
            .await;
            tracing::info!(%job, error = ?outcome.error, files_failed = outcome.file_errors.len(), "restore transfer ended");
            outcome
        };
        Ok(self.spawn_transfer(job, progress, work))
    }

    /// Runs a started transfer as a task the job can cancel; its outcome
    /// goes to the job's progress, where status questions wait for it.
    fn spawn_transfer(
        self: &Arc<Self>,
        job: JobId,
        progress: Arc<Mutex<Progress>>,
        work: impl Future<Output = TransferOutcome> + Send + 'static,
    ) -> TransferAccepted {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let outcome = work.await;
            tokio::task::spawn_blocking(arca_runtime::memory::release_free_memory);
            progress.lock().expect("progress lock").outcome = Some(outcome);
            me.ended.notify_waiters();
        });
        self.tasks
            .lock()
            .expect("tasks lock")
            .insert(job, task.abort_handle());
        TransferAccepted { started: true }
    }

    /// Stops a running transfer. The progress lock is held while the task is
    /// aborted, so the outcome is either the transfer's own (it had ended)
    /// or the cancellation, never both.
    pub(super) fn cancel(&self, payload: &[u8]) -> Result<TransferCancelled, ErrorReply> {
        let req: CancelTransfer = decode_request(payload)?;
        let Some(progress) = self
            .transfers
            .lock()
            .expect("transfers lock")
            .get(&req.job)
            .cloned()
        else {
            return Ok(TransferCancelled { stopped: false });
        };
        let mut p = progress.lock().expect("progress lock");
        if p.outcome.is_some() {
            return Ok(TransferCancelled { stopped: false });
        }
        if let Some(task) = self.tasks.lock().expect("tasks lock").remove(&req.job) {
            task.abort();
        }
        tracing::warn!(job = %req.job, "transfer cancelled");
        p.outcome = Some(TransferOutcome {
            stats: p.stats.clone(),
            snapshot: None,
            file_errors: p.file_errors.clone(),
            file_warnings: crate::progress::cap_file_errors(&p.file_warnings),
            error: Some(ErrorReply::new(
                arca_schemas::ErrorCode::Conflict,
                "the transfer was cancelled; no snapshot was committed",
            )),
        });
        drop(p);
        self.ended.notify_waiters();
        Ok(TransferCancelled { stopped: true })
    }

    /// How the job's transfer is going; with `wait-ms`, answered as soon
    /// as it ends or when that time (at most [`STATUS_WAIT_MAX`]) passed.
    pub(super) async fn status(&self, payload: &[u8]) -> Result<TransferState, ErrorReply> {
        let req: GetTransferStatus = decode_request(payload)?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(req.wait_ms.into()).min(STATUS_WAIT_MAX);
        loop {
            // Registered before looking, so that an end between the look
            // and the wait is not missed.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let state = self.transfer_state(req.job);
            if !matches!(state, TransferState::Running { .. })
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(state);
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn transfer_state(&self, job: JobId) -> TransferState {
        let transfers = self.transfers.lock().expect("transfers lock");
        let Some(p) = transfers.get(&job) else {
            return TransferState::Unknown;
        };
        let p = p.lock().expect("progress lock");
        match &p.outcome {
            Some(o) => TransferState::Done(o.clone()),
            None => TransferState::Running {
                stats: p.stats.clone(),
                current: p.current.clone(),
            },
        }
    }
}
