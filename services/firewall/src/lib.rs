//! The firewall controller: opens the guarded ports for one system's
//! address under a lease, closes them when asked or when the lease runs out.
//!
//! The controller holds the policy: which job holds which window, leases,
//! and reconciliation at start ([`reconcile`]). A [`backend::Backend`] does
//! the filtering:
//!
//! - `nftables` ([`nft`]): one table of its own, normally closed; a window
//!   is a set element with a kernel timeout, so it closes by itself if the
//!   scheduler or this controller dies.
//! - `none`: filters nothing, for hosts whose firewall is managed by other
//!   means; it records and reports windows and says so in its log at start.
//!
//! A window is for one job: opening it again renews it, renewing needs it
//! open (a window whose lease ran out stays closed), closing a closed one
//! succeeds. Two jobs of one address share its pairs; the pairs close when
//! the last of them closes. Backend operations are serialised.

pub mod backend;
pub mod error;
pub mod nft;
pub mod reconcile;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::rpc::{respond, verb};
use arca_schemas::JobId;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, FirewallVerb};
use async_nats::{Client, Message};
use chrono::Utc;
use futures::StreamExt;
use serde::Deserialize;

use crate::backend::{Backend, BackendError, NoneBackend, Pair};
use crate::error::{FirewallError, decode};
use crate::nft::{NftBackend, NftConfig};

/// Which backend filters packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Filters nothing; records opens and closes only.
    None,
    /// nftables: a table of its own, normally closed.
    Nftables,
}

/// Configuration of a firewall controller.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Id in subjects (`arca.fw.<id>...`).
    pub id: String,
    /// Backend; must be chosen explicitly.
    pub backend: BackendKind,
    /// Guarded ports (the port agents use to reach NATS).
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Longest lease a request may ask for, in seconds.
    #[serde(default = "default_max_lease")]
    pub max_lease_secs: u64,
    /// nftables: name of the controller's own table (family `inet`).
    #[serde(default = "default_table")]
    pub table: String,
    /// nftables: lower-trust interfaces whose traffic is guarded.
    #[serde(default)]
    pub guard_interfaces: Vec<String>,
    /// nftables: lower-trust source networks (CIDR) whose traffic is guarded.
    /// With neither list, all traffic but loopback's is guarded.
    #[serde(default)]
    pub guard_networks: Vec<String>,
    /// nftables: also guard forwarded traffic (a controller on a router
    /// between the zones).
    #[serde(default)]
    pub forward: bool,
    /// The controller's identity (an nkey seed, mode 0600, created when
    /// missing), to authenticate to NATS.
    #[serde(default)]
    pub identity_file: Option<std::path::PathBuf>,
    /// TLS settings of the NATS connection.
    #[serde(default)]
    pub tls: Option<arca_runtime::nats::TlsFiles>,
}

fn default_ports() -> Vec<u16> {
    vec![4222]
}

fn default_max_lease() -> u64 {
    3600
}

fn default_table() -> String {
    "arca".to_owned()
}

impl Config {
    /// Credentials of the NATS connection.
    pub fn credentials(&self) -> anyhow::Result<arca_runtime::nats::Credentials> {
        arca_runtime::nats::Credentials::from_files(self.identity_file.as_deref(), self.tls.clone())
    }

    /// The nftables part of the configuration.
    pub fn nft(&self) -> NftConfig {
        NftConfig {
            table: self.table.clone(),
            ports: self.ports.clone(),
            guard_interfaces: self.guard_interfaces.clone(),
            guard_networks: self.guard_networks.clone(),
            forward: self.forward,
        }
    }
}

struct Controller {
    config: Config,
    backend: Arc<dyn Backend>,
    windows: Mutex<HashMap<JobId, WindowInfo>>,
    /// Serialises backend operations with the window map.
    ops: tokio::sync::Mutex<()>,
}

