//! Forgetting snapshots and pruning data no snapshot needs.
//!
//! Prune works beside running backups. It seals the open packs, computes
//! the chunks the snapshots need, and writes the still-needed chunks of
//! partly used packs into new packs (sealed and indexed) before it deletes
//! anything. Deletion happens per pack under the index lock for as long as
//! it takes to drop the pack's entries: a chunk that a running backup has
//! asked about or stored (`in_use`) keeps its pack. Then the pack's index
//! file goes, then the pack. A crash at any point leaves either both
//! copies of a chunk or the new one; a pack whose index file is gone is
//! read again on the next open. Either way the repository verifies clean.

use std::collections::{HashMap, HashSet};

use arca_schemas::msg::PruneReport;
use arca_schemas::tree::NodeKind;
use arca_schemas::{ChunkId, SnapshotId};

use crate::RepoError;
use crate::forget::RetentionPolicy;
use crate::fsutil::sync_dir;
use crate::store::Repository;

/// A pack to delete after copying its still-needed chunks: (pack, system, chunks).
type Rewrite = (u32, String, Vec<(ChunkId, crate::store::Loc)>);

/// A pack is rewritten when at least this share of its bytes is unused.
const REPACK_UNUSED_PERCENT: u64 = 20;

impl Repository {
    /// Forgets the snapshots of `system` that `policy` does not keep.
    /// Returns (kept, forgotten), newest first.
    pub fn forget(
        &self,
        system: &str,
        policy: &RetentionPolicy,
        dry_run: bool,
    ) -> Result<(Vec<SnapshotId>, Vec<SnapshotId>), RepoError> {
        let snaps = self.list_snapshots(Some(system))?;
        let times: Vec<_> = snaps
            .iter()
            .map(|s| (s.info.id.clone(), s.info.time))
            .collect();
        let (kept, forgotten) = crate::forget::apply(policy, &times);
        if !dry_run && !forgotten.is_empty() {
            for id in &forgotten {
                let path = self.snapshot_path(system, id);
                std::fs::remove_file(&path).map_err(|e| RepoError::io(&path, e))?;
            }
            sync_dir(&self.root().join("snapshots").join(system))?;
        }
        Ok((kept, forgotten))
    }

    /// Chunks every snapshot needs, per system. Fails rather than guess
    /// when a tree cannot be read.
    fn used_chunks(&self) -> Result<HashSet<(String, ChunkId)>, RepoError> {
        let mut used = HashSet::new();
        for snap in self.list_snapshots(None)? {
            let system = snap.info.system.clone();
            for tree in &snap.tree {
                used.insert((system.clone(), *tree));
                let batch = self.tree_batch(&system, tree)?;
                for node in batch.nodes {
                    if let NodeKind::File { chunks, .. } = node.kind {
                        used.extend(chunks.into_iter().map(|c| (system.clone(), c)));
                    }
                }
            }
        }
        Ok(used)
    }

    /// Deletes data no snapshot needs and `in_use` does not claim.
    pub fn prune(
        &self,
        in_use: &(dyn Fn(&str, &ChunkId) -> bool + Sync),
        dry_run: bool,
    ) -> Result<PruneReport, RepoError> {
        let systems: Vec<String> = self.systems()?;
        for s in &systems {
            self.flush(s)?;
        }
        let used = self.used_chunks()?;
        let packs = self.inner.packs.read().expect("packs lock").clone();
        // Per sealed pack: its system and entries.
        let mut by_pack: HashMap<u32, (String, Vec<(ChunkId, crate::store::Loc)>)> = HashMap::new();
        for (system, map) in self.inner.index.read().expect("index lock").iter() {
            for (id, loc) in map {
                if packs[loc.pack as usize].id.is_some() {
                    by_pack
                        .entry(loc.pack)
                        .or_insert_with(|| (system.clone(), Vec::new()))
                        .1
                        .push((*id, *loc));
                }
            }
        }
        let mut report = PruneReport::default();
        let sizes = |list: &[crate::store::PackFile]| -> u64 {
            list.iter()
                .filter(|p| p.id.is_some())
                .filter_map(|p| std::fs::metadata(&p.path).ok())
                .map(|m| m.len())
                .sum()
        };
        report.bytes_before = sizes(&packs);
        let mut plan: Vec<Rewrite> = Vec::new();
        for (pack, (system, entries)) in by_pack {
            let total: u64 = entries.iter().map(|(_, l)| l.len as u64).sum();
            let live: Vec<_> = entries
                .iter()
                .filter(|(id, _)| used.contains(&(system.clone(), *id)) || in_use(&system, id))
                .cloned()
                .collect();
            let live_bytes: u64 = live.iter().map(|(_, l)| l.len as u64).sum();
            if live.len() == entries.len()
                || (total - live_bytes) * 100 < total * REPACK_UNUSED_PERCENT && !live.is_empty()
            {
                continue;
            }
            report.chunks_removed += (entries.len() - live.len()) as u64;
            if live.is_empty() {
                report.packs_deleted += 1;
            } else {
                report.packs_repacked += 1;
            }
            plan.push((pack, system, live));
        }
        if dry_run {
            report.bytes_after = report.bytes_before;
            return Ok(report);
        }
        // 1. Copy what is still needed into new packs, sealed and indexed.
        for (_, system, live) in &plan {
            for (id, loc) in live {
                let frame = self.read_record(system, id, *loc)?;
                self.put_chunk_again(system, loc.kind, id, &frame)?;
            }
        }
        for s in &systems {
            self.flush(s)?;
        }
        // 2. Drop each old pack's entries, unless a backup claimed one.
        for (pack, system, _) in &plan {
            let droppable = {
                let mut index = self.inner.index.write().expect("index lock");
                let map = index.entry(system.clone()).or_default();
                let stale: Vec<ChunkId> = map
                    .iter()
                    .filter(|(_, l)| l.pack == *pack)
                    .map(|(id, _)| *id)
                    .collect();
                if stale.iter().any(|id| in_use(system, id)) {
                    false
                } else {
                    for id in stale {
                        map.remove(&id);
                    }
                    true
                }
            };
            if !droppable {
                continue;
            }
            // 3. Index file first, then the pack.
            let path = packs[*pack as usize].path.clone();
            let id = packs[*pack as usize].id.clone().expect("sealed");
            let index_file = self.index_path(system, &id);
            match std::fs::remove_file(&index_file) {
                Ok(()) => sync_dir(index_file.parent().expect("folder"))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RepoError::io(&index_file, e)),
            }
            std::fs::remove_file(&path).map_err(|e| RepoError::io(&path, e))?;
            sync_dir(path.parent().expect("folder"))?;
            // No index entry points here any more; the slot stays, empty.
            let mut table = self.inner.packs.write().expect("packs lock");
            table[*pack as usize].id = None;
            table[*pack as usize].path = Default::default();
        }
        let packs = self.inner.packs.read().expect("packs lock").clone();
        report.bytes_after = sizes(&packs);
        Ok(report)
    }
}
