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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arca_runtime::rpc::{self, RpcError};
use arca_runtime::trust::Grant;
use arca_schemas::event::EventDetail;
use arca_schemas::job::{
    FILE_ERRORS_NAMED, FileError, REPORTED_MESSAGE_MAX, REPORTED_OUTPUT_MAX, REPORTED_PATH_MAX,
    TransferStats,
};
use arca_schemas::msg::*;
use arca_schemas::subject::{self, AgentVerb, FirewallVerb, MediaVerb};
use arca_schemas::text::bounded;
use arca_schemas::trust::{AuditKind, AuditRecord};
use arca_schemas::{ErrorCode, JobKind, JobRecord, JobStatus, JobStep, SnapshotId, SystemConfig};
use tokio::sync::watch;

use crate::Scheduler;

/// How long the agent may hold a transfer status question while the
/// transfer runs: its end is answered at once.
const STATUS_WAIT: Duration = Duration::from_secs(1);

/// The least time between two status questions.
const POLL_PAUSE: Duration = Duration::from_millis(250);

/// A failed hook's exit status in words (an application step, or a command
/// killed or timed out, has none).
fn exit_words(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit {c}"),
        None => "no exit status".to_owned(),
    }
}

/// How long a silent agent is given to answer a ping before the clean-up.
const SILENT_PING: Duration = Duration::from_secs(2);

/// How long a status question may take beyond the time the agent holds it.
const STATUS_ANSWER: Duration = Duration::from_secs(4);

/// How many times the client has connected (the first time included).
fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// A step failed (or was cancelled): which, and why.
struct StepError {
    step: &'static str,
    error: String,
    cancelled: bool,
}

impl StepError {
    fn new(step: &'static str, error: impl std::fmt::Display) -> Self {
        StepError {
            step,
            error: error.to_string(),
            cancelled: false,
        }
    }

    fn cancelled(step: &'static str) -> Self {
        StepError {
            step,
            error: "cancelled by an operator".to_owned(),
            cancelled: true,
        }
    }
}

/// The jobs of a system's history that set its default deadline.
const HISTORY_JOBS: usize = 10;

/// Seconds a job of `system` of `kind` may run: the system's
/// `job-timeout-secs` when set, otherwise the larger of the scheduler's
/// `job-timeout-secs` and 3 times the longest of the system's last
/// [`HISTORY_JOBS`] successful (or partial) jobs of that kind, from
/// selection to end.
pub(crate) fn deadline_secs(
    system: &SystemConfig,
    kind: JobKind,
    least: u64,
    history: &[JobRecord],
) -> u64 {
    if let Some(t) = system.job_timeout_secs {
        return t;
    }
    let mut done: Vec<&JobRecord> = history
        .iter()
        .filter(|j| j.system == system.name && j.kind == kind)
        .filter(|j| matches!(j.status, JobStatus::Succeeded | JobStatus::Partial))
        .filter(|j| j.ended.is_some())
        .collect();
    done.sort_by_key(|j| std::cmp::Reverse(j.created));
    let longest = done
        .iter()
        .take(HISTORY_JOBS)
        .filter_map(|j| (j.ended? - j.created).to_std().ok())
        .max()
        .map_or(0, |d| d.as_secs());
    least.max(longest.saturating_mul(3))
}

