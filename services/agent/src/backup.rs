//! Reading the system's paths and streaming them to media.
//!
//! A blocking walker thread walks the paths (folders before what they
//! hold, names sorted) and takes files unchanged since the parent snapshot
//! from it without reading them. The other files go to a few reader
//! threads, which read them at the same time (a disk answers several reads
//! at once faster than one after the other), cut them into content-defined
//! chunks (FastCDC), hash them with the system's key, ask media in batches
//! which chunks it already holds and compress only the others. The walker
//! puts the files' nodes into the tree in walk order as their readers
//! finish. A bounded channel carries the compressed chunks to the sender,
//! which keeps at most `window` requests unacknowledged; media acknowledges
//! each after a durable write. The tree goes last, as tree chunks, and the
//! snapshot is committed only after every acknowledgement has arrived.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_frame as frame;
use arca_runtime::rpc::RpcError;
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::{
    ChunksStored, CommitSnapshot, HasChunks, HasChunksReply, PutChunk, PutChunks,
    SnapshotCommitted, StartBackupTransfer, TransferOutcome,
};
use arca_schemas::subject::{self, MediaDataVerb};
use arca_schemas::tree::{Node, NodeKind, TreeBatch, path_order};
use arca_schemas::{ChunkId, codec};
use futures::stream::{FuturesUnordered, StreamExt};

use arca_schemas::system::Selection;

use crate::Progress;
use crate::application::{Addition, JobApps, postgresql};
use crate::meta::{self, LIST_BUFFER, Names, Stat};
use crate::patience::Patience;
use crate::select::Filter;

/// How the reader cuts and compresses.
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    /// Smallest chunk.
    pub min: usize,
    /// Average chunk.
    pub avg: usize,
    /// Largest chunk.
    pub max: usize,
    /// zstd level.
    pub level: i32,
}

/// The content-defined chunker (FastCDC 2020, normalization level 1) the
/// agent cuts files with.
pub fn chunker<R: std::io::Read>(source: R, p: &ChunkParams) -> fastcdc::v2020::StreamCDC<R> {
    fastcdc::v2020::StreamCDC::new(source, p.min, p.avg, p.max)
}

/// The chunks of a file. One that fits in a largest chunk is read whole
/// and cut in memory: the streaming chunker allocates (and zeroes) a
/// buffer of the largest chunk's size for every file, which dominated the
/// backup of many small files. Larger files are cut by the streaming
/// chunker. Both cut the same bytes at the same places.
fn file_chunks<'f>(
    file: &'f std::fs::File,
    size_hint: u64,
    p: &ChunkParams,
) -> std::io::Result<Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + 'f>> {
    use std::io::Read;
    let mut head = Vec::with_capacity((size_hint as usize).min(p.max) + 1);
    file.take(p.max as u64 + 1).read_to_end(&mut head)?;
    if head.len() > p.max {
        let stream = std::io::Cursor::new(head).chain(file);
        return Ok(Box::new(
            chunker(stream, p).map(|c| c.map(|c| c.data).map_err(std::io::Error::other)),
        ));
    }
    let cuts: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::new(&head, p.min, p.avg, p.max)
        .map(|c| (c.offset, c.length))
        .collect();
    if cuts.len() <= 1 {
        return Ok(Box::new((!head.is_empty()).then_some(Ok(head)).into_iter()));
    }
    let pieces: Vec<std::io::Result<Vec<u8>>> = cuts
        .into_iter()
        .map(|(o, l)| Ok(head[o..o + l].to_vec()))
        .collect();
    Ok(Box::new(pieces.into_iter()))
}

/// Nodes per tree chunk.
const TREE_BATCH: usize = 4096;

/// Most chunks, and plain bytes, sent to media in one request (a single
/// chunk larger than that goes alone; chunks are cut to fit the server's
/// max_payload).
const PUT_BATCH_CHUNKS: usize = 256;
const PUT_BATCH_BYTES: usize = 2 << 20;

enum Item {
    /// Compressed chunks media does not hold, for one request.
    Chunks(Vec<PutChunk>),
    Done {
        tree: Vec<ChunkId>,
    },
}

/// What a backup transfer is asked to do.
pub struct Request {
    /// The scheduler's request.
    pub transfer: StartBackupTransfer,
    /// What the job's built-in hook kinds hold (a PostgreSQL session in
    /// backup mode), if any: they say what to leave out and what to add.
    pub apps: Option<Arc<JobApps>>,
    /// Files read at the same time.
    pub readers: usize,
}

/// What the reader walks.
struct Walk<'a> {
    parent: Parent,
    paths: &'a [String],
    selection: &'a Selection,
    /// PostgreSQL data directories in backup mode: what a base backup
    /// omits is left out.
    postgresql: Vec<PathBuf>,
}

