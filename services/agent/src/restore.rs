//! Writing a snapshot back onto the system.
//!
//! The tree is read first. Folders are created, then the chunks of every
//! file are fetched with up to `window` requests in flight across files,
//! in any order, and each is checked against the id recorded at backup time
//! (invariant 6) and written at its offset (the tree records every chunk's
//! length). A file is written under a temporary name beside its
//! destination and renamed into place only when all of it verified, so a
//! failed file never replaces a good one. Symlinks follow; folder metadata
//! is applied last, deepest first, because writing into a folder changes
//! its mtime.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_repo::frame;
use arca_runtime::rpc;
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::{
    ChunkData, GetChunk, GetSnapshot, SnapshotReply, StartRestoreTransfer, TransferOutcome,
};
use arca_schemas::subject::{self, MediaDataVerb};
use arca_schemas::tree::{Node, NodeKind, TreeBatch};
use arca_schemas::trust::TokenClaims;
use arca_schemas::{ChunkId, codec};
use futures::stream::{self, StreamExt};

use crate::Progress;

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

/// The temporary file of a file being restored.
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

struct Ctx {
    root: PathBuf,
    key: [u8; 32],
    progress: Arc<Mutex<Progress>>,
    files: Vec<FileState>,
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
    let get_subject = subject::media_data(&req.media, system, MediaDataVerb::Get);
    let mut nodes = Vec::new();
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
        nodes.extend(batch.nodes);
    }

    // Folders first, in walk order.
    let (mut dirs, mut links, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for n in nodes {
        match n.kind {
            NodeKind::Dir => dirs.push(n),
            NodeKind::Symlink { .. } => links.push(n),
            NodeKind::File { .. } => files.push(n),
        }
    }
    let ctx = Arc::new(Ctx {
        key: req.chunk_key,
        progress: progress.clone(),
        files: Vec::new(),
        root,
    });
    let dirs = {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || {
            dirs.retain(|d| ctx.make_dir(d));
            dirs
        })
        .await
        .map_err(|e| ErrorReply::internal(e.to_string()))?
    };
    let mut ctx = Arc::try_unwrap(ctx).unwrap_or_else(|_| unreachable!("no other owner"));
    ctx.files = files
        .into_iter()
        .map(|node| {
            let n = match &node.kind {
                NodeKind::File { chunks, .. } => chunks.len(),
                _ => 0,
            };
            FileState {
                dest: ctx.dest(&node.path),
                node,
                tmp: Mutex::new(Slot::New),
                remaining: AtomicUsize::new(n),
                failed: Mutex::new(None),
            }
        })
        .collect();
    let ctx = Arc::new(ctx);

    // Empty files need no chunk.
    {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..ctx.files.len() {
                if ctx.files[i].remaining.load(Ordering::Relaxed) == 0 {
                    ctx.finish_file(i);
                }
            }
        })
        .await
        .map_err(|e| ErrorReply::internal(e.to_string()))?;
    }

    // Every chunk of every file, fetched and written in any order.
    let pieces: Vec<(usize, u64, ChunkId)> = ctx
        .files
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            let (chunks, sizes) = match &f.node.kind {
                NodeKind::File { chunks, sizes } => (chunks.clone(), sizes.clone()),
                _ => (Vec::new(), Vec::new()),
            };
            let mut offset = 0u64;
            let offsets: Vec<u64> = sizes
                .iter()
                .map(|s| {
                    let o = offset;
                    offset += *s as u64;
                    o
                })
                .collect();
            chunks
                .into_iter()
                .zip(offsets)
                .map(move |(id, off)| (i, off, id))
        })
        .collect();
    let mut done = stream::iter(pieces)
        .map(|(i, offset, id)| {
            let ctx = ctx.clone();
            let subject = get_subject.clone();
            let client = client.clone();
            let session = req.session.clone();
            async move {
                let fetched = get_chunk(&client, &subject, id, session, timeout).await;
                let ctx2 = ctx.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    match fetched {
                        Ok(frame) => ctx2.write_piece(i, offset, id, &frame),
                        Err(e) => ctx2.fail(i, format!("chunk {id}: {}", e.message)),
                    }
                    if ctx2.files[i].remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        ctx2.finish_file(i);
                    }
                })
                .await;
            }
        })
        .buffer_unordered(window.max(1));
    while done.next().await.is_some() {}
    drop(done);

    let ctx2 = ctx.clone();
    tokio::task::spawn_blocking(move || {
        for l in &links {
            let dest = ctx2.dest(&l.path);
            if let NodeKind::Symlink { target } = &l.kind {
                ctx2.progress.lock().expect("progress lock").stats.entries += 1;
                if let Err(e) = symlink(&dest, target, l) {
                    ctx2.file_error(&dest, e);
                }
            }
        }
        // Deepest first, so setting a folder's mtime is not undone by
        // writing into one of its subfolders.
        for d in dirs.iter().rev() {
            let dest = ctx2.dest(&d.path);
            if let Err(e) = apply_metadata(&dest, d, false) {
                ctx2.file_error(&dest, e);
            }
        }
    })
    .await
    .map_err(|e| ErrorReply::internal(format!("writer crashed: {e}")))?;
    Ok(())
}

