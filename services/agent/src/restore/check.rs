//! The check of each node a restore is about to write.
//!
//! A tree comes from the system that was backed up, which may be
//! compromised, and media stores what it was given. So before anything is
//! created or allocated for a node the restoring agent checks it here:
//! its path and the first name of a hard-linked file must pass
//! [`TreePath::parse`], and a file's chunk list must agree with itself (as
//! many sizes as chunks, each no larger than the largest chunk the
//! repository allows, adding up to the file's size). A node that fails is
//! refused by name and nothing is written for it.

use arca_frame::MAX_CHUNK;
use arca_schemas::path::{PathError, TreePath};
use arca_schemas::tree::{Node, NodeKind};

/// Why a node of the tree is refused. A retry does not help: the tree is
/// what it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The node's path is not a safe path.
    #[error("refused: unsafe path in the snapshot: {0}")]
    Path(PathError),
    /// The first name of a hard-linked file is not a safe path.
    #[error("refused: the snapshot links it to an unsafe path: {0}")]
    LinkPath(PathError),
    /// The chunk list and the sizes list differ in length.
    #[error("refused: the snapshot's tree lists {chunks} chunks but {sizes} chunk sizes for it")]
    Lengths {
        /// Chunks listed.
        chunks: usize,
        /// Sizes listed.
        sizes: usize,
    },
    /// A chunk is larger than the repository allows.
    #[error(
        "refused: the snapshot's tree gives it a chunk of {0} bytes, above the \
         largest chunk the repository allows ({MAX_CHUNK} bytes)"
    )]
    ChunkSize(u32),
    /// The sizes do not add up to the file's size.
    #[error("refused: the snapshot's tree gives it {size} bytes but chunks adding up to {sum}")]
    Sum {
        /// The file's size.
        size: u64,
        /// The sum of its chunk sizes.
        sum: u64,
    },
}

/// A node whose paths and chunk list passed [`Checked::new`].
pub struct Checked(Node);

impl Checked {
    /// Checks `node`; on refusal, gives it back and says why.
    pub fn new(node: Node) -> Result<Checked, (Box<Node>, Refused)> {
        match check(&node) {
            Ok(()) => Ok(Checked(node)),
            Err(e) => Err((Box::new(node), e)),
        }
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.0
    }

    /// Its checked path.
    pub fn path(&self) -> TreePath<'_> {
        TreePath::parse(&self.0.path).expect("checked when made")
    }

    /// The checked first name of a hard-linked file.
    pub fn first(&self) -> Option<TreePath<'_>> {
        self.0
            .hardlink
            .as_deref()
            .map(|p| TreePath::parse(p).expect("checked when made"))
    }

    /// A file's chunks with their sizes (checked to agree).
    pub fn pieces(&self) -> impl Iterator<Item = (arca_schemas::ChunkId, usize)> + '_ {
        let (chunks, sizes): (&[_], &[u32]) = match &self.0.kind {
            NodeKind::File { chunks, sizes } => (chunks, sizes),
            _ => (&[], &[]),
        };
        chunks
            .iter()
            .copied()
            .zip(sizes.iter().map(|s| *s as usize))
    }
}

fn check(node: &Node) -> Result<(), Refused> {
    TreePath::parse(&node.path).map_err(Refused::Path)?;
    if let Some(first) = &node.hardlink {
        TreePath::parse(first).map_err(Refused::LinkPath)?;
    }
    if let NodeKind::File { chunks, sizes } = &node.kind {
        if chunks.len() != sizes.len() {
            return Err(Refused::Lengths {
                chunks: chunks.len(),
                sizes: sizes.len(),
            });
        }
        if let Some(s) = sizes.iter().find(|s| **s as usize > MAX_CHUNK) {
            return Err(Refused::ChunkSize(*s));
        }
        let sum: u64 = sizes.iter().map(|s| u64::from(*s)).sum();
        if sum != node.size {
            return Err(Refused::Sum {
                size: node.size,
                sum,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_schemas::ChunkId;

    fn node(path: &[u8], kind: NodeKind, size: u64) -> Node {
        Node {
            size,
            ..Node::bare(path, kind, 0o100644)
        }
    }

    fn file(chunks: usize, sizes: Vec<u32>, size: u64) -> Node {
        node(
            b"/f",
            NodeKind::File {
                chunks: vec![ChunkId([7; 32]); chunks],
                sizes,
            },
            size,
        )
    }

    #[test]
    fn traversal_names_are_refused_by_name() {
        for bad in [
            &b"//etc/x"[..],
            b"/a/../../x",
            b"/..",
            b"..",
            b"etc/x",
            b"/a/./b",
            b"/a/",
            b"/a\0b",
        ] {
            let Err((n, why)) = Checked::new(node(bad, NodeKind::Dir, 0)) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(n.path, bad);
            assert!(why.to_string().contains("unsafe path"), "{why}");
        }
        let mut link = file(0, vec![], 0);
        link.hardlink = Some(b"/../etc/shadow".to_vec());
        assert!(Checked::new(link).is_err());
        let ok = Checked::new(node(b"/etc/x", NodeKind::Dir, 0)).unwrap();
        assert_eq!(ok.path().as_bytes(), b"/etc/x");
    }

    #[test]
    fn a_chunk_list_that_disagrees_is_refused() {
        // A short sizes list.
        assert!(Checked::new(file(2, vec![5], 10)).is_err());
        // Sizes that do not add up to the size.
        assert!(Checked::new(file(2, vec![5, 5], 11)).is_err());
        // A chunk above the largest the repository allows.
        let huge = (MAX_CHUNK + 1) as u32;
        assert!(Checked::new(file(1, vec![huge], huge as u64)).is_err());
        // A size with no chunks.
        assert!(Checked::new(file(0, vec![], 1 << 40)).is_err());
        let ok = Checked::new(file(2, vec![5, 6], 11)).unwrap();
        assert_eq!(ok.pieces().map(|(_, s)| s).sum::<usize>(), 11);
    }
}
