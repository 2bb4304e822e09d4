//! The transfer (step `transferring`): media opens a session, the agent
//! moves the data and reports its outcome, and a backup's snapshot is
//! checked against what media holds before the catalog records it.

use std::time::Instant;

use arca_runtime::rpc::RpcError;
use arca_runtime::trust::Grant;
use arca_schemas::event::EventDetail;
use arca_schemas::job::{FILE_ERRORS_NAMED, FileError, REPORTED_MESSAGE_MAX};
use arca_schemas::msg::{
    GetChunkKey, GetSnapshot, MediaListSnapshots, OpenRestoreSession, OpenSession, SnapshotInfo,
    StartBackupTransfer, StartRestoreTransfer, TransferOutcome,
};
use arca_schemas::text::bounded;
use arca_schemas::trust::{AuditKind, AuditRecord};
use arca_schemas::{ErrorCode, JobKind, JobStep, SnapshotId, SystemConfig};

use super::Driver;
use super::step::StepError;

/// Every failure here is the transfer's.
const STEP: JobStep = JobStep::Transferring;

impl Driver {
    /// Transferred: the agent moves the data (media keeps it for a
    /// backup), and a backup's snapshot is recorded in the catalog.
    pub(super) async fn transfer(&mut self, system: &SystemConfig) -> Result<(), StepError> {
        self.enter(STEP).await?;
        let transfer_started = Instant::now();
        // A resumed backup whose snapshot media already committed takes it
        // rather than starting again: never two snapshots for one job.
        let committed = if self.rec.kind == JobKind::Backup && self.rec.resumed > 0 {
            self.committed_snapshot(system).await
        } else {
            None
        };
        let outcome = match committed {
            Some(info) => TransferOutcome {
                stats: info.stats,
                snapshot: Some(info.id),
                file_errors: info.file_errors,
                file_warnings: Vec::new(),
                error: None,
            },
            None => {
                self.start_transfer(system).await?;
                self.poll_transfer(system).await?
            }
        };
        self.rec.stats = outcome.stats.clone();
        // Named up to a bound, counted beyond it, each cut to its bounds.
        let (errors, errors_more) = FileError::capped(&outcome.file_errors);
        let (warnings, warnings_more) = FileError::capped(&outcome.file_warnings);
        self.rec.file_errors = errors;
        self.rec.file_errors_not_named = errors_more;
        self.rec.file_warnings = warnings;
        self.rec.file_warnings_not_named = warnings_more;
        for f in self.rec.file_errors.clone() {
            self.event(EventDetail::FileFailed { file: f }).await;
        }
        for f in self.rec.file_warnings.clone() {
            self.event(EventDetail::FileWarning { file: f }).await;
        }
        if errors_more + warnings_more > 0 {
            tracing::warn!(
                job = %self.rec.id,
                errors_more,
                warnings_more,
                "more file errors than are named (first {FILE_ERRORS_NAMED} of each)"
            );
        }
        if let Some(e) = outcome.error {
            return Err(StepError::new(
                STEP,
                bounded(&e.message, 4 * REPORTED_MESSAGE_MAX),
            ));
        }
        if self.rec.kind == JobKind::Backup {
            let id = outcome
                .snapshot
                .clone()
                .ok_or_else(|| StepError::new(STEP, "agent reported no snapshot"))?;
            let info = self.reported_snapshot(system, &id).await?;
            self.sched.put_catalog(&info).await.map_err(|e| {
                StepError::new(
                    STEP,
                    format!("cannot record snapshot {id} in the catalog: {e}"),
                )
            })?;
            self.rec.snapshot = Some(id);
        }
        self.save().await?;
        self.event(EventDetail::Transferred {
            stats: self.rec.stats.clone(),
            snapshot: self.rec.snapshot.clone(),
            seconds: transfer_started.elapsed().as_secs_f64(),
        })
        .await;
        Ok(())
    }

    /// The snapshot the agent reported, as media holds it, when it is one
    /// of this system made by this job. Any other (another system's or
    /// job's, one media does not hold, an id that is no id) fails the
    /// step, and the refusal is audited: the agent's word is a claim.
    async fn reported_snapshot(
        &self,
        system: &SystemConfig,
        id: &SnapshotId,
    ) -> Result<SnapshotInfo, StepError> {
        let shown = arca_schemas::text::escape(&bounded(&id.0, 64)).into_owned();
        let shown = shown.as_str();
        let refuse = |why: String| async move {
            let mut a = AuditRecord::new(AuditKind::Refused, self.sched.audit_by());
            a.system = Some(system.name.clone());
            a.job = Some(self.rec.id);
            a.snapshot = SnapshotId::parse(&id.0);
            a.reason = Some(format!("the agent reported snapshot {shown}: {why}"));
            self.sched.audit(a).await;
            StepError::new(
                STEP,
                format!(
                    "the agent of {} reported snapshot {shown}, but {why}; nothing was recorded \
                     for this job (the refusal is in the audit stream, `arca audit --system {}`)",
                    system.name, system.name
                ),
            )
        };
        if SnapshotId::parse(&id.0).is_none() {
            return Err(refuse("that is not a snapshot id (16 hex digits)".into()).await);
        }
        let get = GetSnapshot {
            snapshot: id.clone(),
            session: None,
        };
        let info = match self.media(system).snapshot(&get).await {
            Ok(r) => r.info,
            Err(RpcError::Remote(e)) if e.code == ErrorCode::NotFound => {
                return Err(refuse(format!("media {} holds no such snapshot", system.media)).await);
            }
            Err(e) => {
                return Err(StepError::new(
                    STEP,
                    format!("snapshot {id} committed but not readable from media: {e}"),
                ));
            }
        };
        if info.system != system.name || info.job != self.rec.id {
            return Err(refuse(format!(
                "media holds it for system {} and job {}, not for this job",
                info.system, info.job
            ))
            .await);
        }
        Ok(info)
    }

