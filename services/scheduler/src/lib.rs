//! The scheduler (the patent's cell manager): the registry of systems, the
//! job queue and state machine of backup (method 400) and restore (method
//! 500), and the snapshot catalog. It starts everything; every step is
//! persisted in the job record before it is acted on and published as a
//! job event.

mod job;
mod store;

use std::future::Future;
use std::sync::Arc;

use arca_runtime::jetstream::State;
use arca_runtime::rpc::{decode_request, respond, verb};
use arca_schemas::error::ErrorReply;
use arca_schemas::event::EventDetail;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, SchedulerVerb};
use arca_schemas::{JobId, JobKind, JobRecord, JobStatus, JobStep};
use async_nats::{Client, Message};
use futures::StreamExt;
use serde::Deserialize;

/// Configuration of the scheduler.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Id in subjects (`arca.scheduler.<id>...`).
    #[serde(default = "default_id")]
    pub id: String,
    /// Seconds a firewall window stays open without renewal.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Seconds to wait for an agent to answer.
    #[serde(default = "default_agent_timeout")]
    pub agent_timeout_secs: u64,
    /// Seconds after a pre hook at which the agent runs the post hook by
    /// itself if the scheduler has not asked for it.
    #[serde(default = "default_hook_deadline")]
    pub hook_deadline_secs: u64,
    /// Seconds a transfer may go without any sign of life.
    #[serde(default = "default_stall")]
    pub stall_timeout_secs: u64,
}

