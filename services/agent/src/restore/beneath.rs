//! Every write of a restore, resolved beneath the restore root.
//!
//! A snapshot's paths come from the system that was backed up, and the
//! folder a restore writes into may hold symbolic links a local user
//! planted (or plants while the restore runs). So no write goes through a
//! path string: the root is opened once, and each folder below it is
//! opened relative to its parent's descriptor, one component at a time,
//! with `O_NOFOLLOW | O_DIRECTORY` — a symbolic link met on the way is
//! refused, never followed (a folder of the snapshot that is a symbolic
//! link in the target is replaced by a real folder, see [`Beneath::make_dir`]).
//! Files, links and special files are created under a temporary name in
//! their folder's descriptor and moved into place with `renameat`, which
//! replaces a symbolic link at the final name rather than following it.
//! Because each step is relative to an open folder, paths longer than
//! `PATH_MAX` need no special case.
//!
//! Opened folders are kept (as `O_PATH` descriptors, which need only search
//! permission) in a bounded cache keyed by the tree path, so the files of
//! one folder cost one `openat` each, not one per component.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arca_schemas::path::TreePath;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Folders kept open at most; the cache is emptied when it is full.
const CACHE_MAX: usize = 128;

/// A folder opened beneath the root.
pub type Dir = Arc<OwnedFd>;

/// The restore root and the folders opened beneath it.
pub struct Beneath {
    root: Dir,
    cache: Mutex<HashMap<Vec<u8>, Dir>>,
}

const DIR_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A component as a C string (a checked path holds no NUL).
pub fn c_name(name: &[u8]) -> CString {
    CString::new(name).expect("a checked path holds no NUL")
}

fn not_followed(name: &[u8]) -> io::Error {
    io::Error::other(format!(
        "{} is a symbolic link or not a folder in the target; the restore does not follow it",
        arca_schemas::text::escape_bytes(name)
    ))
}

/// Opens (creating when missing) the folder `name` in `dir`, refusing a
/// symbolic link.
fn child(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let c = c_name(name);
    match rustix::fs::openat(dir, &c, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) => {}
        Err(Errno::LOOP | Errno::NOTDIR) => return Err(not_followed(name)),
        Err(e) => return Err(e.into()),
    }
    match rustix::fs::mkdirat(dir, &c, Mode::from_raw_mode(0o777)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    match rustix::fs::openat(dir, &c, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(not_followed(name)),
        Err(e) => Err(e.into()),
    }
}

impl Beneath {
    /// Opens the restore root (the operator named it, so it alone may be
    /// reached through a symbolic link).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root: Arc::new(fd),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The root folder.
    pub fn root(&self) -> &Dir {
        &self.root
    }

    fn cached(&self, path: &[u8]) -> Option<Dir> {
        self.cache.lock().expect("cache lock").get(path).cloned()
    }

    fn remember(&self, path: &[u8], fd: Dir) {
        let mut c = self.cache.lock().expect("cache lock");
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(path.to_vec(), fd);
    }

    /// The folder `path`, with every missing folder on the way created; a
    /// symbolic link (or a non-folder) on the way is refused.
    pub fn dir(&self, path: TreePath<'_>) -> io::Result<Dir> {
        // The deepest folder on the way already open.
        let mut at = path;
        let mut start = loop {
            if at.is_root() {
                break self.root.clone();
            }
            if let Some(fd) = self.cached(at.as_bytes()) {
                break fd;
            }
            at = at.split_last().expect("not the root").0;
        };
        if at.as_bytes().len() == path.as_bytes().len() {
            return Ok(start);
        }
        let done = if at.is_root() { 0 } else { at.as_bytes().len() };
        let rest = &path.as_bytes()[done + 1..];
        let mut so_far = done + 1;
        for name in rest.split(|b| *b == b'/') {
            so_far += name.len();
            let fd = Arc::new(child(start.as_fd(), name)?);
            self.remember(&path.as_bytes()[..so_far], fd.clone());
            start = fd;
            so_far += 1;
        }
        Ok(start)
    }

    /// The folder holding `path` and its last name; `None` for the root.
    pub fn parent(&self, path: TreePath<'_>) -> io::Result<Option<(Dir, CString)>> {
        let Some((parent, name)) = path.split_last() else {
            return Ok(None);
        };
        Ok(Some((self.dir(parent)?, c_name(name))))
    }

    /// Makes the folder `path` (a folder node of the snapshot): a symbolic
    /// link in its place is replaced by a real folder, never followed.
    pub fn make_dir(&self, path: TreePath<'_>) -> io::Result<Dir> {
        let Some((parent, name)) = self.parent(path)? else {
            return Ok(self.root.clone());
        };
        if rustix::fs::statat(&*parent, &name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
        {
            rustix::fs::unlinkat(&*parent, &name, AtFlags::empty())?;
        }
        let fd = Arc::new(child(parent.as_fd(), name.as_bytes())?);
        self.remember(path.as_bytes(), fd.clone());
        Ok(fd)
    }
}

/// Opens the folder `name` of `dir` for reading (to set its metadata
/// through its descriptor), refusing a symbolic link.
pub fn open_dir_at(dir: &Dir, name: &CStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        &**dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => not_followed(name.to_bytes()),
        e => e.into(),
    })?;
    Ok(File::from(fd))
}