/// Runs the controller until `shutdown` resolves. Stopping leaves the
/// filtering in place (fail closed); open pairs run out with their lease.
pub async fn run(
    config: Config,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    arca_runtime::ensure_name("firewall id", &config.id)?;
    let backend: Arc<dyn Backend> = match config.backend {
        BackendKind::None => {
            tracing::warn!(
                id = %config.id,
                "firewall backend 'none': windows are recorded but no packet is filtered; \
                 the guarded ports {:?} must be protected by other means",
                config.ports
            );
            Arc::new(NoneBackend)
        }
        BackendKind::Nftables => {
            let nft = config.nft();
            nft.validate()
                .map_err(|e| anyhow::anyhow!("firewall {}: {e}", config.id))?;
            tracing::info!(
                id = %config.id, table = %format!("inet {}", nft.table), ports = ?nft.ports,
                interfaces = ?nft.guard_interfaces, networks = ?nft.guard_networks,
                forward = nft.forward, "firewall backend 'nftables'"
            );
            Arc::new(NftBackend::new(nft))
        }
    };
    let ctl = Arc::new(Controller::new(config.clone(), backend));
    ctl.start(&client).await?;
    let mut requests = client.subscribe(subject::firewall_all(&config.id)).await?;
    client.flush().await?;
    tracing::info!(id = %config.id, backend = ctl.backend.name(), "firewall controller ready");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => ctl.expire(),
            Some(msg) = requests.next() => {
                let (c, client) = (ctl.clone(), client.clone());
                tokio::spawn(async move { c.handle(&client, msg).await });
            }
            else => break,
        }
    }
    tracing::info!("firewall controller stopped; filtering stays in place");
    Ok(())
}

/// A handler's result as the reply on the wire.
fn answer_with<T>(r: Result<T, FirewallError>) -> Result<T, arca_schemas::error::ErrorReply> {
    r.map_err(|e| e.to_reply())
}

impl Controller {
    fn new(config: Config, backend: Arc<dyn Backend>) -> Self {
        Controller {
            config,
            backend,
            windows: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs a blocking backend call off the async workers.
    async fn backend<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Backend) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let b = self.backend.clone();
        tokio::task::spawn_blocking(move || f(b.as_ref()))
            .await
            .expect("backend call does not panic")
    }

    fn pairs(&self, address: IpAddr) -> Vec<Pair> {
        self.config
            .ports
            .iter()
            .map(|&port| Pair { address, port })
            .collect()
    }

