//! What a commit checks of each tree chunk beyond its chunks being
//! stored: a tree comes from the system's agent, so a compromised one may
//! put anything in it. Every node's path, and its hard link's, must be a
//! clean absolute path ([`TreePath::parse`]: no empty, `.` or `..`
//! component, no repeated `/`, no NUL, bounded length), so that no
//! restore of the snapshot, onto any system or into any folder, can be
//! led outside its root by a name; and a tree chunk holds at most
//! [`limits::MAX_TREE_NODES`] nodes.

use arca_schemas::ChunkId;
use arca_schemas::path::TreePath;
use arca_schemas::text::escape_bytes;
use arca_schemas::tree::TreeBatch;

use crate::error::MediaError;

use crate::limits;

/// Why a tree is refused: a hostile or broken tree, which is audited.
pub(crate) fn refused(system: &str, detail: String) -> MediaError {
    MediaError::Forbidden(format!(
        "refused: the tree of system {system} {detail}; snapshot not committed"
    ))
}

/// Checks the nodes of tree chunk `id`.
pub(crate) fn check_batch(system: &str, id: &ChunkId, batch: &TreeBatch) -> Result<(), MediaError> {
    if batch.nodes.len() > limits::MAX_TREE_NODES {
        return Err(refused(
            system,
            format!(
                "has {} nodes in tree chunk {id}, at most {} per tree chunk",
                batch.nodes.len(),
                limits::MAX_TREE_NODES
            ),
        ));
    }
    for node in &batch.nodes {
        let paths = std::iter::once(("path", &node.path))
            .chain(node.hardlink.as_ref().map(|h| ("hard link target", h)));
        for (what, path) in paths {
            if let Err(e) = TreePath::parse(path) {
                return Err(refused(
                    system,
                    format!(
                        "names {what} \"{}\" in tree chunk {id}: {e}",
                        escape_bytes(&path[..path.len().min(1024)])
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_schemas::tree::{Node, NodeKind};

    fn node(path: &[u8]) -> Node {
        Node::bare(path, NodeKind::Dir, 0o040755)
    }

    #[test]
    fn hostile_paths_are_refused_by_name_and_clean_ones_pass() {
        let id = ChunkId([1; 32]);
        let ok = TreeBatch {
            nodes: vec![node(b"/"), node(b"/etc"), node(b"/etc/x y")],
        };
        check_batch("s", &id, &ok).unwrap();
        for bad in [
            &b"//etc/x"[..],
            b"/a/../../x",
            b"/..",
            b"/a/\0b",
            b"a",
            b"",
            b"/a/./b",
            b"/a/",
        ] {
            let batch = TreeBatch {
                nodes: vec![node(b"/"), node(bad)],
            };
            let e = check_batch("s", &id, &batch).unwrap_err().to_reply();
            assert_eq!(e.code, arca_schemas::ErrorCode::Forbidden);
            assert!(
                e.message.contains(&escape_bytes(bad).to_string()),
                "{}",
                e.message
            );
        }
        let mut link = node(b"/x");
        link.hardlink = Some(b"/../etc/shadow".to_vec());
        let e = check_batch("s", &id, &TreeBatch { nodes: vec![link] })
            .unwrap_err()
            .to_reply();
        assert!(e.message.contains("hard link target"), "{}", e.message);
    }

    #[test]
    fn a_tree_chunk_with_too_many_nodes_is_refused() {
        let batch = TreeBatch {
            nodes: vec![node(b"/"); limits::MAX_TREE_NODES + 1],
        };
        let e = check_batch("s", &ChunkId([1; 32]), &batch)
            .unwrap_err()
            .to_reply();
        assert!(e.message.contains("nodes"), "{}", e.message);
    }
}
