//! Job events: JSON documents on `arca.events.<job>.<kind>`, kept by the
//! events stream so that a dashboard joining late still reads a job whole.
//! Each carries enough to draw a dashboard without asking anything else.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::{FileError, TransferStats, Trigger};
use crate::{BackupType, JobId, JobKind, JobStatus, JobStep, SnapshotId};

/// One event of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct JobEvent {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]).
    pub v: u32,
    /// Job the event belongs to.
    pub job: JobId,
    /// Backup or restore.
    pub job_kind: JobKind,
    /// System the job runs on.
    pub system: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub detail: EventDetail,
}

/// What happened, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum EventDetail {
    /// The job was created and queued.
    Selected {
        /// Restore only: the snapshot to restore.
        snapshot: Option<SnapshotId>,
        /// Restore only: the folder to restore into.
        target: Option<String>,
        /// Backup only: full or incremental.
        #[serde(default)]
        backup_type: Option<BackupType>,
        /// Who selected it.
        #[serde(default)]
        trigger: Trigger,
        /// Scheduled jobs: the schedule's instant.
        #[serde(default)]
        scheduled_for: Option<DateTime<Utc>>,
        /// Priority of the system (highest runs first).
        #[serde(default)]
        priority: i32,
    },
    /// A firewall opened the guarded port for the system.
    WindowOpened {
        /// Firewall controller.
        firewall: String,
        /// Backend that did it.
        backend: String,
        /// Address allowed.
        address: String,
        /// When the lease runs out unless renewed.
        expires: DateTime<Utc>,
    },
    /// The scheduler renewed a window's lease while the job runs.
    WindowRenewed {
        /// Firewall controller.
        firewall: String,
        /// When the renewed lease runs out unless renewed again.
        expires: DateTime<Utc>,
    },
    /// The agent answered.
    AgentPresent {
        /// Agent version.
        version: String,
    },
    /// The pre hook ran (or there was none).
    Prepared {
        /// Which hook.
        phase: String,
        /// False when no hook is configured.
        ran: bool,
        /// True when it succeeded (the command exited 0 and every
        /// application step did what it had to). Absent in events written
        /// before it was added.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        success: Option<bool>,
        /// Exit status.
        exit_code: Option<i32>,
        /// Its output (tail).
        output: String,
    },
    /// Transfer progress.
    Progress {
        /// Counters so far.
        stats: TransferStats,
        /// Plain bytes per second since the transfer started.
        bytes_per_sec: f64,
        /// What is being read or written now.
        current: Option<String>,
    },
    /// A file could not be read or written; the job goes on.
    FileFailed {
        /// The file and the error.
        file: FileError,
    },
    /// A file was transferred but something about it needs a look (e.g. it
    /// changed while it was read); the job goes on and can still succeed.
    FileWarning {
        /// The file and what happened.
        file: FileError,
    },
    /// The data moved: the snapshot is committed (backup) or written (restore).
    Transferred {
        /// Final counters.
        stats: TransferStats,
        /// Snapshot committed or restored.
        snapshot: Option<SnapshotId>,
        /// Seconds the transfer took.
        seconds: f64,
    },
    /// The post hook ran (or there was none).
    Finished {
        /// Which hook.
        phase: String,
        /// False when no hook is configured.
        ran: bool,
        /// True when it succeeded (the command exited 0 and every
        /// application step did what it had to). Absent in events written
        /// before it was added.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        success: Option<bool>,
        /// Exit status.
        exit_code: Option<i32>,
        /// Its output (tail).
        output: String,
    },
    /// The agent ran the post hook by itself because no finish request came
    /// before its deadline (the scheduler was away); reported when the
    /// scheduler next reached it.
    PostHookByAgent {
        /// Which hook.
        phase: String,
        /// True when it succeeded (the command exited 0 and every
        /// application step did what it had to). Absent in events written
        /// before it was added.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        success: Option<bool>,
        /// Exit status.
        exit_code: Option<i32>,
        /// Its output (tail).
        output: String,
    },
    /// A restarted scheduler picked the job up where it stood.
    Resumed {
        /// The step the job had reached.
        step: JobStep,
    },
    /// An operator asked to cancel the job; clean-up follows.
    CancelRequested {},
    /// The scheduler found on media a snapshot this job made that its
    /// catalog did not list (the job lost contact before recording it),
    /// and recorded it.
    SnapshotAdopted {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Media holding it.
        media: String,
    },
    /// A firewall closed the window.
    WindowClosed {
        /// Firewall controller.
        firewall: String,
    },
    /// A step failed; the job goes on to clean up.
    StepFailed {
        /// The step.
        step: String,
        /// What went wrong and what to do next.
        error: String,
    },
    /// The job ended. Always the last event of a job.
    Ended {
        /// Final status.
        status: JobStatus,
        /// Snapshot made or restored.
        snapshot: Option<SnapshotId>,
        /// Final counters.
        stats: TransferStats,
        /// Files not read or written (the first
        /// [`crate::job::FILE_ERRORS_NAMED`]).
        file_errors: Vec<FileError>,
        /// Files not read or written beyond those named.
        #[serde(default)]
        file_errors_not_named: u64,
        /// Why it failed.
        error: Option<String>,
        /// Seconds from selection to end.
        seconds: f64,
    },
}

impl EventDetail {
    /// The `kind` tag, also the last subject token.
    pub fn kind(&self) -> &'static str {
        match self {
            EventDetail::Selected { .. } => "selected",
            EventDetail::WindowOpened { .. } => "window-opened",
            EventDetail::WindowRenewed { .. } => "window-renewed",
            EventDetail::AgentPresent { .. } => "agent-present",
            EventDetail::Prepared { .. } => "prepared",
            EventDetail::Progress { .. } => "progress",
            EventDetail::FileFailed { .. } => "file-failed",
            EventDetail::FileWarning { .. } => "file-warning",
            EventDetail::Transferred { .. } => "transferred",
            EventDetail::Finished { .. } => "finished",
            EventDetail::PostHookByAgent { .. } => "post-hook-by-agent",
            EventDetail::Resumed { .. } => "resumed",
            EventDetail::CancelRequested { .. } => "cancel-requested",
            EventDetail::SnapshotAdopted { .. } => "snapshot-adopted",
            EventDetail::WindowClosed { .. } => "window-closed",
            EventDetail::StepFailed { .. } => "step-failed",
            EventDetail::Ended { .. } => "ended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_matches_the_json_tag() {
        let e = JobEvent {
            v: 1,
            job: JobId::new(),
            job_kind: JobKind::Backup,
            system: "web01".into(),
            time: Utc::now(),
            detail: EventDetail::WindowClosed {
                firewall: "edge".into(),
            },
        };
        let json: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], e.detail.kind());
        let back: JobEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
