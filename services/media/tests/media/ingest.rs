//! Ingest: chunks put and asked about, a snapshot committed, and commits
//! that must not pass.

use arca_schemas::msg::*;
use arca_schemas::subject::MediaDataVerb;
use arca_schemas::{ChunkId, ErrorCode};

use crate::{Media, SYSTEM};

#[tokio::test]
async fn chunks_put_are_known_and_a_signed_commit_lists_its_snapshot() {
    let media = Media::start().await;
    let (system, start) = media.backup().await;
    let data = b"the contents of one file\n".repeat(100);
    let id = system.put(&start, &data, false).await.unwrap();
    // Putting it again stores nothing new.
    let again: ChunkStored = system
        .put_frame(&start, id, arca_frame::encode(&data, 1), false)
        .await
        .unwrap();
    assert!(!again.new);
    let unknown = ChunkId([7; 32]);
    let has: HasChunksReply = system
        .request(
            &start,
            MediaDataVerb::Has,
            &HasChunks {
                session: start.session.clone(),
                ids: vec![id, unknown],
            },
        )
        .await
        .unwrap();
    assert_eq!(has.present, [true, false]);

    let file = arca_testkit::hostile::node(
        b"/srv/a.txt",
        arca_schemas::tree::NodeKind::File {
            chunks: vec![id],
            sizes: vec![data.len() as u32],
        },
        0o100644,
    );
    let committed = system
        .commit(&start, vec![arca_testkit::hostile::dir(b"/srv"), file])
        .await
        .unwrap()
        .snapshot;
    assert_eq!(committed.system, SYSTEM);
    assert_eq!(committed.job, start.job);
    assert!(committed.signer.is_some() && committed.signature.is_some());
    let listed = media.snapshots().await.unwrap();
    assert_eq!(listed, std::slice::from_ref(&committed));
    // The record read back is the one committed, tree included.
    let snap: SnapshotReply = media
        .control(
            arca_schemas::subject::MediaVerb::Snapshot,
            &GetSnapshot {
                snapshot: committed.id.clone(),
                session: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(snap.info, committed);
    assert_eq!(snap.tree.len(), 1);
}

#[tokio::test]
async fn a_commit_naming_a_missing_chunk_or_signed_by_another_key_is_refused() {
    let media = Media::start().await;
    let (system, start) = media.backup().await;
    // A tree whose file names a chunk that was never stored.
    let file = arca_testkit::hostile::node(
        b"/srv/ghost",
        arca_schemas::tree::NodeKind::File {
            chunks: vec![ChunkId([9; 32])],
            sizes: vec![10],
        },
        0o100644,
    );
    let e = system
        .commit(&start, vec![arca_testkit::hostile::dir(b"/srv"), file])
        .await
        .unwrap_err()
        .to_reply();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    assert!(
        e.message.contains("is not stored; snapshot not committed"),
        "{}",
        e.message
    );

    // A tree signed by a key that is not the one enrolled for the system.
    let (system, start) = media.backup().await;
    let plain = arca_schemas::codec::encode(&arca_schemas::tree::TreeBatch {
        nodes: vec![arca_testkit::hostile::dir(b"/srv")],
    })
    .unwrap();
    let tree = system.put(&start, &plain, true).await.unwrap();
    let other =
        arca_runtime::identity::Identity::load_or_create(&media.dir.path().join("other.seed"))
            .unwrap();
    let forged = CommitSnapshot {
        session: start.session.clone(),
        signature: other.sign(&arca_runtime::trust::manifest_bytes(
            SYSTEM,
            start.job,
            &[tree],
        )),
        tree: vec![tree],
        stats: Default::default(),
        file_errors: vec![],
    };
    let e = system
        .request::<_, SnapshotCommitted>(&start, MediaDataVerb::Commit, &forged)
        .await
        .unwrap_err()
        .to_reply();
    assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
    assert!(
        e.message.contains("not signed by the key enrolled"),
        "{}",
        e.message
    );

    assert!(media.snapshots().await.unwrap().is_empty());
}
