//! Faults a job rides through, and faults it reports without leaving
//! anything half-known: a nats-server restarted at any step of backups and
//! restores, media stopped for a while, an agent gone silent (before and
//! after media committed its snapshot), a snapshot the catalog lost, and
//! the words the console prints for hooks that succeeded or failed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_e2e::{AgentUser, Stack, kinds, sh_hook, system};
use arca_schemas::event::{EventDetail, JobEvent};
use arca_schemas::{JobId, JobRecord, JobStatus, JobStep, codec, names};
use arca_testkit::hostile::{Plan, dir};
use arca_testkit::tree::{compare, write_pseudo_random};

/// A small, seedable generator (xorshift): the seed is printed, and
/// `ARCA_FAULT_SEED` replays a run.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::env::var("ARCA_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("fault seed: ARCA_FAULT_SEED={seed}");
        Dice(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Data of a few files, enough for a transfer of a second or two.
fn data(root: &Path) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..6u64 {
        write_pseudo_random(&root.join(format!("f{i}")), 8_000_000, i + 1).unwrap();
    }
    write_pseudo_random(&root.join("sub/g"), 3_000_000, 99).unwrap();
    std::fs::write(root.join("sub/small"), b"small").unwrap();
}

/// The step the job's record shows, when the scheduler answers.
async fn step_of(stack: &Stack, job: JobId) -> Option<(JobStep, JobStatus)> {
    let r = tokio::time::timeout(Duration::from_secs(2), stack.job(job)).await;
    match r {
        Ok(Ok(rec)) => Some((rec.step, rec.status)),
        _ => None,
    }
}

