//! What a compromised system's snapshot can do to a host that restores it:
//! nothing outside the restore root, nothing through a symbolic link, no
//! devices, set-id bits, capabilities or foreign owners unless the
//! operator asks, no file whose chunk list lies. Each test restores a tree
//! the `evil` system committed (with `arca_testkit::hostile`) onto the
//! honest system `good` (a real agent) into a target folder, beside a
//! canary folder that must stay as it was.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arca_e2e::{AgentUser, Stack, system};
use arca_runtime::rpc;
use arca_runtime::trust::read_audit;
use arca_schemas::msg::{JobsStarted, StartRestore};
use arca_schemas::subject::{self, SchedulerVerb};
use arca_schemas::tree::{Node, NodeKind, Xattr};
use arca_schemas::trust::AuditKind;
use arca_schemas::{JobRecord, JobStatus};
use arca_testkit::hostile::{Compromised, dir, node, plan_tree};

mod scene;

use scene::{Scene, build};

fn symlink_node(path: &[u8], target: &Path) -> Node {
    node(
        path,
        NodeKind::Symlink {
            target: target.as_os_str().as_encoded_bytes().to_vec(),
        },
        0o120777,
    )
}

fn errors_of(rec: &JobRecord) -> String {
    rec.file_errors
        .iter()
        .map(|e| format!("{}: {}\n", e.path, e.error))
        .collect()
}

fn warnings_of(rec: &JobRecord) -> String {
    rec.file_warnings
        .iter()
        .map(|e| format!("{}: {}\n", e.path, e.error))
        .collect()
}

/// Proves that traversal names (`/../x`, `//../x`, `/d/../../x`, `/..`)
/// write nothing outside the target: media may refuse the snapshot at
/// commit; if it stores it, the restoring agent refuses each such node by
/// name and restores the rest. (The agent's own check is also shown on
/// its own by the agent's unit tests, `restore::check`.)
#[tokio::test(flavor = "multi_thread")]
async fn traversal_names_write_nothing_outside_the_target() {
    let scene = Scene::start(build(|c, start| async move {
        let mut nodes = vec![dir(b"/"), dir(b"/d")];
        for (path, data) in [
            (&b"/../canary/a"[..], &b"pwned a"[..]),
            (b"//../canary/b", b"pwned b"),
            (b"/d/../../canary/c", b"pwned c"),
            (b"/d/ok", b"honest"),
        ] {
            nodes.push(c.file(&start, path, data).await.unwrap());
        }
        nodes.push(dir(b"/.."));
        nodes
    }))
    .await;
    let snapshot = match scene.evil_snapshot().await {
        Ok(s) => s,
        Err(rec) => {
            // Media refused the tree at commit: nothing can be restored.
            let why = rec.error.clone().unwrap_or_default();
            assert!(why.contains("path"), "{rec:#?}");
            return;
        }
    };
    let rec = scene.restore_onto_good(&snapshot, false).await;
    scene.canary_untouched();
    let errors = errors_of(&rec);
    for name in ["/../canary/a", "//../canary/b", "/d/../../canary/c", "/.."] {
        assert!(
            rec.file_errors
                .iter()
                .any(|e| e.path == name && e.error.contains("unsafe path")),
            "{name} not refused by name:\n{errors}"
        );
    }
    assert_eq!(
        std::fs::read(scene.target().join("d/ok")).unwrap(),
        b"honest",
        "{rec:#?}"
    );
}

