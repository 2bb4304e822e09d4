//! Writing a snapshot back onto the system.
//!
//! The tree is read one tree chunk at a time, each narrowed to the paths
//! the restore's filter takes (with the folders above them), while the
//! files of the chunks before it are still being fetched: memory holds
//! the chunks in flight, the folders and the links, never the whole tree.
//! Folders are created. A file that
//! already exists with the same size is read and each of its chunks hashed:
//! when all match the snapshot it is left as it is (only its metadata is
//! set), so a restore over a tree, or one run again after an interruption,
//! rewrites only what differs. The chunks of every other file are fetched
//! in batches (many small chunks per request), with up to `window`
//! requests in flight across files, in any order, and
//! each is checked against the id recorded at backup time (invariant 6) and
//! written at its offset (the tree records every chunk's length); all-zero
//! blocks of a sparse file are left as holes. A file is written under a
//! temporary name beside its destination and renamed into place only when
//! all of it verified, so a failed file never replaces a good one. Other
//! names of hard-linked files are linked to their first name; FIFOs,
//! device nodes, sockets and symlinks follow; folder metadata is applied
//! last, deepest first, because writing into a folder changes its mtime.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_repo::frame;
use arca_runtime::rpc;
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::{
    ChunkData, ChunksData, FetchedChunk, GetChunk, GetChunks, GetSnapshot, SnapshotReply,
    StartRestoreTransfer, TransferOutcome,
};
use arca_schemas::subject::{self, MediaDataVerb};
use arca_schemas::tree::{Node, NodeKind, TreeBatch};
use arca_schemas::trust::TokenClaims;
use arca_schemas::{ChunkId, codec};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::Progress;
use crate::meta::{self, Names};
use crate::select::{self, Filter};

/// Block size below which a sparse file's zeros are written, not left as holes.
const HOLE_BLOCK: usize = 4096;

/// Runs one restore transfer to its end.
pub async fn run(
    client: async_nats::Client,
    system: String,
    req: StartRestoreTransfer,
    claims: TokenClaims,
    window: usize,
    timeout: Duration,
    progress: Arc<Mutex<Progress>>,
) -> TransferOutcome {
    let result = restore(&client, &system, &req, &claims, window, timeout, &progress).await;
    let p = progress.lock().expect("progress lock");
    TransferOutcome {
        stats: p.stats.clone(),
        snapshot: Some(req.snapshot.clone()),
        file_errors: crate::cap_file_errors(&p.file_errors),
        file_warnings: crate::cap_file_errors(&p.file_warnings),
        error: result.err(),
    }
}

/// Checks that the scheduler's token allows restoring `req` onto `system`:
/// the snapshot it names, and, when the snapshot belongs to another system
/// (`owner`, once media said so, or the token's own word before), the
/// operator's cross-system override.
pub fn check_grant(
    system: &str,
    req: &StartRestoreTransfer,
    claims: &TokenClaims,
    owner: Option<&str>,
) -> Result<(), ErrorReply> {
    if claims.snapshot.as_ref() != Some(&req.snapshot) {
        return Err(ErrorReply::forbidden(format!(
            "refused: the job token does not name snapshot {}",
            req.snapshot
        )));
    }
    let owner = owner.or(claims.source_system.as_deref()).unwrap_or(system);
    if claims.source_system.as_deref().is_some_and(|s| s != owner) {
        return Err(ErrorReply::forbidden(format!(
            "refused: snapshot {} belongs to {owner}, the job token says {}",
            req.snapshot,
            claims.source_system.as_deref().unwrap_or_default()
        )));
    }
    if owner != system && !claims.cross_system {
        return Err(ErrorReply::forbidden(format!(
            "refused: snapshot {} belongs to system {owner}; this agent restores only its own \
             system's snapshots unless an operator allowed a cross-system restore",
            req.snapshot
        )));
    }
    Ok(())
}

