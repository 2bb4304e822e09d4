//! Faithful restores beyond plain files: hard links, holes, special files,
//! extended attributes and ACLs, owners; partial restores, restores over
//! an existing tree, files changing while read, selections, and randomly
//! generated trees.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arca_e2e::{Stack, system};
use arca_schemas::{JobStatus, PathFilter, SnapshotId};
use arca_testkit::tree::{compare, write_pseudo_random};
use rustix::fs::{FileType, Mode, XattrFlags};

fn restored_path(target: &Path, original: &Path) -> PathBuf {
    target.join(original.strip_prefix("/").unwrap())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

/// A POSIX ACL in the kernel's extended attribute form: (tag, perm, id).
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}
const UNDEFINED: u32 = u32::MAX;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

fn mknod(path: &Path, kind: FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, Mode::from_raw_mode(mode), dev).unwrap();
}

async fn one_system(stack: &mut Stack, name: &str, paths: &[&Path]) {
    stack.one_system(name, paths).await.unwrap();
}

async fn backed_up(stack: &Stack, name: &str) -> (SnapshotId, arca_schemas::JobRecord) {
    let job = stack.backup(&[name]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    (rec.snapshot.clone().unwrap(), rec)
}

async fn restored(
    stack: &Stack,
    snap: &SnapshotId,
    target: Option<&Path>,
    filter: PathFilter,
) -> arca_schemas::JobRecord {
    // Faithful: into a target folder, devices, set-id bits, capabilities
    // and owners are kept only when asked.
    let job = stack
        .restore_with(snap, target, filter, true)
        .await
        .unwrap();
    stack.wait_job(job).await.unwrap().1
}

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "arca failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn links_holes_special_files_attributes_and_owners_restore_as_they_were() {
    assert!(
        rustix::process::geteuid().is_root(),
        "device nodes and foreign owners need root"
    );
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::create_dir_all(src.join("elsewhere")).unwrap();

    // One file, three names.
    write_pseudo_random(&src.join("data/file"), 300_000, 1).unwrap();
    std::fs::hard_link(src.join("data/file"), src.join("data/other-name")).unwrap();
    std::fs::hard_link(src.join("data/file"), src.join("elsewhere/third-name")).unwrap();
    // 64 MiB with 2 MiB of data: holes at the start, middle and end.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(src.join("sparse.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        let chunk = vec![0xA5u8; 1 << 20];
        f.write_all_at(&chunk, 8 << 20).unwrap();
        f.write_all_at(&chunk, 40 << 20).unwrap();
    }
    let md = std::fs::metadata(src.join("sparse.img")).unwrap();
    assert!(
        md.blocks() * 512 < md.size(),
        "this file system keeps holes"
    );
    // Special files.
    mknod(&src.join("fifo"), FileType::Fifo, 0o640, 0);
    mknod(
        &src.join("null-dev"),
        FileType::CharacterDevice,
        0o666,
        rustix::fs::makedev(1, 3),
    );
    mknod(
        &src.join("loop-dev"),
        FileType::BlockDevice,
        0o660,
        rustix::fs::makedev(7, 200),
    );
    drop(std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap());
    // Extended attributes, an access ACL and a default ACL.
    std::fs::write(src.join("data/notes"), b"notes").unwrap();
    set_xattr(
        &src.join("data/notes"),
        "user.comment",
        b"kept with the file",
    );
    set_xattr(&src.join("data/notes"), "user.binary", &[0, 1, 2, 255]);
    set_xattr(&src.join("data"), "user.folder", b"kept with the folder");
    std::fs::write(src.join("shared.txt"), b"shared").unwrap();
    set_xattr(
        &src.join("shared.txt"),
        "system.posix_acl_access",
        &acl(&[
            (USER_OBJ, 6, UNDEFINED),
            (USER, 6, 1234),
            (GROUP_OBJ, 4, UNDEFINED),
            (MASK, 6, UNDEFINED),
            (OTHER, 0, UNDEFINED),
        ]),
    );
    set_xattr(
        &src.join("elsewhere"),
        "system.posix_acl_default",
        &acl(&[
            (USER_OBJ, 7, UNDEFINED),
            (USER, 5, 1234),
            (GROUP_OBJ, 5, UNDEFINED),
            (MASK, 5, UNDEFINED),
            (OTHER, 0, UNDEFINED),
        ]),
    );
    // Owners with and without a name on this system.
    std::fs::write(src.join("by-nobody"), b"n").unwrap();
    std::os::unix::fs::chown(src.join("by-nobody"), Some(65534), Some(65534)).unwrap();
    std::fs::write(src.join("by-unnamed"), b"u").unwrap();
    std::os::unix::fs::chown(src.join("by-unnamed"), Some(54321), Some(54321)).unwrap();

    one_system(&mut stack, "meta", &[&src]).await;
    let (snap, _) = backed_up(&stack, "meta").await;
    let target = data.path().join("restored");
    let rec = restored(&stack, &snap, Some(&target), PathFilter::default()).await;
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let out = restored_path(&target, &src);
    compare(&src, &out).unwrap();
    // The names are one inode again, not three copies.
    let a = std::fs::metadata(out.join("data/file")).unwrap();
    let c = std::fs::metadata(out.join("elsewhere/third-name")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (c.ino(), 3));

    // Another name restored without its first name is written as a copy.
    let only = data.path().join("only-third");
    let rec = restored(
        &stack,
        &snap,
        Some(&only),
        PathFilter {
            include: vec!["third-name".into()],
            exclude: vec![],
        },
    )
    .await;
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let copy = restored_path(&only, &src).join("elsewhere/third-name");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(src.join("data/file")).unwrap()
    );
    assert_eq!(std::fs::metadata(&copy).unwrap().nlink(), 1);
    assert!(!restored_path(&only, &src).join("data").exists());

    // `arca ls` shows kinds, owners by name, links.
    let snap_s = snap.to_string();
    let listing = stdout(&stack.arca(&["ls", &snap_s, src.to_str().unwrap()]));
    assert!(listing.contains("nobody"), "{listing}");
    assert!(
        listing.contains(&format!(
            "{} (link to {})",
            src.join("data/other-name").display(),
            src.join("data/file").display()
        )),
        "{listing}"
    );
    for line_start in ["p", "c", "b", "s"] {
        assert!(
            listing.lines().any(|l| l.starts_with(line_start)),
            "no {line_start} entry in {listing}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn include_and_exclude_restore_exactly_the_matching_paths_and_diff_names_the_changes() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    for f in [
        "etc/app.conf",
        "etc/app.log",
        "var/log/x.log",
        "var/lib/db/table",
        "var/lib/db/table.conf",
        "home/u/notes.conf",
    ] {
        let p = src.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f.as_bytes()).unwrap();
    }
    one_system(&mut stack, "part", &[&src]).await;
    let (first, _) = backed_up(&stack, "part").await;

    let target = data.path().join("restored");
    let home = format!("{}/home", src.display());
    let rec = restored(
        &stack,
        &first,
        Some(&target),
        PathFilter {
            include: vec!["*.conf".into(), format!("{}/var/lib", src.display())],
            exclude: vec![home, "table.conf".into()],
        },
    )
    .await;
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let out = restored_path(&target, &src);
    let mut got = Vec::new();
    for e in walk(&out) {
        if e.is_file() {
            got.push(e.strip_prefix(&out).unwrap().display().to_string());
        }
    }
    got.sort();
    assert_eq!(got, vec!["etc/app.conf", "var/lib/db/table"]);

    // A pattern that matches nothing is an error, not an empty success.
    let rec = restored(
        &stack,
        &first,
        Some(&data.path().join("none")),
        PathFilter {
            include: vec!["*.nothing".into()],
            exclude: vec![],
        },
    )
    .await;
    assert_eq!(rec.status, JobStatus::Failed);
    assert!(rec.error.unwrap().contains("arca ls"));

    // diff: one added, one removed, one changed, one with new metadata.
    std::fs::write(src.join("etc/new.conf"), b"new").unwrap();
    std::fs::remove_file(src.join("etc/app.log")).unwrap();
    std::fs::write(src.join("var/log/x.log"), b"other content").unwrap();
    std::fs::set_permissions(
        src.join("home/u/notes.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (second, _) = backed_up(&stack, "part").await;
    let diff = stdout(&stack.arca(&["diff", &first.to_string(), &second.to_string()]));
    let line = |mark: &str, rel: &str| format!("{mark}    {}", src.join(rel).display());
    for (mark, rel) in [
        ("+", "etc/new.conf"),
        ("-", "etc/app.log"),
        ("M", "var/log/x.log"),
        ("m", "home/u/notes.conf"),
    ] {
        assert!(diff.lines().any(|l| l == line(mark, rel)), "{diff}");
    }
    assert!(
        !diff.contains("etc/app.conf\n"),
        "an unchanged file is listed: {diff}"
    );
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        out.push(p);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_over_a_tree_rewrites_only_what_differs_and_an_interrupted_one_finishes_when_run_again()
 {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40u64 {
        write_pseudo_random(&src.join(format!("f{i:02}")), 3_000_000, i).unwrap();
    }
    one_system(&mut stack, "over", &[&src]).await;
    let (snap, _) = backed_up(&stack, "over").await;
    let expected = data.path().join("expected");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&expected)
            .status()
            .unwrap()
            .success()
    );

    // In place, over the tree with one file changed and one removed.
    write_pseudo_random(&src.join("f03"), 3_000_000, 999).unwrap();
    std::fs::remove_file(src.join("f04")).unwrap();
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let before: Vec<u64> = (5..40)
        .map(|i| inode(&src.join(format!("f{i:02}"))))
        .collect();
    let rec = restored(&stack, &snap, None, PathFilter::default()).await;
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert_eq!(rec.stats.unchanged_files, 38, "{rec:#?}");
    compare(&expected, &src).unwrap();
    let after: Vec<u64> = (5..40)
        .map(|i| inode(&src.join(format!("f{i:02}"))))
        .collect();
    assert_eq!(before, after, "unchanged files were rewritten");

    // Into a new folder, cancelled part way, then run again.
    let target = data.path().join("restored");
    let out = restored_path(&target, &src);
    let job = stack
        .restore_with(&snap, Some(&target), PathFilter::default(), true)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = std::fs::read_dir(&out)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with('f'))
                    .count()
            })
            .unwrap_or(0);
        if done >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing restored");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stack.cancel(job).await.unwrap();
    let first = stack.wait_job(job).await.unwrap().1;
    let whole_before = first.stats.files;
    let rec = restored(&stack, &snap, Some(&target), PathFilter::default()).await;
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    compare(&expected, &out).unwrap();
    assert!(
        rec.stats.unchanged_files >= whole_before.min(40),
        "files finished by the interrupted run were restored again: {} unchanged, {whole_before} done before",
        rec.stats.unchanged_files
    );
    assert_eq!(
        rec.stats.unchanged_files + rec.stats.files,
        40,
        "{:#?}",
        rec.stats
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_while_it_is_read_is_marked_and_reported_and_the_backup_completes() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let busy = src.join("busy.log");
    write_pseudo_random(&busy, 150_000_000, 3).unwrap();
    std::fs::write(src.join("quiet.txt"), b"still").unwrap();
    one_system(&mut stack, "busy", &[&src]).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let busy = busy.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&busy)
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"another line\n").unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let job = stack.backup(&["busy"]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();

    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert_eq!(rec.file_warnings.len(), 1, "{rec:#?}");
    assert_eq!(rec.file_warnings[0].path, busy.display().to_string());
    assert!(
        rec.file_warnings[0]
            .error
            .contains("changed while it was read")
    );
    assert!(
        arca_e2e::kinds(&events).contains(&"file-warning"),
        "{:?}",
        arca_e2e::kinds(&events)
    );
    let snap = rec.snapshot.unwrap().to_string();
    let listing = stdout(&stack.arca(&["ls", &snap, busy.to_str().unwrap()]));
    assert!(listing.contains("(changed while read)"), "{listing}");
    let listing = stdout(&stack.arca(&["ls", &snap, src.join("quiet.txt").to_str().unwrap()]));
    assert!(!listing.contains("changed"), "{listing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_selection_leaves_out_excluded_paths_tagged_caches_and_other_file_systems() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    for f in [
        "keep/a.txt",
        "keep/b.tmp",
        "skip/c.txt",
        "cache/d.bin",
        "mnt/.keep",
    ] {
        let p = src.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f.as_bytes()).unwrap();
    }
    std::fs::write(
        src.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    )
    .unwrap();
    // Another file system under the tree.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "arca-test"])
        .arg(src.join("mnt"))
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mounting a tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(src.join("mnt"));
    std::fs::write(src.join("mnt/on-tmpfs"), b"elsewhere").unwrap();

    let mut sys = system("sel", &[&src]);
    sys.exclude = vec!["*.tmp".into(), format!("{}/skip", src.display())];
    sys.exclude_caches = true;
    sys.one_file_system = true;
    stack.load_systems(vec![sys]).await.unwrap();
    stack
        .start_agent("sel", arca_e2e::AgentUser::Same)
        .await
        .unwrap();
    let (snap, _) = backed_up(&stack, "sel").await;
    let listing = stdout(&stack.arca(&["ls", &snap.to_string(), "--json"]));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&listing).unwrap();
    let mut paths: Vec<String> = entries
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = serde_json::from_value(e["node"]["path"].clone()).unwrap();
            String::from_utf8(bytes)
                .unwrap()
                .strip_prefix(&src.display().to_string())
                .unwrap()
                .to_owned()
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "",
            "/cache",
            "/cache/CACHEDIR.TAG",
            "/keep",
            "/keep/a.txt",
            "/mnt"
        ]
    );
}