/// Proves that a symbolic link the tree makes is never followed by a later
/// node under it (a link then a special file or another link under it,
/// the link absolute or relative), and that a file under it made first
/// stays inside (its folder is real, the link then cannot replace it).
#[tokio::test(flavor = "multi_thread")]
async fn a_link_then_entries_under_it_write_nothing_outside() {
    let out_canary = Arc::new(std::sync::Mutex::new(PathBuf::new()));
    let canary = out_canary.clone();
    let scene = Scene::start(build(move |c, start| {
        let canary = canary.lock().unwrap().clone();
        async move {
            vec![
                dir(b"/"),
                symlink_node(b"/a", &canary),
                symlink_node(b"/a/l", Path::new("/etc/passwd")),
                node(b"/a/p", NodeKind::Fifo, 0o010644),
                symlink_node(b"/b", Path::new("../canary")),
                node(b"/b/q", NodeKind::Fifo, 0o010644),
                symlink_node(b"/c", &canary),
                c.file(&start, b"/c/x", b"under a link").await.unwrap(),
            ]
        }
    }))
    .await;
    *out_canary.lock().unwrap() = scene.canary();
    let snapshot = scene.evil_snapshot().await.unwrap();
    let rec = scene.restore_onto_good(&snapshot, false).await;
    scene.canary_untouched();
    let errors = errors_of(&rec);
    for name in ["/a/l", "/a/p", "/b/q"] {
        assert!(
            rec.file_errors.iter().any(|e| e.path.ends_with(name)),
            "{name} not reported:\n{errors}"
        );
    }
    // The file went into a real folder inside the target.
    assert_eq!(
        std::fs::read(scene.target().join("c/x")).unwrap(),
        b"under a link"
    );
    assert!(scene.target().join("c").is_dir());
}

/// Proves that a symbolic link a local user planted in the target before
/// the restore (`target/home -> outside`) is replaced by the snapshot's
/// folder, not followed, and that one at a file's name is replaced too.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_planted_in_the_target_is_replaced_not_followed() {
    let scene = Scene::start(build(|c, start| async move {
        vec![
            dir(b"/"),
            dir(b"/home"),
            c.file(&start, b"/home/x", b"restored").await.unwrap(),
            c.file(&start, b"/f", b"restored f").await.unwrap(),
        ]
    }))
    .await;
    let snapshot = scene.evil_snapshot().await.unwrap();
    std::fs::create_dir(scene.target()).unwrap();
    std::os::unix::fs::symlink(scene.canary(), scene.target().join("home")).unwrap();
    std::os::unix::fs::symlink(scene.canary().join("kept"), scene.target().join("f")).unwrap();
    let rec = scene.restore_onto_good(&snapshot, false).await;
    scene.canary_untouched();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let home = std::fs::symlink_metadata(scene.target().join("home")).unwrap();
    assert!(home.is_dir(), "{home:?}");
    assert_eq!(
        std::fs::read(scene.target().join("home/x")).unwrap(),
        b"restored"
    );
    assert!(
        !std::fs::symlink_metadata(scene.target().join("f"))
            .unwrap()
            .is_symlink()
    );
}

/// Proves that an in-place restore racing with a local user who keeps
/// swapping a file's folder for a symbolic link to another folder never
/// writes into that other folder (50 restores, the swapping never stops).
#[tokio::test(flavor = "multi_thread")]
async fn an_in_place_restore_racing_with_a_swapped_folder_writes_nothing_outside() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    let folder = src.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..40 {
        std::fs::write(
            folder.join(format!("f{i}")),
            format!("file {i}\n").repeat(50),
        )
        .unwrap();
    }
    let outside = data.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    stack.one_system("racy", &[&src]).await.unwrap();
    let job = stack.backup(&["racy"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let snapshot = rec.snapshot.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // Set by the test to change files (not through the swapped path);
    // acknowledged by the swapper once the real folder is back in place.
    let pause = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, pause, paused) = (stop.clone(), pause.clone(), paused.clone());
        let (folder, outside) = (folder.clone(), outside.clone());
        let moved = src.join("moved");
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if pause.load(Ordering::Relaxed) {
                    paused.store(true, Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                paused.store(false, Ordering::Relaxed);
                if std::fs::rename(&folder, &moved).is_ok() {
                    let _ = std::os::unix::fs::symlink(&outside, &folder);
                    std::thread::sleep(std::time::Duration::from_micros(300));
                    let _ = std::fs::remove_file(&folder);
                    let _ = std::fs::rename(&moved, &folder);
                    swaps += 1;
                }
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
            swaps
        })
    };
    for round in 0..50 {
        // Every file differs from the snapshot, so each is rewritten.
        pause.store(true, Ordering::Relaxed);
        while !paused.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if std::fs::symlink_metadata(&folder).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&folder).unwrap().flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    std::fs::write(e.path(), format!("changed in round {round}")).unwrap();
                }
            }
        }
        pause.store(false, Ordering::Relaxed);
        let job = stack.restore(&snapshot, None).await.unwrap();
        let (_, rec) = stack.wait_job(job).await.unwrap();
        assert!(rec.status.is_final(), "{rec:#?}");
        let names: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert!(
            names.is_empty(),
            "round {round}: written outside: {names:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0, "the folder was never swapped");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// A valid `security.capability` value (revision 2) granting
/// CAP_NET_RAW.
fn capability() -> Vec<u8> {
    let mut v = 0x0200_0000u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&[0; 12]);
    v
}

