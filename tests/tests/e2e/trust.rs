//! Trust between zones: a compromised agent can neither speak for another
//! system nor read its data; commands need the scheduler's signed token;
//! a snapshot commits only with its own system's signature; a restore
//! onto another system needs the operator's explicit override; and only
//! clients with credentials and a certificate of the deployment's
//! authority connect at all. Every stack here runs the secured server
//! configuration (see `arca_e2e::security`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_e2e::security::{agent_key, agent_options, agent_sign};
use arca_e2e::{AgentUser, Stack, sh_hook, system};
use arca_runtime::identity::Identity;
use arca_runtime::rpc::{self, RpcError};
use arca_runtime::trust::{Grant, Issuer, manifest_bytes, read_audit, seal};
use arca_schemas::msg::*;
use arca_schemas::subject::{self, AgentVerb, MediaDataVerb, MediaVerb, SchedulerVerb};
use arca_schemas::trust::{AuditKind, AuditRecord, TOKEN_HEADER};
use arca_schemas::{ErrorCode, JobId, JobStatus, codec};

fn forbidden<T: std::fmt::Debug>(r: &Result<T, RpcError>) -> bool {
    matches!(r, Err(RpcError::Remote(e)) if e.code == ErrorCode::Forbidden)
}

/// Sends `body` to `subject` with `token` (or none) in the token header.
async fn send<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    body: &Q,
    token: Option<&str>,
) -> Result<R, RpcError> {
    match token {
        Some(t) => {
            let t = t.to_owned();
            rpc::request_signed(
                client,
                subject.to_owned(),
                body,
                Duration::from_secs(10),
                &move |_, _| t.clone(),
            )
            .await
        }
        None => rpc::request(client, subject.to_owned(), body).await,
    }
}

async fn audit(stack: &Stack) -> Vec<AuditRecord> {
    read_audit(&stack.js, None).await.unwrap()
}

/// Connects as the agent of `system`, collecting the server's errors.
async fn connect_as_agent(
    stack: &Stack,
    system: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let e = errors.clone();
    let client = agent_options(system)
        .event_callback(move |event| {
            let e = e.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    e.lock().unwrap().push(err.to_string());
                }
            }
        })
        .connect(stack.nats.url())
        .await
        .unwrap();
    (client, errors)
}

