//! The live state of a transfer: counters, the files that failed or
//! were transferred with a warning, and its outcome once it ended.

use arca_schemas::job::{FileError, TransferStats};
use arca_schemas::msg::TransferOutcome;

/// Most file errors a transfer reports one by one; the rest are counted
/// in a last entry (messages must stay within the server's max_payload).
pub const MAX_FILE_ERRORS: usize = 1000;

/// Keeps the first [`MAX_FILE_ERRORS`] errors and counts the others.
pub fn cap_file_errors(errors: &[FileError]) -> Vec<FileError> {
    if errors.len() <= MAX_FILE_ERRORS {
        return errors.to_vec();
    }
    let mut out = errors[..MAX_FILE_ERRORS].to_vec();
    out.push(FileError {
        path: "...".to_owned(),
        error: format!(
            "and {} more files; the agent's log names every one",
            errors.len() - MAX_FILE_ERRORS
        ),
    });
    out
}

impl Progress {
    /// Records a file that could not be read or written; the transfer goes on.
    pub fn file_failed(&mut self, path: &std::path::Path, error: String) {
        tracing::warn!(path = %path.display(), %error, "file not transferred");
        self.file_errors.push(FileError {
            path: path.to_string_lossy().into_owned(),
            error,
        });
    }

    /// Records a file transferred with a warning (e.g. changed while read).
    pub fn file_warned(&mut self, path: &std::path::Path, warning: String) {
        tracing::warn!(path = %path.display(), %warning, "file transferred with a warning");
        self.file_warnings.push(FileError {
            path: path.to_string_lossy().into_owned(),
            error: warning,
        });
    }
}

/// Live state of a transfer, polled by the scheduler.
#[derive(Debug, Default)]
pub struct Progress {
    /// Counters so far.
    pub stats: TransferStats,
    /// Files that failed so far.
    pub file_errors: Vec<FileError>,
    /// Files transferred with a warning so far.
    pub file_warnings: Vec<FileError>,
    /// What is being read or written.
    pub current: Option<String>,
    /// Set when the transfer ended.
    pub outcome: Option<TransferOutcome>,
}
