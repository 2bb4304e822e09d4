//! The chunk frame: `[version][compression][payload]` (see
//! [`arca_schemas::chunk`]). Compression is zstd, skipped when it would not
//! make the chunk smaller. A chunk's id is the BLAKE3 hash of its plain
//! bytes keyed with its system's chunk-id key.
//!
//! The repository stores frames and the agent makes and reads them, so
//! the codec is a crate of its own that neither owns.
//!
//! Errors: every failure is a [`FrameError`] and none is helped by a
//! retry; the bytes are what they are.

use arca_schemas::chunk::{COMPRESSION_NONE, COMPRESSION_ZSTD, FRAME_VERSION};
use arca_schemas::tree::TreeBatch;
use arca_schemas::{ChunkId, ErrorCode, ErrorReply};

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is damaged, too large, or not the chunk it claims to be.
    #[error("corrupt chunk {id}: {detail}")]
    Corrupt {
        /// The chunk the frame was read as.
        id: ChunkId,
        /// What is wrong.
        detail: String,
    },
    /// The frame decoded and checked, but its bytes are not a tree batch.
    #[error("corrupt tree chunk {id}: {detail}")]
    NotATree {
        /// The tree chunk.
        id: ChunkId,
        /// The decoder's complaint.
        detail: String,
    },
}

impl FrameError {
    /// The typed reply for a request that hit this error: always
    /// `corrupt`, never retryable.
    pub fn to_reply(&self) -> ErrorReply {
        ErrorReply::new(ErrorCode::Corrupt, self.to_string())
    }
}

/// The id of plain chunk bytes under a system's chunk-id key.
pub fn chunk_id(key: &[u8; 32], data: &[u8]) -> ChunkId {
    ChunkId(*blake3::keyed_hash(key, data).as_bytes())
}

/// Frames `data`, compressing at `level` when that helps.
pub fn encode(data: &[u8], level: i32) -> Vec<u8> {
    if let Ok(compressed) = compress(data, level)
        && compressed.len() < data.len()
    {
        let mut out = Vec::with_capacity(compressed.len() + 2);
        out.extend_from_slice(&[FRAME_VERSION, COMPRESSION_ZSTD]);
        out.extend_from_slice(&compressed);
        return out;
    }
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(&[FRAME_VERSION, COMPRESSION_NONE]);
    out.extend_from_slice(data);
    out
}

thread_local! {
    /// One zstd context per thread and level: creating one per chunk cost
    /// a tenth of the agent's time on many small files.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        c.as_mut().expect("just made").1.compress(data)
    })
}

/// Decompresses at most `cap` bytes. A frame whose header states its
/// content size is decoded in one step into exactly that much memory
/// (refused at once when it states more than `cap`); one that does not
/// say is decoded as a stream that stops one byte past `cap`, so that no
/// frame makes the decoder allocate more than `cap` bytes whatever it
/// holds.
fn decompress(payload: &[u8], cap: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let too_large = || std::io::Error::other(format!("decodes to more than {cap} bytes"));
    match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n > cap as u64 => Err(too_large()),
        Ok(Some(n)) => DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            // Capacity is what the header says: a payload that holds
            // more (a second frame) fails as too small a buffer.
            d.as_mut()
                .expect("just made")
                .decompress(payload, n as usize)
        }),
        _ => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(payload)?;
            // Room for exactly one byte past the cap: reading to the end
            // never grows it further (a hostile frame's only gain is this).
            let mut out = Vec::with_capacity(cap + 1);
            (&mut decoder).take(cap as u64 + 1).read_to_end(&mut out)?;
            if out.len() > cap {
                return Err(too_large());
            }
            Ok(out)
        }
    }
}

/// Largest plain data chunk (file contents) a frame may decode to: the
/// largest chunk an agent cuts (its `chunk-max` is bounded by this), and
/// the bound media checks at `put` against zstd bombs.
pub const MAX_CHUNK: usize = 4 << 20;

/// Largest plain tree chunk (a batch of tree nodes) a frame may decode
/// to. A tree chunk is larger than a data chunk when it names many
/// chunks (one node of a big file names thousands); the message that
/// carries it is bounded by the server's `max_payload` anyway.
pub const MAX_TREE_CHUNK: usize = 16 << 20;

/// Decodes a frame of either kind (at most [`MAX_TREE_CHUNK`] plain bytes)
/// and checks that its plain bytes have id `id` under `key`.
pub fn decode(frame: &[u8], key: &[u8; 32], id: &ChunkId) -> Result<Vec<u8>, FrameError> {
    decode_within(frame, key, id, MAX_TREE_CHUNK)
}

/// Decodes a frame of a data chunk: at most [`MAX_CHUNK`] plain bytes.
pub fn decode_data(frame: &[u8], key: &[u8; 32], id: &ChunkId) -> Result<Vec<u8>, FrameError> {
    decode_within(frame, key, id, MAX_CHUNK)
}

