//! Snapshot records on disk: each sealed with the repository key (the
//! system and id as associated data) under `snapshots/<system>/<id>`.
//! Their layout is in [`crate::record`].

use std::path::Path;

use arca_schemas::SnapshotId;

use super::{FORMAT_VERSION, Repository, subdirs};
use crate::RepoError;
use crate::fsutil::write_durable;
use crate::record::{SnapshotRecord, StoredSnapshot};

impl Repository {
    pub(super) fn snapshot_aad(system: &str, id: &SnapshotId) -> Vec<u8> {
        format!("arca-snapshot-v1/{system}/{id}").into_bytes()
    }

    /// Writes a snapshot record. Every chunk it names must already be stored.
    pub fn write_snapshot(&self, record: &SnapshotRecord) -> Result<(), RepoError> {
        let (system, id) = (&record.info.system, &record.info.id);
        let bytes = record.encode();
        let sealed = self.keys.seal(&Self::snapshot_aad(system, id), &bytes);
        write_durable(&self.tmp(), &self.snapshot_path(system, id), &sealed)
    }

    pub(crate) fn decode_snapshot(
        &self,
        system: &str,
        id: &SnapshotId,
        path: &Path,
        bytes: &[u8],
    ) -> Result<SnapshotRecord, RepoError> {
        let corrupt = |detail: String| RepoError::Corrupt {
            what: format!("snapshot {}", path.display()),
            detail,
        };
        let plain = self
            .keys
            .open(&Self::snapshot_aad(system, id), bytes)
            .ok_or_else(|| corrupt("fails authentication".into()))?;
        match StoredSnapshot::decode(FORMAT_VERSION, &plain) {
            Some(Ok(stored)) => Ok(stored.into_current()),
            Some(Err(e)) => Err(corrupt(e.to_string())),
            None => Err(corrupt(format!(
                "no record layout for format version {FORMAT_VERSION}"
            ))),
        }
    }

    /// Reads one snapshot, searching every system.
    pub fn read_snapshot(&self, id: &SnapshotId) -> Result<SnapshotRecord, RepoError> {
        if SnapshotId::parse(&id.0).is_none() {
            return Err(RepoError::NotFound(format!("snapshot {id}")));
        }
        for system in self.systems()? {
            let path = self.snapshot_path(&system, id);
            match std::fs::read(&path) {
                Ok(bytes) => return self.decode_snapshot(&system, id, &path, &bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RepoError::io(&path, e)),
            }
        }
        Err(RepoError::NotFound(format!("snapshot {id}")))
    }

    /// Systems that have snapshots or data.
    pub fn systems(&self) -> Result<Vec<String>, RepoError> {
        let mut out: Vec<String> = subdirs(&self.root.join("snapshots"))?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        for (s, _) in subdirs(&self.root.join("data"))? {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every snapshot of `system` (or of all systems), oldest first.
    pub fn list_snapshots(&self, system: Option<&str>) -> Result<Vec<SnapshotRecord>, RepoError> {
        let systems = match system {
            Some(s) => vec![s.to_owned()],
            None => self.systems()?,
        };
        let mut out = Vec::new();
        for s in systems {
            let dir = self.root.join("snapshots").join(&s);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RepoError::io(&dir, e)),
            };
            for e in entries {
                let path = e.map_err(|e| RepoError::io(&dir, e))?.path();
                let Some(id) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(SnapshotId::parse)
                else {
                    continue;
                };
                let bytes = std::fs::read(&path).map_err(|e| RepoError::io(&path, e))?;
                out.push(self.decode_snapshot(&s, &id, &path, &bytes)?);
            }
        }
        out.sort_by_key(|r| r.info.time);
        Ok(out)
    }
}
