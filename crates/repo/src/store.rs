//! The repository: chunk and snapshot files of each system.

use std::path::{Path, PathBuf};

use arca_schemas::msg::SnapshotInfo;
use arca_schemas::{ChunkId, SnapshotId, codec};
use serde::{Deserialize, Serialize};

use crate::RepoError;
use crate::fsutil::{sync_dir, write_durable};

/// Format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 0;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RepoConfig {
    version: u32,
    id: String,
}

/// A snapshot as stored: the catalog view and its tree chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotRecord {
    /// What the catalog shows.
    pub info: SnapshotInfo,
    /// Tree chunks in order.
    pub tree: Vec<ChunkId>,
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    /// Opens the repository at `root`, creating it when the folder is
    /// missing or empty.
    pub fn open_or_init(root: &Path) -> Result<Self, RepoError> {
        let repo = Repository {
            root: root.to_owned(),
        };
        let config = root.join("config");
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| RepoError::io(root, e))?;
        std::fs::create_dir_all(root.join("systems")).map_err(|e| RepoError::io(root, e))?;
        match std::fs::read(&config) {
            Ok(bytes) => {
                let c: RepoConfig = codec::decode(&bytes).map_err(|e| RepoError::Corrupt {
                    what: config.display().to_string(),
                    detail: e.to_string(),
                })?;
                if c.version != FORMAT_VERSION {
                    return Err(RepoError::Version {
                        path: root.display().to_string(),
                        found: c.version,
                        supported: FORMAT_VERSION,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let c = RepoConfig {
                    version: FORMAT_VERSION,
                    id: uuid::Uuid::new_v4().to_string(),
                };
                let bytes = codec::encode(&c).expect("config encodes");
                write_durable(&repo.tmp(), &config, &bytes)?;
                sync_dir(root)?;
            }
            Err(e) => return Err(RepoError::io(&config, e)),
        }
        // Left-overs of writes interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(repo.tmp()) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(repo)
    }

    /// Root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn system_dir(&self, system: &str) -> PathBuf {
        self.root.join("systems").join(system)
    }

    fn chunk_path(&self, system: &str, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.system_dir(system)
            .join("chunks")
            .join(&hex[..2])
            .join(hex)
    }

    fn snapshot_path(&self, system: &str, id: &SnapshotId) -> PathBuf {
        self.system_dir(system).join("snapshots").join(&id.0)
    }

    /// True when the system's scope holds the chunk.
    pub fn has_chunk(&self, system: &str, id: &ChunkId) -> bool {
        self.chunk_path(system, id).is_file()
    }

    /// Stores a chunk frame durably; returns false when it was already there.
    /// The caller has checked the frame against its id.
    pub fn put_chunk(&self, system: &str, id: &ChunkId, frame: &[u8]) -> Result<bool, RepoError> {
        let path = self.chunk_path(system, id);
        if path.is_file() {
            return Ok(false);
        }
        write_durable(&self.tmp(), &path, frame)?;
        Ok(true)
    }

    /// Reads a chunk frame.
    pub fn get_chunk(&self, system: &str, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        let path = self.chunk_path(system, id);
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                RepoError::NotFound(format!("chunk {id} of system {system}"))
            }
            _ => RepoError::io(&path, e),
        })
    }

    /// Writes a snapshot record. Every chunk it names must already be stored.
    pub fn write_snapshot(&self, record: &SnapshotRecord) -> Result<(), RepoError> {
        let path = self.snapshot_path(&record.info.system, &record.info.id);
        let bytes = codec::encode(record).expect("snapshot encodes");
        write_durable(&self.tmp(), &path, &bytes)
    }

    /// Reads one snapshot, searching every system.
    pub fn read_snapshot(&self, id: &SnapshotId) -> Result<SnapshotRecord, RepoError> {
        for system in self.systems()? {
            let path = self.snapshot_path(&system, id);
            match std::fs::read(&path) {
                Ok(bytes) => return self.decode_snapshot(&path, &bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RepoError::io(&path, e)),
            }
        }
        Err(RepoError::NotFound(format!("snapshot {id}")))
    }

    fn decode_snapshot(&self, path: &Path, bytes: &[u8]) -> Result<SnapshotRecord, RepoError> {
        codec::decode(bytes).map_err(|e| RepoError::Corrupt {
            what: path.display().to_string(),
            detail: e.to_string(),
        })
    }

    /// Systems that have a folder in the repository.
    pub fn systems(&self) -> Result<Vec<String>, RepoError> {
        let dir = self.root.join("systems");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| RepoError::io(&dir, e))? {
            let e = e.map_err(|e| RepoError::io(&dir, e))?;
            if let Some(name) = e.file_name().to_str() {
                out.push(name.to_owned());
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
            let dir = self.system_dir(&s).join("snapshots");
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RepoError::io(&dir, e)),
            };
            for e in entries {
                let path = e.map_err(|e| RepoError::io(&dir, e))?.path();
                let bytes = std::fs::read(&path).map_err(|e| RepoError::io(&path, e))?;
                out.push(self.decode_snapshot(&path, &bytes)?);
            }
        }
        out.sort_by_key(|r| r.info.time);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn chunks_are_scoped_per_system() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(dir.path()).unwrap();
        let data = b"same bytes";
        let id = frame::chunk_id(data);
        let f = frame::encode(data, 3);
        assert!(repo.put_chunk("a", &id, &f).unwrap());
        assert!(!repo.put_chunk("a", &id, &f).unwrap());
        assert!(repo.has_chunk("a", &id));
        assert!(!repo.has_chunk("b", &id));
        assert!(matches!(
            repo.get_chunk("b", &id),
            Err(RepoError::NotFound(_))
        ));
        assert_eq!(repo.get_chunk("a", &id).unwrap(), f);
        // Reopening keeps what was stored.
        let repo = Repository::open_or_init(dir.path()).unwrap();
        assert!(repo.has_chunk("a", &id));
    }
}
