//! The scheduler (the patent's cell manager): the registry of systems, the
//! job queue and state machine of backup (method 400) and restore (method
//! 500), and the snapshot catalog. It starts everything; every step is
//! persisted in the job record before it is acted on and published as a
//! job event.

mod catalog;
mod config;
mod door;
mod job;
mod queue;
mod registry;
pub mod schedule;
mod store;

pub use config::Config;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::jetstream::{AuditRetention, EventsRetention, State};
use arca_runtime::rpc::{decode_request, respond, verb};
use arca_schemas::error::ErrorReply;
use arca_schemas::event::EventDetail;
use arca_schemas::job::Trigger;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, SchedulerVerb};
use arca_schemas::trust::{AuditKind, AuditRecord};
use arca_schemas::{BackupType, ErrorCode, JobId, JobKind, JobRecord, JobStatus, JobStep};
use async_nats::{Client, Message};
use futures::StreamExt;

/// How [`run_with_options`] behaves beyond its configuration: hooks for
/// tests, which the release binary never sets (nothing here is read from
/// the environment).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Tests only: the job step after whose persisting the scheduler stops
    /// acting on jobs, so that a test can kill it there.
    pub halt_after: Option<JobStep>,
}

impl RunOptions {
    /// Jobs halt once `step` is persisted.
    pub fn halt_after(step: JobStep) -> Self {
        RunOptions {
            halt_after: Some(step),
        }
    }
}

/// What a new job is, apart from its system.
struct NewJob {
    kind: JobKind,
    snapshot: Option<arca_schemas::SnapshotId>,
    target: Option<String>,
    backup_type: Option<BackupType>,
    trigger: Trigger,
    scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    filter: arca_schemas::PathFilter,
    source_system: Option<String>,
    operator: Option<String>,
    keep_privileges: bool,
}

pub(crate) struct Scheduler {
    config: Config,
    /// Signs the job tokens agents and media require.
    issuer: arca_runtime::trust::Issuer,
    client: Client,
    state: State,
    queue: queue::Queue,
    /// Cancel signals of the jobs being driven.
    cancels: Mutex<HashMap<JobId, tokio::sync::watch::Sender<bool>>>,
    /// Taken while a job moves from queued to running, and while a cancel
    /// decides whether a job is queued or running.
    dispatch: tokio::sync::Mutex<()>,
    /// Test hooks.
    options: RunOptions,
}

/// Runs the scheduler until `shutdown` resolves.
pub async fn run(
    config: Config,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_door(config, client, None, shutdown).await
}

/// Runs the scheduler until `shutdown` resolves; with `door`, a connection
/// of the door watcher (see [`Config::door_identity_file`]), it records the
/// NATS server's refusals in the audit stream.
pub async fn run_with_door(
    config: Config,
    client: Client,
    door: Option<Client>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_options(config, client, door, RunOptions::default(), shutdown).await
}

/// [`run_with_door`], with the hooks of `options` (tests).
pub async fn run_with_options(
    config: Config,
    client: Client,
    door: Option<Client>,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.check()?;
    let identity = config.identity().map_err(|e| anyhow::anyhow!("{e}"))?;
    let retention = EventsRetention {
        max_age: Duration::from_secs(config.events_max_age_days * 24 * 3600),
        max_bytes: config.events_max_bytes,
        max_msgs: config.events_max_msgs,
        max_msgs_per_subject: config.events_max_msgs_per_subject,
        ..EventsRetention::default()
    };
    let audit = AuditRetention {
        max_bytes: config.audit_max_bytes,
        max_msgs_per_subject: config.audit_max_msgs_per_subject,
        ..AuditRetention::default()
    };
    let state = arca_runtime::jetstream::bootstrap_with(&client, retention, audit).await?;
    if let Some(step) = options.halt_after {
        tracing::warn!(?step, "test hook: jobs halt after persisting this step");
    }
    let sched = Arc::new(Scheduler {
        config,
        issuer: arca_runtime::trust::Issuer::new(identity),
        client: client.clone(),
        state,
        queue: queue::Queue::new(),
        cancels: Mutex::new(HashMap::new()),
        dispatch: tokio::sync::Mutex::new(()),
        options,
    });
    let mut requests = client
        .subscribe(subject::scheduler_all(&sched.config.id))
        .await?;
    client.flush().await?;
    let door = door.map(|d| tokio::spawn(crate::door::watch(sched.clone(), d)));
    let interrupted = sched.recover().await?;
    tracing::info!(id = %sched.config.id, max_parallel = sched.config.max_parallel, "scheduler ready");

    // The schedules are watched from the start (they only queue jobs).
    // Jobs interrupted by a stop are resumed or ended first; the workers
    // start once they are done, so the number of jobs at work stays within
    // max-parallel.
    let s = sched.clone();
    let workers = tokio::spawn(async move {
        // Dropping the set (when this task is aborted at shutdown) aborts
        // every task in it.
        let mut workers = tokio::task::JoinSet::new();
        workers.spawn(s.clone().schedule_loop());
        futures::future::join_all(
            interrupted
                .into_iter()
                .map(|rec| job::resume(s.clone(), rec)),
        )
        .await;
        // After the interrupted jobs took their own snapshots.
        workers.spawn(s.clone().reconcile_loop());
        for _ in 0..s.config.max_parallel {
            let s = s.clone();
            workers.spawn(async move {
                loop {
                    let id = s.queue.pop().await;
                    s.clone().run_queued(id).await;
                }
            });
        }
        while workers.join_next().await.is_some() {}
    });

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(msg) = requests.next() => {
                let s = sched.clone();
                tokio::spawn(async move { s.handle(msg).await });
            }
            else => break,
        }
    }
    workers.abort();
    if let Some(d) = door {
        d.abort();
    }
    tracing::info!("scheduler stopped");
    Ok(())
}

