//! Serving restores: the snapshot catalog, a snapshot's file list, and
//! chunks read back, within the system's own scope or, for a restore onto
//! another system that an operator allowed, within a grant that names
//! exactly the chunks of one snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arca_frame::{self as frame, FrameError};
use arca_repo::{Repository, SnapshotRecord};
use arca_runtime::rpc::decode_request;
use arca_schemas::msg::*;
use arca_schemas::tree::NodeKind;
use arca_schemas::trust::TokenClaims;
use arca_schemas::{ErrorReply, JobId, SnapshotId};

use crate::error::MediaError;
use crate::{Media, blocking, convert, limits};

/// A restore onto another system that an operator allowed: `target` may
/// read the snapshot of `source`, and only it: the chunks of its tree and
/// the file chunks they name, computed when the grant opens. Each chunk
/// served is checked here against its id with the source's key, and sent
/// with its id under `check_key`, the only key the target is given.
pub(crate) struct RestoreGrant {
    pub(crate) job: JobId,
    target: String,
    source: String,
    snapshot: SnapshotId,
    opened_at: std::time::Instant,
    chunks: HashSet<arca_schemas::ChunkId>,
    check_key: [u8; 32],
}

/// How long a restore session lets its target read when the scheduler
/// never closes it (it closes it when the restore job ends).
const RESTORE_GRANT_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A fresh random key for a grant's check values.
pub(crate) fn random_key() -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(uuid::Uuid::new_v4().as_bytes());
    h.update(uuid::Uuid::new_v4().as_bytes());
    *h.finalize().as_bytes()
}

/// Every chunk a snapshot's restore reads: its tree chunks and the file
/// chunks they name.
pub(crate) fn snapshot_chunks(
    repo: &Repository,
    record: &SnapshotRecord,
) -> Result<HashSet<arca_schemas::ChunkId>, MediaError> {
    let mut chunks = HashSet::new();
    for id in &record.tree {
        chunks.insert(*id);
        let batch = repo.tree_batch(&record.info.system, id)?;
        for n in batch.nodes {
            if let NodeKind::File { chunks: c, .. } = n.kind {
                chunks.extend(c);
            }
        }
    }
    Ok(chunks)
}

/// The keys a restore session reads with.
#[derive(Clone, Copy)]
pub(crate) struct GrantKeys {
    /// The source system's chunk-id key (never sent).
    source: [u8; 32],
    /// The grant's check key (the target's).
    check: [u8; 32],
}

/// A chunk served within a restore session: checked against `id` with the
/// source system's key, and its id under the grant's check key.
pub(crate) fn check_value(
    frame_bytes: &[u8],
    id: &arca_schemas::ChunkId,
    keys: GrantKeys,
) -> Result<arca_schemas::ChunkId, FrameError> {
    let plain = frame::decode(frame_bytes, &keys.source, id)?;
    Ok(frame::chunk_id(&keys.check, &plain))
}

/// One page of a snapshot's file list, chunk lists summed up by a digest.
pub(crate) fn list_tree(repo: &Repository, req: &ListTree) -> Result<TreePage, MediaError> {
    let record = repo.read_snapshot(&req.snapshot)?;
    let system = record.info.system;
    let pages = record.tree.len() as u32;
    let Some(id) = record.tree.get(req.page as usize) else {
        return Ok(TreePage {
            system,
            pages,
            entries: Vec::new(),
        });
    };
    let batch = repo.tree_batch(&system, id)?;
    let entries = batch
        .nodes
        .into_iter()
        .map(|mut node| {
            let content = match &mut node.kind {
                NodeKind::File { chunks, sizes } => {
                    let mut h = blake3::Hasher::new();
                    for c in chunks.iter() {
                        h.update(&c.0);
                    }
                    chunks.clear();
                    sizes.clear();
                    Some(h.finalize().to_hex().to_string())
                }
                _ => None,
            };
            TreeEntry { node, content }
        })
        .collect();
    Ok(TreePage {
        system,
        pages,
        entries,
    })
}

impl Media {
    /// One page of a snapshot's file list.
    pub(crate) async fn tree(
        self: Arc<Self>,
        payload: bytes::Bytes,
    ) -> Result<TreePage, MediaError> {
        let req: ListTree = decode_request(&payload)?;
        let repo = self.repo.clone();
        blocking("listing", move || list_tree(&repo, &req)).await
    }