async fn get_chunk(
    client: &async_nats::Client,
    subject: &str,
    id: ChunkId,
    session: Option<String>,
    timeout: Duration,
) -> Result<Vec<u8>, ErrorReply> {
    let body = GetChunk { id, session };
    let r: ChunkData = rpc::retry(Duration::from_secs(30), || {
        rpc::request_with_timeout(client, subject.to_owned(), &body, timeout)
    })
    .await
    .map_err(|e| e.to_reply())?;
    Ok(r.frame)
}

/// Most chunks, and plain bytes, fetched in one request.
const GET_BATCH_CHUNKS: usize = 256;
const GET_BATCH_BYTES: usize = 2 << 20;

/// Fetches several chunks; `Err` when the request as a whole failed.
async fn get_chunks(
    client: &async_nats::Client,
    subject: &str,
    ids: Vec<ChunkId>,
    session: Option<String>,
    timeout: Duration,
) -> Result<Vec<FetchedChunk>, ErrorReply> {
    let n = ids.len();
    let body = GetChunks { ids, session };
    let r: ChunksData = rpc::retry(Duration::from_secs(30), || {
        rpc::request_with_timeout(client, subject.to_owned(), &body, timeout)
    })
    .await
    .map_err(|e| e.to_reply())?;
    if r.chunks.len() != n {
        return Err(ErrorReply::internal(
            "media answered for a different number of chunks",
        ));
    }
    Ok(r.chunks)
}

/// The temporary file of a file being restored.
/// Files at least this large are written back as soon as they are whole.
const EARLY_WRITEBACK: u64 = 8 << 20;

enum Slot {
    /// Not created yet.
    New,
    /// Being written.
    Open(tempfile::NamedTempFile),
    /// Moved into place or given up.
    Closed,
}

/// One file being restored.
struct FileState {
    node: Node,
    dest: PathBuf,
    /// Created with the first chunk, persisted or dropped with the last;
    /// the descriptor is held only while the file is being written.
    tmp: Mutex<Slot>,
    remaining: AtomicUsize,
    failed: Mutex<Option<String>>,
}

/// What every part of a restore shares.
struct Shared {
    root: PathBuf,
    key: [u8; 32],
    progress: Arc<Mutex<Progress>>,
    names: Mutex<Names>,
    /// Files of the restore that were not restored (other names of them
    /// are not linked).
    failed: Mutex<HashSet<Vec<u8>>>,
}

/// The files of one tree chunk being restored.
struct Ctx {
    shared: Arc<Shared>,
    files: Vec<FileState>,
}

impl std::ops::Deref for Ctx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// A path's key in the set of files a restore writes.
fn path_key(path: &[u8]) -> [u8; 16] {
    let h = blake3::hash(path);
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.as_bytes()[..16]);
    k
}

