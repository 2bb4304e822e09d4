//! The scheduler's configuration file: keys, defaults, and the checks a
//! configuration passes before the scheduler starts.

use arca_schemas::subject;
use serde::Deserialize;

/// Configuration of the scheduler.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Id in subjects (`arca.scheduler.<id>...`).
    #[serde(default = "default_id")]
    pub id: String,
    /// Seconds a firewall window stays open without renewal.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Seconds to wait for an agent to answer.
    #[serde(default = "default_agent_timeout")]
    pub agent_timeout_secs: u64,
    /// Seconds after a pre hook at which the agent runs the post hook by
    /// itself if the scheduler has not asked for it.
    #[serde(default = "default_hook_deadline")]
    pub hook_deadline_secs: u64,
    /// Seconds the agent may stay silent while its transfer runs (no
    /// answer to the status question the scheduler keeps asking) before
    /// the job fails and its window closes. Time during which the
    /// scheduler itself had lost its NATS connection does not count.
    /// Formerly `stall-timeout-secs`, which is still read.
    #[serde(default = "default_silence", alias = "stall-timeout-secs")]
    pub agent_silence_secs: u64,
    /// Seconds to keep retrying a firewall or media request that fails in a
    /// way a retry can help (not connected yet, busy).
    #[serde(default = "default_retry_window")]
    pub retry_secs: u64,
    /// Seconds between two reconciliations of the catalog with media (the
    /// first at start): snapshots media committed that the catalog does
    /// not list are recorded, and reported as `snapshot-adopted` events.
    #[serde(default = "default_reconcile")]
    pub reconcile_secs: u64,
    /// Jobs driven at the same time; more wait in the queue.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
    /// Firewall controllers systems may name. A name not listed is still
    /// accepted when a controller of that name answers a status request.
    #[serde(default)]
    pub firewalls: Vec<String>,
    /// A scheduled instant missed while the scheduler was down still runs
    /// (once) when the scheduler is back within this many seconds.
    #[serde(default = "default_grace")]
    pub missed_run_grace_secs: u64,
    /// Seconds between two looks at the schedules.
    #[serde(default = "default_tick")]
    pub schedule_tick_secs: u64,
    /// Days job events are kept in the events stream.
    #[serde(default = "default_events_days")]
    pub events_max_age_days: u64,
    /// Most bytes of job events kept (-1: no limit); the oldest go first.
    #[serde(default = "default_events_bytes")]
    pub events_max_bytes: i64,
    /// Most job events kept (-1: no limit); the oldest go first.
    #[serde(default = "default_events_msgs")]
    pub events_max_msgs: i64,
    /// Most events kept per job and kind (`arca.events.<job>.<kind>`); the
    /// oldest of that job's kind go first.
    #[serde(default = "default_events_per_subject")]
    pub events_max_msgs_per_subject: i64,
    /// Most bytes of audit records kept; the oldest go first.
    #[serde(default = "default_audit_bytes")]
    pub audit_max_bytes: i64,
    /// Most audit records kept per subject (one author's records of one
    /// kind about one system); the oldest of that subject go first.
    #[serde(default = "default_audit_per_subject")]
    pub audit_max_msgs_per_subject: i64,
    /// The least overall deadline of a job, in seconds: a job still running
    /// this long after it started is cancelled and fails. A system's
    /// `job-timeout-secs` overrides it; otherwise the deadline is the
    /// larger of this and 3 times the system's longest recent successful
    /// job of the same kind.
    #[serde(default = "default_job_timeout")]
    pub job_timeout_secs: u64,
    /// The scheduler's identity (an nkey seed, mode 0600, created when
    /// missing): it authenticates to NATS and signs every job token.
    /// Required.
    #[serde(default)]
    pub identity_file: Option<std::path::PathBuf>,
    /// TLS settings of the NATS connection.
    #[serde(default)]
    pub tls: Option<arca_runtime::nats::TlsFiles>,
    /// The door watcher's identity (an nkey seed, mode 0600, created when
    /// missing): a user of the NATS server's system account that may only
    /// listen to the server's reports of the clients it refused, which the
    /// scheduler records in the audit stream (`arca nats-config
    /// --door-key`). Without it refusals at the door are not audited.
    #[serde(default)]
    pub door_identity_file: Option<std::path::PathBuf>,
}

