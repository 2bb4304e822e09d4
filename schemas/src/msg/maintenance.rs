//! Repository upkeep the operator asks of media (through the scheduler
//! for forgetting): verify, repair the index, forget by a retention
//! policy, prune.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ChunkId, SnapshotId};

/// Check the repository (operator to media).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyRepository {
    /// Read, decrypt and hash chunks, not only the structure.
    pub read_data: bool,
    /// Percentage of packs to read with `read_data` (1 to 100).
    pub subset_percent: u8,
}

/// Answer to [`VerifyRepository`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Packs in the repository.
    pub packs: u64,
    /// Chunks read and hashed.
    pub chunks_read: u64,
    /// Everything found wrong; empty when the repository is sound.
    pub problems: Vec<VerifyProblem>,
}

/// One thing wrong in a repository.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyProblem {
    /// System whose data it is.
    pub system: String,
    /// The damaged or missing chunk, when it is one.
    pub chunk: Option<ChunkId>,
    /// What is wrong.
    pub error: String,
    /// Snapshots that need it.
    pub snapshots: Vec<SnapshotId>,
    /// Files that need it.
    pub files: Vec<String>,
}

/// Rebuild the index from the packs (operator to media).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RepairIndex {}

/// Answer to [`RepairIndex`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct RepairIndexReply {
    /// Packs read.
    pub packs: u64,
    /// Chunks indexed.
    pub chunks: u64,
    /// Damage found while reading.
    pub damaged: Vec<String>,
}

/// Which snapshots of a system to keep; the others are forgotten. A
/// snapshot kept by any rule is kept. Buckets (hour, day, ISO week, month,
/// year) are in UTC; in each, the newest snapshot counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct RetentionPolicy {
    /// The newest N snapshots.
    pub keep_last: u32,
    /// The newest snapshot of each of the last N hours that have one.
    pub keep_hourly: u32,
    /// Likewise per day.
    pub keep_daily: u32,
    /// Likewise per ISO week.
    pub keep_weekly: u32,
    /// Likewise per month.
    pub keep_monthly: u32,
    /// Likewise per year.
    pub keep_yearly: u32,
}

impl RetentionPolicy {
    /// True when no rule keeps anything (such a policy is refused).
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// Forget snapshots of a system by a policy (operator to scheduler, and
/// scheduler to media).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ForgetSnapshots {
    /// System.
    pub system: String,
    /// What to keep.
    pub policy: RetentionPolicy,
    /// Only say what would be forgotten.
    pub dry_run: bool,
}

/// Answer to [`ForgetSnapshots`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ForgetReply {
    /// Snapshots kept, newest first.
    pub kept: Vec<SnapshotId>,
    /// Snapshots forgotten (or that would be, with `dry-run`), newest first.
    pub forgotten: Vec<SnapshotId>,
}

/// Delete data no snapshot needs and repack partly used packs (operator to media).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct PruneRepository {
    /// Only say what would be done.
    pub dry_run: bool,
}

/// Answer to [`PruneRepository`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct PruneReport {
    /// Packs deleted because nothing in them is used.
    pub packs_deleted: u64,
    /// Packs rewritten without their unused chunks.
    pub packs_repacked: u64,
    /// Chunks dropped.
    pub chunks_removed: u64,
    /// Bytes on disk before.
    pub bytes_before: u64,
    /// Bytes on disk after.
    pub bytes_after: u64,
}

request!(
    VerifyRepository => VerifyReport,
    RepairIndex => RepairIndexReply,
    ForgetSnapshots => ForgetReply,
    PruneRepository => PruneReport,
);
