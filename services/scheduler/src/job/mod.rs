//! Driving one job through the steps of method 400 (backup) or 500
//! (restore). Every step is written to the job record before it is acted
//! on and published as an event when done. Whatever happens in between,
//! the clean-up runs: the post hook whenever the pre hook was started, and
//! every window this job opened is closed.
//!
//! Every request carries the job id, and every responder treats a repeated
//! (job, step) as the same request: opening a window again renews it, the
//! agent answers a repeated hook request with the first result and a
//! repeated transfer start with "already known", media returns the same
//! session. That is what makes a job resumable after the scheduler was
//! killed at any step:
//!
//! - before the post hook (steps up to `transferring`): the steps run again
//!   from the window on, each repeated request landing on the state the
//!   first one left; a backup whose snapshot media already committed for
//!   this job takes that snapshot instead of starting a transfer again. A
//!   job whose pre hook ran longer ago than the agent's deadline is not
//!   resumed: the agent has released the system by itself, so the job is
//!   cleaned up and marked failed, saying so.
//! - `finishing` or `closing-window`, or any step once a failure was
//!   recorded: the clean-up goes on where it stood, and the job ends with
//!   the outcome recorded before the clean-up began.
//!
//! A cancelled job stops at the next step boundary, or at once while it
//! waits for the agent or for the transfer (the agent is told to stop the
//! transfer; a backup stopped this way commits no snapshot), then cleans up
//! as after a failure and ends `cancelled`.
//!
//! Every job has an overall deadline, fixed when it starts and kept in its
//! record (see [`deadline_secs`]): an agent that answers "running" forever
//! cannot hold the queue or its window. At the deadline the job stops
//! wherever it stands, the agent is told to stop the transfer, and the job
//! cleans up and ends `failed`, saying how to give it longer.
//!
//! What the agent reports is its claim and is bounded where it is received:
//! the snapshot it names must be one media holds for this system and this
//! job (anything else fails the job and is audited); file errors and
//! warnings are named up to [`FILE_ERRORS_NAMED`] each and counted beyond;
//! paths, messages and hook output are cut to their bounds before they go
//! into the record or an event.

mod agent;
mod deadline;
mod end;
mod hook;
mod poll;
mod step;
mod transfer;
mod window;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::peer::{AgentPeer, FirewallPeer, JobSigner, Link, MediaPeer};
use arca_schemas::event::EventDetail;
use arca_schemas::{JobRecord, JobStatus, JobStep, SystemConfig};
use tokio::sync::watch;

use crate::Scheduler;
use step::{Stage, StepError};

struct Driver {
    sched: Arc<Scheduler>,
    rec: JobRecord,
    cancel: watch::Receiver<bool>,
    cancel_noted: bool,
    /// Firewalls that confirmed opening this job's window: the ones the
    /// renewer renews.
    confirmed: Arc<Mutex<Vec<String>>>,
    /// The agent went silent during the transfer: the clean-up does not
    /// wait for it.
    agent_silent: bool,
}

