//! Setting a restored node's metadata, and what of it a restore keeps.
//!
//! Metadata is set through the node's own descriptor (a regular file or
//! folder the restore holds open), or, for symbolic links and special
//! files, through an `O_PATH` descriptor of the entry the restore just made
//! (opened without following it and checked to be of the kind made), so a
//! name swapped by a local user cannot redirect a `chown` or `chmod`.
//!
//! Privileges: a restore onto another system or into a target folder is
//! not trusted with what would give someone power on the restoring host.
//! Unless the operator asked to keep them (`--keep-privileges`), it makes
//! no device node, clears set-user-id and set-group-id bits, leaves out
//! `security.*` and `trusted.*` attributes (file capabilities among them)
//! and gives every entry to the restoring user's ids. An in-place restore
//! of a system's own snapshot keeps everything.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use arca_schemas::tree::{Node, NodeKind};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::process::{Gid, Uid};

use super::beneath::Dir;
use crate::meta::Names;

/// Set-user-id and set-group-id bits.
const SET_ID: u32 = 0o6000;

/// What a restore keeps of the privileges its nodes carry.
#[derive(Debug, Clone, Copy)]
pub struct Privileges {
    keep: bool,
    uid: u32,
    gid: u32,
}

impl Privileges {
    /// Everything as recorded (owners by name where the names exist here).
    pub fn keep() -> Privileges {
        Privileges {
            keep: true,
            uid: 0,
            gid: 0,
        }
    }

