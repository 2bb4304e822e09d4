//! Writing a file: under a temporary name, chunk by chunk at its offsets,
//! moved into place only when all of it verified; or left as it is when
//! it is already there with the snapshot's content.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use arca_frame as frame;
use arca_schemas::ChunkId;
use arca_schemas::msg::FetchedChunk;

use super::beneath::Temp;
use super::check::Checked;
use super::failure::EntryError;
use super::metadata::On;
use super::shared::Shared;

/// Block size below which a sparse file's zeros are written, not left as holes.
const HOLE_BLOCK: usize = 4096;

/// Files at least this large are written back as soon as they are whole.
const EARLY_WRITEBACK: u64 = 8 << 20;

/// The temporary file of a file being restored.
pub(super) enum Slot {
    /// Not created yet.
    New,
    /// Being written.
    Open(Temp, File),
    /// Moved into place or given up.
    Closed,
}

/// One file being restored.
pub(super) struct FileState {
    pub(super) node: Checked,
    /// Its name as reported (under the restore root, escaped).
    pub(super) shown: String,
    /// Created with the first chunk, moved into place or dropped with the
    /// last; the descriptor is held only while the file is being written.
    pub(super) tmp: Mutex<Slot>,
    pub(super) remaining: AtomicUsize,
    pub(super) failed: Mutex<Option<EntryError>>,
}

/// The files of one tree chunk being restored.
pub(super) struct Ctx {
    pub(super) shared: Arc<Shared>,
    pub(super) files: Vec<FileState>,
}

impl std::ops::Deref for Ctx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Ctx {
    /// Records that file `i` was not restored.
    fn not_restored(&self, i: usize) {
        self.failed
            .lock()
            .expect("failed lock")
            .insert(self.files[i].node.node().path.clone());
    }

    /// True when the file is already in place with the snapshot's content
    /// (every chunk hashed); its metadata is then set and it is counted.
    pub(super) fn already_there(&self, i: usize) -> bool {
        // Within a restore session the source's chunk ids cannot be
        // computed here: a file in place is simply rewritten.
        if self.granted {
            return false;
        }
        let f = &self.files[i];
        let Ok(Some((dir, name))) = self.beneath.parent(f.node.path()) else {
            return false;
        };
        let Ok(file) = super::beneath::open_regular_at(&dir, &name) else {
            return false;
        };
        match file.metadata() {
            Ok(md) if md.size() == f.node.node().size => {}
            _ => return false,
        }
        let mut offset = 0u64;
        let mut buf = Vec::new();
        // Sizes checked: none above the largest chunk.
        for (id, size) in f.node.pieces() {
            buf.resize(size, 0);
            if file.read_exact_at(&mut buf, offset).is_err()
                || frame::chunk_id(&self.key, &buf) != id
            {
                return false;
            }
            offset += size as u64;
        }
        let mut p = self.progress.lock().expect("progress lock");
        p.stats.entries += 1;
        p.stats.unchanged_files += 1;
        drop(p);
        if let Err(e) = self.apply(On::Open(&file), f.node.node(), &f.shown) {
            self.file_error(&f.shown, e.to_string());
        }
        true
    }

    pub(super) fn fail(&self, i: usize, error: EntryError) {
        self.files[i]
            .failed
            .lock()
            .expect("file lock")
            .get_or_insert(error);
    }

    /// Runs `f` on the file's temporary file, created (at its full size)
    /// in its folder on first use. Writes to one file are serialised;
    /// files go in parallel.
    fn with_file<R>(
        &self,
        i: usize,
        f: impl FnOnce(&File) -> Result<R, EntryError>,
    ) -> Result<R, EntryError> {
        let state = &self.files[i];
        let mut slot = state.tmp.lock().expect("file lock");
        if matches!(*slot, Slot::New) {
            let (dir, _) = self
                .beneath
                .parent(state.node.path())
                .map_err(EntryError::Folder)?
                .ok_or(EntryError::FileAtRoot)?;
            let (tmp, file) = Temp::file(&dir).map_err(EntryError::Create)?;
            file.set_len(state.node.node().size)
                .map_err(EntryError::Size)?;
            *slot = Slot::Open(tmp, file);
        }
        match &*slot {
            Slot::Open(_, file) => f(file),
            _ => Err(EntryError::Closed),
        }
    }