fn default_id() -> String {
    arca_schemas::names::DEFAULT_SCHEDULER.to_owned()
}
fn default_lease() -> u64 {
    60
}
fn default_agent_timeout() -> u64 {
    60
}
fn default_hook_deadline() -> u64 {
    3600
}
fn default_stall() -> u64 {
    300
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

pub(crate) struct Scheduler {
    config: Config,
    client: Client,
    state: State,
    queue: tokio::sync::mpsc::UnboundedSender<JobId>,
}

/// Runs the scheduler until `shutdown` resolves.
pub async fn run(
    config: Config,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        subject::valid_token(&config.id),
        "scheduler id {:?} is not a valid name (letters, digits, '-', '_')",
        config.id
    );
    let state = arca_runtime::jetstream::bootstrap(&client).await?;
    let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel();
    let sched = Arc::new(Scheduler {
        config,
        client: client.clone(),
        state,
        queue,
    });
    sched.recover().await?;
    let mut requests = client
        .subscribe(subject::scheduler_all(&sched.config.id))
        .await?;
    client.flush().await?;
    tracing::info!(id = %sched.config.id, "scheduler ready");

    // One job at a time, in queue order (the patent's order).
    let worker_sched = sched.clone();
    let worker = tokio::spawn(async move {
        while let Some(id) = queued.recv().await {
            match worker_sched.load_job(&id).await {
                Ok(Some(rec)) if rec.status == JobStatus::Queued => {
                    job::drive(worker_sched.clone(), rec).await;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(job = %id, error = %e, "cannot load queued job"),
            }
        }
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
    worker.abort();
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
            Some(SchedulerVerb::Backup) => respond(c, &msg, self.start_backup(p).await).await,
            Some(SchedulerVerb::Restore) => respond(c, &msg, self.start_restore(p).await).await,
            Some(SchedulerVerb::ListJobs) => respond(c, &msg, self.list_jobs(p).await).await,
            Some(SchedulerVerb::GetJob) => respond(c, &msg, self.get_job(p).await).await,
            Some(SchedulerVerb::Forget) => respond(c, &msg, self.forget(p).await).await,
            Some(SchedulerVerb::ListSnapshots) => {
                respond(c, &msg, self.list_snapshots(p).await).await
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

    async fn load_systems(&self, p: &[u8]) -> Result<LoadSystemsReply, ErrorReply> {
        let req: LoadSystems = decode_request(p)?;
        let mut seen = std::collections::HashSet::new();
        for s in &req.systems {
            s.validate().map_err(ErrorReply::bad_request)?;
            if !seen.insert(s.name.clone()) {
                return Err(ErrorReply::bad_request(format!(
                    "system {:?} is named twice",
                    s.name
                )));
            }
        }
        let mut stored = Vec::new();
        for s in req.systems {
            self.put_system(&s).await?;
            tracing::info!(system = %s.name, "system registered");
            stored.push(s.name);
        }
        Ok(LoadSystemsReply { stored })
    }

    async fn list_systems(&self) -> Result<ListSystemsReply, ErrorReply> {
        let mut systems = self.all_systems().await?;
        systems.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ListSystemsReply { systems })
    }

    /// Creates a queued job and announces it.
    async fn create_job(
        &self,
        kind: JobKind,
        system: &str,
        snapshot: Option<arca_schemas::SnapshotId>,
        target: Option<String>,
    ) -> Result<JobId, ErrorReply> {
        let now = chrono::Utc::now();
        let rec = JobRecord {
            id: JobId::new(),
            kind,
            system: system.to_owned(),
            step: JobStep::Selected,
            status: JobStatus::Queued,
            created: now,
            updated: now,
            ended: None,
            snapshot: snapshot.clone(),
            target: target.clone(),
            open_windows: Vec::new(),
            prepared: false,
            stats: Default::default(),
            file_errors: Vec::new(),
            error: None,
        };
        self.put_job(&rec).await?;
        arca_runtime::events::publish(
            &self.state.js,
            rec.id,
            kind,
            system,
            EventDetail::Selected { snapshot, target },
        )
        .await;
        Ok(rec.id)
    }

    async fn start_backup(&self, p: &[u8]) -> Result<JobsStarted, ErrorReply> {
        let req: StartBackup = decode_request(p)?;
        if req.systems.is_empty() {
            return Err(ErrorReply::bad_request(
                "name at least one system to back up",
            ));
        }
        // Every name is checked before any job is created.
        for name in &req.systems {
            self.system(name).await?;
        }
        let mut jobs = Vec::new();
        for name in &req.systems {
            let id = self.create_job(JobKind::Backup, name, None, None).await?;
            jobs.push(id);
        }
        for id in &jobs {
            let _ = self.queue.send(*id);
        }
        Ok(JobsStarted { jobs })
    }

    async fn start_restore(&self, p: &[u8]) -> Result<JobsStarted, ErrorReply> {
        let req: StartRestore = decode_request(p)?;
        let info = self.catalog_entry(&req.snapshot).await?;
        self.system(&info.system).await?;
        if let Some(t) = req.target.as_ref().filter(|t| !t.starts_with('/')) {
            return Err(ErrorReply::bad_request(format!(
                "restore target {t:?} must be an absolute path on system {}",
                info.system
            )));
        }
        let id = self
            .create_job(
                JobKind::Restore,
                &info.system,
                Some(req.snapshot),
                req.target,
            )
            .await?;
        let _ = self.queue.send(id);
        Ok(JobsStarted { jobs: vec![id] })
    }

    async fn list_jobs(&self, p: &[u8]) -> Result<ListJobsReply, ErrorReply> {
        let req: ListJobs = decode_request(p)?;
        let mut jobs = self.all_jobs().await?;
        jobs.retain(|j| req.system.as_ref().is_none_or(|s| &j.system == s));
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
                self.drop_catalog(id).await?;
            }
        }
        Ok(reply)
    }

    async fn list_snapshots(&self, p: &[u8]) -> Result<ListSnapshotsReply, ErrorReply> {
        let req: ListSnapshots = decode_request(p)?;
        let mut snapshots = self.all_snapshots().await?;
        snapshots.retain(|s| req.system.as_ref().is_none_or(|n| &s.system == n));
        snapshots.sort_by_key(|s| std::cmp::Reverse(s.time));
        Ok(ListSnapshotsReply { snapshots })
    }

    /// After a restart: queued jobs go back in the queue; a job that was
    /// running when the scheduler died is cleaned up (post hook, windows)
    /// and marked failed.
    async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut jobs = self.all_jobs().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        jobs.sort_by_key(|j| j.created);
        for rec in jobs {
            match rec.status {
                JobStatus::Queued => {
                    let _ = self.queue.send(rec.id);
                }
                JobStatus::Running => {
                    tracing::warn!(job = %rec.id, step = ?rec.step, "job was running when the scheduler stopped; cleaning up");
                    job::abandon(self.clone(), rec).await;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
