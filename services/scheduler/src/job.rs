//! Driving one job through the steps of method 400 (backup) or 500
//! (restore). Every step is written to the job record before it is acted
//! on and published as an event when done. Whatever happens in between,
//! the clean-up runs: the post hook whenever the pre hook was started, and
//! every window this job opened is closed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arca_runtime::rpc::{self, RpcError};
use arca_schemas::event::EventDetail;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, AgentVerb, FirewallVerb, MediaVerb};
use arca_schemas::{JobKind, JobRecord, JobStatus, JobStep, SystemConfig};

use crate::Scheduler;

/// A step failed: which, and why.
struct StepError {
    step: &'static str,
    error: String,
}

impl StepError {
    fn new(step: &'static str, error: impl std::fmt::Display) -> Self {
        StepError {
            step,
            error: error.to_string(),
        }
    }
}

struct Driver {
    sched: Arc<Scheduler>,
    rec: JobRecord,
    started: Instant,
    /// Firewalls that confirmed opening this job's window: the ones the
    /// renewer renews.
    confirmed: Arc<Mutex<Vec<String>>>,
}

/// Drives a queued job to its end.
pub(crate) async fn drive(sched: Arc<Scheduler>, rec: JobRecord) {
    let mut d = Driver {
        sched,
        rec,
        started: Instant::now(),
        confirmed: Default::default(),
    };
    d.rec.status = JobStatus::Running;
    d.save().await;
    let system = match d.sched.system(&d.rec.system).await {
        Ok(s) => s,
        Err(e) => {
            d.end(Some(StepError::new("selected", e.message))).await;
            return;
        }
    };
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let renewer = tokio::spawn(renew_leases(
        d.sched.clone(),
        d.rec.clone(),
        d.confirmed.clone(),
        lost_tx,
    ));
    // A window lost while the job runs stops the job: it must not go on
    // unguarded, and its agent can no longer be reached anyway.
    let result = tokio::select! {
        r = d.steps(&system) => r,
        Ok(fw) = lost_rx => Err(StepError::new(
            "window-renewed",
            format!(
                "firewall {fw} no longer holds this job's window (its lease ran out, or the \
                 controller restarted and found the job not running); the job stops rather \
                 than run unguarded"
            ),
        )),
    };
    let err = result.err();
    if let Some(e) = &err {
        d.event(EventDetail::StepFailed {
            step: e.step.to_owned(),
            error: e.error.clone(),
        })
        .await;
    }
    let cleanup = d.cleanup(&system).await;
    renewer.abort();
    d.end(err.or(cleanup)).await;
}

/// Cleans up after a job found running when the scheduler started: it
/// cannot be resumed safely, so the post hook runs, windows close, and the
/// job is marked failed.
pub(crate) async fn abandon(sched: Arc<Scheduler>, rec: JobRecord) {
    let mut d = Driver {
        sched,
        rec,
        started: Instant::now(),
        confirmed: Default::default(),
    };
    let cleanup = match d.sched.system(&d.rec.system).await {
        Ok(system) => d.cleanup(&system).await,
        Err(e) => Some(StepError::new("recover", e.message)),
    };
    let reason = StepError::new(
        "recover",
        format!(
            "the scheduler stopped during step {:?}; the job was cleaned up and must be run again",
            d.rec.step
        ),
    );
    d.end(Some(cleanup.unwrap_or(reason))).await;
}

impl Driver {
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

