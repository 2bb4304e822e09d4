use std::time::Duration;

use arca_e2e::{Stack, kinds, system};
use arca_schemas::JobStatus;
use arca_schemas::event::EventDetail;

#[tokio::test(flavor = "multi_thread")]
async fn a_late_subscriber_reads_every_event_in_order() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"hello").unwrap();
    stack
        .load_systems(vec![system("ev", &[data.path()])])
        .await
        .unwrap();
    stack
        .start_agent("ev", arca_e2e::AgentUser::Same)
        .await
        .unwrap();
    let job = stack.backup(&["ev"]).await.unwrap()[0];
    // Join only after the job has ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !stack.job(job).await.unwrap().status.is_final() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded);
    let k: Vec<_> = kinds(&events)
        .into_iter()
        .filter(|k| *k != "progress")
        .collect();
    assert_eq!(
        k,
        [
            "selected",
            "window-opened",
            "agent-present",
            "prepared",
            "transferred",
            "finished",
            "window-closed",
            "ended"
        ]
    );
    assert!(events.windows(2).all(|w| w[0].time <= w[1].time));
    assert!(events.iter().all(|e| e.job == job && e.system == "ev"));

    // `arca watch` from a separate process reads the same history.
    let out = stack.arca(&["watch", &job.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("window opened") && text.contains("succeeded"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn systems_selected_together_run_one_after_the_other() {
    let mut stack = Stack::start().await.unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    arca_testkit::tree::write_pseudo_random(&a.path().join("f"), 30_000_000, 1).unwrap();
    arca_testkit::tree::write_pseudo_random(&b.path().join("f"), 30_000_000, 2).unwrap();
    stack
        .load_systems(vec![system("one", &[a.path()]), system("two", &[b.path()])])
        .await
        .unwrap();
    stack
        .start_agent("one", arca_e2e::AgentUser::Same)
        .await
        .unwrap();
    stack
        .start_agent("two", arca_e2e::AgentUser::Same)
        .await
        .unwrap();
    let jobs = stack.backup(&["one", "two"]).await.unwrap();
    let (ev1, r1) = stack.wait_job(jobs[0]).await.unwrap();
    let (ev2, r2) = stack.wait_job(jobs[1]).await.unwrap();
    assert_eq!(
        (r1.status, r2.status),
        (JobStatus::Succeeded, JobStatus::Succeeded)
    );
    let ended1 = ev1
        .iter()
        .find(|e| matches!(e.detail, EventDetail::Ended { .. }))
        .unwrap()
        .time;
    let opened2 = ev2
        .iter()
        .find(|e| matches!(e.detail, EventDetail::WindowOpened { .. }))
        .unwrap()
        .time;
    assert!(
        ended1 <= opened2,
        "second system started before the first ended"
    );
}
