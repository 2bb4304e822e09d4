//! A compromised system against the scheduler, the audit and events
//! streams, job tokens and the console (issue 14: audit you can trust,
//! bounded jobs, consistency). Each attacker is `arca_testkit::hostile`'s
//! compromised system, holding the system's real enrolled key; each test
//! asserts what an operator would check: what `arca audit`, `arca ls` and
//! the job records show, that the other systems' records and jobs are
//! untouched.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_e2e::security::agent_key;
use arca_e2e::{AgentUser, Stack, kinds, sh_hook, system};
use arca_runtime::rpc::{self, RpcError};
use arca_runtime::trust::{Grant, Issuer, read_audit, seal};
use arca_schemas::event::EventDetail;
use arca_schemas::job::FileError;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, MediaVerb};
use arca_schemas::trust::{AuditKind, AuditRecord, MAX_CLOCK_SKEW_SECS, TOKEN_LIFETIME_SECS};
use arca_schemas::{ErrorCode, JobId, JobStatus, SnapshotId, codec, names};
use arca_testkit::hostile::{Compromised, Plan, dir, plan_forever};
use futures::StreamExt;

/// Publishes `body` as the compromised system, on `subject`, `n` times,
/// and waits until the server has it.
async fn publish(evil: &Compromised, subject: &str, body: &[u8], n: usize) {
    for _ in 0..n {
        evil.client
            .publish(subject.to_owned(), body.to_vec().into())
            .await
            .unwrap();
    }
    evil.client.flush().await.unwrap();
}

