//! What the scheduler and the agents ask a media service: sessions,
//! chunks, snapshots and their trees.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ListSnapshotsReply, SnapshotInfo};
use crate::job::{FileError, TransferStats};
use crate::{ChunkId, JobId, SnapshotId};

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

request!(
    OpenSession => SessionOpened,
    CloseSession => SessionClosed,
    OpenRestoreSession => SessionOpened,
    CloseRestoreSession => RestoreSessionClosed,
    PutChunk => ChunkStored,
    PutChunks => ChunksStored,
    CommitSnapshot => SnapshotCommitted,
    GetChunk => ChunkData,
    GetChunks => ChunksData,
    GetSnapshot => SnapshotReply,
    ListTree => TreePage,
    MediaListSnapshots => ListSnapshotsReply,
    GetChunkKey => ChunkKey,
    HasChunks => HasChunksReply,
);
