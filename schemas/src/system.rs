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
    /// Applications the agent itself makes consistent around transfers
    /// (`[[system.application]]` tables, each with a `kind`).
    #[serde(default, rename = "application", skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<Application>,
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
    /// Overall deadline of a job of this system, in seconds from its
    /// start: at it the transfer is cancelled, the post hook runs, the
    /// window closes and the job fails. Unset: the scheduler's
    /// `job-timeout-secs` (4 h) or 3 times the system's longest recent
    /// successful job of that kind, whichever is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_timeout_secs: Option<u64>,
    /// Most bytes the repository may hold for this system (`"50 GiB"`,
    /// `"800 MB"`, or a number of bytes). Media refuses a chunk that
    /// would take the system past it, and the backup fails saying so.
    /// No quota when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<ByteSizeText>")]
    pub quota: Option<ByteSize>,
}

/// A number of bytes, written as a number or as text with a unit: `B`,
/// `KB`/`MB`/`GB`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB`
/// (powers of 1024), e.g. `"50 GiB"`. Never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// How a [`ByteSize`] is written.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ByteSizeText {
    /// Bytes.
    Bytes(u64),
    /// A number and a unit, e.g. `"50 GiB"`.
    Text(String),
}

impl ByteSize {
    /// Reads `"50 GiB"`, `"1.5TB"`, `"4096"`.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let unit_size: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "MB" => 1000_u64.pow(2),
            "GB" => 1000_u64.pow(3),
            "TB" => 1000_u64.pow(4),
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
                ));
            }
        };
        let n: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size such as \"50 GiB\""))?;
        let bytes = n * unit_size as f64;
        if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
            return Err(format!("{text:?} is not a size of at least one byte"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl TryFrom<ByteSizeText> for ByteSize {
    type Error = String;
    fn try_from(t: ByteSizeText) -> Result<Self, String> {
        match t {
            ByteSizeText::Bytes(0) => Err("a size of 0 bytes: leave the quota out instead".into()),
            ByteSizeText::Bytes(n) => Ok(ByteSize(n)),
            ByteSizeText::Text(s) => ByteSize::parse(&s),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ByteSizeText::deserialize(d)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
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

/// An application the agent brings into a consistent state by itself: a
/// built-in hook kind. Around a backup, its preparation runs after the
/// `pre-backup` command and its release before the `post-backup` command
/// (the same nesting around a restore); the release runs whenever the
/// preparation was attempted, also at the agent's own deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Application {
    /// A PostgreSQL cluster, backed up with the low-level base backup API
    /// (`pg_backup_start` / `pg_backup_stop`) so that a restored data
    /// directory starts and recovers by itself.
    Postgresql(PostgresqlSpec),
    /// Processes stopped with SIGSTOP for the length of a backup transfer
    /// and continued with SIGCONT afterwards.
    Suspend(SuspendSpec),
}

impl Application {
    /// Its kind, as written in the systems file.
    pub fn kind(&self) -> &'static str {
        match self {
            Application::Postgresql(_) => "postgresql",
            Application::Suspend(_) => "suspend",
        }
    }

    /// Seconds each of its steps may take.
    pub fn timeout_secs(&self) -> u64 {
        match self {
            Application::Postgresql(p) => p.timeout_secs,
            Application::Suspend(s) => s.timeout_secs,
        }
    }
}

/// How the agent reaches and handles a PostgreSQL cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PostgresqlSpec {
    /// The cluster's data directory; it must lie within the system's paths.
    pub data_directory: String,
    /// Folder of the server's Unix socket, or a host name.
    #[serde(default = "default_pg_host")]
    pub host: String,
    /// The server's port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Role to connect as; it needs the right to run `pg_backup_start`
    /// (a superuser, or a role granted `EXECUTE` on the backup functions
    /// and `REPLICATION` for the temporary replication slot).
    #[serde(default = "default_pg_user")]
    pub user: String,
    /// Database to connect to.
    #[serde(default = "default_pg_user")]
    pub database: String,
    /// File on the system holding the role's password, when one is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Folder of `pg_ctl`; unset looks it up on `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<String>,
    /// Restore only: the command that stops the server, run as the agent
    /// like a hook command (e.g. `systemctl stop postgresql@15-main`).
    /// Default: `pg_ctl stop -D <data-directory> -m fast`, run as the
    /// directory's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_command: Option<Vec<String>>,
    /// Restore only: the command that starts the server again, run as the
    /// agent like a hook command (e.g. `systemctl start
    /// postgresql@15-main`). Default: `pg_ctl start -D <data-directory>
    /// -l <log-file>` with the server program and options the running
    /// server was started with (its `postmaster.opts`, read before it is
    /// stopped), run as the directory's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_command: Option<Vec<String>>,
    /// Restore only: where the default start command sends the server's
    /// log (default `<data-directory>/arca-start.log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    /// Seconds each step may take (starting the backup, which waits for a
    /// checkpoint; stopping it; stopping or starting the server).
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
}

fn default_pg_host() -> String {
    "/var/run/postgresql".to_owned()
}

fn default_pg_port() -> u16 {
    5432
}

fn default_pg_user() -> String {
    "postgres".to_owned()
}

/// Which processes the `suspend` kind stops: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SuspendSpec {
    /// A process group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_group: Option<i32>,
    /// A file holding a process id; that process's group is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<String>,
    /// A systemd unit (e.g. `app.service`): every process of its cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Seconds to wait for every process to be stopped.
    #[serde(default = "default_suspend_timeout")]
    pub timeout_secs: u64,
}

fn default_suspend_timeout() -> u64 {
    30
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
        if self.job_timeout_secs.is_some_and(|t| t < 10) {
            return Err(field(
                "job-timeout-secs must be at least 10 (leave it out for the default)",
            ));
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
        for (i, app) in self.applications.iter().enumerate() {
            let at = |m: &str| field(&format!("application {} ({}): {m}", i + 1, app.kind()));
            if app.timeout_secs() == 0 {
                return Err(at("timeout-secs must be positive"));
            }
            match app {
                Application::Postgresql(p) => {
                    let d = p.data_directory.trim_end_matches('/');
                    if !d.starts_with('/') || d.is_empty() {
                        return Err(at("data-directory must be an absolute path"));
                    }
                    let covered = self.paths.iter().any(|path| {
                        let path = path.trim_end_matches('/');
                        path.is_empty() || d == path || d.starts_with(&format!("{path}/"))
                    });
                    if !covered {
                        return Err(at(&format!(
                            "data-directory {d:?} is not within the system's paths"
                        )));
                    }
                    if p.host.trim().is_empty() || p.user.trim().is_empty() {
                        return Err(at("host and user must not be empty"));
                    }
                    for (name, cmd) in [
                        ("stop-command", &p.stop_command),
                        ("start-command", &p.start_command),
                    ] {
                        if cmd
                            .as_ref()
                            .is_some_and(|c| c.is_empty() || c[0].is_empty())
                        {
                            return Err(at(&format!("{name} must name a program")));
                        }
                    }
                }
                Application::Suspend(s) => {
                    let given = [
                        s.process_group.is_some(),
                        s.pid_file.is_some(),
                        s.unit.is_some(),
                    ];
                    if given.iter().filter(|g| **g).count() != 1 {
                        return Err(at("name exactly one of process-group, pid-file and unit"));
                    }
                    if s.process_group.is_some_and(|g| g <= 1) {
                        return Err(at("process-group must be a group id above 1"));
                    }
                    if s.unit
                        .as_ref()
                        .is_some_and(|u| u.is_empty() || u.contains('/') || u.starts_with('.'))
                    {
                        return Err(at("unit must be a unit name such as app.service"));
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[system]]
name = "db01"
address = "10.0.0.5"
paths = ["/var/lib/postgresql/15/main", "/etc/postgresql"]

[[system.application]]
kind = "postgresql"
data-directory = "/var/lib/postgresql/15/main"
bin-dir = "/usr/lib/postgresql/15/bin"

[[system.application]]
kind = "suspend"
unit = "reporting.service"
"#;

    #[test]
    fn applications_read_from_a_systems_file_and_back() {
        let f: SystemsFile = toml::from_str(FILE).unwrap();
        let s = &f.systems[0];
        s.validate().unwrap();
        let Application::Postgresql(pg) = &s.applications[0] else {
            panic!("{:?}", s.applications)
        };
        assert_eq!(pg.host, "/var/run/postgresql");
        assert_eq!(pg.port, 5432);
        assert_eq!(pg.timeout_secs, 300);
        assert!(
            matches!(&s.applications[1], Application::Suspend(x) if x.unit.as_deref() == Some("reporting.service"))
        );
        let again: SystemsFile = toml::from_str(&toml::to_string(&f).unwrap()).unwrap();
        assert_eq!(again.systems, f.systems);
    }

    #[test]
    fn quotas_read_as_numbers_or_with_units() {
        let q = |v: &str| {
            toml::from_str::<SystemsFile>(&format!(
                "[[system]]\nname = \"a\"\naddress = \"x\"\npaths = [\"/\"]\nquota = {v}\n"
            ))
            .map(|f| f.systems[0].quota)
        };
        assert_eq!(q("\"50 GiB\"").unwrap(), Some(ByteSize(50 << 30)));
        assert_eq!(q("\"1.5KB\"").unwrap(), Some(ByteSize(1500)));
        assert_eq!(q("4096").unwrap(), Some(ByteSize(4096)));
        for bad in ["\"50 GiBs\"", "0", "\"-1 GB\"", "\"lots\""] {
            assert!(q(bad).is_err(), "{bad}");
        }
        let f: SystemsFile = toml::from_str(FILE).unwrap();
        assert_eq!(f.systems[0].quota, None);
    }

    #[test]
    fn bad_applications_are_named() {
        let bad = |from: &str, to: &str| {
            let f: SystemsFile = toml::from_str(&FILE.replace(from, to)).unwrap();
            f.systems[0].validate().unwrap_err()
        };
        let e = bad(
            "data-directory = \"/var/lib/postgresql/15/main\"",
            "data-directory = \"/srv/other\"",
        );
        assert!(e.contains("not within the system's paths"), "{e}");
        let e = bad("unit = \"reporting.service\"", "process-group = 1");
        assert!(e.contains("above 1"), "{e}");
        let e = bad(
            "unit = \"reporting.service\"",
            "unit = \"a.service\"\nprocess-group = 300",
        );
        assert!(e.contains("exactly one"), "{e}");
        let unknown: Result<SystemsFile, _> = toml::from_str(&FILE.replace("bin-dir", "bindir"));
        assert!(unknown.is_err());
    }

    /// Every systems-file example of the applications page reads and
    /// validates.
    #[test]
    fn the_recipes_of_the_operator_page_are_valid() {
        let page = include_str!("../../docs/applications.md");
        let blocks: Vec<&str> = page
            .split("```toml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .collect();
        assert_eq!(blocks.len(), 5);
        for b in blocks {
            let f: SystemsFile = toml::from_str(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
            for s in &f.systems {
                s.validate().unwrap_or_else(|e| panic!("{e}\n{b}"));
            }
        }
    }
}
