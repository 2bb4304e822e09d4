//! Reading the system's paths and streaming them to media.
//!
//! A blocking walker thread walks the paths (folders before what they
//! hold, names sorted) and takes files unchanged since the parent snapshot
//! from it without reading them. The other files go to a few reader
//! threads, which read them at the same time (a disk answers several reads
//! at once faster than one after the other), cut them into content-defined
//! chunks (FastCDC), hash them with the system's key, ask media in batches
//! which chunks it already holds and compress only the others. The walker
//! puts the files' nodes into the tree in walk order as their readers
//! finish. A bounded channel carries the compressed chunks to the sender,
//! which keeps at most `window` requests unacknowledged; media acknowledges
//! each after a durable write. The tree goes last, as tree chunks, and the
//! snapshot is committed only after every acknowledgement has arrived.

mod chunking;
mod file;
mod folder;
mod parent;
mod readers;
mod sink;
mod state;
mod tree;
mod walk;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::rpc::RpcError;
use arca_schemas::ChunkId;
use arca_schemas::msg::{
    ChunksStored, CommitSnapshot, PutChunk, PutChunks, SnapshotCommitted, StartBackupTransfer,
    TransferOutcome,
};
use arca_schemas::subject::{self, MediaDataVerb};
use arca_schemas::system::Selection;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::application::JobApps;
use crate::error::AgentError;
use crate::patience::Patience;
use crate::progress::Progress;

pub use chunking::{ChunkParams, chunker};
pub use parent::Parent;
use parent::parent_tree;
use sink::HasAsker;
use walk::read_all;

/// What goes from the walker thread to the sender.
enum Item {
    /// Compressed chunks media does not hold, for one request.
    Chunks(Vec<PutChunk>),
    Done {
        tree: Vec<ChunkId>,
    },
}

/// What a backup transfer is asked to do.
pub struct Request {
    /// The scheduler's request.
    pub transfer: StartBackupTransfer,
    /// What the job's built-in hook kinds hold (a PostgreSQL session in
    /// backup mode), if any: they say what to leave out and what to add.
    pub apps: Option<Arc<JobApps>>,
    /// Files read at the same time.
    pub readers: usize,
}

/// What the reader walks.
struct Walk<'a> {
    parent: Parent,
    paths: &'a [String],
    selection: &'a Selection,
    /// PostgreSQL data directories in backup mode: what a base backup
    /// omits is left out.
    postgresql: Vec<PathBuf>,
}

