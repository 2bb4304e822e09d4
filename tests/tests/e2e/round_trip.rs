use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use arca_e2e::Stack;
use arca_testkit::tree::{compare, write_pseudo_random};
use filetime::FileTime;

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Nested folders, empty files and folders, a 100 MB file, symlinks
/// (relative, absolute, dangling), a non-UTF-8 name, unusual modes, owners
/// and mtimes with nanoseconds.
fn build_tree(root: &Path) {
    let deep = root.join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("a/empty-file"), b"").unwrap();
    std::fs::write(deep.join("deep.txt"), b"deep inside\n".repeat(1000)).unwrap();
    write_pseudo_random(&root.join("big.bin"), 100_000_000, 7).unwrap();
    std::fs::write(
        root.join("text.txt"),
        b"compressible line of text\n".repeat(50_000),
    )
    .unwrap();
    std::fs::write(
        root.join(OsStr::from_bytes(b"caf\xe9-latin1.txt")),
        b"not utf-8 name",
    )
    .unwrap();
    std::os::unix::fs::symlink("a/b/c/deep.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("link-dangling")).unwrap();
    std::fs::write(root.join("secret"), b"private").unwrap();
    set_mode(&root.join("secret"), 0o600);
    std::fs::write(root.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    set_mode(&root.join("script.sh"), 0o755);
    std::fs::write(root.join("owned"), b"someone else's").unwrap();
    std::os::unix::fs::chown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    set_mode(&root.join("owned"), 0o4750);
    std::os::unix::fs::lchown(root.join("link-rel"), Some(4321), Some(8765)).unwrap();
    set_mode(&root.join("a/b"), 0o700);
    // mtimes last, deepest first, with nanoseconds.
    let mut stamp = 1_500_000_000i64;
    for rel in [
        "a/b/c/deep.txt",
        "a/empty-file",
        "big.bin",
        "text.txt",
        "secret",
        "script.sh",
        "owned",
    ] {
        stamp += 1000;
        let t = FileTime::from_unix_time(stamp, 123_456_789);
        filetime::set_file_times(root.join(rel), t, t).unwrap();
    }
    let t = FileTime::from_unix_time(1_400_000_000, 42);
    filetime::set_symlink_file_times(root.join("link-rel"), t, t).unwrap();
    for rel in ["a/b/c", "a/b", "a", "empty-dir"] {
        stamp += 1000;
        let t = FileTime::from_unix_time(stamp, 987_654_321);
        filetime::set_file_times(root.join(rel), t, t).unwrap();
    }
}

fn restored_path(target: &Path, original: &Path) -> std::path::PathBuf {
    target.join(original.strip_prefix("/").unwrap())
}

/// Restores `snap` into `target` through the operator's console and
/// checks that the restored copy of `src` equals it.
fn restore_equal(stack: &Stack, snap: &str, target: &Path, src: &Path) {
    // Faithful in metadata too (owners, set-id bits): a restore into a
    // target folder keeps them only when asked.
    let out = stack.arca(&[
        "restore",
        snap,
        "--target",
        target.to_str().unwrap(),
        "--keep-privileges",
    ]);
    assert!(
        out.status.success(),
        "restore failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    compare(src, &restored_path(target, src)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_restores_equal_byte_for_byte_and_in_metadata() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    build_tree(&src);
    stack.one_system("rt", &[&src]).await.unwrap();

    // Back up through the operator's console.
    let out = stack.arca(&["backup", "rt"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "backup failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("succeeded"), "{stdout}");
    let snaps = stack.snapshots("rt").await.unwrap();
    assert_eq!(snaps.len(), 1);
    let snap = snaps[0].id.to_string();
    assert_eq!(snaps[0].stats.files, 8);

    // Restore into another folder: equal to the original.
    let target = data.path().join("restored");
    restore_equal(&stack, &snap, &target, &src);

    // Damage the original, then restore in place: back as it was.
    std::fs::remove_file(src.join("a/b/c/deep.txt")).unwrap();
    std::fs::write(src.join("text.txt"), b"overwritten").unwrap();
    std::fs::remove_file(src.join("link-rel")).unwrap();
    let out = stack.arca(&["restore", &snap]);
    assert!(
        out.status.success(),
        "in-place restore failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    compare(&restored_path(&target, &src), &src).unwrap();

    // The list commands show the history.
    let jobs = stack.arca(&["jobs"]);
    let jobs = String::from_utf8_lossy(&jobs.stdout);
    assert_eq!(jobs.matches("succeeded").count(), 3, "{jobs}");
    let listed = stack.arca(&["snapshots"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&snap));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_hundreds_of_folders_deep_restores_equal() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    // Deeper than the folders the walk holds open: below that depth,
    // entries are read by their whole path. Siblings on the way check the
    // order and the paths made at every depth.
    let mut dir = src.clone();
    for level in 0..300 {
        dir.push(if level % 2 == 0 { "d" } else { "e-deeper" });
        std::fs::create_dir_all(&dir).unwrap();
        if level % 50 == 0 || level > 290 {
            std::fs::write(dir.join("f"), format!("level {level}")).unwrap();
            std::fs::write(dir.join("d-"), b"after the folder d").unwrap();
            std::os::unix::fs::symlink("f", dir.join("c")).unwrap();
        }
    }
    stack.one_system("deep", &[&src]).await.unwrap();
    let job = stack.backup(&["deep"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, arca_schemas::JobStatus::Succeeded, "{rec:#?}");
    assert!(rec.file_errors.is_empty(), "{:?}", rec.file_errors);
    // 15 levels with two files each (links are not counted as files).
    assert_eq!(rec.stats.files, 30, "{rec:#?}");
    let snap = rec.snapshot.expect("a snapshot").to_string();
    let target = data.path().join("restored");
    restore_equal(&stack, &snap, &target, &src);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_tree_moves_no_new_chunks_the_second_time() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    write_pseudo_random(&data.path().join("f"), 20_000_000, 1).unwrap();
    stack.one_system("dd", &[data.path()]).await.unwrap();
    let first = stack.backup(&["dd"]).await.unwrap()[0];
    let (_, rec1) = stack.wait_job(first).await.unwrap();
    let second = stack.backup(&["dd"]).await.unwrap()[0];
    let (_, rec2) = stack.wait_job(second).await.unwrap();
    assert!(rec1.stats.new_chunks > 0);
    // Nothing changed, so even the tree chunk is one media already holds.
    assert_eq!(rec2.stats.new_chunks, 0, "{rec2:#?}");
    assert_ne!(rec1.snapshot, rec2.snapshot);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_backup_reads_only_changed_files_and_each_snapshot_restores_its_own_time() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..10u64 {
        write_pseudo_random(&src.join(format!("sub/f{i}")), 500_000, i).unwrap();
    }
    std::fs::write(src.join("same-size.txt"), b"version one").unwrap();
    std::fs::write(src.join("touched.txt"), b"unchanged content").unwrap();
    set_xattr(
        &src.join("sub/f4"),
        "user.gone",
        b"removed before the second",
    );
    std::os::unix::fs::symlink("sub/f2", src.join("link")).unwrap();
    stack.one_system("inc", &[&src]).await.unwrap();
    let first = stack.backup(&["inc"]).await.unwrap()[0];
    let (_, r1) = stack.wait_job(first).await.unwrap();
    assert_eq!(r1.stats.unchanged_files, 0);
    let at_first = data.path().join("at-first");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&at_first)
            .status()
            .unwrap()
            .success()
    );

    // Same size, same mtime, other bytes: only the ctime tells.
    let t = FileTime::from_last_modification_time(
        &std::fs::metadata(src.join("same-size.txt")).unwrap(),
    );
    std::fs::write(src.join("same-size.txt"), b"version two").unwrap();
    filetime::set_file_mtime(src.join("same-size.txt"), t).unwrap();
    // Touched without change, added, deleted, renamed.
    filetime::set_file_mtime(
        src.join("touched.txt"),
        FileTime::from_unix_time(1_600_000_000, 0),
    )
    .unwrap();
    std::fs::write(src.join("added.txt"), b"new file").unwrap();
    std::fs::remove_file(src.join("sub/f0")).unwrap();
    std::fs::rename(src.join("sub/f1"), src.join("sub/f1-renamed")).unwrap();
    // Metadata only: attributes added and removed (on a file and on a
    // folder), a mode, a link pointing elsewhere. Each moves the change
    // time, so none of them is taken from the first snapshot.
    set_xattr(&src.join("sub/f2"), "user.added", b"after the first backup");
    rustix::fs::lremovexattr(src.join("sub/f4"), "user.gone").unwrap();
    set_xattr(&src.join("sub"), "user.folder", b"on the folder now");
    std::fs::set_permissions(src.join("sub/f5"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::remove_file(src.join("link")).unwrap();
    std::os::unix::fs::symlink("sub/f3", src.join("link")).unwrap();

    let second = stack.backup(&["inc"]).await.unwrap()[0];
    let (_, r2) = stack.wait_job(second).await.unwrap();
    assert_eq!(r2.status, arca_schemas::JobStatus::Succeeded);
    // f3 and f6..f9 are unchanged; the renamed file has a new path, so it
    // is read (and deduplicates); the others changed, in content or in
    // metadata.
    assert_eq!(r2.stats.unchanged_files, 5, "{r2:#?}");
    assert_eq!(r2.stats.files, 12);

    for (snap, expected) in [
        (r1.snapshot.unwrap(), &at_first),
        (r2.snapshot.unwrap(), &src),
    ] {
        let target = data.path().join(format!("restored-{snap}"));
        let job = stack.restore(&snap, Some(&target)).await.unwrap();
        assert_eq!(
            stack.wait_job(job).await.unwrap().1.status,
            arca_schemas::JobStatus::Succeeded
        );
        compare(expected, &restored_path(&target, &src)).unwrap();
    }
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn restoring_many_files_holds_no_descriptor_after_each_file() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("many");
    for d in 0..20 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(
                dir.join(format!("f{f}")),
                format!("file {d}/{f}\n").repeat(d + 1),
            )
            .unwrap();
        }
    }
    stack.one_system("fds", &[&src]).await.unwrap();
    let job = stack.backup(&["fds"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    let before = open_fds(stack.pid("agent-fds"));
    let target = data.path().join("restored");
    let job = stack
        .restore(rec.snapshot.as_ref().unwrap(), Some(&target))
        .await
        .unwrap();
    let (_, rrec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rrec.status, arca_schemas::JobStatus::Succeeded, "{rrec:#?}");
    assert_eq!(rrec.stats.files, 2000);
    compare(&src, &restored_path(&target, &src)).unwrap();
    let after = open_fds(stack.pid("agent-fds"));
    assert!(
        after < before + 50,
        "the agent holds {after} descriptors after the restore, {before} before"
    );
}
