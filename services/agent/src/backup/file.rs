//! A regular file in the walk: another name of a file already taken, a
//! file unchanged since the parent snapshot, or one handed to a reader.

use std::path::Path;

use arca_schemas::ChunkId;
use arca_schemas::tree::{Node, NodeKind};

use crate::error::AgentError;
use crate::meta::Stat;

use super::readers::{FileRead, ReadJob, read_file, take_chunk};
use super::state::{FirstName, Reader, Slot};

impl Reader<'_> {
    /// A regular file; `before` is the parent's node for its path.
    pub(super) fn file(
        &mut self,
        path: &Path,
        st: &Stat,
        before: Option<Node>,
    ) -> Result<(), AgentError> {
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
            .ok_or_else(|| AgentError::stopped("the readers stopped"))?;
        self.emit(Slot::File {
            path: path.to_path_buf(),
            read,
        })
    }

    /// The node of a file a reader read, or `None` (with a file error)
    /// when it could not be read.
    pub(super) fn file_node(&mut self, path: &Path, read: FileRead) -> Option<Node> {
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
    pub(super) fn take_chunk(
        &mut self,
        data: Vec<u8>,
        chunks: &mut Vec<ChunkId>,
        sizes: &mut Vec<u32>,
    ) -> Result<(), AgentError> {
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
