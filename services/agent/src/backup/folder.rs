//! A folder being walked: its names listed and sorted, held open while
//! the walk is not too deep.

use crate::meta::LIST_BUFFER;

/// Folders above the current entry held open, at most.
pub(super) const OPEN_FOLDERS: usize = 64;

/// A folder being walked: its names listed and sorted, and while the walk
/// is not too deep, open.
pub(super) struct Folder {
    pub(super) fd: Option<rustix::fd::OwnedFd>,
    pub(super) path: Vec<u8>,
    /// The names, each followed by its NUL.
    pub(super) names: Vec<u8>,
    /// Where each name is in `names`, in the byte order of the names.
    pub(super) spans: Vec<(usize, usize)>,
    /// The next span to visit.
    pub(super) next: usize,
}

impl Folder {
    /// Lists the open folder `fd` at `path`, reading entries into `buf`.
    pub(super) fn list(
        fd: rustix::fd::OwnedFd,
        path: Vec<u8>,
        buf: &mut Vec<std::mem::MaybeUninit<u8>>,
    ) -> std::io::Result<Folder> {
        buf.resize(LIST_BUFFER, std::mem::MaybeUninit::uninit());
        let mut names = Vec::new();
        let mut spans = Vec::new();
        let mut entries = rustix::fs::RawDir::new(&fd, buf.as_mut_slice());
        while let Some(entry) = entries.next() {
            let entry = entry?;
            let name = entry.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            let start = names.len();
            names.extend_from_slice(name);
            spans.push((start, names.len()));
        }
        // Names of one folder sort as their paths do (a NUL sorts first,
        // as the end of a shorter name does).
        spans.sort_unstable_by(|a, b| names[a.0..a.1].cmp(&names[b.0..b.1]));
        Ok(Folder {
            fd: Some(fd),
            path,
            names,
            spans,
            next: 0,
        })
    }

    /// Keeps only the entry `name`, if there is one.
    pub(super) fn keep_only(&mut self, name: &[u8]) {
        let names = &self.names;
        self.spans.retain(|&(s, e)| &names[s..e - 1] == name);
    }
}