        // Window opened: every firewall on the path, in order.
        self.enter(JobStep::OpeningWindow).await;
        for fw in &system.firewalls {
            // Recorded before asking, so that clean-up closes it even if
            // the scheduler dies between the request and its answer.
            self.rec.open_windows.push(fw.clone());
            self.save().await;
            let req = OpenWindow {
                job: self.rec.id,
                system: system.name.clone(),
                address: system.address.clone(),
                lease_secs: cfg.lease_secs,
            };
            let r: WindowReply = match rpc::retry(Duration::from_secs(10), || {
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
            self.confirmed
                .lock()
                .expect("confirmed lock")
                .push(fw.clone());
            self.event(EventDetail::WindowOpened {
                firewall: fw.clone(),
                backend: r.backend,
                address: system.address.clone(),
                expires: r.expires,
            })
            .await;
        }

        // Agent present.
        self.enter(JobStep::WaitingForAgent).await;
        let pong: Pong = rpc::retry(Duration::from_secs(cfg.agent_timeout_secs), || {
            rpc::request_with_timeout(&client, subject::agent(&system.name, AgentVerb::Ping), &Ping {}, Duration::from_secs(5))
        })
        .await
        .map_err(|e| {
            StepError::new(
                "agent-present",
                format!(
                    "the agent of {} did not answer within {}s ({e}); is arca-agent running there with system = {:?}?",
                    system.name, cfg.agent_timeout_secs, system.name
                ),
            )
        })?;
        self.event(EventDetail::AgentPresent {
            version: pong.version,
        })
        .await;

        // Prepared: persisted before the hook starts, so the post hook
        // runs even if we die while it runs.
        let (pre_phase, _) = self.phases();
        let (pre, post) = self.hooks(system);
        self.rec.prepared = true;
        self.enter(JobStep::Preparing).await;
        let req = RunHook {
            job: self.rec.id,
            phase: pre_phase,
            hook: pre.clone(),
            env: self.env(system),
            deadline_secs: Some(cfg.hook_deadline_secs),
            post_hook: post,
        };
        let timeout = Duration::from_secs(pre.as_ref().map_or(0, |h| h.timeout_secs) + 30);
        let r: HookReply = rpc::request_with_timeout(
            &client,
            subject::agent(&system.name, AgentVerb::Prepare),
            &req,
            timeout,
        )
        .await
        .map_err(|e| StepError::new("prepared", format!("pre hook request failed: {e}")))?;
        self.event(EventDetail::Prepared {
            phase: pre_phase.as_str().to_owned(),
            ran: r.ran,
            exit_code: r.exit_code,
            output: r.output.clone(),
        })
        .await;
        if !r.success {
            return Err(StepError::new(
                "prepared",
                format!(
                    "{} hook failed (exit {:?}); no data was moved. Output:\n{}",
                    pre_phase.as_str(),
                    r.exit_code,
                    r.output
                ),
            ));
        }

        // Transferred.
        self.enter(JobStep::Transferring).await;
        let transfer_started = Instant::now();
        match self.rec.kind {
            JobKind::Backup => {
                let open = OpenSession {
                    job: self.rec.id,
                    system: system.name.clone(),
                    paths: system.paths.clone(),
                };
                let session: SessionOpened = rpc::retry(Duration::from_secs(30), || {
                    rpc::request(
                        &client,
                        subject::media(&system.media, MediaVerb::Session),
                        &open,
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
                };
                let _: TransferAccepted = rpc::retry(Duration::from_secs(30), || {
                    rpc::request(
                        &client,
                        subject::agent(&system.name, AgentVerb::Backup),
                        &start,
                    )
                })
                .await
                .map_err(|e| StepError::new("transferred", e))?;
            }
            JobKind::Restore => {
                let start = StartRestoreTransfer {
                    job: self.rec.id,
                    media: system.media.clone(),
                    snapshot: self
                        .rec
                        .snapshot
                        .clone()
                        .expect("restore jobs name a snapshot"),
                    target: self.rec.target.clone(),
                };
                let _: TransferAccepted = rpc::retry(Duration::from_secs(30), || {
                    rpc::request(
                        &client,
                        subject::agent(&system.name, AgentVerb::Restore),
                        &start,
                    )
                })
                .await
                .map_err(|e| StepError::new("transferred", e))?;
            }
        }
        let outcome = self.poll_transfer(system).await?;
        self.rec.stats = outcome.stats.clone();
        self.rec.file_errors = outcome.file_errors.clone();
        for f in &outcome.file_errors {
            self.event(EventDetail::FileFailed { file: f.clone() })
                .await;
        }
        if let Some(e) = outcome.error {
            return Err(StepError::new("transferred", e.message));
        }
        if self.rec.kind == JobKind::Backup {
            let id = outcome
                .snapshot
                .clone()
                .ok_or_else(|| StepError::new("transferred", "agent reported no snapshot"))?;
            let get = GetSnapshot {
                snapshot: id.clone(),
            };
            let reply: SnapshotReply = rpc::retry(Duration::from_secs(30), || {
                rpc::request(
                    &client,
                    subject::media(&system.media, MediaVerb::Snapshot),
                    &get,
                )
            })
            .await
            .map_err(|e| {
                StepError::new(
                    "transferred",
                    format!("snapshot {id} committed but not readable from media: {e}"),
                )
            })?;
            self.sched.put_catalog(&reply.info).await.map_err(|e| {
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

    /// Polls the agent until the transfer ends, publishing progress.
    async fn poll_transfer(&self, system: &SystemConfig) -> Result<TransferOutcome, StepError> {
        let client = &self.sched.client;
        let stall = Duration::from_secs(self.sched.config.stall_timeout_secs);
        let started = Instant::now();
        let mut last_ok = Instant::now();
        let mut last_event = Instant::now();
        let req = GetTransferStatus { job: self.rec.id };
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let r: Result<TransferState, RpcError> = rpc::request_with_timeout(
                client,
                subject::agent(&system.name, AgentVerb::Status),
                &req,
                Duration::from_secs(5),
            )
            .await;
            match r {
                Ok(TransferState::Done(outcome)) => return Ok(outcome),
                Ok(TransferState::Running { stats, current }) => {
                    last_ok = Instant::now();
                    if last_event.elapsed() >= Duration::from_secs(2) {
                        last_event = Instant::now();
                        let secs = started.elapsed().as_secs_f64().max(0.001);
                        self.event(EventDetail::Progress {
                            bytes_per_sec: stats.bytes as f64 / secs,
                            stats,
                            current,
                        })
                        .await;
                    }
                }
                Ok(TransferState::Unknown) => {
                    return Err(StepError::new(
                        "transferred",
                        "the agent no longer knows this transfer (it restarted); run the job again",
                    ));
                }
                Err(e) if e.retryable() && last_ok.elapsed() < stall => {}
                Err(e) => {
                    return Err(StepError::new(
                        "transferred",
                        format!(
                            "lost contact with the agent of {} during the transfer: {e}",
                            system.name
                        ),
                    ));
                }
            }
        }
    }

    /// Post hook (when the pre hook was started) and window closing.
    /// Returns the first failure, if any; every part is attempted.
    async fn cleanup(&mut self, system: &SystemConfig) -> Option<StepError> {
        let client = self.sched.client.clone();
        let cfg = self.sched.config.clone();
        let mut failure = None;
        if self.rec.prepared {
            self.enter(JobStep::Finishing).await;
            let (_, post_phase) = self.phases();
            let (_, post) = self.hooks(system);
            let timeout = Duration::from_secs(post.as_ref().map_or(0, |h| h.timeout_secs) + 30);
            let req = RunHook {
                job: self.rec.id,
                phase: post_phase,
                hook: post,
                env: self.env(system),
                deadline_secs: None,
                post_hook: None,
            };
            let r: Result<HookReply, RpcError> =
                rpc::retry(Duration::from_secs(cfg.agent_timeout_secs), || {
                    rpc::request_with_timeout(
                        &client,
                        subject::agent(&system.name, AgentVerb::Finish),
                        &req,
                        timeout,
                    )
                })
                .await;
            match r {
                Ok(r) => {
                    self.event(EventDetail::Finished {
                        phase: post_phase.as_str().to_owned(),
                        ran: r.ran,
                        exit_code: r.exit_code,
                        output: r.output.clone(),
                    })
                    .await;
                    if !r.success {
                        failure = Some(StepError::new(
                            "finished",
                            format!(
                                "{} hook failed (exit {:?}):\n{}",
                                post_phase.as_str(),
                                r.exit_code,
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
            self.rec.prepared = false;
            self.save().await;
        }
        if !self.rec.open_windows.is_empty() {
            self.enter(JobStep::ClosingWindow).await;
        }
        // Closed in reverse order of opening.
        while let Some(fw) = self.rec.open_windows.last().cloned() {
            let close = CloseWindow { job: self.rec.id };
            let r: Result<CloseWindowReply, RpcError> = rpc::retry(Duration::from_secs(30), || {
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

    async fn end(&mut self, err: Option<StepError>) {
        self.rec.status = match (&err, self.rec.file_errors.is_empty()) {
            (Some(_), _) => JobStatus::Failed,
            (None, false) => JobStatus::Partial,
            (None, true) => JobStatus::Succeeded,
        };
        if self.rec.status == JobStatus::Failed && self.rec.kind == JobKind::Backup {
            // A failed backup names no snapshot, even if one was committed
            // after the failure of a later step.
            self.rec.snapshot = self.rec.snapshot.take().filter(|_| false);
        }
        self.rec.error = err.map(|e| format!("{}: {}", e.step, e.error));
        self.rec.step = JobStep::Done;
        self.rec.ended = Some(chrono::Utc::now());
        self.save().await;
        tracing::info!(job = %self.rec.id, system = %self.rec.system, status = ?self.rec.status, error = ?self.rec.error, "job ended");
        self.event(EventDetail::Ended {
            status: self.rec.status,
            snapshot: self.rec.snapshot.clone(),
            stats: self.rec.stats.clone(),
            file_errors: self.rec.file_errors.clone(),
            error: self.rec.error.clone(),
            seconds: self.started.elapsed().as_secs_f64(),
        })
        .await;
    }
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
                Ok(r) => {
                    arca_runtime::events::publish(
                        &sched.state.js,
                        rec.id,
                        rec.kind,
                        &rec.system,
                        EventDetail::WindowRenewed {
                            firewall: fw.clone(),
                            expires: r.expires,
                        },
                    )
                    .await
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
