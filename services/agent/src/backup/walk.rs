//! The walker thread: walks the paths in the order of the tree, starts
//! the reader threads and hands them files, and closes the tree.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arca_schemas::tree::{Node, NodeKind, TreeBatch};

use crate::application::{Addition, postgresql};
use crate::error::AgentError;
use crate::meta::{self, LIST_BUFFER, Names, Stat};
use crate::progress::Progress;
use crate::select::Filter;

use super::chunking::{ChunkParams, chunker};
use super::folder::{Folder, OPEN_FOLDERS};
use super::readers::{ReadJob, reader_thread};
use super::sink::{ChunkSink, HasAsker};
use super::state::{Reader, Slot};
use super::{Item, Walk};

/// Threads listing folders ahead of the walk.
const PREFETCH_THREADS: usize = 8;

/// The signature a `CACHEDIR.TAG` file starts with.
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// The walker thread: walks, hands files to `readers` reader threads, and
/// feeds the sender. `finish` runs once every path was read (it ends
/// application backup modes) and names what to add before the tree is
/// closed.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_all(
    walk: Walk<'_>,
    params: ChunkParams,
    readers: usize,
    key: [u8; 32],
    asker: HasAsker,
    tx: tokio::sync::mpsc::Sender<Item>,
    progress: &Mutex<Progress>,
    finish: impl FnOnce() -> Result<Vec<Addition>, String>,
) -> Result<(), AgentError> {
    let Walk {
        parent,
        paths,
        selection,
        postgresql,
    } = walk;
    let filter = Filter::new(&selection.filter).map_err(AgentError::Selection)?;
    let ahead = Filter::new(&selection.filter).map_err(AgentError::Selection)?;
    let excludes = ahead.excludes_anything();
    let skip = move |path: &[u8]| ahead.excluded_here(path);
    let roots: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    let walked_all = std::sync::atomic::AtomicBool::new(false);
    let sink = ChunkSink::new(asker, tx, params.level);
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
                .map_err(|e| AgentError::io("cannot start a reader thread", e))?;
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
            return Err(AgentError::stopped(
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
            .map_err(|_| AgentError::stopped("transfer stopped"))
    })
}

impl Reader<'_> {
    /// Walks every configured path, then what the applications add; every
    /// file is in the tree batches when it returns.
    fn walk_all(
        &mut self,
        paths: &[String],
        finish: impl FnOnce() -> Result<Vec<Addition>, String>,
    ) -> Result<(), AgentError> {
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
            return Err(AgentError::BadRequest(format!(
                "none of the configured paths exists on this system: {}",
                paths.join(", ")
            )));
        }
        // Every file read before the applications leave backup mode.
        self.settle(0)?;
        let additions = finish().map_err(AgentError::Application)?;
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
                        return Err(AgentError::io(
                            format!(
                                "cannot read {}, needed for a consistent backup",
                                path.display()
                            ),
                            e,
                        ));
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
    pub(super) fn vanished(&self, path: &Path, e: &std::io::Error) -> bool {
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
    fn bytes(&mut self, path: &Path, data: Vec<u8>) -> Result<(), AgentError> {
        let folder = path.parent().unwrap_or(Path::new("/"));
        let md = std::fs::metadata(folder)
            .map_err(|e| AgentError::io(format!("cannot read {}", folder.display()), e))?;
        let mut chunks = Vec::new();
        let mut sizes = Vec::new();
        for chunk in chunker(&data[..], &self.params) {
            let chunk = chunk
                .map_err(|e| AgentError::io("cannot cut the file", std::io::Error::other(e)))?;
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

    pub(super) fn file_error(&self, path: &Path, error: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_failed(path, error);
    }

    pub(super) fn file_warning(&self, path: &Path, warning: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_warned(path, warning);
    }

    /// Walks `root` depth first, names of a folder in byte order: the
    /// order of the tree. Entries are read relative to their open folder,
    /// so a deep path is not looked up again for every entry in it.
    fn walk(&mut self, root: &Path, root_dev: u64) -> Result<(), AgentError> {
        let root_bytes = root.as_os_str().as_bytes();
        let name = std::ffi::CString::new(root_bytes)
            .map_err(|_| AgentError::BadRequest("a configured path holds a NUL byte".into()))?;
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
    ) -> Result<Option<Folder>, AgentError> {
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
    pub(super) fn node(&mut self, path: &Path, kind: NodeKind, st: &Stat) -> Node {
        let xattrs = match meta::read_xattrs(path) {
            Ok(x) => x,
            Err(e) => {
                self.file_warning(path, e.to_string());
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
    pub(super) fn node_like(
        &mut self,
        path: &Path,
        kind: NodeKind,
        st: &Stat,
        before: Option<Node>,
    ) -> Node {
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