/// Decodes a frame into at most `cap` plain bytes (never allocating more,
/// whatever the frame holds) and checks that they have id `id` under `key`.
pub fn decode_within(
    frame: &[u8],
    key: &[u8; 32],
    id: &ChunkId,
    cap: usize,
) -> Result<Vec<u8>, FrameError> {
    let corrupt = |detail: String| FrameError::Corrupt { id: *id, detail };
    let [version, compression, payload @ ..] = frame else {
        return Err(corrupt("frame shorter than its header".into()));
    };
    if *version != FRAME_VERSION {
        return Err(corrupt(format!("unknown frame version {version}")));
    }
    let data = match *compression {
        COMPRESSION_NONE if payload.len() > cap => {
            return Err(corrupt(format!("holds more than {cap} bytes")));
        }
        COMPRESSION_NONE => payload.to_vec(),
        COMPRESSION_ZSTD => decompress(payload, cap).map_err(|e| corrupt(format!("zstd: {e}")))?,
        other => return Err(corrupt(format!("unknown compression {other}"))),
    };
    let actual = chunk_id(key, &data);
    if actual != *id {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(data)
}

/// Decodes the frame of a tree chunk (as [`decode`]) and then the tree
/// batch it holds: the one way every reader of a snapshot's tree opens
/// its chunks.
pub fn decode_tree(frame: &[u8], key: &[u8; 32], id: &ChunkId) -> Result<TreeBatch, FrameError> {
    let plain = decode(frame, key, id)?;
    arca_schemas::codec::decode(&plain).map_err(|e| FrameError::NotATree {
        id: *id,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [9; 32];

    #[test]
    fn round_trip_compressible_and_not() {
        let text = b"abcabcabc".repeat(1000);
        let noise: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for data in [&text[..], &noise[..], &[][..]] {
            let id = chunk_id(&K, data);
            let frame = encode(data, 3);
            assert!(frame.len() <= data.len() + 2);
            assert_eq!(decode(&frame, &K, &id).unwrap(), data);
        }
    }

    #[test]
    fn a_flipped_byte_or_another_key_is_caught() {
        let data = b"hello world".repeat(100);
        let id = chunk_id(&K, &data);
        let mut frame = encode(&data, 3);
        assert!(decode(&frame, &[8; 32], &id).is_err());
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert!(matches!(
            decode(&frame, &K, &id),
            Err(FrameError::Corrupt { .. })
        ));
    }

    #[test]
    fn pinned_frame_header_and_id() {
        let frame = encode(&[0u8; 4096], 3);
        assert_eq!(&frame[..2], &[1, 1]);
        assert_eq!(encode(b"x", 3), vec![1, 0, b'x']);
        assert_eq!(
            chunk_id(&[0; 32], b"arca").to_hex(),
            blake3::keyed_hash(&[0; 32], b"arca").to_hex().to_string()
        );
    }

    #[test]
    fn a_tree_chunk_decodes_to_its_batch_and_other_bytes_do_not() {
        let batch = TreeBatch {
            nodes: vec![arca_schemas::tree::Node::bare(
                b"/etc",
                arca_schemas::tree::NodeKind::Dir,
                0o40755,
            )],
        };
        let plain = arca_schemas::codec::encode(&batch).unwrap();
        let id = chunk_id(&K, &plain);
        assert_eq!(decode_tree(&encode(&plain, 3), &K, &id).unwrap(), batch);
        let id = chunk_id(&K, b"not a tree");
        let e = decode_tree(&encode(b"not a tree", 3), &K, &id).unwrap_err();
        assert!(matches!(e, FrameError::NotATree { .. }), "{e}");
        assert!(e.to_string().starts_with("corrupt tree chunk "), "{e}");
    }

    /// A zstd frame of `n` zeros, with or without its content size in
    /// the header.
    fn zeros(n: usize, with_size: bool) -> Vec<u8> {
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(with_size))
            .unwrap();
        let mut frame = vec![FRAME_VERSION, COMPRESSION_ZSTD];
        frame.extend(c.compress(&vec![0u8; n]).unwrap());
        frame
    }

    #[test]
    fn a_zstd_bomb_is_refused_with_or_without_its_size_in_the_header() {
        for with_size in [true, false] {
            let frame = zeros(MAX_CHUNK + 1, with_size);
            assert!(frame.len() < 4096, "a bomb is small");
            let id = chunk_id(&K, &vec![0u8; MAX_CHUNK + 1]);
            let e = decode_data(&frame, &K, &id).unwrap_err().to_string();
            assert!(e.contains("more than"), "{e}");
            // Exactly the bound decodes, in both forms.
            let frame = zeros(MAX_CHUNK, with_size);
            let id = chunk_id(&K, &vec![0u8; MAX_CHUNK]);
            assert_eq!(decode_data(&frame, &K, &id).unwrap().len(), MAX_CHUNK);
        }
        // A raw frame past the bound is refused too.
        let mut raw = vec![FRAME_VERSION, COMPRESSION_NONE];
        raw.extend(vec![1u8; MAX_CHUNK + 1]);
        let id = chunk_id(&K, &raw[2..]);
        assert!(decode_data(&raw, &K, &id).is_err());
        assert!(decode(&raw, &K, &id).is_ok());
    }

    #[test]
    fn two_zstd_frames_decode_no_more_than_the_first_one_states() {
        let mut frame = zeros(1000, true);
        let second = zeros(MAX_CHUNK, true);
        frame.extend_from_slice(&second[2..]);
        let id = chunk_id(&K, &[0u8; 1000]);
        assert!(decode_data(&frame, &K, &id).is_err());
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decoder, and whatever it
        /// returns is within the cap (a wrong id is the usual answer).
        #[test]
        fn arbitrary_frames_never_panic(frame in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let id = ChunkId([0; 32]);
            let _ = decode_within(&frame, &K, &id, 4096);
            let mut z = vec![FRAME_VERSION, COMPRESSION_ZSTD];
            z.extend_from_slice(&frame);
            let _ = decode_within(&z, &K, &id, 4096);
        }

        /// A frame that decodes at all decodes to at most the cap.
        #[test]
        fn decoded_chunks_stay_within_the_cap(n in 0usize..20_000, with_size in proptest::bool::ANY, cap in 0usize..20_000) {
            let frame = zeros(n, with_size);
            let id = chunk_id(&K, &vec![0u8; n]);
            match decode_within(&frame, &K, &id, cap) {
                Ok(d) => proptest::prop_assert!(d.len() <= cap && d.len() == n),
                Err(_) => proptest::prop_assert!(n > cap),
            }
        }
    }
}
