//! Writing a snapshot back onto the system.
//!
//! The async side fetches the tree, then each file's chunks with up to
//! `window` requests in flight, and hands frames in file order to a
//! blocking writer thread. The writer checks every chunk against the id
//! recorded at backup time (invariant 6), writes each file under a
//! temporary name beside its destination and renames it into place only
//! when the whole file verified, so a failed file never replaces a good
//! one. Folder metadata is applied last, deepest first, because writing
//! into a folder changes its mtime.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_repo::frame;
use arca_runtime::rpc;
use arca_schemas::error::ErrorReply;
use arca_schemas::job::FileError;
use arca_schemas::msg::{
    ChunkData, GetChunk, GetSnapshot, SnapshotReply, StartRestoreTransfer, TransferOutcome,
};
use arca_schemas::subject::{self, MediaDataVerb};
use arca_schemas::tree::{Node, NodeKind, TreeBatch};
use arca_schemas::{ChunkId, codec};
use futures::stream::{self, StreamExt};

use crate::Progress;

enum Write_ {
    Node(Node),
    Chunk {
        id: ChunkId,
        frame: Vec<u8>,
    },
    /// The current file's chunk could not be fetched.
    Abort(String),
    EndFile,
}

/// Runs one restore transfer to its end.
pub async fn run(
    client: async_nats::Client,
    system: String,
    req: StartRestoreTransfer,
    window: usize,
    timeout: Duration,
    progress: Arc<Mutex<Progress>>,
) -> TransferOutcome {
    let result = restore(&client, &system, &req, window, timeout, &progress).await;
    let p = progress.lock().expect("progress lock");
    TransferOutcome {
        stats: p.stats.clone(),
        snapshot: Some(req.snapshot.clone()),
        file_errors: p.file_errors.clone(),
        error: result.err(),
    }
}

async fn get_chunk(
    client: &async_nats::Client,
    subject: &str,
    id: ChunkId,
    timeout: Duration,
) -> Result<Vec<u8>, ErrorReply> {
    let body = GetChunk { id };
    let r: ChunkData = rpc::retry(Duration::from_secs(30), || {
        rpc::request_with_timeout(client, subject.to_owned(), &body, timeout)
    })
    .await
    .map_err(|e| e.to_reply())?;
    Ok(r.frame)
}

