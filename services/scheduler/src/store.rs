//! The scheduler's state in JetStream key-value buckets: systems, job
//! records and the snapshot catalog.

use arca_schemas::error::ErrorReply;
use arca_schemas::msg::SnapshotInfo;
use arca_schemas::{ErrorCode, JobId, JobRecord, SnapshotId, SystemConfig, codec};
use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Serialize, de::DeserializeOwned};

use crate::Scheduler;

fn unavailable(what: &str, e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Unavailable, format!("cannot {what}: {e}"))
}

async fn put<T: Serialize>(store: &kv::Store, key: &str, value: &T) -> Result<(), ErrorReply> {
    let bytes = codec::encode(value).map_err(|e| ErrorReply::internal(e.to_string()))?;
    store
        .put(key, bytes.into())
        .await
        .map_err(|e| unavailable(&format!("store {key}"), e))?;
    Ok(())
}

/// How long a write of a job record or a catalog entry, or a read, is
/// retried when JetStream cannot take it (a restarting server, a leader
/// election).
const WRITE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// [`put`], retried while JetStream is unavailable, for up to
/// [`WRITE_PATIENCE`]. A write whose acknowledgement was lost is made
/// again: the same value under the same key.
async fn put_patiently<T: Serialize>(
    store: &kv::Store,
    key: &str,
    value: &T,
) -> Result<(), ErrorReply> {
    let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
    let mut delay = std::time::Duration::from_millis(100);
    let mut said = false;
    loop {
        match put(store, key, value).await {
            Err(e)
                if e.code == ErrorCode::Unavailable && tokio::time::Instant::now() < deadline =>
            {
                if !said {
                    said = true;
                    tracing::warn!(%key, error = %e.message, "JetStream did not take a write; retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(arca_runtime::rpc::RETRY_MOST);
            }
            r => return r,
        }
    }
}

/// Reads `key`; a read JetStream cannot answer (a restarting server) is
/// tried again for up to [`WRITE_PATIENCE`].
async fn get<T: DeserializeOwned>(store: &kv::Store, key: &str) -> Result<Option<T>, ErrorReply> {
    let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
    let mut delay = std::time::Duration::from_millis(100);
    let bytes = loop {
        match store.get(key).await {
            Ok(b) => break b,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%key, error = %e, "JetStream did not answer a read; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(arca_runtime::rpc::RETRY_MOST);
            }
            Err(e) => return Err(unavailable(&format!("read {key}"), e)),
        }
    };
    match bytes {
        Some(bytes) => codec::decode(&bytes)
            .map(Some)
            .map_err(|e| ErrorReply::internal(format!("record {key} is unreadable: {e}"))),
        None => Ok(None),
    }
}

async fn all<T: DeserializeOwned>(store: &kv::Store) -> Result<Vec<T>, ErrorReply> {
    let keys: Vec<String> = match store.keys().await {
        Ok(k) => k
            .try_collect()
            .await
            .map_err(|e| unavailable("list keys", e))?,
        Err(e) => return Err(unavailable("list keys", e)),
    };
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        // A key deleted between listing and reading reads as None.
        if let Some(v) = get(store, &k).await? {
            out.push(v);
        }
    }
    Ok(out)
}

impl Scheduler {
    pub(crate) async fn put_system(&self, s: &SystemConfig) -> Result<(), ErrorReply> {
        put(&self.state.systems, &s.name, s).await
    }

    pub(crate) async fn system(&self, name: &str) -> Result<SystemConfig, ErrorReply> {
        if !arca_schemas::subject::valid_token(name) {
            return Err(ErrorReply::bad_request(format!(
                "{name:?} is not a valid system name"
            )));
        }
        get(&self.state.systems, name).await?.ok_or_else(|| {
            ErrorReply::not_found(format!(
                "unknown system {name:?}; register it with `arca systems load FILE` (see `arca systems list`)"
            ))
        })
    }

    pub(crate) async fn delete_system(&self, name: &str) -> Result<(), ErrorReply> {
        self.state
            .systems
            .delete(name)
            .await
            .map_err(|e| unavailable(&format!("remove {name}"), e))?;
        let _ = self.state.schedules.delete(name).await;
        Ok(())
    }

    /// The last schedule instant handled for a system.
    pub(crate) async fn schedule_last(
        &self,
        system: &str,
    ) -> Result<Option<DateTime<Utc>>, ErrorReply> {
        get(&self.state.schedules, system).await
    }

    pub(crate) async fn put_schedule_last(
        &self,
        system: &str,
        last: DateTime<Utc>,
    ) -> Result<(), ErrorReply> {
        put(&self.state.schedules, system, &last).await
    }

    pub(crate) async fn all_systems(&self) -> Result<Vec<SystemConfig>, ErrorReply> {
        all(&self.state.systems).await
    }

    pub(crate) async fn put_job(&self, rec: &JobRecord) -> Result<(), ErrorReply> {
        put_patiently(&self.state.jobs, &rec.id.to_string(), rec).await
    }

    pub(crate) async fn load_job(&self, id: &JobId) -> Result<Option<JobRecord>, ErrorReply> {
        get(&self.state.jobs, &id.to_string()).await
    }

    pub(crate) async fn all_jobs(&self) -> Result<Vec<JobRecord>, ErrorReply> {
        all(&self.state.jobs).await
    }

    pub(crate) async fn put_catalog(&self, info: &SnapshotInfo) -> Result<(), ErrorReply> {
        put_patiently(&self.state.snapshots, &info.id.0, info).await
    }

    pub(crate) async fn catalog_entry(&self, id: &SnapshotId) -> Result<SnapshotInfo, ErrorReply> {
        let unknown = || {
            ErrorReply::not_found(format!(
                "unknown snapshot {id}; `arca snapshots` lists the snapshots there are"
            ))
        };
        if SnapshotId::parse(&id.0).is_none() {
            return Err(unknown());
        }
        get(&self.state.snapshots, &id.0).await?.ok_or_else(unknown)
    }

    pub(crate) async fn delete_catalog(&self, id: &SnapshotId) -> Result<(), ErrorReply> {
        self.state
            .snapshots
            .delete(&id.0)
            .await
            .map_err(|e| unavailable(&format!("remove {id}"), e))
    }

    pub(crate) async fn all_snapshots(&self) -> Result<Vec<SnapshotInfo>, ErrorReply> {
        all(&self.state.snapshots).await
    }
}