impl Scheduler {
    async fn handle(self: Arc<Self>, msg: Message) {
        let c = &self.client;
        let p = &msg.payload;
        match SchedulerVerb::parse(verb(&msg.subject)) {
            Some(SchedulerVerb::LoadSystems) => respond(c, &msg, self.load_systems(p).await).await,
            Some(SchedulerVerb::ListSystems) => respond(c, &msg, self.list_systems().await).await,
            Some(SchedulerVerb::GetSystem) => respond(c, &msg, self.get_system(p).await).await,
            Some(SchedulerVerb::RemoveSystem) => {
                respond(c, &msg, self.remove_system(p).await).await
            }
            Some(SchedulerVerb::Backup) => respond(c, &msg, self.start_backup(p).await).await,
            Some(SchedulerVerb::Restore) => respond(c, &msg, self.start_restore(p).await).await,
            Some(SchedulerVerb::ListJobs) => respond(c, &msg, self.list_jobs(p).await).await,
            Some(SchedulerVerb::GetJob) => respond(c, &msg, self.get_job(p).await).await,
            Some(SchedulerVerb::Forget) => respond(c, &msg, self.forget(p).await).await,
            Some(SchedulerVerb::Cancel) => respond(c, &msg, self.cancel(p).await).await,
            Some(SchedulerVerb::ListSnapshots) => {
                respond(c, &msg, self.list_snapshots(p).await).await
            }
            Some(SchedulerVerb::RebuildCatalog) => {
                respond(c, &msg, self.rebuild_catalog(p).await).await
            }
            None => {
                let r: Result<(), _> = Err(ErrorReply::bad_request(format!(
                    "unknown verb in {}",
                    msg.subject
                )));
                respond(c, &msg, r).await
            }
        }
    }

