//! Rebuilding the snapshot catalog from the repositories alone: every media
//! service the registered systems name (and any the operator adds) lists
//! its snapshots; the catalog becomes exactly that list. Entries of a media
//! service that does not answer are kept, and the answer names it.
//!
//! Reconciling, which the scheduler does by itself at start and every
//! `reconcile-secs`, only adds: a snapshot media holds that the catalog
//! does not list (its job lost contact with the agent, or the scheduler
//! stopped, between media's commit and the job's record) is recorded in
//! the catalog and in its job's record, and reported as a
//! `snapshot-adopted` event of that job. A snapshot whose job still runs
//! is left to the job. Entries media no longer holds are reported in the
//! log, never removed: removing is `arca catalog rebuild`, an operator's
//! decision.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arca_runtime::rpc::{self, decode_request};
use arca_schemas::error::ErrorReply;
use arca_schemas::event::EventDetail;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, MediaVerb};
use arca_schemas::{JobKind, SnapshotId};

use crate::Scheduler;

impl Scheduler {
    pub(crate) async fn rebuild_catalog(&self, p: &[u8]) -> Result<CatalogRebuilt, ErrorReply> {
        let req: RebuildCatalog = decode_request(p)?;
        let mut media: BTreeSet<String> = self
            .all_systems()
            .await?
            .into_iter()
            .map(|s| s.media)
            .collect();
        media.extend(self.all_snapshots().await?.into_iter().map(|s| s.media));
        for m in req.media {
            if !subject::valid_token(&m) {
                return Err(ErrorReply::bad_request(format!(
                    "media name {m:?} is not a valid name"
                )));
            }
            media.insert(m);
        }
        let mut answered = Vec::new();
        let mut unreachable = Vec::new();
        let mut found = Vec::new();
        for m in &media {
            let r: Result<ListSnapshotsReply, _> = rpc::request_with_timeout(
                &self.client,
                subject::media(m, MediaVerb::Snapshots),
                &MediaListSnapshots::default(),
                Duration::from_secs(60),
            )
            .await;
            match r {
                Ok(r) => {
                    answered.push(m.clone());
                    found.extend(r.snapshots);
                }
                Err(e) => {
                    tracing::warn!(media = %m, error = %e, "media did not list its snapshots");
                    unreachable.push(m.clone());
                }
            }
        }
        let before = self.all_snapshots().await?;
        let known: HashSet<_> = before.iter().map(|s| s.id.clone()).collect();
        let found_ids: HashSet<_> = found.iter().map(|s| s.id.clone()).collect();
        let mut added = 0;
        for info in &found {
            if !known.contains(&info.id) {
                added += 1;
            }
            self.put_catalog(info).await?;
        }
        let mut removed = 0;
        for old in &before {
            if answered.contains(&old.media) && !found_ids.contains(&old.id) {
                self.delete_catalog(&old.id).await?;
                removed += 1;
            }
        }
        let snapshots = self.all_snapshots().await?.len();
        tracing::info!(added, removed, snapshots, ?unreachable, "catalog rebuilt");
        Ok(CatalogRebuilt {
            media: answered,
            snapshots,
            added,
            removed,
            unreachable,
        })
    }
}

/// What one reconciliation found.
#[derive(Debug, Default)]
pub(crate) struct Reconciled {
    /// Snapshots added to the catalog.
    pub adopted: Vec<SnapshotId>,
    /// Media services that did not list their snapshots.
    pub unreachable: Vec<String>,
}

impl Scheduler {
    /// Reconciles at start, then every `reconcile-secs`, forever.
    pub(crate) async fn reconcile_loop(self: Arc<Self>) {
        loop {
            match self.reconcile_catalog().await {
                Ok(r) if !r.adopted.is_empty() || !r.unreachable.is_empty() => {
                    tracing::info!(adopted = ?r.adopted, unreachable = ?r.unreachable, "catalog reconciled")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.message, "catalog not reconciled"),
            }
            tokio::time::sleep(Duration::from_secs(self.config.reconcile_secs)).await;
        }
    }

    /// Adds to the catalog the snapshots media holds and it does not list
    /// (see the module documentation).
    pub(crate) async fn reconcile_catalog(&self) -> Result<Reconciled, ErrorReply> {
        let media: BTreeSet<String> = self
            .all_systems()
            .await?
            .into_iter()
            .map(|s| s.media)
            .collect();
        let mut out = Reconciled::default();
        let all = MediaListSnapshots::default();
        for m in &media {
            let r: Result<ListSnapshotsReply, _> =
                rpc::retry(Duration::from_secs(self.config.retry_secs), || {
                    rpc::request_with_timeout(
                        &self.client,
                        subject::media(m, MediaVerb::Snapshots),
                        &all,
                        Duration::from_secs(60),
                    )
                })
                .await;
            let found = match r {
                Ok(r) => r.snapshots,
                Err(e) => {
                    tracing::warn!(media = %m, error = %e, "media did not list its snapshots");
                    out.unreachable.push(m.clone());
                    continue;
                }
            };
            let known = self.all_snapshots().await?;
            let known_ids: HashSet<_> = known.iter().map(|s| s.id.clone()).collect();
            let found_ids: HashSet<_> = found.iter().map(|s| s.id.clone()).collect();
            for gone in known
                .iter()
                .filter(|s| &s.media == m && !found_ids.contains(&s.id))
            {
                tracing::warn!(
                    snapshot = %gone.id,
                    media = %m,
                    "the catalog lists a snapshot media no longer holds; `arca catalog rebuild` drops it"
                );
            }
            for info in found.into_iter().filter(|s| !known_ids.contains(&s.id)) {
                if self.adopt(&info).await? {
                    out.adopted.push(info.id);
                }
            }
        }
        Ok(out)
    }

    /// Records an orphan snapshot; false when its job still runs (the job
    /// records it itself).
    async fn adopt(&self, info: &SnapshotInfo) -> Result<bool, ErrorReply> {
        let job = self.load_job(&info.job).await?;
        if job.as_ref().is_some_and(|j| j.ended.is_none()) {
            return Ok(false);
        }
        self.put_catalog(info).await?;
        let kind = match job {
            Some(mut rec) => {
                if rec.snapshot.is_none() {
                    rec.snapshot = Some(info.id.clone());
                    rec.updated = chrono::Utc::now();
                    self.put_job(&rec).await?;
                }
                rec.kind
            }
            None => JobKind::Backup,
        };
        tracing::warn!(
            snapshot = %info.id,
            job = %info.job,
            system = %info.system,
            "media holds a snapshot the catalog did not list; recorded it"
        );
        arca_runtime::events::publish(
            &self.state.js,
            info.job,
            kind,
            &info.system,
            EventDetail::SnapshotAdopted {
                snapshot: info.id.clone(),
                media: info.media.clone(),
            },
        )
        .await;
        Ok(true)
    }
}
