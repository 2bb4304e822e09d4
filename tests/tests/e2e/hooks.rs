use arca_e2e::{Stack, kinds, sh_hook, system};
use arca_schemas::JobStatus;
use arca_schemas::event::EventDetail;
use arca_testkit::tree::write_pseudo_random;

#[tokio::test(flavor = "multi_thread")]
async fn pre_hook_runs_before_data_moves_and_post_after_the_commit() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    write_pseudo_random(&data.path().join("f"), 5_000_000, 3).unwrap();
    let repo = stack.repo_dir();
    let r = repo.display();
    let m = marks.path().display();
    let mut sys = system("hk", &[data.path()]);
    // The pre hook counts pack files (open or sealed) already there; the post hook counts
    // committed snapshots. Both record the job id they were given.
    sys.hooks.pre_backup = Some(sh_hook(&format!(
        "echo \"$ARCA_JOB_ID\" > {m}/pre.job; find {r}/data {r}/tmp -type f 2>/dev/null | wc -l > {m}/pre.chunks"
    )));
    sys.hooks.post_backup = Some(sh_hook(&format!(
        "echo \"$ARCA_JOB_ID\" > {m}/post.job; ls {r}/snapshots/hk | wc -l > {m}/post.snapshots",
    )));
    // Restore hooks see the snapshot and the target; the pre hook runs
    // before the first file is written, the post hook after the last.
    sys.hooks.pre_restore = Some(sh_hook(&format!(
        "echo \"$ARCA_SNAPSHOT $ARCA_TARGET\" > {m}/pre-restore; ls \"$ARCA_TARGET\" 2>/dev/null | wc -l > {m}/pre-restore.files"
    )));
    sys.hooks.post_restore = Some(sh_hook(&format!(
        "find \"$ARCA_TARGET\" -type f | wc -l > {m}/post-restore.files"
    )));
    stack.load_systems(vec![sys]).await.unwrap();
    stack
        .start_agent("hk", arca_e2e::AgentUser::Same)
        .await
        .unwrap();

    let job = stack.backup(&["hk"]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let read = |name: &str| {
        std::fs::read_to_string(marks.path().join(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(read("pre.chunks"), "0", "data moved before the pre hook");
    assert_eq!(
        read("post.snapshots"),
        "1",
        "post hook ran before the snapshot was committed"
    );
    assert_eq!(read("pre.job"), job.to_string());
    assert_eq!(read("post.job"), job.to_string());
    let k = kinds(&events);
    let pos = |kind: &str| {
        k.iter()
            .position(|x| *x == kind)
            .unwrap_or_else(|| panic!("no {kind} in {k:?}"))
    };
    assert!(pos("prepared") < pos("transferred"));
    assert!(pos("transferred") < pos("finished"));
    assert!(pos("finished") < pos("window-closed"));

    let snap = rec.snapshot.unwrap();
    let target = marks.path().join("restored");
    let job = stack.restore(&snap, Some(&target)).await.unwrap();
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert_eq!(read("pre-restore"), format!("{snap} {}", target.display()));
    assert_eq!(read("pre-restore.files"), "0");
    assert_eq!(read("post-restore.files"), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_media_dies_mid_transfer_the_post_hook_runs_and_nothing_is_listed() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    write_pseudo_random(&data.path().join("big"), 400_000_000, 9).unwrap();
    let m = marks.path().display();
    let mut sys = system("km", &[data.path()]);
    sys.hooks.pre_backup = Some(sh_hook(&format!("touch {m}/pre")));
    sys.hooks.post_backup = Some(sh_hook(&format!("touch {m}/post")));
    stack.load_systems(vec![sys]).await.unwrap();
    stack
        .start_agent("km", arca_e2e::AgentUser::Same)
        .await
        .unwrap();

    let job = stack.backup(&["km"]).await.unwrap()[0];
    // Kill media as soon as the first chunk reaches the repository.
    stack.wait_first_chunk().await;
    stack.kill("media");

    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    assert!(rec.snapshot.is_none());
    assert!(marks.path().join("pre").exists());
    assert!(
        marks.path().join("post").exists(),
        "post hook did not run after a failed transfer"
    );
    let k = kinds(&events);
    assert!(k.contains(&"finished"), "{k:?}");
    assert!(k.contains(&"window-closed"), "{k:?}");
    assert_eq!(*k.last().unwrap(), "ended");
    assert!(stack.snapshots("km").await.unwrap().is_empty());
    assert!(stack.open_windows().await.unwrap().is_empty());
    let snapshots = stack.repo_dir().join("snapshots/km");
    assert!(
        std::fs::read_dir(&snapshots)
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
}

/// Files of the repository's packs, sealed or being written.
fn pack_files(repo: &std::path::Path) -> usize {
    ["data", "tmp"]
        .iter()
        .filter_map(|d| std::fs::read_dir(repo.join(d)).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
        .count()
}

/// A backup whose pre hook is `pre`: it must fail before any data moves,
/// with the post hook run and the pre hook's output in the events.
async fn failed_pre_hook(
    name: &str,
    pre: arca_schemas::HookSpec,
    exit: Option<i32>,
    expect: &[&str],
) {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    write_pseudo_random(&data.path().join("f"), 5_000_000, 4).unwrap();
    let m = marks.path().display();
    let mut sys = system(name, &[data.path()]);
    sys.hooks.pre_backup = Some(pre);
    sys.hooks.post_backup = Some(sh_hook(&format!("echo \"$ARCA_JOB_ID\" >> {m}/post")));
    stack.load_systems(vec![sys]).await.unwrap();
    stack
        .start_agent(name, arca_e2e::AgentUser::Same)
        .await
        .unwrap();

    let job = stack.backup(&[name]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    assert!(rec.snapshot.is_none());
    assert_eq!(rec.stats.bytes, 0, "{rec:#?}");
    assert_eq!(
        pack_files(&stack.repo_dir()),
        0,
        "data reached the repository"
    );
    assert!(stack.media_snapshots(name).await.unwrap().is_empty());
    // The post hook ran, once.
    let post = std::fs::read_to_string(marks.path().join("post")).unwrap_or_default();
    assert_eq!(post.trim(), job.to_string(), "post hook did not run once");
    let k = kinds(&events);
    assert!(!k.contains(&"transferred"), "{k:?}");
    assert!(!k.contains(&"progress"), "{k:?}");
    let prepared = events
        .iter()
        .find_map(|e| match &e.detail {
            EventDetail::Prepared {
                output,
                ran,
                exit_code,
                ..
            } => Some((output.clone(), *ran, *exit_code)),
            _ => None,
        })
        .expect("a prepared event");
    assert!(prepared.1);
    assert_eq!(prepared.2, exit, "exit status of the pre hook");
    for text in expect {
        assert!(
            prepared.0.contains(text),
            "{text:?} not in {:?}",
            prepared.0
        );
        assert!(
            rec.error.as_deref().unwrap_or("").contains(text),
            "{text:?} not in the job's error {:?}",
            rec.error
        );
    }
    assert!(k.contains(&"finished"), "{k:?}");
    assert!(
        k.iter().position(|x| *x == "finished") < k.iter().position(|x| *x == "ended"),
        "{k:?}"
    );
    assert!(stack.open_windows().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_pre_hook_moves_no_data_and_the_post_hook_runs() {
    failed_pre_hook(
        "pf",
        sh_hook(
            "echo checking the application; echo 'cannot quiesce: replica lagging' >&2; exit 7",
        ),
        Some(7),
        &[
            "checking the application",
            "cannot quiesce: replica lagging",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pre_hook_past_its_timeout_is_killed_no_data_moves_and_the_post_hook_runs() {
    let mut hang = sh_hook("echo about to hang; sleep 600");
    hang.timeout_secs = 2;
    failed_pre_hook(
        "ph",
        hang,
        None,
        &[
            "about to hang",
            "killed with its process group after its timeout of 2s",
        ],
    )
    .await;
}
