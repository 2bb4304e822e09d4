//! Watching the transfer: the agent is asked how it goes until it ends,
//! its progress published, a cancel passed on, and its silence noticed.

use std::time::{Duration, Instant};

use arca_runtime::rpc::RpcError;
use arca_schemas::event::EventDetail;
use arca_schemas::job::{REPORTED_PATH_MAX, TransferStats};
use arca_schemas::msg::{
    CancelTransfer, GetTransferStatus, TransferCancelled, TransferOutcome, TransferState,
};
use arca_schemas::text::bounded;
use arca_schemas::{JobStep, SystemConfig};

use super::step::StepError;
use super::{Driver, cancelled};

/// Every failure here is the transfer's.
const STEP: JobStep = JobStep::Transferring;

/// How long the agent may hold a transfer status question while the
/// transfer runs: its end is answered at once.
const STATUS_WAIT: Duration = Duration::from_secs(1);

/// The least time between two status questions.
const POLL_PAUSE: Duration = Duration::from_millis(250);

/// How long a status question may take beyond the time the agent holds it.
const STATUS_ANSWER: Duration = Duration::from_secs(4);

/// How many times the client has connected (the first time included).
fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

impl Driver {
    /// Tells the agent to stop the transfer, as far as it listens.
    pub(super) async fn stop_transfer(&self, system: &SystemConfig) {
        match self.cancel_transfer(system).await {
            Ok(r) => {
                tracing::info!(job = %self.rec.id, stopped = r.stopped, "transfer stopped at the deadline")
            }
            Err(e) => {
                tracing::warn!(job = %self.rec.id, error = %e, "agent did not confirm stopping the transfer")
            }
        }
    }

    /// Asks the agent to stop this job's transfer (signed, retried for 10 s).
    async fn cancel_transfer(&self, system: &SystemConfig) -> Result<TransferCancelled, RpcError> {
        let cancel = CancelTransfer { job: self.rec.id };
        self.agent(system).cancel_transfer(&cancel).await
    }

    /// Polls the agent until the transfer ends, publishing progress. A
    /// cancel asks the agent to stop the transfer, then waits for its end.
    ///
    /// The status question, which the agent holds for [`STATUS_WAIT`] while
    /// the transfer runs, is the heartbeat: an agent that has not answered
    /// one for `agent-silence-secs` is silent, and the job stops. Time the
    /// scheduler's own connection was away does not count against the
    /// agent. A backup whose agent went silent after media committed its
    /// snapshot keeps that snapshot.
    pub(super) async fn poll_transfer(
        &mut self,
        system: &SystemConfig,
    ) -> Result<TransferOutcome, StepError> {
        let client = self.sched.client.clone();
        let agent = self.agent(system);
        let silence = Duration::from_secs(self.sched.config.agent_silence_secs);
        let started = Instant::now();
        let mut last_ok = Instant::now();
        let mut connects = connects(&client);
        // A progress event goes out at the first answer, then at most one
        // every two seconds while the counters move; none while they stand.
        let mut last_event: Option<(Instant, TransferStats)> = None;
        let mut stopping = false;
        // The agent answers when the transfer ends or after STATUS_WAIT, so
        // the end is noticed at once; asks are at least POLL_PAUSE apart
        // (an agent that answers at once, an error).
        let req = GetTransferStatus {
            job: self.rec.id,
            wait_ms: STATUS_WAIT.as_millis() as u32,
        };
        let mut pause = Duration::ZERO;
        loop {
            let cancel_now = tokio::select! {
                biased;
                _ = cancelled(self.cancel.clone()), if !stopping => true,
                _ = tokio::time::sleep(pause) => false,
            };
            if cancel_now {
                stopping = true;
                self.note_cancel().await;
                match self.cancel_transfer(system).await {
                    Ok(r) => {
                        tracing::info!(job = %self.rec.id, stopped = r.stopped, "transfer cancel answered")
                    }
                    Err(e) => {
                        tracing::warn!(job = %self.rec.id, error = %e, "agent did not confirm the cancel");
                        return Err(StepError::cancelled(STEP));
                    }
                }
            }
            let asked = Instant::now();
            let ask = agent.status(&req, STATUS_ANSWER + STATUS_WAIT);
            let r = tokio::select! {
                r = ask => r,
                // Asked to cancel while waiting: cancel first, then ask again.
                _ = cancelled(self.cancel.clone()), if !stopping => {
                    pause = Duration::ZERO;
                    continue;
                }
            };
            pause = POLL_PAUSE.saturating_sub(asked.elapsed());
            // The scheduler's own connection was made anew: the agent had
            // no way to answer meanwhile.
            let now_connects = self::connects(&client);
            if now_connects != connects {
                connects = now_connects;
                last_ok = Instant::now();
            }
            match r {
                Ok(TransferState::Done(outcome)) => {
                    if stopping && outcome.snapshot.is_none() {
                        return Err(StepError::cancelled(STEP));
                    }
                    // A cancel that came after the commit leaves the job to
                    // end normally: the snapshot is good.
                    return Ok(outcome);
                }
                Ok(TransferState::Running { stats, current }) => {
                    last_ok = Instant::now();
                    let due = match &last_event {
                        None => true,
                        Some((at, shown)) => {
                            at.elapsed() >= Duration::from_secs(2) && *shown != stats
                        }
                    };
                    if due {
                        last_event = Some((Instant::now(), stats.clone()));
                        let secs = started.elapsed().as_secs_f64().max(0.001);
                        self.event(EventDetail::Progress {
                            bytes_per_sec: stats.bytes as f64 / secs,
                            stats,
                            current: current.map(|c| bounded(&c, REPORTED_PATH_MAX).into_owned()),
                        })
                        .await;
                    }
                }
                Ok(TransferState::Unknown) => {
                    if let Some(outcome) = self.committed_outcome(system).await {
                        return Ok(outcome);
                    }
                    if stopping {
                        return Err(StepError::cancelled(STEP));
                    }
                    return Err(StepError::new(
                        STEP,
                        "the agent no longer knows this transfer (it restarted); run the job again",
                    ));
                }
                Err(e) if e.retryable() && last_ok.elapsed() < silence => {}
                Err(e) => {
                    self.agent_silent = e.retryable();
                    if let Some(outcome) = self.committed_outcome(system).await {
                        tracing::warn!(job = %self.rec.id, error = %e, "the agent went silent after media committed the snapshot");
                        return Ok(outcome);
                    }
                    if stopping {
                        return Err(StepError::cancelled(STEP));
                    }
                    let why = if self.agent_silent {
                        format!(
                            "the agent of {} went silent during the transfer: no answer for {}s                              (agent-silence-secs); last: {e}. Is arca-agent still running there,                              and its network path open?",
                            system.name,
                            last_ok.elapsed().as_secs()
                        )
                    } else {
                        format!(
                            "lost contact with the agent of {} during the transfer: {e}",
                            system.name
                        )
                    };
                    return Err(StepError::new(STEP, why));
                }
            }
        }
    }
}
