//! The whole stack for end-to-end tests: a real nats-server and every
//! service as its own process, configured in a temporary folder.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use arca_runtime::rpc;
use arca_schemas::event::JobEvent;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, AgentVerb, FirewallVerb, SchedulerVerb};
use arca_schemas::{JobId, JobRecord, SystemConfig};
use arca_testkit::{NatsServer, ServiceProcess, bin_path};
use futures::StreamExt;

/// Firewall controller id every stack starts.
pub const FIREWALL: &str = "local";

/// The scheduler configuration every stack starts with.
const SCHEDULER_CONFIG: &str = "lease-secs = 30\nagent-timeout-secs = 20\n";

/// A running stack.
pub struct Stack {
    /// The server.
    pub nats: NatsServer,
    /// Configs, logs and the repository.
    pub dir: tempfile::TempDir,
    /// A client for the test.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: async_nats::jetstream::Context,
    services: HashMap<String, ServiceProcess>,
    commands: HashMap<String, (String, String)>,
}

/// How an agent process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentUser {
    /// As the test (root in CI).
    Same,
    /// As user and group 65534 (nobody), who cannot read a mode-000 file.
    Nobody,
}

impl Stack {
    /// Starts nats-server, scheduler, firewall (`none` backend) and media.
    pub async fn start() -> anyhow::Result<Stack> {
        let nats = NatsServer::start().await?;
        let dir = tempfile::Builder::new().prefix("arca-stack-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let client = nats.client().await;
        let js = async_nats::jetstream::new(client.clone());
        let mut stack = Stack {
            nats,
            dir,
            client,
            js,
            services: HashMap::new(),
            commands: HashMap::new(),
        };
        stack.write("scheduler.toml", SCHEDULER_CONFIG)?;
        stack.write(
            "firewall.toml",
            &format!("id = \"{FIREWALL}\"\nbackend = \"none\"\n"),
        )?;
        let repo = stack.repo_dir();
        stack.write(
            "media.toml",
            &format!("repository = \"{}\"\n", repo.display()),
        )?;
        stack.spawn("scheduler", "arca-scheduler", "scheduler.toml")?;
        stack.spawn("firewall", "arca-firewall", "firewall.toml")?;
        stack.spawn("media", "arca-media", "media.toml")?;
        stack.wait_ready().await?;
        Ok(stack)
    }

    /// Folder of the media repository.
    pub fn repo_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }

    fn spawn(&mut self, name: &str, binary: &str, config: &str) -> anyhow::Result<()> {
        let p = ServiceProcess::spawn(
            binary,
            ["--config", self.dir.path().join(config).to_str().unwrap()],
            &[("NATS_URL", self.nats.url())],
            self.dir.path(),
        )?;
        self.services.insert(name.to_owned(), p);
        self.commands
            .insert(name.to_owned(), (binary.to_owned(), config.to_owned()));
        Ok(())
    }

    /// Starts a service killed before (`scheduler`, `firewall`, `media`)
    /// again with its configuration, and waits until the stack answers.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let (binary, config) = self.commands[name].clone();
        self.spawn(name, &binary, &config)?;
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let within = Duration::from_secs(20);
        let _: ListSystemsReply = rpc::retry(within, || {
            rpc::request(
                &self.client,
                subject::scheduler("main", SchedulerVerb::ListSystems),
                &ListSystems {},
            )
        })
        .await?;
        let _: FirewallStatusReply = rpc::retry(within, || {
            rpc::request(
                &self.client,
                subject::firewall(FIREWALL, FirewallVerb::Status),
                &FirewallStatus {},
            )
        })
        .await?;
        let list = MediaListSnapshots::default();
        let _: ListSnapshotsReply = rpc::retry(within, || {
            rpc::request(
                &self.client,
                subject::media("main", subject::MediaVerb::Snapshots),
                &list,
            )
        })
        .await?;
        Ok(())
    }

    /// Starts the agent of `system` and waits until it answers.
    pub async fn start_agent(&mut self, system: &str, user: AgentUser) -> anyhow::Result<()> {
        let config = format!("agent-{system}.toml");
        self.write(
            &config,
            &format!("system = \"{system}\"\nmedia-timeout-secs = 5\n"),
        )?;
        let mut cmd = Command::new(bin_path("arca-agent"));
        cmd.args(["--config", self.dir.path().join(&config).to_str().unwrap()]);
        if user == AgentUser::Nobody {
            use std::os::unix::process::CommandExt;
            cmd.uid(65534).gid(65534);
        }
        let p = ServiceProcess::spawn_command(
            &format!("agent-{system}"),
            cmd,
            &[("NATS_URL", self.nats.url())],
            self.dir.path(),
        )?;
        self.services.insert(format!("agent-{system}"), p);
        let _: Pong = rpc::retry(Duration::from_secs(20), || {
            rpc::request(
                &self.client,
                subject::agent(system, AgentVerb::Ping),
                &Ping {},
            )
        })
        .await?;
        Ok(())
    }

    /// Kills the scheduler (if it runs) and starts it again with `extra`
    /// lines added to its configuration and `env` added to its environment,
    /// then waits until it answers.
    pub async fn restart_scheduler(
        &mut self,
        extra: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        if let Some(p) = self.services.get_mut("scheduler") {
            p.kill();
        }
        self.write("scheduler.toml", &format!("{SCHEDULER_CONFIG}{extra}\n"))?;
        let mut all = vec![("NATS_URL", self.nats.url())];
        all.extend(env.iter().cloned());
        let p = ServiceProcess::spawn(
            "arca-scheduler",
            [
                "--config",
                self.dir.path().join("scheduler.toml").to_str().unwrap(),
            ],
            &all,
            self.dir.path(),
        )?;
        self.services.insert("scheduler".to_owned(), p);
        let _: ListSystemsReply = rpc::retry(Duration::from_secs(30), || {
            rpc::request(
                &self.client,
                subject::scheduler("main", SchedulerVerb::ListSystems),
                &ListSystems {},
            )
        })
        .await?;
        Ok(())
    }

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
        Command::new(bin_path("arca"))
            .args(args)
            .env("NATS_URL", self.nats.url())
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
        let r: JobsStarted = rpc::request(
            &self.client,
            subject::scheduler("main", SchedulerVerb::Restore),
            &StartRestore {
                snapshot: snapshot.clone(),
                target: target.map(|t| t.display().to_string()),
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

/// A system on this machine behind the stack's firewall.
pub fn system(name: &str, paths: &[&Path]) -> SystemConfig {
    SystemConfig {
        name: name.to_owned(),
        address: "127.0.0.1".to_owned(),
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        firewalls: vec![FIREWALL.to_owned()],
        media: "main".to_owned(),
        hooks: Default::default(),
        agent: None,
        exclude: Vec::new(),
        schedules: Default::default(),
        retention: Default::default(),
        priority: 0,
    }
}

/// A hook running `script` with `/bin/sh -c`.
pub fn sh_hook(script: &str) -> arca_schemas::HookSpec {
    arca_schemas::HookSpec {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        timeout_secs: 60,
        env: Default::default(),
    }
}

/// The kinds of a job's events, in order.
pub fn kinds(events: &[JobEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.detail.kind()).collect()
}
