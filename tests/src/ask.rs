//! Asking a running stack: jobs and their events, snapshots, the
//! console, open windows.

use super::*;

impl Stack {
    /// Waits until a job is final, polling its record.
    pub async fn wait_final(&self, job: JobId, within: Duration) -> anyhow::Result<JobRecord> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(rec) = self.job(job).await
                && rec.status.is_final()
            {
                return Ok(rec);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "job {job} not final within {within:?}: {:#?}",
                    self.job(job).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Snapshots the media service holds for `system`, read from the
    /// repository rather than the catalog.
    pub async fn media_snapshots(&self, system: &str) -> anyhow::Result<Vec<SnapshotInfo>> {
        let r: ListSnapshotsReply = rpc::request(
            &self.client,
            subject::media("main", subject::MediaVerb::Snapshots),
            &MediaListSnapshots {
                system: Some(system.to_owned()),
            },
        )
        .await?;
        Ok(r.snapshots)
    }

    /// Every job record, newest first.
    pub async fn jobs(&self) -> anyhow::Result<Vec<JobRecord>> {
        let r: ListJobsReply = rpc::request(
            &self.client,
            subject::scheduler("main", SchedulerVerb::ListJobs),
            &ListJobs::default(),
        )
        .await?;
        Ok(r.jobs)
    }

    /// Asks the scheduler to cancel a job.
    pub async fn cancel(&self, job: JobId) -> Result<JobRecord, rpc::RpcError> {
        rpc::request(
            &self.client,
            subject::scheduler("main", SchedulerVerb::Cancel),
            &CancelJob { job },
        )
        .await
    }

    /// Kills a service (`scheduler`, `firewall`, `media`, `agent-<system>`) with SIGKILL.
    pub fn kill(&mut self, name: &str) {
        self.services.get_mut(name).expect("service exists").kill();
    }

    /// True while a service runs.
    pub fn is_running(&mut self, name: &str) -> bool {
        self.services.get_mut(name).is_some_and(|s| s.is_running())
    }

    /// Process id of a service (`agent-<system>` for an agent).
    pub fn pid(&self, name: &str) -> u32 {
        self.services[name].pid()
    }

    /// A service's log.
    pub fn log(&self, name: &str) -> String {
        self.services.get(name).map(|s| s.log()).unwrap_or_default()
    }

    /// Registers systems through the scheduler.
    pub async fn load_systems(&self, systems: Vec<SystemConfig>) -> anyhow::Result<()> {
        let _: LoadSystemsReply = rpc::request(
            &self.client,
            subject::scheduler("main", SchedulerVerb::LoadSystems),
            &LoadSystems {
                systems,
                mode: LoadMode::Upsert,
            },
        )
        .await?;
        Ok(())
    }

    /// Runs the `arca` console with this stack's NATS URL.
    pub fn arca(&self, args: &[&str]) -> Output {
        let pki = arca_testkit::Pki::shared();
        Command::new(bin_path("arca"))
            .args(args)
            .env("NATS_URL", self.nats.url())
            .env("ARCA_IDENTITY", self.sec.identity_file("operator"))
            .env("ARCA_TLS_CA", pki.ca())
            .env("ARCA_TLS_CERT", pki.client_cert())
            .env("ARCA_TLS_KEY", pki.client_key())
            .output()
            .expect("arca runs")
    }

    /// Starts backups through the scheduler and returns the job ids.
    pub async fn backup(&self, systems: &[&str]) -> Result<Vec<JobId>, rpc::RpcError> {
        let r: JobsStarted = rpc::request(
            &self.client,
            subject::scheduler("main", SchedulerVerb::Backup),
            &StartBackup {
                systems: systems.iter().map(|s| s.to_string()).collect(),
                backup_type: None,
            },
        )
        .await?;
        Ok(r.jobs)
    }

    /// Starts a restore through the scheduler.
    pub async fn restore(
        &self,
        snapshot: &arca_schemas::SnapshotId,
        target: Option<&Path>,
    ) -> Result<JobId, rpc::RpcError> {
        self.restore_filtered(snapshot, target, Default::default())
            .await
    }

    /// Starts a restore of the paths `filter` takes.
    pub async fn restore_filtered(
        &self,
        snapshot: &arca_schemas::SnapshotId,
        target: Option<&Path>,
        filter: arca_schemas::PathFilter,
    ) -> Result<JobId, rpc::RpcError> {
        self.restore_with(snapshot, target, filter, false).await
    }

    /// Starts a restore of the paths `filter` takes, keeping privileges
    /// (`--keep-privileges`) when `keep_privileges`.
    pub async fn restore_with(
        &self,
        snapshot: &arca_schemas::SnapshotId,
        target: Option<&Path>,
        filter: arca_schemas::PathFilter,
        keep_privileges: bool,
    ) -> Result<JobId, rpc::RpcError> {
        let r: JobsStarted = rpc::request(
            &self.client,
            subject::scheduler("main", SchedulerVerb::Restore),
            &StartRestore {
                snapshot: snapshot.clone(),
                target: target.map(|t| t.display().to_string()),
                filter,
                to_system: None,
                allow_cross_system: false,
                operator: None,
                keep_privileges,
            },
        )
        .await?;
        Ok(r.jobs[0])
    }

    /// Every event of a job until it ended, then its final record.
    pub async fn wait_job(&self, job: JobId) -> anyhow::Result<(Vec<JobEvent>, JobRecord)> {
        let mut events = Box::pin(arca_runtime::events::follow(&self.js, job).await?);
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(300), events.next()).await {
                Ok(Some(e)) => seen.push(e?),
                Ok(None) => break,
                Err(_) => anyhow::bail!("job {job} did not end within 300 s; events: {seen:#?}"),
            }
        }
        let rec = self.job(job).await?;
        Ok((seen, rec))
    }

    /// A job record.
    pub async fn job(&self, job: JobId) -> anyhow::Result<JobRecord> {
        Ok(rpc::request(
            &self.client,
            subject::scheduler("main", SchedulerVerb::GetJob),
            &GetJob { job },
        )
        .await?)
    }

    /// The catalog's snapshots of `system`.
    pub async fn snapshots(&self, system: &str) -> anyhow::Result<Vec<SnapshotInfo>> {
        let r: ListSnapshotsReply = rpc::request(
            &self.client,
            subject::scheduler("main", SchedulerVerb::ListSnapshots),
            &ListSnapshots {
                system: Some(system.to_owned()),
            },
        )
        .await?;
        Ok(r.snapshots)
    }

    /// Waits until the repository holds a chunk of a running backup (the
    /// open pack in `tmp/` grows past its 8-byte header, or a pack is sealed).
    pub async fn wait_first_chunk(&self) {
        let repo = self.repo_dir();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let open = std::fs::read_dir(repo.join("tmp"))
                .map(|d| {
                    d.flatten()
                        .any(|e| e.metadata().map(|m| m.len() > 8).unwrap_or(false))
                })
                .unwrap_or(false);
            let sealed = std::fs::read_dir(repo.join("data"))
                .map(|d| d.count() > 0)
                .unwrap_or(false);
            if open || sealed {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no chunk was ever stored"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Windows the firewall controller has open now.
    pub async fn open_windows(&self) -> anyhow::Result<Vec<WindowInfo>> {
        let r: FirewallStatusReply = rpc::request(
            &self.client,
            subject::firewall(FIREWALL, FirewallVerb::Status),
            &FirewallStatus {},
        )
        .await?;
        Ok(r.windows)
    }
}