/// Randomly generated trees (names, sizes, hard links, symlinks, modes,
/// extended attributes) restore equal to the original.
#[test]
fn random_trees_restore_equal() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};

    #[derive(Debug, Clone)]
    enum Entry {
        File { size: usize, seed: u64, mode: u32 },
        Dir { mode: u32 },
        Link { to: usize },
        HardLink { to: usize },
    }
    let name = "[a-zA-Z0-9 ._-]{1,12}";
    let entry = prop_oneof![
        4 => (0usize..300_000, any::<u64>(), prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o444, 0o4755])).prop_map(|(size, seed, mode)| Entry::File { size, seed, mode }),
        2 => prop::sample::select(vec![0o755u32, 0o700, 0o1777]).prop_map(|mode| Entry::Dir { mode }),
        1 => (0usize..64).prop_map(|to| Entry::Link { to }),
        1 => (0usize..64).prop_map(|to| Entry::HardLink { to }),
    ];
    let xattr = prop::option::of(("[a-z]{1,8}", prop::collection::vec(any::<u8>(), 0..40)));
    let tree = prop::collection::vec((name, 0usize..8, entry, xattr), 1..40);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut stack = rt.block_on(Stack::start()).unwrap();
    rt.block_on(one_system(&mut stack, "random", &[&src]));
    let case = std::cell::Cell::new(0);

    let mut runner = TestRunner::new(Config {
        cases: 6,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0A2C_A004),
        ..Config::default()
    });
    runner
        .run(&tree, |entries| {
            case.set(case.get() + 1);
            // Build: each entry goes into the folder of an earlier one.
            let _ = std::fs::remove_dir_all(&src);
            std::fs::create_dir_all(&src).unwrap();
            let mut made: Vec<PathBuf> = Vec::new();
            let mut dirs: Vec<PathBuf> = vec![src.clone()];
            for (i, (name, parent, e, x)) in entries.iter().enumerate() {
                let dir = dirs[parent % dirs.len()].clone();
                let p = dir.join(format!("{i}-{name}"));
                match e {
                    Entry::File { size, seed, mode } => {
                        write_pseudo_random(&p, *size as u64, *seed).unwrap();
                        std::fs::set_permissions(
                            &p,
                            std::os::unix::fs::PermissionsExt::from_mode(*mode),
                        )
                        .unwrap();
                    }
                    Entry::Dir { .. } => {
                        std::fs::create_dir(&p).unwrap();
                        dirs.push(p.clone());
                    }
                    Entry::Link { to } => {
                        let target = made
                            .get(to % made.len().max(1))
                            .cloned()
                            .unwrap_or_default();
                        std::os::unix::fs::symlink(&target, &p).unwrap();
                    }
                    Entry::HardLink { to } => {
                        let files: Vec<&PathBuf> = made
                            .iter()
                            .filter(|m| m.is_file() && !m.is_symlink())
                            .collect();
                        match files.get(to % files.len().max(1)) {
                            Some(f) => std::fs::hard_link(f, &p).unwrap(),
                            None => std::fs::write(&p, b"").unwrap(),
                        }
                    }
                }
                if let Some((xn, xv)) = x
                    && !p.is_symlink()
                {
                    set_xattr(&p, &format!("user.{xn}"), xv);
                }
                made.push(p);
            }
            // Folder modes last, so that read-only folders could be filled.
            for (i, (name, parent, e, _)) in entries.iter().enumerate() {
                let _ = (name, parent, i);
                if let Entry::Dir { mode } = e {
                    let p = made[i].clone();
                    std::fs::set_permissions(
                        &p,
                        std::os::unix::fs::PermissionsExt::from_mode(*mode),
                    )
                    .unwrap();
                }
            }
            let target = data.path().join(format!("restored-{}", case.get()));
            let result = rt.block_on(async {
                let job = stack.backup(&["random"]).await.unwrap()[0];
                let (_, rec) = stack.wait_job(job).await.unwrap();
                assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
                restored(
                    &stack,
                    &rec.snapshot.unwrap(),
                    Some(&target),
                    PathFilter::default(),
                )
                .await
            });
            prop_assert_eq!(result.status, JobStatus::Succeeded, "{:#?}", result);
            let r = compare(&src, &restored_path(&target, &src));
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            Ok(())
        })
        .unwrap();
    drop(stack);
}
