//! Reading the system's paths and streaming them to media.
//!
//! A blocking reader thread walks the paths (folders before what they
//! hold, names sorted), takes files unchanged since the parent snapshot
//! from it without reading them, cuts the others into content-defined
//! chunks (FastCDC) and hashes them with the system's key. It asks media in
//! batches which chunks it already holds and hands only the others over a
//! bounded channel to the sender, which compresses them (on as many threads
//! as chunks in flight) and keeps at most `window` chunks unacknowledged;
//! media acknowledges each after a durable write. The tree goes last, as
//! tree chunks, and the snapshot is committed only after every
//! acknowledgement has arrived.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_repo::frame;
use arca_runtime::rpc::{self, RpcError};
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::{
    ChunkStored, CommitSnapshot, HasChunks, HasChunksReply, PutChunk, SnapshotCommitted,
    StartBackupTransfer, TransferOutcome,
};
use arca_schemas::subject::{self, MediaDataVerb};
use arca_schemas::tree::{Node, NodeKind, TreeBatch};
use arca_schemas::{ChunkId, codec};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::Progress;
use crate::application::{Addition, JobApps, postgresql};

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

/// Nodes per tree chunk.
const TREE_BATCH: usize = 4096;

enum Item {
    /// Plain bytes; the sender compresses them.
    Chunk {
        id: ChunkId,
        data: Vec<u8>,
        tree: bool,
    },
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
}

