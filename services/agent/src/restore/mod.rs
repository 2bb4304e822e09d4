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
//!
//! The tree comes from the system that was backed up and is not trusted:
//! each node is checked before anything is written for it ([`check`]),
//! every write is resolved beneath the restore root without following a
//! symbolic link ([`beneath`]), and what of a node's privileges is kept
//! depends on where the restore goes ([`metadata`]).

mod beneath;
mod check;
mod metadata;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arca_frame as frame;
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
use crate::meta::Names;
use crate::patience::Patience;
use crate::select::{self, Filter};
use beneath::{Beneath, Temp};
use check::Checked;
use metadata::{On, Privileges};
use rustix::fs::{AtFlags, OFlags};

/// Block size below which a sparse file's zeros are written, not left as holes.
const HOLE_BLOCK: usize = 4096;

/// Runs one restore transfer to its end.
pub async fn run(
    client: async_nats::Client,
    system: String,
    req: StartRestoreTransfer,
    claims: TokenClaims,
    window: usize,
    patience: Patience,
    progress: Arc<Mutex<Progress>>,
) -> TransferOutcome {
    let result = restore(&client, &system, &req, &claims, window, patience, &progress).await;
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
    patience: Patience,
) -> Result<ChunkData, ErrorReply> {
    let body = GetChunk { id, session };
    patience
        .request(client, subject, &body)
        .await
        .map_err(|e| e.to_reply())
}

/// The id a fetched chunk's plain bytes are checked against: its own id
/// under the snapshot system's key; within a restore session (another
/// system's snapshot, whose key this agent is not given) the check value
/// media computed with the grant's key after checking the chunk itself.
fn check_id(granted: bool, id: ChunkId, check: Option<ChunkId>) -> Result<ChunkId, String> {
    if !granted {
        return Ok(id);
    }
    check.ok_or_else(|| format!("chunk {id}: media sent no check value for the restore session"))
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
    patience: Patience,
) -> Result<Vec<FetchedChunk>, ErrorReply> {
    let n = ids.len();
    let body = GetChunks { ids, session };
    let r: ChunksData = patience
        .request(client, subject, &body)
        .await
        .map_err(|e| e.to_reply())?;
    if r.chunks.len() != n {
        return Err(ErrorReply::internal(
            "media answered for a different number of chunks",
        ));
    }
    Ok(r.chunks)
}

/// Files at least this large are written back as soon as they are whole.
const EARLY_WRITEBACK: u64 = 8 << 20;

/// Entries a report names one by one for each kind of privilege left out;
/// the rest are counted.
const LEFT_OUT_NAMED: usize = 20;

/// The temporary file of a file being restored.
enum Slot {
    /// Not created yet.
    New,
    /// Being written.
    Open(Temp, File),
    /// Moved into place or given up.
    Closed,
}

/// One file being restored.
struct FileState {
    node: Checked,
    /// Its name as reported (under the restore root, escaped).
    shown: String,
    /// Created with the first chunk, moved into place or dropped with the
    /// last; the descriptor is held only while the file is being written.
    tmp: Mutex<Slot>,
    remaining: AtomicUsize,
    failed: Mutex<Option<String>>,
}

/// What a restore left out of the privileges the snapshot records.
#[derive(Default)]
struct LeftOut {
    /// Entries given to the restoring user instead of their owner.
    owners: usize,
    /// Entries reported by name so far, per kind of privilege.
    named: std::collections::HashMap<&'static str, usize>,
}

