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
    /// The agent's public key (`U...`, an nkey): enrollment. The NATS
    /// server lets only this key speak for the system, and media commits a
    /// snapshot of the system only when this key signed its manifest. A
    /// system without one is registered but cannot be backed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Glob patterns: when set, only files under `paths` that match one
    /// (and the folders above them) are backed up. Syntax as for restore's
    /// `--include` (see [`crate::PathFilter`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Glob patterns of paths not to back up; a matching folder is not
    /// entered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Stay on the file system of each path: mount points below it are
    /// recorded as empty folders.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_file_system: bool,
    /// Skip the contents of folders holding a valid `CACHEDIR.TAG` (the
    /// folder and its tag file are kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_caches: bool,
    /// When backups run by themselves, one cron expression per backup type.
    #[serde(default, skip_serializing_if = "Schedules::is_empty")]
    pub schedules: Schedules,
    /// How many snapshots to keep.
    #[serde(default, skip_serializing_if = "Retention::is_empty")]
    pub retention: Retention,
    /// Jobs selected together run in priority order, highest first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
}

impl SystemConfig {
    /// What the agent's reader takes under `paths`.
    pub fn selection(&self) -> Selection {
        Selection {
            filter: crate::PathFilter {
                include: self.include.clone(),
                exclude: self.exclude.clone(),
            },
            one_file_system: self.one_file_system,
            exclude_caches: self.exclude_caches,
        }
    }
}

/// What a backup takes under the system's paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Selection {
    /// Include and exclude patterns.
    #[serde(default)]
    pub filter: crate::PathFilter,
    /// Do not cross into other file systems.
    #[serde(default)]
    pub one_file_system: bool,
    /// Skip the contents of folders tagged with `CACHEDIR.TAG`.
    #[serde(default)]
    pub exclude_caches: bool,
}

fn is_zero(p: &i32) -> bool {
    *p == 0
}

/// Full or incremental: what a scheduled backup is asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackupType {
    /// Read every file.
    Full,
    /// Read only what changed since the last backup.
    Incremental,
}

impl BackupType {
    /// Kebab-case name, as in config, events and subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incremental => "incremental",
        }
    }
}

/// The schedules of a system: at most one per backup type. When both fall
/// on the same instant, the full backup runs (it covers the incremental).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Schedules {
    /// When full backups run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<ScheduleSpec>,
    /// When incremental backups run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<ScheduleSpec>,
}

impl Schedules {
    /// True when no backup runs by itself.
    pub fn is_empty(&self) -> bool {
        self.full.is_none() && self.incremental.is_none()
    }

    /// The configured schedules, full first.
    pub fn each(&self) -> impl Iterator<Item = (BackupType, &ScheduleSpec)> {
        [
            (BackupType::Full, self.full.as_ref()),
            (BackupType::Incremental, self.incremental.as_ref()),
        ]
        .into_iter()
        .filter_map(|(t, s)| s.map(|s| (t, s)))
    }
}

/// A cron expression read in a time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Five fields (minute hour day-of-month month day-of-week), e.g.
    /// `0 1 * * SUN`, or six with seconds first; the scheduler refuses an
    /// expression it cannot read.
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. `Europe/Berlin`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// How many snapshots of a system to keep; unset keeps all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Retention {
    /// The newest N snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// The newest snapshot of each of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// The newest snapshot of each of the last N weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// The newest snapshot of each of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
}

impl Retention {
    /// True when nothing is set (keep every snapshot).
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
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
        if self.agent.as_ref().is_some_and(|a| a.trim().is_empty()) {
            return Err(field("agent must not be empty when given"));
        }
        for e in &self.exclude {
            if e.trim().is_empty() {
                return Err(field("exclude must not hold an empty pattern"));
            }
        }
        for (t, s) in self.schedules.each() {
            if s.cron.trim().is_empty() {
                return Err(field(&format!(
                    "schedules.{}.cron must not be empty",
                    t.as_str()
                )));
            }
        }
        let r = &self.retention;
        for (name, v) in [
            ("keep-last", r.keep_last),
            ("keep-daily", r.keep_daily),
            ("keep-weekly", r.keep_weekly),
            ("keep-monthly", r.keep_monthly),
        ] {
            if v == Some(0) {
                return Err(field(&format!(
                    "retention.{name} must be at least 1 (leave it out to keep all)"
                )));
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