    /// Takes a job off the queue and drives it, unless it was cancelled
    /// while it waited.
    async fn run_queued(self: Arc<Self>, id: JobId) {
        let guard = self.dispatch.lock().await;
        let rec = match self.load_job(&id).await {
            Ok(Some(rec)) if rec.status == JobStatus::Queued => rec,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(job = %id, error = %e, "cannot load queued job");
                return;
            }
        };
        let cancel = self.watch_cancel(id);
        drop(guard);
        job::drive(self.clone(), rec, cancel).await;
        self.cancels.lock().expect("cancels lock").remove(&id);
    }

    /// Who the scheduler's audit records name.
    fn audit_by(&self) -> String {
        format!("scheduler/{}", self.config.id)
    }

    /// Stores an audit record in the audit stream.
    async fn audit(&self, record: AuditRecord) {
        arca_runtime::trust::audit(&self.client, "scheduler", &self.config.id, record).await;
    }

    /// Registers the cancel signal of a job about to be driven.
    fn watch_cancel(&self, id: JobId) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.cancels.lock().expect("cancels lock").insert(id, tx);
        rx
    }

    /// Creates a queued job and announces it; the caller queues it.
    async fn create_job(
        &self,
        system: &arca_schemas::SystemConfig,
        new: NewJob,
    ) -> Result<JobRecord, ErrorReply> {
        let NewJob {
            kind,
            snapshot,
            target,
            backup_type,
            trigger,
            scheduled_for,
            filter,
            source_system,
            operator,
            keep_privileges,
        } = new;
        let now = chrono::Utc::now();
        let rec = JobRecord {
            id: JobId::new(),
            kind,
            system: system.name.clone(),
            step: JobStep::Selected,
            status: JobStatus::Queued,
            created: now,
            updated: now,
            ended: None,
            snapshot: snapshot.clone(),
            target: target.clone(),
            open_windows: Vec::new(),
            prepared: false,
            finished: false,
            stats: Default::default(),
            file_errors: Vec::new(),
            file_warnings: Vec::new(),
            file_errors_not_named: 0,
            file_warnings_not_named: 0,
            deadline: None,
            filter,
            error: None,
            backup_type,
            trigger,
            scheduled_for,
            priority: system.priority,
            prepared_at: None,
            cancel_requested: false,
            resumed: 0,
            source_system,
            operator,
            keep_privileges,
        };
        self.put_job(&rec).await?;
        arca_runtime::events::publish(
            &self.state.js,
            rec.id,
            kind,
            &system.name,
            EventDetail::Selected {
                snapshot,
                target,
                backup_type,
                trigger,
                scheduled_for,
                priority: system.priority,
            },
        )
        .await;
        Ok(rec)
    }

    /// Creates backup jobs for `systems` and queues them together.
    pub(crate) async fn select_backups(
        &self,
        systems: &[arca_schemas::SystemConfig],
        backup_type: BackupType,
        trigger: Trigger,
        scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<JobId>, ErrorReply> {
        let mut jobs = Vec::new();
        for sys in systems {
            let new = NewJob {
                kind: JobKind::Backup,
                snapshot: None,
                target: None,
                backup_type: Some(backup_type),
                trigger,
                scheduled_for,
                filter: Default::default(),
                source_system: None,
                operator: None,
                keep_privileges: false,
            };
            let rec = self.create_job(sys, new).await?;
            jobs.push((rec.priority, rec.id));
        }
        self.queue.push_all(jobs.iter().copied());
        Ok(jobs.into_iter().map(|(_, id)| id).collect())
    }

    async fn start_backup(&self, p: &[u8]) -> Result<JobsStarted, ErrorReply> {
        let req: StartBackup = decode_request(p)?;
        if req.systems.is_empty() {
            return Err(ErrorReply::bad_request(
                "name at least one system to back up",
            ));
        }
        // Every name is checked before any job is created.
        let mut systems = Vec::new();
        for name in &req.systems {
            systems.push(self.system(name).await?);
        }
        let kind = req.backup_type.unwrap_or(BackupType::Incremental);
        let jobs = self
            .select_backups(&systems, kind, Trigger::Operator, None)
            .await?;
        Ok(JobsStarted { jobs })
    }

    async fn start_restore(&self, p: &[u8]) -> Result<JobsStarted, ErrorReply> {
        let req: StartRestore = decode_request(p)?;
        let info = self.catalog_entry(&req.snapshot).await?;
        // Invariant 4: a snapshot restores onto its own system unless the
        // operator names another one and allows it explicitly; both the
        // refusal and the override are audited.
        let onto = req.to_system.clone().unwrap_or_else(|| info.system.clone());
        let cross = onto != info.system;
        if cross && !req.allow_cross_system {
            let mut a = AuditRecord::new(AuditKind::Refused, self.audit_by());
            a.system = Some(onto.clone());
            a.source_system = Some(info.system.clone());
            a.snapshot = Some(req.snapshot.clone());
            a.operator = req.operator.clone();
            a.reason = Some("restore onto another system without --allow-cross-system".into());
            self.audit(a).await;
            return Err(ErrorReply::forbidden(format!(
                "snapshot {} belongs to system {}; restoring it onto {onto} needs \
                 --allow-cross-system (the restore is then recorded in the audit stream)",
                req.snapshot, info.system
            )));
        }
        let system = self.system(&onto).await?;
        if let Some(t) = req.target.as_ref().filter(|t| !t.starts_with('/')) {
            return Err(ErrorReply::bad_request(format!(
                "restore target {t:?} must be an absolute path on system {}",
                onto
            )));
        }
        let into_target = req.target.is_some();
        let new = NewJob {
            kind: JobKind::Restore,
            snapshot: Some(req.snapshot.clone()),
            target: req.target,
            filter: req.filter,
            backup_type: None,
            trigger: Trigger::Operator,
            scheduled_for: None,
            source_system: cross.then(|| info.system.clone()),
            operator: req.operator.clone(),
            keep_privileges: req.keep_privileges,
        };
        let rec = self.create_job(&system, new).await?;
        // A restore that may give someone power on the restoring host (onto
        // another system, or keeping privileges in a target folder) is
        // audited.
        let kind = if cross {
            Some(AuditKind::CrossSystemRestore)
        } else if req.keep_privileges && into_target {
            Some(AuditKind::PrivilegedRestore)
        } else {
            None
        };
        if let Some(kind) = kind {
            let mut a = AuditRecord::new(kind, self.audit_by());
            a.system = Some(onto.clone());
            a.source_system = cross.then(|| info.system.clone());
            a.snapshot = Some(req.snapshot);
            a.job = Some(rec.id);
            a.operator = req.operator;
            a.keep_privileges = req.keep_privileges;
            self.audit(a).await;
        }
        self.queue.push_all([(rec.priority, rec.id)]);
        Ok(JobsStarted { jobs: vec![rec.id] })
    }

    async fn list_jobs(&self, p: &[u8]) -> Result<ListJobsReply, ErrorReply> {
        let req: ListJobs = decode_request(p)?;
        let mut jobs = self.all_jobs().await?;
        jobs.retain(|j| req.system.as_ref().is_none_or(|s| &j.system == s));
        jobs.retain(|j| req.since.is_none_or(|t| j.created >= t));
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created));
        Ok(ListJobsReply { jobs })
    }

    async fn get_job(&self, p: &[u8]) -> Result<JobRecord, ErrorReply> {
        let req: GetJob = decode_request(p)?;
        self.load_job(&req.job)
            .await?
            .ok_or_else(|| ErrorReply::not_found(format!("unknown job {}", req.job)))
    }

    /// Forgets snapshots on the system's media, then drops them from the catalog.
    async fn forget(&self, p: &[u8]) -> Result<ForgetReply, ErrorReply> {
        let req: ForgetSnapshots = decode_request(p)?;
        let system = self.system(&req.system).await?;
        let reply: ForgetReply = arca_runtime::rpc::request_with_timeout(
            &self.client,
            subject::media(&system.media, subject::MediaVerb::Forget),
            &req,
            std::time::Duration::from_secs(600),
        )
        .await
        .map_err(|e| e.to_reply())?;
        if !req.dry_run {
            for id in &reply.forgotten {
                self.delete_catalog(id).await?;
            }
        }
        Ok(reply)
    }

    /// Cancels a job: a queued one ends at once; a running one is signalled
    /// and ends after its clean-up. Answers with the record as it stands.
    async fn cancel(&self, p: &[u8]) -> Result<JobRecord, ErrorReply> {
        let req: CancelJob = decode_request(p)?;
        let _guard = self.dispatch.lock().await;
        let mut rec = self
            .load_job(&req.job)
            .await?
            .ok_or_else(|| ErrorReply::not_found(format!("unknown job {}", req.job)))?;
        if rec.status.is_final() {
            return Err(ErrorReply::new(
                ErrorCode::Conflict,
                format!(
                    "job {} already ended ({:?}); nothing to cancel",
                    rec.id, rec.status
                ),
            ));
        }
        let signal = self
            .cancels
            .lock()
            .expect("cancels lock")
            .get(&rec.id)
            .cloned();
        if let Some(tx) = signal {
            tracing::info!(job = %rec.id, "cancel requested");
            let _ = tx.send(true);
            return Ok(rec);
        }
        if rec.status == JobStatus::Queued {
            let now = chrono::Utc::now();
            rec.status = JobStatus::Cancelled;
            rec.cancel_requested = true;
            rec.step = JobStep::Done;
            rec.error = Some("cancelled by an operator before it started".to_owned());
            rec.ended = Some(now);
            rec.updated = now;
            self.put_job(&rec).await?;
            let publish = |detail| {
                arca_runtime::events::publish(&self.state.js, rec.id, rec.kind, &rec.system, detail)
            };
            publish(EventDetail::CancelRequested {}).await;
            publish(EventDetail::Ended {
                status: rec.status,
                snapshot: None,
                stats: rec.stats.clone(),
                file_errors: Vec::new(),
                file_errors_not_named: 0,
                error: rec.error.clone(),
                seconds: (now - rec.created).num_milliseconds() as f64 / 1000.0,
            })
            .await;
            return Ok(rec);
        }
        // Running but not driven here: a job being resumed after a restart.
        Err(ErrorReply::new(
            ErrorCode::Unavailable,
            format!(
                "job {} is being picked up after a restart; try again in a moment",
                rec.id
            ),
        ))
    }

    async fn list_snapshots(&self, p: &[u8]) -> Result<ListSnapshotsReply, ErrorReply> {
        let req: ListSnapshots = decode_request(p)?;
        let mut snapshots = self.all_snapshots().await?;
        snapshots.retain(|s| req.system.as_ref().is_none_or(|n| &s.system == n));
        snapshots.sort_by_key(|s| std::cmp::Reverse(s.time));
        Ok(ListSnapshotsReply { snapshots })
    }

    /// After a restart: queued jobs go back in the queue (in their order);
    /// jobs that were running are returned, to be resumed or ended.
    async fn recover(self: &Arc<Self>) -> anyhow::Result<Vec<JobRecord>> {
        let mut jobs = self.all_jobs().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        jobs.sort_by_key(|j| j.created);
        let mut running = Vec::new();
        let mut queued = Vec::new();
        for rec in jobs {
            match rec.status {
                JobStatus::Queued => queued.push((rec.priority, rec.id)),
                JobStatus::Running => {
                    tracing::warn!(job = %rec.id, step = ?rec.step, "job was running when the scheduler stopped");
                    running.push(rec);
                }
                _ => {}
            }
        }
        self.queue.push_all(queued);
        Ok(running)
    }

    /// Looks at every system's schedules now and then, and selects the
    /// backups that are due (see [`schedule`]).
    async fn schedule_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.config.schedule_tick_secs);
        loop {
            if let Err(e) = self.schedule_tick(chrono::Utc::now()).await {
                tracing::warn!(error = %e, "schedule tick failed; trying again at the next one");
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn schedule_tick(&self, now: chrono::DateTime<chrono::Utc>) -> Result<(), ErrorReply> {
        let grace = Duration::from_secs(self.config.missed_run_grace_secs);
        let mut systems = self.all_systems().await?;
        systems.sort_by(|a, b| a.name.cmp(&b.name));
        let active: std::collections::HashSet<String> = self
            .all_jobs()
            .await?
            .into_iter()
            .filter(|j| !j.status.is_final())
            .map(|j| j.system)
            .collect();
        let mut due: HashMap<(BackupType, chrono::DateTime<chrono::Utc>), Vec<_>> = HashMap::new();
        for sys in systems {
            if sys.schedules.is_empty() {
                continue;
            }
            let compiled = match schedule::compile(&sys.schedules) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(system = %sys.name, error = %e, "schedule not usable");
                    continue;
                }
            };
            let last = self.schedule_last(&sys.name).await?;
            let t = schedule::tick(&compiled, last, now, grace);
            if last != Some(t.last) {
                self.put_schedule_last(&sys.name, t.last).await?;
            }
            if let Some((kind, at)) = t.skipped {
                tracing::warn!(system = %sys.name, backup_type = kind.as_str(), instant = %at,
                    "scheduled backup missed by more than the grace period; skipped");
            }
            if let Some((kind, at)) = t.fire {
                if active.contains(&sys.name) {
                    tracing::warn!(system = %sys.name, backup_type = kind.as_str(), instant = %at,
                        "scheduled backup skipped: the system's previous job has not ended");
                    continue;
                }
                due.entry((kind, at)).or_default().push(sys);
            }
        }
        // Systems due at the same instant are selected together, so that
        // they run in priority order.
        let mut batches: Vec<_> = due.into_iter().collect();
        batches.sort_by_key(|((_, at), _)| *at);
        for ((kind, at), systems) in batches {
            let jobs = self
                .select_backups(&systems, kind, Trigger::Schedule, Some(at))
                .await?;
            tracing::info!(backup_type = kind.as_str(), instant = %at, ?jobs, "scheduled backups selected");
        }
        Ok(())
    }
}
