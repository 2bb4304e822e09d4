//! Ingest: a backup's chunks stored (`put`, `put-many`), asked about
//! (`has`), and its snapshot committed once every chunk it names is
//! stored and the manifest is signed by the system's enrolled key.

use std::collections::HashSet;
use std::sync::Arc;

use arca_frame::{self as frame, FrameError};
use arca_repo::{Kind, Repository, SnapshotRecord};
use arca_runtime::rpc::decode_request;
use arca_schemas::SnapshotId;
use arca_schemas::msg::*;
use arca_schemas::subject;
use arca_schemas::tree::NodeKind;

use crate::error::MediaError;
use crate::{Media, blocking, convert, limits, tree_check};

impl Media {
    /// The chunk-id key of a system, for its agent to name its chunks.
    pub(crate) fn chunk_key(&self, payload: &[u8]) -> Result<ChunkKey, MediaError> {
        let req: GetChunkKey = decode_request(payload)?;
        if !subject::valid_token(&req.system) {
            return Err(MediaError::BadRequest(format!(
                "invalid system name {:?}",
                req.system
            )));
        }
        Ok(ChunkKey {
            key: self.repo.chunk_id_key(&req.system),
        })
    }

    pub(crate) async fn put(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<ChunkStored, MediaError> {
        let req: PutChunk = decode_request(&payload)?;
        self.check_session(&req.session, &system)?;
        self.touch(&req.session, &[req.id])?;
        let quota = self.session_quota(&req.session);
        blocking("put", move || {
            if self.repo.has_chunk(&system, &req.id) {
                return Ok(ChunkStored { new: false });
            }
            let kind = if req.tree { Kind::Tree } else { Kind::Data };
            let reserved = self.usage.reserve(&system, quota, req.frame.len() as u64)?;
            check_frame(&self.repo, &system, kind, &req.id, &req.frame)?;
            let new = self.repo.put_chunk(&system, kind, &req.id, &req.frame)?;
            reserved.keep(if new { req.frame.len() as u64 } else { 0 });
            Ok(ChunkStored { new })
        })
        .await
    }

    /// Stores a batch of chunks with one durable write.
    pub(crate) async fn put_many(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<ChunksStored, MediaError> {
        let req: PutChunks = decode_request(&payload)?;
        self.check_session(&req.session, &system)?;
        limits::at_most("put-many", req.chunks.len(), limits::MAX_PUT_CHUNKS)?;
        let ids: Vec<_> = req.chunks.iter().map(|c| c.id).collect();
        self.touch(&req.session, &ids)?;
        let quota = self.session_quota(&req.session);
        blocking("put", move || {
            // Each chunk once: a repeated id, or one already stored, is
            // answered as not new without being decoded.
            let mut seen = HashSet::new();
            let todo: Vec<&PutChunk> = req
                .chunks
                .iter()
                .filter(|c| seen.insert(c.id) && !self.repo.has_chunk(&system, &c.id))
                .collect();
            let bytes = todo.iter().map(|c| c.frame.len() as u64).sum();
            let reserved = self.usage.reserve(&system, quota, bytes)?;
            // Every chunk's claim is checked, as for a single put.
            let items: Vec<(Kind, arca_schemas::ChunkId, &[u8])> = todo
                .iter()
                .map(|c| {
                    let kind = if c.tree { Kind::Tree } else { Kind::Data };
                    check_frame(&self.repo, &system, kind, &c.id, &c.frame)?;
                    Ok((kind, c.id, c.frame.as_slice()))
                })
                .collect::<Result<_, MediaError>>()?;
            let stored = self.repo.put_chunks(&system, &items)?;
            let mut new = vec![false; req.chunks.len()];
            let mut kept = 0;
            for ((_, id, frame), n) in items.iter().zip(stored) {
                if n {
                    kept += frame.len() as u64;
                    if let Some(i) = req.chunks.iter().position(|c| c.id == *id) {
                        new[i] = true;
                    }
                }
            }
            reserved.keep(kept);
            Ok(ChunksStored { new })
        })
        .await
    }

    pub(crate) fn has(&self, system: &str, payload: &[u8]) -> Result<HasChunksReply, MediaError> {
        let req: HasChunks = decode_request(payload)?;
        self.check_session(&req.session, system)?;
        limits::at_most("has", req.ids.len(), MAX_HAS_BATCH)?;
        self.touch(&req.session, &req.ids)?;
        Ok(HasChunksReply {
            present: req
                .ids
                .iter()
                .map(|id| self.repo.has_chunk(system, id))
                .collect(),
        })
    }

    pub(crate) async fn commit(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<SnapshotCommitted, MediaError> {
        let req: CommitSnapshot = decode_request(&payload)?;
        self.check_session(&req.session, &system)?;
        if req.tree.len() > limits::MAX_TREE_CHUNKS {
            return Err(tree_check::refused(
                &system,
                format!(
                    "names {} tree chunks, at most {}",
                    req.tree.len(),
                    limits::MAX_TREE_CHUNKS
                ),
            ));
        }
        // One commit of a session at a time; the next gets its answer.
        let _committing = self.start_commit(&req.session)?;
        let (job, paths, agent_key) = {
            let sessions = self.sessions.lock().expect("sessions lock");
            let s = sessions
                .get(&req.session)
                .ok_or_else(|| MediaError::NotFound(format!("no session {}", req.session)))?;
            if let Some(info) = &s.committed {
                return Ok(SnapshotCommitted {
                    snapshot: info.clone(),
                });
            }
            (s.job, s.paths.clone(), s.agent_key.clone())
        };
        // Invariant 4: the snapshot is the system's only when the key
        // enrolled for it signed this manifest; otherwise nothing commits.
        let manifest = arca_runtime::trust::manifest_bytes(&system, job, &req.tree);
        if let Err(e) = arca_runtime::identity::verify(&agent_key, &manifest, &req.signature) {
            return Err(MediaError::Forbidden(format!(
                "refused: the snapshot manifest is not signed by the key enrolled for system \
                 {system} ({e}); snapshot not committed"
            )));
        }
        let signature = hex::encode(&req.signature);
        let me = self.clone();
        let info = blocking("commit", move || -> Result<SnapshotInfo, MediaError> {
            me.check_tree_complete(&system, &req.tree)?;
            me.repo.flush(&system)?;
            let info = SnapshotInfo {
                id: SnapshotId::new(),
                system: system.clone(),
                job,
                time: chrono::Utc::now(),
                paths,
                media: me.id.clone(),
                stats: req.stats,
                file_errors: req.file_errors,
                signer: Some(agent_key),
                signature: Some(signature),
            };
            me.repo.write_snapshot(&SnapshotRecord {
                info: convert::info_to_stored(info.clone()),
                tree: req.tree,
            })?;
            // The backup's data is stored: what it used goes back now.
            arca_runtime::memory::release_free_memory();
            Ok(info)
        })
        .await?;
        tracing::info!(snapshot = %info.id, system = %info.system, job = %info.job, "snapshot committed");
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if let Some(s) = sessions.get_mut(&req.session) {
            s.committed = Some(info.clone());
            s.committed_at = Some(std::time::Instant::now());
        }
        Ok(SnapshotCommitted { snapshot: info })
    }

    /// Invariant 3: a snapshot is committed only when every chunk it
    /// references is durably stored.
    ///
    /// A tree chunk found complete by an earlier commit, with no prune or
    /// index repair since, is only checked to be stored: the chunks it
    /// names were stored then and nothing removed chunks since. An
    /// unchanged tree's commit so reads only the tree chunks that changed.
    pub(crate) fn check_tree_complete(
        &self,
        system: &str,
        tree: &[arca_schemas::ChunkId],
    ) -> Result<(), MediaError> {
        use std::sync::atomic::Ordering;
        let key = self.repo.chunk_id_key(system);
        let epoch = self.removals.load(Ordering::SeqCst);
        let known: HashSet<arca_schemas::ChunkId> = {
            let trees = self.complete_trees.lock().expect("trees lock");
            match trees.get(system) {
                Some((e, ids)) if *e == epoch && epoch.is_multiple_of(2) => {
                    tree.iter().filter(|id| ids.contains(id)).copied().collect()
                }
                _ => HashSet::new(),
            }
        };
        // Each tree chunk is decoded once; a tree naming one twice would
        // make every restore of it do the work twice, and is refused.
        let mut seen = HashSet::with_capacity(tree.len());
        if let Some(twice) = tree.iter().find(|id| !seen.insert(**id)) {
            return Err(tree_check::refused(
                system,
                format!("names tree chunk {twice} more than once"),
            ));
        }
        drop(seen);
        for id in tree {
            if known.contains(id) {
                if !self.repo.has_chunk(system, id) {
                    return Err(MediaError::BadRequest(format!(
                        "tree chunk {id} is not stored; snapshot not committed"
                    )));
                }
                continue;
            }
            let frame_bytes = self.repo.get_chunk(system, id)?;
            let batch = match frame::decode_tree(&frame_bytes, &key, id) {
                Ok(batch) => batch,
                Err(FrameError::NotATree { detail, .. }) => {
                    return Err(MediaError::BadRequest(format!(
                        "tree chunk {id} is not a tree: {detail}"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            drop(frame_bytes);
            tree_check::check_batch(system, id, &batch)?;
            for node in &batch.nodes {
                if let NodeKind::File { chunks, .. } = &node.kind
                    && let Some(missing) = chunks.iter().find(|c| !self.repo.has_chunk(system, c))
                {
                    return Err(MediaError::BadRequest(format!(
                        "chunk {missing} of {} is not stored; snapshot not committed",
                        arca_schemas::text::escape_bytes(&node.path)
                    )));
                }
            }
        }
        // Remembered only when no removal started meanwhile.
        if epoch.is_multiple_of(2) && self.removals.load(Ordering::SeqCst) == epoch {
            let mut trees = self.complete_trees.lock().expect("trees lock");
            let entry = trees
                .entry(system.to_owned())
                .or_insert_with(|| (epoch, HashSet::new()));
            if entry.0 != epoch {
                *entry = (epoch, HashSet::new());
            }
            entry.1.extend(tree.iter().copied());
        }
        Ok(())
    }
}

/// Checks an agent's claim about a chunk before it is stored: the frame
/// decodes, within the bound of its kind ([`frame::MAX_CHUNK`] for data,
/// [`frame::MAX_TREE_CHUNK`] for a tree), to bytes that hash to its id
/// under the system's key, so a chunk can never lie about itself.
pub(crate) fn check_frame(
    repo: &Repository,
    system: &str,
    kind: Kind,
    id: &arca_schemas::ChunkId,
    bytes: &[u8],
) -> Result<(), MediaError> {
    let cap = match kind {
        Kind::Data => frame::MAX_CHUNK,
        Kind::Tree => frame::MAX_TREE_CHUNK,
    };
    frame::decode_within(bytes, &repo.chunk_id_key(system), id, cap)
        .map(drop)
        .map_err(MediaError::from)
}
