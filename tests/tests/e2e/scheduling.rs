//! The queue and the clock: systems selected together run one after the
//! other in priority order, or overlap under `max-parallel 2`; a cancel
//! during the transfer still runs the post hook, closes the window and
//! leaves no snapshot; a schedule fires by itself, and instants missed while
//! the scheduler was down do not run as a burst when it is back. The agent
//! holds a status question until the transfer ends (or the asked wait
//! passes), so that a job's end is noticed at once.

use std::time::Duration;

use arca_e2e::{AgentUser, Stack, kinds, sh_hook, system};
use arca_runtime::rpc;
use arca_schemas::event::{EventDetail, JobEvent};
use arca_schemas::job::Trigger;
use arca_schemas::msg::{GetTransferStatus, TransferState};
use arca_schemas::subject::{self, AgentVerb};
use arca_schemas::system::ScheduleSpec;
use arca_schemas::{BackupType, JobStatus};

fn time_of(events: &[JobEvent], kind: &str) -> chrono::DateTime<chrono::Utc> {
    events
        .iter()
        .find(|e| e.detail.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {:?}", kinds(events)))
        .time
}

/// Two systems whose pre hook takes a second, so that overlapping jobs
/// cannot be mistaken for sequential ones.
async fn two_systems(stack: &mut Stack, data: &std::path::Path) {
    let mut lo = system("lo", &[data]);
    lo.priority = 1;
    lo.hooks.pre_backup = Some(sh_hook("sleep 1"));
    let mut hi = system("hi", &[data]);
    hi.priority = 9;
    hi.hooks.pre_backup = Some(sh_hook("sleep 1"));
    stack.load_systems(vec![lo, hi]).await.unwrap();
    stack.start_agent("lo", AgentUser::Same).await.unwrap();
    stack.start_agent("hi", AgentUser::Same).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn systems_selected_together_run_in_priority_order_one_at_a_time() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"data").unwrap();
    two_systems(&mut stack, data.path()).await;
    // Named low first: priority, not the order of the names, decides.
    let jobs = stack.backup(&["lo", "hi"]).await.unwrap();
    let (lo_events, lo) = stack.wait_job(jobs[0]).await.unwrap();
    let (hi_events, hi) = stack.wait_job(jobs[1]).await.unwrap();
    assert_eq!(
        (lo.status, hi.status),
        (JobStatus::Succeeded, JobStatus::Succeeded)
    );
    assert_eq!((lo.priority, hi.priority), (1, 9));
    assert!(
        time_of(&hi_events, "ended") <= time_of(&lo_events, "window-opened"),
        "the lower priority system started before the higher one ended"
    );
    assert_eq!(lo.backup_type, Some(BackupType::Incremental));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_max_parallel_two_they_overlap() {
    let mut stack = Stack::start().await.unwrap();
    stack
        .restart_scheduler("max-parallel = 2", &[])
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"data").unwrap();
    two_systems(&mut stack, data.path()).await;
    let jobs = stack.backup(&["lo", "hi"]).await.unwrap();
    let (a, ra) = stack.wait_job(jobs[0]).await.unwrap();
    let (b, rb) = stack.wait_job(jobs[1]).await.unwrap();
    assert_eq!(
        (ra.status, rb.status),
        (JobStatus::Succeeded, JobStatus::Succeeded)
    );
    let started = time_of(&a, "window-opened").max(time_of(&b, "window-opened"));
    let ended = time_of(&a, "ended").min(time_of(&b, "ended"));
    assert!(started < ended, "the two jobs did not overlap");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_transfer_runs_the_post_hook_closes_the_window_and_keeps_no_snapshot() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    arca_testkit::tree::write_pseudo_random(&data.path().join("big"), 400_000_000, 11).unwrap();
    let m = marks.path().display();
    let mut sys = system("cx", &[data.path()]);
    sys.hooks.pre_backup = Some(sh_hook(&format!("echo run >> {m}/pre")));
    sys.hooks.post_backup = Some(sh_hook(&format!("echo run >> {m}/post")));
    let mut other = system("queued", &[data.path()]);
    other.priority = -1;
    stack.load_systems(vec![sys, other]).await.unwrap();
    stack.start_agent("cx", AgentUser::Same).await.unwrap();
    let jobs = stack.backup(&["cx", "queued"]).await.unwrap();
    let (job, waiting) = (jobs[0], jobs[1]);

    // A queued job ends at once.
    let rec = stack.cancel(waiting).await.unwrap();
    assert_eq!(rec.status, JobStatus::Cancelled);

    // Cancel once chunks reach the repository.
    stack.wait_first_chunk().await;
    let out = stack.arca(&["cancel", &job.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Cancelled, "{rec:#?}");
    assert!(rec.snapshot.is_none());
    let post = std::fs::read_to_string(marks.path().join("post")).unwrap_or_default();
    assert_eq!(
        post.lines().count(),
        1,
        "post hook did not run exactly once"
    );
    let k = kinds(&events);
    for kind in ["cancel-requested", "finished", "window-closed"] {
        assert!(k.contains(&kind), "{kind} missing from {k:?}");
    }
    match &events.last().unwrap().detail {
        EventDetail::Ended { status, .. } => assert_eq!(*status, JobStatus::Cancelled),
        other => panic!("last event is {other:?}"),
    }
    assert!(stack.open_windows().await.unwrap().is_empty());
    assert!(stack.snapshots("cx").await.unwrap().is_empty());
    // The transfer really stopped: media never commits a snapshot for it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(stack.media_snapshots("cx").await.unwrap().is_empty());
    let (_, queued) = stack.wait_job(waiting).await.unwrap();
    assert_eq!(queued.status, JobStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_question_is_held_while_the_transfer_runs_and_answered_at_its_end() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    arca_testkit::tree::write_pseudo_random(&data.path().join("big"), 400_000_000, 12).unwrap();
    stack
        .load_systems(vec![system("sw", &[data.path()])])
        .await
        .unwrap();
    stack.start_agent("sw", AgentUser::Same).await.unwrap();
    let job = stack.backup(&["sw"]).await.unwrap()[0];
    stack.wait_first_chunk().await;

    let wait = Duration::from_millis(400);
    let ask = |wait: Duration| {
        let client = stack.client.clone();
        async move {
            let asked = tokio::time::Instant::now();
            let s: TransferState = rpc::request_with_timeout(
                &client,
                subject::agent("sw", AgentVerb::Status),
                &GetTransferStatus {
                    job,
                    wait_ms: wait.as_millis() as u32,
                },
                Duration::from_secs(30),
            )
            .await
            .unwrap();
            (s, asked.elapsed())
        }
    };
    // A job the agent does not know is not waited for.
    let unknown: TransferState = rpc::request(
        &stack.client,
        subject::agent("sw", AgentVerb::Status),
        &GetTransferStatus {
            job: arca_schemas::JobId::new(),
            wait_ms: 60_000,
        },
    )
    .await
    .unwrap();
    assert_eq!(unknown, TransferState::Unknown);
    let mut held = 0;
    let outcome = loop {
        match ask(wait).await {
            (TransferState::Running { .. }, took) => {
                assert!(
                    took >= wait,
                    "a running transfer's status was answered after {took:?}, before the {wait:?} asked for"
                );
                held += 1;
            }
            (TransferState::Done(o), _) => break o,
            (TransferState::Unknown, _) => panic!("the agent forgot the transfer"),
        }
    };
    assert!(
        held > 0,
        "400 MB were transferred before one status question"
    );
    assert!(outcome.error.is_none(), "{outcome:?}");
    assert!(outcome.snapshot.is_some());
    // An ended transfer is answered with its outcome, whatever the wait.
    let (again, _) = ask(Duration::from_secs(60)).await;
    assert_eq!(again, TransferState::Done(outcome));
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_by_itself_and_records_its_type() {
    let mut stack = Stack::start().await.unwrap();
    stack
        .restart_scheduler("schedule-tick-secs = 1", &[])
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"data").unwrap();
    let mut sys = system("sc", &[data.path()]);
    // Every three seconds (six fields: seconds first), read in Berlin time.
    sys.schedules.full = Some(ScheduleSpec {
        cron: "*/3 * * * * *".into(),
        time_zone: "Europe/Berlin".into(),
    });
    stack.load_systems(vec![sys.clone()]).await.unwrap();
    stack.start_agent("sc", AgentUser::Same).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let job = loop {
        let jobs = stack.jobs().await.unwrap();
        if let Some(j) = jobs.iter().find(|j| j.trigger == Trigger::Schedule) {
            break j.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scheduled job\n{}",
            stack.log("scheduler")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Stop the schedule before looking at the job.
    sys.schedules.full = None;
    stack.load_systems(vec![sys]).await.unwrap();
    let (events, rec) = stack.wait_job(job.id).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert_eq!(rec.backup_type, Some(BackupType::Full));
    let at = rec.scheduled_for.expect("scheduled instant recorded");
    assert_eq!(chrono::Timelike::second(&at) % 3, 0, "{at}");
    assert!(
        rec.created - at < chrono::Duration::seconds(3),
        "{at} {}",
        rec.created
    );
    match &events[0].detail {
        EventDetail::Selected {
            trigger,
            backup_type,
            ..
        } => {
            assert_eq!(*trigger, Trigger::Schedule);
            assert_eq!(*backup_type, Some(BackupType::Full));
        }
        other => panic!("first event is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn instants_missed_while_the_scheduler_was_down_run_once_not_as_a_burst() {
    let mut stack = Stack::start().await.unwrap();
    let config = "schedule-tick-secs = 1\nmissed-run-grace-secs = 3600";
    stack.restart_scheduler(config, &[]).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"data").unwrap();
    let mut sys = system("down", &[data.path()]);
    sys.schedules.incremental = Some(ScheduleSpec {
        cron: "*/5 * * * * *".into(),
        time_zone: "UTC".into(),
    });
    stack.load_systems(vec![sys.clone()]).await.unwrap();
    stack.start_agent("down", AgentUser::Same).await.unwrap();
    let scheduled = async |stack: &Stack| -> Vec<arca_schemas::JobRecord> {
        let mut jobs: Vec<_> = stack
            .jobs()
            .await
            .unwrap()
            .into_iter()
            .filter(|j| j.trigger == Trigger::Schedule)
            .collect();
        jobs.sort_by_key(|j| j.scheduled_for);
        jobs
    };
    // Wait for a first scheduled job to end, then stop the scheduler.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = scheduled(&stack).await;
        if jobs.iter().any(|j| j.status.is_final()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scheduled job ran"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.kill("scheduler");
    let down_at = chrono::Utc::now();
    // Three or four instants pass while it is down.
    tokio::time::sleep(Duration::from_secs(17)).await;
    let up_at = chrono::Utc::now();
    stack.restart_scheduler(config, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    sys.schedules.incremental = None;
    stack.load_systems(vec![sys]).await.unwrap();
    let after: Vec<_> = scheduled(&stack)
        .await
        .into_iter()
        .map(|j| j.scheduled_for.unwrap())
        .filter(|at| *at > down_at)
        .collect();
    // The instants of the first twelve seconds down never ran; the latest
    // one before the restart (or the first after it) ran once.
    assert!(!after.is_empty(), "nothing ran after the restart");
    let five = chrono::Duration::seconds(5);
    assert!(
        after.iter().all(|at| *at > up_at - five),
        "older missed instants ran: {after:?} (down {down_at}, up {up_at})"
    );
    assert!(after[0] <= up_at + five, "{after:?}");
    let mut distinct = after.clone();
    distinct.dedup();
    assert_eq!(distinct, after, "an instant ran twice");
    for j in scheduled(&stack).await {
        stack
            .wait_final(j.id, Duration::from_secs(120))
            .await
            .unwrap();
    }
}
