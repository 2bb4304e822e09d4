//! The repository: packs of sealed chunks per system, an index rebuilt
//! from them at will, and sealed snapshots.
//!
//! Durability (see `docs/repository-format.md`, "Order of writes"):
//!
//! 1. A chunk is appended to its system's open pack under `tmp/` and the
//!    file is fdatasynced before the put returns (group commit: one sync
//!    serves every put written before it started).
//! 2. A full pack (or the open pack when a snapshot is committed) is
//!    fsynced, renamed to `data/<system>/<xx>/<pack-id>`, its folder
//!    fsynced, then its index file written the same way.
//! 3. A snapshot is written (temporary file, fsync, rename, fsync folder)
//!    only after every chunk it names is in a sealed pack.
//!
//! On open, open packs left in `tmp/` by a crash are cut after their last
//! whole record and sealed, and packs without an index file are scanned,
//! so every chunk that was acknowledged is found again.

pub(crate) mod index;
mod open;
mod packs;
mod snapshots;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arca_schemas::{ChunkId, SnapshotId, codec};
use serde::{Deserialize, Serialize};

use crate::RepoError;
use crate::crypto::Keys;
use crate::fsutil::{sync_dir, write_durable};
use crate::pack::Kind;

pub use index::IndexEntry;
pub use open::{OpenReport, RepairReport};

/// Format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Default target size of a pack.
pub const DEFAULT_PACK_SIZE: u64 = 32 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RepoConfig {
    version: u32,
    id: String,
    key_check: String,
}
/// Where a chunk is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loc {
    pub(crate) pack: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) kind: Kind,
}

#[derive(Debug, Clone)]
pub(crate) struct PackFile {
    pub(crate) path: PathBuf,
    /// `None` while the pack is open (in `tmp/`).
    pub(crate) id: Option<String>,
}
#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) index: RwLock<HashMap<String, HashMap<ChunkId, Loc>>>,
    pub(crate) packs: RwLock<Vec<PackFile>>,
    writers: Mutex<HashMap<String, Arc<packs::Writer>>>,
}

/// An open repository. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Repository {
    root: PathBuf,
    pub(crate) keys: Keys,
    pack_size: u64,
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.root.display())
    }
}
impl Repository {
    /// Opens the repository at `root` with the key in `key_file`, creating
    /// both when missing. `pack_size` is the target pack size in bytes.
    pub fn open_or_init(
        root: &Path,
        key_file: &Path,
        pack_size: u64,
    ) -> Result<(Self, OpenReport), RepoError> {
        Self::open_or_init_sealed(root, key_file, None, pack_size)
    }

    /// As [`Self::open_or_init`], with the passphrase that seals the key
    /// file (a new key file is sealed by it).
    pub fn open_or_init_sealed(
        root: &Path,
        key_file: &Path,
        passphrase: Option<&[u8]>,
        pack_size: u64,
    ) -> Result<(Self, OpenReport), RepoError> {
        for d in ["tmp", "data", "index", "snapshots"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| RepoError::io(root, e))?;
        }
        let keys = Keys::load_or_create(key_file, passphrase)?;
        let repo = Repository {
            root: root.to_owned(),
            keys,
            pack_size: pack_size.max(1 << 20),
            inner: Arc::new(Inner::default()),
        };
        repo.check_config()?;
        let report = repo.load()?;
        Ok((repo, report))
    }

    fn check_config(&self) -> Result<(), RepoError> {
        let path = self.root.join("config");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let c: RepoConfig = codec::decode(&bytes).map_err(|e| RepoError::Corrupt {
                    what: path.display().to_string(),
                    detail: e.to_string(),
                })?;
                if c.version != FORMAT_VERSION {
                    return Err(RepoError::Version {
                        path: self.root.display().to_string(),
                        found: c.version,
                        supported: FORMAT_VERSION,
                    });
                }
                if c.key_check != self.keys.check_value() {
                    return Err(RepoError::Key(format!(
                        "the key file does not belong to the repository at {}; configure the key file it was created with",
                        self.root.display()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::read_dir(self.root.join("data"))
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
                {
                    return Err(RepoError::Corrupt {
                        what: path.display().to_string(),
                        detail: "missing while the repository holds data".into(),
                    });
                }
                let c = RepoConfig {
                    version: FORMAT_VERSION,
                    id: uuid::Uuid::new_v4().to_string(),
                    key_check: self.keys.check_value(),
                };
                write_durable(
                    &self.tmp(),
                    &path,
                    &codec::encode(&c).expect("config encodes"),
                )?;
                sync_dir(&self.root)
            }
            Err(e) => Err(RepoError::io(&path, e)),
        }
    }

    /// Root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn pack_path(&self, system: &str, id: &str) -> PathBuf {
        self.root.join("data").join(system).join(&id[..2]).join(id)
    }

    pub(crate) fn index_path(&self, system: &str, pack: &str) -> PathBuf {
        self.root.join("index").join(system).join(pack)
    }

    pub(crate) fn snapshot_path(&self, system: &str, id: &SnapshotId) -> PathBuf {
        self.root.join("snapshots").join(system).join(&id.0)
    }

    /// The chunk-id key of a system (given to its agent).
    pub fn chunk_id_key(&self, system: &str) -> [u8; 32] {
        self.keys.chunk_id_key(system)
    }
}

