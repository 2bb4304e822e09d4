//! Which nodes a restore takes, tree chunk by tree chunk.

use std::collections::HashSet;

use arca_schemas::tree::{Node, NodeKind};

use crate::select::{self, Filter};

/// Chooses the nodes a restore takes, tree chunk by tree chunk, in walk
/// order: those the filter takes, and with include patterns the folders
/// above them (held until something under them is taken).
pub(super) struct Selector {
    pub(super) filter: Filter,
    pub(super) held: Vec<Node>,
    /// Paths (keys) of the files taken, for deciding whether another name
    /// of a file is a link or a copy.
    pub(super) files: HashSet<[u8; 16]>,
    /// True once anything was taken.
    pub(super) any: bool,
}

impl Selector {
    pub(super) fn new(filter: Filter) -> Selector {
        Selector {
            filter,
            held: Vec::new(),
            files: HashSet::new(),
            any: false,
        }
    }

    pub(super) fn take(&mut self, nodes: Vec<Node>) -> Vec<Node> {
        let mut out = Vec::new();
        for n in nodes {
            let is_dir = matches!(n.kind, NodeKind::Dir);
            if self.filter.has_includes() {
                while let Some(last) = self.held.last()
                    && !select::is_inside(&n.path, &last.path)
                {
                    self.held.pop();
                }
            }
            if self.filter.takes(&n.path) {
                // The held folders above it, outermost first.
                out.extend(
                    std::mem::take(&mut self.held)
                        .into_iter()
                        .filter(|d| select::is_inside(&n.path, &d.path)),
                );
                out.push(n);
                self.any = true;
            } else if is_dir && self.filter.has_includes() && !self.filter.excluded(&n.path) {
                self.held.push(n);
            }
        }
        out
    }
}
