//! Writing a snapshot back onto the system.
//!
//! The tree is read one tree chunk at a time, each narrowed to the paths
//! the restore's filter takes (with the folders above them), while the
//! files of the chunks before it are still being fetched: memory holds
//! the chunks in flight, the folders and the links, never the whole tree.
//! Folders are created. A file that
//! already exists with the same size is read and each of its chunks hashed:
//! when all match the snapshot it is left as it is (only its metadata is
//! set), so a restore over a tree, or one run again after an interruption,
//! rewrites only what differs. The chunks of every other file are fetched
//! in batches (many small chunks per request), with up to `window`
//! requests in flight across files, in any order, and
//! each is checked against the id recorded at backup time (invariant 6) and
//! written at its offset (the tree records every chunk's length); all-zero
//! blocks of a sparse file are left as holes. A file is written under a
//! temporary name beside its destination and renamed into place only when
//! all of it verified, so a failed file never replaces a good one. Other
//! names of hard-linked files are linked to their first name; FIFOs,
//! device nodes, sockets and symlinks follow; folder metadata is applied
//! last, deepest first, because writing into a folder changes its mtime.
//!
//! The tree comes from the system that was backed up and is not trusted:
//! each node is checked before anything is written for it ([`check`]),
//! every write is resolved beneath the restore root without following a
//! symbolic link ([`beneath`]), and what of a node's privileges is kept
//! depends on where the restore goes ([`metadata`]).

mod beneath;
mod check;
mod entries;
mod failure;
mod fetch;
mod file;
mod metadata;
mod selector;
mod shared;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arca_frame as frame;
use arca_schemas::msg::{GetSnapshot, SnapshotReply, StartRestoreTransfer, TransferOutcome};
use arca_schemas::subject::{self, MediaDataVerb};
use arca_schemas::tree::NodeKind;
use arca_schemas::trust::TokenClaims;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::error::AgentError;
use crate::meta::Names;
use crate::patience::Patience;
use crate::progress::Progress;
use crate::select::Filter;
use beneath::Beneath;
use check::Checked;
use fetch::{fetch_and_write, get_chunk, piece_batches};
use file::{Ctx, FileState, Slot};
use metadata::Privileges;
use rustix::fs::OFlags;
use selector::Selector;
use shared::{LeftOut, Shared};

/// Runs one restore transfer to its end.
pub async fn run(
    client: async_nats::Client,
    system: String,
    req: StartRestoreTransfer,
    claims: TokenClaims,
    window: usize,
    patience: Patience,
    progress: Arc<Mutex<Progress>>,
) -> TransferOutcome {
    let result = restore(&client, &system, &req, &claims, window, patience, &progress).await;
    let p = progress.lock().expect("progress lock");
    TransferOutcome {
        stats: p.stats.clone(),
        snapshot: Some(req.snapshot.clone()),
        file_errors: crate::progress::cap_file_errors(&p.file_errors),
        file_warnings: crate::progress::cap_file_errors(&p.file_warnings),
        error: result.err().map(|e| e.to_reply()),
    }
}

/// Checks that the scheduler's token allows restoring `req` onto `system`:
/// the snapshot it names, and, when the snapshot belongs to another system
/// (`owner`, once media said so, or the token's own word before), the
/// operator's cross-system override.
pub fn check_grant(
    system: &str,
    req: &StartRestoreTransfer,
    claims: &TokenClaims,
    owner: Option<&str>,
) -> Result<(), AgentError> {
    if claims.snapshot.as_ref() != Some(&req.snapshot) {
        return Err(AgentError::Forbidden(format!(
            "refused: the job token does not name snapshot {}",
            req.snapshot
        )));
    }
    let owner = owner.or(claims.source_system.as_deref()).unwrap_or(system);
    if claims.source_system.as_deref().is_some_and(|s| s != owner) {
        return Err(AgentError::Forbidden(format!(
            "refused: snapshot {} belongs to {owner}, the job token says {}",
            req.snapshot,
            claims.source_system.as_deref().unwrap_or_default()
        )));
    }
    if owner != system && !claims.cross_system {
        return Err(AgentError::Forbidden(format!(
            "refused: snapshot {} belongs to system {owner}; this agent restores only its own \
             system's snapshots unless an operator allowed a cross-system restore",
            req.snapshot
        )));
    }
    Ok(())
}

/// A path's key in the set of files a restore writes.
fn path_key(path: &[u8]) -> [u8; 16] {
    let h = blake3::hash(path);
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.as_bytes()[..16]);
    k
}

