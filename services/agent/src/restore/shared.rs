//! What every part of a restore shares: the root, the privileges kept,
//! the progress, and the reports of what was left out.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arca_schemas::ChunkId;
use arca_schemas::tree::Node;

use crate::error::AgentError;
use crate::meta::Names;
use crate::progress::Progress;

use super::beneath::Beneath;
use super::check::Refused;
use super::metadata::{MetadataError, On, Privileges};

/// Entries a report names one by one for each kind of privilege left out;
/// the rest are counted.
const LEFT_OUT_NAMED: usize = 20;

/// What a restore left out of the privileges the snapshot records.
#[derive(Default)]
pub(super) struct LeftOut {
    /// Entries given to the restoring user instead of their owner.
    owners: usize,
    /// Entries reported by name so far, per kind of privilege.
    named: std::collections::HashMap<&'static str, usize>,
}

/// What every part of a restore shares.
pub(super) struct Shared {
    /// The restore root, for reports.
    pub(super) root: PathBuf,
    pub(super) beneath: Beneath,
    /// The snapshot system's chunk-id key, or within a restore session
    /// the grant's check key.
    pub(super) key: [u8; 32],
    /// Restoring another system's snapshot within a restore session.
    pub(super) granted: bool,
    pub(super) privileges: Privileges,
    pub(super) progress: Arc<Mutex<Progress>>,
    pub(super) names: Mutex<Names>,
    pub(super) left_out: Mutex<LeftOut>,
    /// Files of the restore that were not restored (other names of them
    /// are not linked).
    pub(super) failed: Mutex<HashSet<Vec<u8>>>,
}

impl Shared {
    /// The id a fetched chunk's plain bytes are checked against: its own id
    /// under the snapshot system's key; within a restore session (another
    /// system's snapshot, whose key this agent is not given) the check value
    /// media computed with the grant's key after checking the chunk itself.
    pub(super) fn check_id(
        &self,
        id: ChunkId,
        check: Option<ChunkId>,
    ) -> Result<ChunkId, AgentError> {
        if !self.granted {
            return Ok(id);
        }
        check.ok_or(AgentError::NoCheckValue(id))
    }

    /// A node's path under the restore root, escaped, for reports.
    pub(super) fn shown(&self, path: &[u8]) -> String {
        let mut full = self.root.as_os_str().as_bytes().to_vec();
        if full.last() == Some(&b'/') && path.first() == Some(&b'/') {
            full.pop();
        }
        full.extend_from_slice(path);
        arca_schemas::text::escape_bytes(&full)
    }

    pub(super) fn file_error(&self, shown: &str, error: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_failed(Path::new(shown), error);
    }

    fn file_warning(&self, shown: &str, warning: String) {
        self.progress
            .lock()
            .expect("progress lock")
            .file_warned(Path::new(shown), warning);
    }

    /// Reports a node that failed its check; nothing is written for it.
    pub(super) fn refuse(&self, node: &Node, why: Refused) {
        self.progress.lock().expect("progress lock").stats.entries += 1;
        let shown = arca_schemas::text::escape_bytes(&node.path);
        self.failed
            .lock()
            .expect("failed lock")
            .insert(node.path.clone());
        self.file_error(&shown, format!("{why}; nothing was written for it"));
    }

    /// Reports what of `node` the restore leaves out: the first entries of
    /// each kind by name, the others counted.
    pub(super) fn report_left_out(&self, node: &Node, shown: &str) {
        let items = self.privileges.left_out(node);
        let mut names = self.names.lock().expect("names lock");
        let mut left = self.left_out.lock().expect("left-out lock");
        if self.privileges.changes_owner(node, &mut names) {
            left.owners += 1;
        }
        drop(names);
        for item in items {
            let n = left.named.entry(item).or_default();
            *n += 1;
            if *n <= LEFT_OUT_NAMED {
                self.file_warning(
                    shown,
                    format!("not restored: {item} (restore with --keep-privileges to keep it)"),
                );
            }
        }
    }

    /// The summary of what was left out beyond the entries named, and of
    /// the owners not given back.
    pub(super) fn report_owners(&self) {
        let left = self.left_out.lock().expect("left-out lock");
        let root = self.shown(b"/");
        for (item, n) in &left.named {
            if *n > LEFT_OUT_NAMED {
                self.file_warning(
                    &root,
                    format!(
                        "not restored: {item} of {} more entries (restore with \
                         --keep-privileges to keep them)",
                        n - LEFT_OUT_NAMED
                    ),
                );
            }
        }
        if left.owners > 0 {
            self.file_warning(
                &root,
                format!(
                    "{} entries were given to the restoring user instead of their recorded \
                     owners (restore with --keep-privileges to keep the owners)",
                    left.owners
                ),
            );
        }
    }

    pub(super) fn apply(&self, on: On<'_>, node: &Node, shown: &str) -> Result<(), MetadataError> {
        self.report_left_out(node, shown);
        super::metadata::apply(
            on,
            node,
            &mut self.names.lock().expect("names lock"),
            &self.privileges,
        )
    }
}
