//! File metadata beyond what `std` reads: extended attributes (POSIX ACLs
//! among them), owner and group names. A restore sets it back through
//! descriptors (`restore::metadata`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use arca_schemas::tree::{Node, Xattr};
use rustix::io::Errno;

/// Bytes of folder entries read with one system call.
pub const LIST_BUFFER: usize = 32 << 10;

/// What the walk reads of an entry's inode: from `lstat` relative to its
/// folder, or from an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    /// File type and permission bits.
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub ctime: i64,
    pub ctime_nsec: u32,
}

impl Stat {
    /// The entry `name` of the open folder `dir`, not following a symlink.
    pub fn at(dir: impl std::os::fd::AsFd, name: &std::ffi::CStr) -> std::io::Result<Stat> {
        let st = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
        // The field types differ between architectures.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Ok(Stat {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            nlink: st.st_nlink as u64,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            rdev: st.st_rdev as u64,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as u32,
            ctime: st.st_ctime as i64,
            ctime_nsec: st.st_ctime_nsec as u32,
        })
    }

    pub fn file_type(&self) -> rustix::fs::FileType {
        rustix::fs::FileType::from_raw_mode(self.mode as _)
    }
}

impl From<&std::fs::Metadata> for Stat {
    fn from(md: &std::fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            dev: md.dev(),
            ino: md.ino(),
            mode: md.mode(),
            nlink: md.nlink(),
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            size: md.size(),
            blocks: md.blocks(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            ctime: md.ctime(),
            ctime_nsec: md.ctime_nsec() as u32,
        }
    }
}

/// Why the extended attributes of a file could not be read (the file is
/// then stored without them, with a warning).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XattrError {
    /// The names could not be listed.
    #[error("cannot list extended attributes: {0}")]
    List(Errno),
    /// The attribute `name` could not be read.
    #[error("cannot read extended attribute {}: {source}", name.display())]
    Read {
        /// The attribute.
        name: std::ffi::OsString,
        /// The cause.
        source: Errno,
    },
}

/// Reads every extended attribute of `path` (not following a symlink),
/// sorted by name. A file system without attributes gives none.
pub fn read_xattrs(path: &Path) -> Result<Vec<Xattr>, XattrError> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path).map_err(XattrError::List)?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(XattrError::List(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, name_os, &mut value[..]) {
                Ok(n) => break n,
                Err(Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr_query(path, name_os).map_err(|source| {
                        XattrError::Read {
                            name: name_os.to_owned(),
                            source,
                        }
                    })?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed between listing and reading.
                Err(Errno::NODATA) => break usize::MAX,
                Err(source) => {
                    return Err(XattrError::Read {
                        name: name_os.to_owned(),
                        source,
                    });
                }
            }
        };
        if n == usize::MAX {
            continue;
        }
        value.truncate(n);
        out.push(Xattr {
            name: name.to_vec(),
            value,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Opens a regular file for reading without following a symlink and
/// without waiting: a path swapped for a FIFO or a device between the walk
/// and the open is refused rather than blocking the reader.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    Ok(file)
}

/// Owner and group names by id, and ids by name, looked up once each
/// (through the system's name service).
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
    uids: HashMap<String, Option<u32>>,
    gids: HashMap<String, Option<u32>>,
}

impl Names {
    /// The user name of `uid`, if it has one.
    pub fn user(&mut self, uid: u32) -> Option<String> {
        self.user_name(uid).map(str::to_owned)
    }

    /// The user name of `uid`, if it has one, without a copy.
    pub fn user_name(&mut self, uid: u32) -> Option<&str> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .as_deref()
    }

    /// The group name of `gid`, if it has one.
    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.group_name(gid).map(str::to_owned)
    }

    /// The group name of `gid`, if it has one, without a copy.
    pub fn group_name(&mut self, gid: u32) -> Option<&str> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .as_deref()
    }

    /// The owner a restored node gets: the id its user and group names
    /// have here, where they exist; the recorded ids otherwise.
    pub fn owner(&mut self, node: &Node) -> (u32, u32) {
        let (uids, gids) = (&mut self.uids, &mut self.gids);
        owner_with(
            node,
            |name| {
                *uids.entry(name.to_owned()).or_insert_with(|| {
                    nix::unistd::User::from_name(name)
                        .ok()
                        .flatten()
                        .map(|u| u.uid.as_raw())
                })
            },
            |name| {
                *gids.entry(name.to_owned()).or_insert_with(|| {
                    nix::unistd::Group::from_name(name)
                        .ok()
                        .flatten()
                        .map(|g| g.gid.as_raw())
                })
            },
        )
    }
}

/// [`Names::owner`] with the lookups given.
fn owner_with(
    node: &Node,
    mut uid_of: impl FnMut(&str) -> Option<u32>,
    mut gid_of: impl FnMut(&str) -> Option<u32>,
) -> (u32, u32) {
    let uid = node
        .user
        .as_deref()
        .and_then(&mut uid_of)
        .unwrap_or(node.uid);
    let gid = node
        .group
        .as_deref()
        .and_then(&mut gid_of)
        .unwrap_or(node.gid);
    (uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_schemas::tree::NodeKind;

    fn node(user: Option<&str>, group: Option<&str>) -> Node {
        Node {
            uid: 1001,
            gid: 2002,
            user: user.map(str::to_owned),
            group: group.map(str::to_owned),
            ..Node::bare(b"/x", NodeKind::Dir, 0o40755)
        }
    }

    #[test]
    fn a_name_that_exists_here_wins_over_the_recorded_id() {
        let lookup = |n: &str| (n == "backup").then_some(34);
        assert_eq!(
            owner_with(&node(Some("backup"), Some("backup")), lookup, lookup),
            (34, 34)
        );
        // Unknown here, or never named: the recorded ids.
        assert_eq!(
            owner_with(&node(Some("gone"), None), lookup, lookup),
            (1001, 2002)
        );
    }

    #[test]
    fn a_stat_relative_to_a_folder_reads_what_lstat_reads() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"12345").unwrap();
        symlink("f", dir.path().join("l")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let fd = std::fs::File::open(dir.path()).unwrap();
        for name in ["f", "l", "d"] {
            let c = std::ffi::CString::new(name).unwrap();
            let at = Stat::at(&fd, &c).unwrap();
            let md = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
            assert_eq!(at, Stat::from(&md), "{name}");
        }
        let l = Stat::at(&fd, c"l").unwrap();
        assert_eq!(l.file_type(), rustix::fs::FileType::Symlink);
        assert_eq!(Stat::at(&fd, c"f").unwrap().size, 5);
        assert!(Stat::at(&fd, c"missing").is_err());
    }
}