/// `secs` for people: `4h`, `1h30m`, `45s`.
fn human(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

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
    d.enter(JobStep::Selected).await;
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
    d.save().await;
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
            d.save().await;
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
            d.save().await;
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
    /// Fixes the job's overall deadline from now ([`deadline_secs`]).
    async fn set_deadline(&mut self, system: &SystemConfig) {
        let history = match self.sched.all_jobs().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(job = %self.rec.id, error = %e.message, "no job history for the deadline");
                Vec::new()
            }
        };
        let secs = deadline_secs(
            system,
            self.rec.kind,
            self.sched.config.job_timeout_secs,
            &history,
        );
        self.rec.deadline =
            Some(chrono::Utc::now() + chrono::Duration::seconds(secs.min(i64::MAX as u64) as i64));
        self.save().await;
    }

    /// Seconds left until the job's deadline (at least one), for the agent,
    /// which retries its requests to media until then.
    fn left_secs(&self) -> Option<u64> {
        self.rec
            .deadline
            .map(|d| (d - chrono::Utc::now()).num_seconds().max(1) as u64)
    }

    /// What a job that reached its deadline ends with.
    fn deadline_error(&self, system: &SystemConfig) -> StepError {
        let deadline = self.rec.deadline.unwrap_or_else(chrono::Utc::now);
        let ran = (deadline - self.rec.created).num_seconds().max(0) as u64;
        StepError::new(
            "deadline",
            format!(
                "the job was still at step {} at its deadline {} ({} after it was selected), \
                 so it was stopped: the transfer cancelled, the post hook run, the window \
                 closed. If {} needs longer, set `job-timeout-secs` in its systems file \
                 (or raise the scheduler's `job-timeout-secs`, the least deadline of every job)",
                serde_json::to_value(self.rec.step)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                deadline.format("%Y-%m-%dT%H:%M:%SZ"),
                human(ran),
                system.name
            ),
        )
    }

    /// Tells the agent to stop the transfer, as far as it listens.
    async fn stop_transfer(&self, system: &SystemConfig) {
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
        let token = self.token(&system.name, Grant::default());
        rpc::retry(Duration::from_secs(10), || {
            rpc::request_signed(
                &self.sched.client,
                subject::agent(&system.name, AgentVerb::Cancel),
                &cancel,
                rpc::DEFAULT_TIMEOUT,
                &token,
            )
        })
        .await
    }

    /// Runs the steps, then the clean-up, then ends the job.
    async fn run(&mut self, system: &SystemConfig) {
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
        let renewer = tokio::spawn(renew_leases(
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
                Err(StepError::new("deadline", ""))
            }
            Ok(fw) = lost_rx => Err(StepError::new(
                "window-renewed",
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
                self.event(EventDetail::StepFailed {
                    step: e.step.to_owned(),
                    error: e.error.clone(),
                })
                .await;
            }
            // The outcome is persisted before the clean-up, so that a
            // scheduler restarted during the clean-up ends the job with it.
            self.rec.error = Some(format!("{}: {}", e.step, e.error));
            self.save().await;
        }
        let cleanup = self.cleanup(system).await;
        close_media_session(&self.sched.client, &system.media, self.rec.id).await;
        renewer.abort();
        self.end(cleanup).await;
    }

    async fn save(&mut self) {
        self.rec.updated = chrono::Utc::now();
        if let Err(e) = self.sched.put_job(&self.rec).await {
            tracing::error!(job = %self.rec.id, error = %e, "cannot persist job record");
        }
    }

    /// Persists the step about to be acted on.
    async fn enter(&mut self, step: JobStep) {
        self.rec.step = step;
        self.save().await;
        if self.sched.halt_after == Some(step) {
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

    /// Records (once) that an operator asked to cancel.
    async fn note_cancel(&mut self) {
        if self.cancel_noted {
            return;
        }
        self.cancel_noted = true;
        self.rec.cancel_requested = true;
        self.save().await;
        tracing::info!(job = %self.rec.id, step = ?self.rec.step, "cancelling job");
        self.event(EventDetail::CancelRequested {}).await;
    }

    /// Fails the step with a cancellation if one was asked for.
    async fn check_cancel(&mut self, step: &'static str) -> Result<(), StepError> {
        if *self.cancel.borrow() {
            self.note_cancel().await;
            return Err(StepError::cancelled(step));
        }
        Ok(())
    }

    /// Makes a fresh job token for each attempt of a request to `system`'s
    /// agent, or to media on its behalf.
    fn token(
        &self,
        system: &str,
        grant: Grant,
    ) -> impl Fn(&str, &[u8]) -> String + Send + Sync + 'static {
        let issuer = self.sched.issuer.clone();
        let job = self.rec.id;
        let system = system.to_owned();
        move |subject: &str, body: &[u8]| issuer.issue(job, &system, subject, body, &grant)
    }

    fn env(&self, system: &SystemConfig) -> Vec<(String, String)> {
        let mut env = vec![
            ("ARCA_JOB_ID".to_owned(), self.rec.id.to_string()),
            (
                "ARCA_JOB_KIND".to_owned(),
                match self.rec.kind {
                    JobKind::Backup => "backup",
                    JobKind::Restore => "restore",
                }
                .to_owned(),
            ),
            ("ARCA_SYSTEM".to_owned(), system.name.clone()),
            ("ARCA_PATHS".to_owned(), system.paths.join(":")),
        ];
        if let Some(t) = self.rec.backup_type {
            env.push(("ARCA_BACKUP_TYPE".to_owned(), t.as_str().to_owned()));
        }
        if let Some(s) = &self.rec.snapshot {
            env.push(("ARCA_SNAPSHOT".to_owned(), s.to_string()));
        }
        if let Some(t) = &self.rec.target {
            env.push(("ARCA_TARGET".to_owned(), t.clone()));
        }
        env
    }

    fn phases(&self) -> (HookPhase, HookPhase) {
        match self.rec.kind {
            JobKind::Backup => (HookPhase::PreBackup, HookPhase::PostBackup),
            JobKind::Restore => (HookPhase::PreRestore, HookPhase::PostRestore),
        }
    }

    fn hooks(
        &self,
        system: &SystemConfig,
    ) -> (
        Option<arca_schemas::HookSpec>,
        Option<arca_schemas::HookSpec>,
    ) {
        let h = &system.hooks;
        match self.rec.kind {
            JobKind::Backup => (h.pre_backup.clone(), h.post_backup.clone()),
            JobKind::Restore => (h.pre_restore.clone(), h.post_restore.clone()),
        }
    }

    async fn steps(&mut self, system: &SystemConfig) -> Result<(), StepError> {
        let cfg = self.sched.config.clone();
        let client = self.sched.client.clone();
        let retry = Duration::from_secs(cfg.retry_secs);

        // Only an enrolled system's agent can sign a snapshot media accepts.
        if system.agent.is_none() {
            return Err(StepError::new(
                "selected",
                format!(
                    "system {} has no enrolled agent key: add the agent's public key as `agent` \
                     in its systems file (`arca-agent --config FILE --public-key` prints it) and \
                     `arca system edit` it",
                    system.name
                ),
            ));
        }

        // Window opened: every firewall on the path, in order.
        self.enter(JobStep::OpeningWindow).await;
        for fw in &system.firewalls {
            // Recorded before asking, so that clean-up closes it even if
            // the scheduler dies between the request and its answer.
            if !self.rec.open_windows.contains(fw) {
                self.rec.open_windows.push(fw.clone());
                self.save().await;
            }
            let req = OpenWindow {
                job: self.rec.id,
                system: system.name.clone(),
                address: system.address.clone(),
                lease_secs: cfg.lease_secs,
            };
            let r: WindowReply = match rpc::retry(retry, || {
                rpc::request(&client, subject::firewall(fw, FirewallVerb::Open), &req)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    // Its close is still attempted (it may have opened
                    // without answering), but last: the windows that did
                    // open close first, without waiting for it.
                    if let Some(last) = self.rec.open_windows.pop() {
                        self.rec.open_windows.insert(0, last);
                        self.save().await;
                    }
                    return Err(StepError::new(
                        "window-opened",
                        format!("firewall {fw} did not open: {e}"),
                    ));
                }
            };
            {
                let mut confirmed = self.confirmed.lock().expect("confirmed lock");
                if !confirmed.contains(fw) {
                    confirmed.push(fw.clone());
                }
            }
            self.event(EventDetail::WindowOpened {
                firewall: fw.clone(),
                backend: r.backend,
                address: system.address.clone(),
                expires: r.expires,
            })
            .await;
        }
        self.check_cancel("window-opened").await?;

        // Agent present: retried with back-off, since an agent behind a
        // window that just opened needs a moment to reconnect.
        self.enter(JobStep::WaitingForAgent).await;
        let ping = rpc::retry(Duration::from_secs(cfg.agent_timeout_secs), || {
            rpc::request_with_timeout(
                &client,
                subject::agent(&system.name, AgentVerb::Ping),
                &Ping {},
                Duration::from_secs(5),
            )
        });
        let pong: Pong = tokio::select! {
            r = ping => r.map_err(|e| {
                StepError::new(
                    "agent-present",
                    format!(
                        "the agent of {} did not answer within {}s ({e}); is arca-agent running there with system = {:?}?",
                        system.name, cfg.agent_timeout_secs, system.name
                    ),
                )
            })?,
            _ = cancelled(self.cancel.clone()) => {
                self.note_cancel().await;
                return Err(StepError::cancelled("agent-present"));
            }
        };
        self.event(EventDetail::AgentPresent {
            version: bounded(&pong.version, 64).into_owned(),
        })
        .await;
        self.check_cancel("agent-present").await?;

        // Prepared: persisted before the hook starts, so the post hook
        // runs even if we die while it runs. The request is not
        // interrupted by a cancel: the post hook must not overtake it.
        let (pre_phase, _) = self.phases();
        let (pre, post) = self.hooks(system);
        self.rec.prepared = true;
        self.rec.prepared_at.get_or_insert_with(chrono::Utc::now);
        self.enter(JobStep::Preparing).await;
        let req = RunHook {
            job: self.rec.id,
            phase: pre_phase,
            hook: pre.clone(),
            env: self.env(system),
            deadline_secs: Some(cfg.hook_deadline_secs),
            post_hook: post,
            applications: system.applications.clone(),
        };
        let timeout = hook_timeout(pre.as_ref(), system);
        let token = self.token(&system.name, Grant::default());
        let r: HookReply = rpc::retry(Duration::from_secs(cfg.agent_timeout_secs), || {
            rpc::request_signed(
                &client,
                subject::agent(&system.name, AgentVerb::Prepare),
                &req,
                timeout,
                &token,
            )
        })
        .await
        .map_err(|e| StepError::new("prepared", format!("pre hook request failed: {e}")))?;
        let r = HookReply {
            output: bounded(&r.output, REPORTED_OUTPUT_MAX).into_owned(),
            ..r
        };
        self.event(EventDetail::Prepared {
            phase: pre_phase.as_str().to_owned(),
            ran: r.ran,
            success: Some(r.success),
            exit_code: r.exit_code,
            output: r.output.clone(),
        })
        .await;
        if !r.success {
            return Err(StepError::new(
                "prepared",
                format!(
                    "{} hook failed ({}); no data was moved. Output:\n{}",
                    pre_phase.as_str(),
                    exit_words(r.exit_code),
                    r.output
                ),
            ));
        }
        self.check_cancel("prepared").await?;

        // Transferred.
        self.enter(JobStep::Transferring).await;
        let transfer_started = Instant::now();
        // A resumed backup whose snapshot media already committed takes it
        // rather than starting again: never two snapshots for one job.
        let committed = if self.rec.kind == JobKind::Backup && self.rec.resumed > 0 {
            self.committed_snapshot(system).await
        } else {
            None
        };
        let outcome = match committed {
            Some(info) => TransferOutcome {
                stats: info.stats,
                snapshot: Some(info.id),
                file_errors: info.file_errors,
                file_warnings: Vec::new(),
                error: None,
            },
            None => {
                self.start_transfer(system).await?;
                self.poll_transfer(system).await?
            }
        };
        self.rec.stats = outcome.stats.clone();
        // Named up to a bound, counted beyond it, each cut to its bounds.
        let (errors, errors_more) = FileError::capped(&outcome.file_errors);
        let (warnings, warnings_more) = FileError::capped(&outcome.file_warnings);
        self.rec.file_errors = errors;
        self.rec.file_errors_not_named = errors_more;
        self.rec.file_warnings = warnings;
        self.rec.file_warnings_not_named = warnings_more;
        for f in self.rec.file_errors.clone() {
            self.event(EventDetail::FileFailed { file: f }).await;
        }
        for f in self.rec.file_warnings.clone() {
            self.event(EventDetail::FileWarning { file: f }).await;
        }
        if errors_more + warnings_more > 0 {
            tracing::warn!(
                job = %self.rec.id,
                errors_more,
                warnings_more,
                "more file errors than are named (first {FILE_ERRORS_NAMED} of each)"
            );
        }
        if let Some(e) = outcome.error {
            return Err(StepError::new(
                "transferred",
                bounded(&e.message, 4 * REPORTED_MESSAGE_MAX),
            ));
        }
        if self.rec.kind == JobKind::Backup {
            let id = outcome
                .snapshot
                .clone()
                .ok_or_else(|| StepError::new("transferred", "agent reported no snapshot"))?;
            let info = self.reported_snapshot(system, &id).await?;
            self.sched.put_catalog(&info).await.map_err(|e| {
                StepError::new(
                    "transferred",
                    format!("cannot record snapshot {id} in the catalog: {e}"),
                )
            })?;
            self.rec.snapshot = Some(id);
        }
        self.save().await;
        self.event(EventDetail::Transferred {
            stats: self.rec.stats.clone(),
            snapshot: self.rec.snapshot.clone(),
            seconds: transfer_started.elapsed().as_secs_f64(),
        })
        .await;
        Ok(())
    }

    /// The snapshot the agent reported, as media holds it, when it is one
    /// of this system made by this job. Any other (another system's or
    /// job's, one media does not hold, an id that is no id) fails the
    /// step, and the refusal is audited: the agent's word is a claim.
    async fn reported_snapshot(
        &self,
        system: &SystemConfig,
        id: &SnapshotId,
    ) -> Result<SnapshotInfo, StepError> {
        let retry = Duration::from_secs(self.sched.config.retry_secs);
        let shown = arca_schemas::text::escape(&bounded(&id.0, 64)).into_owned();
        let shown = shown.as_str();
        let refuse = |why: String| async move {
            let mut a = AuditRecord::new(AuditKind::Refused, self.sched.audit_by());
            a.system = Some(system.name.clone());
            a.job = Some(self.rec.id);
            a.snapshot = SnapshotId::parse(&id.0);
            a.reason = Some(format!("the agent reported snapshot {shown}: {why}"));
            self.sched.audit(a).await;
            StepError::new(
                "transferred",
                format!(
                    "the agent of {} reported snapshot {shown}, but {why}; nothing was recorded \
                     for this job (the refusal is in the audit stream, `arca audit --system {}`)",
                    system.name, system.name
                ),
            )
        };
        if SnapshotId::parse(&id.0).is_none() {
            return Err(refuse("that is not a snapshot id (16 hex digits)".into()).await);
        }
        let get = GetSnapshot {
            snapshot: id.clone(),
            session: None,
        };
        let reply: Result<SnapshotReply, RpcError> = rpc::retry(retry, || {
            rpc::request(
                &self.sched.client,
                subject::media(&system.media, MediaVerb::Snapshot),
                &get,
            )
        })
        .await;
        let info = match reply {
            Ok(r) => r.info,
            Err(RpcError::Remote(e)) if e.code == ErrorCode::NotFound => {
                return Err(refuse(format!("media {} holds no such snapshot", system.media)).await);
            }
            Err(e) => {
                return Err(StepError::new(
                    "transferred",
                    format!("snapshot {id} committed but not readable from media: {e}"),
                ));
            }
        };
        if info.system != system.name || info.job != self.rec.id {
            return Err(refuse(format!(
                "media holds it for system {} and job {}, not for this job",
                info.system, info.job
            ))
            .await);
        }
        Ok(info)
    }

    /// The system's newest snapshot on its media: unchanged files are
    /// taken from it without being read.
    async fn parent_snapshot(&self, system: &SystemConfig) -> Option<arca_schemas::SnapshotId> {
        let all = self.sched.all_snapshots().await.ok()?;
        all.into_iter()
            .filter(|s| s.system == system.name && s.media == system.media)
            .max_by_key(|s| s.time)
            .map(|s| s.id)
    }

    /// The snapshot media committed for this job, if any.
    async fn committed_snapshot(&self, system: &SystemConfig) -> Option<SnapshotInfo> {
        let req = MediaListSnapshots {
            system: Some(system.name.clone()),
        };
        let r: Result<ListSnapshotsReply, RpcError> =
            rpc::retry(Duration::from_secs(self.sched.config.retry_secs), || {
                rpc::request(
                    &self.sched.client,
                    subject::media(&system.media, MediaVerb::Snapshots),
                    &req,
                )
            })
            .await;
        match r {
            Ok(r) => r.snapshots.into_iter().find(|s| s.job == self.rec.id),
            Err(e) => {
                tracing::warn!(job = %self.rec.id, error = %e, "cannot ask media for this job's snapshot");
                None
            }
        }
    }

    /// Asks media for a session (backup) and the agent to start moving data.
    async fn start_transfer(&self, system: &SystemConfig) -> Result<(), StepError> {
        let client = &self.sched.client;
        let retry = Duration::from_secs(self.sched.config.retry_secs);
        // A restore of another system's snapshot (an operator's override)
        // is checked with the restore grant's own key, never the source's.
        let source = self
            .rec
            .source_system
            .clone()
            .unwrap_or_else(|| system.name.clone());
        let timeout = rpc::DEFAULT_TIMEOUT;
        let own_key = || async {
            let key_req = GetChunkKey {
                system: system.name.clone(),
            };
            let key: ChunkKey = rpc::retry(retry, || {
                rpc::request(
                    client,
                    subject::media(&system.media, MediaVerb::ChunkKey),
                    &key_req,
                )
            })
            .await
            .map_err(|e| {
                StepError::new(
                    "transferred",
                    format!("media {} did not answer: {e}", system.media),
                )
            })?;
            Ok::<_, StepError>(key.key)
        };
        match self.rec.kind {
            JobKind::Backup => {
                let chunk_key = own_key().await?;
                let open = OpenSession {
                    job: self.rec.id,
                    system: system.name.clone(),
                    paths: system.paths.clone(),
                    quota_bytes: system.quota.map(|q| q.0),
                };
                let token = self.token(
                    &system.name,
                    Grant {
                        agent_key: system.agent.clone(),
                        ..Grant::default()
                    },
                );
                let session: SessionOpened = rpc::retry(retry, || {
                    rpc::request_signed(
                        client,
                        subject::media(&system.media, MediaVerb::Session),
                        &open,
                        timeout,
                        &token,
                    )
                })
                .await
                .map_err(|e| {
                    StepError::new(
                        "transferred",
                        format!("media {} did not open a session: {e}", system.media),
                    )
                })?;
                let start = StartBackupTransfer {
                    job: self.rec.id,
                    media: system.media.clone(),
                    session: session.session,
                    paths: system.paths.clone(),
                    // A full backup reads every file; an incremental one
                    // takes unchanged files from the previous snapshot.
                    parent: match self.rec.backup_type {
                        Some(arca_schemas::BackupType::Full) => None,
                        _ => self.parent_snapshot(system).await,
                    },
                    chunk_key,
                    selection: system.selection(),
                    deadline_secs: self.left_secs(),
                };
                let token = self.token(&system.name, Grant::default());
                let _: TransferAccepted = rpc::retry(retry, || {
                    rpc::request_signed(
                        client,
                        subject::agent(&system.name, AgentVerb::Backup),
                        &start,
                        timeout,
                        &token,
                    )
                })
                .await
                .map_err(|e| StepError::new("transferred", e))?;
            }
            JobKind::Restore => {
                let snapshot = self
                    .rec
                    .snapshot
                    .clone()
                    .expect("restore jobs name a snapshot");
                let cross = self.rec.source_system.is_some();
                let grant = Grant {
                    snapshot: Some(snapshot.clone()),
                    source_system: Some(source.clone()),
                    cross_system: cross,
                    agent_key: None,
                };
                // Onto another system, media lets the target read the
                // snapshot only within a restore session the token allows.
                let (session, chunk_key) = if cross {
                    let open = OpenRestoreSession {
                        job: self.rec.id,
                        system: system.name.clone(),
                        snapshot: snapshot.clone(),
                    };
                    let token = self.token(&system.name, grant.clone());
                    let opened: SessionOpened = rpc::retry(retry, || {
                        rpc::request_signed(
                            client,
                            subject::media(&system.media, MediaVerb::RestoreSession),
                            &open,
                            timeout,
                            &token,
                        )
                    })
                    .await
                    .map_err(|e| {
                        StepError::new(
                            "transferred",
                            format!("media {} did not open a restore session: {e}", system.media),
                        )
                    })?;
                    let key = opened
                        .check_key
                        .as_deref()
                        .and_then(|k| <[u8; 32]>::try_from(k).ok())
                        .ok_or_else(|| {
                            StepError::new(
                                "transferred",
                                format!(
                                    "media {} opened a restore session without a check key; \
                                     upgrade it",
                                    system.media
                                ),
                            )
                        })?;
                    (Some(opened.session), key)
                } else {
                    (None, own_key().await?)
                };
                let start = StartRestoreTransfer {
                    job: self.rec.id,
                    media: system.media.clone(),
                    snapshot,
                    target: self.rec.target.clone(),
                    session,
                    chunk_key,
                    filter: self.rec.filter.clone(),
                    keep_privileges: self.rec.keep_privileges,
                    deadline_secs: self.left_secs(),
                };
                let token = self.token(&system.name, grant);
                let _: TransferAccepted = rpc::retry(retry, || {
                    rpc::request_signed(
                        client,
                        subject::agent(&system.name, AgentVerb::Restore),
                        &start,
                        timeout,
                        &token,
                    )
                })
                .await
                .map_err(|e| StepError::new("transferred", e))?;
            }
        }
        Ok(())
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
    async fn poll_transfer(&mut self, system: &SystemConfig) -> Result<TransferOutcome, StepError> {
        let client = self.sched.client.clone();
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
                        return Err(StepError::cancelled("transferred"));
                    }
                }
            }
            let asked = Instant::now();
            let ask = rpc::request_with_timeout::<_, TransferState>(
                &client,
                subject::agent(&system.name, AgentVerb::Status),
                &req,
                STATUS_ANSWER + STATUS_WAIT,
            );
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
                        return Err(StepError::cancelled("transferred"));
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
                        return Err(StepError::cancelled("transferred"));
                    }
                    return Err(StepError::new(
                        "transferred",
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
                        return Err(StepError::cancelled("transferred"));
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
                    return Err(StepError::new("transferred", why));
                }
            }
        }
    }

    /// For a backup: the outcome of the snapshot media committed for this
    /// job, if it committed one (the agent's own report was lost).
    async fn committed_outcome(&self, system: &SystemConfig) -> Option<TransferOutcome> {
        if self.rec.kind != JobKind::Backup {
            return None;
        }
        let info = self.committed_snapshot(system).await?;
        Some(TransferOutcome {
            stats: info.stats,
            snapshot: Some(info.id),
            file_errors: info.file_errors,
            file_warnings: Vec::new(),
            error: None,
        })
    }

    /// Post hook (when the pre hook was started) and window closing.
    /// Returns the first failure, if any; every part is attempted.
    async fn cleanup(&mut self, system: &SystemConfig) -> Option<StepError> {
        let client = self.sched.client.clone();
        let cfg = self.sched.config.clone();
        let mut failure = None;
        if self.rec.prepared && !self.rec.finished {
            self.enter(JobStep::Finishing).await;
            let (_, post_phase) = self.phases();
            let (_, post) = self.hooks(system);
            let timeout = hook_timeout(post.as_ref(), system);
            let req = RunHook {
                job: self.rec.id,
                phase: post_phase,
                hook: post,
                env: self.env(system),
                deadline_secs: None,
                post_hook: None,
                applications: system.applications.clone(),
            };
            let token = self.token(&system.name, Grant::default());
            // A silent agent is not waited for again: one short ping, and
            // the post hook is asked for only if it answers.
            let silent = self.agent_silent
                && rpc::request_with_timeout::<_, Pong>(
                    &client,
                    subject::agent(&system.name, AgentVerb::Ping),
                    &Ping {},
                    SILENT_PING,
                )
                .await
                .is_err();
            let r: Result<HookReply, RpcError> = if silent {
                Err(RpcError::Remote(arca_schemas::error::ErrorReply::new(
                    ErrorCode::Unavailable,
                    "the agent is silent, so the post hook was not asked for",
                )))
            } else {
                rpc::retry(Duration::from_secs(cfg.agent_timeout_secs), || {
                    rpc::request_signed(
                        &client,
                        subject::agent(&system.name, AgentVerb::Finish),
                        &req,
                        timeout,
                        &token,
                    )
                })
                .await
            };
            match r {
                Ok(r) => {
                    let r = HookReply {
                        output: bounded(&r.output, REPORTED_OUTPUT_MAX).into_owned(),
                        ..r
                    };
                    if r.by_agent_deadline {
                        self.event(EventDetail::PostHookByAgent {
                            phase: post_phase.as_str().to_owned(),
                            success: Some(r.success),
                            exit_code: r.exit_code,
                            output: r.output.clone(),
                        })
                        .await;
                    }
                    self.event(EventDetail::Finished {
                        phase: post_phase.as_str().to_owned(),
                        ran: r.ran,
                        success: Some(r.success),
                        exit_code: r.exit_code,
                        output: r.output.clone(),
                    })
                    .await;
                    if !r.success {
                        failure = Some(StepError::new(
                            "finished",
                            format!(
                                "{} hook failed ({}):\n{}",
                                post_phase.as_str(),
                                exit_words(r.exit_code),
                                r.output
                            ),
                        ));
                    }
                }
                Err(e) => {
                    let msg = format!(
                        "post hook request failed: {e}; the agent runs it by itself at its deadline ({}s after the pre hook)",
                        cfg.hook_deadline_secs
                    );
                    self.event(EventDetail::StepFailed {
                        step: "finished".into(),
                        error: msg.clone(),
                    })
                    .await;
                    failure = Some(StepError::new("finished", msg));
                }
            }
            self.rec.finished = true;
            self.save().await;
        }
        self.close_restore_grant(system).await;
        if !self.rec.open_windows.is_empty() {
            self.enter(JobStep::ClosingWindow).await;
        }
        // Closed in reverse order of opening.
        while let Some(fw) = self.rec.open_windows.last().cloned() {
            let close = CloseWindow { job: self.rec.id };
            let r: Result<CloseWindowReply, RpcError> =
                rpc::retry(Duration::from_secs(cfg.retry_secs), || {
                    rpc::request(&client, subject::firewall(&fw, FirewallVerb::Close), &close)
                })
                .await;
            match r {
                Ok(_) => {
                    self.event(EventDetail::WindowClosed {
                        firewall: fw.clone(),
                    })
                    .await
                }
                Err(e) => {
                    let msg = format!(
                        "firewall {fw} did not confirm closing: {e}; its lease ends the window within {}s",
                        cfg.lease_secs
                    );
                    self.event(EventDetail::StepFailed {
                        step: "window-closed".into(),
                        error: msg.clone(),
                    })
                    .await;
                    failure.get_or_insert(StepError::new("window-closed", msg));
                }
            }
            self.rec.open_windows.pop();
            self.save().await;
        }
        failure
    }

    /// Ends a cross-system restore's grant on media, so that the target
    /// reads nothing more of the source once its job ends (media also lets
    /// a grant expire, should this request be lost).
    async fn close_restore_grant(&self, system: &SystemConfig) {
        if self.rec.kind != JobKind::Restore || self.rec.source_system.is_none() {
            return;
        }
        let grant = Grant {
            snapshot: self.rec.snapshot.clone(),
            source_system: self.rec.source_system.clone(),
            cross_system: true,
            agent_key: None,
        };
        let token = self.token(&system.name, grant);
        let close = CloseRestoreSession { job: self.rec.id };
        let r: Result<RestoreSessionClosed, RpcError> =
            rpc::retry(Duration::from_secs(self.sched.config.retry_secs), || {
                rpc::request_signed(
                    &self.sched.client,
                    subject::media(&system.media, MediaVerb::CloseRestore),
                    &close,
                    rpc::DEFAULT_TIMEOUT,
                    &token,
                )
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(job = %self.rec.id, error = %e, "media did not close the restore session; it expires by itself");
        }
    }

    /// Marks the job final. The error recorded before the clean-up (a
    /// failed step or a cancel) wins over one of the clean-up.
    async fn end(&mut self, cleanup: Option<StepError>) {
        if self.rec.error.is_none() {
            self.rec.error = cleanup.map(|e| format!("{}: {}", e.step, e.error));
        }
        let no_file_errors = self.rec.file_errors.is_empty() && self.rec.file_errors_not_named == 0;
        self.rec.status = match (&self.rec.error, no_file_errors) {
            (Some(_), _) if self.rec.cancel_requested => JobStatus::Cancelled,
            (Some(_), _) => JobStatus::Failed,
            (None, false) => JobStatus::Partial,
            (None, true) => JobStatus::Succeeded,
        };
        // A backup that failed after its snapshot was committed and
        // recorded in the catalog (its post hook failed, say) still names
        // it: the snapshot is whole, and the record and the catalog agree.
        if let Some(id) = &self.rec.snapshot
            && self.rec.kind == JobKind::Backup
            && self.rec.status != JobStatus::Succeeded
            && self.rec.status != JobStatus::Partial
            && let Some(e) = &mut self.rec.error
        {
            e.push_str(&format!(
                " (snapshot {id} was committed before this and is whole; it is kept)"
            ));
        }
        self.rec.step = JobStep::Done;
        let now = chrono::Utc::now();
        self.rec.ended = Some(now);
        self.save().await;
        tracing::info!(job = %self.rec.id, system = %self.rec.system, status = ?self.rec.status, error = ?self.rec.error, "job ended");
        self.event(EventDetail::Ended {
            status: self.rec.status,
            snapshot: self.rec.snapshot.clone(),
            stats: self.rec.stats.clone(),
            file_errors: self.rec.file_errors.clone(),
            file_errors_not_named: self.rec.file_errors_not_named,
            error: self.rec.error.clone(),
            seconds: (now - self.rec.created).num_milliseconds() as f64 / 1000.0,
        })
        .await;
    }
}

