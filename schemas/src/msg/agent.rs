//! What the scheduler asks an agent: ping, hooks, and the transfers it
//! starts, watches and stops.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::{FileError, PathFilter, TransferStats};
use crate::{HookSpec, JobId, SnapshotId};

/// Is the agent there?
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Ping {}

/// Answer to [`Ping`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Pong {
    /// System the agent serves.
    pub system: String,
    /// Agent version.
    pub version: String,
    /// Protocol version it speaks.
    pub protocol: u32,
}

/// Which side of a job a hook belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HookPhase {
    /// Before a backup reads files.
    PreBackup,
    /// After a backup.
    PostBackup,
    /// Before a restore writes files.
    PreRestore,
    /// After a restore.
    PostRestore,
}

impl HookPhase {
    /// Kebab-case name, as in config and events.
    pub fn as_str(self) -> &'static str {
        match self {
            HookPhase::PreBackup => "pre-backup",
            HookPhase::PostBackup => "post-backup",
            HookPhase::PreRestore => "pre-restore",
            HookPhase::PostRestore => "post-restore",
        }
    }
}

/// Run the pre hook of a job ([`crate::subject::AgentVerb::Prepare`]) or its
/// post hook ([`crate::subject::AgentVerb::Finish`]).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct RunHook {
    /// Job the hook runs for.
    pub job: JobId,
    /// Which hook.
    pub phase: HookPhase,
    /// What to run; `None` when the system has no such hook.
    pub hook: Option<HookSpec>,
    /// Environment describing the job (`ARCA_JOB_ID`, ...).
    pub env: Vec<(String, String)>,
    /// Prepare only: seconds after which the agent runs the post hook by
    /// itself if no finish request has come.
    pub deadline_secs: Option<u64>,
    /// Prepare only: the post hook the agent runs at its deadline.
    pub post_hook: Option<HookSpec>,
    /// The system's built-in application kinds, prepared after the pre
    /// hook's command and released before the post hook's.
    #[serde(default)]
    pub applications: Vec<crate::system::Application>,
}

/// Answer to [`RunHook`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct HookReply {
    /// False when there was no hook to run.
    pub ran: bool,
    /// True when the hook exited with status 0 (or did not need to run).
    pub success: bool,
    /// Exit status, when it exited.
    pub exit_code: Option<i32>,
    /// The last part of what it wrote to stdout and stderr.
    pub output: String,
    /// Seconds it took.
    pub seconds: f64,
    /// Post hooks only: the agent ran it by itself at its deadline, because
    /// no finish request had come.
    #[serde(default)]
    pub by_agent_deadline: bool,
}

/// Back up the system's paths into a media session.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct StartBackupTransfer {
    /// Job id; a repeated request for the same job does not start again.
    pub job: JobId,
    /// Media service to send to.
    pub media: String,
    /// Session opened on it for this job.
    pub session: String,
    /// Paths to back up.
    pub paths: Vec<String>,
    /// The system's previous snapshot: files whose size, mtime, ctime and
    /// inode are unchanged reuse its chunk lists without being read.
    /// `None` reads every file (a full backup).
    pub parent: Option<SnapshotId>,
    /// The system's chunk-id key.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub chunk_key: [u8; 32],
    /// Which files under `paths` to take.
    #[serde(default)]
    pub selection: crate::system::Selection,
    /// Seconds left of the job's deadline when this was sent: the agent
    /// keeps retrying requests to media that fail in a way a retry can
    /// help (media restarting, a reconnect) until then. `None`: one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
}

/// Restore a snapshot onto this system.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct StartRestoreTransfer {
    /// Job id; a repeated request for the same job does not start again.
    pub job: JobId,
    /// Media service holding the snapshot.
    pub media: String,
    /// Snapshot to restore.
    pub snapshot: SnapshotId,
    /// Folder to restore into; `None` puts files back where they were.
    pub target: Option<String>,
    /// Restore onto another system: the media restore session that lets
    /// this system read the snapshot.
    #[serde(default)]
    pub session: Option<String>,
    /// The chunk-id key of the snapshot's system, to check every restored
    /// byte; within a restore session (another system's snapshot), the
    /// grant's check key instead (the source's key is not handed out).
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub chunk_key: [u8; 32],
    /// Which of the snapshot's paths to restore; empty restores all.
    #[serde(default, skip_serializing_if = "PathFilter::is_empty")]
    pub filter: PathFilter,
    /// Into a target folder or onto another system: keep device nodes,
    /// set-id bits, `security.*`/`trusted.*` attributes and owners as
    /// recorded (the operator asked for it). Without it such a restore
    /// leaves them out and reports each; an in-place restore of a
    /// system's own snapshot keeps them always.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_privileges: bool,
    /// Seconds left of the job's deadline when this was sent: the agent
    /// keeps retrying requests to media that fail in a way a retry can
    /// help (media restarting, a reconnect) until then. `None`: one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
}

/// Stop a job's transfer (agent). A backup stopped this way commits no
/// snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CancelTransfer {
    /// Job id.
    pub job: JobId,
}

/// Answer to [`CancelTransfer`]: the transfer's state after the request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TransferCancelled {
    /// True when the transfer was still running and is now stopped; false
    /// when it had already ended (its outcome stands) or was unknown.
    pub stopped: bool,
}

/// Answer to the start requests: the transfer runs on; poll its status.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TransferAccepted {
    /// True when this request started it, false when it was already known.
    pub started: bool,
}

/// Ask how a job's transfer is going.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GetTransferStatus {
    /// Job id.
    pub job: JobId,
    /// Answer as soon as the transfer ends, or after this many
    /// milliseconds (the agent caps it at a few seconds) while it runs;
    /// 0 (the default) answers at once.
    #[serde(default)]
    pub wait_ms: u32,
}

/// Answer to [`GetTransferStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TransferState {
    /// The agent knows no transfer for that job.
    Unknown,
    /// Running; counters so far.
    Running {
        /// Counters so far.
        stats: TransferStats,
        /// What is being read or written now.
        current: Option<String>,
    },
    /// Finished.
    Done(TransferOutcome),
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TransferOutcome {
    /// Counters.
    pub stats: TransferStats,
    /// Backup: the committed snapshot.
    pub snapshot: Option<SnapshotId>,
    /// Files that could not be read or written; the rest was transferred.
    pub file_errors: Vec<FileError>,
    /// Files transferred with a warning (e.g. changed while read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_warnings: Vec<FileError>,
    /// Set when the transfer as a whole failed (nothing committed).
    pub error: Option<crate::ErrorReply>,
}

request!(
    Ping => Pong,
    RunHook => HookReply,
    StartBackupTransfer => TransferAccepted,
    StartRestoreTransfer => TransferAccepted,
    CancelTransfer => TransferCancelled,
    GetTransferStatus => TransferState,
);
