//! The compromised-system fixture itself (`arca_testkit::hostile`): it
//! speaks the protocol well enough that a job it serves runs to its end
//! through the real scheduler and media. The attacks built on it live
//! beside the defences they test.

use arca_e2e::{Stack, system};
use arca_schemas::JobStatus;
use arca_testkit::hostile::{dir, plan_tree};

#[tokio::test(flavor = "multi_thread")]
async fn a_compromised_system_serves_a_job_through_the_real_scheduler_and_media() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    stack
        .load_systems(vec![system("evil", &[data.path()])])
        .await
        .unwrap();
    let evil = stack.compromised("evil").await.unwrap();
    let _serving = evil
        .serve(plan_tree(|c, start| async move {
            let f = c.file(&start, b"/data/f", b"hello").await.unwrap();
            vec![dir(b"/"), dir(b"/data"), f]
        }))
        .await
        .unwrap();
    let job = stack.backup(&["evil"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let snaps = stack.snapshots("evil").await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(evil.started.lock().unwrap().len(), 1);
}
