//! Opening and repair: on open, open packs left by a crash are cut after
//! their last whole record and sealed, and packs without an index file
//! are scanned; `repair_index` rebuilds every index file from the packs.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::index::{entries_of, read_index_file};
use super::{Inner, Loc, PackFile, Repository, subdirs};
use crate::RepoError;
use crate::fsutil::sync_dir;
use crate::pack;

/// What opening found and mended.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// Open packs left by a crash, sealed.
    pub recovered_packs: usize,
    /// Packs that had no index file and were scanned.
    pub scanned_packs: usize,
    /// Index files that name a pack that does not exist.
    pub missing_packs: Vec<String>,
    /// Index files that could not be read (their packs were scanned).
    pub bad_index_files: Vec<String>,
}
impl Repository {
    pub(super) fn load(&self) -> Result<OpenReport, RepoError> {
        let mut report = OpenReport::default();
        self.recover_open_packs(&mut report)?;
        let mut indexed: HashSet<PathBuf> = HashSet::new();
        for (system, dir) in subdirs(&self.root.join("index"))? {
            for entry in std::fs::read_dir(&dir).map_err(|e| RepoError::io(&dir, e))? {
                let path = entry.map_err(|e| RepoError::io(&dir, e))?.path();
                let Some(file) = read_index_file(&path) else {
                    report.bad_index_files.push(path.display().to_string());
                    continue;
                };
                let pack_path = self.pack_path(&system, &file.pack);
                if !pack_path.is_file() {
                    report.missing_packs.push(format!("{system}/{}", file.pack));
                    continue;
                }
                self.register(
                    &system,
                    pack_path.clone(),
                    Some(file.pack.clone()),
                    &file.entries,
                );
                indexed.insert(pack_path);
            }
        }
        for (system, dir) in subdirs(&self.root.join("data"))? {
            for (_, sub) in subdirs(&dir)? {
                for entry in std::fs::read_dir(&sub).map_err(|e| RepoError::io(&sub, e))? {
                    let path = entry.map_err(|e| RepoError::io(&sub, e))?.path();
                    if indexed.contains(&path) {
                        continue;
                    }
                    let id = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_owned();
                    let entries = self.index_pack(&system, &path)?;
                    self.write_index_file(&system, &id, &entries)?;
                    self.register(&system, path, Some(id), &entries);
                    report.scanned_packs += 1;
                }
            }
        }
        Ok(report)
    }

    pub(super) fn recover_open_packs(&self, report: &mut OpenReport) -> Result<(), RepoError> {
        let tmp = self.tmp();
        for entry in std::fs::read_dir(&tmp).map_err(|e| RepoError::io(&tmp, e))? {
            let path = entry.map_err(|e| RepoError::io(&tmp, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let system = name
                .strip_suffix(".pack")
                .and_then(|n| n.rsplit_once('.'))
                .map(|(s, _)| s.to_owned());
            let Some(system) = system else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let scan = pack::scan(&path, &self.keys, &system, false)
                .map_err(|e| RepoError::io(&path, e))?;
            if scan.records.is_empty() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| RepoError::io(&path, e))?;
            f.set_len(scan.good_len)
                .map_err(|e| RepoError::io(&path, e))?;
            f.sync_all().map_err(|e| RepoError::io(&path, e))?;
            let mut hasher = blake3::Hasher::new();
            hasher
                .update_reader(File::open(&path).map_err(|e| RepoError::io(&path, e))?)
                .map_err(|e| RepoError::io(&path, e))?;
            let entries = entries_of(&scan);
            self.seal_file(&system, &path, &hasher.finalize().to_hex(), &entries)?;
            report.recovered_packs += 1;
        }
        Ok(())
    }

    /// Rebuilds every index file from the packs alone.
    pub fn repair_index(&self) -> Result<RepairReport, RepoError> {
        let mut report = RepairReport::default();
        let mut fresh = Inner::default();
        let index_root = self.root.join("index");
        for (_, dir) in subdirs(&index_root)? {
            std::fs::remove_dir_all(&dir).map_err(|e| RepoError::io(&dir, e))?;
        }
        sync_dir(&index_root)?;
        // Seal what is being written, so that every chunk is in data/.
        let systems: Vec<String> = self
            .inner
            .writers
            .lock()
            .expect("writers lock")
            .keys()
            .cloned()
            .collect();
        for s in systems {
            self.flush(&s)?;
        }
        for (system, dir) in subdirs(&self.root.join("data"))? {
            for (_, sub) in subdirs(&dir)? {
                for entry in std::fs::read_dir(&sub).map_err(|e| RepoError::io(&sub, e))? {
                    let path = entry.map_err(|e| RepoError::io(&sub, e))?.path();
                    let id = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_owned();
                    let scan = pack::scan(&path, &self.keys, &system, false)
                        .map_err(|e| RepoError::io(&path, e))?;
                    if let Some(why) = &scan.stopped {
                        report.damaged.push(format!("{}: {why}", path.display()));
                    }
                    for (chunk, _, why) in &scan.damaged {
                        report
                            .damaged
                            .push(format!("{}: chunk {chunk}: {why}", path.display()));
                    }
                    let entries = entries_of(&scan);
                    self.write_index_file(&system, &id, &entries)?;
                    report.packs += 1;
                    report.chunks += entries.len() as u64;
                    let n = {
                        let p = fresh.packs.get_mut().expect("packs lock");
                        p.push(PackFile { path, id: Some(id) });
                        (p.len() - 1) as u32
                    };
                    let map = fresh
                        .index
                        .get_mut()
                        .expect("index lock")
                        .entry(system.clone())
                        .or_default();
                    for e in &entries {
                        map.insert(
                            e.id,
                            Loc {
                                pack: n,
                                offset: e.offset,
                                len: e.len,
                                kind: e.kind,
                            },
                        );
                    }
                }
            }
        }
        // Swap the in-memory index in one step.
        *self.inner.index.write().expect("index lock") =
            fresh.index.into_inner().expect("index lock");
        *self.inner.packs.write().expect("packs lock") =
            fresh.packs.into_inner().expect("packs lock");
        Ok(report)
    }
}

/// What [`Repository::repair_index`] did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RepairReport {
    /// Packs read.
    pub packs: u64,
    /// Chunks indexed.
    pub chunks: u64,
    /// Damage found while reading packs.
    pub damaged: Vec<String>,
}
