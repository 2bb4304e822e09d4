use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arca_e2e::{AgentUser, Stack, system};
use arca_runtime::rpc;
use arca_schemas::JobStatus;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, MediaDataVerb, MediaVerb};
use arca_testkit::tree::{compare, write_pseudo_random};

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn packs_of(stack: &Stack, system: &str) -> Vec<PathBuf> {
    files(&stack.repo_dir().join("data").join(system))
}

async fn verify(stack: &Stack, read_data: bool) -> VerifyReport {
    rpc::request_with_timeout(
        &stack.client,
        subject::media("main", MediaVerb::Verify),
        &VerifyRepository {
            read_data,
            subset_percent: 100,
        },
        Duration::from_secs(600),
    )
    .await
    .unwrap()
}

/// Three 3 MB files and a small one, backed up as `name`.
async fn backed_up(stack: &mut Stack, root: &Path, name: &str) -> arca_schemas::SnapshotId {
    let src = root.join(name);
    std::fs::create_dir_all(&src).unwrap();
    for (i, f) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        write_pseudo_random(&src.join(f), 3_000_000, i as u64 + 10).unwrap();
    }
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    stack
        .load_systems(vec![system(name, &[&src])])
        .await
        .unwrap();
    stack.start_agent(name, AgentUser::Same).await.unwrap();
    let job = stack.backup(&[name]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    rec.snapshot.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_is_named_by_verify_and_only_its_file_fails_to_restore() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let snap = backed_up(&mut stack, data.path(), "flip").await;
    assert!(verify(&stack, true).await.problems.is_empty());

    // Flip one byte in the middle of the data pack.
    let pack = packs_of(&stack, "flip")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();

    let out = stack.arca(&["verify", "--read-data"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success(),
        "verify passed a flipped byte:\n{text}"
    );
    assert!(text.contains(&snap.to_string()), "{text}");
    let report = verify(&stack, true).await;
    let named: BTreeSet<String> = report
        .problems
        .iter()
        .flat_map(|p| p.files.clone())
        .collect();
    assert_eq!(named.len(), 1, "{report:#?}");
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.snapshots == vec![snap.clone()])
    );

    let target = data.path().join("restored");
    let job = stack.restore(&snap, Some(&target)).await.unwrap();
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Partial, "{rec:#?}");
    let failed: BTreeSet<String> = rec.file_errors.iter().map(|f| f.path.clone()).collect();
    let bad = named.iter().next().unwrap();
    assert_eq!(failed.len(), 1, "{rec:#?}");
    assert!(
        failed
            .iter()
            .next()
            .unwrap()
            .ends_with(Path::new(bad).file_name().unwrap().to_str().unwrap()),
        "{rec:#?}"
    );
    assert!(
        rec.file_errors[0].error.contains("authentication"),
        "{rec:#?}"
    );
    // Every other file came back whole.
    let src = data.path().join("flip");
    for f in files(&src) {
        if f.display().to_string() == *bad {
            continue;
        }
        let back = target.join(f.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read(&back).unwrap(),
            std::fs::read(&f).unwrap(),
            "{}",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_pack_and_a_deleted_index_are_detected_and_the_index_repaired() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let snap = backed_up(&mut stack, data.path(), "trunc").await;

    // Deleted index files: found, then rebuilt from the packs.
    std::fs::remove_dir_all(stack.repo_dir().join("index/trunc")).unwrap();
    let report = verify(&stack, false).await;
    assert!(!report.problems.is_empty());
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.error.contains("index file")),
        "{report:#?}"
    );
    let out = stack.arca(&["repair", "index"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(verify(&stack, true).await.problems.is_empty());
    let target = data.path().join("restored");
    let job = stack.restore(&snap, Some(&target)).await.unwrap();
    assert_eq!(
        stack.wait_job(job).await.unwrap().1.status,
        JobStatus::Succeeded
    );
    compare(
        &data.path().join("trunc"),
        &target.join(data.path().join("trunc").strip_prefix("/").unwrap()),
    )
    .unwrap();

    // A pack cut in half: structure check finds it without reading data.
    let pack = packs_of(&stack, "trunc")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let report = verify(&stack, false).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.error.contains("cut short") && !p.files.is_empty()),
        "{report:#?}"
    );
    let out = stack.arca(&["verify"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn media_killed_at_random_points_leaves_a_clean_repository_and_stored_chunks_are_reused() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        write_pseudo_random(&src.join(format!("f{i}")), 12_000_000, i).unwrap();
    }
    stack
        .load_systems(vec![system("crash", &[&src])])
        .await
        .unwrap();
    stack.start_agent("crash", AgentUser::Same).await.unwrap();

    let mut seed = 0x9e37_79b9u64;
    let mut interrupted = 0;
    for round in 0..6u64 {
        // New data every round, so that every backup has chunks to send.
        for i in 0..4 {
            write_pseudo_random(
                &src.join(format!("f{i}")),
                12_000_000,
                100 * (round + 1) + i,
            )
            .unwrap();
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Kill media when the pack being written reaches a random size,
        // from its first chunk to well past a whole pack.
        let threshold = 8 + seed % 40_000_000;
        let stored = || -> u64 {
            let repo = stack.repo_dir();
            files(&repo.join("tmp"))
                .into_iter()
                .chain(packs_of(&stack, "crash"))
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum()
        };
        let baseline = stored();
        let job = stack.backup(&["crash"]).await.unwrap()[0];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if stored().saturating_sub(baseline) > threshold
                || stack.job(job).await.unwrap().status.is_final()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: backup never progressed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stack.kill("media");
        stack.restart("media").await.unwrap();
        let (_, rec) = stack.wait_job(job).await.unwrap();
        let report = verify(&stack, true).await;
        assert!(report.problems.is_empty(), "round {round}: {report:#?}");
        if rec.status == JobStatus::Succeeded {
            continue;
        }
        assert_eq!(rec.status, JobStatus::Failed, "round {round}: {rec:#?}");
        assert!(rec.snapshot.is_none());
        interrupted += 1;
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} of 6 backups were interrupted by the kill"
    );
    // Whatever was stored before the crashes is reused now.
    let stored_before: usize = packs_of(&stack, "crash").len();
    let job = stack.backup(&["crash"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    if stored_before > 0 {
        assert!(
            rec.stats.new_chunks < rec.stats.chunks,
            "nothing reused: {rec:#?}"
        );
    }
    assert!(verify(&stack, true).await.problems.is_empty());
    let target = data.path().join("restored");
    let job = stack
        .restore(rec.snapshot.as_ref().unwrap(), Some(&target))
        .await
        .unwrap();
    assert_eq!(
        stack.wait_job(job).await.unwrap().1.status,
        JobStatus::Succeeded
    );
    compare(&src, &target.join(src.strip_prefix("/").unwrap())).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_files_of_two_systems_are_stored_twice_and_stay_apart() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let (p, q) = (data.path().join("p"), data.path().join("q"));
    for d in [&p, &q] {
        std::fs::create_dir_all(d).unwrap();
        write_pseudo_random(&d.join("same.bin"), 8_000_000, 42).unwrap();
    }
    stack
        .load_systems(vec![system("p", &[&p]), system("q", &[&q])])
        .await
        .unwrap();
    stack.start_agent("p", AgentUser::Same).await.unwrap();
    stack.start_agent("q", AgentUser::Same).await.unwrap();
    let jobs = stack.backup(&["p", "q"]).await.unwrap();
    let (_, rp) = stack.wait_job(jobs[0]).await.unwrap();
    let (_, rq) = stack.wait_job(jobs[1]).await.unwrap();
    // Each system stored all of its data: no cross-system deduplication.
    assert_eq!(rp.stats.new_chunks, rp.stats.chunks + 1, "{rp:#?}");
    assert_eq!(rq.stats.new_chunks, rq.stats.chunks + 1, "{rq:#?}");
    let size = |s: &str| {
        packs_of(&stack, s)
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum::<u64>()
    };
    assert!(size("p") > 8_000_000 && size("q") > 8_000_000);

    // The same bytes have unrelated ids, and q's scope knows nothing of p's.
    let snap: SnapshotReply = rpc::request(
        &stack.client,
        subject::media("main", MediaVerb::Snapshot),
        &GetSnapshot {
            snapshot: rp.snapshot.clone().unwrap(),
            session: None,
        },
    )
    .await
    .unwrap();
    let p_tree = snap.tree[0];
    let ok: Result<ChunkData, _> = rpc::request(
        &stack.client,
        subject::media_data("main", "p", MediaDataVerb::Get),
        &GetChunk {
            id: p_tree,
            session: None,
        },
    )
    .await;
    assert!(ok.is_ok());
    let other: Result<ChunkData, rpc::RpcError> = rpc::request(
        &stack.client,
        subject::media_data("main", "q", MediaDataVerb::Get),
        &GetChunk {
            id: p_tree,
            session: None,
        },
    )
    .await;
    assert!(
        matches!(other, Err(rpc::RpcError::Remote(ref e)) if e.code == arca_schemas::ErrorCode::NotFound),
        "{other:?}"
    );
    let mut keys = Vec::new();
    for s in ["p", "q"] {
        let k: ChunkKey = rpc::request(
            &stack.client,
            subject::media("main", MediaVerb::ChunkKey),
            &GetChunkKey {
                system: s.to_owned(),
            },
        )
        .await
        .unwrap();
        keys.push(k.key);
    }
    assert_ne!(keys[0], keys[1]);
    // A "has" question needs a session of the asking system.
    let has: Result<HasChunksReply, rpc::RpcError> = rpc::request(
        &stack.client,
        subject::media_data("main", "q", MediaDataVerb::Has),
        &HasChunks {
            session: "no-such-session".into(),
            ids: vec![p_tree],
        },
    )
    .await;
    assert!(has.is_err(), "{has:?}");
}

/// Copies a tree with its metadata (`cp -a`).
fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_and_prune_keep_exactly_the_policy_and_reclaim_space() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    stack
        .load_systems(vec![system("ret", &[&src])])
        .await
        .unwrap();
    stack.start_agent("ret", AgentUser::Same).await.unwrap();

    // Five snapshots, each with a file of its own; the tree of each is kept aside.
    let mut snaps = Vec::new();
    for i in 0..5u64 {
        write_pseudo_random(&src.join(format!("gen-{i}.bin")), 4_000_000, 1000 + i).unwrap();
        if i >= 2 {
            std::fs::remove_file(src.join(format!("gen-{}.bin", i - 2))).unwrap();
        }
        let job = stack.backup(&["ret"]).await.unwrap()[0];
        let (_, rec) = stack.wait_job(job).await.unwrap();
        assert_eq!(rec.status, JobStatus::Succeeded);
        let expected = data.path().join(format!("expected-{i}"));
        copy_tree(&src, &expected);
        snaps.push((rec.snapshot.unwrap(), expected));
    }

    // A dry run changes nothing.
    let out = stack.arca(&["forget", "ret", "--keep-last", "2", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 kept, 3 would forget"), "{text}");
    assert_eq!(stack.snapshots("ret").await.unwrap().len(), 5);
    // A policy that keeps nothing is refused.
    assert!(!stack.arca(&["forget", "ret"]).status.success());

    let out = stack.arca(&["forget", "ret", "--keep-last", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: BTreeSet<_> = stack
        .snapshots("ret")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let want: BTreeSet<_> = snaps[3..].iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(left, want);

    let before = packs_of(&stack, "ret")
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum::<u64>();
    let out = stack.arca(&["prune"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = packs_of(&stack, "ret")
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum::<u64>();
    // The kept snapshots need gen-2, gen-3 and gen-4; gen-0 and gen-1
    // (8 MB) are no longer needed.
    assert!(after + 7_900_000 < before, "before {before}, after {after}");
    assert!(after > 12_000_000, "before {before}, after {after}");
    let report = verify(&stack, true).await;
    assert!(report.problems.is_empty(), "{report:#?}");
    for (id, expected) in &snaps[3..] {
        let target = data.path().join(format!("restored-{id}"));
        let job = stack.restore(id, Some(&target)).await.unwrap();
        assert_eq!(
            stack.wait_job(job).await.unwrap().1.status,
            JobStatus::Succeeded
        );
        compare(expected, &target.join(src.strip_prefix("/").unwrap())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prune_killed_at_any_point_leaves_a_repository_that_verifies_clean() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    stack
        .load_systems(vec![system("pk", &[&src])])
        .await
        .unwrap();
    stack.start_agent("pk", AgentUser::Same).await.unwrap();
    let mut seed = 0x1234_5678u64;
    for round in 0..5u64 {
        // Two new snapshots, each replacing half of the data.
        for step in 0..2u64 {
            for f in 0..4u64 {
                if (f + step) % 2 == 0 {
                    write_pseudo_random(
                        &src.join(format!("f{f}")),
                        3_000_000,
                        round * 100 + step * 10 + f,
                    )
                    .unwrap();
                }
            }
            let job = stack.backup(&["pk"]).await.unwrap()[0];
            assert_eq!(
                stack.wait_job(job).await.unwrap().1.status,
                JobStatus::Succeeded
            );
        }
        let out = stack.arca(&["forget", "pk", "--keep-last", "1"]);
        assert!(out.status.success());
        // Start a prune and kill media somewhere inside it.
        let client = stack.client.clone();
        let prune = tokio::spawn(async move {
            let _: Result<PruneReport, _> = rpc::request_with_timeout(
                &client,
                subject::media("main", MediaVerb::Prune),
                &PruneRepository { dry_run: false },
                Duration::from_secs(30),
            )
            .await;
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_micros(seed % 80_000)).await;
        stack.kill("media");
        prune.abort();
        stack.restart("media").await.unwrap();
        let report = verify(&stack, true).await;
        assert!(report.problems.is_empty(), "round {round}: {report:#?}");
        // The kept snapshot still restores bit-exact.
        let snap = stack.snapshots("pk").await.unwrap()[0].id.clone();
        let target = data.path().join(format!("restored-{round}"));
        let job = stack.restore(&snap, Some(&target)).await.unwrap();
        assert_eq!(
            stack.wait_job(job).await.unwrap().1.status,
            JobStatus::Succeeded
        );
        compare(&src, &target.join(src.strip_prefix("/").unwrap())).unwrap();
    }
    // A prune left to finish reclaims what the killed ones did not.
    let r: PruneReport = rpc::request_with_timeout(
        &stack.client,
        subject::media("main", MediaVerb::Prune),
        &PruneRepository { dry_run: false },
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert!(r.bytes_after <= r.bytes_before);
    let report = verify(&stack, true).await;
    assert!(report.problems.is_empty(), "{report:#?}");
    let dry: PruneReport = rpc::request(
        &stack.client,
        subject::media("main", MediaVerb::Prune),
        &PruneRepository { dry_run: true },
    )
    .await
    .unwrap();
    assert_eq!(dry.chunks_removed, 0, "{dry:#?}");
}

/// Runs `arca-media --config <stack>/media.toml` with `args` and `env`.
fn media_command(stack: &Stack, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(arca_testkit::bin_path("arca-media"));
    cmd.arg("--config")
        .arg(stack.dir().join("media.toml"))
        .args(args)
        .env_remove("ARCA_KEY_PASSPHRASE")
        .env_remove("ARCA_NEW_KEY_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_sealed_by_a_passphrase_is_needed_to_start_and_can_be_resealed() {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let key = stack.repo_dir().join("key");
    let plain = std::fs::read_to_string(&key).unwrap();
    let master = plain.split_whitespace().nth(1).unwrap().to_owned();
    let snap = backed_up(&mut stack, data.path(), "sealed").await;

    // Sealed in place by the configured passphrase: the key is no longer
    // in the file, and media starts only with the passphrase.
    let pass = stack.dir().join("passphrase");
    std::fs::write(&pass, "correct horse battery\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    stack.kill("media");
    let config = std::fs::read_to_string(stack.dir().join("media.toml")).unwrap();
    let with_pass = format!("key-passphrase-file = \"{}\"\n{config}", pass.display());
    stack.write("media.toml", &with_pass).unwrap();
    let (ok, text) = media_command(&stack, &["--seal-key"], &[]);
    assert!(ok, "{text}");
    let sealed = std::fs::read_to_string(&key).unwrap();
    assert!(
        sealed.starts_with("arca-repository-key-sealed-v1"),
        "{sealed}"
    );
    assert!(
        !sealed.contains(&master),
        "the key is still readable in the file"
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    stack.restart("media").await.unwrap();
    let target = data.path().join("restored");
    let job = stack.restore(&snap, Some(&target)).await.unwrap();
    assert_eq!(
        stack.wait_job(job).await.unwrap().1.status,
        JobStatus::Succeeded
    );
    let src = data.path().join("sealed");
    compare(&src, &target.join(src.strip_prefix("/").unwrap())).unwrap();

    // Without the passphrase, or with another, media refuses to start
    // and says what is missing.
    stack.kill("media");
    stack.write("media.toml", &config).unwrap();
    let (ok, text) = media_command(&stack, &[], &[]);
    assert!(!ok);
    assert!(text.contains("sealed by a passphrase"), "{text}");
    let (ok, text) = media_command(&stack, &[], &[("ARCA_KEY_PASSPHRASE", "wrong")]);
    assert!(!ok);
    assert!(text.contains("passphrase does not open"), "{text}");

    // Resealed by a new passphrase (given in the environment), then back
    // to no passphrase: the same key opens the same repository.
    stack.write("media.toml", &with_pass).unwrap();
    let (ok, text) = media_command(
        &stack,
        &["--seal-key"],
        &[("ARCA_NEW_KEY_PASSPHRASE", "staple")],
    );
    assert!(ok, "{text}");
    stack.write("media.toml", &config).unwrap();
    let (ok, text) = media_command(
        &stack,
        &["--unseal-key"],
        &[("ARCA_KEY_PASSPHRASE", "staple")],
    );
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_to_string(&key)
            .unwrap()
            .split_whitespace()
            .nth(1),
        Some(master.as_str())
    );
    stack.restart("media").await.unwrap();
    let report = verify(&stack, true).await;
    assert!(report.problems.is_empty(), "{report:#?}");
}
