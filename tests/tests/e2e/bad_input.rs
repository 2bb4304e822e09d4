use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use arca_e2e::{AgentUser, Stack, system};
use arca_schemas::JobStatus;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_names_are_refused_clearly_and_create_no_job() {
    let stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    stack
        .load_systems(vec![system("known", &[data.path()])])
        .await
        .unwrap();

    let out = stack.arca(&["backup", "known", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown system \"nosuch\""),
        "{}",
        text(&out)
    );

    let out = stack.arca(&["restore", "0123456789abcdef"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown snapshot 0123456789abcdef"),
        "{}",
        text(&out)
    );

    let out = stack.arca(&["restore", "not-an-id"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a snapshot id"), "{}", text(&out));

    // Neither request left a job behind, not even for the known system.
    let jobs = stack.arca(&["jobs", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 0, "{jobs}");

    // A systems file with a bad field is refused, naming it.
    let mut bad = system("bad", &[data.path()]);
    bad.paths = vec!["relative/path".into()];
    let err = stack.load_systems(vec![bad]).await.unwrap_err().to_string();
    assert!(
        err.contains("relative/path") && err.contains("not absolute"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_paths_make_a_partial_or_failed_job() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("kept"), b"kept").unwrap();
    let missing = Path::new("/nonexistent/arca-test-path");
    stack
        .load_systems(vec![
            system("some", &[data.path(), missing]),
            system("none", &[missing]),
        ])
        .await
        .unwrap();
    stack.start_agent("some", AgentUser::Same).await.unwrap();
    stack.start_agent("none", AgentUser::Same).await.unwrap();

    let job = stack.backup(&["some"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Partial, "{rec:#?}");
    assert_eq!(rec.file_errors.len(), 1);
    assert_eq!(rec.file_errors[0].path, missing.display().to_string());
    assert!(rec.snapshot.is_some());

    let job = stack.backup(&["none"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    assert!(
        rec.error
            .as_deref()
            .unwrap()
            .contains("none of the configured paths exists"),
        "{rec:#?}"
    );
    assert!(stack.snapshots("none").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_file_is_named_and_the_rest_is_saved() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let root = data.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("readable-1"), b"one").unwrap();
    std::fs::write(root.join("unreadable"), b"secret").unwrap();
    std::fs::write(root.join("readable-2"), b"two").unwrap();
    std::fs::set_permissions(
        root.join("unreadable"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    stack
        .load_systems(vec![system("ur", &[root])])
        .await
        .unwrap();
    // As nobody, the agent cannot read a mode-000 file (root could).
    stack.start_agent("ur", AgentUser::Nobody).await.unwrap();

    let job = stack.backup(&["ur"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(
        rec.status,
        JobStatus::Partial,
        "{rec:#?}\n{}",
        stack.log("agent-ur")
    );
    assert_eq!(rec.file_errors.len(), 1, "{rec:#?}");
    assert!(rec.file_errors[0].path.ends_with("/unreadable"));
    assert!(
        rec.file_errors[0].error.contains("ermission denied"),
        "{rec:#?}"
    );

    let target = tempfile::tempdir().unwrap();
    std::fs::set_permissions(target.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let restored = stack
        .restore(rec.snapshot.as_ref().unwrap(), Some(target.path()))
        .await
        .unwrap();
    let (_, rrec) = stack.wait_job(restored).await.unwrap();
    assert_eq!(rrec.status, JobStatus::Succeeded, "{rrec:#?}");
    let back = target.path().join(root.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(back.join("readable-1")).unwrap(), b"one");
    assert_eq!(std::fs::read(back.join("readable-2")).unwrap(), b"two");
    assert!(!back.join("unreadable").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_target_that_is_not_writable_fails_before_writing() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    stack
        .load_systems(vec![system("nw", &[&src])])
        .await
        .unwrap();
    stack.start_agent("nw", AgentUser::Same).await.unwrap();
    let job = stack.backup(&["nw"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    let snap = rec.snapshot.unwrap();

    // A regular file where the target folder should be.
    let blocker = data.path().join("blocker");
    std::fs::write(&blocker, b"do not touch").unwrap();
    for target in [blocker.clone(), blocker.join("below")] {
        let job = stack.restore(&snap, Some(&target)).await.unwrap();
        let (_, rec) = stack.wait_job(job).await.unwrap();
        assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
        assert!(
            rec.error.as_deref().unwrap().contains("not writable"),
            "{rec:#?}"
        );
        assert_eq!(rec.stats.files, 0);
    }
    assert_eq!(std::fs::read(&blocker).unwrap(), b"do not touch");

    // A relative target is refused up front.
    let out = stack.arca(&["restore", &snap.to_string(), "--target", "relative/dir"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("absolute"), "{}", text(&out));
}
