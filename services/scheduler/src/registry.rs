//! The registry of systems: add, replace, show, list and remove, each
//! checked before anything is stored.
//!
//! A firewall a system names must be known: either listed in the
//! scheduler's `firewalls` configuration, or answering a status request on
//! `arca.fw.<id>.status` right now. A cron expression or time zone that
//! cannot be read is refused, naming the field.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arca_runtime::rpc::{self, decode_request};
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, FirewallVerb};
use arca_schemas::trust::{AuditKind, AuditRecord};
use arca_schemas::{ErrorCode, SystemConfig};

use crate::{Scheduler, schedule};

impl Scheduler {
    pub(crate) async fn load_systems(&self, p: &[u8]) -> Result<LoadSystemsReply, ErrorReply> {
        let req: LoadSystems = decode_request(p)?;
        if req.systems.is_empty() {
            return Err(ErrorReply::bad_request("no system given"));
        }
        let mut seen = HashSet::new();
        for s in &req.systems {
            self.check_system(s).await?;
            if !seen.insert(s.name.clone()) {
                return Err(ErrorReply::bad_request(format!(
                    "system {:?}: name given twice",
                    s.name
                )));
            }
        }
        let registered: HashMap<String, SystemConfig> = self
            .all_systems()
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let known: HashSet<String> = registered.keys().cloned().collect();
        for s in &req.systems {
            match req.mode {
                LoadMode::Add if known.contains(&s.name) => {
                    return Err(ErrorReply::new(
                        ErrorCode::Conflict,
                        format!(
                            "system {:?}: name already registered; use `arca system edit` to change it",
                            s.name
                        ),
                    ));
                }
                LoadMode::Replace if !known.contains(&s.name) => {
                    return Err(ErrorReply::not_found(format!(
                        "system {:?}: name not registered; use `arca system add` to register it",
                        s.name
                    )));
                }
                _ => {}
            }
        }
        let mut stored = Vec::new();
        for s in req.systems {
            self.put_system(&s).await?;
            tracing::info!(system = %s.name, agent = ?s.agent, "system registered");
            let before = registered.get(&s.name).and_then(|r| r.agent.clone());
            let kind = match (&before, &s.agent) {
                (None, Some(_)) => Some(AuditKind::Enrolled),
                (Some(a), b) if Some(a) != b.as_ref() => Some(AuditKind::KeyChanged),
                _ => None,
            };
            if let Some(kind) = kind {
                let mut a = AuditRecord::new(kind, self.audit_by());
                a.system = Some(s.name.clone());
                a.key = s.agent.clone();
                a.previous_key = before;
                self.audit(a).await;
            }
            stored.push(s.name);
        }
        Ok(LoadSystemsReply { stored })
    }

    /// Every check of one system, naming the field that is wrong.
    async fn check_system(&self, s: &SystemConfig) -> Result<(), ErrorReply> {
        s.validate().map_err(ErrorReply::bad_request)?;
        if let Some(key) = &s.agent
            && !arca_runtime::identity::valid_public_key(key)
        {
            return Err(ErrorReply::bad_request(format!(
                "system {:?}: agent: {key:?} is not a public user nkey (U..., 56 characters); \
                 the agent prints its key with `arca-agent --config FILE --public-key`",
                s.name
            )));
        }
        schedule::compile(&s.schedules)
            .map_err(|e| ErrorReply::bad_request(format!("system {:?}: {e}", s.name)))?;
        for fw in &s.firewalls {
            if !self.firewall_known(fw).await {
                return Err(ErrorReply::bad_request(format!(
                    "system {:?}: firewalls: unknown firewall {fw:?} (not in the scheduler's \
                     `firewalls` list, and no controller answers on {})",
                    s.name,
                    subject::firewall(fw, FirewallVerb::Status)
                )));
            }
        }
        Ok(())
    }

    async fn firewall_known(&self, fw: &str) -> bool {
        if self.config.firewalls.iter().any(|f| f == fw) {
            return true;
        }
        let r: Result<FirewallStatusReply, _> = rpc::request_with_timeout(
            &self.client,
            subject::firewall(fw, FirewallVerb::Status),
            &FirewallStatus {},
            Duration::from_secs(3),
        )
        .await;
        r.is_ok()
    }

    pub(crate) async fn list_systems(&self) -> Result<ListSystemsReply, ErrorReply> {
        let mut systems = self.all_systems().await?;
        systems.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ListSystemsReply { systems })
    }

    pub(crate) async fn get_system(&self, p: &[u8]) -> Result<SystemConfig, ErrorReply> {
        let req: GetSystem = decode_request(p)?;
        self.system(&req.name).await
    }

    /// Removes a system with no job queued or running. Its snapshots and
    /// job history stay.
    pub(crate) async fn remove_system(&self, p: &[u8]) -> Result<SystemRemoved, ErrorReply> {
        let req: RemoveSystem = decode_request(p)?;
        self.system(&req.name).await?;
        if let Some(j) = self
            .all_jobs()
            .await?
            .into_iter()
            .find(|j| j.system == req.name && !j.status.is_final())
        {
            return Err(ErrorReply::new(
                ErrorCode::Conflict,
                format!(
                    "system {:?} has job {} {:?}; cancel it or wait for it to end (`arca cancel {}`)",
                    req.name, j.id, j.status, j.id
                ),
            ));
        }
        self.delete_system(&req.name).await?;
        tracing::info!(system = %req.name, "system removed");
        Ok(SystemRemoved { name: req.name })
    }
}

/// A system record with no hooks, for cleaning up a job whose system is no
/// longer registered.
pub(crate) fn placeholder(name: &str) -> SystemConfig {
    SystemConfig {
        name: name.to_owned(),
        address: String::new(),
        paths: Vec::new(),
        firewalls: Vec::new(),
        media: arca_schemas::names::DEFAULT_MEDIA.to_owned(),
        hooks: Default::default(),
        applications: Vec::new(),
        agent: None,
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

#[cfg(test)]
mod tests {
    use arca_schemas::system::SystemsFile;

    #[test]
    fn the_sample_systems_files_are_valid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for file in ["ops/systems.sample.toml", "ops/compose/systems.toml"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let parsed: SystemsFile =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!parsed.systems.is_empty(), "{file}");
            for s in &parsed.systems {
                s.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
                crate::schedule::compile(&s.schedules).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
        }
    }
}