/// Opens the regular file `name` of `dir` for reading without following a
/// symbolic link and without waiting on a FIFO.
pub fn open_regular_at(dir: &Dir, name: &CStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        &**dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// A name for something made beside its destination, unique enough that
/// `O_EXCL` (or `EEXIST`) only rarely asks for another.
fn temp_name() -> CString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    c_name(format!(".arca-restore-{}-{n}-{nanos:08x}", std::process::id()).as_bytes())
}

/// Makes something under a fresh temporary name in `dir` with `make`
/// (which fails with `EEXIST` when the name is taken).
fn make_temp(
    dir: &Dir,
    mut make: impl FnMut(BorrowedFd<'_>, &CStr) -> rustix::io::Result<()>,
) -> io::Result<CString> {
    for _ in 0..100 {
        let name = temp_name();
        match make(dir.as_fd(), &name) {
            Ok(()) => return Ok(name),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("no free temporary name"))
}

/// An entry made under a temporary name in its folder, removed when
/// dropped unless it was moved into place.
pub struct Temp {
    dir: Dir,
    name: CString,
    placed: bool,
}

impl Temp {
    /// Makes an entry with `make` (symbolic link, hard link, special file).
    pub fn make(
        dir: &Dir,
        make: impl FnMut(BorrowedFd<'_>, &CStr) -> rustix::io::Result<()>,
    ) -> io::Result<Temp> {
        let name = make_temp(dir, make)?;
        Ok(Temp {
            dir: dir.clone(),
            name,
            placed: false,
        })
    }

    /// Creates an empty regular file (mode 0600), open for writing.
    pub fn file(dir: &Dir) -> io::Result<(Temp, File)> {
        let mut file = None;
        let temp = Temp::make(dir, |d, name| {
            file = Some(rustix::fs::openat(
                d,
                name,
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?);
            Ok(())
        })?;
        Ok((temp, File::from(file.expect("made"))))
    }

    /// The folder it is in.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Its temporary name.
    pub fn name(&self) -> &CStr {
        &self.name
    }

    /// Moves it to `name` in the same folder, replacing what is there
    /// (a symbolic link there is replaced, not followed).
    pub fn place(mut self, name: &CStr) -> io::Result<()> {
        rustix::fs::renameat(&*self.dir, &self.name, &*self.dir, name)?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.placed {
            let _ = rustix::fs::unlinkat(&*self.dir, &self.name, AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: &[u8]) -> TreePath<'_> {
        TreePath::parse(p).unwrap()
    }

    #[test]
    fn folders_are_made_beneath_the_root_and_links_on_the_way_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("home")).unwrap();
        let b = Beneath::open(root.path()).unwrap();
        // Through the planted link: refused, nothing made outside.
        let e = b.dir(tp(b"/home/x")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A folder of the snapshot replaces the link.
        b.make_dir(tp(b"/home")).unwrap();
        let (d, name) = b.parent(tp(b"/home/x/f")).unwrap().unwrap();
        let (t, _) = Temp::file(&d).unwrap();
        t.place(&name).unwrap();
        assert!(root.path().join("home/x/f").is_file());
        assert!(
            !std::fs::symlink_metadata(root.path().join("home"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_link_at_the_final_name_is_replaced_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join("f")).unwrap();
        let b = Beneath::open(root.path()).unwrap();
        let (d, name) = b.parent(tp(b"/f")).unwrap().unwrap();
        let (t, file) = Temp::file(&d).unwrap();
        use std::io::Write;
        (&file).write_all(b"new").unwrap();
        t.place(&name).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(root.path().join("f")).unwrap(), b"new");
    }

    #[test]
    fn a_dropped_temporary_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let b = Beneath::open(root.path()).unwrap();
        let d = b.dir(tp(b"/a/b")).unwrap();
        drop(Temp::file(&d).unwrap());
        assert_eq!(
            std::fs::read_dir(root.path().join("a/b")).unwrap().count(),
            0
        );
    }

    #[test]
    fn paths_longer_than_path_max_are_reached() {
        let root = tempfile::tempdir().unwrap();
        let b = Beneath::open(root.path()).unwrap();
        let mut p = Vec::new();
        for _ in 0..40 {
            p.push(b'/');
            p.extend_from_slice(&[b'd'; 200]);
        }
        assert!(p.len() > 4096);
        b.dir(tp(&p)).unwrap();
        // Again, from an emptied cache.
        let b = Beneath::open(root.path()).unwrap();
        b.dir(tp(&p)).unwrap();
    }
}
