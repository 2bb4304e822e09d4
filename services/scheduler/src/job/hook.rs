//! The pre hook (step `preparing`) and the post hook (step `finishing`):
//! what the agent is asked to run on either side of the transfer.

use std::time::Duration;

use arca_runtime::rpc::RpcError;
use arca_schemas::event::EventDetail;
use arca_schemas::job::REPORTED_OUTPUT_MAX;
use arca_schemas::msg::{HookPhase, HookReply, RunHook};
use arca_schemas::text::bounded;
use arca_schemas::{ErrorCode, HookSpec, JobKind, JobStep, SystemConfig};

use super::Driver;
use super::step::StepError;

/// How long a silent agent is given to answer a ping before the clean-up.
const SILENT_PING: Duration = Duration::from_secs(2);

/// A failed hook's exit status in words (an application step, or a command
/// killed or timed out, has none).
fn exit_words(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit {c}"),
        None => "no exit status".to_owned(),
    }
}

/// How long a hook request may take: the command's timeout and each
/// application step's, plus a margin for the round trip.
fn hook_timeout(hook: Option<&HookSpec>, system: &SystemConfig) -> Duration {
    let apps: u64 = system.applications.iter().map(|a| a.timeout_secs()).sum();
    Duration::from_secs(hook.map_or(0, |h| h.timeout_secs) + apps + 30)
}

/// The hook's output cut to what the record and events hold.
fn bounded_reply(r: HookReply) -> HookReply {
    HookReply {
        output: bounded(&r.output, REPORTED_OUTPUT_MAX).into_owned(),
        ..r
    }
}

impl Driver {
    /// Prepared: persisted before the hook starts, so the post hook runs
    /// even if we die while it runs. The request is not interrupted by a
    /// cancel: the post hook must not overtake it.
    pub(super) async fn prepare(&mut self, system: &SystemConfig) -> Result<(), StepError> {
        let step = JobStep::Preparing;
        let cfg = self.sched.config.clone();
        let (pre_phase, _) = self.phases();
        let (pre, post) = self.hooks(system);
        self.rec.prepared = true;
        self.rec.prepared_at.get_or_insert_with(chrono::Utc::now);
        self.enter(step).await?;
        let req = RunHook {
            job: self.rec.id,
            phase: pre_phase,
            hook: pre.clone(),
            env: self.env(system),
            deadline_secs: Some(cfg.hook_deadline_secs),
            post_hook: post,
            applications: system.applications.clone(),
        };
        let timeout = hook_timeout(pre.as_ref(), system);
        let r = self
            .agent(system)
            .prepare(&req, timeout)
            .await
            .map_err(|e| StepError::new(step, format!("pre hook request failed: {e}")))?;
        let r = bounded_reply(r);
        self.event(EventDetail::Prepared {
            phase: pre_phase.as_str().to_owned(),
            ran: r.ran,
            success: Some(r.success),
            exit_code: r.exit_code,
            output: r.output.clone(),
        })
        .await;
        if !r.success {
            return Err(StepError::new(
                step,
                format!(
                    "{} hook failed ({}); no data was moved. Output:\n{}",
                    pre_phase.as_str(),
                    exit_words(r.exit_code),
                    r.output
                ),
            ));
        }
        self.check_cancel(step).await
    }

    /// The post hook, when the pre hook was started and the post hook not
    /// yet asked for. Returns its failure, if any.
    pub(super) async fn finish(&mut self, system: &SystemConfig) -> Option<StepError> {
        if !self.rec.prepared || self.rec.finished {
            return None;
        }
        let step = JobStep::Finishing;
        let cfg = self.sched.config.clone();
        self.enter_cleanup(step).await;
        let (_, post_phase) = self.phases();
        let (_, post) = self.hooks(system);
        let timeout = hook_timeout(post.as_ref(), system);
        let req = RunHook {
            job: self.rec.id,
            phase: post_phase,
            hook: post,
            env: self.env(system),
            deadline_secs: None,
            post_hook: None,
            applications: system.applications.clone(),
        };
        let agent = self.agent(system);
        // A silent agent is not waited for again: one short ping, and the
        // post hook is asked for only if it answers.
        let silent = self.agent_silent && agent.ping(SILENT_PING).await.is_err();
        let r: Result<HookReply, RpcError> = if silent {
            Err(RpcError::Remote(arca_schemas::error::ErrorReply::new(
                ErrorCode::Unavailable,
                "the agent is silent, so the post hook was not asked for",
            )))
        } else {
            agent.finish(&req, timeout).await
        };
        let mut failure = None;
        match r {
            Ok(r) => {
                let r = bounded_reply(r);
                if r.by_agent_deadline {
                    self.event(EventDetail::PostHookByAgent {
                        phase: post_phase.as_str().to_owned(),
                        success: Some(r.success),
                        exit_code: r.exit_code,
                        output: r.output.clone(),
                    })
                    .await;
                }
                self.event(EventDetail::Finished {
                    phase: post_phase.as_str().to_owned(),
                    ran: r.ran,
                    success: Some(r.success),
                    exit_code: r.exit_code,
                    output: r.output.clone(),
                })
                .await;
                if !r.success {
                    failure = Some(StepError::new(
                        step,
                        format!(
                            "{} hook failed ({}):\n{}",
                            post_phase.as_str(),
                            exit_words(r.exit_code),
                            r.output
                        ),
                    ));
                }
            }
            Err(e) => {
                let msg = format!(
                    "post hook request failed: {e}; the agent runs it by itself at its deadline ({}s after the pre hook)",
                    cfg.hook_deadline_secs
                );
                self.step_failed(step, &msg).await;
                failure = Some(StepError::new(step, msg));
            }
        }
        self.rec.finished = true;
        self.save_or_log().await;
        failure
    }

    /// The environment the hooks run with.
    pub(super) fn env(&self, system: &SystemConfig) -> Vec<(String, String)> {
        let mut env = vec![
            ("ARCA_JOB_ID".to_owned(), self.rec.id.to_string()),
            (
                "ARCA_JOB_KIND".to_owned(),
                match self.rec.kind {
                    JobKind::Backup => "backup",
                    JobKind::Restore => "restore",
                }
                .to_owned(),
            ),
            ("ARCA_SYSTEM".to_owned(), system.name.clone()),
            ("ARCA_PATHS".to_owned(), system.paths.join(":")),
        ];
        if let Some(t) = self.rec.backup_type {
            env.push(("ARCA_BACKUP_TYPE".to_owned(), t.as_str().to_owned()));
        }
        if let Some(s) = &self.rec.snapshot {
            env.push(("ARCA_SNAPSHOT".to_owned(), s.to_string()));
        }
        if let Some(t) = &self.rec.target {
            env.push(("ARCA_TARGET".to_owned(), t.clone()));
        }
        env
    }

    fn phases(&self) -> (HookPhase, HookPhase) {
        match self.rec.kind {
            JobKind::Backup => (HookPhase::PreBackup, HookPhase::PostBackup),
            JobKind::Restore => (HookPhase::PreRestore, HookPhase::PostRestore),
        }
    }

    fn hooks(&self, system: &SystemConfig) -> (Option<HookSpec>, Option<HookSpec>) {
        let h = &system.hooks;
        match self.rec.kind {
            JobKind::Backup => (h.pre_backup.clone(), h.post_backup.clone()),
            JobKind::Restore => (h.pre_restore.clone(), h.post_restore.clone()),
        }
    }
}