/// Runs one backup transfer to its end; `identity` signs the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: async_nats::Client,
    system: String,
    identity: arca_runtime::identity::Identity,
    request: Request,
    params: ChunkParams,
    window: usize,
    patience: Patience,
    progress: Arc<Mutex<Progress>>,
) -> TransferOutcome {
    let Request {
        transfer: req,
        apps,
        readers,
    } = request;
    // Batches of compressed chunks ready to go: a few, each up to
    // PUT_BATCH_BYTES.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(4);
    let reader_progress = progress.clone();
    let paths = req.paths.clone();
    let selection = req.selection.clone();
    let asker = HasAsker {
        client: client.clone(),
        subject: subject::media_data(&req.media, &system, MediaDataVerb::Has),
        session: req.session.clone(),
        runtime: tokio::runtime::Handle::current(),
        patience,
    };
    let key = req.chunk_key;
    let parent = match &req.parent {
        Some(id) => match parent_tree(&client, &system, &req.media, id, patience).await {
            Ok(tree) => Parent::new(
                tree,
                client.clone(),
                subject::media_data(&req.media, &system, MediaDataVerb::Get),
                key,
                patience,
            ),
            Err(e) => {
                tracing::warn!(parent = %id, error = %e.message, "parent snapshot unreadable; reading every file");
                Parent::none()
            }
        },
        None => Parent::none(),
    };
    let postgresql = match &apps {
        Some(a) => a.postgresql_dirs().await,
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Handle::current();
    let reader = tokio::task::spawn_blocking(move || {
        let finish = || match &apps {
            Some(a) => runtime.block_on(a.finish_backup()),
            None => Ok(Vec::new()),
        };
        read_all(
            Walk {
                parent,
                paths: &paths,
                selection: &selection,
                postgresql,
            },
            params,
            readers,
            key,
            asker,
            tx,
            &reader_progress,
            finish,
        )
    });

    let put_subject = subject::media_data(&req.media, &system, MediaDataVerb::PutMany);
    let mut in_flight = FuturesUnordered::new();
    let mut tree = None;
    let mut failure: Option<ErrorReply> = None;
    loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let done: Result<(ChunksStored, usize), RpcError> = done;
                match done {
                    Ok((stored, wire)) => {
                        let mut p = progress.lock().expect("progress lock");
                        p.stats.wire_bytes += wire as u64;
                        p.stats.new_chunks += stored.new.iter().filter(|n| **n).count() as u64;
                    }
                    Err(e) => {
                        failure = Some(e.to_reply());
                        break;
                    }
                }
            }
            item = rx.recv(), if in_flight.len() < window && tree.is_none() => {
                let batch = match item {
                    Some(Item::Chunks(batch)) => batch,
                    Some(Item::Done { tree: t }) => {
                        tree = Some(t);
                        Vec::new()
                    }
                    // The reader ended without Done: it failed.
                    None => break,
                };
                if !batch.is_empty() {
                    let session = req.session.clone();
                    let subject = put_subject.clone();
                    let client = client.clone();
                    in_flight.push(async move {
                        let body = PutChunks { session, chunks: batch };
                        let wire = body.chunks.iter().map(|c| c.frame.len()).sum();
                        let r: ChunksStored = patience.request(&client, &subject, &body).await?;
                        if r.new.len() != body.chunks.len() {
                            return Err(RpcError::Transport {
                                subject: subject.clone(),
                                message: "media answered for a different number of chunks".into(),
                            });
                        }
                        Ok((r, wire))
                    });
                }
            }
            else => break,
        }
        if tree.is_some() && in_flight.is_empty() {
            break;
        }
    }
    drop(rx);
    let read = reader.await;
    let (stats, file_errors, file_warnings) = {
        let p = progress.lock().expect("progress lock");
        (
            p.stats.clone(),
            crate::cap_file_errors(&p.file_errors),
            crate::cap_file_errors(&p.file_warnings),
        )
    };
    let outcome = |snapshot, error| TransferOutcome {
        stats: stats.clone(),
        snapshot,
        file_errors: file_errors.clone(),
        file_warnings: file_warnings.clone(),
        error,
    };
    if let Some(e) = failure {
        return outcome(None, Some(e));
    }
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return outcome(None, Some(e)),
        Err(e) => {
            return outcome(
                None,
                Some(ErrorReply::internal(format!("reader crashed: {e}"))),
            );
        }
    }
    let Some(tree) = tree else {
        return outcome(
            None,
            Some(ErrorReply::internal("reader ended without a tree")),
        );
    };
    // The agent vouches for the snapshot: media commits it only when the
    // key enrolled for this system signed this manifest.
    let signature = identity.sign(&arca_runtime::trust::manifest_bytes(
        &system, req.job, &tree,
    ));
    let commit = CommitSnapshot {
        session: req.session.clone(),
        signature,
        tree,
        stats: stats.clone(),
        file_errors: file_errors.clone(),
    };
    let subject = subject::media_data(&req.media, &system, MediaDataVerb::Commit);
    match patience
        .with_timeout(Duration::from_secs(300))
        .request::<_, SnapshotCommitted>(&client, &subject, &commit)
        .await
    {
        Ok(c) => outcome(Some(c.snapshot.id), None),
        Err(e) => outcome(None, Some(e.to_reply())),
    }
}

/// The tree chunk ids of the parent snapshot.
async fn parent_tree(
    client: &async_nats::Client,
    system: &str,
    media: &str,
    id: &arca_schemas::SnapshotId,
    patience: Patience,
) -> Result<Vec<ChunkId>, ErrorReply> {
    let snap: arca_schemas::msg::SnapshotReply = patience
        .request(
            client,
            &subject::media_data(media, system, MediaDataVerb::Snapshot),
            &arca_schemas::msg::GetSnapshot {
                snapshot: id.clone(),
                session: None,
            },
        )
        .await
        .map_err(|e| e.to_reply())?;
    Ok(snap.tree)
}

/// The parent snapshot's nodes, read one tree chunk at a time alongside
/// the walk: both are in path order, so the node for a path is found by
/// moving forward only, and memory holds one tree chunk, not the tree.
pub struct Parent {
    batches: std::vec::IntoIter<ChunkId>,
    nodes: std::collections::VecDeque<Node>,
    fetch: Option<ParentFetch>,
}

struct ParentFetch {
    client: async_nats::Client,
    subject: String,
    key: [u8; 32],
    patience: Patience,
    runtime: tokio::runtime::Handle,
}

