//! What fires when: a pure function of (schedules, last instant handled,
//! now), so that a test can drive it with any clock, across daylight-saving
//! changes, without sleeping.
//!
//! Each backup type has a cron expression read in its own time zone
//! (croner does the calendar arithmetic, including the gap and the overlap
//! of a daylight-saving change: a fixed-time job in the gap runs at the
//! first minute after it, one in the overlap runs once). The scheduler
//! remembers, per system, the last schedule instant it handled. At each
//! tick it looks for instants in (last, now]:
//!
//! - none: nothing to do;
//! - some: only the latest matters (a scheduler that was down for three
//!   days runs one backup, never a burst); it fires when it is no older
//!   than the grace period, and is skipped otherwise; either way it becomes
//!   the new "last".
//!
//! When a full and an incremental instant are both due, the full one runs:
//! it covers the incremental. A system seen for the first time starts
//! counting from now, so registering a system does not fire old instants.

use std::str::FromStr;
use std::time::Duration;

use arca_schemas::BackupType;
use arca_schemas::system::{ScheduleSpec, Schedules};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// A schedule that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("schedules.{field}.cron {cron:?} is not a valid cron expression: {reason}")]
    Cron {
        /// `full` or `incremental`.
        field: &'static str,
        /// The expression.
        cron: String,
        /// What the parser said.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error(
        "schedules.{field}.time-zone {zone:?} is not a known time zone (use an IANA name such as \"Europe/Berlin\" or \"UTC\")"
    )]
    TimeZone {
        /// `full` or `incremental`.
        field: &'static str,
        /// The name given.
        zone: String,
    },
}

/// A schedule ready to be evaluated.
#[derive(Debug, Clone)]
pub struct Compiled {
    kind: BackupType,
    cron: Cron,
    tz: Tz,
}

/// Parses every schedule of a system, naming the first bad field.
pub fn compile(schedules: &Schedules) -> Result<Vec<Compiled>, ScheduleError> {
    schedules
        .each()
        .map(|(kind, spec)| compile_one(kind, spec))
        .collect()
}

fn compile_one(kind: BackupType, spec: &ScheduleSpec) -> Result<Compiled, ScheduleError> {
    let field = kind.as_str();
    let cron = Cron::from_str(spec.cron.trim()).map_err(|e| ScheduleError::Cron {
        field,
        cron: spec.cron.clone(),
        reason: e.to_string(),
    })?;
    let tz = Tz::from_str(spec.time_zone.trim()).map_err(|_| ScheduleError::TimeZone {
        field,
        zone: spec.time_zone.clone(),
    })?;
    // An expression that never matches (e.g. 30 February) is refused too.
    cron.find_next_occurrence(&Utc::now().with_timezone(&tz), false)
        .map_err(|e| ScheduleError::Cron {
            field,
            cron: spec.cron.clone(),
            reason: e.to_string(),
        })?;
    Ok(Compiled { kind, cron, tz })
}

/// What a tick decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// A backup to start now: its type and the schedule instant it is for.
    pub fire: Option<(BackupType, DateTime<Utc>)>,
    /// Instants that passed beyond the grace period, skipped (the latest).
    pub skipped: Option<(BackupType, DateTime<Utc>)>,
    /// The last instant handled, to remember for the next tick.
    pub last: DateTime<Utc>,
}

/// The latest instant of `c` in `(after, now]`, if any.
fn latest_between(c: &Compiled, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let next = c
        .cron
        .find_next_occurrence(&after.with_timezone(&c.tz), false)
        .ok()?
        .with_timezone(&Utc);
    if next > now {
        return None;
    }
    let latest = c
        .cron
        .find_previous_occurrence(&now.with_timezone(&c.tz), true)
        .ok()?
        .with_timezone(&Utc);
    Some(latest.max(next))
}

