//! Where chunks go: batches that ask media which chunks it already holds
//! and send, compressed, only those it lacks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use arca_frame as frame;
use arca_schemas::ChunkId;
use arca_schemas::msg::{HasChunks, HasChunksReply, PutChunk};

use crate::error::AgentError;
use crate::patience::Patience;

use super::Item;

/// Most chunks, and plain bytes, sent to media in one request (a single
/// chunk larger than that goes alone; chunks are cut to fit the server's
/// max_payload).
const PUT_BATCH_CHUNKS: usize = 256;
const PUT_BATCH_BYTES: usize = 2 << 20;

/// Asks media which chunks it already holds, from the reader threads.
#[derive(Clone)]
pub(super) struct HasAsker {
    pub(super) client: async_nats::Client,
    pub(super) subject: String,
    pub(super) session: String,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) patience: Patience,
}

impl HasAsker {
    fn ask(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>, AgentError> {
        let n = ids.len();
        let body = HasChunks {
            session: self.session.clone(),
            ids,
        };
        let reply: HasChunksReply =
            self.runtime
                .block_on(self.patience.request(&self.client, &self.subject, &body))?;
        if reply.present.len() != n {
            return Err(AgentError::MediaAnswer(
                "media answered for a different number of chunks",
            ));
        }
        Ok(reply.present)
    }
}

/// Chunks waiting for one "which do you have?" round trip, per reader.
const PENDING_CHUNKS: usize = 256;
const PENDING_BYTES: usize = 4 << 20;

/// Where chunks go: each is sent once per backup, only if media does not
/// hold it, compressed. Each reader has its own (with its own batch of
/// questions to media); they share what was sent.
pub(super) struct ChunkSink {
    sent: Arc<Mutex<HashSet<ChunkId>>>,
    asker: HasAsker,
    pub(super) tx: tokio::sync::mpsc::Sender<Item>,
    level: i32,
    pending: Vec<(ChunkId, Vec<u8>, bool)>,
    pending_bytes: usize,
}

impl ChunkSink {
    /// A sink with nothing sent yet, asking `asker` and sending on `tx`
    /// chunks compressed at `level`.
    pub(super) fn new(
        asker: HasAsker,
        tx: tokio::sync::mpsc::Sender<Item>,
        level: i32,
    ) -> ChunkSink {
        ChunkSink {
            sent: Default::default(),
            asker,
            tx,
            level,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Another sink sharing what was sent, with an empty batch.
    pub(super) fn another(&self) -> ChunkSink {
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
    pub(super) fn send(
        &mut self,
        id: ChunkId,
        data: Vec<u8>,
        tree: bool,
    ) -> Result<(), AgentError> {
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

    pub(super) fn flush(&mut self) -> Result<(), AgentError> {
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

    fn put(&self, batch: Vec<PutChunk>) -> Result<(), AgentError> {
        self.tx
            .blocking_send(Item::Chunks(batch))
            .map_err(|_| AgentError::stopped("transfer stopped"))
    }
}
