//! Request and reply bodies, grouped by the service that answers them.
//! Commands are imperative, replies end in `Reply`. Every reply travels as
//! [`crate::error::Reply`] so that a failure is typed.
//!
//! Requests that act on a job carry its [`JobId`]; a responder that sees
//! the same job and step again answers with the result it gave the first
//! time instead of acting twice.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::{FileError, PathFilter, TransferStats};
use crate::{BackupType, ChunkId, HookSpec, JobId, JobRecord, SnapshotId, SystemConfig};

// ---------------------------------------------------------------- scheduler

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

// ---------------------------------------------------------------- firewall

/// Open the guarded port for one address, as a lease.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct OpenWindow {
    /// Job the window is for; opening twice for one job renews it.
    pub job: JobId,
    /// System the window is for.
    pub system: String,
    /// Source address allowed through.
    pub address: String,
    /// Seconds until the window closes by itself unless renewed.
    pub lease_secs: u64,
}

/// Answer to [`OpenWindow`] and [`RenewWindow`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct WindowReply {
    /// Firewall controller that answered.
    pub firewall: String,
    /// Backend doing the work (`none` filters nothing).
    pub backend: String,
    /// When the lease runs out.
    pub expires: DateTime<Utc>,
}

/// Extend a window's lease.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct RenewWindow {
    /// Job whose window to renew.
    pub job: JobId,
    /// New lease from now.
    pub lease_secs: u64,
}

/// Close a job's window. Closing a window that is not open succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CloseWindow {
    /// Job whose window to close.
    pub job: JobId,
}

/// Answer to [`CloseWindow`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CloseWindowReply {
    /// False when no window was open for the job.
    pub was_open: bool,
}

/// Ask a controller what it guards and which windows are open.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct FirewallStatus {}

/// Answer to [`FirewallStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct FirewallStatusReply {
    /// Controller id.
    pub firewall: String,
    /// Backend in use.
    pub backend: String,
    /// Guarded ports.
    pub ports: Vec<u16>,
    /// Windows open now.
    pub windows: Vec<WindowInfo>,
}

/// One open window.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct WindowInfo {
    /// Job it is for.
    pub job: JobId,
    /// System it is for.
    pub system: String,
    /// Source address allowed.
    pub address: String,
    /// When the lease runs out.
    pub expires: DateTime<Utc>,
}

// ---------------------------------------------------------------- agent

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

// ---------------------------------------------------------------- media

/// Open a backup session for a job's system (scheduler to media).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct OpenSession {
    /// Job id; opening twice for a job returns the same session.
    pub job: JobId,
    /// System whose data the session accepts.
    pub system: String,
    /// Paths the backup covers, recorded in the snapshot.
    pub paths: Vec<String>,
    /// The system's storage quota, bytes (the systems file's `quota`):
    /// media refuses a put that would take the system past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

/// Close the sessions of a job that ended (scheduler to media, on
/// `close-session`): its backup session accepts nothing more, and a
/// restore grant of it ends.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CloseSession {
    /// The job that ended.
    pub job: JobId,
}

/// Answer to [`CloseSession`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct SessionClosed {
    /// False when media held no backup session of the job (already
    /// closed or expired, or media restarted).
    pub closed: bool,
}

/// Answer to [`OpenSession`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct SessionOpened {
    /// Session id the agent names in its data requests.
    pub session: String,
    /// Restore sessions: the key of this grant's check values (see
    /// [`ChunkData::check`]), handed to the target agent in place of the
    /// source system's chunk-id key, which it never sees.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<u8>>")]
    pub check_key: Option<Vec<u8>>,
}

/// End a cross-system restore's grant (scheduler to media), when its job
/// ends: the target may read nothing more of the source.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CloseRestoreSession {
    /// The restore job whose grant ends.
    pub job: JobId,
}

/// Answer to [`CloseRestoreSession`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreSessionClosed {
    /// False when the job had no open grant (already closed or expired).
    pub closed: bool,
}

/// Store one chunk (agent to media). Acknowledged after a durable write.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct PutChunk {
    /// Session the chunk belongs to.
    pub session: String,
    /// Id of the chunk's plain bytes.
    pub id: ChunkId,
    /// True for a tree chunk, false for file contents.
    pub tree: bool,
    /// The chunk frame (see [`crate::chunk`]).
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub frame: Vec<u8>,
}

/// Store several chunks with one durable write (agent to media, on
/// `put-many`); small files make many small chunks, and one round trip and
/// one sync for each would bound a backup by latency.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct PutChunks {
    /// Session the chunks belong to.
    pub session: String,
    /// The chunks, as in [`PutChunk`] (its `session` is ignored).
    pub chunks: Vec<PutChunk>,
}

/// Answer to [`PutChunks`]: for each chunk in order, false when the
/// repository already held it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ChunksStored {
    /// One flag per chunk.
    pub new: Vec<bool>,
}

/// Answer to [`PutChunk`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ChunkStored {
    /// False when the repository already held the chunk.
    pub new: bool,
}