/// Resolves once a cancel is signalled (never when the sender is gone).
async fn cancelled(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Drives a queued job to its end.
pub(crate) async fn drive(sched: Arc<Scheduler>, rec: JobRecord, cancel: watch::Receiver<bool>) {
    let mut d = Driver {
        sched,
        rec,
        cancel,
        cancel_noted: false,
        confirmed: Default::default(),
        agent_silent: false,
    };
    d.rec.status = JobStatus::Running;
    if let Err(e) = d.enter(JobStep::Selected).await {
        // Nothing was opened yet: nothing to clean up.
        d.rec.error = Some(e.to_string());
        d.end(None).await;
        return;
    }
    let system = match d.sched.system(&d.rec.system).await {
        Ok(s) => s,
        Err(e) => {
            d.rec.error = Some(format!("selected: {}", e.message));
            d.end(None).await;
            return;
        }
    };
    d.set_deadline(&system).await;
    d.run(&system).await;
}

/// Picks up a job that was running when the scheduler stopped: resumes it
/// where that is safe, otherwise cleans it up and ends it (see the module
/// documentation).
pub(crate) async fn resume(sched: Arc<Scheduler>, rec: JobRecord) {
    let cancel = {
        let _guard = sched.dispatch.lock().await;
        sched.watch_cancel(rec.id)
    };
    let id = rec.id;
    let mut d = Driver {
        sched: sched.clone(),
        rec,
        cancel,
        cancel_noted: false,
        // Windows opened before the restart are renewed again; one whose
        // lease ran out meanwhile stops the job.
        confirmed: Default::default(),
        agent_silent: false,
    };
    d.cancel_noted = d.rec.cancel_requested;
    *d.confirmed.lock().expect("confirmed lock") = d.rec.open_windows.clone();
    d.rec.resumed += 1;
    d.save_or_log().await;
    tracing::warn!(job = %d.rec.id, step = ?d.rec.step, "picking up a job interrupted by a stop");
    d.event(EventDetail::Resumed { step: d.rec.step }).await;
    let system = match d.sched.system(&d.rec.system).await {
        Ok(s) => s,
        Err(e) => {
            // Without the system's record the hooks are unknown; windows
            // still close (their leases end them anyway).
            d.rec.error.get_or_insert(format!(
                "recover: the system is no longer registered ({}); the post hook could not be asked for",
                e.message
            ));
            d.rec.finished = true;
            let mut system = crate::registry::placeholder(&d.rec.system);
            system.firewalls = d.rec.open_windows.clone();
            let cleanup = d.cleanup(&system).await;
            d.end(cleanup).await;
            sched.cancels.lock().expect("cancels lock").remove(&id);
            return;
        }
    };
    let deadline_passed = d.rec.prepared_at.is_some_and(|t| {
        chrono::Utc::now() - t
            >= chrono::Duration::seconds(d.sched.config.hook_deadline_secs as i64)
    });
    match d.rec.step {
        // The clean-up had begun, or a step had failed and its error was
        // recorded: finish the clean-up and end with that outcome.
        JobStep::Finishing | JobStep::ClosingWindow | JobStep::Done => {
            let cleanup = d.cleanup(&system).await;
            d.end(cleanup).await;
        }
        _ if d.rec.error.is_some() => {
            let cleanup = d.cleanup(&system).await;
            d.end(cleanup).await;
        }
        _ if d.rec.cancel_requested => {
            d.rec.error.get_or_insert_with(|| {
                "cancelled by an operator (before the scheduler stopped)".to_owned()
            });
            d.save_or_log().await;
            let cleanup = d.cleanup(&system).await;
            d.end(cleanup).await;
        }
        _ if d.rec.prepared && !d.rec.finished && deadline_passed => {
            let error = format!(
                "recover: the scheduler was away during step {:?} for longer than the agent's deadline \
                 ({}s after the pre hook), so the agent released the system by itself; run the job again",
                d.rec.step, d.sched.config.hook_deadline_secs
            );
            d.rec.error.get_or_insert(error);
            d.save_or_log().await;
            let cleanup = d.cleanup(&system).await;
            d.end(cleanup).await;
        }
        _ => {
            if d.rec.deadline.is_none() {
                d.set_deadline(&system).await;
            }
            d.run(&system).await
        }
    }
    sched.cancels.lock().expect("cancels lock").remove(&id);
}

impl Driver {
    /// Runs the steps, then the clean-up, then ends the job.
    async fn run(&mut self, system: &SystemConfig) {
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
        let renewer = tokio::spawn(window::renew_leases(
            self.sched.clone(),
            self.rec.clone(),
            self.confirmed.clone(),
            lost_tx,
        ));
        // The job's deadline stops it wherever it stands. A window lost
        // while the job runs stops it too: it must not go on unguarded, and
        // its agent can no longer be reached anyway.
        let left = self
            .rec
            .deadline
            .map(|d| (d - chrono::Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::MAX);
        let mut at_deadline = false;
        let result = tokio::select! {
            r = self.steps(system) => r,
            _ = tokio::time::sleep(left.min(Duration::from_secs(100 * 365 * 24 * 3600))) => {
                at_deadline = true;
                Err(StepError::at(Stage::Deadline, ""))
            }
            Ok(fw) = lost_rx => Err(StepError::at(
                Stage::WindowLost,
                format!(
                    "firewall {fw} no longer holds this job's window (its lease ran out, or the \
                     controller restarted and found the job not running); the job stops rather \
                     than run unguarded"
                ),
            )),
        };
        let result = if at_deadline {
            if self.rec.step == JobStep::Transferring {
                self.stop_transfer(system).await;
            }
            Err(self.deadline_error(system))
        } else {
            result
        };
        if let Err(e) = result {
            if e.cancelled {
                self.note_cancel().await;
            } else {
                self.step_failed_at(e.stage, &e.error).await;
            }
            // The outcome is persisted before the clean-up, so that a
            // scheduler restarted during the clean-up ends the job with it.
            self.rec.error = Some(e.to_string());
            self.save_or_log().await;
        }
        let cleanup = self.cleanup(system).await;
        self.close_media_session(system).await;
        renewer.abort();
        self.end(cleanup).await;
    }

    /// Runs the steps of the method, in order; the first failure stops
    /// them.
    async fn steps(&mut self, system: &SystemConfig) -> Result<(), StepError> {
        // Only an enrolled system's agent can sign a snapshot media accepts.
        if system.agent.is_none() {
            return Err(StepError::new(
                JobStep::Selected,
                format!(
                    "system {} has no enrolled agent key: add the agent's public key as `agent` \
                     in its systems file (`arca-agent --config FILE --public-key` prints it) and \
                     `arca system edit` it",
                    system.name
                ),
            ));
        }
        self.open_windows(system).await?;
        self.wait_for_agent(system).await?;
        self.prepare(system).await?;
        self.transfer(system).await
    }

    /// Persists the job record. A write the store still refuses after its
    /// retries fails the step the job is at: a job must not act on what
    /// its record does not say.
    async fn save(&mut self) -> Result<(), StepError> {
        self.rec.updated = chrono::Utc::now();
        self.sched.put_job(&self.rec).await.map_err(|e| {
            tracing::error!(job = %self.rec.id, error = %e, "cannot persist job record");
            StepError::new(
                self.rec.step,
                format!(
                    "cannot record the job's progress in the job store ({}); the job stops \
                     rather than act on what its record does not say. Is JetStream available?",
                    e.message
                ),
            )
        })
    }

    /// Persists the job record during the clean-up or at the end, where a
    /// failure can only be logged: the clean-up goes on regardless.
    async fn save_or_log(&mut self) {
        let _ = self.save().await;
    }

    /// Persists the step about to be acted on.
    async fn enter(&mut self, step: JobStep) -> Result<(), StepError> {
        self.rec.step = step;
        self.save().await?;
        self.halt_here(step).await;
        Ok(())
    }

    /// Persists a step of the clean-up, which goes on even when the record
    /// cannot be written.
    async fn enter_cleanup(&mut self, step: JobStep) {
        self.rec.step = step;
        self.save_or_log().await;
        self.halt_here(step).await;
    }

    /// Tests only ([`crate::RunOptions::halt_after`]): stops acting once
    /// `step` is persisted, so that a test can kill the scheduler there.
    async fn halt_here(&self, step: JobStep) {
        if self.sched.options.halt_after == Some(step) {
            tracing::warn!(job = %self.rec.id, ?step, "test hook: halting after persisting this step");
            std::future::pending::<()>().await;
        }
    }

    async fn event(&self, detail: EventDetail) {
        arca_runtime::events::publish(
            &self.sched.state.js,
            self.rec.id,
            self.rec.kind,
            &self.rec.system,
            detail,
        )
        .await;
    }

    /// Publishes that `step` failed with `error`.
    async fn step_failed(&self, step: JobStep, error: &str) {
        self.step_failed_at(Stage::Step(step), error).await;
    }

    async fn step_failed_at(&self, stage: Stage, error: &str) {
        self.event(EventDetail::StepFailed {
            step: stage.name().to_owned(),
            error: error.to_owned(),
        })
        .await;
    }

    /// Records (once) that an operator asked to cancel.
    async fn note_cancel(&mut self) {
        if self.cancel_noted {
            return;
        }
        self.cancel_noted = true;
        self.rec.cancel_requested = true;
        self.save_or_log().await;
        tracing::info!(job = %self.rec.id, step = ?self.rec.step, "cancelling job");
        self.event(EventDetail::CancelRequested {}).await;
    }

    /// Fails the step with a cancellation if one was asked for.
    async fn check_cancel(&mut self, step: JobStep) -> Result<(), StepError> {
        if *self.cancel.borrow() {
            self.note_cancel().await;
            return Err(StepError::cancelled(step));
        }
        Ok(())
    }

    /// Signs this job's requests to `system`'s agent, or to media on its
    /// behalf: a fresh token for each attempt.
    fn signer(&self, system: &SystemConfig) -> JobSigner {
        JobSigner::new(self.sched.issuer.clone(), self.rec.id, &system.name)
    }

    /// The agent of `system`, waited for `agent-timeout-secs`.
    fn agent(&self, system: &SystemConfig) -> AgentPeer {
        let patience = Duration::from_secs(self.sched.config.agent_timeout_secs);
        AgentPeer::new(
            self.sched.link(),
            &system.name,
            self.signer(system),
            patience,
        )
    }

    /// The media service of `system`.
    fn media(&self, system: &SystemConfig) -> MediaPeer {
        MediaPeer::new(self.sched.link(), &system.media, self.signer(system))
    }

    /// Firewall controller `fw`.
    fn firewall(&self, fw: &str) -> FirewallPeer {
        FirewallPeer::new(self.sched.link(), fw)
    }
}

impl Scheduler {
    /// Requests to peers, each retried for `retry-secs`.
    pub(crate) fn link(&self) -> Link {
        Link::new(
            self.client.clone(),
            Duration::from_secs(self.config.retry_secs),
            None,
        )
    }
}
