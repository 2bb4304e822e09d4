//! Rebuilding the snapshot catalog from the repositories alone: every media
//! service the registered systems name (and any the operator adds) lists
//! its snapshots; the catalog becomes exactly that list. Entries of a media
//! service that does not answer are kept, and the answer names it.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use arca_runtime::rpc::{self, decode_request};
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, MediaVerb};

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