/// Tells media that a job ended: its backup session accepts nothing more
/// and its restore grant ends.
/// Media also closes a session nothing uses after its `session-idle-secs`,
/// so a failure here is only logged.
async fn close_media_session(client: &async_nats::Client, media: &str, job: arca_schemas::JobId) {
    let r: Result<arca_schemas::msg::SessionClosed, RpcError> = rpc::request(
        client,
        subject::media(media, MediaVerb::CloseSession),
        &arca_schemas::msg::CloseSession { job },
    )
    .await;
    if let Err(e) = r {
        tracing::warn!(%job, %media, error = %e, "media did not confirm closing the job's session; it expires when idle");
    }
}

/// How long a hook request may take: the command's timeout and each
/// application step's, plus a margin for the round trip.
fn hook_timeout(hook: Option<&arca_schemas::HookSpec>, system: &SystemConfig) -> Duration {
    let apps: u64 = system.applications.iter().map(|a| a.timeout_secs()).sum();
    Duration::from_secs(hook.map_or(0, |h| h.timeout_secs) + apps + 30)
}

/// Renews the job's confirmed windows every third of a lease while the job
/// runs; each renewal is a `window-renewed` event. A renewal that fails for
/// a passing reason is logged and tried again at the next turn (the lease
/// still bounds the window); one refused because the controller no longer
/// holds the window is reported on `lost`, and renewing stops.
async fn renew_leases(
    sched: Arc<Scheduler>,
    rec: JobRecord,
    confirmed: Arc<Mutex<Vec<String>>>,
    lost: tokio::sync::oneshot::Sender<String>,
) {
    let lease = sched.config.lease_secs;
    let every = Duration::from_secs((lease / 3).max(1));
    loop {
        tokio::time::sleep(every).await;
        let firewalls = confirmed.lock().expect("confirmed lock").clone();
        for fw in firewalls {
            let req = RenewWindow {
                job: rec.id,
                lease_secs: lease,
            };
            let r: Result<WindowReply, RpcError> = rpc::request_with_timeout(
                &sched.client,
                subject::firewall(&fw, FirewallVerb::Renew),
                &req,
                every,
            )
            .await;
            match r {
                // Published aside: a publish JetStream is slow to take
                // (retried for up to 30 s) must not delay the next renewal.
                Ok(r) => {
                    let (s, rec, firewall) = (sched.clone(), rec.clone(), fw.clone());
                    tokio::spawn(async move {
                        arca_runtime::events::publish(
                            &s.state.js,
                            rec.id,
                            rec.kind,
                            &rec.system,
                            EventDetail::WindowRenewed {
                                firewall,
                                expires: r.expires,
                            },
                        )
                        .await
                    });
                }
                Err(RpcError::Remote(e)) if e.code == arca_schemas::ErrorCode::NotFound => {
                    tracing::warn!(job = %rec.id, firewall = %fw, error = %e, "window lost");
                    let _ = lost.send(fw);
                    return;
                }
                Err(e) => {
                    tracing::debug!(job = %rec.id, firewall = %fw, error = %e, "lease not renewed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(system: &str, kind: JobKind, status: JobStatus, secs: i64) -> JobRecord {
        let created = chrono::Utc::now() - chrono::Duration::hours(1);
        serde_json::from_value(serde_json::json!({
            "id": arca_schemas::JobId::new(),
            "kind": kind,
            "system": system,
            "step": "done",
            "status": status,
            "created": created,
            "updated": created,
            "ended": created + chrono::Duration::seconds(secs),
            "snapshot": null,
            "target": null,
            "open-windows": [],
            "prepared": false,
            "finished": false,
            "stats": arca_schemas::job::TransferStats::default(),
            "file-errors": [],
            "error": null,
        }))
        .unwrap()
    }

    #[test]
    fn the_deadline_is_the_systems_or_grows_with_its_history() {
        let mut sys = crate::registry::placeholder("web01");
        let least = 4 * 3600;
        assert_eq!(deadline_secs(&sys, JobKind::Backup, least, &[]), least);
        let history = vec![
            done("web01", JobKind::Backup, JobStatus::Succeeded, 3 * 3600),
            done("web01", JobKind::Backup, JobStatus::Failed, 20 * 3600),
            done("web01", JobKind::Restore, JobStatus::Succeeded, 10 * 3600),
            done("db01", JobKind::Backup, JobStatus::Succeeded, 10 * 3600),
        ];
        assert_eq!(
            deadline_secs(&sys, JobKind::Backup, least, &history),
            9 * 3600
        );
        sys.job_timeout_secs = Some(600);
        assert_eq!(deadline_secs(&sys, JobKind::Backup, least, &history), 600);
        assert_eq!(human(5400), "1h30m");
        assert_eq!(human(10), "10s");
    }
}
