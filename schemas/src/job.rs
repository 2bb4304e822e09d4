//! Jobs: their ids, kinds, steps and the record the scheduler keeps.

use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Id of a job (a time-ordered UUID, so ids sort by creation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh id.
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7())
    }

    /// Parses the hyphenated form.
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::parse_str(s).ok().map(JobId)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

/// Id of a snapshot: 16 lower-case hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct SnapshotId(pub String);

impl SnapshotId {
    /// A fresh random id.
    pub fn new() -> Self {
        let u = uuid::Uuid::new_v4();
        SnapshotId(u.simple().to_string()[..16].to_owned())
    }

    /// Accepts 16 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| SnapshotId(s.to_owned()))
    }
}

impl Default for SnapshotId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.0)
    }
}

/// Backup (the patent's method 400) or restore (method 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Copy a system's files into the repository.
    Backup,
    /// Write a snapshot's files back onto a system.
    Restore,
}

/// The step a job has reached. Each is persisted before it is acted on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum JobStep {
    /// Created, waiting for its turn.
    Selected,
    /// Asking the firewalls on the path to open.
    OpeningWindow,
    /// Waiting for the agent to answer.
    WaitingForAgent,
    /// Running the pre hook.
    Preparing,
    /// Moving data.
    Transferring,
    /// Running the post hook.
    Finishing,
    /// Closing the firewall windows.
    ClosingWindow,
    /// Nothing more to do.
    Done,
}

/// Where a job stands overall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    /// Waiting in the queue.
    Queued,
    /// Being driven.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// Finished, but some files could not be read or written; they are named.
    Partial,
    /// A step failed; see the error.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobStatus {
    /// True once the job will not change any more.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// A file that could not be read (backup) or written (restore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct FileError {
    /// Path of the file, lossily converted to UTF-8 for display.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

/// File errors (and, apart, warnings) named per job, in its record and
/// its events; the rest are counted ([`JobRecord::file_errors_not_named`]).
pub const FILE_ERRORS_NAMED: usize = 50;

/// Most bytes of a path an agent reports (a file error, the file being
/// read), as kept in job records and events; longer ones are cut.
pub const REPORTED_PATH_MAX: usize = 768;

/// Most bytes of a message an agent reports (a file's error), as kept.
pub const REPORTED_MESSAGE_MAX: usize = 1024;

/// Most bytes of a hook's output kept in events and records (the agent
/// sends at most its 8 KiB tail).
pub const REPORTED_OUTPUT_MAX: usize = 8 * 1024 + 64;

impl FileError {
    /// The error with its path and message cut to their bounds.
    pub fn bounded(&self) -> FileError {
        FileError {
            path: crate::text::bounded(&self.path, REPORTED_PATH_MAX).into_owned(),
            error: crate::text::bounded(&self.error, REPORTED_MESSAGE_MAX).into_owned(),
        }
    }

    /// The first [`FILE_ERRORS_NAMED`] of `all`, bounded, and how many
    /// more there were.
    pub fn capped(all: &[FileError]) -> (Vec<FileError>, u64) {
        let named = all
            .iter()
            .take(FILE_ERRORS_NAMED)
            .map(FileError::bounded)
            .collect();
        (named, all.len().saturating_sub(FILE_ERRORS_NAMED) as u64)
    }
}

/// Glob patterns choosing paths of a snapshot. A pattern with a `/` is
/// matched against the whole absolute path, one without against each name
/// in it; `*` and `?` stay within a name, `**` crosses folders. A folder
/// that matches brings everything under it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PathFilter {
    /// Only paths matching one of these (and the folders above them);
    /// empty takes every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Never paths matching one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl PathFilter {
    /// True when it takes every path.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// Counters of a transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TransferStats {
    /// Files, folders and links seen.
    pub entries: u64,
    /// Regular files read or written.
    pub files: u64,
    /// Plain bytes of file contents read or written.
    pub bytes: u64,
    /// Chunks sent (backup) or fetched (restore).
    pub chunks: u64,
    /// Chunks the repository did not have yet (backup).
    pub new_chunks: u64,
    /// Bytes that crossed the network after compression.
    pub wire_bytes: u64,
    /// Backup: files not read because the parent snapshot has them unchanged.
    #[serde(default)]
    pub unchanged_files: u64,
}