async fn wait_for(errors: &Arc<Mutex<Vec<String>>>, needle: &str) -> bool {
    for _ in 0..100 {
        if errors.lock().unwrap().iter().any(|e| e.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_can_neither_publish_nor_subscribe_on_another_systems_subjects() {
    let mut stack = Stack::start().await.unwrap();
    stack.enroll("aa").await.unwrap();
    stack.start_agent("bb", AgentUser::Same).await.unwrap();
    let (a, errors) = connect_as_agent(&stack, "aa").await;

    // Its own data subjects answer (media refuses the unknown session,
    // which proves the request arrived).
    let own: Result<HasChunksReply, RpcError> = rpc::request(
        &a,
        subject::media_data("main", "aa", MediaDataVerb::Has),
        &HasChunks {
            session: "none".into(),
            ids: vec![],
        },
    )
    .await;
    assert!(matches!(own, Err(RpcError::Remote(_))), "{own:?}");

    // Subscribing to B's requests and B's inbox: refused by the server,
    // and nothing is delivered.
    let mut sub = a.subscribe(subject::agent_all("bb")).await.unwrap();
    let _inbox = a
        .subscribe(format!("{}.>", subject::agent_inbox_prefix("bb")))
        .await
        .unwrap();
    assert!(
        wait_for(
            &errors,
            "Permissions Violation for Subscription to \"arca.agent.bb"
        )
        .await,
        "{:?}",
        errors.lock().unwrap()
    );
    assert!(
        wait_for(&errors, "_INBOX_bb").await,
        "{:?}",
        errors.lock().unwrap()
    );
    assert!(stack.agent_answers("bb", Duration::from_secs(5)).await);
    let got = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut sub),
    )
    .await;
    assert!(
        !matches!(got, Ok(Some(_))),
        "A received B's request: {got:?}"
    );

    // Publishing as B: to B's agent and to media as B. The server drops
    // both, so neither answers.
    let r: Result<Pong, RpcError> = rpc::request_with_timeout(
        &a,
        subject::agent("bb", AgentVerb::Ping),
        &Ping {},
        Duration::from_secs(2),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert!(
        wait_for(
            &errors,
            "Permissions Violation for Publish to \"arca.agent.bb.ping\""
        )
        .await,
        "{:?}",
        errors.lock().unwrap()
    );
    let r: Result<HasChunksReply, RpcError> = rpc::request_with_timeout(
        &a,
        subject::media_data("main", "bb", MediaDataVerb::Has),
        &HasChunks {
            session: "none".into(),
            ids: vec![],
        },
        Duration::from_secs(2),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert!(
        wait_for(&errors, "arca.media.main.data.bb.has").await,
        "{:?}",
        errors.lock().unwrap()
    );
    // Nor can it ask the scheduler or read the job state.
    let r: Result<ListSystemsReply, RpcError> = rpc::request_with_timeout(
        &a,
        subject::scheduler("main", SchedulerVerb::ListSystems),
        &ListSystems {},
        Duration::from_secs(2),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_replayed_and_misdirected_tokens_are_refused_and_audited() {
    let mut stack = Stack::start().await.unwrap();
    stack.start_agent("tk", AgentUser::Same).await.unwrap();
    let marks = tempfile::tempdir().unwrap();
    let mark = marks.path().join("ran");
    let job = JobId::new();
    let req = RunHook {
        job,
        phase: HookPhase::PreBackup,
        hook: Some(sh_hook(&format!("echo ran >> {}", mark.display()))),
        env: vec![],
        deadline_secs: None,
        post_hook: None,
        applications: Vec::new(),
    };
    let subj = subject::agent("tk", AgentVerb::Prepare);
    let body = codec::encode(&req).unwrap();
    let scheduler = Issuer::new(stack.sec.scheduler.clone());
    let ids = tempfile::tempdir().unwrap();
    let rogue = Identity::load_or_create(&ids.path().join("rogue.nk")).unwrap();

    // No token.
    let r: Result<HookReply, _> = send(&stack.client, &subj, &req, None).await;
    assert!(forbidden(&r), "{r:?}");
    // Forged: the right claims, signed by another key.
    let good = scheduler.issue(job, "tk", &subj, &body, &Grant::default());
    let claims = arca_runtime::trust::open(&stack.sec.scheduler.public_key(), &good).unwrap();
    let forged = seal(&rogue, &claims);
    let r: Result<HookReply, _> = send(&stack.client, &subj, &req, Some(&forged)).await;
    assert!(forbidden(&r), "{r:?}");
    // Expired.
    let mut old = claims.clone();
    old.nonce = "expired-nonce".into();
    old.issued = chrono::Utc::now() - chrono::Duration::seconds(600);
    old.expires = chrono::Utc::now() - chrono::Duration::seconds(480);
    let expired = seal(&stack.sec.scheduler, &old);
    let r: Result<HookReply, _> = send(&stack.client, &subj, &req, Some(&expired)).await;
    assert!(forbidden(&r), "{r:?}");
    // For another system, and for another body.
    let other = scheduler.issue(job, "other", &subj, &body, &Grant::default());
    let r: Result<HookReply, _> = send(&stack.client, &subj, &req, Some(&other)).await;
    assert!(forbidden(&r), "{r:?}");
    let wrong_body = scheduler.issue(job, "tk", &subj, b"something else", &Grant::default());
    let r: Result<HookReply, _> = send(&stack.client, &subj, &req, Some(&wrong_body)).await;
    assert!(forbidden(&r), "{r:?}");
    assert!(!mark.exists(), "a refused command ran the hook");

    // The genuine token works once; its replay is refused.
    let r: HookReply = send(&stack.client, &subj, &req, Some(&good)).await.unwrap();
    assert!(r.ran && r.success, "{r:?}");
    let r: Result<HookReply, _> = send(&stack.client, &subj, &req, Some(&good)).await;
    assert!(forbidden(&r), "{r:?}");
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "ran\n");

    // Media refuses a session without a genuine token too.
    let open = OpenSession {
        job,
        system: "tk".into(),
        paths: vec![],

        quota_bytes: None,
    };
    let msubj = subject::media("main", MediaVerb::Session);
    let mbody = codec::encode(&open).unwrap();
    let mclaims = arca_runtime::trust::open(
        &stack.sec.scheduler.public_key(),
        &scheduler.issue(
            job,
            "tk",
            &msubj,
            &mbody,
            &Grant {
                agent_key: Some(agent_key("tk")),
                ..Grant::default()
            },
        ),
    )
    .unwrap();
    let r: Result<SessionOpened, _> =
        send(&stack.client, &msubj, &open, Some(&seal(&rogue, &mclaims))).await;
    assert!(forbidden(&r), "{r:?}");

    // Every refusal is in the audit stream, with its reason.
    let records = audit(&stack).await;
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.kind == AuditKind::Refused && r.by == "agent/tk")
        .collect();
    assert_eq!(refused.len(), 6, "{records:#?}");
    let reasons: Vec<&str> = refused.iter().filter_map(|r| r.reason.as_deref()).collect();
    for needle in [
        "no job token",
        "not signed by the trusted",
        "expired",
        "issued for system other",
        "body",
        "used before",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle}: {reasons:#?}"
        );
    }
    assert!(
        records
            .iter()
            .any(|r| r.kind == AuditKind::Refused && r.by == "media/main"),
        "{records:#?}"
    );
    let out = stack.arca(&["audit", "--system", "tk"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("refused claimed-by=agent/tk"),
        "{text}"
    );
    // The genuine header name is what agents read.
    assert_eq!(TOKEN_HEADER, "Arca-Token");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_signed_by_another_systems_key_is_not_committed() {
    let stack = Stack::start().await.unwrap();
    let scheduler = Issuer::new(stack.sec.scheduler.clone());
    let job = JobId::new();
    let open = OpenSession {
        job,
        system: "mb".into(),
        paths: vec!["/x".into()],

        quota_bytes: None,
    };
    let subj = subject::media("main", MediaVerb::Session);
    let body = codec::encode(&open).unwrap();
    let token = scheduler.issue(
        job,
        "mb",
        &subj,
        &body,
        &Grant {
            agent_key: Some(agent_key("mb")),
            ..Grant::default()
        },
    );
    let session: SessionOpened = send(&stack.client, &subj, &open, Some(&token))
        .await
        .unwrap();
    let commit = |signature: Vec<u8>| CommitSnapshot {
        session: session.session.clone(),
        tree: vec![],
        stats: Default::default(),
        file_errors: vec![],
        signature,
    };
    let csubj = subject::media_data("main", "mb", MediaDataVerb::Commit);
    // Signed by A's key, offered for B: refused, nothing committed.
    let by_a = agent_sign("ma", &manifest_bytes("mb", job, &[]));
    let r: Result<SnapshotCommitted, _> = send(&stack.client, &csubj, &commit(by_a), None).await;
    assert!(forbidden(&r), "{r:?}");
    // Unsigned: refused too.
    let r: Result<SnapshotCommitted, _> = send(&stack.client, &csubj, &commit(vec![]), None).await;
    assert!(forbidden(&r), "{r:?}");
    assert!(stack.media_snapshots("mb").await.unwrap().is_empty());
    let records = audit(&stack).await;
    assert!(
        records.iter().any(|r| r.kind == AuditKind::Refused
            && r.by == "media/main"
            && r.system.as_deref() == Some("mb")
            && r.reason
                .as_deref()
                .is_some_and(|s| s.contains("not signed by the key enrolled"))),
        "{records:#?}"
    );
    // B's own signature commits, and the snapshot names its signer.
    let by_b = agent_sign("mb", &manifest_bytes("mb", job, &[]));
    let ok: SnapshotCommitted = send(&stack.client, &csubj, &commit(by_b), None)
        .await
        .unwrap();
    assert_eq!(
        ok.snapshot.signer.as_deref(),
        Some(agent_key("mb").as_str())
    );
    assert_eq!(stack.media_snapshots("mb").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_backup_records_the_enrolled_signer_and_enrollment_is_audited() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"hello").unwrap();
    stack
        .load_systems(vec![system("sg", &[data.path()])])
        .await
        .unwrap();
    stack.start_agent("sg", AgentUser::Same).await.unwrap();
    let jobs = stack.backup(&["sg"]).await.unwrap();
    let (_, rec) = stack.wait_job(jobs[0]).await.unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded, "{rec:#?}");
    let snaps = stack.snapshots("sg").await.unwrap();
    assert_eq!(snaps[0].signer.as_deref(), Some(agent_key("sg").as_str()));
    let records = audit(&stack).await;
    assert!(
        records.iter().any(|r| r.kind == AuditKind::Enrolled
            && r.system.as_deref() == Some("sg")
            && r.key.as_deref() == Some(agent_key("sg").as_str())),
        "{records:#?}"
    );
    // A key change is audited with both keys.
    let mut changed = system("sg", &[data.path()]);
    changed.agent = Some(agent_key("sg-new"));
    stack.load_systems(vec![changed]).await.unwrap();
    let records = audit(&stack).await;
    assert!(
        records.iter().any(|r| r.kind == AuditKind::KeyChanged
            && r.previous_key.as_deref() == Some(agent_key("sg").as_str())
            && r.key.as_deref() == Some(agent_key("sg-new").as_str())),
        "{records:#?}"
    );
    // The agent's identity file is its own: mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(stack.dir.path().join("agent-sg.nk"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_onto_another_system_needs_the_override_and_is_audited() {
    let mut stack = Stack::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), b"system ra's data").unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    std::fs::write(data.path().join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
    let other = tempfile::tempdir().unwrap();
    stack
        .load_systems(vec![
            system("ra", &[data.path()]),
            system("rb", &[other.path()]),
        ])
        .await
        .unwrap();
    stack.start_agent("ra", AgentUser::Same).await.unwrap();
    stack.start_agent("rb", AgentUser::Same).await.unwrap();
    let jobs = stack.backup(&["ra"]).await.unwrap();
    let (_, rec) = stack.wait_job(jobs[0]).await.unwrap();
    let snapshot = rec.snapshot.clone().expect("backup made a snapshot");
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("onto-rb");

    // Without the override: refused by the scheduler, audited, nothing written.
    let r: Result<JobsStarted, RpcError> = rpc::request(
        &stack.client,
        subject::scheduler("main", SchedulerVerb::Restore),
        &StartRestore {
            snapshot: snapshot.clone(),
            target: Some(target.display().to_string()),
            to_system: Some("rb".into()),
            allow_cross_system: false,
            operator: Some("alice".into()),
            filter: Default::default(),
            keep_privileges: false,
        },
    )
    .await;
    assert!(forbidden(&r), "{r:?}");
    assert!(!target.exists());

    // Nor does rb's agent accept a token without the override for ra's
    // snapshot, even from the genuine scheduler: refused before any byte
    // (not even the target folder) is written.
    let scheduler = Issuer::new(stack.sec.scheduler.clone());
    let key: ChunkKey = rpc::request(
        &stack.client,
        subject::media("main", MediaVerb::ChunkKey),
        &GetChunkKey {
            system: "ra".into(),
        },
    )
    .await
    .unwrap();
    let start = StartRestoreTransfer {
        job: JobId::new(),
        media: "main".into(),
        snapshot: snapshot.clone(),
        target: Some(target.display().to_string()),
        session: None,
        chunk_key: key.key,
        filter: Default::default(),
        keep_privileges: false,
        deadline_secs: None,
    };
    let subj = subject::agent("rb", AgentVerb::Restore);
    let body = codec::encode(&start).unwrap();
    let token = scheduler.issue(
        start.job,
        "rb",
        &subj,
        &body,
        &Grant {
            snapshot: Some(snapshot.clone()),
            source_system: Some("ra".into()),
            cross_system: false,
            agent_key: None,
        },
    );
    let r: Result<TransferAccepted, _> = send(&stack.client, &subj, &start, Some(&token)).await;
    assert!(forbidden(&r), "{r:?}");
    // A token claiming the snapshot is rb's own: the agent learns the
    // truth from media before writing, and the transfer fails.
    let start2 = StartRestoreTransfer {
        job: JobId::new(),
        ..start.clone()
    };
    let body = codec::encode(&start2).unwrap();
    let lying = scheduler.issue(
        start2.job,
        "rb",
        &subj,
        &body,
        &Grant {
            snapshot: Some(snapshot.clone()),
            source_system: None,
            cross_system: false,
            agent_key: None,
        },
    );
    let accepted: TransferAccepted = send(&stack.client, &subj, &start2, Some(&lying))
        .await
        .unwrap();
    assert!(accepted.started);
    let state = loop {
        let s: TransferState = rpc::request(
            &stack.client,
            subject::agent("rb", AgentVerb::Status),
            &GetTransferStatus {
                job: start2.job,
                wait_ms: 0,
            },
        )
        .await
        .unwrap();
        if let TransferState::Done(o) = s {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(state.error.is_some(), "{state:?}");
    assert!(
        !target.exists(),
        "the refused restore wrote {}",
        target.display()
    );

    // With the override: the restore runs, the bytes are ra's, and the
    // audit stream names operator, source and target.
    let r: JobsStarted = rpc::request(
        &stack.client,
        subject::scheduler("main", SchedulerVerb::Restore),
        &StartRestore {
            snapshot: snapshot.clone(),
            target: Some(target.display().to_string()),
            to_system: Some("rb".into()),
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
    assert_eq!(
        (rec.system.as_str(), rec.source_system.as_deref()),
        ("rb", Some("ra"))
    );
    let restored = target.join(data.path().strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(restored.join("a.txt")).unwrap(),
        b"system ra's data"
    );
    assert_eq!(
        std::fs::read(restored.join("sub/b.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    let records = audit(&stack).await;
    let cross: Vec<_> = records
        .iter()
        .filter(|r| r.kind == AuditKind::CrossSystemRestore)
        .collect();
    assert_eq!(cross.len(), 1, "{records:#?}");
    assert_eq!(cross[0].operator.as_deref(), Some("alice"));
    assert_eq!(cross[0].source_system.as_deref(), Some("ra"));
    assert_eq!(cross[0].system.as_deref(), Some("rb"));
    assert_eq!(cross[0].job, Some(rec.id));
    assert!(
        records.iter().any(|r| r.kind == AuditKind::Refused
            && r.by == "scheduler/main"
            && r.operator.as_deref() == Some("alice")),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.kind == AuditKind::Refused && r.by == "agent/rb"),
        "{records:#?}"
    );
    // The console says the same.
    let out = stack.arca(&[
        "restore",
        &snapshot.to_string(),
        "--to-system",
        "rb",
        "--target",
        "/tmp/never",
        "--detach",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-cross-system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_clients_with_credentials_and_a_certificate_of_the_authority_connect() {
    let stack = Stack::start().await.unwrap();
    let url = stack.nats.url();
    let pki = arca_testkit::Pki::shared();
    let attempt = |o: async_nats::ConnectOptions| {
        let url = url.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(15),
                o.connection_timeout(Duration::from_secs(3)).connect(url),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
        }
    };
    // The test's own credentials connect.
    assert!(attempt(stack.nats.connect_options()).await);
    // Nothing at all.
    assert!(!attempt(async_nats::ConnectOptions::new()).await);
    // TLS with the right authority and certificate, but no nkey.
    let tls_only = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(pki.ca())
        .add_client_certificate(pki.client_cert(), pki.client_key());
    assert!(!attempt(tls_only).await);
    // An nkey the server does not know.
    let ids = tempfile::tempdir().unwrap();
    let stranger = Identity::load_or_create(&ids.path().join("x.nk")).unwrap();
    let unknown = async_nats::ConnectOptions::with_nkey(stranger.seed())
        .require_tls(true)
        .add_root_certificates(pki.ca())
        .add_client_certificate(pki.client_cert(), pki.client_key());
    assert!(!attempt(unknown).await);
    // A known nkey with a client certificate of another authority.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = arca_testkit::Pki::kept_in(&foreign_dir.path().join("pki")).unwrap();
    let other_ca = async_nats::ConnectOptions::with_nkey(stack.sec.operator.seed())
        .require_tls(true)
        .add_root_certificates(pki.ca())
        .add_client_certificate(foreign.client_cert(), foreign.client_key());
    assert!(!attempt(other_ca).await);
    // A known nkey without a client certificate.
    let no_cert = async_nats::ConnectOptions::with_nkey(stack.sec.operator.seed())
        .require_tls(true)
        .add_root_certificates(pki.ca());
    assert!(!attempt(no_cert).await);
    // A client trusting another authority refuses the server.
    let wrong_root = async_nats::ConnectOptions::with_nkey(stack.sec.operator.seed())
        .require_tls(true)
        .add_root_certificates(foreign.ca())
        .add_client_certificate(pki.client_cert(), pki.client_key());
    assert!(!attempt(wrong_root).await);
}
