//! Fetching chunks from media: a tree chunk alone, file chunks in
//! batches, each checked against the id the tree records.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arca_schemas::ChunkId;
use arca_schemas::msg::{ChunkData, ChunksData, FetchedChunk, GetChunk, GetChunks};

use crate::error::AgentError;
use crate::patience::Patience;

use super::failure::EntryError;
use super::file::Ctx;

pub(super) async fn get_chunk(
    client: &async_nats::Client,
    subject: &str,
    id: ChunkId,
    session: Option<String>,
    patience: Patience,
) -> Result<ChunkData, AgentError> {
    let body = GetChunk { id, session };
    Ok(patience.request(client, subject, &body).await?)
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
) -> Result<Vec<FetchedChunk>, AgentError> {
    let n = ids.len();
    let body = GetChunks { ids, session };
    let r: ChunksData = patience.request(client, subject, &body).await?;
    if r.chunks.len() != n {
        return Err(AgentError::MediaAnswer(
            "media answered for a different number of chunks",
        ));
    }
    Ok(r.chunks)
}

/// One chunk of a file to fetch: (file, offset, chunk, plain size).
type Piece = (usize, u64, ChunkId, usize);

/// The chunks of the files of `ctx` not skipped, grouped for fetching by
/// at most [`GET_BATCH_CHUNKS`] and [`GET_BATCH_BYTES`].
pub(super) fn piece_batches(ctx: &Ctx, skip: &[bool]) -> Vec<Vec<Piece>> {
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
pub(super) async fn fetch_and_write(
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
        // A batch that failed fails each of its chunks, with media's word.
        let fetched: Vec<Result<FetchedChunk, String>> = match fetched {
            Ok(f) => f.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e.to_reply().message); batch.len()],
        };
        for ((i, offset, id, size), got) in batch.into_iter().zip(fetched) {
            match got {
                Ok(got @ FetchedChunk { frame: Some(_), .. }) => {
                    ctx.write_piece(i, (offset, id, size), &got)
                }
                Ok(FetchedChunk { error, .. }) => ctx.fail(
                    i,
                    EntryError::Fetch {
                        id,
                        reason: error.map(|e| e.message).unwrap_or_else(|| "missing".into()),
                    },
                ),
                Err(reason) => ctx.fail(i, EntryError::Fetch { id, reason }),
            }
            if ctx.files[i].remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                ctx.finish_file(i);
            }
        }
    })
    .await;
}