/// What every part of a restore shares.
struct Shared {
    /// The restore root, for reports.
    root: PathBuf,
    beneath: Beneath,
    /// The snapshot system's chunk-id key, or within a restore session
    /// the grant's check key.
    key: [u8; 32],
    /// Restoring another system's snapshot within a restore session.
    granted: bool,
    privileges: Privileges,
    progress: Arc<Mutex<Progress>>,
    names: Mutex<Names>,
    left_out: Mutex<LeftOut>,
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
    patience: Patience,
    progress: &Arc<Mutex<Progress>>,
) -> Result<(), ErrorReply> {
    let snap: SnapshotReply = patience
        .request(
            client,
            &subject::media_data(&req.media, system, MediaDataVerb::Snapshot),
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
    // Only an in-place restore of the system's own snapshot is faithful
    // without the operator asking.
    let own_in_place = req.target.is_none() && snap.info.system == system;
    let privileges = if own_in_place || req.keep_privileges {
        Privileges::keep()
    } else {
        Privileges::restoring_user()
    };
    let beneath = Beneath::open(&root).map_err(|e| {
        ErrorReply::bad_request(format!(
            "restore target {} cannot be opened: {e}",
            root.display()
        ))
    })?;
    let filter = Filter::new(&req.filter).map_err(ErrorReply::bad_request)?;
    let shared = Arc::new(Shared {
        key: req.chunk_key,
        granted: req.session.is_some(),
        beneath,
        privileges,
        progress: progress.clone(),
        names: Mutex::new(Names::default()),
        left_out: Mutex::new(LeftOut::default()),
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
        let got = get_chunk(client, &get_subject, *id, req.session.clone(), patience).await?;
        let check = check_id(shared.granted, *id, got.check).map_err(ErrorReply::internal)?;
        let plain = frame::decode(&got.frame, &req.chunk_key, &check).map_err(|e| e.to_reply())?;
        let batch: TreeBatch = codec::decode(&plain).map_err(|e| {
            ErrorReply::new(
                arca_schemas::ErrorCode::Corrupt,
                format!("tree chunk {id}: {e}"),
            )
        })?;
        // Folders first, in walk order. Other names of a file restored
        // here are linked once it is in place. A node that fails its check
        // is reported and nothing is written for it.
        let (mut new_dirs, mut files) = (Vec::new(), Vec::new());
        for n in sel.take(batch.nodes) {
            let n = match Checked::new(n) {
                Ok(n) => n,
                Err((n, why)) => {
                    shared.refuse(&n, why);
                    continue;
                }
            };
            match n.node().kind {
                NodeKind::Dir => new_dirs.push(n),
                NodeKind::File { .. } => match n.first() {
                    Some(first) if sel.files.contains(&path_key(first.as_bytes())) => links.push(n),
                    _ => {
                        sel.files.insert(path_key(&n.node().path));
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
                    remaining: AtomicUsize::new(node.pieces().count()),
                    shown: shared.shown(&node.node().path),
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
                patience,
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
            ctx2.make_other(n);
        }
        // Deepest first, so setting a folder's mtime is not undone by
        // writing into one of its subfolders.
        for d in dirs.iter().rev() {
            ctx2.dir_metadata(d);
        }
        ctx2.report_owners();
        // The restore ends when what it wrote is on disk.
        rustix::fs::openat(
            &**ctx2.beneath.root(),
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .and_then(|root| rustix::fs::syncfs(&root))
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
    /// A node's path under the restore root, escaped, for reports.
    fn shown(&self, path: &[u8]) -> String {
        let mut full = self.root.as_os_str().as_bytes().to_vec();
        if full.last() == Some(&b'/') && path.first() == Some(&b'/') {
            full.pop();
        }
        full.extend_from_slice(path);
        arca_schemas::text::escape_bytes(&full)
    }

    fn file_error(&self, shown: &str, error: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_failed(Path::new(shown), error);
    }

    fn file_warning(&self, shown: &str, warning: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_warned(Path::new(shown), warning);
    }

    /// Reports a node that failed its check; nothing is written for it.
    fn refuse(&self, node: &Node, why: String) {
        self.progress.lock().expect("progress lock").stats.entries += 1;
        let shown = arca_schemas::text::escape_bytes(&node.path);
        self.failed
            .lock()
            .expect("failed lock")
            .insert(node.path.clone());
        self.file_error(&shown, format!("{why}; nothing was written for it"));
    }

    /// Reports what of `node` the restore leaves out: the first entries of
    /// each kind by name, the others counted.
    fn report_left_out(&self, node: &Node, shown: &str) {
        let items = self.privileges.left_out(node);
        let mut names = self.names.lock().expect("names lock");
        let mut left = self.left_out.lock().expect("left-out lock");
        if self.privileges.changes_owner(node, &mut names) {
            left.owners += 1;
        }
        drop(names);
        for item in items {
            let n = left.named.entry(item).or_default();
            *n += 1;
            if *n <= LEFT_OUT_NAMED {
                self.file_warning(
                    shown,
                    format!("not restored: {item} (restore with --keep-privileges to keep it)"),
                );
            }
        }
    }

    /// The summary of what was left out beyond the entries named, and of
    /// the owners not given back.
    fn report_owners(&self) {
        let left = self.left_out.lock().expect("left-out lock");
        let root = self.shown(b"/");
        for (item, n) in &left.named {
            if *n > LEFT_OUT_NAMED {
                self.file_warning(
                    &root,
                    format!(
                        "not restored: {item} of {} more entries (restore with \
                         --keep-privileges to keep them)",
                        n - LEFT_OUT_NAMED
                    ),
                );
            }
        }
        if left.owners > 0 {
            self.file_warning(
                &root,
                format!(
                    "{} entries were given to the restoring user instead of their recorded \
                     owners (restore with --keep-privileges to keep the owners)",
                    left.owners
                ),
            );
        }
    }

    fn apply(&self, on: On<'_>, node: &Node, shown: &str) -> Result<(), String> {
        self.report_left_out(node, shown);
        metadata::apply(
            on,
            node,
            &mut self.names.lock().expect("names lock"),
            &self.privileges,
        )
    }

    /// Makes another name of a file restored in this run.
    fn link(&self, node: &Checked) {
        let shown = self.shown(&node.node().path);
        self.progress.lock().expect("progress lock").stats.entries += 1;
        let first = node.first().expect("links have a first name");
        let first_shown = self.shown(first.as_bytes());
        let linked = if self
            .failed
            .lock()
            .expect("failed lock")
            .contains(first.as_bytes())
        {
            Err(format!(
                "not restored: it is another name of {first_shown}, which was not restored"
            ))
        } else {
            (|| {
                let (from_dir, from) = self.beneath.parent(first)?.ok_or_else(not_root)?;
                let (dir, name) = self.beneath.parent(node.path())?.ok_or_else(not_root)?;
                let made = Temp::make(&dir, |d, tmp| {
                    rustix::fs::linkat(&*from_dir, &from, d, tmp, AtFlags::empty())
                })?;
                made.place(&name)
            })()
            .map_err(|e| format!("cannot link to {first_shown}: {e}"))
        };
        match linked {
            Ok(()) => self.progress.lock().expect("progress lock").stats.files += 1,
            Err(e) => self.file_error(&shown, e),
        }
    }

    /// Makes a symbolic link, FIFO, socket or device node and sets its
    /// metadata, under a temporary name, then moves it into place.
    fn make_other(&self, n: &Checked) {
        let node = n.node();
        let shown = self.shown(&node.path);
        self.progress.lock().expect("progress lock").stats.entries += 1;
        if matches!(node.kind, NodeKind::Device { .. }) && !self.privileges.keeps() {
            self.report_left_out(node, &shown);
            return;
        }
        let made = (|| {
            let (dir, name) = self
                .beneath
                .parent(n.path())
                .map_err(|e| format!("cannot create folder: {e}"))?
                .ok_or_else(|| "the root cannot be replaced".to_owned())?;
            let temp = match &node.kind {
                NodeKind::Symlink { target } => Temp::make(&dir, |d, tmp| {
                    rustix::fs::symlinkat(OsStr::from_bytes(target), d, tmp)
                })
                .map_err(|e| format!("cannot create symlink: {e}"))?,
                _ => make_special(&dir, node)?,
            };
            self.apply(
                On::At {
                    dir: temp.dir(),
                    name: temp.name(),
                },
                node,
                &shown,
            )?;
            temp.place(&name)
                .map_err(|e| format!("cannot move into place: {e}"))
        })();
        if let Err(e) = made {
            self.file_error(&shown, e);
        }
    }

    /// Sets a folder's metadata through its descriptor.
    fn dir_metadata(&self, d: &Checked) {
        let shown = self.shown(&d.node().path);
        let open = match self.beneath.parent(d.path()) {
            Ok(Some((dir, name))) => beneath::open_dir_at(&dir, &name),
            Ok(None) => beneath::open_dir_at(self.beneath.root(), c"."),
            Err(e) => Err(e),
        };
        let result = open
            .map_err(|e| format!("cannot open folder: {e}"))
            .and_then(|f| self.apply(On::Open(&f), d.node(), &shown));
        if let Err(e) = result {
            self.file_error(&shown, e);
        }
    }

    /// Creates a folder; false when it could not be.
    fn make_dir(&self, node: &Checked) -> bool {
        self.progress.lock().expect("progress lock").stats.entries += 1;
        match self.beneath.make_dir(node.path()) {
            Ok(_) => true,
            Err(e) => {
                self.file_error(
                    &self.shown(&node.node().path),
                    format!("cannot create folder: {e}"),
                );
                false
            }
        }
    }
}

fn not_root() -> std::io::Error {
    std::io::Error::other("the root cannot be replaced")
}

/// Creates a FIFO, device node or socket file under a temporary name.
fn make_special(dir: &beneath::Dir, node: &Node) -> Result<Temp, String> {
    use rustix::fs::{FileType, Mode};
    let (file_type, rdev) = match &node.kind {
        NodeKind::Fifo => (FileType::Fifo, 0),
        NodeKind::Socket => (FileType::Socket, 0),
        NodeKind::Device { rdev } => (FileType::from_raw_mode(node.mode), *rdev),
        _ => return Err("not a special file".into()),
    };
    if matches!(node.kind, NodeKind::Device { .. }) && !rustix::process::geteuid().is_root() {
        return Err("device nodes can only be created by root; run the agent as root".into());
    }
    Temp::make(dir, |d, tmp| {
        rustix::fs::mknodat(d, tmp, file_type, Mode::from_raw_mode(0o600), rdev)
    })
    .map_err(|e| format!("cannot create {}: {e}", node.kind.name()))
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
    fn already_there(&self, i: usize) -> bool {
        // Within a restore session the source's chunk ids cannot be
        // computed here: a file in place is simply rewritten.
        if self.granted {
            return false;
        }
        let f = &self.files[i];
        let Ok(Some((dir, name))) = self.beneath.parent(f.node.path()) else {
            return false;
        };
        let Ok(file) = beneath::open_regular_at(&dir, &name) else {
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
            self.file_error(&f.shown, e);
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
    /// in its folder on first use. Writes to one file are serialised;
    /// files go in parallel.
    fn with_file<R>(
        &self,
        i: usize,
        f: impl FnOnce(&File) -> Result<R, String>,
    ) -> Result<R, String> {
        let state = &self.files[i];
        let mut slot = state.tmp.lock().expect("file lock");
        if matches!(*slot, Slot::New) {
            let (dir, _) = self
                .beneath
                .parent(state.node.path())
                .map_err(|e| format!("cannot create folder: {e}"))?
                .ok_or_else(|| "the root cannot be replaced by a file".to_owned())?;
            let (tmp, file) = Temp::file(&dir).map_err(|e| format!("cannot create file: {e}"))?;
            file.set_len(state.node.node().size)
                .map_err(|e| format!("cannot size file: {e}"))?;
            *slot = Slot::Open(tmp, file);
        }
        match &*slot {
            Slot::Open(_, file) => f(file),
            _ => Err("the file was already closed".into()),
        }
    }

    fn write_piece(&self, i: usize, (offset, id, size): (u64, ChunkId, usize), got: &FetchedChunk) {
        if self.files[i].failed.lock().expect("file lock").is_some() {
            return;
        }
        let Some(frame_bytes) = &got.frame else {
            return;
        };
        let sparse = self.files[i].node.node().sparse;
        let written = check_id(self.granted, id, got.check)
            .and_then(|check| {
                frame::decode(frame_bytes, &self.key, &check).map_err(|e| e.to_string())
            })
            .and_then(|data| {
                if data.len() != size {
                    return Err(format!(
                        "chunk {id} holds {} bytes where the snapshot's tree says {size}",
                        data.len()
                    ));
                }
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
                p.current = Some(self.files[i].shown.clone());
            }
            Err(e) => self.fail(i, e),
        }
    }

    /// Moves a whole, verified file into place, or reports it.
    fn finish_file(&self, i: usize) {
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
            self.file_error(&f.shown, e);
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
            .and_then(|_| {
                let (_, name) = f.node.path().split_last().expect("a file is not the root");
                tmp.place(&beneath::c_name(name))
                    .map_err(|e| format!("cannot move into place: {e}"))
            });
        match result {
            Ok(()) => self.progress.lock().expect("progress lock").stats.files += 1,
            Err(e) => {
                self.not_restored(i);
                self.file_error(&f.shown, e)
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

/// One chunk of a file to fetch: (file, offset, chunk, plain size).
type Piece = (usize, u64, ChunkId, usize);

/// The chunks of the files of `ctx` not skipped, grouped for fetching by
/// at most [`GET_BATCH_CHUNKS`] and [`GET_BATCH_BYTES`].
fn piece_batches(ctx: &Ctx, skip: &[bool]) -> Vec<Vec<Piece>> {
    let mut batches: Vec<Vec<Piece>> = Vec::new();
    let mut bytes = 0usize;
    for (i, f) in ctx.files.iter().enumerate() {
        if skip[i] {
            continue;
        }
        let mut offset = 0u64;
        for (id, size) in f.node.pieces() {
            let fits = batches
                .last()
                .is_some_and(|b| b.len() < GET_BATCH_CHUNKS && bytes + size <= GET_BATCH_BYTES);
            if !fits {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            batches
                .last_mut()
                .expect("pushed")
                .push((i, offset, id, size));
            offset += size as u64;
        }
    }
    batches
}

/// Fetches a batch of chunks and writes each at its offset; a file is
/// finished when its last chunk is written.
async fn fetch_and_write(
    ctx: Arc<Ctx>,
    batch: Vec<Piece>,
    client: async_nats::Client,
    subject: String,
    session: Option<String>,
    patience: Patience,
) {
    let ids: Vec<ChunkId> = batch.iter().map(|(_, _, id, _)| *id).collect();
    let fetched = get_chunks(&client, &subject, ids, session, patience).await;
    let _ = tokio::task::spawn_blocking(move || {
        let fetched: Vec<Result<FetchedChunk, ErrorReply>> = match fetched {
            Ok(f) => f.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e); batch.len()],
        };
        for ((i, offset, id, size), got) in batch.into_iter().zip(fetched) {
            match got {
                Ok(got @ FetchedChunk { frame: Some(_), .. }) => {
                    ctx.write_piece(i, (offset, id, size), &got)
                }
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