/// Decides what fires at `now`, given the last instant handled (`None`:
/// the system was never seen) and the grace period for missed instants.
pub fn tick(
    schedules: &[Compiled],
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Tick {
    let Some(last) = last else {
        return Tick {
            fire: None,
            skipped: None,
            last: now,
        };
    };
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut due: Vec<(BackupType, DateTime<Utc>)> = schedules
        .iter()
        .filter_map(|c| latest_between(c, last, now).map(|t| (c.kind, t)))
        .collect();
    if due.is_empty() {
        return Tick {
            fire: None,
            skipped: None,
            last,
        };
    }
    let newest = due.iter().map(|(_, t)| *t).max().expect("not empty");
    // Only instants within the grace period may fire; among those, the
    // latest wins, and a full backup beats an incremental one at the same
    // instant.
    due.sort_by_key(|(k, t)| (*t, *k == BackupType::Full));
    let fire = due.iter().rev().find(|(_, t)| now - *t <= grace).copied();
    let skipped = if fire.is_none() {
        due.last().copied()
    } else {
        None
    };
    Tick {
        fire,
        skipped,
        last: newest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn spec(cron: &str, tz: &str) -> ScheduleSpec {
        ScheduleSpec {
            cron: cron.into(),
            time_zone: tz.into(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Ticks every minute from `from` to `to` as a running scheduler would,
    /// collecting what fires.
    fn run(
        schedules: &Schedules,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(BackupType, DateTime<Utc>, DateTime<Utc>)> {
        let compiled = compile(schedules).unwrap();
        let mut last = tick(&compiled, None, from, Duration::from_secs(3600)).last;
        let mut now = from;
        let mut fired = Vec::new();
        while now <= to {
            now += chrono::Duration::minutes(1);
            let t = tick(&compiled, Some(last), now, Duration::from_secs(3600));
            if let Some((kind, at)) = t.fire {
                fired.push((kind, at, now));
            }
            assert!(t.last >= last, "last went back");
            last = t.last;
        }
        fired
    }

    #[test]
    fn full_on_sundays_incremental_on_other_days_in_berlin_across_spring_dst() {
        let s = Schedules {
            full: Some(spec("0 1 * * SUN", "Europe/Berlin")),
            incremental: Some(spec("0 1 * * *", "Europe/Berlin")),
        };
        // 2026-03-29 is the last Sunday of March: 02:00 CET becomes 03:00 CEST.
        let fired = run(&s, utc("2026-03-26T12:00:00Z"), utc("2026-03-31T12:00:00Z"));
        let got: Vec<_> = fired.iter().map(|(k, at, _)| (*k, *at)).collect();
        assert_eq!(
            got,
            [
                (BackupType::Incremental, utc("2026-03-27T00:00:00Z")), // Fri 01:00 CET
                (BackupType::Incremental, utc("2026-03-28T00:00:00Z")), // Sat 01:00 CET
                (BackupType::Full, utc("2026-03-29T00:00:00Z")), // Sun 01:00 CET, before the change
                (BackupType::Incremental, utc("2026-03-29T23:00:00Z")), // Mon 01:00 CEST
                (BackupType::Incremental, utc("2026-03-30T23:00:00Z")), // Tue 01:00 CEST
            ]
        );
        // Each fired within the minute of its instant.
        for (_, at, seen) in &fired {
            assert!(
                *seen - *at < chrono::Duration::minutes(1),
                "{at} seen {seen}"
            );
        }
    }

    #[test]
    fn a_time_in_the_spring_gap_runs_once_right_after_it() {
        let s = Schedules {
            full: None,
            incremental: Some(spec("30 2 * * *", "Europe/Berlin")),
        };
        let fired = run(&s, utc("2026-03-28T00:00:00Z"), utc("2026-03-30T12:00:00Z"));
        let got: Vec<_> = fired.iter().map(|(_, at, _)| *at).collect();
        // 02:30 does not exist on 29 March: it runs once, at 03:00 CEST.
        assert_eq!(
            got,
            [
                utc("2026-03-28T01:30:00Z"), // Sat 02:30 CET
                utc("2026-03-29T01:00:00Z"), // Sun 03:00 CEST, first minute after the gap
                utc("2026-03-30T00:30:00Z"), // Mon 02:30 CEST
            ]
        );
    }

    #[test]
    fn a_time_in_the_autumn_overlap_runs_once() {
        // 2026-10-25 is the last Sunday of October: 03:00 CEST becomes 02:00 CET,
        // so 02:30 happens twice in wall-clock time.
        let s = Schedules {
            full: Some(spec("30 2 * * SUN", "Europe/Berlin")),
            incremental: None,
        };
        let fired = run(&s, utc("2026-10-24T00:00:00Z"), utc("2026-10-26T00:00:00Z"));
        let got: Vec<_> = fired.iter().map(|(k, at, _)| (*k, *at)).collect();
        assert_eq!(got, [(BackupType::Full, utc("2026-10-25T00:30:00Z"))]);
    }

    #[test]
    fn daily_one_o_clock_moves_in_utc_across_autumn_dst() {
        let s = Schedules {
            full: None,
            incremental: Some(spec("0 1 * * *", "Europe/Berlin")),
        };
        let fired = run(&s, utc("2026-10-23T12:00:00Z"), utc("2026-10-27T12:00:00Z"));
        let got: Vec<_> = fired.iter().map(|(_, at, _)| *at).collect();
        assert_eq!(
            got,
            [
                utc("2026-10-23T23:00:00Z"), // Sat 01:00 CEST
                utc("2026-10-24T23:00:00Z"), // Sun 01:00 CEST, an hour before the change
                utc("2026-10-26T00:00:00Z"), // Mon 01:00 CET
                utc("2026-10-27T00:00:00Z"), // Tue 01:00 CET
            ]
        );
    }

    #[test]
    fn a_missed_instant_runs_once_within_grace_never_as_a_burst() {
        let s = Schedules {
            full: None,
            incremental: Some(spec("0 * * * *", "UTC")),
        };
        let c = compile(&s).unwrap();
        let grace = Duration::from_secs(2 * 3600);
        // Down from 10:30 to 15:20: five hourly instants passed; one runs.
        let t = tick(
            &c,
            Some(utc("2026-05-01T10:30:00Z")),
            utc("2026-05-01T15:20:00Z"),
            grace,
        );
        assert_eq!(
            t.fire,
            Some((BackupType::Incremental, utc("2026-05-01T15:00:00Z")))
        );
        assert_eq!(t.last, utc("2026-05-01T15:00:00Z"));
        // The next tick fires nothing more.
        let t2 = tick(&c, Some(t.last), utc("2026-05-01T15:21:00Z"), grace);
        assert_eq!(t2.fire, None);
    }

    #[test]
    fn a_missed_instant_beyond_grace_is_skipped() {
        let s = Schedules {
            full: Some(spec("0 1 * * SUN", "Europe/Berlin")),
            incremental: None,
        };
        let c = compile(&s).unwrap();
        let grace = Duration::from_secs(3600);
        // Sunday 01:00 CEST = 23:00 UTC Saturday; back at 03:00 UTC.
        let t = tick(
            &c,
            Some(utc("2026-06-06T12:00:00Z")),
            utc("2026-06-07T03:00:00Z"),
            grace,
        );
        assert_eq!(t.fire, None);
        assert_eq!(
            t.skipped,
            Some((BackupType::Full, utc("2026-06-06T23:00:00Z")))
        );
        assert_eq!(t.last, utc("2026-06-06T23:00:00Z"));
        // Within grace it would have run.
        let t = tick(
            &c,
            Some(utc("2026-06-06T12:00:00Z")),
            utc("2026-06-06T23:45:00Z"),
            grace,
        );
        assert_eq!(
            t.fire,
            Some((BackupType::Full, utc("2026-06-06T23:00:00Z")))
        );
    }

    #[test]
    fn full_wins_over_incremental_at_the_same_instant() {
        let s = Schedules {
            full: Some(spec("0 1 * * SUN", "UTC")),
            incremental: Some(spec("0 1 * * *", "UTC")),
        };
        let c = compile(&s).unwrap();
        let sunday = Utc.with_ymd_and_hms(2026, 6, 7, 1, 0, 30).unwrap();
        let t = tick(
            &c,
            Some(sunday - chrono::Duration::hours(1)),
            sunday,
            Duration::from_secs(60),
        );
        assert_eq!(
            t.fire,
            Some((
                BackupType::Full,
                Utc.with_ymd_and_hms(2026, 6, 7, 1, 0, 0).unwrap()
            ))
        );
    }

    #[test]
    fn a_new_system_starts_counting_from_now() {
        let s = Schedules {
            full: None,
            incremental: Some(spec("* * * * *", "UTC")),
        };
        let c = compile(&s).unwrap();
        let now = utc("2026-05-01T10:30:30Z");
        let t = tick(&c, None, now, Duration::from_secs(3600));
        assert_eq!((t.fire, t.last), (None, now));
    }

    #[test]
    fn bad_expressions_and_zones_name_the_field() {
        let bad = Schedules {
            full: Some(spec("0 25 * * *", "UTC")),
            incremental: None,
        };
        let e = compile(&bad).unwrap_err().to_string();
        assert!(
            e.contains("schedules.full.cron") && e.contains("0 25 * * *"),
            "{e}"
        );
        let bad = Schedules {
            full: None,
            incremental: Some(spec("0 1 * * *", "Mars/Olympus")),
        };
        let e = compile(&bad).unwrap_err().to_string();
        assert!(e.contains("schedules.incremental.time-zone"), "{e}");
    }
}
