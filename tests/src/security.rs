//! The credentials of a test stack: identities of the services and the
//! operator (the test), deterministic agent keys per system name, the
//! nats-server's users made by the same renderer as `arca nats-config`,
//! and TLS from the shared test authority.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use arca_runtime::identity::Identity;
use arca_runtime::natsconf::{self, Users};
use arca_testkit::{ClientAuth, Pki, Secure};

/// User name and password of the stack's dashboard user.
pub const DASHBOARD: (&str, &str) = ("dashboard", "dashboard-secret");

/// The agent key pair of `system`: derived from its name, so that a
/// system can be enrolled before its agent ever ran.
fn agent_pair(system: &str) -> nkeys::KeyPair {
    let seed = blake3::hash(format!("arca e2e agent {system}").as_bytes());
    nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, *seed.as_bytes())
        .expect("32 bytes make a key pair")
}

/// The public key enrolled for `system` in tests.
pub fn agent_key(system: &str) -> String {
    agent_pair(system).public_key()
}

/// The nkey seed of `system`'s agent, as its identity file holds it.
pub fn agent_seed(system: &str) -> String {
    agent_pair(system)
        .seed()
        .expect("a raw key pair has a seed")
}

/// Signs `data` with the key of `system`'s agent.
pub fn agent_sign(system: &str, data: &[u8]) -> Vec<u8> {
    agent_pair(system).sign(data).expect("a raw key pair signs")
}

/// Connect options of `system`'s agent: its key, its inbox, TLS.
pub fn agent_options(system: &str) -> async_nats::ConnectOptions {
    let pki = Pki::shared();
    async_nats::ConnectOptions::with_nkey(agent_seed(system))
        .custom_inbox_prefix(arca_schemas::subject::agent_inbox_prefix(system))
        .require_tls(true)
        .add_root_certificates(pki.ca())
        .add_client_certificate(pki.client_cert(), pki.client_key())
}

/// Writes the identity file of `system`'s agent (mode 0600), owned by
/// `uid` when given.
pub fn write_agent_identity(path: &Path, system: &str, uid: Option<u32>) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{}", agent_pair(system).seed()?)?;
    if let Some(uid) = uid {
        std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// Identities and users of one stack.
pub struct Security {
    dir: tempfile::TempDir,
    /// The scheduler's identity: agents and media trust its key.
    pub scheduler: Identity,
    /// The test's own identity (an operator).
    pub operator: Identity,
    /// The server's users.
    pub users: Users,
}

impl Security {
    /// New identities for scheduler, media, firewall and operator.
    pub fn new() -> anyhow::Result<Security> {
        let dir = tempfile::Builder::new().prefix("arca-ids-").tempdir()?;
        let id = |name: &str| Identity::load_or_create(&dir.path().join(format!("{name}.nk")));
        let scheduler = id("scheduler")?;
        let media = id("media")?;
        let firewall = id("firewall")?;
        // Further controllers some tests start.
        let router = id("firewall-router")?;
        let other = id("firewall-other")?;
        let operator = id("operator")?;
        let door = id("door")?;
        let users = Users {
            schedulers: vec![("main".into(), scheduler.public_key())],
            media: vec![("main".into(), media.public_key())],
            firewalls: vec![
                (crate::FIREWALL.into(), firewall.public_key()),
                ("router".into(), router.public_key()),
                ("other".into(), other.public_key()),
            ],
            operators: vec![operator.public_key()],
            agents: Vec::new(),
            dashboards: vec![(DASHBOARD.0.into(), DASHBOARD.1.into())],
            doors: vec![("main".into(), door.public_key())],
        };
        Ok(Security {
            dir,
            scheduler,
            operator,
            users,
        })
    }

    /// The identity file of a service (`scheduler`, `media`, `firewall`,
    /// `firewall-router`, `firewall-other`, `operator`, `door`: the
    /// scheduler's door watcher).
    pub fn identity_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.nk"))
    }

    /// The server's `authorization` block.
    pub fn authorization(&self) -> String {
        natsconf::render(&self.users, None).expect("test users render")
    }

    /// What the test server needs: users, and the test's credentials.
    pub fn secure(&self, names: &[&str]) -> Secure {
        Secure {
            authorization: self.authorization(),
            client: self.operator_auth(),
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The test's (the operator's) credentials.
    pub fn operator_auth(&self) -> ClientAuth {
        let pki = Pki::shared();
        ClientAuth {
            seed: self.operator.seed(),
            ca: pki.ca(),
            cert: pki.client_cert(),
            key: pki.client_key(),
        }
    }

    /// Adds the agent user of `system`; false when it was there.
    pub fn enroll(&mut self, system: &str) -> bool {
        if self.users.agents.iter().any(|(s, _)| s == system) {
            return false;
        }
        self.users
            .agents
            .push((system.to_owned(), agent_key(system)));
        true
    }

    /// Configuration lines of a service: its identity file, the
    /// scheduler's key (agents and media), and TLS. They end with the
    /// `[tls]` table, so they go last.
    pub fn toml(&self, identity: &Path, scheduler_key: bool, tls_key: Option<&Path>) -> String {
        let pki = Pki::shared();
        let mut s = format!("identity-file = \"{}\"\n", identity.display());
        if scheduler_key {
            s.push_str(&format!(
                "scheduler-key = \"{}\"\n",
                self.scheduler.public_key()
            ));
        }
        let key = tls_key
            .map(Path::to_owned)
            .unwrap_or_else(|| pki.client_key());
        s.push_str(&format!(
            "[tls]\nca-file = \"{}\"\ncert-file = \"{}\"\nkey-file = \"{}\"\n",
            pki.ca().display(),
            pki.client_cert().display(),
            key.display()
        ));
        s
    }
}