/// Runs one backup transfer to its end; `identity` signs the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: async_nats::Client,
    system: String,
    identity: arca_runtime::identity::Identity,
    request: Request,
    params: ChunkParams,
    window: usize,
    patience: Patience,
    progress: Arc<Mutex<Progress>>,
) -> TransferOutcome {
    let Request {
        transfer: req,
        apps,
        readers,
    } = request;
    // Batches of compressed chunks ready to go: a few, each up to
    // PUT_BATCH_BYTES.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(4);
    let reader_progress = progress.clone();
    let paths = req.paths.clone();
    let selection = req.selection.clone();
    let asker = HasAsker {
        client: client.clone(),
        subject: subject::media_data(&req.media, &system, MediaDataVerb::Has),
        session: req.session.clone(),
        runtime: tokio::runtime::Handle::current(),
        patience,
    };
    let key = req.chunk_key;
    let parent = match &req.parent {
        Some(id) => match parent_tree(&client, &system, &req.media, id, patience).await {
            Ok(tree) => Parent::new(
                tree,
                client.clone(),
                subject::media_data(&req.media, &system, MediaDataVerb::Get),
                key,
                patience,
            ),
            Err(e) => {
                tracing::warn!(parent = %id, error = %e, "parent snapshot unreadable; reading every file");
                Parent::none()
            }
        },
        None => Parent::none(),
    };
    let postgresql = match &apps {
        Some(a) => a.postgresql_dirs().await,
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Handle::current();
    let reader = tokio::task::spawn_blocking(move || {
        let finish = || match &apps {
            Some(a) => runtime.block_on(a.finish_backup()),
            None => Ok(Vec::new()),
        };
        read_all(
            Walk {
                parent,
                paths: &paths,
                selection: &selection,
                postgresql,
            },
            params,
            readers,
            key,
            asker,
            tx,
            &reader_progress,
            finish,
        )
    });

    let put_subject = subject::media_data(&req.media, &system, MediaDataVerb::PutMany);
    let mut in_flight = FuturesUnordered::new();
    let mut tree = None;
    let mut failure: Option<AgentError> = None;
    loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let done: Result<(ChunksStored, usize), RpcError> = done;
                match done {
                    Ok((stored, wire)) => {
                        let mut p = progress.lock().expect("progress lock");
                        p.stats.wire_bytes += wire as u64;
                        p.stats.new_chunks += stored.new.iter().filter(|n| **n).count() as u64;
                    }
                    Err(e) => {
                        failure = Some(e.into());
                        break;
                    }
                }
            }
            item = rx.recv(), if in_flight.len() < window && tree.is_none() => {
                let batch = match item {
                    Some(Item::Chunks(batch)) => batch,
                    Some(Item::Done { tree: t }) => {
                        tree = Some(t);
                        Vec::new()
                    }
                    // The reader ended without Done: it failed.
                    None => break,
                };
                if !batch.is_empty() {
                    let session = req.session.clone();
                    let subject = put_subject.clone();
                    let client = client.clone();
                    in_flight.push(async move {
                        let body = PutChunks { session, chunks: batch };
                        let wire = body.chunks.iter().map(|c| c.frame.len()).sum();
                        let r: ChunksStored = patience.request(&client, &subject, &body).await?;
                        if r.new.len() != body.chunks.len() {
                            return Err(RpcError::Transport {
                                subject: subject.clone(),
                                message: "media answered for a different number of chunks".into(),
                            });
                        }
                        Ok((r, wire))
                    });
                }
            }
            else => break,
        }
        if tree.is_some() && in_flight.is_empty() {
            break;
        }
    }
    drop(rx);
    let read = reader.await;
    let (stats, file_errors, file_warnings) = {
        let p = progress.lock().expect("progress lock");
        (
            p.stats.clone(),
            crate::progress::cap_file_errors(&p.file_errors),
            crate::progress::cap_file_errors(&p.file_warnings),
        )
    };
    // The wire's error is made here, where the outcome is.
    let outcome = |snapshot, error: Option<AgentError>| TransferOutcome {
        stats: stats.clone(),
        snapshot,
        file_errors: file_errors.clone(),
        file_warnings: file_warnings.clone(),
        error: error.map(|e| e.to_reply()),
    };
    if let Some(e) = failure {
        return outcome(None, Some(e));
    }
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return outcome(None, Some(e)),
        Err(e) => {
            return outcome(
                None,
                Some(AgentError::stopped(format!("reader crashed: {e}"))),
            );
        }
    }
    let Some(tree) = tree else {
        return outcome(
            None,
            Some(AgentError::stopped("reader ended without a tree")),
        );
    };
    // The agent vouches for the snapshot: media commits it only when the
    // key enrolled for this system signed this manifest.
    let signature = identity.sign(&arca_runtime::trust::manifest_bytes(
        &system, req.job, &tree,
    ));
    let commit = CommitSnapshot {
        session: req.session.clone(),
        signature,
        tree,
        stats: stats.clone(),
        file_errors: file_errors.clone(),
    };
    let subject = subject::media_data(&req.media, &system, MediaDataVerb::Commit);
    match patience
        .with_timeout(Duration::from_secs(300))
        .request::<_, SnapshotCommitted>(&client, &subject, &commit)
        .await
    {
        Ok(c) => outcome(Some(c.snapshot.id), None),
        Err(e) => outcome(None, Some(e.into())),
    }
}
