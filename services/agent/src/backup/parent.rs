//! The parent snapshot: its tree, read alongside the walk so that files
//! unchanged since it are taken without being read.

use arca_frame as frame;
use arca_schemas::ChunkId;
use arca_schemas::subject::{self, MediaDataVerb};
use arca_schemas::tree::{Node, TreeBatch, path_order};

use crate::error::AgentError;
use crate::patience::Patience;

/// The tree chunk ids of the parent snapshot.
pub(super) async fn parent_tree(
    client: &async_nats::Client,
    system: &str,
    media: &str,
    id: &arca_schemas::SnapshotId,
    patience: Patience,
) -> Result<Vec<ChunkId>, AgentError> {
    let snap: arca_schemas::msg::SnapshotReply = patience
        .request(
            client,
            &subject::media_data(media, system, MediaDataVerb::Snapshot),
            &arca_schemas::msg::GetSnapshot {
                snapshot: id.clone(),
                session: None,
            },
        )
        .await?;
    Ok(snap.tree)
}

/// The parent snapshot's nodes, read one tree chunk at a time alongside
/// the walk: both are in path order, so the node for a path is found by
/// moving forward only, and memory holds one tree chunk, not the tree.
pub struct Parent {
    batches: std::vec::IntoIter<ChunkId>,
    nodes: std::collections::VecDeque<Node>,
    fetch: Option<ParentFetch>,
}

struct ParentFetch {
    client: async_nats::Client,
    subject: String,
    key: [u8; 32],
    patience: Patience,
    runtime: tokio::runtime::Handle,
}

impl Parent {
    pub(super) fn new(
        tree: Vec<ChunkId>,
        client: async_nats::Client,
        subject: String,
        key: [u8; 32],
        patience: Patience,
    ) -> Parent {
        Parent {
            batches: tree.into_iter(),
            nodes: Default::default(),
            fetch: Some(ParentFetch {
                client,
                subject,
                key,
                patience,
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// No parent: every file is read.
    pub fn none() -> Parent {
        Parent {
            batches: Vec::new().into_iter(),
            nodes: Default::default(),
            fetch: None,
        }
    }

    /// The parent's node for `path`, if it had one. Paths must be asked
    /// in walk order; nodes before `path` are dropped. A tree chunk that
    /// cannot be read ends the parent (the rest of the files are read).
    fn get(&mut self, path: &[u8]) -> Option<&Node> {
        loop {
            if self.nodes.is_empty() && !self.next_batch() {
                return None;
            }
            let front = self.nodes.front()?;
            match path_order(&front.path, path) {
                std::cmp::Ordering::Less => {
                    self.nodes.pop_front();
                }
                std::cmp::Ordering::Equal => return self.nodes.front(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }

    /// The parent's node for `path`, taken out of it; as [`Parent::get`].
    pub(super) fn take(&mut self, path: &[u8]) -> Option<Node> {
        self.get(path)?;
        self.nodes.pop_front()
    }

    fn next_batch(&mut self) -> bool {
        let (Some(f), Some(id)) = (&self.fetch, self.batches.next()) else {
            return false;
        };
        let body = arca_schemas::msg::GetChunk { id, session: None };
        let got: Result<TreeBatch, AgentError> = f
            .runtime
            .block_on(
                f.patience
                    .request::<_, arca_schemas::msg::ChunkData>(&f.client, &f.subject, &body),
            )
            .map_err(AgentError::from)
            .and_then(|d| Ok(frame::decode_tree(&d.frame, &f.key, &id)?));
        match got {
            Ok(batch) => {
                self.nodes.extend(batch.nodes);
                true
            }
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "parent tree chunk unreadable; reading the remaining files");
                self.fetch = None;
                false
            }
        }
    }
}