async fn restore(
    client: &async_nats::Client,
    system: &str,
    req: &StartRestoreTransfer,
    claims: &TokenClaims,
    window: usize,
    timeout: Duration,
    progress: &Arc<Mutex<Progress>>,
) -> Result<(), ErrorReply> {
    let snap: SnapshotReply = rpc::request(
        client,
        subject::media_data(&req.media, system, MediaDataVerb::Snapshot),
        &GetSnapshot {
            snapshot: req.snapshot.clone(),
            session: req.session.clone(),
        },
    )
    .await
    .map_err(|e| e.to_reply())?;
    // Before anything is written, not even the target folder.
    check_grant(system, req, claims, Some(&snap.info.system))?;
    let root = match &req.target {
        Some(t) => {
            let t = PathBuf::from(t);
            if !t.is_absolute() {
                return Err(ErrorReply::bad_request(format!(
                    "restore target {} is not an absolute path",
                    t.display()
                )));
            }
            check_writable(&t)?;
            t
        }
        None => PathBuf::from("/"),
    };
    let filter = Filter::new(&req.filter).map_err(ErrorReply::bad_request)?;
    let shared = Arc::new(Shared {
        key: req.chunk_key,
        progress: progress.clone(),
        names: Mutex::new(Names::default()),
        failed: Mutex::new(HashSet::new()),
        root,
    });
    // The tree is read one chunk at a time and its files are fetched while
    // the next chunk is read: memory holds the chunks in flight, the
    // folders (for their metadata, set last) and links, not the tree.
    let get_subject = subject::media_data(&req.media, system, MediaDataVerb::Get);
    let get_many = subject::media_data(&req.media, system, MediaDataVerb::GetMany);
    let mut sel = Selector::new(filter);
    let (mut dirs, mut others, mut links) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_flight = FuturesUnordered::new();
    for id in &snap.tree {
        let frame_bytes =
            get_chunk(client, &get_subject, *id, req.session.clone(), timeout).await?;
        let plain = frame::decode(&frame_bytes, &req.chunk_key, id).map_err(|e| e.to_reply())?;
        let batch: TreeBatch = codec::decode(&plain).map_err(|e| {
            ErrorReply::new(
                arca_schemas::ErrorCode::Corrupt,
                format!("tree chunk {id}: {e}"),
            )
        })?;
        // Folders first, in walk order. Other names of a file restored
        // here are linked once it is in place.
        let (mut new_dirs, mut files) = (Vec::new(), Vec::new());
        for n in sel.take(batch.nodes) {
            match n.kind {
                NodeKind::Dir => new_dirs.push(n),
                NodeKind::File { .. } => match &n.hardlink {
                    Some(first) if sel.files.contains(&path_key(first)) => links.push(n),
                    _ => {
                        sel.files.insert(path_key(&n.path));
                        files.push(n)
                    }
                },
                _ => others.push(n),
            }
        }
        let ctx = Ctx {
            files: files
                .into_iter()
                .map(|node| FileState {
                    remaining: AtomicUsize::new(node.chunks().len()),
                    dest: shared.dest(&node.path),
                    node,
                    tmp: Mutex::new(Slot::New),
                    failed: Mutex::new(None),
                })
                .collect(),
            shared: shared.clone(),
        };
        // Folders made; files already in place with the same content left
        // as they are; empty files need no chunk.
        let (ctx, made, skip) = tokio::task::spawn_blocking(move || {
            new_dirs.retain(|d| ctx.make_dir(d));
            let mut skip = vec![false; ctx.files.len()];
            for (i, s) in skip.iter_mut().enumerate() {
                if ctx.already_there(i) {
                    *s = true;
                } else if ctx.files[i].remaining.load(Ordering::Relaxed) == 0 {
                    ctx.finish_file(i);
                }
            }
            (ctx, new_dirs, skip)
        })
        .await
        .map_err(|e| ErrorReply::internal(e.to_string()))?;
        dirs.extend(made);
        let ctx = Arc::new(ctx);
        for batch in piece_batches(&ctx, &skip) {
            while in_flight.len() >= window.max(1) {
                in_flight.next().await;
            }
            in_flight.push(fetch_and_write(
                ctx.clone(),
                batch,
                client.clone(),
                get_many.clone(),
                req.session.clone(),
                timeout,
            ));
        }
    }
    while in_flight.next().await.is_some() {}
    if !sel.any && !req.filter.is_empty() {
        return Err(ErrorReply::bad_request(
            "no path of the snapshot matches the restore's --include/--exclude patterns; list them with `arca ls`",
        ));
    }

    let ctx2 = shared.clone();
    tokio::task::spawn_blocking(move || {
        for l in &links {
            ctx2.link(l);
        }
        for n in &others {
            let dest = ctx2.dest(&n.path);
            ctx2.progress.lock().expect("progress lock").stats.entries += 1;
            let made = match &n.kind {
                NodeKind::Symlink { target } => symlink(&dest, target),
                _ => meta::make_special(&dest, n),
            };
            if let Err(e) = made.and_then(|_| ctx2.apply(&dest, n)) {
                ctx2.file_error(&dest, e);
            }
        }
        // Deepest first, so setting a folder's mtime is not undone by
        // writing into one of its subfolders.
        for d in dirs.iter().rev() {
            let dest = ctx2.dest(&d.path);
            if let Err(e) = ctx2.apply(&dest, d) {
                ctx2.file_error(&dest, e);
            }
        }
        // The restore ends when what it wrote is on disk.
        std::fs::File::open(&ctx2.root)
            .and_then(|root| rustix::fs::syncfs(&root).map_err(std::io::Error::from))
            .map_err(|e| {
                ErrorReply::internal(format!(
                    "the restored files could not be flushed to disk: {e}"
                ))
            })
    })
    .await
    .map_err(|e| ErrorReply::internal(format!("writer crashed: {e}")))??;
    Ok(())
}

