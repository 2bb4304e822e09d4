//! The chunk frame: `[version][compression][payload]` (see
//! [`arca_schemas::chunk`]). Compression is zstd, skipped when it would not
//! make the chunk smaller. A chunk's id is the BLAKE3 hash of its plain
//! bytes keyed with its system's chunk-id key.

use arca_schemas::ChunkId;
use arca_schemas::chunk::{COMPRESSION_NONE, COMPRESSION_ZSTD, FRAME_VERSION};

use crate::RepoError;

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

/// Decompresses at most `MAX_CHUNK` bytes, allocating what the frame
/// says it holds (not the maximum).
fn decompress(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let capacity = match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n as usize <= MAX_CHUNK => n as usize,
        Ok(Some(_)) => {
            return Err(std::io::Error::other("frame larger than the largest chunk"));
        }
        _ => MAX_CHUNK,
    };
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("just made").decompress(payload, capacity)
    })
}

/// Largest plain chunk a frame may decode to (guards against zstd bombs).
pub const MAX_CHUNK: usize = 64 << 20;

/// Decodes a frame and checks that its plain bytes have id `id` under `key`.
pub fn decode(frame: &[u8], key: &[u8; 32], id: &ChunkId) -> Result<Vec<u8>, RepoError> {
    let corrupt = |detail: String| RepoError::Corrupt {
        what: format!("chunk {id}"),
        detail,
    };
    let [version, compression, payload @ ..] = frame else {
        return Err(corrupt("frame shorter than its header".into()));
    };
    if *version != FRAME_VERSION {
        return Err(corrupt(format!("unknown frame version {version}")));
    }
    let data = match *compression {
        COMPRESSION_NONE => payload.to_vec(),
        COMPRESSION_ZSTD => decompress(payload).map_err(|e| corrupt(format!("zstd: {e}")))?,
        other => return Err(corrupt(format!("unknown compression {other}"))),
    };
    let actual = chunk_id(key, &data);
    if actual != *id {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(data)
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
            Err(RepoError::Corrupt { .. })
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
}
