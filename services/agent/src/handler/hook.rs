//! The hook requests: a pre hook (with the deadline that runs the post
//! hook should the scheduler vanish) and a post hook, each run once per job
//! and phase.

use std::sync::Arc;
use std::time::Duration;

use arca_runtime::rpc::decode_request;
use arca_schemas::JobId;
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::{HookPhase, HookReply, RunHook};
use tokio::sync::OnceCell;

use crate::{application, hooks};

use super::Agent;

/// Adds the applications' report to a hook's reply: before the command's
/// output for a post hook (they were released first), after it for a pre
/// hook.
fn merge(r: &mut HookReply, apps: application::Report, first: bool) {
    r.ran = true;
    r.success &= apps.success;
    r.output = match (first, r.output.is_empty()) {
        (_, true) => apps.output,
        (true, false) => format!("{}\n{}", apps.output, r.output),
        (false, false) => format!("{}\n{}", r.output, apps.output),
    };
}

impl Agent {
    fn hook_cell(&self, job: JobId, phase: HookPhase) -> Arc<OnceCell<HookReply>> {
        self.hooks
            .lock()
            .expect("hooks lock")
            .entry((job, phase))
            .or_default()
            .clone()
    }

    fn job_apps(&self, job: JobId) -> Arc<application::JobApps> {
        self.apps
            .lock()
            .expect("apps lock")
            .entry(job)
            .or_default()
            .clone()
    }

    /// result. A pre hook runs its command, then prepares the built-in
    /// applications; a post hook releases them, then runs its command.
    async fn run_hook_once(
        &self,
        job: JobId,
        phase: HookPhase,
        hook: Option<&arca_schemas::HookSpec>,
        apps: &[arca_schemas::Application],
        env: &[(String, String)],
        by_agent_deadline: bool,
    ) -> HookReply {
        let cell = self.hook_cell(job, phase);
        cell.get_or_init(|| async {
            let command = || async {
                match hook {
                    Some(h) => {
                        tracing::info!(%job, phase = phase.as_str(), command = ?h.command, "running hook");
                        let r = hooks::run(h, env).await;
                        tracing::info!(%job, phase = phase.as_str(), success = r.success, exit_code = ?r.exit_code, "hook ended");
                        r
                    }
                    None => hooks::none(),
                }
            };
            let pre = matches!(phase, HookPhase::PreBackup | HookPhase::PreRestore);
            let mut r = if pre {
                let mut r = command().await;
                if r.success && !apps.is_empty() {
                    let a = self.job_apps(job).prepare(job, phase, apps, env).await;
                    tracing::info!(%job, phase = phase.as_str(), success = a.success, output = %a.output, "applications prepared");
                    merge(&mut r, a, false);
                }
                r
            } else {
                let held = self.apps.lock().expect("apps lock").get(&job).cloned();
                let released = match held {
                    Some(ja) => Some(ja.release(self.transfer_succeeded(job)).await),
                    None => None,
                };
                let mut r = command().await;
                if let Some(a) = released {
                    tracing::info!(%job, phase = phase.as_str(), success = a.success, output = %a.output, "applications released");
                    merge(&mut r, a, true);
                }
                r
            };
            r.by_agent_deadline = by_agent_deadline;
            r
        })
        .await
        .clone()
    }

    pub(super) async fn prepare(self: Arc<Self>, payload: &[u8]) -> Result<HookReply, ErrorReply> {
        let req: RunHook = decode_request(payload)?;
        let post_phase = match req.phase {
            HookPhase::PreBackup => HookPhase::PostBackup,
            HookPhase::PreRestore => HookPhase::PostRestore,
            other => {
                return Err(ErrorReply::bad_request(format!(
                    "{} is not a pre hook",
                    other.as_str()
                )));
            }
        };
        // The deadline is armed before the pre hook runs: if the scheduler
        // vanishes while the hook runs, the post hook still follows.
        if let Some(secs) = req.deadline_secs {
            let first = self.hook_cell(req.job, req.phase).get().is_none();
            if first {
                let me = self.clone();
                let (job, post, env) = (req.job, req.post_hook.clone(), req.env.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    if me.hook_cell(job, post_phase).get().is_none() {
                        tracing::warn!(%job, "no finish request before the deadline; running the post hook now");
                        me.run_hook_once(job, post_phase, post.as_ref(), &[], &env, true)
                            .await;
                    }
                });
            }
        }
        Ok(self
            .run_hook_once(
                req.job,
                req.phase,
                req.hook.as_ref(),
                &req.applications,
                &req.env,
                false,
            )
            .await)
    }

    pub(super) async fn finish(&self, payload: &[u8]) -> Result<HookReply, ErrorReply> {
        let req: RunHook = decode_request(payload)?;
        if !matches!(req.phase, HookPhase::PostBackup | HookPhase::PostRestore) {
            return Err(ErrorReply::bad_request(format!(
                "{} is not a post hook",
                req.phase.as_str()
            )));
        }
        Ok(self
            .run_hook_once(req.job, req.phase, req.hook.as_ref(), &[], &req.env, false)
            .await)
    }
}
