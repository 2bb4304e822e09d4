//! Media against a compromised system (`arca_testkit::hostile`): every
//! request of its agent is bounded, its hostile trees are refused at
//! commit, and the other systems keep being backed up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_e2e::{AgentUser, Stack, system};
use arca_frame as frame;
use arca_runtime::rpc::RpcError;
use arca_runtime::trust::read_audit;
use arca_schemas::msg::*;
use arca_schemas::subject::MediaDataVerb;
use arca_schemas::system::ByteSize;
use arca_schemas::text::escape_bytes;
use arca_schemas::tree::{NodeKind, TreeBatch};
use arca_schemas::trust::AuditKind;
use arca_schemas::{ChunkId, ErrorCode, ErrorReply, JobStatus, codec};
use arca_testkit::hostile::{Compromised, Plan, dir, node, plan_tree};
use arca_testkit::tree::write_pseudo_random;

/// A plan that hands the job's start to the test, answers "running"
/// until `end` is notified, then reports a failed transfer.
fn plan_hold(
    tx: tokio::sync::mpsc::UnboundedSender<StartBackupTransfer>,
    end: Arc<tokio::sync::Notify>,
) -> Plan {
    Arc::new(move |_c: Compromised, start: StartBackupTransfer| {
        let (tx, end) = (tx.clone(), end.clone());
        Box::pin(async move {
            tx.send(start).ok();
            end.notified().await;
            TransferState::Done(TransferOutcome {
                stats: Default::default(),
                snapshot: None,
                file_errors: vec![],
                file_warnings: vec![],
                error: Some(ErrorReply::internal("the hostile plan is over")),
            })
        })
    })
}

/// A stack with the compromised system `evil` (serving `plan` or, when
/// `None`, [`plan_hold`]), the start of its running backup when held.
struct Evil {
    stack: Stack,
    evil: Compromised,
    _data: tempfile::TempDir,
    _serving: tokio::task::JoinHandle<()>,
    end: Arc<tokio::sync::Notify>,
    starts: tokio::sync::mpsc::UnboundedReceiver<StartBackupTransfer>,
}

impl Evil {
    async fn start(extra: Vec<arca_schemas::SystemConfig>, plan: Option<Plan>) -> Evil {
        let mut stack = Stack::start().await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut systems = vec![system("evil", &[data.path()])];
        systems.extend(extra);
        stack.load_systems(systems).await.unwrap();
        let evil = stack.compromised("evil").await.unwrap();
        let (tx, starts) = tokio::sync::mpsc::unbounded_channel();
        let end = Arc::new(tokio::sync::Notify::new());
        let plan = plan.unwrap_or_else(|| plan_hold(tx, end.clone()));
        let serving = evil.serve(plan).await.unwrap();
        Evil {
            stack,
            evil,
            _data: data,
            _serving: serving,
            end,
            starts,
        }
    }

    /// Starts a backup of `evil` and returns its job and session.
    async fn hold(&mut self) -> (arca_schemas::JobId, StartBackupTransfer) {
        let job = self.stack.backup(&["evil"]).await.unwrap()[0];
        let start = tokio::time::timeout(Duration::from_secs(60), self.starts.recv())
            .await
            .expect("the backup starts")
            .unwrap();
        (job, start)
    }
}

