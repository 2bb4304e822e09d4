//! Reading folders and file metadata ahead of the walk.
//!
//! The walker visits entries one at a time, in path order, so on a cold
//! cache it waits for one disk read after another. A few threads list the
//! same folders and read their entries' metadata beforehand, in no
//! particular order, so that the disk has several reads to answer at once
//! and the walker mostly finds what it asks for in memory. They only read;
//! what they find is not used otherwise.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use rustix::fs::{FileType, Mode, OFlags};

use crate::meta::{LIST_BUFFER, Stat};

/// A folder to list, ordered as the walk meets folders: the threads list
/// first what the walker will ask for first.
#[derive(PartialEq, Eq)]
struct Pending {
    path: Vec<u8>,
    dev: u64,
}

impl Ord for Pending {
    fn cmp(&self, other: &Pending) -> std::cmp::Ordering {
        arca_schemas::tree::path_order(&self.path, &other.path).then(self.dev.cmp(&other.dev))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Pending) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Folders still to list, and how many threads are listing one.
struct Queue {
    folders: BinaryHeap<Reverse<Pending>>,
    busy: usize,
    listed: usize,
}

/// What to leave out: true for a path the walk does not enter, given that
/// the folders above it were entered.
pub type Skip<'a> = &'a (dyn Fn(&[u8]) -> bool + Sync);

/// Lists folders from `roots` down on `threads` threads until every folder
/// was listed or `stop` is set, and returns how many it listed. `skip`,
/// when given, says which paths the walk leaves out; with
/// `one_file_system` folders of other file systems are not entered.
pub fn run(
    roots: &[PathBuf],
    threads: usize,
    skip: Option<Skip<'_>>,
    one_file_system: bool,
    stop: &AtomicBool,
) -> usize {
    let folders = roots
        .iter()
        .filter_map(|r| {
            std::fs::symlink_metadata(r).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                Reverse(Pending {
                    path: r.as_os_str().as_bytes().to_vec(),
                    dev: m.dev(),
                })
            })
        })
        .collect();
    let queue = Mutex::new(Queue {
        folders,
        busy: 0,
        listed: 0,
    });
    let wake = Condvar::new();
    std::thread::scope(|s| {
        for i in 0..threads {
            let (queue, wake) = (&queue, &wake);
            let spawned = std::thread::Builder::new()
                .name(format!("arca-prefetch-{i}"))
                .spawn_scoped(s, move || worker(queue, wake, skip, one_file_system, stop));
            if spawned.is_err() {
                // Fewer threads only make the walk wait more.
                break;
            }
        }
    });
    queue.into_inner().expect("prefetch lock").listed
}

fn worker(
    queue: &Mutex<Queue>,
    wake: &Condvar,
    skip: Option<Skip<'_>>,
    one_file_system: bool,
    stop: &AtomicBool,
) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); LIST_BUFFER];
    let mut path = Vec::new();
    loop {
        let Pending { path: folder, dev } = {
            let mut q = queue.lock().expect("prefetch lock");
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(Reverse(f)) = q.folders.pop() {
                    q.busy += 1;
                    break f;
                }
                if q.busy == 0 {
                    // Nothing left and nobody listing: done.
                    return;
                }
                q = wake.wait(q).expect("prefetch lock");
            }
        };
        let mut found = Vec::new();
        let mut listed = 0;
        let opened = rustix::fs::openat(
            rustix::fs::CWD,
            folder.as_slice(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        );
        if let Ok(fd) = opened {
            listed = 1;
            let mut entries = rustix::fs::RawDir::new(&fd, &mut buf);
            while let Some(Ok(entry)) = entries.next() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = entry.file_name();
                if matches!(name.to_bytes(), b"." | b"..") {
                    continue;
                }
                // The walk needs a path only for folders and patterns.
                let path_of = |path: &mut Vec<u8>| {
                    path.clear();
                    path.extend_from_slice(&folder);
                    if path.last() != Some(&b'/') {
                        path.push(b'/');
                    }
                    path.extend_from_slice(name.to_bytes());
                };
                if let Some(skip) = skip {
                    path_of(&mut path);
                    if skip(&path) {
                        continue;
                    }
                }
                // lstat relative to the open folder: reads the inode.
                let Ok(st) = Stat::at(&fd, name) else {
                    continue;
                };
                if st.file_type() == FileType::Directory && (!one_file_system || st.dev == dev) {
                    path_of(&mut path);
                    found.push(Reverse(Pending {
                        path: path.clone(),
                        dev,
                    }));
                }
            }
        }
        let mut q = queue.lock().expect("prefetch lock");
        q.busy -= 1;
        q.listed += listed;
        // One thread woken per folder found; all at the end.
        for _ in 0..found.len() {
            wake.notify_one();
        }
        q.folders.extend(found);
        if stop.load(Ordering::Relaxed) || (q.folders.is_empty() && q.busy == 0) {
            wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_folder_is_listed_once_except_those_left_out_and_a_stop_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a/b/c", "a/d", "e", "skipped/f/g"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for f in ["a/x", "a/b/y", "e/z"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let roots = [dir.path().to_path_buf()];
        let skipped = dir.path().join("skipped");
        let skip = |p: &[u8]| p.starts_with(skipped.as_os_str().as_encoded_bytes());
        let stop = AtomicBool::new(false);
        // The root, a, a/b, a/b/c, a/d, e.
        assert_eq!(run(&roots, 3, Some(&skip), true, &stop), 6);
        // Without patterns: skipped, skipped/f and skipped/f/g too.
        assert_eq!(run(&roots, 3, None, true, &stop), 9);
        assert_eq!(run(&roots, 1, None, true, &stop), 9);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(run(&roots, 3, Some(&skip), true, &stop), 0);
    }
}
