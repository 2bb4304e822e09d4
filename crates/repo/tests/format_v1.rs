//! Repository format version 1, read by this build.
//!
//! Fixture: `tests/fixtures/v1/` was written by the release before the
//! snapshot record had types of its own (the record then embedded the
//! wire's `SnapshotInfo`):
//!
//! - `key`: the repository key file (not sealed by a passphrase);
//! - `repo/`: one system `web-1` with one pack holding two data chunks
//!   (the contents of `/srv/notes.txt`) and one tree chunk, and one
//!   snapshot `0123456789abcdef` naming that tree;
//! - `snapshot.msgpack`: the plain bytes of that snapshot's record, as
//!   that release encoded them before sealing.
//!
//! The test opens a copy, lists the snapshot, compares every field, reads
//! the file back through its tree, and checks that this build encodes the
//! record to exactly the bytes that release wrote: a renamed or retyped
//! field of the stored record fails here.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use arca_repo::{FORMAT_VERSION, Repository, StoredSnapshot};
use arca_schemas::tree::NodeKind;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn fixture() -> (tempfile::TempDir, Repository) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&src, dir.path());
    let key = dir.path().join("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (repo, report) = Repository::open_or_init(&dir.path().join("repo"), &key, 1 << 20).unwrap();
    assert_eq!(
        report.recovered_packs + report.scanned_packs,
        0,
        "{report:?}"
    );
    assert!(report.missing_packs.is_empty() && report.bad_index_files.is_empty());
    (dir, repo)
}

#[test]
fn a_version_1_repository_opens_and_its_snapshot_reads_back() {
    assert_eq!(FORMAT_VERSION, 1);
    let (dir, repo) = fixture();
    let snaps = repo.list_snapshots(None).unwrap();
    assert_eq!(snaps.len(), 1);
    let r = &snaps[0];
    assert_eq!(r.info.id.0, "0123456789abcdef");
    assert_eq!(r.info.system, "web-1");
    assert_eq!(
        r.info.job.0.to_string(),
        "0190f0e0-0000-7000-8000-000000000001"
    );
    assert_eq!(r.info.time.to_rfc3339(), "2026-11-30T12:00:00+00:00");
    assert_eq!(r.info.paths, ["/srv"]);
    assert_eq!(r.info.media, "media-1");
    let s = &r.info.stats;
    assert_eq!(
        (
            s.entries,
            s.files,
            s.bytes,
            s.chunks,
            s.new_chunks,
            s.wire_bytes,
            s.unchanged_files
        ),
        (2, 1, 8000, 3, 3, 1234, 0)
    );
    assert_eq!(r.info.file_errors.len(), 1);
    assert_eq!(r.info.file_errors[0].path, "/srv/locked");
    assert_eq!(r.info.file_errors[0].error, "permission denied");
    assert_eq!(r.info.signer.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(r.info.signature.as_deref(), Some("cd".repeat(64).as_str()));
    assert_eq!(r.tree.len(), 1);
    assert_eq!(&repo.read_snapshot(&r.info.id).unwrap(), r);

    // The bytes this build writes are the bytes version 1 wrote.
    let written = std::fs::read(dir.path().join("snapshot.msgpack")).unwrap();
    assert_eq!(r.encode(), written, "the stored snapshot record changed");
    let decoded = StoredSnapshot::decode(FORMAT_VERSION, &written)
        .expect("version 1 is known")
        .unwrap();
    assert_eq!(decoded.encode(), written);
    assert_eq!(&decoded.into_current(), r);

    // The file reads back through its tree, chunk by chunk.
    let batch = repo.tree_batch("web-1", &r.tree[0]).unwrap();
    let paths: Vec<&[u8]> = batch.nodes.iter().map(|n| &n.path[..]).collect();
    assert_eq!(paths, [&b"/srv"[..], b"/srv/notes.txt"]);
    let file = &batch.nodes[1];
    assert_eq!(file.user.as_deref(), Some("www"));
    let NodeKind::File { chunks, sizes } = &file.kind else {
        panic!("not a file: {file:?}");
    };
    let key = repo.chunk_id_key("web-1");
    let mut content = Vec::new();
    for (id, size) in chunks.iter().zip(sizes) {
        let frame = repo.get_chunk("web-1", id).unwrap();
        let plain = arca_frame::decode_data(&frame, &key, id).unwrap();
        assert_eq!(plain.len() as u32, *size);
        content.extend(plain);
    }
    let mut expected = b"Arca fixture, version 1.\n".repeat(200);
    expected.extend((0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    assert_eq!(content, expected);
    assert_eq!(file.size, expected.len() as u64);

    // And the repository verifies clean, reading every record.
    let report = repo.verify(true, 100).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.snapshots, 1);
}
