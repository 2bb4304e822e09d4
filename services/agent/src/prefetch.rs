//! Reading folders and file metadata ahead of the walk.
//!
//! The walker visits entries one at a time, in path order, so on a cold
//! cache it waits for one disk read after another. A few threads list the
//! same folders and read their entries' metadata beforehand, in no
//! particular order, so that the disk has several reads to answer at once
//! and the walker mostly finds what it asks for in memory. They only read;
//! what they find is not used otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Folders still to list, and how many threads are listing one.
struct Queue {
    folders: Vec<(PathBuf, u64)>,
    busy: usize,
    listed: usize,
}

/// Lists folders from `roots` down on `threads` threads until every folder
/// was listed or `stop` is set, and returns how many it listed. `skip`
/// says which paths the walk leaves out; with `one_file_system` folders of
/// other file systems are not entered.
pub fn run(
    roots: &[PathBuf],
    threads: usize,
    skip: &(dyn Fn(&[u8]) -> bool + Sync),
    one_file_system: bool,
    stop: &AtomicBool,
) -> usize {
    let folders = roots
        .iter()
        .filter_map(|r| {
            std::fs::symlink_metadata(r)
                .ok()
                .map(|m| (r.clone(), m.dev()))
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
    skip: &(dyn Fn(&[u8]) -> bool + Sync),
    one_file_system: bool,
    stop: &AtomicBool,
) {
    use std::os::unix::ffi::OsStrExt;
    loop {
        let (folder, dev) = {
            let mut q = queue.lock().expect("prefetch lock");
            loop {
                if stop.load(Ordering::Relaxed) {
                    wake.notify_all();
                    return;
                }
                if let Some(f) = q.folders.pop() {
                    q.busy += 1;
                    break f;
                }
                if q.busy == 0 {
                    // Nothing left and nobody listing: done.
                    wake.notify_all();
                    return;
                }
                q = wake.wait(q).expect("prefetch lock");
            }
        };
        let mut found = Vec::new();
        let mut listed = 0;
        if let Ok(entries) = std::fs::read_dir(&folder) {
            listed = 1;
            for e in entries.flatten() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let path = e.path();
                if skip(path.as_os_str().as_bytes()) {
                    continue;
                }
                // lstat relative to the open folder: reads the inode.
                let Ok(md) = e.metadata() else { continue };
                if md.is_dir() && (!one_file_system || md.dev() == dev) {
                    found.push((path, dev));
                }
            }
        }
        let mut q = queue.lock().expect("prefetch lock");
        q.busy -= 1;
        q.listed += listed;
        q.folders.extend(found);
        wake.notify_all();
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
        assert_eq!(run(&roots, 3, &skip, true, &stop), 6);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(run(&roots, 3, &skip, true, &stop), 0);
    }
}
