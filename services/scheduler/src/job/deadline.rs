//! A job's overall deadline: fixed when the job starts, from the system's
//! `job-timeout-secs` or its history, and kept in the job record.

use arca_schemas::{JobKind, JobRecord, JobStatus, SystemConfig};

use super::Driver;
use super::step::{Stage, StepError};

/// The jobs of a system's history that set its default deadline.
const HISTORY_JOBS: usize = 10;

/// Seconds a job of `system` of `kind` may run: the system's
/// `job-timeout-secs` when set, otherwise the larger of the scheduler's
/// `job-timeout-secs` and 3 times the longest of the system's last
/// [`HISTORY_JOBS`] successful (or partial) jobs of that kind, from
/// selection to end.
pub(crate) fn deadline_secs(
    system: &SystemConfig,
    kind: JobKind,
    least: u64,
    history: &[JobRecord],
) -> u64 {
    if let Some(t) = system.job_timeout_secs {
        return t;
    }
    let mut done: Vec<&JobRecord> = history
        .iter()
        .filter(|j| j.system == system.name && j.kind == kind)
        .filter(|j| matches!(j.status, JobStatus::Succeeded | JobStatus::Partial))
        .filter(|j| j.ended.is_some())
        .collect();
    done.sort_by_key(|j| std::cmp::Reverse(j.created));
    let longest = done
        .iter()
        .take(HISTORY_JOBS)
        .filter_map(|j| (j.ended? - j.created).to_std().ok())
        .max()
        .map_or(0, |d| d.as_secs());
    least.max(longest.saturating_mul(3))
}

/// `secs` for people: `4h`, `1h30m`, `45s`.
fn human(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

impl Driver {
    /// Fixes the job's overall deadline from now ([`deadline_secs`]).
    pub(super) async fn set_deadline(&mut self, system: &SystemConfig) {
        let history = match self.sched.all_jobs().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(job = %self.rec.id, error = %e.message, "no job history for the deadline");
                Vec::new()
            }
        };
        let secs = deadline_secs(
            system,
            self.rec.kind,
            self.sched.config.job_timeout_secs,
            &history,
        );
        self.rec.deadline =
            Some(chrono::Utc::now() + chrono::Duration::seconds(secs.min(i64::MAX as u64) as i64));
        self.save_or_log().await;
    }

    /// Seconds left until the job's deadline (at least one), for the agent,
    /// which retries its requests to media until then.
    pub(super) fn left_secs(&self) -> Option<u64> {
        self.rec
            .deadline
            .map(|d| (d - chrono::Utc::now()).num_seconds().max(1) as u64)
    }

    /// What a job that reached its deadline ends with.
    pub(super) fn deadline_error(&self, system: &SystemConfig) -> StepError {
        let deadline = self.rec.deadline.unwrap_or_else(chrono::Utc::now);
        let ran = (deadline - self.rec.created).num_seconds().max(0) as u64;
        StepError::at(
            Stage::Deadline,
            format!(
                "the job was still at step {} at its deadline {} ({} after it was selected), \
                 so it was stopped: the transfer cancelled, the post hook run, the window \
                 closed. If {} needs longer, set `job-timeout-secs` in its systems file \
                 (or raise the scheduler's `job-timeout-secs`, the least deadline of every job)",
                serde_json::to_value(self.rec.step)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                deadline.format("%Y-%m-%dT%H:%M:%SZ"),
                human(ran),
                system.name
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(system: &str, kind: JobKind, status: JobStatus, secs: i64) -> JobRecord {
        let created = chrono::Utc::now() - chrono::Duration::hours(1);
        serde_json::from_value(serde_json::json!({
            "id": arca_schemas::JobId::new(),
            "kind": kind,
            "system": system,
            "step": "done",
            "status": status,
            "created": created,
            "updated": created,
            "ended": created + chrono::Duration::seconds(secs),
            "snapshot": null,
            "target": null,
            "open-windows": [],
            "prepared": false,
            "finished": false,
            "stats": arca_schemas::job::TransferStats::default(),
            "file-errors": [],
            "error": null,
        }))
        .unwrap()
    }

    #[test]
    fn the_deadline_is_the_systems_or_grows_with_its_history() {
        let mut sys = crate::registry::placeholder("web01");
        let least = 4 * 3600;
        assert_eq!(deadline_secs(&sys, JobKind::Backup, least, &[]), least);
        let history = vec![
            done("web01", JobKind::Backup, JobStatus::Succeeded, 3 * 3600),
            done("web01", JobKind::Backup, JobStatus::Failed, 20 * 3600),
            done("web01", JobKind::Restore, JobStatus::Succeeded, 10 * 3600),
            done("db01", JobKind::Backup, JobStatus::Succeeded, 10 * 3600),
        ];
        assert_eq!(
            deadline_secs(&sys, JobKind::Backup, least, &history),
            9 * 3600
        );
        sys.job_timeout_secs = Some(600);
        assert_eq!(deadline_secs(&sys, JobKind::Backup, least, &history), 600);
        assert_eq!(human(5400), "1h30m");
        assert_eq!(human(10), "10s");
    }
}
