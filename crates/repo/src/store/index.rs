//! The index: where each chunk of each system lies (pack, offset,
//! length), held in memory and written per pack to `index/<system>/<pack>`
//! as MessagePack followed by its BLAKE3 hash. It can always be rebuilt
//! from the packs themselves.

use std::path::{Path, PathBuf};

use arca_schemas::{ChunkId, codec};
use serde::{Deserialize, Serialize};

use super::{Loc, PackFile, Repository};
use crate::RepoError;
use crate::fsutil::write_durable;
use crate::pack::{self, Kind};

/// One entry of an index file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IndexEntry {
    /// Chunk id.
    pub id: ChunkId,
    /// Data or tree.
    pub kind: Kind,
    /// Offset of the record in the pack.
    pub offset: u64,
    /// Length of the record.
    pub len: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct IndexFile {
    pub(crate) pack: String,
    pub(crate) entries: Vec<IndexEntry>,
}

impl Repository {
    /// Index entries of a pack, read from the pack itself.
    pub(super) fn index_pack(
        &self,
        system: &str,
        path: &Path,
    ) -> Result<Vec<IndexEntry>, RepoError> {
        let scan =
            pack::scan(path, &self.keys, system, false).map_err(|e| RepoError::io(path, e))?;
        Ok(entries_of(&scan))
    }

    pub(crate) fn write_index_file(
        &self,
        system: &str,
        pack: &str,
        entries: &[IndexEntry],
    ) -> Result<(), RepoError> {
        let file = IndexFile {
            pack: pack.to_owned(),
            entries: entries.to_vec(),
        };
        let mut bytes = codec::encode(&file).expect("index encodes");
        let check = *blake3::hash(&bytes).as_bytes();
        bytes.extend_from_slice(&check);
        write_durable(&self.tmp(), &self.index_path(system, pack), &bytes)
    }

    pub(crate) fn register(
        &self,
        system: &str,
        path: PathBuf,
        id: Option<String>,
        entries: &[IndexEntry],
    ) -> u32 {
        let n = {
            let mut packs = self.inner.packs.write().expect("packs lock");
            packs.push(PackFile { path, id });
            (packs.len() - 1) as u32
        };
        let mut index = self.inner.index.write().expect("index lock");
        let map = index.entry(system.to_owned()).or_default();
        for e in entries {
            map.insert(
                e.id,
                Loc {
                    pack: n,
                    offset: e.offset,
                    len: e.len,
                    kind: e.kind,
                },
            );
        }
        n
    }

    /// True when the system's scope holds the chunk.
    pub fn has_chunk(&self, system: &str, id: &ChunkId) -> bool {
        self.locate(system, id).is_some()
    }

    /// Bytes of the sealed records the index names for `system`: what the
    /// repository holds for it (its quota's usage).
    pub fn stored_bytes(&self, system: &str) -> u64 {
        self.inner
            .index
            .read()
            .expect("index lock")
            .get(system)
            .map_or(0, |m| m.values().map(|l| u64::from(l.len)).sum())
    }

    /// Length of the sealed record of a chunk of `system`, if stored.
    pub fn chunk_len(&self, system: &str, id: &ChunkId) -> Option<u32> {
        self.locate(system, id).map(|l| l.len)
    }

    pub(crate) fn locate(&self, system: &str, id: &ChunkId) -> Option<Loc> {
        self.inner
            .index
            .read()
            .expect("index lock")
            .get(system)
            .and_then(|m| m.get(id))
            .copied()
    }
}

pub(crate) fn read_index_file(path: &Path) -> Option<IndexFile> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 32 {
        return None;
    }
    let (body, check) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != check {
        return None;
    }
    codec::decode(body).ok()
}

/// The index entries of the records a scan found.
pub(crate) fn entries_of(scan: &pack::Scan) -> Vec<IndexEntry> {
    scan.records
        .iter()
        .map(|r| IndexEntry {
            id: r.id,
            kind: r.kind,
            offset: r.offset,
            len: r.len,
        })
        .collect()
}
