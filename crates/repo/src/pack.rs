//! Pack files: append-only sequences of sealed chunk records.
//!
//! ```text
//! pack   := "ARCAPK" 0x01 0x00  record*
//! record := "AR" kind:u8 0x00 id:[32] len:u32le sealed:[len]
//! ```
//!
//! `kind` is 0 for a data chunk, 1 for a tree chunk; `sealed` is the chunk
//! frame sealed with the data key, associated data
//! `"arca-chunk-v1" || kind || system || id`. Records are self-delimiting,
//! so a pack can be read without any index, and a pack cut short by a crash
//! keeps every record before the cut.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use arca_schemas::ChunkId;

use crate::crypto::Keys;

/// First bytes of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"ARCAPK\x01\x00";
/// Bytes of a record before its sealed payload.
pub const RECORD_HEADER: usize = 40;
/// Largest sealed payload a record may hold: the largest frame any
/// version ever wrote (64 MiB; [`arca_frame::MAX_TREE_CHUNK`] and
/// [`arca_frame::MAX_CHUNK`] are smaller now), so that older packs
/// still scan.
pub const MAX_SEALED: usize = (64 << 20) + 1024;

/// Kind of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// File contents.
    Data,
    /// A batch of tree nodes.
    Tree,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Data => 0,
            Kind::Tree => 1,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Kind::Data),
            1 => Some(Kind::Tree),
            _ => None,
        }
    }
}

/// The associated data of a chunk record.
pub fn chunk_aad(system: &str, kind: Kind, id: &ChunkId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(14 + 1 + system.len() + 32);
    aad.extend_from_slice(b"arca-chunk-v1");
    aad.push(kind.byte());
    aad.extend_from_slice(system.as_bytes());
    aad.extend_from_slice(&id.0);
    aad
}

/// Encodes one record.
pub fn record(keys: &Keys, system: &str, kind: Kind, id: &ChunkId, frame: &[u8]) -> Vec<u8> {
    let sealed = keys.seal(&chunk_aad(system, kind, id), frame);
    let mut out = Vec::with_capacity(RECORD_HEADER + sealed.len());
    out.extend_from_slice(b"AR");
    out.push(kind.byte());
    out.push(0);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out.extend_from_slice(&sealed);
    out
}

/// One record found by [`scan`].
#[derive(Debug, Clone)]
pub struct Found {
    /// Chunk id.
    pub id: ChunkId,
    /// Data or tree.
    pub kind: Kind,
    /// Offset of the record in the pack.
    pub offset: u64,
    /// Length of the whole record.
    pub len: u32,
    /// The chunk frame (only when [`scan`] was asked to open records).
    pub frame: Option<Vec<u8>>,
}

/// What a scan of a pack found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whole, authentic records in order.
    pub records: Vec<Found>,
    /// Bytes up to the end of the last good record.
    pub good_len: u64,
    /// Records whose payload fails authentication (skipped; the scan goes on).
    pub damaged: Vec<(ChunkId, u64, String)>,
    /// Why the scan stopped before the end, if it did.
    pub stopped: Option<String>,
}

/// Reads every record of a pack, opening each to check it is authentic.
/// Skips records whose payload is damaged; stops where a header is
/// damaged or the file is cut short. With `keep_frames`, keeps the frames.
pub fn scan(path: &Path, keys: &Keys, system: &str, keep_frames: bool) -> std::io::Result<Scan> {
    let file = File::open(path)?;
    let total = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut out = Scan::default();
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || magic != PACK_MAGIC {
        out.stopped = Some("not a pack (bad magic)".into());
        return Ok(out);
    }
    let mut offset = PACK_MAGIC.len() as u64;
    out.good_len = offset;
    let mut header = [0u8; RECORD_HEADER];
    loop {
        if offset == total {
            return Ok(out);
        }
        if r.read_exact(&mut header).is_err() {
            out.stopped = Some(format!("record header cut short at offset {offset}"));
            return Ok(out);
        }
        let kind = Kind::from_byte(header[2]);
        let id = ChunkId(header[4..36].try_into().expect("32 bytes"));
        let len = u32::from_le_bytes(header[36..40].try_into().expect("4 bytes")) as usize;
        let Some(kind) = kind.filter(|_| &header[..2] == b"AR" && len <= MAX_SEALED) else {
            out.stopped = Some(format!("damaged record header at offset {offset}"));
            return Ok(out);
        };
        let mut sealed = vec![0u8; len];
        if r.read_exact(&mut sealed).is_err() {
            out.stopped = Some(format!("record of chunk {id} at offset {offset} cut short"));
            return Ok(out);
        }
        let rec_len = (RECORD_HEADER + len) as u32;
        let Some(frame) = keys.open(&chunk_aad(system, kind, &id), &sealed) else {
            out.damaged.push((
                id,
                offset,
                format!("record at offset {offset} fails authentication"),
            ));
            offset += rec_len as u64;
            out.good_len = offset;
            continue;
        };
        out.records.push(Found {
            id,
            kind,
            offset,
            len: rec_len,
            frame: keep_frames.then_some(frame),
        });
        offset += rec_len as u64;
        out.good_len = offset;
    }
}
