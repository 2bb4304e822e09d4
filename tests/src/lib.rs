//! The whole stack for end-to-end tests: a real nats-server and every
//! service as its own process, configured in a temporary folder.
//!
//! [`Stack::start`] runs everything on loopback with the `none` firewall
//! backend. [`Stack::start_net`] runs nats-server, scheduler, media and an
//! nftables firewall controller in a high-trust network namespace, with two
//! operations-center namespaces joined to it by veth pairs (see [`Net`]).
//!
//! Every stack is secured as a deployment is ([`Security`]): the server
//! admits only the users `arca nats-config` would write (one per service,
//! the test as operator, one per enrolled agent, confined to its own
//! subjects), over TLS with client certificates; the scheduler signs job
//! tokens and the agents and media check them. [`system`] enrolls a
//! system with a key derived from its name; [`Stack::start_agent`] admits
//! its agent to the server and gives it that key.

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

use arca_testkit::{NatsOptions, NatsServer, ServiceProcess, bin_path};
use futures::StreamExt;

mod ask;
mod net;
pub mod security;
pub use net::{HI_FOR_OPS, HI_FOR_OPS2, HI_FOR_OPS6, Net, OPS, OPS2, OPS6, Zone};
pub use security::{Security, agent_key};

/// Firewall controller id every stack starts.
pub const FIREWALL: &str = "local";

/// The scheduler configuration every stack starts with.
/// `absent` is a known firewall whose controller never runs: tests use it
/// for a window that cannot open.
const SCHEDULER_CONFIG: &str =
    "lease-secs = 30\nagent-timeout-secs = 20\nfirewalls = [\"local\", \"absent\"]\n";