impl Ctx {
    fn dest(&self, path: &[u8]) -> PathBuf {
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
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
        let written = frame::decode(frame_bytes, &self.key, &id)
            .map_err(|e| e.to_string())
            .and_then(|data| {
                self.with_file(i, |file| {
                    file.write_all_at(&data, offset)
                        .map_err(|e| format!("write failed: {e}"))
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
            self.file_error(
                &f.dest,
                format!("not restored, the original is left as it was: {e}"),
            );
            return;
        }
        // An empty file has had no chunk to create it.
        if let Err(e) = self.with_file(i, |_| Ok(())) {
            *f.tmp.lock().expect("file lock") = Slot::Closed;
            self.file_error(&f.dest, e);
            return;
        }
        let Slot::Open(tmp) =
            std::mem::replace(&mut *f.tmp.lock().expect("file lock"), Slot::Closed)
        else {
            return;
        };
        let result = apply_metadata(tmp.path(), &f.node, false).and_then(|_| {
            tmp.persist(&f.dest)
                .map(|_| ())
                .map_err(|e| format!("cannot move into place: {}", e.error))
        });
        match result {
            Ok(()) => self.progress.lock().expect("progress lock").stats.files += 1,
            Err(e) => self.file_error(&f.dest, e),
        }
    }
}

fn symlink(dest: &Path, target: &[u8], node: &Node) -> Result<(), String> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create folder: {e}"))?;
    }
    if let Ok(md) = std::fs::symlink_metadata(dest)
        && !md.is_dir()
    {
        std::fs::remove_file(dest).map_err(|e| format!("cannot replace: {e}"))?;
    }
    std::os::unix::fs::symlink(OsStr::from_bytes(target), dest)
        .map_err(|e| format!("cannot create symlink: {e}"))?;
    apply_metadata(dest, node, true)
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

/// Sets owner, mode and mtime. Symlinks get owner and mtime only.
fn apply_metadata(path: &Path, node: &Node, symlink: bool) -> Result<(), String> {
    let owner = if symlink {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
    } else {
        std::os::unix::fs::chown(path, Some(node.uid), Some(node.gid))
    };
    // Only root may give files away; others keep their own ownership.
    if let Err(e) = owner
        && rustix::process::geteuid().is_root()
    {
        return Err(format!("cannot set owner {}:{}: {e}", node.uid, node.gid));
    }
    if !symlink {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
            .map_err(|e| format!("cannot set mode: {e}"))?;
    }
    let mtime = filetime::FileTime::from_unix_time(node.mtime, node.mtime_nsec);
    if symlink {
        filetime::set_symlink_file_times(path, mtime, mtime)
    } else {
        filetime::set_file_times(path, mtime, mtime)
    }
    .map_err(|e| format!("cannot set mtime: {e}"))
}