/// The scheduler's record of a job, kept in the jobs bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct JobRecord {
    /// Job id.
    pub id: JobId,
    /// Backup or restore.
    pub kind: JobKind,
    /// The system the job runs on.
    pub system: String,
    /// Step reached.
    pub step: JobStep,
    /// Overall status.
    pub status: JobStatus,
    /// When the job was created.
    pub created: DateTime<Utc>,
    /// When the job last changed.
    pub updated: DateTime<Utc>,
    /// When the job ended.
    pub ended: Option<DateTime<Utc>>,
    /// Snapshot written (backup) or read (restore).
    pub snapshot: Option<SnapshotId>,
    /// Restore only: folder on the system to restore into (`None`: in place).
    pub target: Option<String>,
    /// Firewalls whose window this job has asked to open and not yet closed.
    pub open_windows: Vec<String>,
    /// True once the pre hook was started: the post hook must then run.
    /// It stays true when the job ends, as its `prepared` event says.
    pub prepared: bool,
    /// True once the post hook was asked for (or, the agent being silent
    /// or the system unknown, could not be): `prepared` and not `finished`
    /// means the post hook is still owed.
    #[serde(default)]
    pub finished: bool,
    /// Counters of the transfer.
    pub stats: TransferStats,
    /// Files that could not be read or written.
    pub file_errors: Vec<FileError>,
    /// Files transferred with a warning (e.g. changed while read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_warnings: Vec<FileError>,
    /// Files that could not be read or written beyond the first
    /// [`FILE_ERRORS_NAMED`] named in `file-errors`: counted, not named.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file_errors_not_named: u64,
    /// Warnings beyond the first [`FILE_ERRORS_NAMED`] named in
    /// `file-warnings`: counted, not named.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file_warnings_not_named: u64,
    /// When the job is cancelled and fails unless it ended before: set
    /// when it starts (see the system's `job-timeout-secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Restore only: which of the snapshot's paths it writes.
    #[serde(default, skip_serializing_if = "PathFilter::is_empty")]
    pub filter: PathFilter,
    /// Why the job failed.
    pub error: Option<String>,
    /// Backup only: the type asked for (the transfer treats both alike for
    /// now: every backup reads all files, deduplication keeps it cheap).
    #[serde(default)]
    pub backup_type: Option<crate::BackupType>,
    /// Who selected the job.
    #[serde(default)]
    pub trigger: Trigger,
    /// Scheduled jobs: the instant of the schedule they run for.
    #[serde(default)]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The system's priority when the job was selected (highest runs first).
    #[serde(default)]
    pub priority: i32,
    /// When the pre hook was started; the agent's own deadline counts from here.
    #[serde(default)]
    pub prepared_at: Option<DateTime<Utc>>,
    /// An operator asked to cancel the job; it ends `cancelled` after clean-up.
    #[serde(default)]
    pub cancel_requested: bool,
    /// How often a restarted scheduler picked the job up again.
    #[serde(default)]
    pub resumed: u32,
    /// Restore onto another system: the snapshot's own system (the
    /// operator allowed it explicitly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_system: Option<String>,
    /// The operator who asked, when the console said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Restore only: the operator asked to keep device nodes, set-id bits,
    /// `security.*`/`trusted.*` attributes and owners also into a target
    /// folder or onto another system (`--keep-privileges`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_privileges: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Who selected a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// An operator (`arca backup`, `arca restore`).
    #[default]
    Operator,
    /// A system's schedule.
    Schedule,
}