    /// Puts filtering in place and reconciles the pairs found there.
    async fn start(&self, client: &Client) -> anyhow::Result<()> {
        let _ops = self.ops.lock().await;
        let found = self.backend(|b| b.start()).await?;
        if found.is_empty() {
            return Ok(());
        }
        let running = match reconcile::running_jobs(client, &self.config.id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read job records; closing every window found");
                Default::default()
            }
        };
        let now = Utc::now();
        let mut stale = Vec::new();
        let mut windows = self.windows.lock().expect("windows lock").clone();
        for e in found {
            match e.tag.as_deref().and_then(reconcile::parse_tag) {
                Some((job, system)) if running.contains(&job) => {
                    let expires =
                        now + chrono::Duration::from_std(e.expires_in).unwrap_or_default();
                    tracing::info!(%job, %system, address = %e.pair.address, "window of a running job kept");
                    windows.insert(
                        job,
                        WindowInfo {
                            job,
                            system,
                            address: e.pair.address.to_string(),
                            expires,
                        },
                    );
                }
                _ => {
                    tracing::warn!(address = %e.pair.address, port = e.pair.port, tag = ?e.tag,
                        "window of no running job found; closing it");
                    stale.push(e.pair);
                }
            }
        }
        if !stale.is_empty() {
            self.backend(move |b| b.close(&stale)).await?;
        }
        *self.windows.lock().expect("windows lock") = windows;
        Ok(())
    }

    async fn handle(&self, client: &Client, msg: Message) {
        match FirewallVerb::parse(verb(&msg.subject)) {
            Some(FirewallVerb::Open) => {
                respond(client, &msg, answer_with(self.open(&msg.payload).await)).await
            }
            Some(FirewallVerb::Renew) => {
                respond(client, &msg, answer_with(self.renew(&msg.payload).await)).await
            }
            Some(FirewallVerb::Close) => {
                respond(client, &msg, answer_with(self.close(&msg.payload).await)).await
            }
            Some(FirewallVerb::Status) => respond(client, &msg, Ok(self.status())).await,
            None => {
                let r: Result<(), _> = Err(FirewallError::UnknownVerb(msg.subject.to_string()));
                respond(client, &msg, answer_with(r)).await
            }
        }
    }

    fn lease(&self, secs: u64) -> Result<Duration, FirewallError> {
        if secs == 0 || secs > self.config.max_lease_secs {
            return Err(FirewallError::Lease {
                secs,
                max: self.config.max_lease_secs,
            });
        }
        Ok(Duration::from_secs(secs))
    }

    fn expires(lease: Duration) -> chrono::DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default()
    }

    /// True when a window of another job than `job` uses `address`.
    fn shared(&self, job: JobId, address: &str) -> bool {
        self.windows
            .lock()
            .expect("windows lock")
            .values()
            .any(|w| w.job != job && w.address == address)
    }

    async fn open(&self, payload: &[u8]) -> Result<WindowReply, FirewallError> {
        let req: OpenWindow = decode(payload)?;
        let lease = self.lease(req.lease_secs)?;
        let address: IpAddr = req
            .address
            .trim()
            .parse()
            .map_err(|_| FirewallError::Address {
                address: req.address.clone(),
                system: req.system.clone(),
            })?;
        if !subject::valid_token(&req.system) {
            return Err(FirewallError::SystemName(req.system));
        }
        let _ops = self.ops.lock().await;
        let previous = self
            .windows
            .lock()
            .expect("windows lock")
            .get(&req.job)
            .cloned();
        if let Some(prev) = previous.filter(|p| p.address != address.to_string()) {
            // Same job, another address: the old pairs go first.
            if !self.shared(req.job, &prev.address)
                && let Ok(old) = prev.address.parse::<IpAddr>()
            {
                let pairs = self.pairs(old);
                self.backend(move |b| b.close(&pairs)).await?;
            }
        }
        let pairs = self.pairs(address);
        let tag = reconcile::tag(&req.job, &req.system);
        self.backend(move |b| b.open(&pairs, lease, &tag)).await?;
        let expires = Self::expires(lease);
        tracing::info!(
            job = %req.job, system = %req.system, %address, ports = ?self.config.ports,
            lease_secs = lease.as_secs(), backend = self.backend.name(), "window opened"
        );
        self.windows.lock().expect("windows lock").insert(
            req.job,
            WindowInfo {
                job: req.job,
                system: req.system,
                address: address.to_string(),
                expires,
            },
        );
        Ok(self.reply(expires))
    }

    async fn renew(&self, payload: &[u8]) -> Result<WindowReply, FirewallError> {
        let req: RenewWindow = decode(payload)?;
        let lease = self.lease(req.lease_secs)?;
        let _ops = self.ops.lock().await;
        let w = self
            .windows
            .lock()
            .expect("windows lock")
            .get(&req.job)
            .cloned()
            .filter(|w| w.expires > Utc::now())
            .ok_or(FirewallError::NoWindow(req.job))?;
        let address: IpAddr = w
            .address
            .parse()
            .expect("a window's address was parsed when it opened");
        let pairs = self.pairs(address);
        let tag = reconcile::tag(&w.job, &w.system);
        self.backend(move |b| b.open(&pairs, lease, &tag)).await?;
        let expires = Self::expires(lease);
        tracing::debug!(job = %req.job, address = %w.address, lease_secs = lease.as_secs(), "window renewed");
        if let Some(w) = self.windows.lock().expect("windows lock").get_mut(&req.job) {
            w.expires = expires;
        }
        Ok(self.reply(expires))
    }

    async fn close(&self, payload: &[u8]) -> Result<CloseWindowReply, FirewallError> {
        let req: CloseWindow = decode(payload)?;
        let _ops = self.ops.lock().await;
        let Some(w) = self
            .windows
            .lock()
            .expect("windows lock")
            .get(&req.job)
            .cloned()
        else {
            return Ok(CloseWindowReply { was_open: false });
        };
        if !self.shared(req.job, &w.address)
            && let Ok(address) = w.address.parse::<IpAddr>()
        {
            let pairs = self.pairs(address);
            self.backend(move |b| b.close(&pairs)).await?;
        }
        self.windows.lock().expect("windows lock").remove(&req.job);
        tracing::info!(job = %req.job, address = %w.address, backend = self.backend.name(), "window closed");
        Ok(CloseWindowReply { was_open: true })
    }

    /// Forgets windows whose lease ran out (the backend closed them itself).
    fn expire(&self) {
        let now = Utc::now();
        self.windows.lock().expect("windows lock").retain(|job, w| {
            let keep = w.expires > now;
            if !keep {
                tracing::warn!(job = %job, address = %w.address, "lease ran out; window closed by itself");
            }
            keep
        });
    }

    fn status(&self) -> FirewallStatusReply {
        let mut windows: Vec<_> = self
            .windows
            .lock()
            .expect("windows lock")
            .values()
            .cloned()
            .collect();
        windows.sort_by_key(|w| w.expires);
        FirewallStatusReply {
            firewall: self.config.id.clone(),
            backend: self.backend.name().to_owned(),
            ports: self.config.ports.clone(),
            windows,
        }
    }

    fn reply(&self, expires: chrono::DateTime<Utc>) -> WindowReply {
        WindowReply {
            firewall: self.config.id.clone(),
            backend: self.backend.name().to_owned(),
            expires,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Element;
    use arca_schemas::codec;
    use arca_schemas::error::ErrorCode;
    use std::collections::HashSet;

    /// A backend that keeps the open pairs in memory, with their leases.
    #[derive(Default)]
    struct Recorder {
        open: Mutex<HashMap<Pair, (Duration, String)>>,
    }

    impl Backend for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn start(&self) -> Result<Vec<Element>, BackendError> {
            Ok(Vec::new())
        }
        fn open(&self, pairs: &[Pair], lease: Duration, tag: &str) -> Result<(), BackendError> {
            let mut open = self.open.lock().unwrap();
            for p in pairs {
                open.insert(*p, (lease, tag.to_owned()));
            }
            Ok(())
        }
        fn close(&self, pairs: &[Pair]) -> Result<(), BackendError> {
            let mut open = self.open.lock().unwrap();
            for p in pairs {
                open.remove(p);
            }
            Ok(())
        }
    }

    fn controller() -> (Controller, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let mut config: Config = toml::from_str("id = \"t\"\nbackend = \"none\"\n").unwrap();
        config.ports = vec![4222, 7422];
        (Controller::new(config, rec.clone()), rec)
    }

    fn open_req(job: JobId, address: &str, lease_secs: u64) -> Vec<u8> {
        codec::encode(&OpenWindow {
            job,
            system: "web01".into(),
            address: address.into(),
            lease_secs,
        })
        .unwrap()
    }

    fn addresses(rec: &Recorder) -> HashSet<String> {
        rec.open
            .lock()
            .unwrap()
            .keys()
            .map(|p| format!("{}:{}", p.address, p.port))
            .collect()
    }

    #[tokio::test]
    async fn open_renew_close_drive_the_backend() {
        let (ctl, rec) = controller();
        let job = JobId::new();
        ctl.open(&open_req(job, "10.0.0.5", 30)).await.unwrap();
        assert_eq!(
            addresses(&rec),
            HashSet::from(["10.0.0.5:4222".into(), "10.0.0.5:7422".into()])
        );
        let tag = rec.open.lock().unwrap().values().next().unwrap().1.clone();
        assert_eq!(reconcile::parse_tag(&tag), Some((job, "web01".into())));
        let renew = codec::encode(&RenewWindow {
            job,
            lease_secs: 90,
        })
        .unwrap();
        ctl.renew(&renew).await.unwrap();
        assert!(
            rec.open
                .lock()
                .unwrap()
                .values()
                .all(|(l, _)| l.as_secs() == 90)
        );
        assert_eq!(ctl.status().windows.len(), 1);
        let close = codec::encode(&CloseWindow { job }).unwrap();
        assert!(ctl.close(&close).await.unwrap().was_open);
        assert!(addresses(&rec).is_empty());
        assert!(
            !ctl.close(&close).await.unwrap().was_open,
            "closing twice succeeds"
        );
        let e = ctl.renew(&renew).await.unwrap_err();
        assert!(
            matches!(e, FirewallError::NoWindow(j) if j == job),
            "a closed window is not renewed: {e}"
        );
        assert_eq!(e.to_reply().code, ErrorCode::NotFound);
        assert!(addresses(&rec).is_empty());
    }

    #[tokio::test]
    async fn bad_requests_change_nothing() {
        let (ctl, rec) = controller();
        for (address, lease) in [
            ("not-an-address", 30),
            ("10.0.0.5", 0),
            ("10.0.0.5", 999_999),
        ] {
            let e = ctl
                .open(&open_req(JobId::new(), address, lease))
                .await
                .unwrap_err();
            assert_eq!(
                e.to_reply().code,
                ErrorCode::BadRequest,
                "{address} {lease}"
            );
        }
        assert!(addresses(&rec).is_empty());
        assert!(ctl.status().windows.is_empty());
    }

    #[tokio::test]
    async fn two_jobs_of_one_address_share_its_pairs_until_the_last_closes() {
        let (ctl, rec) = controller();
        let (a, b) = (JobId::new(), JobId::new());
        ctl.open(&open_req(a, "fd00::5", 30)).await.unwrap();
        ctl.open(&open_req(b, "fd00::5", 30)).await.unwrap();
        ctl.close(&codec::encode(&CloseWindow { job: a }).unwrap())
            .await
            .unwrap();
        assert_eq!(addresses(&rec).len(), 2, "b still needs the pairs");
        ctl.close(&codec::encode(&CloseWindow { job: b }).unwrap())
            .await
            .unwrap();
        assert!(addresses(&rec).is_empty());
    }

    #[tokio::test]
    async fn opening_again_with_another_address_moves_the_window() {
        let (ctl, rec) = controller();
        let job = JobId::new();
        ctl.open(&open_req(job, "10.0.0.5", 30)).await.unwrap();
        ctl.open(&open_req(job, "10.0.0.6", 30)).await.unwrap();
        assert_eq!(
            addresses(&rec),
            HashSet::from(["10.0.0.6:4222".into(), "10.0.0.6:7422".into()])
        );
    }

    #[tokio::test]
    async fn a_window_whose_lease_ran_out_is_forgotten_and_not_renewed() {
        let (ctl, _rec) = controller();
        let job = JobId::new();
        ctl.open(&open_req(job, "10.0.0.5", 1)).await.unwrap();
        // The lease is wall-clock time (the kernel's timer runs in real time).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let renew = codec::encode(&RenewWindow {
            job,
            lease_secs: 30,
        })
        .unwrap();
        assert!(matches!(
            ctl.renew(&renew).await.unwrap_err(),
            FirewallError::NoWindow(_)
        ));
        ctl.expire();
        assert!(ctl.status().windows.is_empty());
    }

    #[test]
    fn config_keys() {
        let c: Config = toml::from_str(
            "id = \"edge\"\nbackend = \"nftables\"\ntable = \"arca_edge\"\nports = [4222]\n\
             guard-interfaces = [\"eth1\"]\nguard-networks = [\"10.0.0.0/8\"]\nforward = true\n",
        )
        .unwrap();
        assert_eq!(c.backend, BackendKind::Nftables);
        c.nft().validate().unwrap();
        let d: Config = toml::from_str("id = \"x\"\nbackend = \"none\"\n").unwrap();
        assert_eq!(d.table, "arca");
        assert!(
            toml::from_str::<Config>("id = \"x\"\n").is_err(),
            "backend is required"
        );
        assert!(
            toml::from_str::<Config>("id = \"x\"\nbackend = \"none\"\nfamily = \"ip\"\n").is_err()
        );
    }
}