    /// Opens (once per job) a restore session letting `req.system` read a
    /// snapshot of another system, as the token allows.
    pub(crate) async fn open_restore(
        &self,
        payload: &[u8],
        claims: TokenClaims,
    ) -> Result<SessionOpened, MediaError> {
        let req: OpenRestoreSession = decode_request(payload)?;
        let repo = self.repo.clone();
        let id = req.snapshot.clone();
        let record = tokio::task::spawn_blocking(move || repo.read_snapshot(&id))
            .await
            .map_err(|e| MediaError::Task(e.to_string()))??;
        let source = record.info.system.clone();
        if claims.system != req.system
            || claims.job != req.job
            || claims.snapshot.as_ref() != Some(&req.snapshot)
            || claims.source_system.as_deref() != Some(source.as_str())
            || !claims.cross_system
        {
            return Err(MediaError::Forbidden(format!(
                "refused: the job token does not allow restoring snapshot {} of {source} onto {}",
                req.snapshot, req.system
            )));
        }
        let existing = |restores: &mut HashMap<String, RestoreGrant>| {
            restores.retain(|_, g| g.opened_at.elapsed() < RESTORE_GRANT_TTL);
            restores
                .iter()
                .find(|(_, g)| g.job == req.job)
                .map(|(id, g)| SessionOpened {
                    session: id.clone(),
                    check_key: Some(g.check_key.to_vec()),
                })
        };
        if let Some(opened) = existing(&mut self.restores.lock().expect("restores lock")) {
            return Ok(opened);
        }
        let repo = self.repo.clone();
        let chunks = tokio::task::spawn_blocking(move || snapshot_chunks(&repo, &record))
            .await
            .map_err(|e| MediaError::Task(e.to_string()))??;
        let mut restores = self.restores.lock().expect("restores lock");
        if let Some(opened) = existing(&mut restores) {
            return Ok(opened);
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let check_key = random_key();
        tracing::warn!(job = %req.job, snapshot = %req.snapshot, %source, target = %req.system, session = %id, chunks = chunks.len(), "cross-system restore session opened");
        restores.insert(
            id.clone(),
            RestoreGrant {
                job: req.job,
                target: req.system,
                source,
                snapshot: req.snapshot,
                opened_at: std::time::Instant::now(),
                chunks,
                check_key,
            },
        );
        Ok(SessionOpened {
            session: id,
            check_key: Some(check_key.to_vec()),
        })
    }

    /// Ends the restore grant of the token's job (when the job ends).
    pub(crate) fn close_restore(
        &self,
        payload: &[u8],
        claims: &TokenClaims,
    ) -> Result<RestoreSessionClosed, MediaError> {
        let req: CloseRestoreSession = decode_request(payload)?;
        if claims.job != req.job {
            return Err(MediaError::Forbidden(format!(
                "refused: the job token is not for job {}",
                req.job
            )));
        }
        let mut restores = self.restores.lock().expect("restores lock");
        let before = restores.len();
        restores.retain(|_, g| g.job != req.job);
        let closed = restores.len() < before;
        if closed {
            tracing::info!(job = %req.job, "cross-system restore session closed");
        }
        Ok(RestoreSessionClosed { closed })
    }

    /// Within a restore session: refuses any chunk outside the granted
    /// snapshot, and gives the source's chunk-id key (to check each chunk
    /// before serving it) and the grant's check key. `None` outside a
    /// session.
    pub(crate) fn grant_keys(
        &self,
        system: &str,
        session: Option<&str>,
        ids: &[arca_schemas::ChunkId],
    ) -> Result<Option<GrantKeys>, MediaError> {
        let Some(session) = session else {
            return Ok(None);
        };
        let restores = self.restores.lock().expect("restores lock");
        let Some(g) = restores
            .get(session)
            .filter(|g| g.target == system && g.opened_at.elapsed() < RESTORE_GRANT_TTL)
        else {
            return Err(MediaError::Forbidden(format!(
                "refused: no restore session {session} for system {system}"
            )));
        };
        if let Some(id) = ids.iter().find(|id| !g.chunks.contains(id)) {
            return Err(MediaError::Forbidden(format!(
                "refused: chunk {id} is not part of snapshot {}, the only one restore session \
                 {session} lets {system} read",
                g.snapshot
            )));
        }
        Ok(Some(GrantKeys {
            source: self.repo.chunk_id_key(&g.source),
            check: g.check_key,
        }))
    }

    /// The system whose data a restore request of `system` reads: its own,
    /// or, within a restore session for it, the snapshot's system.
    pub(crate) fn read_scope(
        &self,
        system: &str,
        session: Option<&str>,
    ) -> Result<(String, Option<SnapshotId>), MediaError> {
        let Some(session) = session else {
            return Ok((system.to_owned(), None));
        };
        let restores = self.restores.lock().expect("restores lock");
        match restores.get(session) {
            Some(g) if g.target == system && g.opened_at.elapsed() < RESTORE_GRANT_TTL => {
                Ok((g.source.clone(), Some(g.snapshot.clone())))
            }
            _ => Err(MediaError::Forbidden(format!(
                "refused: no restore session {session} for system {system}"
            ))),
        }
    }

    pub(crate) async fn get(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<ChunkData, MediaError> {
        let req: GetChunk = decode_request(&payload)?;
        let keys = self.grant_keys(&system, req.session.as_deref(), &[req.id])?;
        let (system, _) = self.read_scope(&system, req.session.as_deref())?;
        blocking("get", move || {
            let frame = self.repo.get_chunk(&system, &req.id)?;
            let check = match keys {
                Some(keys) => Some(check_value(&frame, &req.id, keys)?),
                None => None,
            };
            Ok(ChunkData { frame, check })
        })
        .await
    }

    /// Several chunks in one answer: at most [`limits::MAX_GET_IDS`] ids
    /// and [`limits::MAX_GET_BYTES`] of frames (counted from the index
    /// before anything is read, a repeated id as often as it is named);
    /// each distinct chunk is read once.
    pub(crate) async fn get_many(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<ChunksData, MediaError> {
        let req: GetChunks = decode_request(&payload)?;
        let keys = self.grant_keys(&system, req.session.as_deref(), &req.ids)?;
        let (system, _) = self.read_scope(&system, req.session.as_deref())?;
        limits::at_most("get-many", req.ids.len(), limits::MAX_GET_IDS)?;
        let bytes: u64 = req
            .ids
            .iter()
            .filter_map(|id| self.repo.chunk_len(&system, id))
            .map(u64::from)
            .sum();
        if bytes > limits::MAX_GET_BYTES {
            return Err(MediaError::BadRequest(format!(
                "refused: get-many asks for {} of chunks, at most {} per request; ask for \
                 fewer chunks at a time",
                arca_schemas::text::human_bytes(bytes),
                arca_schemas::text::human_bytes(limits::MAX_GET_BYTES)
            )));
        }
        blocking("get", move || {
            let mut seen = HashSet::new();
            let distinct: Vec<arca_schemas::ChunkId> = req
                .ids
                .iter()
                .filter(|id| seen.insert(**id))
                .copied()
                .collect();
            // Each distinct chunk read (and, for a grant, checked) once.
            type Checked = Result<(Vec<u8>, Option<arca_schemas::ChunkId>), ErrorReply>;
            let read: HashMap<arca_schemas::ChunkId, Checked> = distinct
                .iter()
                .copied()
                .zip(self.repo.get_chunks(&system, &distinct))
                .map(|(id, r)| {
                    // Each chunk's error goes on the wire in its place.
                    let checked = r
                        .map_err(MediaError::from)
                        .and_then(|frame| match keys {
                            Some(keys) => check_value(&frame, &id, keys)
                                .map(|check| (frame, Some(check)))
                                .map_err(MediaError::from),
                            None => Ok((frame, None)),
                        })
                        .map_err(|e| e.to_reply());
                    (id, checked)
                })
                .collect();
            let chunks = req
                .ids
                .iter()
                .map(|id| match &read[id] {
                    Ok((frame, check)) => FetchedChunk {
                        frame: Some(frame.clone()),
                        error: None,
                        check: *check,
                    },
                    Err(e) => FetchedChunk {
                        frame: None,
                        error: Some(e.clone()),
                        check: None,
                    },
                })
                .collect();
            Ok(ChunksData { chunks })
        })
        .await
    }

    pub(crate) async fn list_snapshots(
        &self,
        payload: &[u8],
    ) -> Result<ListSnapshotsReply, MediaError> {
        let req: MediaListSnapshots = decode_request(payload)?;
        let repo = self.repo.clone();
        let records =
            tokio::task::spawn_blocking(move || repo.list_snapshots(req.system.as_deref()))
                .await
                .map_err(|e| MediaError::Task(e.to_string()))??;
        let mut snapshots: Vec<_> = records
            .into_iter()
            .map(|r| convert::info_to_wire(r.info))
            .collect();
        snapshots.reverse();
        Ok(ListSnapshotsReply { snapshots })
    }

    /// A snapshot's record; with `system`, only when it belongs to it.
    pub(crate) async fn get_snapshot(
        &self,
        payload: &[u8],
        system: Option<&str>,
    ) -> Result<SnapshotReply, MediaError> {
        let req: GetSnapshot = decode_request(payload)?;
        let system = match system {
            Some(s) => {
                let (scope, granted) = self.read_scope(s, req.session.as_deref())?;
                if granted.is_some_and(|g| g != req.snapshot) {
                    return Err(MediaError::Forbidden(format!(
                        "refused: restore session is not for snapshot {}",
                        req.snapshot
                    )));
                }
                Some(scope)
            }
            None => None,
        };
        let repo = self.repo.clone();
        let id = req.snapshot.clone();
        let record = tokio::task::spawn_blocking(move || repo.read_snapshot(&id))
            .await
            .map_err(|e| MediaError::Task(e.to_string()))??;
        if system.is_some_and(|s| s != record.info.system) {
            return Err(MediaError::NotFound(format!("snapshot {}", req.snapshot)));
        }
        Ok(SnapshotReply {
            info: convert::info_to_wire(record.info),
            tree: record.tree,
        })
    }
}
