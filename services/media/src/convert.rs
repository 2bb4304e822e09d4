//! Between the wire and the repository: the catalog's `SnapshotInfo` and
//! the stored snapshot record, the request's retention policy and the
//! repository's. The repository's types are its format on disk
//! (`docs/repository-format.md`); only here do the two meet, so a reply
//! can change without changing what is stored.

use arca_repo::{FileErrorV1, SnapshotInfoV1, TransferStatsV1};
use arca_schemas::job::{FileError, TransferStats};
use arca_schemas::msg::{RetentionPolicy, SnapshotInfo};

/// The stored form of a snapshot's catalog view.
pub(crate) fn info_to_stored(info: SnapshotInfo) -> SnapshotInfoV1 {
    let s = info.stats;
    SnapshotInfoV1 {
        id: info.id,
        system: info.system,
        job: info.job,
        time: info.time,
        paths: info.paths,
        media: info.media,
        stats: TransferStatsV1 {
            entries: s.entries,
            files: s.files,
            bytes: s.bytes,
            chunks: s.chunks,
            new_chunks: s.new_chunks,
            wire_bytes: s.wire_bytes,
            unchanged_files: s.unchanged_files,
        },
        file_errors: info
            .file_errors
            .into_iter()
            .map(|e| FileErrorV1 {
                path: e.path,
                error: e.error,
            })
            .collect(),
        signer: info.signer,
        signature: info.signature,
    }
}

/// The catalog view of a stored snapshot.
pub(crate) fn info_to_wire(info: SnapshotInfoV1) -> SnapshotInfo {
    let s = info.stats;
    SnapshotInfo {
        id: info.id,
        system: info.system,
        job: info.job,
        time: info.time,
        paths: info.paths,
        media: info.media,
        stats: TransferStats {
            entries: s.entries,
            files: s.files,
            bytes: s.bytes,
            chunks: s.chunks,
            new_chunks: s.new_chunks,
            wire_bytes: s.wire_bytes,
            unchanged_files: s.unchanged_files,
        },
        file_errors: info
            .file_errors
            .into_iter()
            .map(|e| FileError {
                path: e.path,
                error: e.error,
            })
            .collect(),
        signer: info.signer,
        signature: info.signature,
    }
}

/// The repository's form of a requested retention policy.
pub(crate) fn retention(p: &RetentionPolicy) -> arca_repo::RetentionPolicy {
    arca_repo::RetentionPolicy {
        keep_last: p.keep_last,
        keep_hourly: p.keep_hourly,
        keep_daily: p.keep_daily,
        keep_weekly: p.keep_weekly,
        keep_monthly: p.keep_monthly,
        keep_yearly: p.keep_yearly,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_info_survives_the_round_trip() {
        let info = SnapshotInfo {
            id: arca_schemas::SnapshotId::new(),
            system: "web-1".into(),
            job: arca_schemas::JobId::new(),
            time: chrono::Utc::now(),
            paths: vec!["/srv".into()],
            media: "media-1".into(),
            stats: TransferStats {
                entries: 1,
                files: 2,
                bytes: 3,
                chunks: 4,
                new_chunks: 5,
                wire_bytes: 6,
                unchanged_files: 7,
            },
            file_errors: vec![FileError {
                path: "/a".into(),
                error: "b".into(),
            }],
            signer: Some("k".into()),
            signature: None,
        };
        assert_eq!(info_to_wire(info_to_stored(info.clone())), info);
    }
}