/// Waits until the audit stream stops growing (records published without
/// JetStream acknowledgement are stored a moment later).
async fn audit_settled(stack: &Stack) {
    let mut last = u64::MAX;
    for _ in 0..50 {
        let mut s = stack.js.get_stream(names::AUDIT_STREAM).await.unwrap();
        let seq = s.info().await.unwrap().state.last_sequence;
        if seq == last {
            return;
        }
        last = seq;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn has_esc(out: &std::process::Output) -> bool {
    out.stdout.contains(&0x1b) || out.stderr.contains(&0x1b)
}

/// A record an agent forges: the scheduler's name, another system, a kind
/// only the scheduler writes, an escape sequence in its reason.
fn forged() -> AuditRecord {
    let mut r = AuditRecord::new(AuditKind::CrossSystemRestore, "scheduler/main");
    r.system = Some("other".into());
    r.source_system = Some("evil".into());
    r.operator = Some("alice".into());
    r.reason = Some("approved\x1b]0;owned\x07".into());
    r
}

/// Proves that an agent's audit records are its claims: a record under
/// `arca.audit.agent.evil` that names the scheduler as its author, system
/// `other` and kind `cross-system-restore` is read (by `read_audit` and
/// `arca audit`) as a `refused` record claimed by agent evil about evil,
/// flagged; `arca audit --system other` does not show it; a kind an agent
/// does not write is refused by the server. On main the forgery reads as
/// the scheduler's cross-system restore onto `other`.
#[tokio::test(flavor = "multi_thread")]
async fn forged_audit_records_read_as_the_agents_claims() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    stack
        .load_systems(vec![
            system("other", &[data.path()]),
            system("evil", &[data.path()]),
        ])
        .await
        .unwrap();
    let evil = stack.compromised("evil").await.unwrap();
    let body = serde_json::to_vec(&forged()).unwrap();
    publish(&evil, "arca.audit.agent.evil.refused", &body, 1).await;
    publish(
        &evil,
        "arca.audit.agent.evil.cross-system-restore",
        &body,
        1,
    )
    .await;
    publish(
        &evil,
        "arca.audit.agent.evil.refused",
        br#"{"kind":"restore-approved","by":"scheduler/main","system":"other"}"#,
        1,
    )
    .await;
    audit_settled(&stack).await;

    let records = read_audit(&stack.js, None).await.unwrap();
    let claims: Vec<&AuditRecord> = records.iter().filter(|r| r.claim).collect();
    assert_eq!(claims.len(), 2, "{records:#?}");
    for c in &claims {
        assert_eq!(c.by, "agent/evil", "{c:#?}");
        assert_eq!(c.system.as_deref(), Some("evil"), "{c:#?}");
        assert_eq!(c.kind, AuditKind::Refused, "{c:#?}");
        assert!(c.mismatch.is_some(), "{c:#?}");
    }
    // Nothing reads as the scheduler's words but what the scheduler wrote.
    assert!(
        !records
            .iter()
            .any(|r| r.kind == AuditKind::CrossSystemRestore),
        "{records:#?}"
    );
    for r in records.iter().filter(|r| r.by == "scheduler/main") {
        assert_eq!(r.kind, AuditKind::Enrolled, "{r:#?}");
    }

    let out = stack.arca(&["audit"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!has_esc(&out), "raw escape in `arca audit`: {text}");
    let evil_lines: Vec<&str> = text.lines().filter(|l| l.contains("agent/evil")).collect();
    assert_eq!(evil_lines.len(), 2, "{text}");
    for l in &evil_lines {
        assert!(l.contains("claimed-by=agent/evil"), "{l}");
        assert!(l.contains("system=evil"), "{l}");
        assert!(l.contains("MISMATCH"), "{l}");
        assert!(!l.contains(" by=scheduler/main"), "{l}");
        assert!(!l.contains("cross-system-restore "), "{l}");
    }
    let out = stack.arca(&["audit", "--system", "other"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("enrolled"), "{text}");
    assert!(!text.contains("evil"), "{text}");
}

/// Proves that the audit stream bounds what one system can store: with the
/// limits `audit-max-bytes` = 1 MiB and `audit-max-msgs-per-subject` = 50
/// (set at a restart, so the limits of the existing stream are updated),
/// 3,000 records of 1.5 KiB and 20 of 100 KiB from agent evil leave at most
/// 50 of its records, none oversized, and the other system's records (the
/// scheduler's enrollment of `other`, `other`'s agent's own refusal) are
/// all still there. On main the stream has no limits at all.
#[tokio::test(flavor = "multi_thread")]
async fn an_audit_flood_stays_within_its_own_subject() {
    let mut stack = Stack::start().await.unwrap();
    stack
        .restart_scheduler(
            "audit-max-bytes = 1048576\naudit-max-msgs-per-subject = 50\n",
            &[],
        )
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    stack
        .load_systems(vec![
            system("other", &[data.path()]),
            system("evil", &[data.path()]),
        ])
        .await
        .unwrap();
    stack.start_agent("other", AgentUser::Same).await.unwrap();
    // other's agent refuses (and audits) a request without a token.
    let r: Result<TransferCancelled, RpcError> = rpc::request(
        &stack.client,
        subject::agent("other", subject::AgentVerb::Cancel),
        &CancelTransfer { job: JobId::new() },
    )
    .await;
    assert!(
        matches!(&r, Err(RpcError::Remote(e)) if e.code == ErrorCode::Forbidden),
        "{r:?}"
    );
    audit_settled(&stack).await;
    let before = read_audit(&stack.js, None).await.unwrap();
    let others = |records: &[AuditRecord]| {
        records
            .iter()
            .filter(|r| r.system.as_deref() == Some("other"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let others_before = others(&before);
    assert!(
        others_before.iter().any(|r| r.kind == AuditKind::Enrolled)
            && others_before.iter().any(|r| r.by == "agent/other"),
        "{before:#?}"
    );

    let evil = stack.compromised("evil").await.unwrap();
    let mut r = forged();
    r.reason = Some("x".repeat(1500));
    let body = serde_json::to_vec(&r).unwrap();
    publish(&evil, "arca.audit.agent.evil.refused", &body, 3000).await;
    r.reason = Some("y".repeat(100 * 1024));
    let big = serde_json::to_vec(&r).unwrap();
    publish(&evil, "arca.audit.agent.evil.refused", &big, 20).await;
    audit_settled(&stack).await;

    let mut stream = stack.js.get_stream(names::AUDIT_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.max_bytes, 1 << 20);
    assert_eq!(info.config.max_messages_per_subject, 50);
    assert!(info.config.max_message_size > 0 && info.config.max_message_size <= 8192);
    let after = read_audit(&stack.js, None).await.unwrap();
    let by_evil: Vec<&AuditRecord> = after.iter().filter(|r| r.by == "agent/evil").collect();
    assert!(
        !by_evil.is_empty() && by_evil.len() <= 50,
        "{} records of evil kept",
        by_evil.len()
    );
    assert!(
        by_evil
            .iter()
            .all(|r| r.reason.as_ref().is_some_and(|x| x.len() < 8192))
    );
    assert_eq!(others(&after), others_before);
}

/// Proves the overall deadline of a job: an agent that answers "running"
/// forever (system `job-timeout-secs` = 10) has its job failed at the
/// deadline with an error saying how to raise it, the transfer cancelled,
/// the post hook asked for and the window closed; with max-parallel 1 the
/// backup of another system queued behind it then runs and succeeds. On
/// main the job runs forever and holds the queue.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_running_agent_is_stopped_at_its_deadline() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"honest data").unwrap();
    let mut bad = system("evil", &[data.path()]);
    bad.job_timeout_secs = Some(10);
    stack
        .load_systems(vec![bad, system("good", &[data.path()])])
        .await
        .unwrap();
    stack.start_agent("good", AgentUser::Same).await.unwrap();
    let evil = stack.compromised("evil").await.unwrap();
    let _serving = evil.serve(plan_forever()).await.unwrap();

    let held = stack.backup(&["evil"]).await.unwrap()[0];
    let queued = stack.backup(&["good"]).await.unwrap()[0];
    let rec = stack
        .wait_final(held, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
    let error = rec.error.clone().unwrap();
    assert!(
        error.contains("deadline") && error.contains("job-timeout-secs"),
        "{error}"
    );
    assert!(rec.deadline.is_some());
    assert!(rec.snapshot.is_none());
    assert_eq!(*evil.cancelled.lock().unwrap(), vec![held]);
    assert_eq!(*evil.finished.lock().unwrap(), vec![held]);
    let (events, _) = stack.wait_job(held).await.unwrap();
    let k = kinds(&events);
    assert!(k.contains(&"window-closed"), "{k:?}");
    assert!(
        stack
            .open_windows()
            .await
            .unwrap()
            .iter()
            .all(|w| w.job != held)
    );

    let (_, good) = stack.wait_job(queued).await.unwrap();
    assert_eq!(good.status, JobStatus::Succeeded, "{good:#?}");
    assert!(good.created < rec.ended.unwrap());
    assert_eq!(stack.snapshots("good").await.unwrap().len(), 1);
    assert!(stack.snapshots("evil").await.unwrap().is_empty());
}

/// What the snapshot-reporting plan does in each job, in order.
#[derive(Clone)]
enum Report {
    /// Commits a real tree and reports its snapshot.
    Commit,
    /// Commits nothing and reports this id.
    Id(SnapshotId),
}

fn reporting(script: Arc<Mutex<VecDeque<Report>>>) -> Plan {
    Arc::new(move |c: Compromised, start: StartBackupTransfer| {
        let next = script.lock().unwrap().pop_front().expect("a scripted job");
        Box::pin(async move {
            match next {
                Report::Commit => {
                    let f = c.file(&start, b"/data/f", b"evil").await.unwrap();
                    c.backup_of(&start, vec![dir(b"/"), dir(b"/data"), f]).await
                }
                Report::Id(id) => TransferState::Done(TransferOutcome {
                    stats: Default::default(),
                    snapshot: Some(id),
                    file_errors: vec![],
                    file_warnings: vec![],
                    error: None,
                }),
            }
        })
    })
}

/// Proves that the scheduler records only a snapshot of the job's own
/// system and job: evil reporting the id of another system's snapshot, of
/// its own snapshot of an earlier job, or a made-up id has its job failed,
/// nothing recorded for it, the other system's catalog entry unchanged,
/// and the refusal audited. On main the foreign snapshot is recorded as
/// evil's job's.
#[tokio::test(flavor = "multi_thread")]
async fn a_reported_snapshot_of_another_system_or_job_is_refused() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"good data").unwrap();
    stack
        .load_systems(vec![
            system("good", &[data.path()]),
            system("evil", &[data.path()]),
        ])
        .await
        .unwrap();
    stack.start_agent("good", AgentUser::Same).await.unwrap();
    let job = stack.backup(&["good"]).await.unwrap()[0];
    let (_, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let good_snap = rec.snapshot.unwrap();
    let good_catalog = stack.snapshots("good").await.unwrap();

    let script = Arc::new(Mutex::new(VecDeque::from([
        Report::Commit,
        Report::Id(good_snap.clone()),
    ])));
    let evil = stack.compromised("evil").await.unwrap();
    let _serving = evil.serve(reporting(script.clone())).await.unwrap();
    let job = stack.backup(&["evil"]).await.unwrap()[0];
    let (_, own) = stack.wait_job(job).await.unwrap();
    assert_eq!(own.status, JobStatus::Succeeded, "{own:#?}");
    let own_snap = own.snapshot.unwrap();
    script.lock().unwrap().extend([
        Report::Id(own_snap.clone()),
        Report::Id(SnapshotId("0123456789abcdef".into())),
    ]);

    for expected in [
        &good_snap,
        &own_snap,
        &SnapshotId("0123456789abcdef".into()),
    ] {
        let job = stack.backup(&["evil"]).await.unwrap()[0];
        let (_, rec) = stack.wait_job(job).await.unwrap();
        assert_eq!(rec.status, JobStatus::Failed, "{rec:#?}");
        assert!(rec.snapshot.is_none(), "{rec:#?}");
        let error = rec.error.unwrap();
        assert!(
            error.contains(&format!("reported snapshot {expected}")),
            "{error}"
        );
        let records = read_audit(&stack.js, None).await.unwrap();
        assert!(
            records.iter().any(|r| r.kind == AuditKind::Refused
                && r.by == "scheduler/main"
                && r.system.as_deref() == Some("evil")
                && r.job == Some(job)),
            "{records:#?}"
        );
    }
    let evil_catalog = stack.snapshots("evil").await.unwrap();
    assert_eq!(evil_catalog.len(), 1, "{evil_catalog:#?}");
    assert_eq!(evil_catalog[0].id, own_snap);
    assert_eq!(stack.snapshots("good").await.unwrap(), good_catalog);
}

/// Proves that the console prints no control character a system wrote:
/// files named with `ESC ]0;owned BEL`, `ESC [2J` and `ESC [31m`, backed up
/// by a real agent from real files, and a pre hook printing an escape
/// sequence: `arca ls`, `arca diff`, `arca jobs`, `arca job`, `arca watch`
/// and `arca backup` show escapes, never a raw ESC byte. On main `ls` and
/// `diff` print the names raw.
#[tokio::test(flavor = "multi_thread")]
async fn escape_sequences_in_names_reach_no_terminal() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    std::fs::write(d.join("title\x1b]0;owned\x07"), b"a").unwrap();
    std::fs::write(d.join("clear\x1b[2J"), b"b").unwrap();
    let mut sys = system("esc", &[d]);
    sys.hooks.pre_backup = Some(sh_hook("printf 'hook \\033]0;owned\\007 done\\n'"));
    stack.load_systems(vec![sys]).await.unwrap();
    stack.start_agent("esc", AgentUser::Same).await.unwrap();
    let out = stack.arca(&["backup", "esc"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!has_esc(&out), "{}", String::from_utf8_lossy(&out.stdout));
    std::fs::write(d.join("red\x1b[31m"), b"c").unwrap();
    let job = stack.backup(&["esc"]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    // The hook's escape did reach the events: the console must escape it.
    assert!(events.iter().any(|e| matches!(&e.detail,
        EventDetail::Prepared { output, .. } if output.contains('\x1b'))));
    let snaps = stack.snapshots("esc").await.unwrap();
    assert_eq!(snaps.len(), 2);
    let (first, second) = (snaps[0].id.to_string(), snaps[1].id.to_string());
    let (first, second) = if snaps[0].time <= snaps[1].time {
        (first, second)
    } else {
        (second, first)
    };

    let ls = stack.arca(&["ls", &second]);
    let text = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(ls.status.success(), "{ls:?}");
    assert!(!has_esc(&ls), "raw escape in `arca ls`: {text:?}");
    assert!(text.contains("title\\x1b]0;owned\\x07"), "{text}");
    assert!(text.contains("clear\\x1b[2J"), "{text}");
    let diff = stack.arca(&["diff", &first, &second]);
    let text = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert!(!has_esc(&diff), "raw escape in `arca diff`: {text:?}");
    assert!(
        text.contains("+    ") && text.contains("red\\x1b[31m"),
        "{text}"
    );
    let job = job.to_string();
    for args in [
        vec!["jobs"],
        vec!["job", job.as_str()],
        vec!["watch", job.as_str()],
    ] {
        let out = stack.arca(&args);
        assert!(
            !has_esc(&out),
            "raw escape in `arca {args:?}`: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let watch = stack.arca(&["watch", &job]);
    let text = String::from_utf8_lossy(&watch.stdout);
    assert!(text.contains("\\x1b]0;owned\\x07"), "{text}");
}

/// Proves that a token is good only for the process that was running when
/// it was issued: a real token accepted by media, replayed after media
/// restarted, is refused and audited; so is a token dated further ahead
/// than the allowed clock skew. On main the replay after the restart is
/// accepted (the used nonces were only in memory).
#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_before_a_restart_or_from_the_future_is_refused() {
    let mut stack = Stack::start().await.unwrap();
    let scheduler = Issuer::new(stack.sec.scheduler.clone());
    let job = JobId::new();
    let open = OpenSession {
        job,
        system: "rp".into(),
        paths: vec!["/x".into()],
        quota_bytes: None,
    };
    let subj = subject::media("main", MediaVerb::Session);
    let body = codec::encode(&open).unwrap();
    let grant = Grant {
        agent_key: Some(agent_key("rp")),
        ..Grant::default()
    };
    let token = scheduler.issue(job, "rp", &subj, &body, &grant);
    let client = stack.client.clone();
    let send = |token: String| {
        let (client, subj, open) = (client.clone(), subj.clone(), open.clone());
        async move {
            rpc::request_signed::<_, SessionOpened>(
                &client,
                subj,
                &open,
                Duration::from_secs(10),
                &move |_, _| token.clone(),
            )
            .await
        }
    };
    let forbidden = |r: &Result<SessionOpened, RpcError>| matches!(r, Err(RpcError::Remote(e)) if e.code == ErrorCode::Forbidden);
    send(token.clone()).await.unwrap();
    // Replayed to the same process: refused (as before).
    assert!(forbidden(&send(token.clone()).await));

    stack.kill("media");
    stack.restart("media").await.unwrap();
    let r = send(token.clone()).await;
    assert!(forbidden(&r), "a token from before the restart: {r:?}");
    let records = read_audit(&stack.js, None).await.unwrap();
    assert!(
        records.iter().any(|r| r.by == "media/main"
            && r.kind == AuditKind::Refused
            && r.reason
                .as_deref()
                .is_some_and(|x| x.contains("before this service started"))),
        "{records:#?}"
    );

    // Dated ahead of the clock by more than the skew allowed.
    let mut claims = arca_runtime::trust::open(&stack.sec.scheduler.public_key(), &token).unwrap();
    claims.nonce = "from-the-future".into();
    claims.issued = chrono::Utc::now() + chrono::Duration::seconds(MAX_CLOCK_SKEW_SECS + 90);
    claims.expires = claims.issued + chrono::Duration::seconds(TOKEN_LIFETIME_SECS);
    let r = send(seal(&stack.sec.scheduler, &claims)).await;
    assert!(forbidden(&r), "a token from the future: {r:?}");
    // A fresh token is accepted by the restarted media.
    let fresh = scheduler.issue(job, "rp", &subj, &body, &grant);
    send(fresh).await.unwrap();
}

/// Proves that file errors are capped per job and that one system's flood
/// cannot push the other systems' events out of the events stream: with
/// `events-max-bytes` = 512 KiB, a job of evil reporting 1,500 file errors
/// with long escape-laden paths names the first 50 (each cut to its
/// bound) in its record and events, counts the other 1,450, and the job
/// of `good` before it can still be read whole. On main every error
/// becomes an event and good's events are discarded.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_file_errors_leaves_other_systems_events() {
    let mut stack = Stack::start().await.unwrap();
    stack
        .restart_scheduler("events-max-bytes = 524288\n", &[])
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"good data").unwrap();
    stack
        .load_systems(vec![
            system("good", &[data.path()]),
            system("evil", &[data.path()]),
        ])
        .await
        .unwrap();
    stack.start_agent("good", AgentUser::Same).await.unwrap();
    let good = stack.backup(&["good"]).await.unwrap()[0];
    let (good_events, rec) = stack.wait_job(good).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded);

    let evil = stack.compromised("evil").await.unwrap();
    let plan: Plan = Arc::new(|c: Compromised, start: StartBackupTransfer| {
        Box::pin(async move {
            let f = c.file(&start, b"/data/f", b"evil").await.unwrap();
            let mut state = c.backup_of(&start, vec![dir(b"/"), dir(b"/data"), f]).await;
            if let TransferState::Done(o) = &mut state {
                o.file_errors = (0..1500)
                    .map(|i| FileError {
                        path: format!("/data/{i}/\x1b[2J{}", "p".repeat(1000)),
                        error: "e".repeat(3000),
                    })
                    .collect();
            }
            state
        })
    });
    let _serving = evil.serve(plan).await.unwrap();
    let job = stack.backup(&["evil"]).await.unwrap()[0];
    let (events, rec) = stack.wait_job(job).await.unwrap();
    assert_eq!(rec.status, JobStatus::Partial, "{:?}", rec.error);
    assert_eq!(rec.file_errors.len(), 50);
    assert_eq!(rec.file_errors_not_named, 1450);
    assert!(
        rec.file_errors
            .iter()
            .all(|f| f.path.len() <= 800 && f.error.len() <= 1100)
    );
    let failed = events
        .iter()
        .filter(|e| e.detail.kind() == "file-failed")
        .count();
    assert_eq!(failed, 50);
    assert!(events.iter().any(|e| matches!(
        &e.detail,
        EventDetail::Ended {
            file_errors_not_named: 1450,
            ..
        }
    )));

    // good's job is still there, whole.
    let mut again = Box::pin(arca_runtime::events::follow(&stack.js, good).await.unwrap());
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), again.next()).await {
        seen.push(e.unwrap());
    }
    assert_eq!(kinds(&seen), kinds(&good_events));
}