    /// No devices, set-id bits or `security.*`/`trusted.*` attributes;
    /// every entry owned by the restoring process's user and group.
    pub fn restoring_user() -> Privileges {
        Privileges {
            keep: false,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    /// True when everything is kept.
    pub fn keeps(&self) -> bool {
        self.keep
    }

    /// What of `node` this restore leaves out, named for the report.
    pub fn left_out(&self, node: &Node) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.keep {
            return out;
        }
        if matches!(node.kind, NodeKind::Device { .. }) {
            out.push("device node");
            return out;
        }
        if !matches!(node.kind, NodeKind::Symlink { .. }) && node.mode & SET_ID != 0 {
            out.push("set-user-id/set-group-id bits");
        }
        if node.xattrs.iter().any(|x| !self.keeps_xattr(&x.name)) {
            out.push("security.*/trusted.* attributes (file capabilities)");
        }
        out
    }

    /// True when the owner this restore gives `node` differs from the one
    /// it records.
    pub fn changes_owner(&self, node: &Node, names: &mut Names) -> bool {
        !self.keep && names.owner(node) != (self.uid, self.gid)
    }

    fn keeps_xattr(&self, name: &[u8]) -> bool {
        self.keep || !(name.starts_with(b"security.") || name.starts_with(b"trusted."))
    }

    fn owner(&self, node: &Node, names: &mut Names) -> (u32, u32) {
        if self.keep {
            names.owner(node)
        } else {
            (self.uid, self.gid)
        }
    }

    fn mode(&self, node: &Node) -> u32 {
        let mode = node.mode & 0o7777;
        if self.keep { mode } else { mode & !SET_ID }
    }
}

/// Where a node's metadata is set.
pub enum On<'a> {
    /// A regular file or folder, held open.
    Open(&'a File),
    /// A symbolic link or special file the restore just made as `name` in
    /// `dir`.
    At { dir: &'a Dir, name: &'a CStr },
}

fn proc_fd(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn kind_type(node: &Node) -> Option<FileType> {
    match &node.kind {
        NodeKind::Symlink { .. } => Some(FileType::Symlink),
        NodeKind::Fifo => Some(FileType::Fifo),
        NodeKind::Socket => Some(FileType::Socket),
        NodeKind::Device { .. } => Some(FileType::from_raw_mode(node.mode)),
        _ => None,
    }
}

/// Why the metadata of a restored entry could not be set (the entry is
/// then reported as a file error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The owner could not be set (only root may give files away).
    #[error("cannot set owner: {0}")]
    Owner(rustix::io::Errno),
    /// The mode could not be set.
    #[error("cannot set mode: {0}")]
    Mode(rustix::io::Errno),
    /// An extended attribute could not be set.
    #[error("cannot set extended attribute {}: {source}", OsStr::from_bytes(name).display())]
    Xattr {
        /// The attribute.
        name: Vec<u8>,
        /// The cause.
        source: rustix::io::Errno,
    },
    /// The modification time could not be set.
    #[error("cannot set mtime: {0}")]
    Mtime(rustix::io::Errno),
    /// The entry could not be opened to set its metadata.
    #[error("cannot open to set metadata: {0}")]
    Open(rustix::io::Errno),
    /// The entry's metadata could not be read.
    #[error("cannot read metadata: {0}")]
    Stat(rustix::io::Errno),
    /// Another entry stands where the restored one was made.
    #[error("it was replaced while being restored; metadata not set")]
    Replaced,
}

/// Sets owner, mode, extended attributes and mtime, in that order (an ACL
/// adjusts the mode; a change of owner clears set-id bits), as far as
/// `privileges` keeps them. Symlinks get no mode.
pub fn apply(
    on: On<'_>,
    node: &Node,
    names: &mut Names,
    privileges: &Privileges,
) -> Result<(), MetadataError> {
    let (uid, gid) = privileges.owner(node, names);
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let mode = Mode::from_raw_mode(privileges.mode(node));
    let root = rustix::process::geteuid().is_root();
    let mtime = Timespec {
        tv_sec: node.mtime,
        tv_nsec: node.mtime_nsec as _,
    };
    let times = Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    let xattrs = node
        .xattrs
        .iter()
        .filter(|x| privileges.keeps_xattr(&x.name));
    let xattr_error = |name: &[u8], source| MetadataError::Xattr {
        name: name.to_vec(),
        source,
    };
    match on {
        On::Open(file) => {
            let owner = rustix::fs::fchown(file, uid, gid);
            // Only root may give files away; others keep their own ownership.
            if let Err(e) = owner
                && root
            {
                return Err(MetadataError::Owner(e));
            }
            rustix::fs::fchmod(file, mode).map_err(MetadataError::Mode)?;
            for x in xattrs {
                rustix::fs::fsetxattr(
                    file,
                    OsStr::from_bytes(&x.name),
                    &x.value,
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(|e| xattr_error(&x.name, e))?;
            }
            rustix::fs::futimens(file, &times).map_err(MetadataError::Mtime)
        }
        On::At { dir, name } => {
            let fd: OwnedFd = rustix::fs::openat(
                &**dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(MetadataError::Open)?;
            let st = rustix::fs::fstat(&fd).map_err(MetadataError::Stat)?;
            let symlink = matches!(node.kind, NodeKind::Symlink { .. });
            if kind_type(node) != Some(FileType::from_raw_mode(st.st_mode)) {
                return Err(MetadataError::Replaced);
            }
            let owner = rustix::fs::chownat(
                fd.as_fd(),
                c"",
                uid,
                gid,
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            );
            if let Err(e) = owner
                && root
            {
                return Err(MetadataError::Owner(e));
            }
            if !symlink {
                // The descriptor's own inode, through procfs (a path
                // descriptor cannot be passed to fchmod).
                rustix::fs::chmod(proc_fd(&fd), mode).map_err(MetadataError::Mode)?;
            }
            for x in xattrs {
                let name_os = OsStr::from_bytes(&x.name);
                let set = if symlink {
                    let mut at = proc_fd(&**dir).into_os_string().into_vec();
                    at.push(b'/');
                    at.extend_from_slice(name.to_bytes());
                    rustix::fs::lsetxattr(
                        OsStr::from_bytes(&at),
                        name_os,
                        &x.value,
                        rustix::fs::XattrFlags::empty(),
                    )
                } else {
                    rustix::fs::setxattr(
                        proc_fd(&fd),
                        name_os,
                        &x.value,
                        rustix::fs::XattrFlags::empty(),
                    )
                };
                set.map_err(|e| xattr_error(&x.name, e))?;
            }
            rustix::fs::utimensat(&**dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(MetadataError::Mtime)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_schemas::tree::Xattr;

    fn node(kind: NodeKind, mode: u32) -> Node {
        Node {
            mtime: 1_000_000,
            mtime_nsec: 5,
            xattrs: vec![
                Xattr {
                    name: b"security.capability".to_vec(),
                    value: vec![1, 0, 0, 2],
                },
                Xattr {
                    name: b"user.a".to_vec(),
                    value: b"1".to_vec(),
                },
            ],
            ..Node::bare(b"/x", kind, mode)
        }
    }

    #[test]
    fn without_keep_privileges_devices_set_id_bits_and_capabilities_are_left_out() {
        let p = Privileges::restoring_user();
        let f = node(
            NodeKind::File {
                chunks: vec![],
                sizes: vec![],
            },
            0o104755,
        );
        assert_eq!(p.left_out(&f).len(), 2, "{:?}", p.left_out(&f));
        assert_eq!(p.mode(&f), 0o755);
        assert!(!p.keeps_xattr(b"security.capability"));
        assert!(!p.keeps_xattr(b"trusted.x"));
        assert!(p.keeps_xattr(b"user.a"));
        assert!(p.keeps_xattr(b"system.posix_acl_access"));
        let d = node(NodeKind::Device { rdev: 0x0103 }, 0o20666);
        assert_eq!(p.left_out(&d), vec!["device node"]);
        let k = Privileges::keep();
        assert!(k.left_out(&f).is_empty() && k.left_out(&d).is_empty());
        assert_eq!(k.mode(&f), 0o4755);
    }

    #[test]
    fn metadata_is_set_through_the_descriptor_as_far_as_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let file = File::open(&path).unwrap();
        let mut n = node(
            NodeKind::File {
                chunks: vec![],
                sizes: vec![],
            },
            0o102750,
        );
        n.xattrs.retain(|x| x.name.starts_with(b"user."));
        n.xattrs.push(Xattr {
            name: b"user.b".to_vec(),
            value: vec![0, 1, 2, 255],
        });
        apply(
            On::Open(&file),
            &n,
            &mut Names::default(),
            &Privileges::restoring_user(),
        )
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o750);
        assert_eq!(md.mtime(), 1_000_000);
        assert_eq!(md.uid(), rustix::process::geteuid().as_raw());
        assert_eq!(crate::meta::read_xattrs(&path).unwrap(), n.xattrs);
    }
}