/// Steps a restart is aimed at, in turn; the transfer twice (early and
/// late). The window's opening and closing take milliseconds: a restart
/// aimed at them lands a step later.
const AIMS: &[JobStep] = &[
    JobStep::OpeningWindow,
    JobStep::WaitingForAgent,
    JobStep::Preparing,
    JobStep::Transferring,
    JobStep::Transferring,
    JobStep::Finishing,
];

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_restarted_at_any_step_of_ten_jobs_costs_each_a_retry_not_the_job() {
    let mut stack = Stack::start().await.unwrap();
    let src = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    data(src.path());
    let m = marks.path().display();
    let mut sys = system("rs", &[src.path()]);
    // Hooks that take a moment, so that a restart can land while they run;
    // each run leaves a line, so that a hook run twice shows.
    for (hook, phase) in [
        (&mut sys.hooks.pre_backup, "pre"),
        (&mut sys.hooks.post_backup, "post"),
        (&mut sys.hooks.pre_restore, "pre"),
        (&mut sys.hooks.post_restore, "post"),
    ] {
        *hook = Some(sh_hook(&format!(
            "echo run >> {m}/$ARCA_JOB_ID.{phase}; sleep 1"
        )));
    }
    stack.load_systems(vec![sys]).await.unwrap();
    stack.start_agent("rs", AgentUser::Same).await.unwrap();

    let mut dice = Dice::new();
    let mut backups: Vec<(JobId, arca_schemas::SnapshotId)> = Vec::new();
    let mut report: Vec<String> = Vec::new();
    let mut hits = 0;
    for i in 0..10 {
        let backup = i % 2 == 0;
        let target = tempfile::tempdir().unwrap();
        let job = if backup {
            stack.backup(&["rs"]).await.unwrap()[0]
        } else {
            let (_, snap) = backups.last().unwrap();
            stack.restore(snap, Some(target.path())).await.unwrap()
        };
        // Restart once the job reaches the aimed step (or a later one),
        // after a random moment more; the server stays down 0.2-3 s.
        let aim = AIMS[(i + dice.below(AIMS.len() as u64) as usize) % AIMS.len()];
        let extra = Duration::from_millis(dice.below(150));
        let down = Duration::from_millis(200 + dice.below(2800));
        let deadline = Instant::now() + Duration::from_secs(120);
        let seen = loop {
            match step_of(&stack, job).await {
                Some((step, JobStatus::Running)) if step >= aim => break Some(step),
                Some((_, status)) if status.is_final() => break None,
                _ => {}
            }
            assert!(Instant::now() < deadline, "job {job} never reached {aim:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep(extra).await;
        let restarted = chrono::Utc::now();
        stack.nats.restart(down, false).await.unwrap();
        let rec = stack
            .wait_final(job, Duration::from_secs(240))
            .await
            .unwrap();
        // The restart hit the job when it ended after the server went down.
        let hit = rec.ended.is_some_and(|e| e > restarted);
        hits += usize::from(hit);
        report.push(format!(
            "job {i} ({}): aimed at {aim:?}, seen at {seen:?}, +{extra:?}, down {down:?}, {}",
            if backup { "backup" } else { "restore" },
            if hit {
                "hit the running job"
            } else {
                "came after its end"
            }
        ));
        assert_eq!(
            rec.status,
            JobStatus::Succeeded,
            "{}\n{rec:#?}\nscheduler:\n{}\nagent:\n{}",
            report.join("\n"),
            stack.log("scheduler"),
            stack.log("agent-rs")
        );
        assert_eq!(lines(&marks.path().join(format!("{job}.pre"))), 1);
        assert_eq!(lines(&marks.path().join(format!("{job}.post"))), 1);
        if backup {
            backups.push((
                job,
                rec.snapshot.clone().expect("a backup names its snapshot"),
            ));
        } else {
            let restored = target.path().join(src.path().strip_prefix("/").unwrap());
            compare(src.path(), &restored).unwrap_or_else(|e| panic!("job {i}: {e}"));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        hits >= 8,
        "only {hits} of 10 restarts hit a running job:\n{}",
        report.join("\n")
    );
    // One snapshot per backup job, no more: media, the catalog and the
    // jobs agree.
    let media = stack.media_snapshots("rs").await.unwrap();
    assert_eq!(media.len(), backups.len(), "{media:#?}");
    for (job, snap) in &backups {
        let of_job: Vec<_> = media.iter().filter(|s| s.job == *job).collect();
        assert_eq!(of_job.len(), 1, "job {job}: {of_job:#?}");
        assert_eq!(&of_job[0].id, snap);
    }
    let mut catalog: Vec<_> = stack
        .snapshots("rs")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut held: Vec<_> = media.into_iter().map(|s| s.id).collect();
    catalog.sort();
    held.sort();
    assert_eq!(catalog, held);
    assert!(stack.open_windows().await.unwrap().is_empty());
}

/// Sends `signal` to the process `pid`.
fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid}");
}

fn progress_times(events: &[JobEvent]) -> Vec<chrono::DateTime<chrono::Utc>> {
    events
        .iter()
        .filter(|e| matches!(e.detail, EventDetail::Progress { .. }))
        .map(|e| e.time)
        .collect()
}

/// A stack with one system of `name` whose backup has started and stored
/// its first chunk, with data enough to outlast that chunk by far.
async fn busy_backup(name: &str, seed: u64) -> (Stack, tempfile::TempDir, JobId) {
    let mut stack = Stack::start().await.unwrap();
    let src = tempfile::tempdir().unwrap();
    for i in 0..12u64 {
        write_pseudo_random(&src.path().join(format!("f{i}")), 16_000_000, i + seed).unwrap();
    }
    stack.one_system(name, &[src.path()]).await.unwrap();
    let job = stack.backup(&[name]).await.unwrap()[0];
    stack.wait_first_chunk().await;
    (stack, src, job)
}

#[tokio::test(flavor = "multi_thread")]
async fn media_stopped_for_a_while_holds_the_job_without_progress_events_and_it_then_finishes() {
    let (stack, src, job) = busy_backup("ms", 7).await;
    let media = stack.pid("media");
    signal(media, "-STOP");
    let stopped = chrono::Utc::now();
    // Longer than the agent may stay silent: the agent is not silent, it
    // answers that it waits; the job goes on.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let resumed = chrono::Utc::now();
    signal(media, "-CONT");
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(
        rec.status,
        JobStatus::Succeeded,
        "{rec:#?}\n{}",
        stack.log("agent-ms")
    );
    let tmp = tempfile::tempdir().unwrap();
    let r = stack
        .restore(rec.snapshot.as_ref().unwrap(), Some(tmp.path()))
        .await
        .unwrap();
    assert_eq!(
        stack.wait_job(r).await.unwrap().1.status,
        JobStatus::Succeeded
    );
    compare(
        src.path(),
        &tmp.path().join(src.path().strip_prefix("/").unwrap()),
    )
    .unwrap();
    // Counters stood still while media was stopped (once the pipeline
    // had filled): no progress events then.
    let frozen_from = stopped + chrono::Duration::seconds(6);
    let during: Vec<_> = progress_times(&events)
        .into_iter()
        .filter(|t| *t > frozen_from && *t < resumed)
        .collect();
    assert!(
        during.is_empty(),
        "progress events while nothing moved (media stopped at {stopped}, continued at {resumed}): {during:?}"
    );
    assert!(!progress_times(&events).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_is_noticed_within_its_bound_and_its_window_closed() {
    let (stack, _src, job) = busy_backup("sa", 3).await;
    let agent = stack.pid("agent-sa");
    signal(agent, "-STOP");
    let stopped = Instant::now();
    let rec = stack
        .wait_final(job, Duration::from_secs(120))
        .await
        .unwrap();
    let noticed = stopped.elapsed();
    signal(agent, "-CONT");
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    let error = rec.error.clone().unwrap();
    assert!(
        error.contains("silent") && error.contains("agent-silence-secs"),
        "{error}"
    );
    // The default bound is 15 s; the post hook is not waited for (one
    // ping of 2 s), the window closes at once. The margin is for a slow
    // machine; before, this took about 90 s.
    assert!(
        noticed < Duration::from_secs(45),
        "the silent agent was noticed after {noticed:?}"
    );
    assert!(stack.open_windows().await.unwrap().is_empty());
    let (events, _) = stack.wait_job(job).await.unwrap();
    let k = kinds(&events);
    assert!(k.contains(&"window-closed"), "{k:?}");
    assert!(rec.snapshot.is_none());
    assert!(stack.media_snapshots("sa").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_committed_before_the_agent_went_silent_is_recorded_with_its_job() {
    let mut stack = Stack::start().await.unwrap();
    let src = tempfile::tempdir().unwrap();
    stack
        .load_systems(vec![system("orph", &[src.path()])])
        .await
        .unwrap();
    let evil = stack.compromised("orph").await.unwrap();
    // The agent commits a whole snapshot, then is gone before it reports.
    let committed = Arc::new(tokio::sync::Notify::new());
    let told = committed.clone();
    let plan: Plan = Arc::new(move |c, start| {
        let told = told.clone();
        Box::pin(async move {
            c.commit(&start, vec![dir(b"/data")]).await.unwrap();
            told.notify_one();
            std::future::pending().await
        })
    });
    let serving = evil.serve(plan).await.unwrap();
    let job = stack.backup(&["orph"]).await.unwrap()[0];
    tokio::time::timeout(Duration::from_secs(60), committed.notified())
        .await
        .expect("the snapshot was committed");
    serving.abort();
    let rec = stack
        .wait_final(job, Duration::from_secs(120))
        .await
        .unwrap();
    let media = stack.media_snapshots("orph").await.unwrap();
    assert_eq!(media.len(), 1, "{media:#?}");
    assert_eq!(rec.snapshot.as_ref(), Some(&media[0].id), "{rec:#?}");
    // Whole, but the post hook could not be asked for: failed, saying so.
    assert_eq!(
        rec.status,
        JobStatus::Failed,
        "{rec:#?}\n{}",
        stack.log("scheduler")
    );
    let error = rec.error.clone().unwrap();
    assert!(error.contains("is whole; it is kept"), "{error}");
    assert!(evil.finished.lock().unwrap().is_empty());
    let catalog = stack.snapshots("orph").await.unwrap();
    assert_eq!(catalog.len(), 1);
    assert_eq!(catalog[0].id, media[0].id);
    assert!(stack.open_windows().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_the_catalog_lost_is_adopted_at_start_and_reported() {
    let mut stack = Stack::start().await.unwrap();
    let src = tempfile::tempdir().unwrap();
    data(src.path());
    stack.one_system("adopt", &[src.path()]).await.unwrap();
    let jobs = [
        stack.backup(&["adopt"]).await.unwrap()[0],
        stack.backup(&["adopt"]).await.unwrap()[0],
    ];
    let mut recs = Vec::new();
    for j in jobs {
        recs.push(stack.wait_job(j).await.unwrap().1);
    }
    let lost: &JobRecord = &recs[1];
    let lost_id = lost.snapshot.clone().unwrap();
    // What the scheduler's record lacked when media committed and the job
    // lost contact before recording: no catalog entry, no snapshot in the
    // job's record.
    stack.kill("scheduler");
    let js = &stack.js;
    let catalog = js.get_key_value(names::SNAPSHOTS_BUCKET).await.unwrap();
    catalog.delete(&lost_id.0).await.unwrap();
    let jobs_kv = js.get_key_value(names::JOBS_BUCKET).await.unwrap();
    let mut rec = lost.clone();
    rec.snapshot = None;
    jobs_kv
        .put(rec.id.to_string(), codec::encode(&rec).unwrap().into())
        .await
        .unwrap();
    stack.restart_scheduler("", &[]).await.unwrap();

    // Reconciled at start: recorded in the catalog and in the job's record.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cat = stack.snapshots("adopt").await.unwrap();
        if cat.iter().any(|s| s.id == lost_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not adopted: {cat:#?}\n{}",
            stack.log("scheduler")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rec = stack.job(lost.id).await.unwrap();
    assert_eq!(rec.snapshot.as_ref(), Some(&lost_id));
    // Reported as an event of the job, after its `ended`.
    let events = stack.js.get_stream(names::EVENTS_STREAM).await.unwrap();
    let adopted = events
        .get_last_raw_message_by_subject(&arca_schemas::subject::event(
            &lost.id,
            "snapshot-adopted",
        ))
        .await
        .unwrap();
    let adopted: JobEvent = serde_json::from_slice(&adopted.payload).unwrap();
    assert!(
        matches!(&adopted.detail, EventDetail::SnapshotAdopted { snapshot, .. } if *snapshot == lost_id),
        "{adopted:#?}"
    );
    // `arca snapshots` and `arca verify` count the same.
    let out = stack.arca(&["snapshots", "--system", "adopt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&lost_id.0), "{listed}");
    let mut cat: Vec<_> = stack
        .snapshots("adopt")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut held: Vec<_> = stack
        .media_snapshots("adopt")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    cat.sort();
    held.sort();
    assert_eq!(cat, held);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_says_which_hooks_succeeded_and_the_record_keeps_its_step_flags() {
    let mut stack = Stack::start().await.unwrap();
    let src = tempfile::tempdir().unwrap();
    data(src.path());
    let mut sys = system("words", &[src.path()]);
    // No pre hook command: the pre hook is the application step alone.
    sys.hooks.post_backup = Some(sh_hook("echo releasing; exit 3"));
    // An application step: it has no exit status of its own.
    let mut sleeper = std::process::Command::new("sleep");
    {
        use std::os::unix::process::CommandExt;
        sleeper.arg("600").process_group(0);
    }
    let mut sleeper = sleeper.spawn().unwrap();
    sys.applications = vec![arca_schemas::Application::Suspend(
        arca_schemas::SuspendSpec {
            process_group: Some(sleeper.id() as i32),
            pid_file: None,
            unit: None,
            timeout_secs: 60,
        },
    )];
    stack.load_systems(vec![sys]).await.unwrap();
    stack.start_agent("words", AgentUser::Same).await.unwrap();
    let job = stack.backup(&["words"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let out = stack.arca(&["watch", &job.to_string()]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("pre-backup hook succeeded"), "{shown}");
    assert!(
        shown.contains("post-backup hook failed (exit 3)"),
        "{shown}"
    );
    assert!(!shown.contains("abnormal"), "{shown}");
    // The post hook failed after the snapshot was committed: the job
    // failed, its snapshot is kept and named, and the record says that
    // the pre hook ran and the post hook was asked for.
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    assert!(rec.prepared && rec.finished, "{rec:#?}");
    let snap = rec
        .snapshot
        .clone()
        .expect("the committed snapshot is named");
    assert!(
        stack
            .snapshots("words")
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == snap)
    );
    assert!(rec.error.unwrap().contains("exit 3"));
}