impl Shared {
    fn dest(&self, path: &[u8]) -> PathBuf {
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn apply(&self, path: &Path, node: &Node) -> Result<(), String> {
        meta::apply(path, node, &mut self.names.lock().expect("names lock"))
    }

    /// Makes another name of a file restored in this run.
    fn link(&self, node: &Node) {
        let dest = self.dest(&node.path);
        self.progress.lock().expect("progress lock").stats.entries += 1;
        let first = node.hardlink.as_deref().unwrap_or_default();
        let first_dest = self.dest(first);
        let linked = if self.failed.lock().expect("failed lock").contains(first) {
            Err(format!(
                "not restored: it is another name of {}, which was not restored",
                first_dest.display()
            ))
        } else {
            replace_with(&dest, |d| std::fs::hard_link(&first_dest, d))
                .map_err(|e| format!("cannot link to {}: {e}", first_dest.display()))
        };
        match linked {
            Ok(()) => self.progress.lock().expect("progress lock").stats.files += 1,
            Err(e) => self.file_error(&dest, e),
        }
    }

    fn file_error(&self, path: &Path, error: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_failed(path, error);
    }

    /// Creates a folder; false when it could not be.
    fn make_dir(&self, node: &Node) -> bool {
        let dest = self.dest(&node.path);
        self.progress.lock().expect("progress lock").stats.entries += 1;
        match std::fs::create_dir_all(&dest) {
            Ok(()) => true,
            Err(e) => {
                self.file_error(&dest, format!("cannot create folder: {e}"));
                false
            }
        }
    }
}

impl Ctx {
    /// Records that file `i` was not restored.
    fn not_restored(&self, i: usize) {
        self.failed
            .lock()
            .expect("failed lock")
            .insert(self.files[i].node.path.clone());
    }

    /// True when the file is already in place with the snapshot's content
    /// (every chunk hashed); its metadata is then set and it is counted.
    fn already_there(&self, i: usize) -> bool {
        let f = &self.files[i];
        let Ok(md) = std::fs::symlink_metadata(&f.dest) else {
            return false;
        };
        if !md.is_file() || md.size() != f.node.size {
            return false;
        }
        let NodeKind::File { chunks, sizes } = &f.node.kind else {
            return false;
        };
        let Ok(file) = meta::open_regular(&f.dest) else {
            return false;
        };
        let mut offset = 0u64;
        let mut buf = Vec::new();
        for (id, size) in chunks.iter().zip(sizes) {
            buf.resize(*size as usize, 0);
            if file.read_exact_at(&mut buf, offset).is_err()
                || frame::chunk_id(&self.key, &buf) != *id
            {
                return false;
            }
            offset += *size as u64;
        }
        drop(file);
        let mut p = self.progress.lock().expect("progress lock");
        p.stats.entries += 1;
        p.stats.unchanged_files += 1;
        drop(p);
        if let Err(e) = self.apply(&f.dest, &f.node) {
            self.file_error(&f.dest, e);
        }
        true
    }

    fn fail(&self, i: usize, error: String) {
        self.files[i]
            .failed
            .lock()
            .expect("file lock")
            .get_or_insert(error);
    }

    /// Runs `f` on the file's temporary file, created (at its full size)
    /// on first use. Writes to one file are serialised; files go in parallel.
    fn with_file<R>(
        &self,
        i: usize,
        f: impl FnOnce(&File) -> Result<R, String>,
    ) -> Result<R, String> {
        let state = &self.files[i];
        let mut slot = state.tmp.lock().expect("file lock");
        if matches!(*slot, Slot::New) {
            let parent = state.dest.parent().unwrap_or(Path::new("/")).to_path_buf();
            let tmp = std::fs::create_dir_all(&parent)
                .and_then(|_| {
                    tempfile::Builder::new()
                        .prefix(".arca-restore-")
                        .tempfile_in(&parent)
                })
                .map_err(|e| format!("cannot create file: {e}"))?;
            tmp.as_file()
                .set_len(state.node.size)
                .map_err(|e| format!("cannot size file: {e}"))?;
            *slot = Slot::Open(tmp);
        }
        match &*slot {
            Slot::Open(tmp) => f(tmp.as_file()),
            _ => Err("the file was already closed".into()),
        }
    }

