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

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arca_schemas::msg::SnapshotInfo;
use arca_schemas::{ChunkId, SnapshotId, codec};
use serde::{Deserialize, Serialize};

use crate::RepoError;
use crate::crypto::Keys;
use crate::fsutil::{sync_dir, write_durable};
use crate::pack::{self, Kind, PACK_MAGIC, RECORD_HEADER};

/// Format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Default target size of a pack.
pub const DEFAULT_PACK_SIZE: u64 = 32 << 20;

/// Records of a pack at most this far apart are read with one read ...
const READ_GAP: u64 = 256 << 10;
/// ... of at most this many bytes.
const READ_SPAN: u64 = 16 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RepoConfig {
    version: u32,
    id: String,
    key_check: String,
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

/// One entry of an index file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IndexEntry {
    /// Chunk id.
    pub id: ChunkId,
    /// Data or tree.
    pub kind: Kind,
    /// Offset of the record in the pack.
    pub offset: u64,
    /// Length of the record.
    pub len: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct IndexFile {
    pack: String,
    entries: Vec<IndexEntry>,
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

struct OpenPack {
    generation: u64,
    file: Arc<File>,
    pack: u32,
    len: u64,
    hasher: blake3::Hasher,
    entries: Vec<IndexEntry>,
}

#[derive(Default)]
struct WriterState {
    open: Option<OpenPack>,
    next_gen: u64,
    synced_gen: u64,
    synced_len: u64,
}

#[derive(Default)]
struct Writer {
    state: Mutex<WriterState>,
    sync: Mutex<()>,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) index: RwLock<HashMap<String, HashMap<ChunkId, Loc>>>,
    pub(crate) packs: RwLock<Vec<PackFile>>,
    writers: Mutex<HashMap<String, Arc<Writer>>>,
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

    fn tmp(&self) -> PathBuf {
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

    // ------------------------------------------------------------ loading

    fn load(&self) -> Result<OpenReport, RepoError> {
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

    /// Index entries of a pack, read from the pack itself.
    fn index_pack(&self, system: &str, path: &Path) -> Result<Vec<IndexEntry>, RepoError> {
        let scan =
            pack::scan(path, &self.keys, system, false).map_err(|e| RepoError::io(path, e))?;
        Ok(entries_of(&scan))
    }

    fn recover_open_packs(&self, report: &mut OpenReport) -> Result<(), RepoError> {
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

    /// Renames a finished pack into place and writes its index file.
    fn seal_file(
        &self,
        system: &str,
        tmp_path: &Path,
        id: &str,
        entries: &[IndexEntry],
    ) -> Result<PathBuf, RepoError> {
        let dest = self.pack_path(system, id);
        let dir = dest.parent().expect("pack has a folder");
        std::fs::create_dir_all(dir).map_err(|e| RepoError::io(dir, e))?;
        std::fs::rename(tmp_path, &dest).map_err(|e| RepoError::io(&dest, e))?;
        sync_dir(dir)?;
        sync_dir(&self.tmp())?;
        self.write_index_file(system, id, entries)?;
        Ok(dest)
    }

    fn write_index_file(
        &self,
        system: &str,
        pack: &str,
        entries: &[IndexEntry],
    ) -> Result<(), RepoError> {
        let file = IndexFile {
            pack: pack.to_owned(),
            entries: entries.to_vec(),
        };
        let mut bytes = codec::encode(&file).expect("index encodes");
        let check = *blake3::hash(&bytes).as_bytes();
        bytes.extend_from_slice(&check);
        write_durable(&self.tmp(), &self.index_path(system, pack), &bytes)
    }

    fn register(
        &self,
        system: &str,
        path: PathBuf,
        id: Option<String>,
        entries: &[IndexEntry],
    ) -> u32 {
        let n = {
            let mut packs = self.inner.packs.write().expect("packs lock");
            packs.push(PackFile { path, id });
            (packs.len() - 1) as u32
        };
        let mut index = self.inner.index.write().expect("index lock");
        let map = index.entry(system.to_owned()).or_default();
        for e in entries {
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
        n
    }

    // ------------------------------------------------------------ chunks

    /// True when the system's scope holds the chunk.
    pub fn has_chunk(&self, system: &str, id: &ChunkId) -> bool {
        self.locate(system, id).is_some()
    }

    /// Bytes of the sealed records the index names for `system`: what the
    /// repository holds for it (its quota's usage).
    pub fn stored_bytes(&self, system: &str) -> u64 {
        self.inner
            .index
            .read()
            .expect("index lock")
            .get(system)
            .map_or(0, |m| m.values().map(|l| u64::from(l.len)).sum())
    }

    /// Length of the sealed record of a chunk of `system`, if stored.
    pub fn chunk_len(&self, system: &str, id: &ChunkId) -> Option<u32> {
        self.locate(system, id).map(|l| l.len)
    }

    pub(crate) fn locate(&self, system: &str, id: &ChunkId) -> Option<Loc> {
        self.inner
            .index
            .read()
            .expect("index lock")
            .get(system)
            .and_then(|m| m.get(id))
            .copied()
    }

    fn writer(&self, system: &str) -> Arc<Writer> {
        self.inner
            .writers
            .lock()
            .expect("writers lock")
            .entry(system.to_owned())
            .or_default()
            .clone()
    }

    /// Stores a chunk frame; returns when it is on disk. Returns false when
    /// the repository already held it. The caller has checked the frame
    /// against its id.
    pub fn put_chunk(
        &self,
        system: &str,
        kind: Kind,
        id: &ChunkId,
        frame: &[u8],
    ) -> Result<bool, RepoError> {
        self.append(system, kind, id, frame, false)
    }

    /// Writes a chunk into the open pack even though it is stored
    /// elsewhere (prune moving it out of a pack it will delete).
    pub(crate) fn put_chunk_again(
        &self,
        system: &str,
        kind: Kind,
        id: &ChunkId,
        frame: &[u8],
    ) -> Result<bool, RepoError> {
        self.append(system, kind, id, frame, true)
    }

    /// Stores several chunks with one sync for all of them (and one per
    /// pack sealed on the way); for each, false when it was already stored.
    /// Nothing is acknowledged before it is durable.
    pub fn put_chunks(
        &self,
        system: &str,
        chunks: &[(Kind, ChunkId, &[u8])],
    ) -> Result<Vec<bool>, RepoError> {
        let mut new = Vec::with_capacity(chunks.len());
        let mut last = None;
        for (kind, id, frame) in chunks {
            match self.append_unsynced(system, *kind, id, frame, false)? {
                None => new.push(false),
                Some((generation, end, file, full)) => {
                    new.push(true);
                    if full {
                        self.seal_open(system, Some(generation))?;
                        last = None;
                    } else {
                        last = Some((generation, end, file));
                    }
                }
            }
        }
        if let Some((generation, end, file)) = last {
            self.sync_upto(&self.writer(system), generation, end, &file)?;
        }
        Ok(new)
    }

    fn append(
        &self,
        system: &str,
        kind: Kind,
        id: &ChunkId,
        frame: &[u8],
        again: bool,
    ) -> Result<bool, RepoError> {
        let Some((generation, end, file, full)) =
            self.append_unsynced(system, kind, id, frame, again)?
        else {
            return Ok(false);
        };
        self.sync_upto(&self.writer(system), generation, end, &file)?;
        if full {
            self.seal_open(system, Some(generation))?;
        }
        Ok(true)
    }

    /// Appends a record to the open pack without syncing it; `None` when
    /// the chunk was already stored. Returns the pack's generation, its
    /// length after the record, its file, and whether it is now full.
    #[allow(clippy::type_complexity)]
    fn append_unsynced(
        &self,
        system: &str,
        kind: Kind,
        id: &ChunkId,
        frame: &[u8],
        again: bool,
    ) -> Result<Option<(u64, u64, Arc<File>, bool)>, RepoError> {
        if !again && self.has_chunk(system, id) {
            return Ok(None);
        }
        let record = pack::record(&self.keys, system, kind, id, frame);
        let writer = self.writer(system);
        let (generation, end, file, full) = {
            let mut st = writer.state.lock().expect("writer lock");
            if !again && self.has_chunk(system, id) {
                return Ok(None);
            }
            if st.open.is_none() {
                st.next_gen += 1;
                let generation = st.next_gen;
                let path = self.tmp().join(format!("{system}.{generation}.pack"));
                let mut f = File::create(&path).map_err(|e| RepoError::io(&path, e))?;
                f.write_all(&PACK_MAGIC)
                    .map_err(|e| RepoError::io(&path, e))?;
                let mut hasher = blake3::Hasher::new();
                hasher.update(&PACK_MAGIC);
                let pack = self.register(system, path, None, &[]);
                st.open = Some(OpenPack {
                    generation,
                    file: Arc::new(f),
                    pack,
                    len: PACK_MAGIC.len() as u64,
                    hasher,
                    entries: Vec::new(),
                });
            }
            let open = st.open.as_mut().expect("just opened");
            let offset = open.len;
            (&*open.file)
                .write_all(&record)
                .map_err(|e| RepoError::io(Path::new("open pack"), e))?;
            open.hasher.update(&record);
            open.len += record.len() as u64;
            let entry = IndexEntry {
                id: *id,
                kind,
                offset,
                len: record.len() as u32,
            };
            open.entries.push(entry.clone());
            self.inner
                .index
                .write()
                .expect("index lock")
                .entry(system.to_owned())
                .or_default()
                .insert(
                    *id,
                    Loc {
                        pack: open.pack,
                        offset,
                        len: entry.len,
                        kind,
                    },
                );
            (
                open.generation,
                open.len,
                open.file.clone(),
                open.len >= self.pack_size,
            )
        };
        Ok(Some((generation, end, file, full)))
    }

    /// Group commit: makes the open pack durable up to `end`.
    fn sync_upto(
        &self,
        writer: &Writer,
        generation: u64,
        end: u64,
        file: &File,
    ) -> Result<(), RepoError> {
        let _one_at_a_time = writer.sync.lock().expect("sync lock");
        let target = {
            let st = writer.state.lock().expect("writer lock");
            if st.synced_gen > generation || (st.synced_gen == generation && st.synced_len >= end) {
                return Ok(());
            }
            st.open
                .as_ref()
                .filter(|o| o.generation == generation)
                .map_or(end, |o| o.len)
        };
        file.sync_data()
            .map_err(|e| RepoError::io(Path::new("open pack"), e))?;
        let mut st = writer.state.lock().expect("writer lock");
        if st.synced_gen < generation || (st.synced_gen == generation && st.synced_len < target) {
            st.synced_gen = generation;
            st.synced_len = target;
        }
        Ok(())
    }

    /// Seals the system's open pack (all of it, or only if it is `generation`).
    fn seal_open(&self, system: &str, generation: Option<u64>) -> Result<(), RepoError> {
        let writer = self.writer(system);
        let mut st = writer.state.lock().expect("writer lock");
        let matches = st
            .open
            .as_ref()
            .is_some_and(|o| generation.is_none_or(|g| g == o.generation));
        if !matches {
            return Ok(());
        }
        let open = st.open.take().expect("checked");
        open.file
            .sync_all()
            .map_err(|e| RepoError::io(Path::new("open pack"), e))?;
        let tmp_path = self.inner.packs.read().expect("packs lock")[open.pack as usize]
            .path
            .clone();
        let id = open.hasher.finalize().to_hex().to_string();
        let dest = self.seal_file(system, &tmp_path, &id, &open.entries)?;
        {
            let mut packs = self.inner.packs.write().expect("packs lock");
            let p = &mut packs[open.pack as usize];
            p.path = dest;
            p.id = Some(id);
        }
        st.synced_gen = open.generation;
        st.synced_len = u64::MAX;
        Ok(())
    }

    /// Seals the system's open pack, so that every chunk stored so far is
    /// in a pack under `data/`. Called before a snapshot is committed.
    pub fn flush(&self, system: &str) -> Result<(), RepoError> {
        self.seal_open(system, None)
    }

    /// Reads, opens and decodes one tree chunk of `system`.
    pub fn tree_batch(
        &self,
        system: &str,
        id: &ChunkId,
    ) -> Result<arca_schemas::tree::TreeBatch, RepoError> {
        let key = self.chunk_id_key(system);
        let plain = crate::frame::decode(&self.get_chunk(system, id)?, &key, id)?;
        arca_schemas::codec::decode(&plain).map_err(|e| RepoError::Corrupt {
            what: format!("tree chunk {id}"),
            detail: e.to_string(),
        })
    }

    /// Reads a chunk frame, checking the record is authentic.
    pub fn get_chunk(&self, system: &str, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        let loc = self
            .locate(system, id)
            .ok_or_else(|| RepoError::NotFound(format!("chunk {id} of system {system}")))?;
        self.read_record(system, id, loc)
    }

    pub(crate) fn read_record(
        &self,
        system: &str,
        id: &ChunkId,
        loc: Loc,
    ) -> Result<Vec<u8>, RepoError> {
        let path = self.pack_file_path(loc.pack);
        let f = Self::open_pack(&path, id)?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset)
            .map_err(|e| Self::read_error(&path, id, e))?;
        self.open_record(system, id, loc.kind, &buf, &path)
    }

    fn pack_file_path(&self, pack: u32) -> PathBuf {
        self.inner.packs.read().expect("packs lock")[pack as usize]
            .path
            .clone()
    }

    fn open_pack(path: &Path, id: &ChunkId) -> Result<File, RepoError> {
        File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RepoError::Corrupt {
                what: format!("chunk {id} in pack {}", path.display()),
                detail: "the pack file is missing".into(),
            },
            _ => RepoError::io(path, e),
        })
    }

    fn read_error(path: &Path, id: &ChunkId, e: std::io::Error) -> RepoError {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => RepoError::Corrupt {
                what: format!("chunk {id} in pack {}", path.display()),
                detail: "the pack is cut short".into(),
            },
            _ => RepoError::io(path, e),
        }
    }

    /// Checks a record's header against the index and opens it.
    fn open_record(
        &self,
        system: &str,
        id: &ChunkId,
        kind: Kind,
        buf: &[u8],
        path: &Path,
    ) -> Result<Vec<u8>, RepoError> {
        let corrupt = |detail: &str| RepoError::Corrupt {
            what: format!("chunk {id} in pack {}", path.display()),
            detail: detail.into(),
        };
        if buf.len() < RECORD_HEADER || &buf[..2] != b"AR" || buf[4..36] != id.0 {
            return Err(corrupt("record header does not match the index"));
        }
        self.keys
            .open(&pack::chunk_aad(system, kind, id), &buf[RECORD_HEADER..])
            .ok_or_else(|| corrupt("record fails authentication (damaged bytes)"))
    }

    /// Reads several chunk frames, each checked as by [`Self::get_chunk`]
    /// and answered in the order asked. Records of one pack that lie
    /// close together are read with one read: a restore asks for chunks
    /// in the order of its files, which is mostly the order they were
    /// written in, and a disk reads one long stretch much faster than
    /// many short ones.
    pub fn get_chunks(&self, system: &str, ids: &[ChunkId]) -> Vec<Result<Vec<u8>, RepoError>> {
        let mut out: Vec<Option<Result<Vec<u8>, RepoError>>> = ids.iter().map(|_| None).collect();
        let mut found: Vec<(usize, Loc)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.locate(system, id) {
                Some(loc) => found.push((i, loc)),
                None => {
                    out[i] = Some(Err(RepoError::NotFound(format!(
                        "chunk {id} of system {system}"
                    ))))
                }
            }
        }
        found.sort_by_key(|(_, l)| (l.pack, l.offset));
        let mut rest = &found[..];
        while let Some(&(_, first)) = rest.first() {
            // A stretch: records of one pack with small gaps between them.
            let mut end = first.offset + first.len as u64;
            let mut n = 1;
            while let Some(&(_, l)) = rest.get(n) {
                let next_end = l.offset + l.len as u64;
                if l.pack != first.pack
                    || l.offset > end + READ_GAP
                    || next_end - first.offset > READ_SPAN
                {
                    break;
                }
                end = end.max(next_end);
                n += 1;
            }
            let (stretch, later) = rest.split_at(n);
            let stretch_first = stretch[0].0;
            rest = later;
            let path = self.pack_file_path(first.pack);
            let mut buf = vec![0u8; (end - first.offset) as usize];
            let read = Self::open_pack(&path, &ids[stretch_first]).and_then(|f| {
                f.read_exact_at(&mut buf, first.offset)
                    .map_err(|e| RepoError::io(&path, e))
            });
            for &(i, loc) in stretch {
                out[i] = Some(match &read {
                    Ok(()) => {
                        let at = (loc.offset - first.offset) as usize;
                        let record = &buf[at..at + loc.len as usize];
                        self.open_record(system, &ids[i], loc.kind, record, &path)
                    }
                    // A pack cut short or unreadable: each record on its
                    // own, so that each gets its own answer.
                    Err(_) => self.read_record(system, &ids[i], loc),
                });
            }
        }
        out.into_iter()
            .map(|r| r.expect("every chunk answered"))
            .collect()
    }

    // ------------------------------------------------------------ snapshots

    fn snapshot_aad(system: &str, id: &SnapshotId) -> Vec<u8> {
        format!("arca-snapshot-v1/{system}/{id}").into_bytes()
    }

    /// Writes a snapshot record. Every chunk it names must already be stored.
    pub fn write_snapshot(&self, record: &SnapshotRecord) -> Result<(), RepoError> {
        let (system, id) = (&record.info.system, &record.info.id);
        let bytes = codec::encode(record).expect("snapshot encodes");
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
        codec::decode(&plain).map_err(|e| corrupt(e.to_string()))
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

    // ------------------------------------------------------------ repair

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

pub(crate) fn read_index_file(path: &Path) -> Option<IndexFile> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 32 {
        return None;
    }
    let (body, check) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != check {
        return None;
    }
    codec::decode(body).ok()
}

/// The index entries of the records a scan found.
fn entries_of(scan: &pack::Scan) -> Vec<IndexEntry> {
    scan.records
        .iter()
        .map(|r| IndexEntry {
            id: r.id,
            kind: r.kind,
            offset: r.offset,
            len: r.len,
        })
        .collect()
}

/// (name, path) of every folder directly in `dir`.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, RepoError> {
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
    use crate::frame;

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
