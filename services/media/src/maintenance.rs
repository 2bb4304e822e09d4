//! Maintenance of the repository on request: verify, forget, prune and
//! index repair. Prune and repair remove chunks from the index; while one
//! runs, commits check every tree chunk again ([`Media::removing`]), and
//! chunks that running backups touched are kept ([`Media::in_use`]).

use std::sync::Arc;

use arca_runtime::rpc::decode_request;
use arca_schemas::msg::{
    ForgetReply, ForgetSnapshots, PruneReport, PruneRepository, RepairIndexReply, VerifyReport,
    VerifyRepository,
};

use crate::error::{MediaError, Result};
use crate::{Media, blocking, convert};

/// A removal of chunks running; see [`Media::removing`].
pub(crate) struct Removing<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Removing<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Media {
    /// True when a backup depends on the chunk although no snapshot that
    /// a prune started at `since` has read names it: the backup is still
    /// running, or committed its snapshot after the prune started.
    pub(crate) fn in_use(
        &self,
        system: &str,
        id: &arca_schemas::ChunkId,
        since: std::time::Instant,
    ) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .values()
            .any(|s| {
                s.system == system
                    && s.committed_at.is_none_or(|t| t >= since)
                    && s.touched.contains(id)
            })
    }

    /// Checks the repository; see [`arca_repo::Repository::verify`].
    pub(crate) async fn verify(self: Arc<Self>, payload: bytes::Bytes) -> Result<VerifyReport> {
        let req: VerifyRepository = decode_request(&payload)?;
        blocking("verify", move || {
            let percent = if req.subset_percent == 0 {
                100
            } else {
                req.subset_percent
            };
            Ok(self.repo.verify(req.read_data, percent)?)
        })
        .await
    }

    /// Forgets the snapshots of a system that a policy does not keep. A
    /// policy that keeps nothing is refused.
    pub(crate) async fn forget(self: Arc<Self>, payload: bytes::Bytes) -> Result<ForgetReply> {
        let req: ForgetSnapshots = decode_request(&payload)?;
        if req.policy.is_empty() {
            return Err(MediaError::BadRequest(
                "a policy that keeps nothing is refused: name at least one --keep-* rule".into(),
            ));
        }
        let policy = convert::retention(&req.policy);
        let repo = self.repo.clone();
        let (kept, forgotten) =
            tokio::task::spawn_blocking(move || repo.forget(&req.system, &policy, req.dry_run))
                .await
                .map_err(|e| MediaError::Task(e.to_string()))??;
        Ok(ForgetReply { kept, forgotten })
    }

    /// Removes the data no snapshot needs, keeping what running backups
    /// stored or asked about.
    pub(crate) async fn prune(self: Arc<Self>, payload: bytes::Bytes) -> Result<PruneReport> {
        let req: PruneRepository = decode_request(&payload)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let since = std::time::Instant::now();
            let guard = me.clone();
            let _removing = me.removing();
            let r = me
                .repo
                .prune(&move |s, id| guard.in_use(s, id, since), req.dry_run);
            if r.is_ok() && !req.dry_run {
                me.drop_old_sessions(since);
            }
            r
        })
        .await
        .map_err(|e| MediaError::Task(e.to_string()))?
        .map_err(MediaError::from)
    }

    /// Rebuilds every index file from the packs.
    pub(crate) async fn repair_index(self: Arc<Self>) -> Result<RepairIndexReply> {
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let _removing = me.removing();
            me.repo.repair_index()
        })
        .await
        .map_err(|e| MediaError::Task(e.to_string()))??;
        Ok(RepairIndexReply {
            packs: r.packs,
            chunks: r.chunks,
            damaged: r.damaged,
        })
    }

    /// Marks a removal of chunks (prune, index repair) as running until
    /// the guard is dropped: commits check every tree chunk again.
    pub(crate) fn removing(&self) -> Removing<'_> {
        self.removals
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.complete_trees.lock().expect("trees lock").clear();
        Removing(&self.removals)
    }
}