async fn privileged_tree(
    c: Compromised,
    start: arca_schemas::msg::StartBackupTransfer,
) -> Vec<Node> {
    let mut su = c.file(&start, b"/su", b"#!/bin/sh\n").await.unwrap();
    su.mode = 0o106755;
    let mut cap = c.file(&start, b"/cap", b"binary").await.unwrap();
    cap.xattrs = vec![Xattr {
        name: b"security.capability".to_vec(),
        value: capability(),
    }];
    let mut foreign = c.file(&start, b"/foreign", b"theirs").await.unwrap();
    foreign.uid = 4242;
    foreign.gid = 4343;
    vec![
        dir(b"/"),
        node(b"/null", NodeKind::Device { rdev: 0x0103 }, 0o020666),
        su,
        cap,
        foreign,
    ]
}

fn has_capability(path: &Path) -> bool {
    let mut buf = [0u8; 64];
    rustix::fs::lgetxattr(path, "security.capability", &mut buf).is_ok()
}

/// Proves that a cross-system restore into a target folder makes no
/// device node, clears set-id bits, leaves out file capabilities and gives
/// files to the restoring user, reporting each item left out; and that
/// with `--keep-privileges` (recorded in the job and the audit stream)
/// all of it is kept.
#[tokio::test(flavor = "multi_thread")]
async fn devices_set_id_bits_capabilities_and_owners_are_kept_only_when_asked() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: making device nodes and giving files away needs root");
        return;
    }
    let scene = Scene::start(build(privileged_tree)).await;
    let snapshot = scene.evil_snapshot().await.unwrap();
    let t = scene.target();

    let rec = scene.restore_onto_good(&snapshot, false).await;
    let warnings = warnings_of(&rec);
    assert!(!rec.keep_privileges);
    assert!(!t.join("null").exists(), "a device node was made");
    let su = std::fs::metadata(t.join("su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o755, "{warnings}");
    assert!(!has_capability(&t.join("cap")), "{warnings}");
    let foreign = std::fs::metadata(t.join("foreign")).unwrap();
    assert_eq!((foreign.uid(), foreign.gid()), (0, 0));
    for (name, what) in [
        ("/null", "device node"),
        ("/su", "set-user-id"),
        ("/cap", "security.*"),
    ] {
        assert!(
            rec.file_warnings.iter().any(|w| w.path.ends_with(name)
                && w.error.contains(what)
                && w.error.contains("--keep-privileges")),
            "{name} not reported:\n{warnings}"
        );
    }
    assert!(
        warnings.contains("given to the restoring user"),
        "{warnings}"
    );

    std::fs::remove_dir_all(&t).unwrap();
    let rec = scene.restore_onto_good(&snapshot, true).await;
    assert!(rec.keep_privileges);
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let null = std::fs::symlink_metadata(t.join("null")).unwrap();
    assert_eq!(null.rdev(), 0x0103);
    assert_eq!(
        std::fs::metadata(t.join("su"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o6755
    );
    assert!(has_capability(&t.join("cap")));
    let foreign = std::fs::metadata(t.join("foreign")).unwrap();
    assert_eq!((foreign.uid(), foreign.gid()), (4242, 4343));
    let audit = read_audit(&scene.stack.js, None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.kind == AuditKind::CrossSystemRestore && a.keep_privileges),
        "{audit:#?}"
    );
}

/// Proves that a file whose chunk list lies fails by name and is not
/// written, while the honest files of the same tree restore: a `sizes`
/// list shorter than its chunks, a size of 4 GiB for one small chunk, and
/// a chunk whose plain bytes are longer than the tree says.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_whose_chunk_sizes_lie_fails_by_name() {
    let scene = Scene::start(build(|c, start| async move {
        let a = c.put(&start, b"first", false).await.unwrap();
        let b = c.put(&start, b"second", false).await.unwrap();
        let mut short = node(
            b"/short",
            NodeKind::File {
                chunks: vec![a, b],
                sizes: vec![5],
            },
            0o100644,
        );
        short.size = 5;
        let mut huge = node(
            b"/huge",
            NodeKind::File {
                chunks: vec![a],
                sizes: vec![u32::MAX],
            },
            0o100644,
        );
        huge.size = u64::from(u32::MAX);
        let mut liar = node(
            b"/liar",
            NodeKind::File {
                chunks: vec![b],
                sizes: vec![3],
            },
            0o100644,
        );
        liar.size = 3;
        vec![
            dir(b"/"),
            short,
            huge,
            liar,
            c.file(&start, b"/fine", b"fine").await.unwrap(),
        ]
    }))
    .await;
    let snapshot = scene.evil_snapshot().await.unwrap();
    let rec = scene.restore_onto_good(&snapshot, false).await;
    let errors = errors_of(&rec);
    for name in ["/short", "/huge", "/liar"] {
        assert!(
            rec.file_errors.iter().any(|e| e.path.ends_with(name)),
            "{name} not failed by name:\n{errors}"
        );
        assert!(
            !scene.target().join(&name[1..]).exists(),
            "{name} was written:\n{errors}"
        );
    }
    assert_ne!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert_eq!(std::fs::read(scene.target().join("fine")).unwrap(), b"fine");
}

/// Proves that a restore into a target folder of a system's own snapshot
/// also leaves privileges out unless asked, and that the `privileged-restore`
/// audit record names it when they are kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_into_a_target_folder_keeps_set_id_bits_only_when_asked() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    stack.one_system("own", &[&src]).await.unwrap();
    let job = stack.backup(&["own"]).await.unwrap()[0];
    let snapshot = stack.wait_job(job).await.unwrap().1.snapshot.unwrap();
    let tool = |t: &Path| t.join(src.strip_prefix("/").unwrap()).join("tool");

    let plain = data.path().join("plain");
    let job = stack.restore(&snapshot, Some(&plain)).await.unwrap();
    let rec = stack.wait_job(job).await.unwrap().1;
    let mode = std::fs::metadata(tool(&plain))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "{rec:#?}");
    assert!(warnings_of(&rec).contains("set-user-id"), "{rec:#?}");

    let kept = data.path().join("kept");
    let job = stack
        .restore_with(&snapshot, Some(&kept), Default::default(), true)
        .await
        .unwrap();
    let rec = stack.wait_job(job).await.unwrap().1;
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let mode = std::fs::metadata(tool(&kept)).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o4755);
    let audit = read_audit(&stack.js, None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.kind == AuditKind::PrivilegedRestore && a.job == Some(job)),
        "{audit:#?}"
    );
}

