//! What the operator's console asks the scheduler (on
//! `arca.scheduler.<verb>`): systems, jobs and the snapshot catalog.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::{FileError, PathFilter, TransferStats};
use crate::{BackupType, JobId, JobRecord, SnapshotId, SystemConfig};

/// Register or replace systems.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct LoadSystems {
    /// The systems, validated by the scheduler before any is stored.
    pub systems: Vec<SystemConfig>,
    /// Whether the names may, must or must not be registered already.
    #[serde(default)]
    pub mode: LoadMode,
}

/// How [`LoadSystems`] treats names already registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMode {
    /// Register new systems and replace known ones.
    #[default]
    Upsert,
    /// Register new systems only; a known name is refused.
    Add,
    /// Replace known systems only; an unknown name is refused.
    Replace,
}

/// Fetch one system.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GetSystem {
    /// System name.
    pub name: String,
}

/// Remove a system from the registry (its snapshots stay).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct RemoveSystem {
    /// System name.
    pub name: String,
}

/// Answer to [`RemoveSystem`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct SystemRemoved {
    /// The system removed.
    pub name: String,
}

/// Cancel a job: a queued one ends at once, a running one after clean-up
/// (post hook when the pre hook ran, windows closed).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CancelJob {
    /// Job id.
    pub job: JobId,
}

/// Rebuild the snapshot catalog from every media service's repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct RebuildCatalog {
    /// Media services to ask besides those the registered systems name.
    #[serde(default)]
    pub media: Vec<String>,
}

/// Answer to [`RebuildCatalog`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CatalogRebuilt {
    /// Media services that answered.
    pub media: Vec<String>,
    /// Snapshots in the catalog now.
    pub snapshots: usize,
    /// Entries added that the catalog lacked.
    pub added: usize,
    /// Entries dropped because no answering media holds them.
    pub removed: usize,
    /// Media services that did not answer; their entries were kept.
    pub unreachable: Vec<String>,
}

/// Answer to [`LoadSystems`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct LoadSystemsReply {
    /// Names stored, in the order given.
    pub stored: Vec<String>,
}

/// List registered systems.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListSystems {}

/// Answer to [`ListSystems`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ListSystemsReply {
    /// Systems by name.
    pub systems: Vec<SystemConfig>,
}

/// Back up systems now. They run one after the other, in the order given.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct StartBackup {
    /// System names.
    pub systems: Vec<String>,
    /// Full or incremental; `None` asks for an incremental backup.
    #[serde(default)]
    pub backup_type: Option<BackupType>,
}

/// Answer to [`StartBackup`] and [`StartRestore`]: the jobs created.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct JobsStarted {
    /// One job per system, in queue order.
    pub jobs: Vec<JobId>,
}

/// Restore a snapshot onto its own system, or onto another one when the
/// operator says so explicitly.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct StartRestore {
    /// Snapshot to restore.
    pub snapshot: SnapshotId,
    /// Folder on the system to restore into; `None` restores in place.
    pub target: Option<String>,
    /// Which of the snapshot's paths to restore; empty restores all.
    #[serde(default, skip_serializing_if = "PathFilter::is_empty")]
    pub filter: PathFilter,
    /// System to restore onto; `None`: the snapshot's own system.
    #[serde(default)]
    pub to_system: Option<String>,
    /// Required when `to-system` is another system than the snapshot's.
    #[serde(default)]
    pub allow_cross_system: bool,
    /// Who asks (recorded in the audit stream).
    #[serde(default)]
    pub operator: Option<String>,
    /// Into a target folder or onto another system, keep device nodes,
    /// set-id bits, `security.*`/`trusted.*` attributes and owners as
    /// recorded (recorded in the job and the audit stream).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_privileges: bool,
}

/// List jobs, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ListJobs {
    /// Only this system's jobs.
    pub system: Option<String>,
    /// Only jobs created at or after this instant.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
}

/// Answer to [`ListJobs`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ListJobsReply {
    /// Job records, newest first.
    pub jobs: Vec<JobRecord>,
}

/// Fetch one job record.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GetJob {
    /// Job id.
    pub job: JobId,
}

/// List snapshots in the catalog, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ListSnapshots {
    /// Only this system's snapshots.
    pub system: Option<String>,
}

/// Answer to [`ListSnapshots`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ListSnapshotsReply {
    /// Snapshots, newest first.
    pub snapshots: Vec<SnapshotInfo>,
}

/// What the catalog knows of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfo {
    /// Snapshot id.
    pub id: SnapshotId,
    /// System it was taken of.
    pub system: String,
    /// Job that made it.
    pub job: JobId,
    /// When it was committed.
    pub time: DateTime<Utc>,
    /// Paths backed up.
    pub paths: Vec<String>,
    /// Media service holding it.
    pub media: String,
    /// Counters of the backup.
    pub stats: TransferStats,
    /// Files that could not be read; a snapshot with any is partial.
    pub file_errors: Vec<FileError>,
    /// Public key of the agent that signed the snapshot's manifest (the
    /// key enrolled for `system` when it was committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The manifest signature (ed25519, hex), checkable against `signer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

request!(
    LoadSystems => LoadSystemsReply,
    ListSystems => ListSystemsReply,
    GetSystem => SystemConfig,
    RemoveSystem => SystemRemoved,
    StartBackup => JobsStarted,
    StartRestore => JobsStarted,
    ListJobs => ListJobsReply,
    GetJob => JobRecord,
    CancelJob => JobRecord,
    ListSnapshots => ListSnapshotsReply,
    RebuildCatalog => CatalogRebuilt,
);