/// Runs one backup transfer to its end.
pub async fn run(
    client: async_nats::Client,
    system: String,
    request: Request,
    params: ChunkParams,
    window: usize,
    timeout: Duration,
    progress: Arc<Mutex<Progress>>,
) -> TransferOutcome {
    let Request {
        transfer: req,
        apps,
    } = request;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(window.max(1) * 2);
    let reader_progress = progress.clone();
    let paths = req.paths.clone();
    let asker = HasAsker {
        client: client.clone(),
        subject: subject::media_data(&req.media, &system, MediaDataVerb::Has),
        session: req.session.clone(),
        runtime: tokio::runtime::Handle::current(),
        timeout,
    };
    let key = req.chunk_key;
    let parent = match &req.parent {
        Some(id) => match load_parent(&client, &system, &req.media, id, &key, timeout).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(parent = %id, error = %e.message, "parent snapshot unreadable; reading every file");
                ParentFiles::new()
            }
        },
        None => ParentFiles::new(),
    };
    let postgresql = match &apps {
        Some(a) => a.postgresql_dirs().await,
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Handle::current();
    let reader = tokio::task::spawn_blocking(move || {
        let mut r = Reader {
            parent,
            params,
            key,
            asker,
            tx,
            progress: &reader_progress,
            postgresql,
            sent: HashSet::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            batch: TreeBatch::default(),
            tree: Vec::new(),
        };
        r.read_all(&paths, || match &apps {
            Some(a) => runtime.block_on(a.finish_backup()),
            None => Ok(Vec::new()),
        })
    });

    let put_subject = subject::media_data(&req.media, &system, MediaDataVerb::Put);
    let mut in_flight = FuturesUnordered::new();
    let mut tree = None;
    let mut failure: Option<ErrorReply> = None;
    loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let done: Result<(ChunkStored, usize), RpcError> = done;
                match done {
                    Ok((stored, wire)) => {
                        let mut p = progress.lock().expect("progress lock");
                        p.stats.wire_bytes += wire as u64;
                        if stored.new {
                            p.stats.new_chunks += 1;
                        }
                    }
                    Err(e) => {
                        failure = Some(e.to_reply());
                        break;
                    }
                }
            }
            item = rx.recv(), if in_flight.len() < window && tree.is_none() => {
                match item {
                    Some(Item::Chunk { id, data, tree }) => {
                        let session = req.session.clone();
                        let subject = put_subject.clone();
                        let client = client.clone();
                        let level = params.level;
                        in_flight.push(async move {
                            // Compression runs beside the reader, on as many
                            // threads as there are chunks in flight.
                            let frame = tokio::task::spawn_blocking(move || frame::encode(&data, level))
                                .await
                                .map_err(|e| RpcError::Transport { subject: subject.clone(), message: format!("compression failed: {e}") })?;
                            let body = PutChunk { session, id, tree, frame };
                            let wire = body.frame.len();
                            let r = rpc::retry(Duration::from_secs(30), || {
                                rpc::request_with_timeout::<_, ChunkStored>(&client, subject.clone(), &body, timeout)
                            })
                            .await?;
                            Ok((r, wire))
                        });
                    }
                    Some(Item::Done { tree: t }) => tree = Some(t),
                    None => {
                        // The reader ended without Done: it failed.
                        break;
                    }
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
    let (stats, file_errors) = {
        let p = progress.lock().expect("progress lock");
        (p.stats.clone(), crate::cap_file_errors(&p.file_errors))
    };
    let outcome = |snapshot, error| TransferOutcome {
        stats: stats.clone(),
        snapshot,
        file_errors: file_errors.clone(),
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
    let commit = CommitSnapshot {
        session: req.session.clone(),
        tree,
        stats: stats.clone(),
        file_errors: file_errors.clone(),
    };
    let subject = subject::media_data(&req.media, &system, MediaDataVerb::Commit);
    match rpc::retry(Duration::from_secs(30), || {
        rpc::request_with_timeout::<_, SnapshotCommitted>(
            &client,
            subject.clone(),
            &commit,
            Duration::from_secs(300),
        )
    })
    .await
    {
        Ok(c) => outcome(Some(c.snapshot.id), None),
        Err(e) => outcome(None, Some(e.to_reply())),
    }
}

/// The files of the parent snapshot, for skipping unchanged ones.
async fn load_parent(
    client: &async_nats::Client,
    system: &str,
    media: &str,
    id: &arca_schemas::SnapshotId,
    key: &[u8; 32],
    timeout: Duration,
) -> Result<ParentFiles, ErrorReply> {
    let snap: arca_schemas::msg::SnapshotReply = rpc::request(
        client,
        subject::media_data(media, system, MediaDataVerb::Snapshot),
        &arca_schemas::msg::GetSnapshot {
            snapshot: id.clone(),
        },
    )
    .await
    .map_err(|e| e.to_reply())?;
    let get = subject::media_data(media, system, MediaDataVerb::Get);
    let mut files = ParentFiles::new();
    for tree in &snap.tree {
        let body = arca_schemas::msg::GetChunk { id: *tree };
        let data: arca_schemas::msg::ChunkData =
            rpc::request_with_timeout(client, get.clone(), &body, timeout)
                .await
                .map_err(|e| e.to_reply())?;
        let plain = frame::decode(&data.frame, key, tree).map_err(|e| e.to_reply())?;
        let batch: TreeBatch =
            codec::decode(&plain).map_err(|e| ErrorReply::internal(e.to_string()))?;
        for n in batch.nodes {
            if matches!(n.kind, NodeKind::File { .. }) {
                files.insert(n.path.clone(), n);
            }
        }
    }
    Ok(files)
}

/// Asks media which chunks it already holds, from the reader thread.
struct HasAsker {
    client: async_nats::Client,
    subject: String,
    session: String,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
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
            .block_on(rpc::retry(Duration::from_secs(30), || {
                rpc::request_with_timeout(&self.client, self.subject.clone(), &body, self.timeout)
            }))
            .map_err(|e| e.to_reply())?;
        if reply.present.len() != n {
            return Err(ErrorReply::internal(
                "media answered for a different number of chunks",
            ));
        }
        Ok(reply.present)
    }
}

/// Chunks waiting for one "which do you have?" round trip.
const PENDING_CHUNKS: usize = 256;
const PENDING_BYTES: usize = 64 << 20;

struct Reader<'a> {
    parent: ParentFiles,
    params: ChunkParams,
    key: [u8; 32],
    asker: HasAsker,
    tx: tokio::sync::mpsc::Sender<Item>,
    progress: &'a Mutex<Progress>,
    /// PostgreSQL data directories in backup mode: what a base backup
    /// omits is left out.
    postgresql: Vec<PathBuf>,
    sent: HashSet<ChunkId>,
    pending: Vec<(ChunkId, Vec<u8>, bool)>,
    pending_bytes: usize,
    batch: TreeBatch,
    tree: Vec<ChunkId>,
}