/// Peak resident memory of a process, bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// `n` bytes zstd cannot shrink.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn remote(r: Result<impl std::fmt::Debug, RpcError>) -> ErrorReply {
    match r {
        Err(RpcError::Remote(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const MIB: u64 = 1 << 20;

/// Proves that media refuses, at commit, a tree naming a node (or a hard
/// link) by a path that is not clean (`//etc/x`, `/a/../../x`, `/..`, a
/// NUL, relative): nothing is committed, the error names the path
/// (escaped) and each refusal is in the audit stream for the system. On
/// cf2fc9a media checked only that the chunks exist, and committed them.
#[tokio::test(flavor = "multi_thread")]
async fn traversal_names_are_refused_at_commit_not_committed_and_audited() {
    const BAD: [&[u8]; 5] = [b"//etc/x", b"/a/../../x", b"/..", b"/a/b\0c", b"etc/y"];
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let seen = refusals.clone();
    let plan = plan_tree(move |c, start| {
        let seen = seen.clone();
        async move {
            for bad in BAD {
                let f = c.file(&start, bad, b"owned").await.unwrap();
                let r = c.commit(&start, vec![dir(b"/"), f]).await;
                seen.lock()
                    .unwrap()
                    .push((bad, r.map(|_| ()).map_err(|e| e.to_reply())));
            }
            // Last, a hard link out of the tree: the job's own commit.
            let mut link = c.file(&start, b"/data/l", b"x").await.unwrap();
            link.hardlink = Some(b"/data/../../etc/shadow".to_vec());
            vec![dir(b"/"), dir(b"/data"), link]
        }
    });
    let e = Evil::start(vec![], Some(plan)).await;
    let job = e.stack.backup(&["evil"]).await.unwrap()[0];
    let (_, rec) = e.stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    let error = rec.error.clone().unwrap_or_default();
    assert!(
        error.contains("hard link target") && error.contains("/data/../../etc/shadow"),
        "{error}"
    );
    let refusals = refusals.lock().unwrap().clone();
    assert_eq!(refusals.len(), BAD.len());
    for (bad, r) in refusals {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
        assert!(
            e.message.contains(&escape_bytes(bad)) && e.message.contains("not committed"),
            "{}",
            e.message
        );
    }
    assert!(e.stack.media_snapshots("evil").await.unwrap().is_empty());
    let records = read_audit(&e.stack.js, None).await.unwrap();
    for bad in BAD.iter().copied().chain([&b"/data/../../etc/shadow"[..]]) {
        assert!(
            records.iter().any(|r| r.kind == AuditKind::Refused
                && r.system.as_deref() == Some("evil")
                && r.reason
                    .as_deref()
                    .is_some_and(|x| x.contains(&escape_bytes(bad)))),
            "no audit record of the refusal of {}",
            escape_bytes(bad)
        );
    }
}

/// Proves that a `get-many` naming one real 4 MiB chunk 200,000 times
/// (asking for about 800 GiB) is refused with a clear error while media's
/// peak memory stays under 300 MiB, that one asking for more bytes than
/// an answer may carry is refused too, that a flood of requests is
/// answered "busy" beyond the system's share, and that another system's
/// real backup started meanwhile succeeds. On cf2fc9a media read the chunk
/// 200,000 times into one answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_get_many_bomb_is_refused_with_memory_bounded_and_others_backed_up() {
    let good_data = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write_pseudo_random(&good_data.path().join(format!("f{i}")), 3_000_000, i).unwrap();
    }
    let mut e = Evil::start(vec![system("good", &[good_data.path()])], None).await;
    e.stack
        .restart_scheduler("max-parallel = 2", &[])
        .await
        .unwrap();
    e.stack.start_agent("good", AgentUser::Same).await.unwrap();
    let (_job, start) = e.hold().await;
    let c = e.evil.clone();
    let big = noise(4 << 20, 7);
    let id = c.put(&start, &big, false).await.unwrap();
    // An honest question is answered.
    let one: ChunksData = c
        .request(
            &start,
            MediaDataVerb::GetMany,
            &GetChunks {
                ids: vec![id],
                session: None,
            },
        )
        .await
        .unwrap();
    assert!(one.chunks[0].frame.as_ref().unwrap().len() >= 4 << 20);

    let media = e.stack.pid("media");
    let good = e.stack.backup(&["good"]).await.unwrap()[0];
    // The bomb, four at a time.
    let bomb = GetChunks {
        ids: vec![id; 200_000],
        session: None,
    };
    let answers = futures::future::join_all(
        (0..4).map(|_| c.request::<_, ChunksData>(&start, MediaDataVerb::GetMany, &bomb)),
    )
    .await;
    for r in answers {
        let err = remote(r);
        assert_eq!(err.code, ErrorCode::BadRequest, "{err:?}");
        assert!(
            err.message.contains("200000") && err.message.contains("at most 1024"),
            "{}",
            err.message
        );
    }
    // Few ids, but more bytes than an answer may carry.
    let err = remote(
        c.request::<_, ChunksData>(
            &start,
            MediaDataVerb::GetMany,
            &GetChunks {
                ids: vec![id; 4],
                session: None,
            },
        )
        .await,
    );
    assert!(err.message.contains("at most 6.0 MiB"), "{}", err.message);
    // More chunks in one put-many than a batch may hold.
    let many = PutChunks {
        session: start.session.clone(),
        chunks: (0..1025u32)
            .map(|i| {
                let plain = i.to_le_bytes();
                PutChunk {
                    session: String::new(),
                    id: frame::chunk_id(&start.chunk_key, &plain),
                    tree: false,
                    frame: frame::encode(&plain, 1),
                }
            })
            .collect(),
    };
    let err = remote(
        c.request::<_, ChunksStored>(&start, MediaDataVerb::PutMany, &many)
            .await,
    );
    assert!(err.message.contains("at most 1024"), "{}", err.message);
    // A flood of honest-looking questions: beyond the system's share the
    // answer is "busy", retryable; none is lost.
    let small = c.put(&start, &noise(256 << 10, 8), false).await.unwrap();
    let ask = GetChunks {
        ids: vec![small],
        session: None,
    };
    let flood = futures::future::join_all(
        (0..200).map(|_| c.request::<_, ChunksData>(&start, MediaDataVerb::GetMany, &ask)),
    )
    .await;
    let busy = flood
        .iter()
        .filter(|r| matches!(r, Err(RpcError::Remote(e)) if e.code == ErrorCode::Unavailable && e.retryable))
        .count();
    let served = flood.iter().filter(|r| r.is_ok()).count();
    assert_eq!(busy + served, flood.len());
    assert!(
        busy > 0,
        "a flood of 200 requests is answered busy beyond the share"
    );
    let peak = peak_rss(media);
    eprintln!("media's peak memory: {} MiB", peak / MIB);
    assert!(
        peak < 300 * MIB,
        "media's peak memory {} MiB is over 300 MiB",
        peak / MIB
    );
    let rec = e
        .stack
        .wait_final(good, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    assert!(e.stack.is_running("media"));
    e.end.notify_one();
}

/// Proves that commits are bounded: one naming the same tree chunk
/// 100,000 times is refused (each tree chunk is decoded once), one whose
/// tree chunk holds more nodes than a tree chunk may is refused, and of
/// many concurrent commits of one session one runs while the others are
/// answered "busy" or with its snapshot: one snapshot, media up. On
/// cf2fc9a the first two were committed.
#[tokio::test(flavor = "multi_thread")]
async fn commit_bombs_are_refused_and_one_commit_runs_at_a_time() {
    let mut e = Evil::start(vec![], None).await;
    let (_job, start) = e.hold().await;
    let c = e.evil.clone();
    let f = c.file(&start, b"/f", b"data").await.unwrap();
    let tree = codec::encode(&TreeBatch {
        nodes: vec![dir(b"/"), f],
    })
    .unwrap();
    let tree_id = c.put(&start, &tree, true).await.unwrap();

    let t = std::time::Instant::now();
    let err = remote(c.commit_ids(&start, vec![tree_id; 100_000]).await);
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert!(err.message.contains("more than once"), "{}", err.message);
    assert!(t.elapsed() < Duration::from_secs(10));

    let nodes: Vec<_> = std::iter::once(dir(b"/"))
        .chain((0..40_000).map(|i| node(format!("/d{i}").as_bytes(), NodeKind::Dir, 0o040755)))
        .collect();
    let err = remote(c.commit(&start, nodes).await);
    assert!(err.message.contains("40001 nodes"), "{}", err.message);

    let commits =
        futures::future::join_all((0..16).map(|_| c.commit_ids(&start, vec![tree_id]))).await;
    let mut snapshots = std::collections::HashSet::new();
    for r in commits {
        match r {
            Ok(done) => {
                snapshots.insert(done.snapshot.id);
            }
            Err(RpcError::Remote(e)) if e.code == ErrorCode::Unavailable => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(e.stack.media_snapshots("evil").await.unwrap().len(), 1);
    assert!(e.stack.is_running("media"));
    e.end.notify_one();
}

/// A data frame of `n` zeros compressed by zstd, with or without the
/// content size in its header, and the id of those zeros.
fn zstd_bomb(start: &StartBackupTransfer, n: usize, with_size: bool) -> (ChunkId, Vec<u8>) {
    let zeros = vec![0u8; n];
    let mut z = zstd::bulk::Compressor::new(19).unwrap();
    z.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(with_size))
        .unwrap();
    let mut f = vec![
        arca_schemas::chunk::FRAME_VERSION,
        arca_schemas::chunk::COMPRESSION_ZSTD,
    ];
    f.extend(z.compress(&zeros).unwrap());
    (frame::chunk_id(&start.chunk_key, &zeros), f)
}

/// Proves that a frame decompressing past the largest chunk (4 MiB for
/// file data, 16 MiB for a tree chunk) is refused at put, whether its
/// header states the size or not, with media's memory bounded. On
/// cf2fc9a media decompressed up to 64 MiB and stored these.
#[tokio::test(flavor = "multi_thread")]
async fn zstd_bombs_are_refused_at_put() {
    let mut e = Evil::start(vec![], None).await;
    let (_job, start) = e.hold().await;
    let c = e.evil.clone();
    let mut bombs = Vec::new();
    for with_size in [true, false] {
        let (id, f) = zstd_bomb(&start, 48 << 20, with_size);
        assert!(f.len() < 64 * 1024);
        bombs.push(c.put_frame(&start, id, f.clone(), false));
        bombs.push(c.put_frame(&start, id, f, true));
    }
    for r in futures::future::join_all(bombs).await {
        let err = remote(r);
        assert!(err.message.contains("more than"), "{}", err.message);
    }
    // Just past the bound of a data chunk, in both forms.
    for with_size in [true, false] {
        let (id, f) = zstd_bomb(&start, (4 << 20) + 1, with_size);
        let err = remote(c.put_frame(&start, id, f, false).await);
        assert!(err.message.contains("more than 4194304"), "{}", err.message);
    }
    // The bound itself is a chunk.
    let (id, f) = zstd_bomb(&start, 4 << 20, false);
    assert!(c.put_frame(&start, id, f, false).await.unwrap().new);
    let peak = peak_rss(e.stack.pid("media"));
    eprintln!("media's peak memory: {} MiB", peak / MIB);
    assert!(peak < 200 * MIB, "media's peak memory {} MiB", peak / MIB);
    e.end.notify_one();
}

/// Proves the per-system quota: a system whose backup would take it past
/// its quota fails at put with an error naming the system, its usage, its
/// quota and what to do, after a first backup within the quota succeeded;
/// another system without a quota is unaffected. On cf2fc9a the systems
/// file knew no quota.
#[tokio::test(flavor = "multi_thread")]
async fn a_system_over_its_quota_is_refused_at_put_and_others_are_not() {
    let mut stack = Stack::start().await.unwrap();
    let small = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    write_pseudo_random(&small.path().join("a"), 1_000_000, 1).unwrap();
    write_pseudo_random(&other.path().join("a"), 6_000_000, 2).unwrap();
    let mut limited = system("small", &[small.path()]);
    limited.quota = Some(ByteSize(3 << 20));
    stack
        .load_systems(vec![limited, system("other", &[other.path()])])
        .await
        .unwrap();
    stack.start_agent("small", AgentUser::Same).await.unwrap();
    stack.start_agent("other", AgentUser::Same).await.unwrap();

    let job = stack.backup(&["small"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");

    write_pseudo_random(&small.path().join("b"), 4_000_000, 3).unwrap();
    let jobs = stack.backup(&["small", "other"]).await.unwrap();
    let (_, rec) = stack.wait_job(jobs[0]).await.unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    let error = rec.error.unwrap_or_default();
    assert!(
        error.contains("system small holds")
            && error.contains("quota is 3.0 MiB")
            && error.contains("arca prune")
            && error.contains("raise"),
        "{error}"
    );
    assert_eq!(stack.media_snapshots("small").await.unwrap().len(), 1);
    let (_, rec) = stack.wait_job(jobs[1]).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
}

/// Proves that a backup session is closed when its job ends (a put into
/// it afterwards is refused), that a session names at most
/// `session-max-chunks` chunks, and that an idle session expires after
/// `session-idle-secs`. On cf2fc9a sessions lived until a prune and grew
/// without bound.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_close_when_their_job_ends_and_expire_when_idle() {
    let plan = plan_tree(|c, start| async move {
        let f = c.file(&start, b"/f", b"hello").await.unwrap();
        vec![dir(b"/"), f]
    });
    let e = Evil::start(vec![], Some(plan)).await;
    let job = e.stack.backup(&["evil"]).await.unwrap()[0];
    let (_, rec) = e.stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let start = e.evil.started.lock().unwrap()[0].clone();
    let err = remote(e.evil.put(&start, b"after the end", false).await);
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.contains("no open session"), "{}", err.message);
    drop(e);

    let mut e = Evil::start(vec![], None).await;
    e.stack.kill("media");
    e.stack
        .write_service(
            "media.toml",
            &format!(
                "repository = \"{}\"\nsession-idle-secs = 3\nsession-max-chunks = 8\n",
                e.stack.repo_dir().display()
            ),
            "media",
        )
        .unwrap();
    e.stack.restart("media").await.unwrap();
    let (_job, start) = e.hold().await;
    e.evil.put(&start, b"while used", false).await.unwrap();
    // A session names a bounded number of chunks: 1 + 8 is over 8.
    let ask = HasChunks {
        session: start.session.clone(),
        ids: (0..8u8).map(|i| ChunkId([i; 32])).collect(),
    };
    let err = remote(
        e.evil
            .request::<_, HasChunksReply>(&start, MediaDataVerb::Has, &ask)
            .await,
    );
    assert!(
        err.message.contains("session-max-chunks"),
        "{}",
        err.message
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    let err = remote(e.evil.put(&start, b"after idling", false).await);
    assert!(err.message.contains("session-idle-secs"), "{}", err.message);
    e.end.notify_one();
}
