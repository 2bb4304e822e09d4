//! A system to back up, as registered with the scheduler.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::subject::valid_token;

/// One system of the lower-trust zone and how to back it up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SystemConfig {
    /// Unique name; also the agent's subject token.
    pub name: String,
    /// Network address the agent connects from (what a firewall window opens).
    pub address: String,
    /// Absolute paths on the system to back up.
    pub paths: Vec<String>,
    /// Firewall controllers on the path between the system and NATS, in order.
    #[serde(default)]
    pub firewalls: Vec<String>,
    /// Media service that stores this system's backups.
    #[serde(default = "default_media")]
    pub media: String,
    /// Hooks run by the agent around backups and restores.
    #[serde(default)]
    pub hooks: Hooks,
}

fn default_media() -> String {
    crate::names::DEFAULT_MEDIA.to_owned()
}

/// The four hook points of a system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Hooks {
    /// Run before a backup reads any file (quiesce the applications).
    pub pre_backup: Option<HookSpec>,
    /// Run after a backup, whenever `pre-backup` ran, on any outcome.
    pub post_backup: Option<HookSpec>,
    /// Run before a restore writes any file.
    pub pre_restore: Option<HookSpec>,
    /// Run after a restore, whenever `pre-restore` ran, on any outcome.
    pub post_restore: Option<HookSpec>,
}

/// A command the agent runs as a hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HookSpec {
    /// Program and arguments; not passed through a shell.
    pub command: Vec<String>,
    /// Seconds before the hook is killed with its process group.
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_hook_timeout() -> u64 {
    300
}

impl SystemConfig {
    /// Checks the fields, naming the first one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_token(&self.name) {
            return Err(format!(
                "system name {:?}: use 1 to 64 letters, digits, '-' or '_'",
                self.name
            ));
        }
        let field = |f: &str| format!("system {:?}: {f}", self.name);
        if self.address.trim().is_empty() {
            return Err(field("address must not be empty"));
        }
        if self.paths.is_empty() {
            return Err(field("paths must name at least one absolute path"));
        }
        for p in &self.paths {
            if !p.starts_with('/') {
                return Err(field(&format!("path {p:?} is not absolute")));
            }
        }
        for fw in &self.firewalls {
            if !valid_token(fw) {
                return Err(field(&format!("firewall name {fw:?} is not a valid name")));
            }
        }
        if !valid_token(&self.media) {
            return Err(field(&format!(
                "media name {:?} is not a valid name",
                self.media
            )));
        }
        let hooks = [
            ("pre-backup", &self.hooks.pre_backup),
            ("post-backup", &self.hooks.post_backup),
            ("pre-restore", &self.hooks.pre_restore),
            ("post-restore", &self.hooks.post_restore),
        ];
        for (name, hook) in hooks {
            if let Some(h) = hook {
                if h.command.is_empty() || h.command[0].is_empty() {
                    return Err(field(&format!("hooks.{name}.command must name a program")));
                }
                if h.timeout_secs == 0 {
                    return Err(field(&format!(
                        "hooks.{name}.timeout-secs must be positive"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The file `arca systems load` reads: a list of `[[system]]` tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SystemsFile {
    /// The systems.
    #[serde(default, rename = "system")]
    pub systems: Vec<SystemConfig>,
}