fn default_id() -> String {
    arca_schemas::names::DEFAULT_SCHEDULER.to_owned()
}
fn default_lease() -> u64 {
    60
}
fn default_agent_timeout() -> u64 {
    60
}
fn default_hook_deadline() -> u64 {
    3600
}
fn default_silence() -> u64 {
    15
}
fn default_retry_window() -> u64 {
    30
}
fn default_reconcile() -> u64 {
    600
}
fn default_max_parallel() -> usize {
    1
}
fn default_grace() -> u64 {
    3600
}
fn default_tick() -> u64 {
    20
}
fn default_events_days() -> u64 {
    90
}
fn default_events_bytes() -> i64 {
    1 << 30
}
fn default_events_msgs() -> i64 {
    -1
}
fn default_events_per_subject() -> i64 {
    arca_runtime::jetstream::EVENTS_MAX_MSGS_PER_SUBJECT
}
fn default_audit_bytes() -> i64 {
    arca_runtime::jetstream::AuditRetention::default().max_bytes
}
fn default_audit_per_subject() -> i64 {
    arca_runtime::jetstream::AuditRetention::default().max_msgs_per_subject
}
fn default_job_timeout() -> u64 {
    4 * 3600
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

impl Config {
    /// The scheduler's identity, created on first start.
    pub fn identity(&self) -> anyhow::Result<arca_runtime::identity::Identity> {
        let path = self.identity_file.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "identity-file is required: the scheduler signs every job token with it \
                 (e.g. identity-file = \"/var/lib/arca/scheduler.nk\"; created on first start)"
            )
        })?;
        Ok(arca_runtime::identity::Identity::load_or_create(path)?)
    }

    /// Credentials of the NATS connection.
    pub fn credentials(&self) -> anyhow::Result<arca_runtime::nats::Credentials> {
        Ok(arca_runtime::nats::Credentials {
            identity: Some(self.identity()?),
            tls: self.tls.clone(),
            inbox_prefix: None,
        })
    }

    /// Credentials of the door watcher's connection, when it has an
    /// identity: that identity and the scheduler's TLS.
    pub fn door_credentials(&self) -> anyhow::Result<Option<arca_runtime::nats::Credentials>> {
        let Some(path) = &self.door_identity_file else {
            return Ok(None);
        };
        Ok(Some(arca_runtime::nats::Credentials {
            identity: Some(arca_runtime::identity::Identity::load_or_create(path)?),
            tls: self.tls.clone(),
            inbox_prefix: None,
        }))
    }

    pub(crate) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            subject::valid_token(&self.id),
            "scheduler id {:?} is not a valid name (letters, digits, '-', '_')",
            self.id
        );
        anyhow::ensure!(self.max_parallel >= 1, "max-parallel must be at least 1");
        anyhow::ensure!(
            self.reconcile_secs >= 1,
            "reconcile-secs must be at least 1"
        );
        anyhow::ensure!(self.lease_secs >= 3, "lease-secs must be at least 3");
        anyhow::ensure!(
            self.agent_silence_secs >= 3,
            "agent-silence-secs must be at least 3 (the agent holds each status question for a second)"
        );
        anyhow::ensure!(
            self.schedule_tick_secs >= 1,
            "schedule-tick-secs must be at least 1"
        );
        anyhow::ensure!(
            self.events_max_age_days >= 1,
            "events-max-age-days must be at least 1"
        );
        anyhow::ensure!(
            self.events_max_msgs_per_subject >= 100,
            "events-max-msgs-per-subject must be at least 100"
        );
        anyhow::ensure!(
            self.audit_max_bytes >= 1 << 20,
            "audit-max-bytes must be at least 1 MiB (1048576)"
        );
        anyhow::ensure!(
            self.audit_max_msgs_per_subject >= 10,
            "audit-max-msgs-per-subject must be at least 10"
        );
        anyhow::ensure!(
            self.job_timeout_secs >= 60,
            "job-timeout-secs must be at least 60"
        );
        for fw in &self.firewalls {
            anyhow::ensure!(
                subject::valid_token(fw),
                "firewalls: {fw:?} is not a valid name"
            );
        }
        Ok(())
    }
}
