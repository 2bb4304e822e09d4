//! Entries other than files: folders, other names of a file, symbolic
//! links, FIFOs, sockets and device nodes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use arca_schemas::tree::{Node, NodeKind};
use rustix::fs::AtFlags;

use super::beneath::Temp;
use super::check::Checked;
use super::failure::EntryError;
use super::metadata::On;
use super::shared::Shared;

impl Shared {
    /// Makes another name of a file restored in this run.
    pub(super) fn link(&self, node: &Checked) {
        let shown = self.shown(&node.node().path);
        self.progress.lock().expect("progress lock").stats.entries += 1;
        let first = node.first().expect("links have a first name");
        let first_shown = self.shown(first.as_bytes());
        let linked = if self
            .failed
            .lock()
            .expect("failed lock")
            .contains(first.as_bytes())
        {
            Err(EntryError::FirstNotRestored(first_shown))
        } else {
            (|| {
                let (from_dir, from) = self.beneath.parent(first)?.ok_or_else(not_root)?;
                let (dir, name) = self.beneath.parent(node.path())?.ok_or_else(not_root)?;
                let made = Temp::make(&dir, |d, tmp| {
                    rustix::fs::linkat(&*from_dir, &from, d, tmp, AtFlags::empty())
                })?;
                made.place(&name)
            })()
            .map_err(|source| EntryError::Link {
                first: first_shown,
                source,
            })
        };
        match linked {
            Ok(()) => self.progress.lock().expect("progress lock").stats.files += 1,
            Err(e) => self.file_error(&shown, e.to_string()),
        }
    }

    /// Makes a symbolic link, FIFO, socket or device node and sets its
    /// metadata, under a temporary name, then moves it into place.
    pub(super) fn make_other(&self, n: &Checked) {
        let node = n.node();
        let shown = self.shown(&node.path);
        self.progress.lock().expect("progress lock").stats.entries += 1;
        if matches!(node.kind, NodeKind::Device { .. }) && !self.privileges.keeps() {
            self.report_left_out(node, &shown);
            return;
        }
        let made = (|| {
            let (dir, name) = self
                .beneath
                .parent(n.path())
                .map_err(EntryError::Folder)?
                .ok_or(EntryError::AtRoot)?;
            let temp = match &node.kind {
                NodeKind::Symlink { target } => Temp::make(&dir, |d, tmp| {
                    rustix::fs::symlinkat(OsStr::from_bytes(target), d, tmp)
                })
                .map_err(EntryError::Symlink)?,
                _ => make_special(&dir, node)?,
            };
            self.apply(
                On::At {
                    dir: temp.dir(),
                    name: temp.name(),
                },
                node,
                &shown,
            )?;
            temp.place(&name).map_err(EntryError::Place)
        })();
        if let Err(e) = made {
            self.file_error(&shown, e.to_string());
        }
    }

    /// Sets a folder's metadata through its descriptor.
    pub(super) fn dir_metadata(&self, d: &Checked) {
        let shown = self.shown(&d.node().path);
        let open = match self.beneath.parent(d.path()) {
            Ok(Some((dir, name))) => super::beneath::open_dir_at(&dir, &name),
            Ok(None) => super::beneath::open_dir_at(self.beneath.root(), c"."),
            Err(e) => Err(e),
        };
        let result = open
            .map_err(EntryError::OpenFolder)
            .and_then(|f| Ok(self.apply(On::Open(&f), d.node(), &shown)?));
        if let Err(e) = result {
            self.file_error(&shown, e.to_string());
        }
    }

    /// Creates a folder; false when it could not be.
    pub(super) fn make_dir(&self, node: &Checked) -> bool {
        self.progress.lock().expect("progress lock").stats.entries += 1;
        match self.beneath.make_dir(node.path()) {
            Ok(_) => true,
            Err(e) => {
                self.file_error(
                    &self.shown(&node.node().path),
                    format!("cannot create folder: {e}"),
                );
                false
            }
        }
    }
}

fn not_root() -> std::io::Error {
    std::io::Error::other("the root cannot be replaced")
}

/// Creates a FIFO, device node or socket file under a temporary name.
fn make_special(dir: &super::beneath::Dir, node: &Node) -> Result<Temp, EntryError> {
    use rustix::fs::{FileType, Mode};
    let (file_type, rdev) = match &node.kind {
        NodeKind::Fifo => (FileType::Fifo, 0),
        NodeKind::Socket => (FileType::Socket, 0),
        NodeKind::Device { rdev } => (FileType::from_raw_mode(node.mode), *rdev),
        _ => return Err(EntryError::NotSpecial),
    };
    if matches!(node.kind, NodeKind::Device { .. }) && !rustix::process::geteuid().is_root() {
        return Err(EntryError::DeviceNotRoot);
    }
    Temp::make(dir, |d, tmp| {
        rustix::fs::mknodat(d, tmp, file_type, Mode::from_raw_mode(0o600), rdev)
    })
    .map_err(|source| EntryError::Special {
        kind: node.kind.name(),
        source,
    })
}
