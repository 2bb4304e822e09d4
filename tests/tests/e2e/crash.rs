//! The scheduler killed with SIGKILL at every step of a backup and of a
//! restore. The test binary `arca-scheduler-halting` (the scheduler with
//! its crash hook, `tests/src/bin/`) stops acting right after persisting
//! the chosen step; the test then kills it, starts the release
//! `arca-scheduler` again and checks what an operator would: the job
//! is final with a reason, the post hook ran exactly once because the pre
//! hook did, the firewall has no window open, and there is at most one
//! snapshot for the job (here exactly one: every step resumes). One more
//! test kills it in the middle of a transfer, with no test hook at all.

use std::path::Path;
use std::time::Duration;

use arca_e2e::{AgentUser, Stack, kinds, sh_hook, system};
use arca_schemas::{JobId, JobStatus, JobStep};

const STEPS: &[JobStep] = &[
    JobStep::Selected,
    JobStep::OpeningWindow,
    JobStep::WaitingForAgent,
    JobStep::Preparing,
    JobStep::Transferring,
    JobStep::Finishing,
    JobStep::ClosingWindow,
];

fn step_name(step: JobStep) -> String {
    serde_json::to_value(step)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Waits until the job's record shows `step` while it runs.
async fn wait_step(stack: &Stack, job: JobId, step: JobStep) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(rec) = stack.job(job).await
            && rec.step == step
            && rec.status == JobStatus::Running
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} never reached {step:?}: {:#?}\n{}",
            stack.job(job).await,
            stack.log("scheduler")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A system whose hooks append a line per run to `<marks>/<job>.<phase>`.
fn hooked_system(name: &str, data: &Path, marks: &Path) -> arca_schemas::SystemConfig {
    let m = marks.display();
    let mut sys = system(name, &[data]);
    sys.hooks.pre_backup = Some(sh_hook(&format!("echo run >> {m}/$ARCA_JOB_ID.pre")));
    sys.hooks.post_backup = Some(sh_hook(&format!("echo run >> {m}/$ARCA_JOB_ID.post")));
    sys.hooks.pre_restore = Some(sh_hook(&format!("echo run >> {m}/$ARCA_JOB_ID.pre")));
    sys.hooks.post_restore = Some(sh_hook(&format!("echo run >> {m}/$ARCA_JOB_ID.post")));
    sys
}

/// Kills the scheduler after `step` of the job `start` creates, restarts
/// it, and checks the invariants. Returns the final record.
async fn kill_at(
    stack: &mut Stack,
    marks: &Path,
    step: JobStep,
    start: impl AsyncFnOnce(&Stack) -> JobId,
) -> arca_schemas::JobRecord {
    stack
        .restart_scheduler_halting("", &step_name(step))
        .await
        .unwrap();
    let job = start(stack).await;
    wait_step(stack, job, step).await;
    stack.kill("scheduler");
    stack.restart_scheduler("", &[]).await.unwrap();
    let rec = stack
        .wait_final(job, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.log("scheduler")));
    let pre = lines(&marks.join(format!("{job}.pre")));
    let post = lines(&marks.join(format!("{job}.post")));
    assert_eq!(
        rec.status,
        JobStatus::Succeeded,
        "killed after {step:?}: {rec:#?}\n{}",
        stack.log("scheduler")
    );
    assert_eq!(pre, 1, "killed after {step:?}: pre hook ran {pre} times");
    assert_eq!(post, 1, "killed after {step:?}: post hook ran {post} times");
    assert!(
        stack.open_windows().await.unwrap().is_empty(),
        "killed after {step:?}: a window stayed open"
    );
    // The pre hook ran and the post hook was asked for, as the events say.
    assert!(rec.open_windows.is_empty() && rec.prepared && rec.finished);
    let (events, _) = stack.wait_job(job).await.unwrap();
    let k = kinds(&events);
    assert!(k.contains(&"resumed"), "killed after {step:?}: {k:?}");
    assert_eq!(*k.last().unwrap(), "ended");
    rec
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_every_step_of_a_backup() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    arca_testkit::tree::write_pseudo_random(&data.path().join("f"), 3_000_000, 5).unwrap();
    std::fs::write(data.path().join("small"), b"small").unwrap();
    stack
        .load_systems(vec![hooked_system("kb", data.path(), marks.path())])
        .await
        .unwrap();
    stack.start_agent("kb", AgentUser::Same).await.unwrap();
    for &step in STEPS {
        let rec = kill_at(&mut stack, marks.path(), step, async |s: &Stack| {
            s.backup(&["kb"]).await.unwrap()[0]
        })
        .await;
        let catalog: Vec<_> = stack
            .snapshots("kb")
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.job == rec.id)
            .collect();
        let stored: Vec<_> = stack
            .media_snapshots("kb")
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.job == rec.id)
            .collect();
        assert_eq!(catalog.len(), 1, "killed after {step:?}: {catalog:#?}");
        assert_eq!(stored.len(), 1, "killed after {step:?}: {stored:#?}");
        assert_eq!(rec.snapshot.as_ref(), Some(&stored[0].id));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_the_middle_of_a_transfer_resumes_it_without_a_second_snapshot() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    arca_testkit::tree::write_pseudo_random(&data.path().join("big"), 300_000_000, 7).unwrap();
    stack
        .load_systems(vec![hooked_system("mt", data.path(), marks.path())])
        .await
        .unwrap();
    stack.start_agent("mt", AgentUser::Same).await.unwrap();
    let job = stack.backup(&["mt"]).await.unwrap()[0];
    // Kill as soon as the first chunk is stored: the agent goes on sending.
    stack.wait_first_chunk().await;
    stack.kill("scheduler");
    stack.restart_scheduler("", &[]).await.unwrap();
    let rec = stack
        .wait_final(job, Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert_eq!(lines(&marks.path().join(format!("{job}.pre"))), 1);
    assert_eq!(lines(&marks.path().join(format!("{job}.post"))), 1);
    assert!(stack.open_windows().await.unwrap().is_empty());
    let stored: Vec<_> = stack.media_snapshots("mt").await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(rec.snapshot.as_ref(), Some(&stored[0].id));
    assert_eq!(stack.snapshots("mt").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_every_step_of_a_restore() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    let targets = tempfile::tempdir().unwrap();
    arca_testkit::tree::write_pseudo_random(&data.path().join("f"), 3_000_000, 6).unwrap();
    stack
        .load_systems(vec![hooked_system("kr", data.path(), marks.path())])
        .await
        .unwrap();
    stack.start_agent("kr", AgentUser::Same).await.unwrap();
    let backup = stack.backup(&["kr"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(backup).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let snapshot = rec.snapshot.unwrap();
    let original = std::fs::read(data.path().join("f")).unwrap();
    for &step in STEPS {
        let target = targets.path().join(step_name(step));
        let rec = kill_at(&mut stack, marks.path(), step, async |s: &Stack| {
            s.restore(&snapshot, Some(&target)).await.unwrap()
        })
        .await;
        assert_eq!(rec.snapshot.as_ref(), Some(&snapshot));
        let back = target
            .join(data.path().strip_prefix("/").unwrap())
            .join("f");
        assert_eq!(
            std::fs::read(&back).unwrap(),
            original,
            "killed after {step:?}: restored bytes differ"
        );
    }
    // Restores make no snapshot.
    assert_eq!(stack.media_snapshots("kr").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_the_post_hook_at_its_deadline_and_the_scheduler_reports_it() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"data").unwrap();
    stack
        .load_systems(vec![hooked_system("dl", data.path(), marks.path())])
        .await
        .unwrap();
    stack.start_agent("dl", AgentUser::Same).await.unwrap();
    let deadline = "hook-deadline-secs = 4";
    stack
        .restart_scheduler_halting(deadline, &step_name(JobStep::Transferring))
        .await
        .unwrap();
    let job = stack.backup(&["dl"]).await.unwrap()[0];
    wait_step(&stack, job, JobStep::Transferring).await;
    stack.kill("scheduler");
    // The scheduler is away: the agent releases the system by itself.
    let post = marks.path().join(format!("{job}.post"));
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while lines(&post) == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "the agent never ran the post hook\n{}",
            stack.log("agent-dl")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.restart_scheduler(deadline, &[]).await.unwrap();
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    assert!(
        rec.error.as_deref().unwrap_or("").contains("deadline"),
        "{rec:#?}"
    );
    assert_eq!(lines(&post), 1, "post hook ran twice");
    let k = kinds(&events);
    assert!(k.contains(&"post-hook-by-agent"), "{k:?}");
    assert!(stack.open_windows().await.unwrap().is_empty());
    assert!(
        stack
            .media_snapshots("dl")
            .await
            .unwrap()
            .iter()
            .all(|s| s.job != job)
    );
}