impl Reader<'_> {
    /// The reader thread: walks, chunks, and feeds the sender. `finish`
    /// runs once every path was read (it ends application backup modes)
    /// and names what to add before the tree is closed.
    fn read_all(
        &mut self,
        paths: &[String],
        finish: impl FnOnce() -> Result<Vec<Addition>, String>,
    ) -> Result<(), ErrorReply> {
        let mut present = 0;
        for p in paths {
            let path = Path::new(p);
            match std::fs::symlink_metadata(path) {
                Ok(_) => {
                    present += 1;
                    self.walk(path)?;
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
                    Ok(md) => self.file(&path, &md)?,
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
        self.flush_batch()?;
        self.flush_pending()?;
        let tree = std::mem::take(&mut self.tree);
        self.tx
            .blocking_send(Item::Done { tree })
            .map_err(|_| ErrorReply::internal("transfer stopped"))
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
            let id = frame::chunk_id(&self.key, &chunk.data);
            chunks.push(id);
            sizes.push(chunk.length as u32);
            {
                let mut pr = self.progress.lock().expect("progress lock");
                pr.stats.bytes += chunk.length as u64;
                pr.stats.chunks += 1;
            }
            self.send(id, chunk.data, false)?;
        }
        let mut n = node(path, NodeKind::File { chunks, sizes }, &md);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        n.mode = 0o100600;
        n.size = data.len() as u64;
        n.mtime = now.as_secs() as i64;
        n.mtime_nsec = now.subsec_nanos();
        n.ctime = n.mtime;
        n.ctime_nsec = n.mtime_nsec;
        n.inode = 0;
        self.progress.lock().expect("progress lock").stats.files += 1;
        self.push(n)
    }
    fn file_error(&self, path: &Path, error: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_failed(path, error);
    }

    fn walk(&mut self, root: &Path) -> Result<(), ErrorReply> {
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            let rule = self.rule(&path);
            if rule == postgresql::Rule::Omit {
                continue;
            }
            let md = match std::fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) => {
                    if !self.vanished(&path, &e) {
                        self.file_error(&path, format!("cannot read metadata: {e}"));
                    }
                    continue;
                }
            };
            let ft = md.file_type();
            if ft.is_dir() {
                self.push(node(&path, NodeKind::Dir, &md))?;
                if rule == postgresql::Rule::KeepFolderOnly {
                    continue;
                }
                match std::fs::read_dir(&path) {
                    Ok(entries) => {
                        let mut names: Vec<PathBuf> =
                            entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
                        // Popped from the end: reverse order visits names ascending.
                        names.sort_by(|a, b| b.cmp(a));
                        stack.extend(names);
                    }
                    Err(e) if self.vanished(&path, &e) => {}
                    Err(e) => self.file_error(&path, format!("cannot list folder: {e}")),
                }
            } else if ft.is_symlink() {
                match std::fs::read_link(&path) {
                    Ok(target) => {
                        let kind = NodeKind::Symlink {
                            target: target.as_os_str().as_bytes().to_vec(),
                        };
                        self.push(node(&path, kind, &md))?;
                    }
                    Err(e) => self.file_error(&path, format!("cannot read link: {e}")),
                }
            } else if ft.is_file() {
                self.file(&path, &md)?;
            } else {
                self.file_error(&path, "special files are not backed up yet".into());
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &Path, md: &std::fs::Metadata) -> Result<(), ErrorReply> {
        if let Some(before) = self.parent.get(path.as_os_str().as_bytes())
            && let NodeKind::File { chunks, sizes } = &before.kind
            && unchanged(before, md)
        {
            let mut n = node(
                path,
                NodeKind::File {
                    chunks: chunks.clone(),
                    sizes: sizes.clone(),
                },
                md,
            );
            n.size = before.size;
            {
                let mut p = self.progress.lock().expect("progress lock");
                p.stats.files += 1;
                p.stats.bytes += before.size;
                p.stats.chunks += chunks.len() as u64;
                p.stats.unchanged_files += 1;
            }
            return self.push(n);
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                if !self.vanished(path, &e) {
                    self.file_error(path, format!("cannot open: {e}"));
                }
                return Ok(());
            }
        };
        let md = match file.metadata() {
            Ok(md) => md,
            Err(e) => {
                self.file_error(path, format!("cannot read metadata: {e}"));
                return Ok(());
            }
        };
        self.progress.lock().expect("progress lock").current =
            Some(path.to_string_lossy().into_owned());
        let p = self.params;
        let mut chunks = Vec::new();
        let mut sizes = Vec::new();
        let mut size = 0u64;
        for chunk in chunker(file, &p) {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    self.file_error(path, format!("read failed: {e}"));
                    return Ok(());
                }
            };
            size += chunk.length as u64;
            let id = frame::chunk_id(&self.key, &chunk.data);
            chunks.push(id);
            sizes.push(chunk.length as u32);
            {
                let mut pr = self.progress.lock().expect("progress lock");
                pr.stats.bytes += chunk.length as u64;
                pr.stats.chunks += 1;
            }
            self.send(id, chunk.data, false)?;
        }
        let mut n = node(path, NodeKind::File { chunks, sizes }, &md);
        n.size = size;
        self.progress.lock().expect("progress lock").stats.files += 1;
        self.push(n)
    }

    /// Queues a chunk; chunks media already holds are never compressed
    /// nor sent (deduplication over the wire, in batches).
    fn send(&mut self, id: ChunkId, data: Vec<u8>, tree: bool) -> Result<(), ErrorReply> {
        if !self.sent.insert(id) {
            return Ok(());
        }
        self.pending_bytes += data.len();
        self.pending.push((id, data, tree));
        if self.pending.len() >= PENDING_CHUNKS || self.pending_bytes >= PENDING_BYTES {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<(), ErrorReply> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let present = self
            .asker
            .ask(pending.iter().map(|(id, _, _)| *id).collect())?;
        for ((id, data, tree), have) in pending.into_iter().zip(present) {
            if have {
                continue;
            }
            self.tx
                .blocking_send(Item::Chunk { id, data, tree })
                .map_err(|_| ErrorReply::internal("transfer stopped"))?;
        }
        Ok(())
    }

    fn push(&mut self, n: Node) -> Result<(), ErrorReply> {
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
        self.send(id, bytes, true)
    }
}

fn node(path: &Path, kind: NodeKind, md: &std::fs::Metadata) -> Node {
    Node {
        path: path.as_os_str().as_bytes().to_vec(),
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        size: 0,
        ctime: md.ctime(),
        ctime_nsec: md.ctime_nsec() as u32,
        inode: md.ino(),
    }
}

/// The parent snapshot's files, by path.
pub type ParentFiles = std::collections::HashMap<Vec<u8>, Node>;

/// True when `now` is the same file, unchanged, as `before`.
fn unchanged(before: &Node, now: &std::fs::Metadata) -> bool {
    before.size == now.size()
        && before.mtime == now.mtime()
        && before.mtime_nsec == now.mtime_nsec() as u32
        && before.ctime == now.ctime()
        && before.ctime_nsec == now.ctime_nsec() as u32
        && before.inode == now.ino()
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