    /// The system's newest snapshot on its media: unchanged files are
    /// taken from it without being read.
    async fn parent_snapshot(&self, system: &SystemConfig) -> Option<arca_schemas::SnapshotId> {
        let all = self.sched.all_snapshots().await.ok()?;
        all.into_iter()
            .filter(|s| s.system == system.name && s.media == system.media)
            .max_by_key(|s| s.time)
            .map(|s| s.id)
    }

    /// The snapshot media committed for this job, if any.
    async fn committed_snapshot(&self, system: &SystemConfig) -> Option<SnapshotInfo> {
        let req = MediaListSnapshots {
            system: Some(system.name.clone()),
        };
        match self.media(system).snapshots(&req).await {
            Ok(r) => r.snapshots.into_iter().find(|s| s.job == self.rec.id),
            Err(e) => {
                tracing::warn!(job = %self.rec.id, error = %e, "cannot ask media for this job's snapshot");
                None
            }
        }
    }

    /// Asks media for a session (backup) and the agent to start moving data.
    async fn start_transfer(&self, system: &SystemConfig) -> Result<(), StepError> {
        let media = self.media(system);
        let agent = self.agent(system);
        // A restore of another system's snapshot (an operator's override)
        // is checked with the restore grant's own key, never the source's.
        let source = self
            .rec
            .source_system
            .clone()
            .unwrap_or_else(|| system.name.clone());
        let own_key = || async {
            let key_req = GetChunkKey {
                system: system.name.clone(),
            };
            let key = media.chunk_key(&key_req).await.map_err(|e| {
                StepError::new(STEP, format!("media {} did not answer: {e}", system.media))
            })?;
            Ok::<_, StepError>(key.key)
        };
        match self.rec.kind {
            JobKind::Backup => {
                let chunk_key = own_key().await?;
                let open = OpenSession {
                    job: self.rec.id,
                    system: system.name.clone(),
                    paths: system.paths.clone(),
                    quota_bytes: system.quota.map(|q| q.0),
                };
                let session = media
                    .open_session(&open, system.agent.clone())
                    .await
                    .map_err(|e| {
                        StepError::new(
                            STEP,
                            format!("media {} did not open a session: {e}", system.media),
                        )
                    })?;
                let start = StartBackupTransfer {
                    job: self.rec.id,
                    media: system.media.clone(),
                    session: session.session,
                    paths: system.paths.clone(),
                    // A full backup reads every file; an incremental one
                    // takes unchanged files from the previous snapshot.
                    parent: match self.rec.backup_type {
                        Some(arca_schemas::BackupType::Full) => None,
                        _ => self.parent_snapshot(system).await,
                    },
                    chunk_key,
                    selection: system.selection(),
                    deadline_secs: self.left_secs(),
                };
                agent
                    .start_backup(&start)
                    .await
                    .map_err(|e| StepError::new(STEP, e))?;
            }
            JobKind::Restore => {
                let snapshot = self
                    .rec
                    .snapshot
                    .clone()
                    .expect("restore jobs name a snapshot");
                let cross = self.rec.source_system.is_some();
                let grant = Grant {
                    snapshot: Some(snapshot.clone()),
                    source_system: Some(source.clone()),
                    cross_system: cross,
                    agent_key: None,
                };
                // Onto another system, media lets the target read the
                // snapshot only within a restore session the token allows.
                let (session, chunk_key) = if cross {
                    let open = OpenRestoreSession {
                        job: self.rec.id,
                        system: system.name.clone(),
                        snapshot: snapshot.clone(),
                    };
                    let opened = media
                        .open_restore_session(&open, grant.clone())
                        .await
                        .map_err(|e| {
                            StepError::new(
                                STEP,
                                format!(
                                    "media {} did not open a restore session: {e}",
                                    system.media
                                ),
                            )
                        })?;
                    let key = opened
                        .check_key
                        .as_deref()
                        .and_then(|k| <[u8; 32]>::try_from(k).ok())
                        .ok_or_else(|| {
                            StepError::new(
                                STEP,
                                format!(
                                    "media {} opened a restore session without a check key; \
                                     upgrade it",
                                    system.media
                                ),
                            )
                        })?;
                    (Some(opened.session), key)
                } else {
                    (None, own_key().await?)
                };
                let start = StartRestoreTransfer {
                    job: self.rec.id,
                    media: system.media.clone(),
                    snapshot,
                    target: self.rec.target.clone(),
                    session,
                    chunk_key,
                    filter: self.rec.filter.clone(),
                    keep_privileges: self.rec.keep_privileges,
                    deadline_secs: self.left_secs(),
                };
                agent
                    .start_restore(&start, grant)
                    .await
                    .map_err(|e| StepError::new(STEP, e))?;
            }
        }
        Ok(())
    }

    /// For a backup: the outcome of the snapshot media committed for this
    /// job, if it committed one (the agent's own report was lost).
    pub(super) async fn committed_outcome(&self, system: &SystemConfig) -> Option<TransferOutcome> {
        if self.rec.kind != JobKind::Backup {
            return None;
        }
        let info = self.committed_snapshot(system).await?;
        Some(TransferOutcome {
            stats: info.stats,
            snapshot: Some(info.id),
            file_errors: info.file_errors,
            file_warnings: Vec::new(),
            error: None,
        })
    }
}