    pub(super) fn write_piece(
        &self,
        i: usize,
        (offset, id, size): (u64, ChunkId, usize),
        got: &FetchedChunk,
    ) {
        if self.files[i].failed.lock().expect("file lock").is_some() {
            return;
        }
        let Some(frame_bytes) = &got.frame else {
            return;
        };
        let sparse = self.files[i].node.node().sparse;
        let written = self
            .check_id(id, got.check)
            .map_err(EntryError::Check)
            .and_then(|check| {
                frame::decode(frame_bytes, &self.key, &check).map_err(EntryError::Chunk)
            })
            .and_then(|data| {
                if data.len() != size {
                    return Err(EntryError::ChunkLength {
                        id,
                        got: data.len(),
                        size,
                    });
                }
                self.with_file(i, |file| {
                    write_at(file, &data, offset, sparse).map_err(EntryError::Write)
                })?;
                Ok(data.len())
            });
        match written {
            Ok(n) => {
                let mut p = self.progress.lock().expect("progress lock");
                p.stats.bytes += n as u64;
                p.stats.chunks += 1;
                p.stats.wire_bytes += frame_bytes.len() as u64;
                p.current = Some(self.files[i].shown.clone());
            }
            Err(e) => self.fail(i, e),
        }
    }

    /// Moves a whole, verified file into place, or reports it.
    pub(super) fn finish_file(&self, i: usize) {
        let f = &self.files[i];
        self.progress.lock().expect("progress lock").stats.entries += 1;
        if let Some(e) = f.failed.lock().expect("file lock").take() {
            *f.tmp.lock().expect("file lock") = Slot::Closed;
            self.not_restored(i);
            self.file_error(
                &f.shown,
                format!("not restored, the original is left as it was: {e}"),
            );
            return;
        }
        // An empty file has had no chunk to create it.
        if let Err(e) = self.with_file(i, |_| Ok(())) {
            *f.tmp.lock().expect("file lock") = Slot::Closed;
            self.not_restored(i);
            self.file_error(&f.shown, e.to_string());
            return;
        }
        let Slot::Open(tmp, file) =
            std::mem::replace(&mut *f.tmp.lock().expect("file lock"), Slot::Closed)
        else {
            return;
        };
        // A large file written: the disk starts on it now rather than at
        // the end (the advice also keeps restored data from crowding the
        // page cache once it is on disk). Small files are left to be
        // written back together.
        if f.node.node().size >= EARLY_WRITEBACK {
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        }
        let result = self
            .apply(On::Open(&file), f.node.node(), &f.shown)
            .map_err(EntryError::from)
            .and_then(|_| {
                let (_, name) = f.node.path().split_last().expect("a file is not the root");
                tmp.place(&super::beneath::c_name(name))
                    .map_err(EntryError::Place)
            });
        match result {
            Ok(()) => self.progress.lock().expect("progress lock").stats.files += 1,
            Err(e) => {
                self.not_restored(i);
                self.file_error(&f.shown, e.to_string())
            }
        }
    }
}

/// Writes `data` at `offset`; for a sparse file, aligned all-zero blocks
/// are skipped (the file was sized first, so they read back as zeros).
fn write_at(file: &File, data: &[u8], offset: u64, sparse: bool) -> std::io::Result<()> {
    if !sparse {
        return file.write_all_at(data, offset);
    }
    let mut at = 0usize;
    while at < data.len() {
        // Up to the next block boundary of the file.
        let pos = offset + at as u64;
        let end = (((pos / HOLE_BLOCK as u64) + 1) * HOLE_BLOCK as u64 - offset) as usize;
        let block = &data[at..end.min(data.len())];
        if block.iter().any(|b| *b != 0) {
            file.write_all_at(block, pos)?;
        }
        at += block.len();
    }
    Ok(())
}