async fn restore(
    client: &async_nats::Client,
    system: &str,
    req: &StartRestoreTransfer,
    window: usize,
    timeout: Duration,
    progress: &Arc<Mutex<Progress>>,
) -> Result<(), ErrorReply> {
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
    let snap: SnapshotReply = rpc::request(
        client,
        subject::media_data(&req.media, system, MediaDataVerb::Snapshot),
        &GetSnapshot {
            snapshot: req.snapshot.clone(),
        },
    )
    .await
    .map_err(|e| e.to_reply())?;
    let get_subject = subject::media_data(&req.media, system, MediaDataVerb::Get);
    let mut nodes = Vec::new();
    for id in &snap.tree {
        let frame_bytes = get_chunk(client, &get_subject, *id, timeout).await?;
        let plain = frame::decode(&frame_bytes, &req.chunk_key, id).map_err(|e| e.to_reply())?;
        let batch: TreeBatch = codec::decode(&plain).map_err(|e| {
            ErrorReply::new(
                arca_schemas::ErrorCode::Corrupt,
                format!("tree chunk {id}: {e}"),
            )
        })?;
        nodes.extend(batch.nodes);
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<Write_>(window.max(1) * 2);
    let writer_progress = progress.clone();
    let key = req.chunk_key;
    let writer =
        tokio::task::spawn_blocking(move || Writer::new(root, key, writer_progress).run(rx));
    for node in nodes {
        let chunks = match &node.kind {
            NodeKind::File { chunks } => Some(chunks.clone()),
            _ => None,
        };
        if tx.send(Write_::Node(node)).await.is_err() {
            break;
        }
        let Some(chunks) = chunks else { continue };
        let mut frames = stream::iter(chunks)
            .map(|id| {
                let subject = get_subject.clone();
                async move { (id, get_chunk(client, &subject, id, timeout).await) }
            })
            .buffered(window.max(1));
        while let Some((id, r)) = frames.next().await {
            let msg = match r {
                Ok(frame) => Write_::Chunk { id, frame },
                Err(e) => Write_::Abort(format!("chunk {id}: {}", e.message)),
            };
            let abort = matches!(msg, Write_::Abort(_));
            if tx.send(msg).await.is_err() || abort {
                break;
            }
        }
        if tx.send(Write_::EndFile).await.is_err() {
            break;
        }
    }
    drop(tx);
    writer
        .await
        .map_err(|e| ErrorReply::internal(format!("writer crashed: {e}")))?
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

struct Writer {
    root: PathBuf,
    key: [u8; 32],
    progress: Arc<Mutex<Progress>>,
    dirs: Vec<Node>,
    current: Option<OpenFile>,
}

struct OpenFile {
    node: Node,
    dest: PathBuf,
    tmp: tempfile::NamedTempFile,
    failed: Option<String>,
}

impl Writer {
    fn new(root: PathBuf, key: [u8; 32], progress: Arc<Mutex<Progress>>) -> Self {
        Writer {
            root,
            key,
            progress,
            dirs: Vec::new(),
            current: None,
        }
    }

    fn dest(&self, path: &[u8]) -> PathBuf {
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn file_error(&self, path: &Path, error: String) {
        tracing::warn!(path = %path.display(), %error, "file not restored");
        self.progress
            .lock()
            .expect("progress lock")
            .file_errors
            .push(FileError {
                path: path.to_string_lossy().into_owned(),
                error,
            });
    }

    fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<Write_>) -> Result<(), ErrorReply> {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Write_::Node(node) => self.node(node),
                Write_::Chunk { id, frame } => self.chunk(id, &frame),
                Write_::Abort(e) => {
                    if let Some(f) = &mut self.current {
                        f.failed.get_or_insert(e);
                    }
                }
                Write_::EndFile => self.end_file(),
            }
        }
        // Deepest first, so setting a folder's mtime is not undone by
        // writing into one of its subfolders.
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let dest = self.dest(&d.path);
            if let Err(e) = apply_metadata(&dest, d, false) {
                self.file_error(&dest, e);
            }
        }
        Ok(())
    }

    fn node(&mut self, node: Node) {
        let dest = self.dest(&node.path);
        self.progress.lock().expect("progress lock").stats.entries += 1;
        match &node.kind {
            NodeKind::Dir => {
                if let Err(e) = std::fs::create_dir_all(&dest) {
                    self.file_error(&dest, format!("cannot create folder: {e}"));
                } else {
                    self.dirs.push(node);
                }
            }
            NodeKind::Symlink { target } => {
                if let Err(e) = self.symlink(&dest, target, &node) {
                    self.file_error(&dest, e);
                }
            }
            NodeKind::File { .. } => {
                let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
                let opened = std::fs::create_dir_all(&parent).and_then(|_| {
                    tempfile::Builder::new()
                        .prefix(".arca-restore-")
                        .tempfile_in(&parent)
                });
                match opened {
                    Ok(tmp) => {
                        self.progress.lock().expect("progress lock").current =
                            Some(dest.to_string_lossy().into_owned());
                        self.current = Some(OpenFile {
                            node,
                            dest,
                            tmp,
                            failed: None,
                        });
                    }
                    Err(e) => {
                        // Chunks of this file still arrive; they are dropped.
                        self.file_error(&dest, format!("cannot create file: {e}"));
                        self.current = None;
                    }
                }
            }
        }
    }

    fn symlink(&self, dest: &Path, target: &[u8], node: &Node) -> Result<(), String> {
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

    fn chunk(&mut self, id: ChunkId, frame_bytes: &[u8]) {
        let Some(f) = &mut self.current else { return };
        if f.failed.is_some() {
            return;
        }
        match frame::decode(frame_bytes, &self.key, &id) {
            Ok(data) => {
                if let Err(e) = f.tmp.write_all(&data) {
                    f.failed = Some(format!("write failed: {e}"));
                    return;
                }
                let mut p = self.progress.lock().expect("progress lock");
                p.stats.bytes += data.len() as u64;
                p.stats.chunks += 1;
                p.stats.wire_bytes += frame_bytes.len() as u64;
            }
            Err(e) => f.failed = Some(e.to_string()),
        }
    }

    fn end_file(&mut self) {
        let Some(f) = self.current.take() else { return };
        if let Some(e) = f.failed {
            self.file_error(
                &f.dest,
                format!("not restored, the original is left as it was: {e}"),
            );
            return;
        }
        let tmp_path = f.tmp.path().to_path_buf();
        let result = apply_metadata(&tmp_path, &f.node, false).and_then(|_| {
            f.tmp
                .persist(&f.dest)
                .map(|_| ())
                .map_err(|e| format!("cannot move into place: {}", e.error))
        });
        match result {
            Ok(()) => self.progress.lock().expect("progress lock").stats.files += 1,
            Err(e) => self.file_error(&f.dest, e),
        }
    }
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
