//! The bounds media holds every agent's request to.
//!
//! An agent is input from the lower-trust zone: whatever it sends is
//! checked against these bounds where it is received, before anything is
//! read, decoded or stored for it (invariant 7). Each bound is several
//! times what an honest agent sends (its own constants are named beside
//! each), so that an honest backup or restore never meets one, and each
//! refusal says which bound was met and what to do.

use crate::error::MediaError;

/// Most ids one `get-many` may name (the agent asks for at most 256,
/// `GET_BATCH_CHUNKS` in its restore).
pub const MAX_GET_IDS: usize = 1024;

/// Most frame bytes one `get-many` answer may carry, duplicates counted:
/// within the server's `max_payload` (8 MB). The agent asks for at most
/// 2 MiB, or one chunk of at most [`arca_frame::MAX_CHUNK`].
pub const MAX_GET_BYTES: u64 = 6 << 20;

/// Most chunks one `put-many` may carry (the agent sends at most 256,
/// `PUT_BATCH_CHUNKS` in its backup).
pub const MAX_PUT_CHUNKS: usize = 1024;

/// Most tree chunks one snapshot may name (a tree chunk holds up to 4096
/// nodes in the agent's backup, so this is a billion files).
pub const MAX_TREE_CHUNKS: usize = 1 << 18;

/// Most nodes one tree chunk may hold (the agent puts 4096, `TREE_BATCH`
/// in its backup).
pub const MAX_TREE_NODES: usize = 1 << 15;

/// Data requests of one system handled at a time; more are answered
/// "busy" (retryable) at once. The agent keeps at most `window` (8) puts
/// or fetches and a few `has` questions in flight.
pub const SYSTEM_IN_FLIGHT: usize = 24;

/// Requests of one system reading or writing the repository at a time
/// (its share of the blocking threads); the others of its in-flight
/// requests wait for a turn.
pub const SYSTEM_WORKERS: usize = 4;

/// Data requests of all systems handled at a time; more are answered
/// "busy" (retryable) at once.
pub const IN_FLIGHT: usize = 256;

/// Default of `session-idle-secs`: a backup session that no request used
/// for this long is closed.
pub const DEFAULT_SESSION_IDLE_SECS: u64 = 6 * 3600;

/// Default of `session-max-chunks`: chunks one backup session may name
/// (stored, or asked about). About 4 TiB of new and unchanged data at the
/// agent's average chunk of 1 MiB.
pub const DEFAULT_SESSION_MAX_CHUNKS: usize = 4 << 20;

/// Refuses a request naming more than `max` items.
pub fn at_most(what: &str, n: usize, max: usize) -> Result<(), MediaError> {
    if n > max {
        return Err(MediaError::BadRequest(format!(
            "refused: {what} names {n} chunks, at most {max} per request; send smaller batches"
        )));
    }
    Ok(())
}

/// The answer to a request over its system's share of media's work.
pub fn busy(system: &str, why: &str) -> MediaError {
    MediaError::Busy(format!(
        "media is busy ({why}); requests of system {system} wait: try again shortly"
    ))
}

#[cfg(test)]
mod tests {
    use arca_runtime::rpc::decode_request;
    use arca_schemas::msg::{CommitSnapshot, GetChunks, HasChunks, PutChunk, PutChunks};
    use arca_schemas::tree::TreeBatch;
    use arca_schemas::{ChunkId, codec};
    use proptest::prelude::*;

    /// Decodes `bytes` as every body an agent sends media, and as a tree.
    fn decode_all(bytes: &[u8]) {
        let _ = decode_request::<PutChunk>(bytes);
        let _ = decode_request::<PutChunks>(bytes);
        let _ = decode_request::<GetChunks>(bytes);
        let _ = decode_request::<HasChunks>(bytes);
        let _ = decode_request::<CommitSnapshot>(bytes);
        let _ = codec::decode::<TreeBatch>(bytes);
    }

    /// Real bodies, to mutate: decoding goes deep before it fails.
    fn samples() -> Vec<Vec<u8>> {
        let id = ChunkId([7; 32]);
        let put = PutChunk {
            session: "s".into(),
            id,
            tree: false,
            frame: vec![1, 0, 1, 2, 3],
        };
        vec![
            codec::encode(&put).unwrap(),
            codec::encode(&PutChunks {
                session: "s".into(),
                chunks: vec![put.clone(), put],
            })
            .unwrap(),
            codec::encode(&GetChunks {
                ids: vec![id; 3],
                session: Some("s".into()),
            })
            .unwrap(),
            codec::encode(&CommitSnapshot {
                session: "s".into(),
                tree: vec![id],
                stats: Default::default(),
                file_errors: vec![],
                signature: vec![1; 64],
            })
            .unwrap(),
        ]
    }

    proptest! {
        /// No body of arbitrary bytes panics a decoder.
        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            decode_all(&bytes);
        }

        /// Real bodies with bytes changed, cut or with a huge length
        /// written into them never panic a decoder either.
        #[test]
        fn mutated_bodies_never_panic(
            which in 0usize..4,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut b = samples()[which].clone();
            for (at, v) in edits {
                let at = at % b.len();
                b[at] = v;
            }
            decode_all(&b);
            b.truncate(cut % (b.len() + 1));
            decode_all(&b);
            // An array header claiming 2^32 - 1 elements.
            b.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
            decode_all(&b);
        }
    }
}
