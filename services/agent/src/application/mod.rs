//! Built-in hook kinds: applications the agent brings into a consistent
//! state by itself (`[[system.application]]` in the systems file).
//!
//! For each job the agent keeps what it prepared ([`JobApps`]): a
//! PostgreSQL session in backup mode, stopped processes, a server stopped
//! for a restore. Preparation runs after the pre hook's command, in the
//! order configured, and stops at the first failure; release runs before
//! the post hook's command, in reverse order, for everything that was
//! prepared, whatever happened in between: at the post hook, or at the
//! agent's own deadline when the scheduler is gone. A backup transfer asks
//! the job's applications which paths to leave out and, once every file
//! was read, what to add (PostgreSQL's `backup_label` and WAL, known only
//! after `pg_backup_stop`).

pub mod postgresql;
pub mod suspend;

use std::path::PathBuf;
use std::time::Duration;

use arca_schemas::msg::HookPhase;
use arca_schemas::{Application, JobId};

/// Something a backup adds to the snapshot after reading the paths.
#[derive(Debug)]
pub enum Addition {
    /// Content made by the agent, stored as a file (mode 0600, owned like
    /// the folder it is in).
    Bytes {
        /// Where it goes.
        path: PathBuf,
        /// What it holds.
        data: Vec<u8>,
    },
    /// A file read from disk now.
    File(PathBuf),
}

enum Held {
    PgBackup(postgresql::Backup),
    PgRestore(postgresql::Restore),
    Suspended(suspend::Suspended),
}

/// The applications prepared for one job.
#[derive(Default)]
pub struct JobApps {
    held: tokio::sync::Mutex<Vec<Held>>,
    /// What happened during the transfer, told by the post hook.
    notes: std::sync::Mutex<Vec<String>>,
    /// Set by the release: a transfer still running afterwards no longer
    /// reads a consistent state.
    released: std::sync::atomic::AtomicBool,
}

/// Outcome of a preparation or release: success and what to report.
pub struct Report {
    /// Every step succeeded.
    pub success: bool,
    /// One line (or more) per step.
    pub output: String,
}

impl JobApps {
    /// Prepares `apps` for the pre hook `phase`; stops at the first failure.
    pub async fn prepare(
        &self,
        job: JobId,
        phase: HookPhase,
        apps: &[Application],
        env: &[(String, String)],
    ) -> Report {
        let target = env
            .iter()
            .find(|(k, _)| k == "ARCA_TARGET")
            .map(|(_, v)| v.as_str());
        let mut held = self.held.lock().await;
        let mut lines = Vec::new();
        let mut success = true;
        for app in apps {
            let limit = Duration::from_secs(app.timeout_secs());
            let timed_out = || {
                format!(
                    "{}: not done within its timeout of {}s",
                    app.kind(),
                    app.timeout_secs()
                )
            };
            let step: Result<String, String> = match (phase, app) {
                (HookPhase::PreBackup, Application::Postgresql(spec)) => {
                    match tokio::time::timeout(limit, postgresql::Backup::start(spec, job)).await {
                        Ok(Ok((b, note))) => {
                            held.push(Held::PgBackup(b));
                            Ok(note)
                        }
                        Ok(Err(e)) => Err(format!("postgresql: {e}")),
                        Err(_) => Err(timed_out()),
                    }
                }
                (HookPhase::PreBackup, Application::Suspend(spec)) => {
                    // Its own wait is bounded by the same timeout.
                    match suspend::Suspended::stop(spec).await {
                        Ok((s, note)) => {
                            held.push(Held::Suspended(s));
                            Ok(note)
                        }
                        Err(e) => Err(format!("suspend: {e}")),
                    }
                }
                (HookPhase::PreRestore, Application::Postgresql(spec)) => {
                    let (r, result) = postgresql::Restore::prepare(spec, job, target).await;
                    if let Some(r) = r {
                        held.push(Held::PgRestore(r));
                    }
                    result
                }
                (HookPhase::PreRestore, Application::Suspend(_)) => {
                    Ok("suspend: applies to backups only; nothing to do for a restore".to_owned())
                }
                (other, _) => Err(format!("{} is not a pre hook", other.as_str())),
            };
            match step {
                Ok(l) => lines.push(l),
                Err(e) => {
                    lines.push(e);
                    success = false;
                    break;
                }
            }
        }
        Report {
            success,
            output: lines.join("\n"),
        }
    }

    /// Data directories whose backup follows PostgreSQL's rules.
    pub async fn postgresql_dirs(&self) -> Vec<PathBuf> {
        self.held
            .lock()
            .await
            .iter()
            .filter_map(|h| match h {
                Held::PgBackup(b) => Some(b.data_dir().to_path_buf()),
                _ => None,
            })
            .collect()
    }

    /// After every path was read: ends backup modes and returns what the
    /// snapshot must add. An error fails the transfer (no snapshot).
    pub async fn finish_backup(&self) -> Result<Vec<Addition>, String> {
        let mut held = self.held.lock().await;
        if self.released.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(
                "the applications were released before the transfer ended (the \
                        agent's deadline passed); what was read is not consistent"
                    .to_owned(),
            );
        }
        let mut all = Vec::new();
        for h in held.iter_mut() {
            if let Held::PgBackup(b) = h {
                let (additions, note) = b.stop().await?;
                tracing::info!(%note, "application backup finished");
                self.notes.lock().expect("notes lock").push(note);
                all.extend(additions);
            }
        }
        Ok(all)
    }

    /// Releases everything prepared, in reverse order. `restored`: the
    /// restore transfer completed (post-restore only).
    pub async fn release(&self, restored: bool) -> Report {
        let mut held = self.held.lock().await;
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut lines: Vec<String> = std::mem::take(&mut *self.notes.lock().expect("notes lock"));
        let mut success = true;
        while let Some(h) = held.pop() {
            let r = match h {
                Held::PgBackup(b) => b.end().await,
                Held::PgRestore(r) => r.finish(restored).await,
                Held::Suspended(s) => s.resume().map_err(|e| e.to_string()),
            };
            match r {
                Ok(l) => lines.push(l),
                Err(e) => {
                    lines.push(e);
                    success = false;
                }
            }
        }
        Report {
            success,
            output: lines.join("\n"),
        }
    }
}
