//! Chunk ids and the framing of a chunk's bytes.
//!
//! A chunk travels and rests as `[FRAME_VERSION][compression][payload]`:
//! one version byte, one compression marker (`0` raw, `1` zstd), then the
//! payload. A chunk is stored raw when zstd would not make it smaller, so a
//! frame is never more than two bytes larger than the data it carries.
//! The id names the plain (uncompressed) bytes, so a reader verifies what it
//! decoded, not what it received.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version byte of the chunk frame.
pub const FRAME_VERSION: u8 = 1;
/// Compression marker: payload stored as is.
pub const COMPRESSION_NONE: u8 = 0;
/// Compression marker: payload is one zstd frame.
pub const COMPRESSION_ZSTD: u8 = 1;

/// The 32-byte id of a chunk: the BLAKE3 hash of its plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ChunkId(
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub [u8; 32],
);

impl ChunkId {
    /// Lower-case hex, as used in file names and messages.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ChunkId(out))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId([0xab; 32]);
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
    }
}
