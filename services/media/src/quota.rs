//! Per-system storage quotas.
//!
//! A system's quota comes from the systems file (`quota = "50 GiB"`); the
//! scheduler passes it when it opens a backup session. Its usage is what
//! the repository holds for the system (the sealed records its index
//! names), counted when a session with a quota opens and raised by every
//! chunk stored since. A prune frees space, which the next session's count
//! sees. A put that would take the system past its quota is refused, and
//! the backup fails saying so; nothing stored is harmed.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::MediaError;

/// Bytes each system holds, for the systems with a quota.
#[derive(Default)]
pub(crate) struct Usage {
    bytes: Mutex<HashMap<String, u64>>,
}

/// Bytes reserved for a put; given back unless [`Reserved::keep`] is called.
pub(crate) struct Reserved<'a> {
    usage: &'a Usage,
    system: String,
    bytes: u64,
}

impl Reserved<'_> {
    /// The put stored `stored` of the reserved bytes.
    pub(crate) fn keep(mut self, stored: u64) {
        let unused = self.bytes.saturating_sub(stored);
        self.bytes = unused;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.bytes > 0
            && let Some(b) = self
                .usage
                .bytes
                .lock()
                .expect("usage lock")
                .get_mut(&self.system)
        {
            *b = b.saturating_sub(self.bytes);
        }
    }
}

impl Usage {
    /// Sets what `system` holds (counted when a session with a quota opens).
    pub(crate) fn set(&self, system: &str, bytes: u64) {
        self.bytes
            .lock()
            .expect("usage lock")
            .insert(system.to_owned(), bytes);
    }

    /// Reserves `bytes` for a put of `system` within `quota`, or refuses
    /// it with what the system holds and what to do.
    pub(crate) fn reserve(
        &self,
        system: &str,
        quota: Option<u64>,
        bytes: u64,
    ) -> Result<Reserved<'_>, MediaError> {
        let Some(quota) = quota else {
            return Ok(Reserved {
                usage: self,
                system: system.to_owned(),
                bytes: 0,
            });
        };
        let mut all = self.bytes.lock().expect("usage lock");
        let used = all.entry(system.to_owned()).or_default();
        if used.saturating_add(bytes) > quota {
            return Err(MediaError::Conflict(format!(
                "refused: system {system} holds {} in the repository and its quota is {}; \
                     storing {} more would exceed it. Forget old snapshots and prune \
                     (`arca forget {system} --keep-last N`, then `arca prune`), or raise \
                     the system's quota in the systems file",
                arca_schemas::text::human_bytes(*used),
                arca_schemas::text::human_bytes(quota),
                arca_schemas::text::human_bytes(bytes)
            )));
        }
        *used += bytes;
        Ok(Reserved {
            usage: self,
            system: system.to_owned(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_past_the_quota_is_refused_and_a_failed_put_gives_its_bytes_back() {
        let u = Usage::default();
        u.set("s", 900);
        let r = u.reserve("s", Some(1000), 100).unwrap();
        drop(r); // the put failed
        u.reserve("s", Some(1000), 100).unwrap().keep(100);
        let e = u.reserve("s", Some(1000), 1).err().unwrap().to_reply();
        assert_eq!(e.code, arca_schemas::ErrorCode::Conflict);
        assert!(!e.retryable);
        assert!(e.message.contains("system s holds 1000 B"), "{}", e.message);
        assert!(e.message.contains("quota is 1000 B"), "{}", e.message);
        // Without a quota, nothing is counted or refused.
        u.reserve("t", None, u64::MAX).unwrap().keep(u64::MAX);
    }
}
