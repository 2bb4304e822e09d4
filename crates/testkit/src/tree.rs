//! Building file trees and comparing two of them as a user would: names,
//! kinds, bytes, symlink targets, modes, owners, modification times,
//! extended attributes (ACLs among them), device numbers, which names are
//! hard links of one another, and the blocks a sparse file allocates.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Writes `len` bytes of deterministic, poorly compressible data.
pub fn write_pseudo_random(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// One entry as compared.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    link: Option<PathBuf>,
    digest: Option<[u8; 32]>,
    rdev: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Other names of the same inode within the tree.
    hard_links: Vec<OsString>,
    /// Allocated 512-byte blocks, for sparse files only.
    sparse_blocks: Option<u64>,
}

/// Extended attributes of `path` (not following symlinks), sorted.
pub fn xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = std::ffi::OsStr::from_bytes(name);
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(path, name_os, &mut value[..])?;
        value.truncate(len);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

fn scan(root: &Path) -> std::io::Result<BTreeMap<OsString, Seen>> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<OsString>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let md = std::fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        let (kind, link, digest) = if ft.is_dir() {
            for e in std::fs::read_dir(&path)? {
                stack.push(rel.join(e?.file_name()));
            }
            ("dir", None, None)
        } else if ft.is_symlink() {
            ("symlink", Some(std::fs::read_link(&path)?), None)
        } else if ft.is_file() {
            ("file", None, Some(digest_file(&path)?))
        } else {
            ("other", None, None)
        };
        if !ft.is_dir() && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone().into_os_string());
        }
        let sparse = ft.is_file() && md.blocks() * 512 < md.size();
        out.insert(
            rel.into_os_string(),
            Seen {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: if ft.is_file() { md.size() } else { 0 },
                link,
                digest,
                rdev: md.rdev(),
                xattrs: xattrs(&path)?,
                hard_links: Vec::new(),
                sparse_blocks: sparse.then_some(md.blocks()),
            },
        );
    }
    for names in inodes.values() {
        for n in names {
            let mut others: Vec<OsString> = names.iter().filter(|o| *o != n).cloned().collect();
            others.sort();
            if let Some(seen) = out.get_mut(n) {
                seen.hard_links = others;
            }
        }
    }
    Ok(out)
}

fn digest_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(*hasher.finalize().as_bytes())
}

/// Compares two trees; `Err` lists every difference. The roots' own
/// metadata is not compared (a restore target folder is new).
pub fn compare(expected: &Path, actual: &Path) -> Result<(), String> {
    let a = scan(expected).map_err(|e| format!("cannot scan {}: {e}", expected.display()))?;
    let b = scan(actual).map_err(|e| format!("cannot scan {}: {e}", actual.display()))?;
    let mut diffs = Vec::new();
    for (name, ea) in &a {
        if name.is_empty() {
            continue;
        }
        match b.get(name) {
            None => diffs.push(format!("missing: {name:?}")),
            Some(eb) if eb != ea => {
                diffs.push(format!("differs: {name:?}\n  want {ea:?}\n  got  {eb:?}"))
            }
            Some(_) => {}
        }
    }
    for name in b.keys() {
        if !a.contains_key(name) {
            diffs.push(format!("extra: {name:?}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("\n"))
    }
}
