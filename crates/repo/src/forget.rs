//! Retention: which snapshots a policy keeps.

use std::collections::HashSet;

use arca_schemas::SnapshotId;
use chrono::{DateTime, Datelike, Timelike, Utc};

/// Which snapshots to keep; a snapshot kept by any rule is kept. Buckets
/// (hour, day, ISO week, month, year) are in UTC; in each, the newest
/// snapshot counts. The repository's own type: the request that carries a
/// policy converts to it, so the two move apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The newest N snapshots.
    pub keep_last: u32,
    /// The newest snapshot of each of the last N hours that have one.
    pub keep_hourly: u32,
    /// Likewise per day.
    pub keep_daily: u32,
    /// Likewise per ISO week.
    pub keep_weekly: u32,
    /// Likewise per month.
    pub keep_monthly: u32,
    /// Likewise per year.
    pub keep_yearly: u32,
}

/// Splits snapshots (any order) into (kept, forgotten), each newest first.
pub fn apply(
    policy: &RetentionPolicy,
    snapshots: &[(SnapshotId, DateTime<Utc>)],
) -> (Vec<SnapshotId>, Vec<SnapshotId>) {
    let mut sorted: Vec<&(SnapshotId, DateTime<Utc>)> = snapshots.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut keep: HashSet<&SnapshotId> = HashSet::new();
    for (id, _) in sorted.iter().take(policy.keep_last as usize) {
        keep.insert(id);
    }
    type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
    let rules: [(u32, Bucket); 5] = [
        (policy.keep_hourly, |t| {
            (t.year(), t.month(), t.day(), t.hour())
        }),
        (policy.keep_daily, |t| (t.year(), t.month(), t.day(), 0)),
        (policy.keep_weekly, |t| {
            (t.iso_week().year(), t.iso_week().week(), 0, 0)
        }),
        (policy.keep_monthly, |t| (t.year(), t.month(), 0, 0)),
        (policy.keep_yearly, |t| (t.year(), 0, 0, 0)),
    ];
    for (count, bucket) in rules {
        let mut seen = HashSet::new();
        for (id, time) in &sorted {
            if seen.len() >= count as usize {
                break;
            }
            if seen.insert(bucket(time)) {
                keep.insert(id);
            }
        }
    }
    let (kept, forgotten): (Vec<_>, Vec<_>) =
        sorted.into_iter().partition(|(id, _)| keep.contains(id));
    (
        kept.into_iter().map(|(id, _)| id.clone()).collect(),
        forgotten.into_iter().map(|(id, _)| id.clone()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn snaps(times: &[(i32, u32, u32, u32)]) -> Vec<(SnapshotId, DateTime<Utc>)> {
        times
            .iter()
            .enumerate()
            .map(|(i, (y, m, d, h))| {
                (
                    SnapshotId(format!("{i:016x}")),
                    Utc.with_ymd_and_hms(*y, *m, *d, *h, 0, 0).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn last_daily_and_monthly_rules_combine() {
        // Two a day for ten days in January, one in each of three earlier months.
        let mut t = Vec::new();
        for d in 1..=10 {
            t.push((2026, 1, d, 6));
            t.push((2026, 1, d, 18));
        }
        t.extend([(2025, 10, 5, 1), (2025, 11, 5, 1), (2025, 12, 5, 1)]);
        let s = snaps(&t);
        let name = |y, m, d, h| {
            s.iter()
                .find(|(_, tt)| *tt == Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap())
                .unwrap()
                .0
                .clone()
        };
        let policy = RetentionPolicy {
            keep_last: 2,
            keep_daily: 3,
            keep_monthly: 3,
            ..Default::default()
        };
        let (kept, forgotten) = apply(&policy, &s);
        let want = vec![
            name(2026, 1, 10, 18),
            name(2026, 1, 10, 6),
            name(2026, 1, 9, 18),
            name(2026, 1, 8, 18),
            name(2025, 12, 5, 1),
            name(2025, 11, 5, 1),
        ];
        assert_eq!(kept, want);
        assert_eq!(kept.len() + forgotten.len(), s.len());
    }

    #[test]
    fn weekly_and_yearly_use_iso_weeks_and_years() {
        let s = snaps(&[
            (2026, 1, 4, 0),
            (2026, 1, 5, 0),
            (2025, 6, 1, 0),
            (2024, 6, 1, 0),
        ]);
        let policy = RetentionPolicy {
            keep_weekly: 1,
            keep_yearly: 2,
            ..Default::default()
        };
        let (kept, _) = apply(&policy, &s);
        // 2026-01-05 is the newest (week 2); the newest of 2026 is the
        // same; 2025's newest is 2025-06-01.
        assert_eq!(kept, vec![s[1].0.clone(), s[2].0.clone()]);
    }
}
