//! Durable writes: temporary file, fsync, rename, fsync of the folder.

use std::io::Write;
use std::path::Path;

use crate::RepoError;

/// Writes `data` to `dest` so that `dest` either does not exist or is whole
/// and on disk. `tmp_dir` must be on the same file system.
pub fn write_durable(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<(), RepoError> {
    let mut tmp =
        tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| RepoError::io(tmp_dir, e))?;
    tmp.write_all(data)
        .map_err(|e| RepoError::io(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| RepoError::io(tmp.path(), e))?;
    let parent = dest.parent().expect("destination has a folder");
    std::fs::create_dir_all(parent).map_err(|e| RepoError::io(parent, e))?;
    tmp.persist(dest)
        .map_err(|e| RepoError::io(dest, e.error))?;
    sync_dir(parent)
}

/// Fsyncs a folder so that a rename into it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), RepoError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RepoError::io(dir, e))
}
