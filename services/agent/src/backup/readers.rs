//! The reader threads: each reads the files it is handed, cuts and hashes
//! them and queues their chunks in its own sink.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arca_frame as frame;
use arca_schemas::ChunkId;

use crate::error::AgentError;
use crate::meta::{self, Stat};
use crate::progress::Progress;

use super::chunking::{ChunkParams, file_chunks};
use super::sink::ChunkSink;

/// A file for a reader.
pub(super) struct ReadJob {
    pub(super) path: PathBuf,
    pub(super) size_hint: u64,
    pub(super) done: std::sync::mpsc::SyncSender<Result<FileRead, AgentError>>,
}

/// What a reader made of a file.
pub(super) enum FileRead {
    Read {
        chunks: Vec<ChunkId>,
        sizes: Vec<u32>,
        size: u64,
        /// The metadata of the file as opened.
        md: Stat,
        /// Size or mtime differed after reading.
        changed: bool,
    },
    Failed {
        what: &'static str,
        error: std::io::Error,
    },
}

/// Hashes a chunk of a file, notes it in the file's lists, counts it and
/// queues it in `sink`.
pub(super) fn take_chunk(
    key: &[u8; 32],
    data: Vec<u8>,
    chunks: &mut Vec<ChunkId>,
    sizes: &mut Vec<u32>,
    sink: &mut ChunkSink,
    progress: &Mutex<Progress>,
) -> Result<(), AgentError> {
    let id = frame::chunk_id(key, &data);
    chunks.push(id);
    sizes.push(data.len() as u32);
    {
        let mut pr = progress.lock().expect("progress lock");
        pr.stats.bytes += data.len() as u64;
        pr.stats.chunks += 1;
    }
    sink.send(id, data, false)
}

/// Reads, cuts and hashes one file; its chunks go to `sink`.
pub(super) fn read_file(
    path: &Path,
    size_hint: u64,
    params: &ChunkParams,
    key: &[u8; 32],
    sink: &mut ChunkSink,
    progress: &Mutex<Progress>,
) -> Result<FileRead, AgentError> {
    let failed = |what, error| Ok(FileRead::Failed { what, error });
    let file = match meta::open_regular(path) {
        Ok(f) => f,
        Err(e) => return failed("cannot open", e),
    };
    let md = match file.metadata() {
        Ok(md) => md,
        Err(e) => return failed("cannot read metadata", e),
    };
    progress.lock().expect("progress lock").current = Some(path.to_string_lossy().into_owned());
    let mut chunks = Vec::new();
    let mut sizes = Vec::new();
    let mut size = 0u64;
    let cut = match file_chunks(&file, md.size().max(size_hint), params) {
        Ok(c) => c,
        Err(e) => return failed("read failed", e),
    };
    for chunk in cut {
        let data = match chunk {
            Ok(c) => c,
            Err(e) => return failed("read failed", e),
        };
        size += data.len() as u64;
        take_chunk(key, data, &mut chunks, &mut sizes, sink, progress)?;
    }
    // Changed while read: the content may mix old and new bytes.
    let now = file
        .metadata()
        .ok()
        .map(|a| (a.size(), a.mtime(), a.mtime_nsec()));
    let changed = now != Some((md.size(), md.mtime(), md.mtime_nsec())) || size != md.size();
    Ok(FileRead::Read {
        chunks,
        sizes,
        size,
        md: Stat::from(&md),
        changed,
    })
}

/// A reader thread: reads the files it is handed until there are no
/// more, then sends what its sink still holds.
pub(super) fn reader_thread(
    jobs: &Mutex<std::sync::mpsc::Receiver<ReadJob>>,
    params: &ChunkParams,
    key: &[u8; 32],
    mut sink: ChunkSink,
    progress: &Mutex<Progress>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    loop {
        let job = jobs.lock().expect("jobs lock").recv();
        let Ok(job) = job else { break };
        if stop.load(Ordering::Relaxed) {
            // Stopping: the jobs are dropped unread (the walker is told
            // by the closed answer channel) until the walker stops too.
            continue;
        }
        let r = read_file(&job.path, job.size_hint, params, key, &mut sink, progress);
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        // The walker may have stopped waiting: nothing to tell then.
        let _ = job.done.send(r);
    }
    if !stop.load(Ordering::Relaxed)
        && let Err(e) = sink.flush()
    {
        tracing::debug!(error = %e, "a reader could not send its last chunks");
        stop.store(true, Ordering::Relaxed);
    }
}