    fn write_piece(&self, i: usize, offset: u64, id: ChunkId, frame_bytes: &[u8]) {
        if self.files[i].failed.lock().expect("file lock").is_some() {
            return;
        }
        let sparse = self.files[i].node.sparse;
        let written = frame::decode(frame_bytes, &self.key, &id)
            .map_err(|e| e.to_string())
            .and_then(|data| {
                self.with_file(i, |file| {
                    write_at(file, &data, offset, sparse).map_err(|e| format!("write failed: {e}"))
                })?;
                Ok(data.len())
            });
        match written {
            Ok(n) => {
                let mut p = self.progress.lock().expect("progress lock");
                p.stats.bytes += n as u64;
                p.stats.chunks += 1;
                p.stats.wire_bytes += frame_bytes.len() as u64;
                p.current = Some(self.files[i].dest.to_string_lossy().into_owned());
            }
            Err(e) => self.fail(i, e),
        }
    }

    /// Renames a whole, verified file into place, or reports it.
    fn finish_file(&self, i: usize) {
        let f = &self.files[i];
        self.progress.lock().expect("progress lock").stats.entries += 1;
        if let Some(e) = f.failed.lock().expect("file lock").take() {
            *f.tmp.lock().expect("file lock") = Slot::Closed;
            self.not_restored(i);
            self.file_error(
                &f.dest,
                format!("not restored, the original is left as it was: {e}"),
            );
            return;
        }
        // An empty file has had no chunk to create it.
        if let Err(e) = self.with_file(i, |_| Ok(())) {
            *f.tmp.lock().expect("file lock") = Slot::Closed;
            self.not_restored(i);
            self.file_error(&f.dest, e);
            return;
        }
        let Slot::Open(tmp) =
            std::mem::replace(&mut *f.tmp.lock().expect("file lock"), Slot::Closed)
        else {
            return;
        };
        // A large file written: the disk starts on it now rather than at
        // the end (the advice also keeps restored data from crowding the
        // page cache once it is on disk). Small files are left to be
        // written back together.
        if f.node.size >= EARLY_WRITEBACK {
            let _ = rustix::fs::fadvise(tmp.as_file(), 0, None, rustix::fs::Advice::DontNeed);
        }
        let result = self.apply(tmp.path(), &f.node).and_then(|_| {
            tmp.persist(&f.dest)
                .map(|_| ())
                .map_err(|e| format!("cannot move into place: {}", e.error))
        });
        match result {
            Ok(()) => self.progress.lock().expect("progress lock").stats.files += 1,
            Err(e) => {
                self.not_restored(i);
                self.file_error(&f.dest, e)
            }
        }
    }
}

fn symlink(dest: &Path, target: &[u8]) -> Result<(), String> {
    replace_with(dest, |d| {
        std::os::unix::fs::symlink(OsStr::from_bytes(target), d)
    })
    .map_err(|e| format!("cannot create symlink: {e}"))
}

/// Makes `dest` with `make`, after removing a non-folder already there.
fn replace_with(
    dest: &Path,
    make: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if let Ok(md) = std::fs::symlink_metadata(dest)
        && !md.is_dir()
    {
        std::fs::remove_file(dest)?;
    }
    make(dest)
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

/// Chooses the nodes a restore takes, tree chunk by tree chunk, in walk
/// order: those the filter takes, and with include patterns the folders
/// above them (held until something under them is taken).
struct Selector {
    filter: Filter,
    held: Vec<Node>,
    /// Paths (keys) of the files taken, for deciding whether another name
    /// of a file is a link or a copy.
    files: HashSet<[u8; 16]>,
    /// True once anything was taken.
    any: bool,
}

impl Selector {
    fn new(filter: Filter) -> Selector {
        Selector {
            filter,
            held: Vec::new(),
            files: HashSet::new(),
            any: false,
        }
    }

    fn take(&mut self, nodes: Vec<Node>) -> Vec<Node> {
        let mut out = Vec::new();
        for n in nodes {
            let is_dir = matches!(n.kind, NodeKind::Dir);
            if self.filter.has_includes() {
                while let Some(last) = self.held.last()
                    && !select::is_inside(&n.path, &last.path)
                {
                    self.held.pop();
                }
            }
            if self.filter.takes(&n.path) {
                // The held folders above it, outermost first.
                out.extend(
                    std::mem::take(&mut self.held)
                        .into_iter()
                        .filter(|d| select::is_inside(&n.path, &d.path)),
                );
                out.push(n);
                self.any = true;
            } else if is_dir && self.filter.has_includes() && !self.filter.excluded(&n.path) {
                self.held.push(n);
            }
        }
        out
    }
}

/// The chunks of the files of `ctx` not skipped, grouped for fetching:
/// (file, offset, chunk) by at most [`GET_BATCH_CHUNKS`] and
/// [`GET_BATCH_BYTES`].
fn piece_batches(ctx: &Ctx, skip: &[bool]) -> Vec<Vec<(usize, u64, ChunkId)>> {
    let mut batches: Vec<Vec<(usize, u64, ChunkId)>> = Vec::new();
    let mut bytes = 0usize;
    for (i, f) in ctx.files.iter().enumerate() {
        if skip[i] {
            continue;
        }
        let NodeKind::File { chunks, sizes } = &f.node.kind else {
            continue;
        };
        let mut offset = 0u64;
        for (id, size) in chunks.iter().zip(sizes) {
            let fits = batches.last().is_some_and(|b| {
                b.len() < GET_BATCH_CHUNKS && bytes + *size as usize <= GET_BATCH_BYTES
            });
            if !fits {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += *size as usize;
            batches.last_mut().expect("pushed").push((i, offset, *id));
            offset += *size as u64;
        }
    }
    batches
}

/// Fetches a batch of chunks and writes each at its offset; a file is
/// finished when its last chunk is written.
async fn fetch_and_write(
    ctx: Arc<Ctx>,
    batch: Vec<(usize, u64, ChunkId)>,
    client: async_nats::Client,
    subject: String,
    session: Option<String>,
    timeout: Duration,
) {
    let ids: Vec<ChunkId> = batch.iter().map(|(_, _, id)| *id).collect();
    let fetched = get_chunks(&client, &subject, ids, session, timeout).await;
    let _ = tokio::task::spawn_blocking(move || {
        let fetched: Vec<Result<FetchedChunk, ErrorReply>> = match fetched {
            Ok(f) => f.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e); batch.len()],
        };
        for ((i, offset, id), got) in batch.into_iter().zip(fetched) {
            match got {
                Ok(FetchedChunk {
                    frame: Some(frame), ..
                }) => ctx.write_piece(i, offset, id, &frame),
                Ok(FetchedChunk { error, .. }) => ctx.fail(
                    i,
                    format!(
                        "chunk {id}: {}",
                        error.map(|e| e.message).unwrap_or_else(|| "missing".into())
                    ),
                ),
                Err(e) => ctx.fail(i, format!("chunk {id}: {}", e.message)),
            }
            if ctx.files[i].remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                ctx.finish_file(i);
            }
        }
    })
    .await;
}

/// Refuses a target that cannot be written, before anything is written.
fn check_writable(target: &Path) -> Result<(), ErrorReply> {
    let refuse = |e: std::io::Error| {
        ErrorReply::bad_request(format!(
            "restore target {} is not writable: {e}; choose another folder with --target",
            target.display()
        ))
    };
    std::fs::create_dir_all(target).map_err(refuse)?;
    let probe = tempfile::Builder::new()
        .prefix(".arca-probe-")
        .tempfile_in(target)
        .map_err(refuse)?;
    drop(probe);
    Ok(())
}