/// Commit the snapshot of a session. Media checks that every chunk the
/// tree names is stored before it writes the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct CommitSnapshot {
    /// Session to commit.
    pub session: String,
    /// Tree chunks in order.
    pub tree: Vec<ChunkId>,
    /// Counters of the backup.
    pub stats: TransferStats,
    /// Files that could not be read.
    pub file_errors: Vec<FileError>,
    /// The agent's ed25519 signature of the
    /// [`crate::trust::SnapshotManifest`] (system, job, tree).
    #[serde(default, with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub signature: Vec<u8>,
}

/// Answer to [`CommitSnapshot`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotCommitted {
    /// The snapshot as stored.
    pub snapshot: SnapshotInfo,
}

/// Fetch one chunk frame (agent to media, restore).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GetChunk {
    /// Chunk id.
    pub id: ChunkId,
    /// Restore onto another system: the restore session (see
    /// [`OpenRestoreSession`]); `None` reads the asking system's own data.
    #[serde(default)]
    pub session: Option<String>,
}

/// Fetch several chunks in one round trip (agent to media, on `get-many`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GetChunks {
    /// Chunk ids.
    pub ids: Vec<ChunkId>,
    /// As in [`GetChunk`].
    #[serde(default)]
    pub session: Option<String>,
}

/// Answer to [`GetChunks`]: one entry per id, in order. A chunk that
/// cannot be read has its error, so that only its file fails.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ChunksData {
    /// Frames or errors.
    pub chunks: Vec<FetchedChunk>,
}

/// One chunk of [`ChunksData`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct FetchedChunk {
    /// The chunk frame as stored, when it could be read.
    #[serde(default, with = "serde_bytes")]
    #[schemars(with = "Option<Vec<u8>>")]
    pub frame: Option<Vec<u8>>,
    /// Why it could not be.
    #[serde(default)]
    pub error: Option<crate::ErrorReply>,
    /// Within a restore session: the chunk's id under the grant's check key
    /// (see [`ChunkData::check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<ChunkId>,
}

/// Answer to [`GetChunk`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ChunkData {
    /// The chunk frame as stored.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub frame: Vec<u8>,
    /// Within a restore session: media checked the chunk against its id
    /// with the source system's key, and this is the id of the same plain
    /// bytes under the grant's check key, which the target agent checks
    /// (it holds that key, never the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<ChunkId>,
}

/// Fetch a snapshot's record and tree chunk list.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GetSnapshot {
    /// Snapshot id.
    pub snapshot: SnapshotId,
    /// Restore onto another system: the restore session.
    #[serde(default)]
    pub session: Option<String>,
}

/// Let one system read another system's snapshot for a restore the
/// operator allowed (scheduler to media, with a token saying so).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct OpenRestoreSession {
    /// Job id; opening twice for a job returns the same session.
    pub job: JobId,
    /// System the snapshot is restored onto.
    pub system: String,
    /// Snapshot to read.
    pub snapshot: SnapshotId,
}

/// Answer to [`GetSnapshot`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotReply {
    /// The catalog view.
    pub info: SnapshotInfo,
    /// Tree chunks in order.
    pub tree: Vec<ChunkId>,
}

/// One page of a snapshot's file list (for `arca ls` and `arca diff`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ListTree {
    /// Snapshot.
    pub snapshot: SnapshotId,
    /// Page number, from 0 (one page per tree chunk).
    pub page: u32,
}

/// Answer to [`ListTree`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TreePage {
    /// System the snapshot belongs to.
    pub system: String,
    /// How many pages the tree has.
    pub pages: u32,
    /// The page's entries, in walk order.
    pub entries: Vec<TreeEntry>,
}

/// A node of a snapshot's tree as listed: the chunk lists of files are
/// left out (their chunk ids and sizes are empty) and summed up by
/// `content`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TreeEntry {
    /// The node, without chunk lists.
    pub node: crate::tree::Node,
    /// Files: BLAKE3 of the chunk ids in order, hex; equal contents have
    /// equal digests within one system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// List a media service's snapshots (scheduler to media).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct MediaListSnapshots {
    /// Only this system's snapshots.
    pub system: Option<String>,
}

/// The chunk-id key of a system, for its agent (scheduler to media).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GetChunkKey {
    /// System.
    pub system: String,
}

/// Answer to [`GetChunkKey`]. The key names chunks; it decrypts nothing.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ChunkKey {
    /// BLAKE3 key for chunk ids of this system.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub key: [u8; 32],
}

/// Which of these chunks does the repository hold for my system? (agent to media)
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct HasChunks {
    /// Session of the backup asking.
    pub session: String,
    /// Chunk ids, at most [`MAX_HAS_BATCH`].
    pub ids: Vec<ChunkId>,
}

/// Most ids one [`HasChunks`] may carry.
pub const MAX_HAS_BATCH: usize = 4096;

/// Answer to [`HasChunks`]: one flag per id, in order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct HasChunksReply {
    /// True where the chunk is stored.
    pub present: Vec<bool>,
}

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
