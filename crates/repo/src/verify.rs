//! Checking a repository.
//!
//! Structure: every snapshot opens, every tree chunk it names is indexed
//! and decodes, every data chunk a tree names is indexed, and every index
//! entry lies inside an existing pack. With `read_data`, every record of
//! the chosen packs (all, or a random subset) is read, authenticated and
//! hashed against its id. Every damaged or missing chunk is reported with
//! the snapshots and files that need it.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;

use arca_schemas::msg::{VerifyProblem, VerifyReport};
use arca_schemas::tree::NodeKind;
use arca_schemas::{ChunkId, SnapshotId};

use crate::RepoError;
use crate::record::SnapshotRecord;
use crate::store::Repository;
use arca_frame as frame;

impl Repository {
    /// Verifies the repository; `subset_percent` (1..=100) of the packs are
    /// read when `read_data` is set.
    pub fn verify(&self, read_data: bool, subset_percent: u8) -> Result<VerifyReport, RepoError> {
        let mut report = VerifyReport::default();
        // (system, chunk) -> what is wrong with it.
        let mut bad: HashMap<(String, ChunkId), String> = HashMap::new();
        let mut snapshots: Vec<SnapshotRecord> = Vec::new();

        for system in self.systems()? {
            let dir = self.root().join("snapshots").join(&system);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let Some(id) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(SnapshotId::parse)
                else {
                    continue;
                };
                let decoded = std::fs::read(&path)
                    .map_err(|e| RepoError::io(&path, e))
                    .and_then(|b| self.decode_snapshot(&system, &id, &path, &b));
                match decoded {
                    Ok(r) => snapshots.push(r),
                    Err(err) => report.problems.push(VerifyProblem {
                        system: system.clone(),
                        chunk: None,
                        error: format!("snapshot {id} cannot be read: {err}"),
                        snapshots: vec![id],
                        files: Vec::new(),
                    }),
                }
            }
        }
        report.snapshots = snapshots.len() as u64;

        // Index entries must lie inside existing packs.
        let packs = self.inner.packs.read().expect("packs lock").clone();
        report.packs = packs.iter().filter(|p| p.id.is_some()).count() as u64;
        let sizes: Vec<Option<u64>> = packs
            .iter()
            .map(|p| std::fs::metadata(&p.path).ok().map(|m| m.len()))
            .collect();
        let index: Vec<(String, ChunkId, crate::store::Loc)> = {
            let idx = self.inner.index.read().expect("index lock");
            idx.iter()
                .flat_map(|(s, m)| m.iter().map(move |(id, loc)| (s.clone(), *id, *loc)))
                .collect()
        };
        // Every sealed pack has a readable index file.
        for p in packs.iter() {
            let Some(id) = &p.id else { continue };
            let system = p
                .path
                .parent()
                .and_then(|d| d.parent())
                .and_then(|d| d.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if crate::store::index::read_index_file(&self.index_path(&system, id)).is_none() {
                report.problems.push(VerifyProblem {
                    system,
                    chunk: None,
                    error: format!("the index file of pack {id} is missing or damaged; `arca repair index` rebuilds it"),
                    snapshots: Vec::new(),
                    files: Vec::new(),
                });
            }
        }
        for (system, id, loc) in &index {
            match sizes[loc.pack as usize] {
                None => {
                    bad.insert(
                        (system.clone(), *id),
                        format!(
                            "pack {} is missing",
                            packs[loc.pack as usize].path.display()
                        ),
                    );
                }
                Some(size) if loc.offset + loc.len as u64 > size => {
                    bad.insert(
                        (system.clone(), *id),
                        format!(
                            "pack {} is cut short",
                            packs[loc.pack as usize].path.display()
                        ),
                    );
                }
                _ => {}
            }
        }

        if read_data {
            let percent = subset_percent.clamp(1, 100) as u64;
            let mut chosen = vec![false; packs.len()];
            for (i, c) in chosen.iter_mut().enumerate() {
                let mut r = [0u8; 8];
                getrandom::fill(&mut r).expect("randomness");
                *c = percent == 100 || u64::from_le_bytes(r) % 100 < percent;
                let _ = i;
            }
            for (system, id, loc) in &index {
                if !chosen[loc.pack as usize] || bad.contains_key(&(system.clone(), *id)) {
                    continue;
                }
                report.chunks_read += 1;
                let key = self.chunk_id_key(system);
                let checked = self
                    .read_record(system, id, *loc)
                    .and_then(|f| Ok(frame::decode(&f, &key, id).map(drop)?));
                if let Err(e) = checked {
                    bad.insert((system.clone(), *id), e.to_string());
                }
            }
        }

        // Walk the trees: missing chunks, and who needs the bad ones.
        let mut affected: HashMap<(String, ChunkId), (BTreeSet<SnapshotId>, BTreeSet<String>)> =
            HashMap::new();
        for snap in &snapshots {
            let system = &snap.info.system;
            for tree_id in &snap.tree {
                let batch = self.tree_batch(system, tree_id);
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        bad.entry((system.clone(), *tree_id))
                            .or_insert_with(|| e.to_string());
                        let a = affected.entry((system.clone(), *tree_id)).or_default();
                        a.0.insert(snap.info.id.clone());
                        a.1.insert("(part of the file list)".into());
                        continue;
                    }
                };
                for node in &batch.nodes {
                    let NodeKind::File { chunks, .. } = &node.kind else {
                        continue;
                    };
                    for c in chunks {
                        let k = (system.clone(), *c);
                        if !bad.contains_key(&k) && self.locate(system, c).is_none() {
                            bad.insert(k.clone(), "chunk is not in the repository".into());
                        }
                        if bad.contains_key(&k) {
                            let a = affected.entry(k).or_default();
                            a.0.insert(snap.info.id.clone());
                            a.1.insert(
                                String::from_utf8_lossy(
                                    std::ffi::OsStr::from_bytes(&node.path).as_bytes(),
                                )
                                .into_owned(),
                            );
                        }
                    }
                }
            }
        }
        let mut problems: Vec<VerifyProblem> = bad
            .into_iter()
            .map(|((system, chunk), error)| {
                let (snaps, files) = affected
                    .remove(&(system.clone(), chunk))
                    .unwrap_or_default();
                VerifyProblem {
                    system,
                    chunk: Some(chunk),
                    error,
                    snapshots: snaps.into_iter().collect(),
                    files: files.into_iter().collect(),
                }
            })
            .collect();
        problems.sort_by(|a, b| (&a.system, &a.files).cmp(&(&b.system, &b.files)));
        report.problems.extend(problems);
        Ok(report)
    }
}
