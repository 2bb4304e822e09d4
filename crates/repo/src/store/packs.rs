//! Packs and chunk IO: appending sealed chunk records to a system's open
//! pack with group commit, sealing full packs into `data/`, and reading
//! records back (one at a time, or many in few long reads).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arca_schemas::ChunkId;

use super::index::IndexEntry;
use super::{Loc, Repository};
use crate::RepoError;
use crate::fsutil::sync_dir;
use crate::pack::{self, Kind, PACK_MAGIC, RECORD_HEADER};

/// Records of a pack at most this far apart are read with one read ...
const READ_GAP: u64 = 256 << 10;
/// ... of at most this many bytes.
const READ_SPAN: u64 = 16 << 20;
pub(super) struct OpenPack {
    generation: u64,
    file: Arc<File>,
    pack: u32,
    len: u64,
    hasher: blake3::Hasher,
    entries: Vec<IndexEntry>,
}

#[derive(Default)]
pub(super) struct WriterState {
    open: Option<OpenPack>,
    next_gen: u64,
    synced_gen: u64,
    synced_len: u64,
}

#[derive(Default)]
pub(crate) struct Writer {
    state: Mutex<WriterState>,
    sync: Mutex<()>,
}

impl Repository {
    /// Renames a finished pack into place and writes its index file.
    pub(super) fn seal_file(
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
    pub(super) fn writer(&self, system: &str) -> Arc<Writer> {
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

    pub(super) fn append(
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
    pub(super) fn append_unsynced(
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
    pub(super) fn sync_upto(
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
    pub(super) fn seal_open(&self, system: &str, generation: Option<u64>) -> Result<(), RepoError> {
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
        Ok(arca_frame::decode_tree(
            &self.get_chunk(system, id)?,
            &key,
            id,
        )?)
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

    pub(super) fn pack_file_path(&self, pack: u32) -> PathBuf {
        self.inner.packs.read().expect("packs lock")[pack as usize]
            .path
            .clone()
    }

    pub(super) fn open_pack(path: &Path, id: &ChunkId) -> Result<File, RepoError> {
        File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RepoError::Corrupt {
                what: format!("chunk {id} in pack {}", path.display()),
                detail: "the pack file is missing".into(),
            },
            _ => RepoError::io(path, e),
        })
    }

    pub(super) fn read_error(path: &Path, id: &ChunkId, e: std::io::Error) -> RepoError {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => RepoError::Corrupt {
                what: format!("chunk {id} in pack {}", path.display()),
                detail: "the pack is cut short".into(),
            },
            _ => RepoError::io(path, e),
        }
    }

    /// Checks a record's header against the index and opens it.
    pub(super) fn open_record(
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
}
