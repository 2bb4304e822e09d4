//! The firewall controller: opens the guarded port for one system's
//! address under a lease, closes it when asked or when the lease runs out.
//!
//! Backends do the filtering. This build has the `none` backend, for hosts
//! whose firewall is managed by other means: it records opens and closes
//! and says in its log that it filters nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::rpc::{decode_request, respond, verb};
use arca_schemas::JobId;
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, FirewallVerb};
use async_nats::{Client, Message};
use chrono::Utc;
use futures::StreamExt;
use serde::Deserialize;

/// Which backend filters packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Filters nothing; records opens and closes only.
    None,
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
}

fn default_ports() -> Vec<u16> {
    vec![4222]
}

fn default_max_lease() -> u64 {
    3600
}

struct Controller {
    config: Config,
    client: Client,
    windows: Mutex<HashMap<JobId, WindowInfo>>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    config: Config,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        subject::valid_token(&config.id),
        "firewall id {:?} is not a valid name (letters, digits, '-', '_')",
        config.id
    );
    match config.backend {
        BackendKind::None => tracing::warn!(
            id = %config.id,
            "firewall backend 'none': windows are recorded but no packet is filtered; \
             the guarded ports {:?} must be protected by other means",
            config.ports
        ),
    }
    let ctl = Arc::new(Controller {
        config: config.clone(),
        client: client.clone(),
        windows: Mutex::new(HashMap::new()),
    });
    let mut requests = client.subscribe(subject::firewall_all(&config.id)).await?;
    client.flush().await?;
    tracing::info!(id = %config.id, "firewall controller ready");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => ctl.expire(),
            Some(msg) = requests.next() => {
                let c = ctl.clone();
                tokio::spawn(async move { c.handle(msg).await });
            }
            else => break,
        }
    }
    tracing::info!("firewall controller stopped");
    Ok(())
}

impl Controller {
    fn backend_name(&self) -> &'static str {
        match self.config.backend {
            BackendKind::None => "none",
        }
    }

    async fn handle(&self, msg: Message) {
        match FirewallVerb::parse(verb(&msg.subject)) {
            Some(FirewallVerb::Open) => respond(&self.client, &msg, self.open(&msg.payload)).await,
            Some(FirewallVerb::Renew) => {
                respond(&self.client, &msg, self.renew(&msg.payload)).await
            }
            Some(FirewallVerb::Close) => {
                respond(&self.client, &msg, self.close(&msg.payload)).await
            }
            Some(FirewallVerb::Status) => respond(&self.client, &msg, Ok(self.status())).await,
            None => {
                let r: Result<(), _> = Err(ErrorReply::bad_request(format!(
                    "unknown verb in {}",
                    msg.subject
                )));
                respond(&self.client, &msg, r).await
            }
        }
    }

    fn lease(&self, secs: u64) -> Result<chrono::DateTime<Utc>, ErrorReply> {
        if secs == 0 || secs > self.config.max_lease_secs {
            return Err(ErrorReply::bad_request(format!(
                "lease of {secs}s outside 1..={}s",
                self.config.max_lease_secs
            )));
        }
        Ok(Utc::now() + chrono::Duration::seconds(secs as i64))
    }

    fn open(&self, payload: &[u8]) -> Result<WindowReply, ErrorReply> {
        let req: OpenWindow = decode_request(payload)?;
        let expires = self.lease(req.lease_secs)?;
        let mut windows = self.windows.lock().expect("windows lock");
        tracing::info!(
            job = %req.job, system = %req.system, address = %req.address, ports = ?self.config.ports,
            backend = self.backend_name(), "window opened"
        );
        windows.insert(
            req.job,
            WindowInfo {
                job: req.job,
                system: req.system,
                address: req.address,
                expires,
            },
        );
        Ok(self.reply(expires))
    }

    fn renew(&self, payload: &[u8]) -> Result<WindowReply, ErrorReply> {
        let req: RenewWindow = decode_request(payload)?;
        let expires = self.lease(req.lease_secs)?;
        let mut windows = self.windows.lock().expect("windows lock");
        let w = windows
            .get_mut(&req.job)
            .ok_or_else(|| ErrorReply::not_found(format!("no window open for job {}", req.job)))?;
        w.expires = expires;
        Ok(self.reply(expires))
    }

    fn close(&self, payload: &[u8]) -> Result<CloseWindowReply, ErrorReply> {
        let req: CloseWindow = decode_request(payload)?;
        let removed = self.windows.lock().expect("windows lock").remove(&req.job);
        if let Some(w) = &removed {
            tracing::info!(job = %req.job, address = %w.address, backend = self.backend_name(), "window closed");
        }
        Ok(CloseWindowReply {
            was_open: removed.is_some(),
        })
    }

    fn expire(&self) {
        let now = Utc::now();
        self.windows.lock().expect("windows lock").retain(|job, w| {
            let keep = w.expires > now;
            if !keep {
                tracing::warn!(job = %job, address = %w.address, "lease expired; window closed");
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
            backend: self.backend_name().to_owned(),
            ports: self.config.ports.clone(),
            windows,
        }
    }

    fn reply(&self, expires: chrono::DateTime<Utc>) -> WindowReply {
        WindowReply {
            firewall: self.config.id.clone(),
            backend: self.backend_name().to_owned(),
            expires,
        }
    }
}