/// [`SCHEDULER_CONFIG`] without its `firewalls` line, for tests that set their own.
const SCHEDULER_BASE: &str = "lease-secs = 30\nagent-timeout-secs = 20\n";

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
    /// The namespaces, for stacks made by [`Stack::start_net`]. Dropped
    /// after the services.
    pub net: Option<Net>,
    /// Identities and the server's users.
    pub sec: Security,
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Services first, while their logs (in `dir`) still exist to be
        // printed on failure.
        self.services.clear();
    }
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
        let sec = Security::new()?;
        let nats = NatsServer::start_with(NatsOptions {
            secure: Some(sec.secure(&[])),
            ..Default::default()
        })
        .await?;
        let mut stack = Stack::new(nats, None, sec).await?;
        stack.write_scheduler(SCHEDULER_CONFIG)?;
        stack.write_service(
            "firewall.toml",
            &format!("id = \"{FIREWALL}\"\nbackend = \"none\"\n"),
            "firewall",
        )?;
        stack.start_services().await?;
        Ok(stack)
    }

    /// Starts nats-server, scheduler, media and the firewall controller
    /// (`nftables` backend, guarding the NATS port on the operations-center
    /// side) in the high-trust namespace of a new [`Net`]. Windows are
    /// leased for `lease_secs`.
    pub async fn start_net(lease_secs: u64) -> anyhow::Result<Stack> {
        let (net, leg) = Net::create()?;
        let mut sec = Security::new()?;
        // The agents of the operations-center namespaces.
        sec.enroll("ops");
        sec.enroll("ops2");
        let nats = NatsServer::start_with(NatsOptions {
            listen: Some("::".into()),
            netns: Some(net.hi.name().to_owned()),
            connect_host: Some(leg),
            secure: Some(sec.secure(&[HI_FOR_OPS, HI_FOR_OPS6, HI_FOR_OPS2, "fd00:203:2::1"])),
        })
        .await?;
        let port = nats.port();
        let mut stack = Stack::new(nats, Some(net), sec).await?;
        stack.write_scheduler(&format!(
            "lease-secs = {lease_secs}\nagent-timeout-secs = 30\nfirewalls = [\"local\", \"absent\"]\n"
        ))?;
        stack.write_service(
            "firewall.toml",
            &format!(
                "id = \"{FIREWALL}\"\nbackend = \"nftables\"\ntable = \"arca\"\nports = [{port}]\n\
                 guard-interfaces = [\"to-ops\", \"to-ops2\"]\nmax-lease-secs = 600\n"
            ),
            "firewall",
        )?;
        stack.start_services().await?;
        Ok(stack)
    }

    async fn new(nats: NatsServer, net: Option<Net>, sec: Security) -> anyhow::Result<Stack> {
        let dir = tempfile::Builder::new().prefix("arca-stack-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let client = nats.client().await;
        let js = async_nats::jetstream::new(client.clone());
        Ok(Stack {
            nats,
            dir,
            client,
            js,
            services: HashMap::new(),
            commands: HashMap::new(),
            net,
            sec,
        })
    }

    async fn start_services(&mut self) -> anyhow::Result<()> {
        let stack = self;
        let repo = stack.repo_dir();
        stack.write_service(
            "media.toml",
            &format!("repository = \"{}\"\n", repo.display()),
            "media",
        )?;
        stack.spawn("scheduler", "arca-scheduler", "scheduler.toml")?;
        stack.spawn("firewall", "arca-firewall", "firewall.toml")?;
        stack.spawn("media", "arca-media", "media.toml")?;
        stack.wait_ready().await?;
        Ok(())
    }

    /// The namespaces (panics for a stack made by [`Stack::start`]).
    pub fn net(&self) -> &Net {
        self.net.as_ref().expect("a stack made by Stack::start_net")
    }

    /// The stack's folder: configurations, identities, logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Folder of the media repository.
    pub fn repo_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Writes a file (a configuration) into the stack's folder.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }

    /// Writes a service's configuration: `text`, then the identity of
    /// `service` (see [`Security::identity_file`]), the scheduler's key
    /// (media) and TLS.
    pub fn write_service(&self, name: &str, text: &str, service: &str) -> anyhow::Result<PathBuf> {
        let sec = self
            .sec
            .toml(&self.sec.identity_file(service), service == "media", None);
        self.write(name, &format!("{text}\n{sec}"))
    }

    /// Writes the scheduler's configuration, with its door watcher's
    /// identity.
    fn write_scheduler(&self, text: &str) -> anyhow::Result<PathBuf> {
        let door = self.sec.identity_file("door");
        self.write_service(
            "scheduler.toml",
            &format!("{text}\ndoor-identity-file = \"{}\"\n", door.display()),
            "scheduler",
        )
    }

    /// Admits the agent of `system` to the server (its user, confined to
    /// its own subjects), reloading the server's configuration.
    pub async fn enroll(&mut self, system: &str) -> anyhow::Result<()> {
        if self.sec.enroll(system) {
            let auth = self.sec.authorization();
            self.nats.set_authorization(&auth).await?;
        }
        Ok(())
    }

    /// Writes an agent's configuration and identity, admitting it to the
    /// server first.
    async fn prepare_agent(&mut self, system: &str, uid: Option<u32>) -> anyhow::Result<PathBuf> {
        self.enroll(system).await?;
        self.agent_files(system, uid)
    }

    fn agent_files(&self, system: &str, uid: Option<u32>) -> anyhow::Result<PathBuf> {
        let identity = self.dir.path().join(format!("agent-{system}.nk"));
        security::write_agent_identity(&identity, system, uid)?;
        let tls_key = match uid {
            None => None,
            Some(uid) => {
                let key = self.dir.path().join(format!("agent-{system}-tls.key"));
                let _ = std::fs::remove_file(&key);
                std::fs::copy(arca_testkit::Pki::shared().client_key(), &key)?;
                std::os::unix::fs::chown(&key, Some(uid), Some(uid))?;
                Some(key)
            }
        };
        let config = format!("agent-{system}.toml");
        let sec = self.sec.toml(&identity, true, tls_key.as_deref());
        self.write(
            &config,
            &format!("system = \"{system}\"\nmedia-timeout-secs = 5\n{sec}"),
        )
    }

    /// Starts (or restarts) a service of the stack: `scheduler`,
    /// `firewall` or `media`; in the high-trust namespace for a
    /// [`Stack::start_net`] stack.
    pub fn spawn(&mut self, name: &str, binary: &str, config_name: &str) -> anyhow::Result<()> {
        let config = self.dir.path().join(config_name);
        let (mut cmd, url) = match &self.net {
            None => (Command::new(bin_path(binary)), self.nats.url()),
            Some(net) => (net.hi.command(bin_path(binary)), self.nats.local_url()),
        };
        cmd.arg("--config").arg(config);
        let p = ServiceProcess::spawn_command(name, cmd, &[("NATS_URL", url)], self.dir.path())?;
        self.services.insert(name.to_owned(), p);
        self.commands
            .insert(name.to_owned(), (binary.to_owned(), config_name.to_owned()));
        Ok(())
    }

    /// Starts a service killed before (`scheduler`, `firewall`, `media`)
    /// again with its configuration, and waits until the stack answers.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let (binary, config) = self.commands[name].clone();
        self.spawn(name, &binary, &config)?;
        self.wait_ready().await
    }

    /// Starts the agent of `system` in a namespace of [`Net`], reaching
    /// NATS at `nats_host` (an address of `hi`), without waiting for it:
    /// behind a closed window it cannot connect yet.
    pub fn start_agent_in(
        &mut self,
        system: &str,
        zone: Zone,
        nats_host: &str,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.sec.users.agents.iter().any(|(s, _)| s == system),
            "system {system} is not enrolled with this stack's server (start_net enrolls ops and ops2)"
        );
        let config = format!("agent-{system}.toml");
        self.agent_files(system, None)?;
        let net = self.net();
        let ns = match zone {
            Zone::Ops => &net.ops,
            Zone::Ops2 => &net.ops2,
        };
        let mut cmd = ns.command(bin_path("arca-agent"));
        cmd.args(["--config", self.dir.path().join(&config).to_str().unwrap()]);
        let host = if nats_host.contains(':') {
            format!("[{nats_host}]")
        } else {
            nats_host.to_owned()
        };
        let url = format!("nats://{host}:{}", self.nats.port());
        self.spawn_agent_process(system, cmd, url)
    }

    /// True when the agent of `system` answers a ping within `timeout`.
    pub async fn agent_answers(&self, system: &str, timeout: Duration) -> bool {
        let r: Result<Pong, _> = rpc::request_with_timeout(
            &self.client,
            subject::agent(system, AgentVerb::Ping),
            &Ping {},
            timeout,
        )
        .await;
        r.is_ok()
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

    /// Registers one system backing up `paths`, with default settings, and
    /// starts its agent as the test's user.
    pub async fn one_system(&mut self, name: &str, paths: &[&Path]) -> anyhow::Result<()> {
        self.load_systems(vec![system(name, paths)]).await?;
        self.start_agent(name, AgentUser::Same).await
    }

    /// Takes `system` over as an attacker would: admits its agent user to
    /// the server and connects with the system's real credentials (its
    /// enrolled key, its certificate), without starting the real agent.
    pub async fn compromised(
        &mut self,
        system: &str,
    ) -> anyhow::Result<arca_testkit::hostile::Compromised> {
        self.enroll(system).await?;
        let client = security::agent_options(system)
            .connect(self.nats.url())
            .await?;
        arca_testkit::hostile::Compromised::new(client, system, &security::agent_seed(system))
    }

    /// Starts the agent of `system` and waits until it answers.
    pub async fn start_agent(&mut self, system: &str, user: AgentUser) -> anyhow::Result<()> {
        let config = format!("agent-{system}.toml");
        let uid = (user == AgentUser::Nobody).then_some(65534);
        self.prepare_agent(system, uid).await?;
        let mut cmd = Command::new(bin_path("arca-agent"));
        cmd.args(["--config", self.dir.path().join(&config).to_str().unwrap()]);
        if user == AgentUser::Nobody {
            use std::os::unix::process::CommandExt;
            cmd.uid(65534).gid(65534);
        }
        self.spawn_agent_process(system, cmd, self.nats.url())?;
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

    /// Starts the agent of `system` holding the key of `key_of`'s agent
    /// (the key derived from that name, admitted to the server or not),
    /// without waiting for it: for tests of what the server refuses.
    pub fn spawn_agent_with_key(&mut self, system: &str, key_of: &str) -> anyhow::Result<()> {
        let config = self.agent_files(system, None)?;
        let identity = self.dir.path().join(format!("agent-{system}.nk"));
        security::write_agent_identity(&identity, key_of, None)?;
        let mut cmd = Command::new(bin_path("arca-agent"));
        cmd.arg("--config").arg(config);
        self.spawn_agent_process(system, cmd, self.nats.url())
    }

    /// Runs `cmd` as the agent process of `system`, logging into the
    /// stack's folder, reaching the server at `url`.
    fn spawn_agent_process(
        &mut self,
        system: &str,
        cmd: Command,
        url: String,
    ) -> anyhow::Result<()> {
        let p = ServiceProcess::spawn_command(
            &format!("agent-{system}"),
            cmd,
            &[("NATS_URL", url)],
            self.dir.path(),
        )?;
        self.services.insert(format!("agent-{system}"), p);
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
        self.restart_scheduler_as("arca-scheduler", &[], extra, env)
            .await
    }

    /// Like [`Stack::restart_scheduler`], with the scheduler's crash hook:
    /// jobs stop being acted on once `step` (`opening-window`,
    /// `transferring`, ...) is persisted, so that the test can kill the
    /// scheduler there (the `arca-scheduler-halting` test binary).
    pub async fn restart_scheduler_halting(
        &mut self,
        extra: &str,
        step: &str,
    ) -> anyhow::Result<()> {
        self.restart_scheduler_as(
            "arca-scheduler-halting",
            &["--halt-after", step],
            extra,
            &[],
        )
        .await
    }

    async fn restart_scheduler_as(
        &mut self,
        binary: &str,
        args: &[&str],
        extra: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        if let Some(p) = self.services.get_mut("scheduler") {
            p.kill();
        }
        let base = if extra.contains("firewalls =") {
            SCHEDULER_BASE
        } else {
            SCHEDULER_CONFIG
        };
        self.write_scheduler(&format!("{base}{extra}\n"))?;
        let mut all = vec![("NATS_URL", self.nats.url())];
        all.extend(env.iter().cloned());
        let config = self.dir.path().join("scheduler.toml");
        let mut argv = vec!["--config", config.to_str().unwrap()];
        argv.extend_from_slice(args);
        let p = ServiceProcess::spawn(binary, argv, &all, self.dir.path())?;
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
        applications: Vec::new(),
        agent: Some(agent_key(name)),
        include: Vec::new(),
        exclude: Vec::new(),
        one_file_system: false,
        exclude_caches: false,
        schedules: Default::default(),
        retention: Default::default(),
        priority: 0,
        quota: None,
        job_timeout_secs: None,
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