impl Parent {
    fn new(
        tree: Vec<ChunkId>,
        client: async_nats::Client,
        subject: String,
        key: [u8; 32],
        patience: Patience,
    ) -> Parent {
        Parent {
            batches: tree.into_iter(),
            nodes: Default::default(),
            fetch: Some(ParentFetch {
                client,
                subject,
                key,
                patience,
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// No parent: every file is read.
    pub fn none() -> Parent {
        Parent {
            batches: Vec::new().into_iter(),
            nodes: Default::default(),
            fetch: None,
        }
    }

    /// The parent's node for `path`, if it had one. Paths must be asked
    /// in walk order; nodes before `path` are dropped. A tree chunk that
    /// cannot be read ends the parent (the rest of the files are read).
    fn get(&mut self, path: &[u8]) -> Option<&Node> {
        loop {
            if self.nodes.is_empty() && !self.next_batch() {
                return None;
            }
            let front = self.nodes.front()?;
            match path_order(&front.path, path) {
                std::cmp::Ordering::Less => {
                    self.nodes.pop_front();
                }
                std::cmp::Ordering::Equal => return self.nodes.front(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }

    /// The parent's node for `path`, taken out of it; as [`Parent::get`].
    fn take(&mut self, path: &[u8]) -> Option<Node> {
        self.get(path)?;
        self.nodes.pop_front()
    }

    fn next_batch(&mut self) -> bool {
        let (Some(f), Some(id)) = (&self.fetch, self.batches.next()) else {
            return false;
        };
        let body = arca_schemas::msg::GetChunk { id, session: None };
        let got: Result<TreeBatch, String> = f
            .runtime
            .block_on(
                f.patience
                    .request::<_, arca_schemas::msg::ChunkData>(&f.client, &f.subject, &body),
            )
            .map_err(|e| e.to_string())
            .and_then(|d| frame::decode(&d.frame, &f.key, &id).map_err(|e| e.to_string()))
            .and_then(|plain| codec::decode(&plain).map_err(|e| e.to_string()));
        match got {
            Ok(batch) => {
                self.nodes.extend(batch.nodes);
                true
            }
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "parent tree chunk unreadable; reading the remaining files");
                self.fetch = None;
                false
            }
        }
    }
}

/// Asks media which chunks it already holds, from the reader threads.
#[derive(Clone)]
struct HasAsker {
    client: async_nats::Client,
    subject: String,
    session: String,
    runtime: tokio::runtime::Handle,
    patience: Patience,
}

impl HasAsker {
    fn ask(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>, ErrorReply> {
        let n = ids.len();
        let body = HasChunks {
            session: self.session.clone(),
            ids,
        };
        let reply: HasChunksReply = self
            .runtime
            .block_on(self.patience.request(&self.client, &self.subject, &body))
            .map_err(|e| e.to_reply())?;
        if reply.present.len() != n {
            return Err(ErrorReply::internal(
                "media answered for a different number of chunks",
            ));
        }
        Ok(reply.present)
    }
}

/// Chunks waiting for one "which do you have?" round trip, per reader.
const PENDING_CHUNKS: usize = 256;
const PENDING_BYTES: usize = 4 << 20;

/// Threads listing folders ahead of the walk.
const PREFETCH_THREADS: usize = 8;

/// Files handed to the readers and not yet put into the tree, at most: the
/// walker waits for the oldest when there are more.
const OUTSTANDING: usize = 1024;

/// The signature a `CACHEDIR.TAG` file starts with.
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// A file with several names, as first met.
struct FirstName {
    path: Vec<u8>,
    chunks: Vec<ChunkId>,
    sizes: Vec<u32>,
    size: u64,
}

/// Where chunks go: each is sent once per backup, only if media does not
/// hold it, compressed. Each reader has its own (with its own batch of
/// questions to media); they share what was sent.
struct ChunkSink {
    sent: Arc<Mutex<HashSet<ChunkId>>>,
    asker: HasAsker,
    tx: tokio::sync::mpsc::Sender<Item>,
    level: i32,
    pending: Vec<(ChunkId, Vec<u8>, bool)>,
    pending_bytes: usize,
}

impl ChunkSink {
    /// Another sink sharing what was sent, with an empty batch.
    fn another(&self) -> ChunkSink {
        ChunkSink {
            sent: self.sent.clone(),
            asker: self.asker.clone(),
            tx: self.tx.clone(),
            level: self.level,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Queues a chunk; chunks media already holds are never compressed
    /// nor sent (deduplication over the wire, in batches).
    fn send(&mut self, id: ChunkId, data: Vec<u8>, tree: bool) -> Result<(), ErrorReply> {
        if !self.sent.lock().expect("sent lock").insert(id) {
            return Ok(());
        }
        self.pending_bytes += data.len();
        self.pending.push((id, data, tree));
        if self.pending.len() >= PENDING_CHUNKS || self.pending_bytes >= PENDING_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ErrorReply> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let present = self
            .asker
            .ask(pending.iter().map(|(id, _, _)| *id).collect())?;
        // What media lacks goes together: one round trip and one durable
        // write for many small chunks.
        let mut batch = Vec::new();
        let mut bytes = 0;
        for ((id, data, tree), have) in pending.into_iter().zip(present) {
            if have {
                continue;
            }
            let frame = frame::encode(&data, self.level);
            drop(data);
            if !batch.is_empty() && bytes + frame.len() > PUT_BATCH_BYTES {
                self.put(std::mem::take(&mut batch))?;
                bytes = 0;
            }
            bytes += frame.len();
            batch.push(PutChunk {
                session: String::new(),
                id,
                tree,
                frame,
            });
            if batch.len() >= PUT_BATCH_CHUNKS {
                self.put(std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.put(batch)?;
        }
        Ok(())
    }

    fn put(&self, batch: Vec<PutChunk>) -> Result<(), ErrorReply> {
        self.tx
            .blocking_send(Item::Chunks(batch))
            .map_err(|_| ErrorReply::internal("transfer stopped"))
    }
}

/// A file for a reader.
struct ReadJob {
    path: PathBuf,
    size_hint: u64,
    done: std::sync::mpsc::SyncSender<Result<FileRead, ErrorReply>>,
}

/// What a reader made of a file.
enum FileRead {
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

/// An entry of the tree in walk order, maybe still being read.
enum Slot {
    Dir(Node),
    Node(Node),
    File {
        path: PathBuf,
        read: std::sync::mpsc::Receiver<Result<FileRead, ErrorReply>>,
    },
}

/// Hashes a chunk of a file, notes it in the file's lists, counts it and
/// queues it in `sink`.
fn take_chunk(
    key: &[u8; 32],
    data: Vec<u8>,
    chunks: &mut Vec<ChunkId>,
    sizes: &mut Vec<u32>,
    sink: &mut ChunkSink,
    progress: &Mutex<Progress>,
) -> Result<(), ErrorReply> {
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
fn read_file(
    path: &Path,
    size_hint: u64,
    params: &ChunkParams,
    key: &[u8; 32],
    sink: &mut ChunkSink,
    progress: &Mutex<Progress>,
) -> Result<FileRead, ErrorReply> {
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
fn reader_thread(
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
        tracing::debug!(error = %e.message, "a reader could not send its last chunks");
        stop.store(true, Ordering::Relaxed);
    }
}

struct Reader<'a> {
    parent: Parent,
    params: ChunkParams,
    key: [u8; 32],
    /// The walker's own sink: tree chunks, files with several names and
    /// what the application hooks add.
    sink: ChunkSink,
    /// Files for the readers.
    jobs: Option<std::sync::mpsc::SyncSender<ReadJob>>,
    /// The tree's entries in walk order, from the oldest not yet in it.
    slots: std::collections::VecDeque<Slot>,
    progress: &'a Mutex<Progress>,
    filter: Filter,
    one_file_system: bool,
    exclude_caches: bool,
    names: Names,
    /// Files with several names, by (device, inode).
    links: HashMap<(u64, u64), FirstName>,
    /// With include patterns: folders met but not yet written, because
    /// nothing under them was taken yet (each is inside the one before).
    held: Vec<Node>,
    /// PostgreSQL data directories in backup mode: what a base backup
    /// omits is left out.
    postgresql: Vec<PathBuf>,
    batch: TreeBatch,
    tree: Vec<ChunkId>,
}

/// The walker thread: walks, hands files to `readers` reader threads, and
/// feeds the sender. `finish` runs once every path was read (it ends
/// application backup modes) and names what to add before the tree is
/// closed.
#[allow(clippy::too_many_arguments)]
fn read_all(
    walk: Walk<'_>,
    params: ChunkParams,
    readers: usize,
    key: [u8; 32],
    asker: HasAsker,
    tx: tokio::sync::mpsc::Sender<Item>,
    progress: &Mutex<Progress>,
    finish: impl FnOnce() -> Result<Vec<Addition>, String>,
) -> Result<(), ErrorReply> {
    let Walk {
        parent,
        paths,
        selection,
        postgresql,
    } = walk;
    let filter = Filter::new(&selection.filter)
        .map_err(|e| ErrorReply::bad_request(format!("the system's selection: {e}")))?;
    let ahead = Filter::new(&selection.filter)
        .map_err(|e| ErrorReply::bad_request(format!("the system's selection: {e}")))?;
    let excludes = ahead.excludes_anything();
    let skip = move |path: &[u8]| ahead.excluded_here(path);
    let roots: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    let walked_all = std::sync::atomic::AtomicBool::new(false);
    let sink = ChunkSink {
        sent: Default::default(),
        asker,
        tx,
        level: params.level,
        pending: Vec::new(),
        pending_bytes: 0,
    };
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<ReadJob>(readers.max(1) * 4);
    let jobs_rx = Mutex::new(jobs_rx);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let one_file_system = selection.one_file_system;
        let (roots, skip, walked_all) = (&roots, &skip, &walked_all);
        // Metadata read ahead of the walk; a thread that cannot start
        // only makes the walk slower.
        let _ = std::thread::Builder::new()
            .name("arca-prefetch".into())
            .spawn_scoped(scope, move || {
                let listed = crate::prefetch::run(
                    roots,
                    PREFETCH_THREADS,
                    excludes.then_some(skip as crate::prefetch::Skip<'_>),
                    one_file_system,
                    walked_all,
                );
                tracing::debug!(listed, "folders listed ahead of the walk");
            });
        let mut threads = Vec::new();
        for i in 0..readers.max(1) {
            let (jobs, params, key, sink, stop) = (&jobs_rx, &params, &key, sink.another(), &stop);
            let t = std::thread::Builder::new()
                .name(format!("arca-reader-{i}"))
                .spawn_scoped(scope, move || {
                    reader_thread(jobs, params, key, sink, progress, stop)
                })
                .map_err(|e| ErrorReply::internal(format!("cannot start a reader thread: {e}")))?;
            threads.push(t);
        }
        let mut r = Reader {
            parent,
            params,
            key,
            sink,
            jobs: Some(jobs_tx),
            slots: Default::default(),
            progress,
            filter,
            one_file_system: selection.one_file_system,
            exclude_caches: selection.exclude_caches,
            names: Names::default(),
            links: HashMap::new(),
            held: Vec::new(),
            postgresql,
            batch: TreeBatch::default(),
            tree: Vec::new(),
        };
        let walked = r.walk_all(paths, finish);
        walked_all.store(true, std::sync::atomic::Ordering::Relaxed);
        // The readers end when there is nothing more to read; on a
        // failure they stop without sending what they hold.
        r.jobs = None;
        if walked.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for t in threads {
            if t.join().is_err() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        walked?;
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ErrorReply::internal(
                "a reader stopped before sending every chunk",
            ));
        }
        // Every file chunk is on its way: the tree goes last.
        r.flush_batch()?;
        r.sink.flush()?;
        let tree = std::mem::take(&mut r.tree);
        r.sink
            .tx
            .blocking_send(Item::Done { tree })
            .map_err(|_| ErrorReply::internal("transfer stopped"))
    })
}

/// Folders above the current entry held open, at most.
const OPEN_FOLDERS: usize = 64;

/// A folder being walked: its names listed and sorted, and while the walk
/// is not too deep, open.
struct Folder {
    fd: Option<rustix::fd::OwnedFd>,
    path: Vec<u8>,
    /// The names, each followed by its NUL.
    names: Vec<u8>,
    /// Where each name is in `names`, in the byte order of the names.
    spans: Vec<(usize, usize)>,
    /// The next span to visit.
    next: usize,
}

impl Folder {
    /// Lists the open folder `fd` at `path`, reading entries into `buf`.
    fn list(
        fd: rustix::fd::OwnedFd,
        path: Vec<u8>,
        buf: &mut Vec<std::mem::MaybeUninit<u8>>,
    ) -> std::io::Result<Folder> {
        buf.resize(LIST_BUFFER, std::mem::MaybeUninit::uninit());
        let mut names = Vec::new();
        let mut spans = Vec::new();
        let mut entries = rustix::fs::RawDir::new(&fd, buf.as_mut_slice());
        while let Some(entry) = entries.next() {
            let entry = entry?;
            let name = entry.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            let start = names.len();
            names.extend_from_slice(name);
            spans.push((start, names.len()));
        }
        // Names of one folder sort as their paths do (a NUL sorts first,
        // as the end of a shorter name does).
        spans.sort_unstable_by(|a, b| names[a.0..a.1].cmp(&names[b.0..b.1]));
        Ok(Folder {
            fd: Some(fd),
            path,
            names,
            spans,
            next: 0,
        })
    }

    /// Keeps only the entry `name`, if there is one.
    fn keep_only(&mut self, name: &[u8]) {
        let names = &self.names;
        self.spans.retain(|&(s, e)| &names[s..e - 1] == name);
    }
}

impl Reader<'_> {
    /// Walks every configured path, then what the applications add; every
    /// file is in the tree batches when it returns.
    fn walk_all(
        &mut self,
        paths: &[String],
        finish: impl FnOnce() -> Result<Vec<Addition>, String>,
    ) -> Result<(), ErrorReply> {
        // Walked in path order, so that the tree is sorted by path.
        let mut roots: Vec<&String> = paths.iter().collect();
        roots.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
        roots.dedup();
        let mut present = 0;
        for p in roots {
            let path = Path::new(p);
            match std::fs::symlink_metadata(path) {
                Ok(md) => {
                    present += 1;
                    self.walk(path, md.dev())?;
                }
                Err(e) => self.file_error(path, format!("cannot back up configured path: {e}")),
            }
        }
        if present == 0 {
            return Err(ErrorReply::bad_request(format!(
                "none of the configured paths exists on this system: {}",
                paths.join(", ")
            )));
        }
        // Every file read before the applications leave backup mode.
        self.settle(0)?;
        let additions = finish().map_err(|e| {
            ErrorReply::new(
                arca_schemas::ErrorCode::Internal,
                format!("the application backup could not be completed: {e}"),
            )
        })?;
        for a in additions {
            match a {
                Addition::Bytes { path, data } => self.bytes(&path, data)?,
                Addition::File(path) => match std::fs::symlink_metadata(&path) {
                    Ok(md) => {
                        let before = self.parent.take(path.as_os_str().as_bytes());
                        self.file(&path, &Stat::from(&md), before)?
                    }
                    // Missing, it would make the snapshot lie: no snapshot.
                    Err(e) => {
                        return Err(ErrorReply::internal(format!(
                            "cannot read {}, needed for a consistent backup: {e}",
                            path.display()
                        )));
                    }
                },
            }
        }
        self.settle(0)
    }

    /// True when `path`, inside a PostgreSQL data directory in backup
    /// mode, was removed after its folder was listed: the server removes
    /// temporary files and dropped relations at any time, and recovery
    /// from the backup's WAL does not need them (as `pg_basebackup`, the
    /// backup goes on without a word).
    fn vanished(&self, path: &Path, e: &std::io::Error) -> bool {
        let gone = e.kind() == std::io::ErrorKind::NotFound
            && self.postgresql.iter().any(|d| path.starts_with(d));
        if gone {
            tracing::debug!(path = %path.display(), "removed by PostgreSQL during the backup");
        }
        gone
    }

    /// The rule of the PostgreSQL data directory holding `path`, if any.
    fn rule(&self, path: &Path) -> postgresql::Rule {
        self.postgresql
            .iter()
            .map(|d| postgresql::rule(d, path))
            .find(|r| *r != postgresql::Rule::Keep)
            .unwrap_or(postgresql::Rule::Keep)
    }

    /// Stores `data`, made by the agent, as a file at `path`, owned like
    /// its folder, mode 0600, modified now.
    fn bytes(&mut self, path: &Path, data: Vec<u8>) -> Result<(), ErrorReply> {
        let folder = path.parent().unwrap_or(Path::new("/"));
        let md = std::fs::metadata(folder)
            .map_err(|e| ErrorReply::internal(format!("cannot read {}: {e}", folder.display())))?;
        let mut chunks = Vec::new();
        let mut sizes = Vec::new();
        for chunk in chunker(&data[..], &self.params) {
            let chunk = chunk.map_err(|e| ErrorReply::internal(e.to_string()))?;
            self.take_chunk(chunk.data, &mut chunks, &mut sizes)?;
        }
        let mut n = self.node(folder, NodeKind::File { chunks, sizes }, &Stat::from(&md));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        n.path = path.as_os_str().as_bytes().to_vec();
        n.xattrs = Vec::new();
        n.mode = 0o100600;
        n.size = data.len() as u64;
        n.mtime = now.as_secs() as i64;
        n.mtime_nsec = now.subsec_nanos();
        n.ctime = n.mtime;
        n.ctime_nsec = n.mtime_nsec;
        n.inode = 0;
        self.progress.lock().expect("progress lock").stats.files += 1;
        self.emit(Slot::Node(n))
    }

    fn file_error(&self, path: &Path, error: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_failed(path, error);
    }

    fn file_warning(&self, path: &Path, warning: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_warned(path, warning);
    }

    /// Walks `root` depth first, names of a folder in byte order: the
    /// order of the tree. Entries are read relative to their open folder,
    /// so a deep path is not looked up again for every entry in it.
    fn walk(&mut self, root: &Path, root_dev: u64) -> Result<(), ErrorReply> {
        let root_bytes = root.as_os_str().as_bytes();
        let name = std::ffi::CString::new(root_bytes)
            .map_err(|_| ErrorReply::bad_request("a configured path holds a NUL byte"))?;
        let mut buf = Vec::with_capacity(LIST_BUFFER);
        let mut stack: Vec<Folder> = Vec::new();
        if let Some(f) = self.visit(
            rustix::fs::CWD,
            &name,
            root_bytes.to_vec(),
            true,
            root_dev,
            &mut buf,
        )? {
            stack.push(f);
        }
        while let Some(top) = stack.last_mut() {
            let Some(&(start, end)) = top.spans.get(top.next) else {
                stack.pop();
                continue;
            };
            top.next += 1;
            let name = std::ffi::CStr::from_bytes_with_nul(&top.names[start..end])
                .expect("names are stored with their NUL");
            let mut path = Vec::with_capacity(top.path.len() + end - start);
            path.extend_from_slice(&top.path);
            if path.last() != Some(&b'/') {
                path.push(b'/');
            }
            path.extend_from_slice(name.to_bytes());
            let found = match &top.fd {
                Some(fd) => self.visit(fd, name, path, false, root_dev, &mut buf)?,
                None => {
                    let whole = std::ffi::CString::new(path.clone())
                        .expect("a path made of NUL-free names");
                    self.visit(rustix::fs::CWD, &whole, path, false, root_dev, &mut buf)?
                }
            };
            if let Some(mut f) = found {
                if stack.len() >= OPEN_FOLDERS {
                    // Deeper than this, entries are read by their whole
                    // path: the open folders stay few however deep the tree.
                    f.fd = None;
                }
                stack.push(f);
            }
        }
        Ok(())
    }

    /// Takes the entry `name` of the open folder `dir`, whose path is
    /// `path`; returns a folder to walk into.
    fn visit(
        &mut self,
        dir: impl std::os::fd::AsFd,
        name: &std::ffi::CStr,
        path: Vec<u8>,
        is_root: bool,
        root_dev: u64,
        buf: &mut Vec<std::mem::MaybeUninit<u8>>,
    ) -> Result<Option<Folder>, ErrorReply> {
        use rustix::fs::FileType;
        let p = Path::new(std::ffi::OsStr::from_bytes(&path));
        let rule = self.rule(p);
        // Below the root, the folders above were checked on the way.
        let excluded = if is_root {
            self.filter.excluded(&path)
        } else {
            self.filter.excluded_here(&path)
        };
        if excluded || rule == postgresql::Rule::Omit {
            return Ok(None);
        }
        let st = match Stat::at(&dir, name) {
            Ok(st) => st,
            Err(e) => {
                if !self.vanished(p, &e) {
                    self.file_error(p, format!("cannot read metadata: {e}"));
                }
                return Ok(None);
            }
        };
        let kind = st.file_type();
        // The parent's node for the path, if any (taken in walk order).
        let before = self.parent.take(&path);
        if kind == FileType::Directory {
            let n = self.node_like(p, NodeKind::Dir, &st, before);
            self.emit(Slot::Dir(n))?;
            if self.one_file_system && st.dev != root_dev {
                // A mount point: kept as an empty folder.
                return Ok(None);
            }
            if rule == postgresql::Rule::KeepFolderOnly {
                return Ok(None);
            }
            let listed = rustix::fs::openat(
                &dir,
                name,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .and_then(|fd| Folder::list(fd, path.clone(), buf));
            return match listed {
                Ok(mut f) => {
                    if self.exclude_caches && is_cache_dir(p) {
                        f.keep_only(b"CACHEDIR.TAG");
                    }
                    Ok(Some(f))
                }
                Err(e) if self.vanished(p, &e) => Ok(None),
                Err(e) => {
                    self.file_error(p, format!("cannot list folder: {e}"));
                    Ok(None)
                }
            };
        }
        if !self.filter.takes(&path) {
            return Ok(None);
        }
        match kind {
            // A link's target changes only with its inode.
            FileType::Symlink => match before {
                Some(mut b)
                    if same_entry(&b, &st) && matches!(b.kind, NodeKind::Symlink { .. }) =>
                {
                    let kind = std::mem::replace(&mut b.kind, NodeKind::Fifo);
                    let n = self.node_like(p, kind, &st, Some(b));
                    self.emit(Slot::Node(n))?;
                }
                _ => match rustix::fs::readlinkat(&dir, name, Vec::new()) {
                    Ok(target) => {
                        let kind = NodeKind::Symlink {
                            target: target.into_bytes(),
                        };
                        let n = self.node(p, kind, &st);
                        self.emit(Slot::Node(n))?;
                    }
                    Err(e) => self.file_error(p, format!("cannot read link: {e}")),
                },
            },
            FileType::RegularFile => self.file(p, &st, before)?,
            _ => {
                let kind = match kind {
                    FileType::Fifo => NodeKind::Fifo,
                    FileType::Socket => NodeKind::Socket,
                    _ => NodeKind::Device { rdev: st.rdev },
                };
                let n = self.node_like(p, kind, &st, before);
                self.progress.lock().expect("progress lock").stats.files += 1;
                self.emit(Slot::Node(n))?;
            }
        }
        Ok(None)
    }

    /// A node with the metadata of `md`, names and extended attributes.
    fn node(&mut self, path: &Path, kind: NodeKind, st: &Stat) -> Node {
        let xattrs = match meta::read_xattrs(path) {
            Ok(x) => x,
            Err(e) => {
                self.file_warning(path, e);
                Vec::new()
            }
        };
        Node {
            path: path.as_os_str().as_bytes().to_vec(),
            kind,
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            mtime: st.mtime,
            mtime_nsec: st.mtime_nsec,
            size: 0,
            ctime: st.ctime,
            ctime_nsec: st.ctime_nsec,
            inode: st.ino,
            user: self.names.user(st.uid),
            group: self.names.group(st.gid),
            xattrs,
            hardlink: None,
            sparse: false,
            changed: false,
        }
    }

    /// A node as [`Reader::node`] makes it, from the parent's node `before`
    /// when nothing about the entry changed since (see [`same_entry`]): its
    /// extended attributes are not read again.
    fn node_like(&mut self, path: &Path, kind: NodeKind, st: &Stat, before: Option<Node>) -> Node {
        let Some(mut n) = before.filter(|b| same_entry(b, st)) else {
            return self.node(path, kind, st);
        };
        n.kind = kind;
        n.mode = st.mode;
        n.uid = st.uid;
        n.gid = st.gid;
        n.mtime = st.mtime;
        n.mtime_nsec = st.mtime_nsec;
        n.size = 0;
        n.ctime = st.ctime;
        n.ctime_nsec = st.ctime_nsec;
        n.inode = st.ino;
        // Names as the name service says now (a user renamed since).
        if n.user.as_deref() != self.names.user_name(st.uid) {
            n.user = self.names.user(st.uid);
        }
        if n.group.as_deref() != self.names.group_name(st.gid) {
            n.group = self.names.group(st.gid);
        }
        n.hardlink = None;
        n.sparse = false;
        n.changed = false;
        n
    }

    /// A regular file; `before` is the parent's node for its path.
    fn file(&mut self, path: &Path, st: &Stat, before: Option<Node>) -> Result<(), ErrorReply> {
        let link_key = (st.nlink > 1).then_some((st.dev, st.ino));
        // Another name of a file already taken: same chunks, not read again.
        if let Some(first) = link_key.and_then(|k| self.links.get(&k)) {
            let kind = NodeKind::File {
                chunks: first.chunks.clone(),
                sizes: first.sizes.clone(),
            };
            let (first_path, size) = (first.path.clone(), first.size);
            let mut n = self.node_like(path, kind, st, before);
            n.size = size;
            n.hardlink = Some(first_path);
            self.progress.lock().expect("progress lock").stats.files += 1;
            return self.emit(Slot::Node(n));
        }
        // Content unchanged: the parent's chunks, not read again.
        if let Some(mut b) = before
            && unchanged(&b, st)
            && matches!(b.kind, NodeKind::File { .. })
        {
            let kind = std::mem::replace(&mut b.kind, NodeKind::Dir);
            let (size, sparse) = (b.size, b.sparse);
            {
                let mut p = self.progress.lock().expect("progress lock");
                p.stats.files += 1;
                p.stats.bytes += size;
                p.stats.chunks += kind_chunks(&kind) as u64;
                p.stats.unchanged_files += 1;
            }
            let mut n = self.node_like(path, kind, st, Some(b));
            n.size = size;
            n.sparse = sparse;
            self.remember_link(link_key, &n);
            return self.emit(Slot::Node(n));
        }
        if link_key.is_some() {
            // Read here, so that its later names find its chunks.
            let read = read_file(
                path,
                st.size,
                &self.params,
                &self.key,
                &mut self.sink,
                self.progress,
            )?;
            if let Some(n) = self.file_node(path, read) {
                self.remember_link(link_key, &n);
                self.emit(Slot::Node(n))?;
            }
            return Ok(());
        }
        let (done, read) = std::sync::mpsc::sync_channel(1);
        let job = ReadJob {
            path: path.to_path_buf(),
            size_hint: st.size,
            done,
        };
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| ErrorReply::internal("the readers stopped"))?;
        self.emit(Slot::File {
            path: path.to_path_buf(),
            read,
        })
    }

    /// The node of a file a reader read, or `None` (with a file error)
    /// when it could not be read.
    fn file_node(&mut self, path: &Path, read: FileRead) -> Option<Node> {
        match read {
            FileRead::Failed { what, error } => {
                if !self.vanished(path, &error) {
                    self.file_error(path, format!("{what}: {error}"));
                }
                None
            }
            FileRead::Read {
                chunks,
                sizes,
                size,
                md,
                changed,
            } => {
                let mut n = self.node(path, NodeKind::File { chunks, sizes }, &md);
                n.size = size;
                n.sparse = md.blocks.saturating_mul(512) < md.size;
                if changed && self.postgresql.iter().any(|d| path.starts_with(d)) {
                    // In a data directory in backup mode: recovery replays
                    // the WAL from the backup's start over every page
                    // written meanwhile, so the mixed copy is expected and
                    // harmless (as for `pg_basebackup`, not a warning).
                    n.changed = true;
                    tracing::debug!(path = %path.display(), "changed while read; the backup's WAL covers it");
                } else if changed {
                    n.changed = true;
                    self.file_warning(
                        path,
                        format!(
                            "changed while it was read ({} bytes when opened, {size} read): the snapshot's copy may mix old and new content; quiesce the application with a hook, or back it up again",
                            md.size
                        ),
                    );
                }
                self.progress.lock().expect("progress lock").stats.files += 1;
                Some(n)
            }
        }
    }

    /// Hashes a chunk made by the walker, counts it and queues it for
    /// sending.
    fn take_chunk(
        &mut self,
        data: Vec<u8>,
        chunks: &mut Vec<ChunkId>,
        sizes: &mut Vec<u32>,
    ) -> Result<(), ErrorReply> {
        take_chunk(
            &self.key,
            data,
            chunks,
            sizes,
            &mut self.sink,
            self.progress,
        )
    }

    fn remember_link(&mut self, key: Option<(u64, u64)>, n: &Node) {
        if let (Some(key), NodeKind::File { chunks, sizes }) = (key, &n.kind) {
            self.links.insert(
                key,
                FirstName {
                    path: n.path.clone(),
                    chunks: chunks.clone(),
                    sizes: sizes.clone(),
                    size: n.size,
                },
            );
        }
    }

    /// Queues an entry behind those still being read, and puts into the
    /// tree what is ready.
    fn emit(&mut self, slot: Slot) -> Result<(), ErrorReply> {
        self.slots.push_back(slot);
        self.settle(OUTSTANDING)
    }

    /// Puts entries into the tree in walk order until at most `keep`
    /// remain: a file still being read waits only while more than `keep`
    /// entries are queued.
    fn settle(&mut self, keep: usize) -> Result<(), ErrorReply> {
        while let Some(front) = self.slots.front() {
            if let Slot::File { read, .. } = front {
                let got = if self.slots.len() > keep {
                    read.recv().ok()
                } else {
                    match read.try_recv() {
                        Ok(r) => Some(r),
                        Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
                    }
                };
                let Some(Slot::File { path, .. }) = self.slots.pop_front() else {
                    unreachable!("the front is a file");
                };
                let read = got.ok_or_else(|| {
                    ErrorReply::internal(format!(
                        "the reader of {} stopped without an answer",
                        path.display()
                    ))
                })??;
                if let Some(n) = self.file_node(&path, read) {
                    self.push(n)?;
                }
                continue;
            }
            match self.slots.pop_front() {
                Some(Slot::Dir(n)) => self.push_dir(n)?,
                Some(Slot::Node(n)) => self.push(n)?,
                _ => unreachable!("the front is not a file"),
            }
        }
        Ok(())
    }

    /// A folder: written now, or with include patterns held until
    /// something under it is taken (or it matches itself).
    fn push_dir(&mut self, n: Node) -> Result<(), ErrorReply> {
        if !self.filter.has_includes() {
            return self.push(n);
        }
        // Held folders not above this one are finished, with nothing taken.
        while let Some(last) = self.held.last()
            && !crate::select::is_inside(&n.path, &last.path)
        {
            self.held.pop();
        }
        if self.filter.takes(&n.path) {
            self.push(n)
        } else {
            self.held.push(n);
            Ok(())
        }
    }

    fn push(&mut self, n: Node) -> Result<(), ErrorReply> {
        if !self.held.is_empty() {
            // Write the held folders above `n`, outermost first.
            let held = std::mem::take(&mut self.held);
            for d in held
                .into_iter()
                .filter(|d| crate::select::is_inside(&n.path, &d.path))
            {
                self.push_node(d)?;
            }
        }
        self.push_node(n)
    }

    fn push_node(&mut self, n: Node) -> Result<(), ErrorReply> {
        self.progress.lock().expect("progress lock").stats.entries += 1;
        self.batch.nodes.push(n);
        if self.batch.nodes.len() >= TREE_BATCH {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), ErrorReply> {
        if self.batch.nodes.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let bytes = codec::encode(&batch).map_err(|e| ErrorReply::internal(e.to_string()))?;
        let id = frame::chunk_id(&self.key, &bytes);
        self.tree.push(id);
        self.sink.send(id, bytes, true)
    }
}

/// True when `dir` holds a `CACHEDIR.TAG` with the standard signature.
fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    meta::open_regular(&dir.join("CACHEDIR.TAG"))
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == CACHEDIR_SIGNATURE
}

/// True when nothing about the entry changed since `before` was recorded:
/// the same inode, mode and change time. The kernel sets the change time
/// at every change of content, owner, mode, links or extended attributes
/// (and a program cannot set it back), so the recorded attributes and link
/// target still hold.
fn same_entry(before: &Node, now: &Stat) -> bool {
    before.inode == now.ino
        && before.mode == now.mode
        && before.ctime == now.ctime
        && before.ctime_nsec == now.ctime_nsec
}

/// How many chunks a file node names.
fn kind_chunks(kind: &NodeKind) -> usize {
    match kind {
        NodeKind::File { chunks, .. } => chunks.len(),
        _ => 0,
    }
}

/// True when `now` is the same file, unchanged, as `before`.
fn unchanged(before: &Node, now: &Stat) -> bool {
    before.size == now.size
        && before.mtime == now.mtime
        && before.mtime_nsec == now.mtime_nsec
        && before.ctime == now.ctime
        && before.ctime_nsec == now.ctime_nsec
        && before.inode == now.ino
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cuts(bytes: &[u8], p: &ChunkParams) -> Vec<(u64, usize)> {
        chunker(bytes, p)
            .map(|c| c.unwrap())
            .map(|c| (c.offset, c.length))
            .collect()
    }

    const SMALL: ChunkParams = ChunkParams {
        min: 2048,
        avg: 8192,
        max: 32768,
        level: 1,
    };

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 48,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x00A2_CA00),
            ..ProptestConfig::default()
        })]

        /// Bytes inserted early in a file move the boundaries near the
        /// insertion only: every chunk from a little after it is cut again
        /// exactly (so it deduplicates).
        #[test]
        fn boundaries_are_stable_under_early_insertions(
            seed in any::<u64>(),
            at in 0usize..100_000,
            inserted in proptest::collection::vec(any::<u8>(), 1..200),
        ) {
            let original = data(seed, 1_000_000);
            let mut edited = original.clone();
            edited.splice(at..at, inserted.iter().copied());
            let shift = inserted.len() as u64;
            let before: Vec<(u64, usize)> = cuts(&original, &SMALL);
            let after: std::collections::HashSet<(u64, usize)> = cuts(&edited, &SMALL).into_iter().collect();
            let horizon = (at + 4 * SMALL.max) as u64;
            let later: Vec<_> = before.iter().filter(|(o, _)| *o >= horizon).collect();
            let kept = later.iter().filter(|(o, l)| after.contains(&(o + shift, *l))).count();
            prop_assert!(later.len() > 50);
            prop_assert!(kept * 100 >= later.len() * 99, "only {kept} of {} later chunks kept", later.len());
        }
    }

    #[test]
    fn files_read_whole_are_cut_where_the_stream_cuts_them() {
        let dir = tempfile::tempdir().unwrap();
        for (i, len) in [0usize, 1, 2047, 2048, 9000, 32767, 32768, 32769, 100_000]
            .into_iter()
            .enumerate()
        {
            let bytes = data(i as u64 + 7, len);
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &bytes).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            let got: Vec<Vec<u8>> = file_chunks(&file, len as u64, &SMALL)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let want: Vec<Vec<u8>> = chunker(&bytes[..], &SMALL)
                .map(|c| c.unwrap().data)
                .collect();
            assert_eq!(got, want, "length {len}");
        }
    }

    #[test]
    fn pinned_boundaries_for_a_seeded_input_with_the_default_sizes() {
        let params = ChunkParams {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
            level: 3,
        };
        let bytes = data(2026, 12 << 20);
        let lengths: Vec<usize> = cuts(&bytes, &params).into_iter().map(|(_, l)| l).collect();
        assert_eq!(lengths.iter().sum::<usize>(), 12 << 20);
        assert_eq!(
            lengths, PINNED,
            "the chunker's cut points changed: stored data would no longer deduplicate"
        );
    }

    const PINNED: &[usize] = &[
        338436, 1837050, 507316, 324002, 2368207, 2242197, 1548472, 1856164, 526200, 699235, 335633,
    ];
}