/// What the compromised target of a restore could read, in its own words.
#[derive(Debug, Default)]
struct Probe {
    granted_chunk: Option<Result<(), String>>,
    other_snapshot_many: Option<Result<(), String>>,
    other_snapshot_one: Option<Result<(), String>>,
}

fn outcome(r: Result<(), rpc::RpcError>) -> Result<(), String> {
    r.map_err(|e| e.to_string())
}

/// Proves that a cross-system restore grant lets the target read only the
/// chunks of the granted snapshot (not another snapshot of the source),
/// only while its job runs, and without the source's chunk-id key: the
/// target is handed the grant's check key instead, and every chunk media
/// serves carries a check value under it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_grant_reads_only_the_granted_snapshot_while_its_job_runs() {
    use arca_schemas::ChunkId;
    use arca_schemas::msg::{
        ChunkData, ChunkKey, ChunksData, GetChunk, GetChunkKey, GetChunks, StartRestoreTransfer,
        TransferOutcome, TransferState,
    };
    use arca_schemas::subject::{MediaDataVerb, MediaVerb};

    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), b"granted content").unwrap();
    let thief_data = tempfile::tempdir().unwrap();
    stack
        .load_systems(vec![
            system("ra", &[data.path()]),
            system("thief", &[thief_data.path()]),
        ])
        .await
        .unwrap();
    stack.start_agent("ra", AgentUser::Same).await.unwrap();
    let job = stack.backup(&["ra"]).await.unwrap()[0];
    let granted = stack.wait_job(job).await.unwrap().1.snapshot.unwrap();
    std::fs::write(data.path().join("secret.txt"), b"not granted").unwrap();
    let job = stack.backup(&["ra"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let ra_key: ChunkKey = rpc::request(
        &stack.client,
        subject::media("main", MediaVerb::ChunkKey),
        &GetChunkKey {
            system: "ra".into(),
        },
    )
    .await
    .unwrap();
    let granted_id = ChunkId(*blake3::keyed_hash(&ra_key.key, b"granted content").as_bytes());
    let secret_id = ChunkId(*blake3::keyed_hash(&ra_key.key, b"not granted").as_bytes());

    let thief = stack.compromised("thief").await.unwrap();
    let probe = Arc::new(std::sync::Mutex::new(Probe::default()));
    let p = probe.clone();
    let restore: arca_testkit::hostile::RestorePlan =
        Arc::new(move |c: Compromised, start: StartRestoreTransfer| {
            let p = p.clone();
            Box::pin(async move {
                let session = start.session.clone();
                let many = |ids: Vec<ChunkId>| {
                    let (c, start, session) = (c.clone(), start.clone(), session.clone());
                    async move {
                        c.media_request::<_, ChunksData>(
                            &start.media,
                            MediaDataVerb::GetMany,
                            &GetChunks { ids, session },
                        )
                        .await
                    }
                };
                // The granted snapshot's chunk: served, with a check value
                // under the key this agent was given.
                let r = many(vec![granted_id])
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|d| {
                        let f = &d.chunks[0];
                        let (Some(frame), Some(check)) = (&f.frame, f.check) else {
                            return Err(format!("no frame or check value: {f:?}"));
                        };
                        // As the restoring agent checks it.
                        arca_frame::decode(frame, &start.chunk_key, &check)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    });
                p.lock().unwrap().granted_chunk = Some(r);
                let r = outcome(many(vec![granted_id, secret_id]).await.map(|_| ()));
                p.lock().unwrap().other_snapshot_many = Some(r);
                let r: Result<ChunkData, _> = c
                    .media_request(
                        &start.media,
                        MediaDataVerb::Get,
                        &GetChunk {
                            id: secret_id,
                            session: session.clone(),
                        },
                    )
                    .await;
                p.lock().unwrap().other_snapshot_one = Some(outcome(r.map(|_| ())));
                TransferState::Done(TransferOutcome {
                    stats: Default::default(),
                    snapshot: Some(start.snapshot.clone()),
                    file_errors: vec![],
                    file_warnings: vec![],
                    error: None,
                })
            })
        });
    let _serving = thief
        .serve_with(plan_tree(|_, _| async { vec![] }), Some(restore))
        .await
        .unwrap();
    let r: JobsStarted = rpc::request(
        &stack.client,
        subject::scheduler("main", SchedulerVerb::Restore),
        &StartRestore {
            snapshot: granted.clone(),
            target: Some("/restore".into()),
            to_system: Some("thief".into()),
            allow_cross_system: true,
            operator: Some("alice".into()),
            filter: Default::default(),
            keep_privileges: false,
        },
    )
    .await
    .unwrap();
    let (_, rec) = stack.wait_job(r.jobs[0]).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");

    let probe = std::mem::take(&mut *probe.lock().unwrap());
    assert_eq!(probe.granted_chunk, Some(Ok(())), "{probe:?}");
    for r in [&probe.other_snapshot_many, &probe.other_snapshot_one] {
        let e = r
            .clone()
            .expect("probed")
            .expect_err("a chunk of another snapshot was served");
        assert!(e.contains("not part of snapshot"), "{e}");
    }
    let start = thief.restores.lock().unwrap()[0].clone();
    assert_ne!(
        start.chunk_key, ra_key.key,
        "the target was handed the source's chunk-id key"
    );
    // The job ended: the grant is closed.
    let after: Result<ChunksData, _> = thief
        .media_request(
            "main",
            MediaDataVerb::GetMany,
            &GetChunks {
                ids: vec![granted_id],
                session: start.session.clone(),
            },
        )
        .await;
    let e = after.expect_err("the grant outlived its job").to_string();
    assert!(e.contains("no restore session"), "{e}");
}
