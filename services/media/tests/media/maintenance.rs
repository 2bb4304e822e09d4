//! Maintenance: verify, forget and prune on a repository with snapshots.

use arca_schemas::ErrorCode;
use arca_schemas::msg::*;
use arca_schemas::subject::MediaVerb;

use crate::{Media, SYSTEM};

#[tokio::test]
async fn a_repository_with_a_snapshot_verifies_clean() {
    let media = Media::start().await;
    media.commit_file("a.txt", &b"a".repeat(50_000)).await;
    let report = verify_all(&media).await;
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.snapshots, 1);
    assert!(report.chunks_read >= 2, "{report:?}");
}

#[tokio::test]
async fn forget_keeps_what_the_policy_keeps_and_prune_removes_the_rest() {
    let media = Media::start().await;
    let old = media.commit_file("old.bin", &[1u8; 300_000]).await;
    let new = media.commit_file("new.bin", &[2u8; 300_000]).await;

    // A policy that keeps nothing is refused, and changes nothing.
    let e = media
        .control::<_, ForgetReply>(
            MediaVerb::Forget,
            &ForgetSnapshots {
                system: SYSTEM.into(),
                policy: RetentionPolicy::default(),
                dry_run: false,
            },
        )
        .await
        .unwrap_err()
        .to_reply();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("keeps nothing"), "{}", e.message);

    let keep_last_one = RetentionPolicy {
        keep_last: 1,
        ..Default::default()
    };
    let forgot: ForgetReply = media
        .control(
            MediaVerb::Forget,
            &ForgetSnapshots {
                system: SYSTEM.into(),
                policy: keep_last_one,
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(forgot.kept, std::slice::from_ref(&new.id));
    assert_eq!(forgot.forgotten, std::slice::from_ref(&old.id));
    assert_eq!(media.snapshots().await.unwrap(), std::slice::from_ref(&new));

    let pruned: PruneReport = media
        .control(MediaVerb::Prune, &PruneRepository { dry_run: false })
        .await
        .unwrap();
    assert!(pruned.chunks_removed >= 2, "{pruned:?}");
    assert!(pruned.bytes_after < pruned.bytes_before, "{pruned:?}");

    // What is left verifies clean, reading every record.
    let report = verify_all(&media).await;
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.snapshots, 1);
}

/// Verifies the whole repository, reading every record.
async fn verify_all(media: &Media) -> VerifyReport {
    media
        .control(
            MediaVerb::Verify,
            &VerifyRepository {
                read_data: true,
                subset_percent: 100,
            },
        )
        .await
        .unwrap()
}
