//! The end of a job: the clean-up that always runs (post hook, restore
//! grant, windows, media session) and the job's final status.

use arca_runtime::trust::Grant;
use arca_schemas::event::EventDetail;
use arca_schemas::msg::{CloseRestoreSession, CloseSession};
use arca_schemas::{JobKind, JobStatus, JobStep, SystemConfig};

use super::Driver;
use super::step::StepError;

impl Driver {
    /// Post hook (when the pre hook was started) and window closing.
    /// Returns the first failure, if any; every part is attempted.
    pub(super) async fn cleanup(&mut self, system: &SystemConfig) -> Option<StepError> {
        let failure = self.finish(system).await;
        self.close_restore_grant(system).await;
        let closing = self.close_windows().await;
        failure.or(closing)
    }

    /// Ends a cross-system restore's grant on media, so that the target
    /// reads nothing more of the source once its job ends (media also lets
    /// a grant expire, should this request be lost).
    async fn close_restore_grant(&self, system: &SystemConfig) {
        if self.rec.kind != JobKind::Restore || self.rec.source_system.is_none() {
            return;
        }
        let grant = Grant {
            snapshot: self.rec.snapshot.clone(),
            source_system: self.rec.source_system.clone(),
            cross_system: true,
            agent_key: None,
        };
        let close = CloseRestoreSession { job: self.rec.id };
        let r = self
            .media(system)
            .close_restore_session(&close, grant)
            .await;
        if let Err(e) = r {
            tracing::warn!(job = %self.rec.id, error = %e, "media did not close the restore session; it expires by itself");
        }
    }

    /// Tells media that a job ended: its backup session accepts nothing
    /// more and its restore grant ends.
    /// Media also closes a session nothing uses after its
    /// `session-idle-secs`, so a failure here is only logged.
    pub(super) async fn close_media_session(&self, system: &SystemConfig) {
        let job = self.rec.id;
        let media = self.media(system);
        if let Err(e) = media.close_session(&CloseSession { job }).await {
            tracing::warn!(%job, media = %media.id(), error = %e, "media did not confirm closing the job's session; it expires when idle");
        }
    }

    /// Marks the job final. The error recorded before the clean-up (a
    /// failed step or a cancel) wins over one of the clean-up.
    pub(super) async fn end(&mut self, cleanup: Option<StepError>) {
        if self.rec.error.is_none() {
            self.rec.error = cleanup.map(|e| e.to_string());
        }
        let no_file_errors = self.rec.file_errors.is_empty() && self.rec.file_errors_not_named == 0;
        self.rec.status = match (&self.rec.error, no_file_errors) {
            (Some(_), _) if self.rec.cancel_requested => JobStatus::Cancelled,
            (Some(_), _) => JobStatus::Failed,
            (None, false) => JobStatus::Partial,
            (None, true) => JobStatus::Succeeded,
        };
        // A backup that failed after its snapshot was committed and
        // recorded in the catalog (its post hook failed, say) still names
        // it: the snapshot is whole, and the record and the catalog agree.
        if let Some(id) = &self.rec.snapshot
            && self.rec.kind == JobKind::Backup
            && self.rec.status != JobStatus::Succeeded
            && self.rec.status != JobStatus::Partial
            && let Some(e) = &mut self.rec.error
        {
            e.push_str(&format!(
                " (snapshot {id} was committed before this and is whole; it is kept)"
            ));
        }
        self.rec.step = JobStep::Done;
        let now = chrono::Utc::now();
        self.rec.ended = Some(now);
        self.save_or_log().await;
        tracing::info!(job = %self.rec.id, system = %self.rec.system, status = ?self.rec.status, error = ?self.rec.error, "job ended");
        self.event(EventDetail::Ended {
            status: self.rec.status,
            snapshot: self.rec.snapshot.clone(),
            stats: self.rec.stats.clone(),
            file_errors: self.rec.file_errors.clone(),
            file_errors_not_named: self.rec.file_errors_not_named,
            error: self.rec.error.clone(),
            seconds: (now - self.rec.created).num_milliseconds() as f64 / 1000.0,
        })
        .await;
    }
}