/// (name, path) of every folder directly in `dir`.
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, RepoError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(RepoError::io(dir, e)),
    };
    for e in entries {
        let e = e.map_err(|e| RepoError::io(dir, e))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false)
            && let Some(name) = e.file_name().to_str()
        {
            out.push((name.to_owned(), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_frame as frame;

    fn open(dir: &Path) -> Repository {
        Repository::open_or_init(&dir.join("repo"), &dir.join("key"), 1 << 20)
            .unwrap()
            .0
    }

    fn chunk(repo: &Repository, system: &str, seed: u8, len: usize) -> (ChunkId, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect();
        let id = frame::chunk_id(&repo.chunk_id_key(system), &data);
        (id, frame::encode(&data, 1))
    }

    #[test]
    fn chunks_survive_reopening_and_are_scoped_per_system() {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(dir.path());
        let (id, f) = chunk(&repo, "a", 3, 100_000);
        assert!(repo.put_chunk("a", Kind::Data, &id, &f).unwrap());
        assert!(!repo.put_chunk("a", Kind::Data, &id, &f).unwrap());
        assert!(!repo.has_chunk("b", &id));
        assert!(matches!(
            repo.get_chunk("b", &id),
            Err(RepoError::NotFound(_))
        ));
        assert_eq!(repo.get_chunk("a", &id).unwrap(), f);
        repo.flush("a").unwrap();
        drop(repo);
        let repo = open(dir.path());
        assert_eq!(repo.get_chunk("a", &id).unwrap(), f);
    }

    #[test]
    fn a_batch_is_stored_across_sealed_packs_and_known_chunks_are_not_new() {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(dir.path());
        // 40 chunks of 60 kB: the 1 MiB packs fill and seal twice on the way.
        let chunks: Vec<_> = (1..=40).map(|s| chunk(&repo, "a", s, 60_000)).collect();
        repo.put_chunk("a", Kind::Data, &chunks[0].0, &chunks[0].1)
            .unwrap();
        let items: Vec<(Kind, ChunkId, &[u8])> = chunks
            .iter()
            .map(|(id, f)| (Kind::Data, *id, f.as_slice()))
            .collect();
        let new = repo.put_chunks("a", &items).unwrap();
        assert!(!new[0], "the chunk stored before is not new");
        assert!(new[1..].iter().all(|n| *n));
        // Everything acknowledged is readable after reopening, sealed or not.
        drop(repo);
        let repo = open(dir.path());
        for (id, f) in &chunks {
            assert_eq!(&repo.get_chunk("a", id).unwrap(), f);
        }
        let sealed = std::fs::read_dir(dir.path().join("repo/data/a"))
            .unwrap()
            .count();
        assert!(sealed >= 1, "no pack was sealed on the way");
    }

    #[test]
    fn chunks_read_together_answer_in_order_and_damage_stays_with_its_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(dir.path());
        let chunks: Vec<_> = (1..=10).map(|s| chunk(&repo, "a", s, 20_000)).collect();
        let items: Vec<(Kind, ChunkId, &[u8])> = chunks
            .iter()
            .map(|(id, f)| (Kind::Data, *id, f.as_slice()))
            .collect();
        repo.put_chunks("a", &items).unwrap();
        repo.flush("a").unwrap();
        let (missing, _) = chunk(&repo, "a", 99, 100);
        let ask = [chunks[3].0, missing, chunks[0].0, chunks[9].0, chunks[5].0];
        let got = repo.get_chunks("a", &ask);
        assert_eq!(got[0].as_ref().unwrap(), &chunks[3].1);
        assert!(matches!(got[1], Err(RepoError::NotFound(_))));
        assert_eq!(got[2].as_ref().unwrap(), &chunks[0].1);
        assert_eq!(got[3].as_ref().unwrap(), &chunks[9].1);
        assert_eq!(got[4].as_ref().unwrap(), &chunks[5].1);
        // The same bytes through another system's scope: nothing.
        assert!(repo.get_chunks("b", &ask).iter().all(|r| r.is_err()));

        // One damaged byte in chunk 5's record: only chunk 5 fails.
        let loc = |i: usize| repo.locate("a", &chunks[i].0).unwrap();
        let pack = repo.pack_file_path(loc(5).pack);
        let mut bytes = std::fs::read(&pack).unwrap();
        let at = (loc(5).offset + loc(5).len as u64 / 2) as usize;
        bytes[at] ^= 0x40;
        std::fs::write(&pack, &bytes).unwrap();
        let all: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        let got = repo.get_chunks("a", &all);
        for (i, r) in got.iter().enumerate() {
            match i {
                5 => assert!(matches!(r, Err(RepoError::Corrupt { .. })), "{r:?}"),
                _ => assert_eq!(r.as_ref().unwrap(), &chunks[i].1, "chunk {i}"),
            }
        }

        // The pack cut in chunk 7's record: the chunks before it still read.
        let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.set_len(loc(7).offset + 10).unwrap();
        let got = repo.get_chunks("a", &all);
        for (i, r) in got.iter().enumerate() {
            match i {
                5 => assert!(r.is_err()),
                7..=9 => {
                    let e = r.as_ref().unwrap_err().to_string();
                    assert!(e.contains("cut short"), "chunk {i}: {e}");
                }
                _ => assert_eq!(r.as_ref().unwrap(), &chunks[i].1, "chunk {i}"),
            }
        }
    }

    #[test]
    fn an_open_pack_left_by_a_crash_is_recovered_up_to_its_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(dir.path());
        let mut ids = Vec::new();
        for seed in 1..=5 {
            let (id, f) = chunk(&repo, "a", seed, 50_000);
            repo.put_chunk("a", Kind::Data, &id, &f).unwrap();
            ids.push((id, f));
        }
        // No flush: the pack is still open in tmp/. Cut its last record.
        drop(repo);
        let tmp = dir.path().join("repo/tmp");
        let open_pack = std::fs::read_dir(&tmp)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let len = std::fs::metadata(&open_pack).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&open_pack)
            .unwrap();
        f.set_len(len - 10).unwrap();
        let (repo, report) =
            Repository::open_or_init(&dir.path().join("repo"), &dir.path().join("key"), 1 << 20)
                .unwrap();
        assert_eq!(report.recovered_packs, 1);
        for (id, f) in &ids[..4] {
            assert_eq!(&repo.get_chunk("a", id).unwrap(), f);
        }
        assert!(!repo.has_chunk("a", &ids[4].0));
    }

    #[test]
    fn the_index_is_rebuilt_from_packs_alone() {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(dir.path());
        let mut ids = Vec::new();
        for seed in 1..=40 {
            let (id, f) = chunk(&repo, "a", seed, 60_000);
            repo.put_chunk("a", Kind::Data, &id, &f).unwrap();
            ids.push(id);
        }
        repo.flush("a").unwrap();
        drop(repo);
        std::fs::remove_dir_all(dir.path().join("repo/index")).unwrap();
        let (repo, report) =
            Repository::open_or_init(&dir.path().join("repo"), &dir.path().join("key"), 1 << 20)
                .unwrap();
        assert_eq!(report.scanned_packs, 1, "{report:?}");
        assert!(ids.iter().all(|id| repo.has_chunk("a", id)));
        let r = repo.repair_index().unwrap();
        assert_eq!(r.chunks, 40);
        assert!(ids.iter().all(|id| repo.has_chunk("a", id)));
    }

    #[test]
    fn a_wrong_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let other = dir.path().join("other-key");
        let err = Repository::open_or_init(&dir.path().join("repo"), &other, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