async fn restore(
    client: &async_nats::Client,
    system: &str,
    req: &StartRestoreTransfer,
    claims: &TokenClaims,
    window: usize,
    patience: Patience,
    progress: &Arc<Mutex<Progress>>,
) -> Result<(), AgentError> {
    let snap: SnapshotReply = patience
        .request(
            client,
            &subject::media_data(&req.media, system, MediaDataVerb::Snapshot),
            &GetSnapshot {
                snapshot: req.snapshot.clone(),
                session: req.session.clone(),
            },
        )
        .await?;
    // Before anything is written, not even the target folder.
    check_grant(system, req, claims, Some(&snap.info.system))?;
    let root = match &req.target {
        Some(t) => {
            let t = PathBuf::from(t);
            if !t.is_absolute() {
                return Err(AgentError::BadRequest(format!(
                    "restore target {} is not an absolute path",
                    t.display()
                )));
            }
            check_writable(&t)?;
            t
        }
        None => PathBuf::from("/"),
    };
    // Only an in-place restore of the system's own snapshot is faithful
    // without the operator asking.
    let own_in_place = req.target.is_none() && snap.info.system == system;
    let privileges = if own_in_place || req.keep_privileges {
        Privileges::keep()
    } else {
        Privileges::restoring_user()
    };
    let beneath = Beneath::open(&root).map_err(|e| {
        AgentError::BadRequest(format!(
            "restore target {} cannot be opened: {e}",
            root.display()
        ))
    })?;
    let filter = Filter::new(&req.filter).map_err(AgentError::Filter)?;
    let shared = Arc::new(Shared {
        key: req.chunk_key,
        granted: req.session.is_some(),
        beneath,
        privileges,
        progress: progress.clone(),
        names: Mutex::new(Names::default()),
        left_out: Mutex::new(LeftOut::default()),
        failed: Mutex::new(HashSet::new()),
        root,
    });
    // The tree is read one chunk at a time and its files are fetched while
    // the next chunk is read: memory holds the chunks in flight, the
    // folders (for their metadata, set last) and links, not the tree.
    let get_subject = subject::media_data(&req.media, system, MediaDataVerb::Get);
    let get_many = subject::media_data(&req.media, system, MediaDataVerb::GetMany);
    let mut sel = Selector::new(filter);
    let (mut dirs, mut others, mut links) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_flight = FuturesUnordered::new();
    for id in &snap.tree {
        let got = get_chunk(client, &get_subject, *id, req.session.clone(), patience).await?;
        let check = shared.check_id(*id, got.check)?;
        let batch = frame::decode_tree(&got.frame, &req.chunk_key, &check)?;
        // Folders first, in walk order. Other names of a file restored
        // here are linked once it is in place. A node that fails its check
        // is reported and nothing is written for it.
        let (mut new_dirs, mut files) = (Vec::new(), Vec::new());
        for n in sel.take(batch.nodes) {
            let n = match Checked::new(n) {
                Ok(n) => n,
                Err((n, why)) => {
                    shared.refuse(&n, why);
                    continue;
                }
            };
            match n.node().kind {
                NodeKind::Dir => new_dirs.push(n),
                NodeKind::File { .. } => match n.first() {
                    Some(first) if sel.files.contains(&path_key(first.as_bytes())) => links.push(n),
                    _ => {
                        sel.files.insert(path_key(&n.node().path));
                        files.push(n)
                    }
                },
                _ => others.push(n),
            }
        }
        let ctx = Ctx {
            files: files
                .into_iter()
                .map(|node| FileState {
                    remaining: AtomicUsize::new(node.pieces().count()),
                    shown: shared.shown(&node.node().path),
                    node,
                    tmp: Mutex::new(Slot::New),
                    failed: Mutex::new(None),
                })
                .collect(),
            shared: shared.clone(),
        };
        // Folders made; files already in place with the same content left
        // as they are; empty files need no chunk.
        let (ctx, made, skip) = tokio::task::spawn_blocking(move || {
            new_dirs.retain(|d| ctx.make_dir(d));
            let mut skip = vec![false; ctx.files.len()];
            for (i, s) in skip.iter_mut().enumerate() {
                if ctx.already_there(i) {
                    *s = true;
                } else if ctx.files[i].remaining.load(Ordering::Relaxed) == 0 {
                    ctx.finish_file(i);
                }
            }
            (ctx, new_dirs, skip)
        })
        .await
        .map_err(|e| AgentError::stopped(e.to_string()))?;
        dirs.extend(made);
        let ctx = Arc::new(ctx);
        for batch in piece_batches(&ctx, &skip) {
            while in_flight.len() >= window.max(1) {
                in_flight.next().await;
            }
            in_flight.push(fetch_and_write(
                ctx.clone(),
                batch,
                client.clone(),
                get_many.clone(),
                req.session.clone(),
                patience,
            ));
        }
    }
    while in_flight.next().await.is_some() {}
    if !sel.any && !req.filter.is_empty() {
        return Err(AgentError::BadRequest(
            "no path of the snapshot matches the restore's --include/--exclude patterns; list them with `arca ls`"
                .into(),
        ));
    }

    let ctx2 = shared.clone();
    tokio::task::spawn_blocking(move || {
        for l in &links {
            ctx2.link(l);
        }
        for n in &others {
            ctx2.make_other(n);
        }
        // Deepest first, so setting a folder's mtime is not undone by
        // writing into one of its subfolders.
        for d in dirs.iter().rev() {
            ctx2.dir_metadata(d);
        }
        ctx2.report_owners();
        // The restore ends when what it wrote is on disk.
        rustix::fs::openat(
            &**ctx2.beneath.root(),
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .and_then(|root| rustix::fs::syncfs(&root))
        .map_err(|e| AgentError::io("the restored files could not be flushed to disk", e.into()))
    })
    .await
    .map_err(|e| AgentError::stopped(format!("writer crashed: {e}")))??;
    Ok(())
}

/// Refuses a target that cannot be written, before anything is written.
fn check_writable(target: &Path) -> Result<(), AgentError> {
    let refuse = |e: std::io::Error| {
        AgentError::BadRequest(format!(
            "restore target {} is not writable: {e}; choose another folder with --target",
            target.display()
        ))
    };
    std::fs::create_dir_all(target).map_err(refuse)?;
    let probe = tempfile::Builder::new()
        .prefix(".arca-probe-")
        .tempfile_in(target)
        .map_err(refuse)?;
    drop(probe);
    Ok(())
}
