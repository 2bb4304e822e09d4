//! The tree in walk order: entries queue behind files still being read
//! and go into tree batches, each sent as a tree chunk, as they are ready.

use arca_frame as frame;
use arca_schemas::codec;
use arca_schemas::tree::Node;

use crate::error::AgentError;

use super::state::{Reader, Slot};

/// Nodes per tree chunk.
const TREE_BATCH: usize = 4096;

/// Files handed to the readers and not yet put into the tree, at most: the
/// walker waits for the oldest when there are more.
const OUTSTANDING: usize = 1024;

impl Reader<'_> {
    /// Queues an entry behind those still being read, and puts into the
    /// tree what is ready.
    pub(super) fn emit(&mut self, slot: Slot) -> Result<(), AgentError> {
        self.slots.push_back(slot);
        self.settle(OUTSTANDING)
    }

    /// Puts entries into the tree in walk order until at most `keep`
    /// remain: a file still being read waits only while more than `keep`
    /// entries are queued.
    pub(super) fn settle(&mut self, keep: usize) -> Result<(), AgentError> {
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
                    AgentError::stopped(format!(
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
    fn push_dir(&mut self, n: Node) -> Result<(), AgentError> {
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

    fn push(&mut self, n: Node) -> Result<(), AgentError> {
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

    fn push_node(&mut self, n: Node) -> Result<(), AgentError> {
        self.progress.lock().expect("progress lock").stats.entries += 1;
        self.batch.nodes.push(n);
        if self.batch.nodes.len() >= TREE_BATCH {
            self.flush_batch()?;
        }
        Ok(())
    }

    pub(super) fn flush_batch(&mut self) -> Result<(), AgentError> {
        if self.batch.nodes.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let bytes = codec::encode(&batch).map_err(AgentError::Codec)?;
        let id = frame::chunk_id(&self.key, &bytes);
        self.tree.push(id);
        self.sink.send(id, bytes, true)
    }
}
