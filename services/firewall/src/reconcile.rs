//! Which jobs may keep a window across a restart of the controller.
//!
//! The controller keeps no state file. Windows found in place at start
//! (pairs the backend lists, each tagged with its job) are checked against
//! the scheduler's job records in the key-value bucket `ARCA_JOBS`: a pair
//! is kept only when its job's record says `running` and lists this
//! firewall in `open-windows`. Everything else is removed at once. When the
//! records cannot be read, nothing counts as running: the controller fails
//! closed: a running job loses its window, its renewals are refused (the
//! controller never reopens a window on renewal), and the job fails when
//! its agent can no longer be reached, rather than run unguarded.
//!
//! The records are the scheduler's own persisted view (each firewall is
//! added to `open-windows` before it is asked to open, and removed only
//! after it confirmed closing), so they never miss a window the scheduler
//! may still use; asking the scheduler over NATS instead would fail
//! whenever the scheduler is down, which is exactly when stale pairs are
//! most likely.

use std::collections::HashSet;

use arca_schemas::{JobId, JobRecord, JobStatus, codec, names};
use futures::TryStreamExt;

/// Ids of jobs that are running and hold a window on `firewall`.
pub async fn running_jobs(
    client: &async_nats::Client,
    firewall: &str,
) -> anyhow::Result<HashSet<JobId>> {
    let js = async_nats::jetstream::new(client.clone());
    let Ok(store) = js.get_key_value(names::JOBS_BUCKET).await else {
        // No bucket: no scheduler has ever run a job here.
        return Ok(HashSet::new());
    };
    let keys: Vec<String> = store.keys().await?.try_collect().await?;
    let mut running = HashSet::new();
    for key in keys {
        let Some(bytes) = store.get(&key).await? else {
            continue;
        };
        let Ok(rec) = codec::decode::<JobRecord>(&bytes) else {
            tracing::warn!(%key, "unreadable job record; ignored");
            continue;
        };
        if rec.status == JobStatus::Running && rec.open_windows.iter().any(|w| w == firewall) {
            running.insert(rec.id);
        }
    }
    Ok(running)
}

/// The tag stored with a window's pairs.
pub fn tag(job: &JobId, system: &str) -> String {
    format!("job={job} system={system}")
}

/// Reads a tag back: (job, system).
pub fn parse_tag(tag: &str) -> Option<(JobId, String)> {
    let mut job = None;
    let mut system = None;
    for part in tag.split_whitespace() {
        match part.split_once('=') {
            Some(("job", v)) => job = JobId::parse(v),
            Some(("system", v)) => system = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((job?, system?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_fit_a_comment() {
        let job = JobId::new();
        let long = "s".repeat(64);
        let t = tag(&job, &long);
        assert!(t.len() <= 128, "nftables comments hold 128 bytes");
        assert_eq!(parse_tag(&t), Some((job, long)));
        assert_eq!(parse_tag("job=nope system=x"), None);
        assert_eq!(parse_tag(""), None);
    }
}
