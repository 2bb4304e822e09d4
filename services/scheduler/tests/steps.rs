//! In-process tests of the scheduler's steps: `arca_scheduler::run`
//! against a real nats-server started by the test, its peers played by
//! small fakes answering on NATS. These are unit-level tests of the steps
//! (seconds each); the end-to-end suite covers the real agent, media and
//! firewall.
//!
//! Fixtures: [`Cell`] starts the server and the scheduler and registers
//! system `web01` (agent key enrolled) behind firewall `fw`, on media
//! `m1`; [`Fakes`] says how the fake peers answer, and records every verb
//! they were asked, in order, as `agent.ping`, `fw.open`, ...

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::rpc::{self, respond};
use arca_schemas::error::ErrorReply;
use arca_schemas::job::TransferStats;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, SchedulerVerb};
use arca_schemas::{JobId, JobRecord, JobStatus, PROTOCOL_VERSION, SnapshotId, SystemConfig};
use arca_testkit::nats::NatsServer;
use futures::StreamExt;

const SYSTEM: &str = "web01";
const FIREWALL: &str = "fw";
const MEDIA: &str = "m1";
const SNAPSHOT: &str = "0123456789abcdef";

/// How the fake peers answer.
#[derive(Clone)]
struct Fakes {
    /// The protocol the agent's pong names.
    protocol: u32,
    /// The firewall refuses to open windows.
    refuse_open: bool,
    /// Every verb asked, in order (`agent.ping`, `fw.open`, ...).
    asked: Arc<Mutex<Vec<String>>>,
    /// The job whose transfer the agent was asked to start.
    job: Arc<Mutex<Option<JobId>>>,
}

impl Default for Fakes {
    fn default() -> Self {
        Fakes {
            protocol: PROTOCOL_VERSION,
            refuse_open: false,
            asked: Default::default(),
            job: Default::default(),
        }
    }
}

impl Fakes {
    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    fn was_asked(&self, verb: &str) -> bool {
        self.asked().iter().any(|v| v == verb)
    }

    /// Answers every request on `subjects` until the test ends.
    async fn serve(self, client: async_nats::Client) {
        let mut subs = futures::stream::select_all(vec![
            client.subscribe(subject::agent_all(SYSTEM)).await.unwrap(),
            client
                .subscribe(subject::firewall_all(FIREWALL))
                .await
                .unwrap(),
            client.subscribe(subject::media_all(MEDIA)).await.unwrap(),
        ]);
        client.flush().await.unwrap();
        tokio::spawn(async move {
            while let Some(msg) = subs.next().await {
                let mut parts = msg.subject.split('.').skip(1);
                let (peer, verb) = (parts.next().unwrap(), msg.subject.rsplit('.').next());
                let verb = verb.unwrap().to_owned();
                self.asked.lock().unwrap().push(format!("{peer}.{verb}"));
                self.answer(&client, &msg, peer, &verb).await;
            }
        });
    }

    async fn answer(
        &self,
        c: &async_nats::Client,
        msg: &async_nats::Message,
        peer: &str,
        verb: &str,
    ) {
        let p = &msg.payload;
        let hook = HookReply {
            ran: true,
            success: true,
            exit_code: Some(0),
            output: String::new(),
            seconds: 0.0,
            by_agent_deadline: false,
        };
        let window = WindowReply {
            firewall: FIREWALL.into(),
            backend: "fake".into(),
            expires: chrono::Utc::now() + chrono::Duration::seconds(60),
        };
        match (peer, verb) {
            ("fw", "open") if self.refuse_open => {
                let r: Result<WindowReply, _> =
                    Err(ErrorReply::forbidden("refused by the fake firewall"));
                respond(c, msg, r).await
            }
            ("fw", "open" | "renew") => respond(c, msg, Ok(window)).await,
            ("fw", "close") => respond(c, msg, Ok(CloseWindowReply { was_open: true })).await,
            ("agent", "ping") => {
                let pong = Pong {
                    system: SYSTEM.into(),
                    version: "fake".into(),
                    protocol: self.protocol,
                };
                respond(c, msg, Ok(pong)).await
            }
            ("agent", "prepare" | "finish") => respond(c, msg, Ok(hook)).await,
            ("agent", "backup") => {
                let req: StartBackupTransfer = rpc::decode_request(p).unwrap();
                *self.job.lock().unwrap() = Some(req.job);
                respond(c, msg, Ok(TransferAccepted { started: true })).await
            }
            ("agent", "status") => {
                let done = TransferState::Done(TransferOutcome {
                    stats: TransferStats::default(),
                    snapshot: Some(SnapshotId(SNAPSHOT.into())),
                    file_errors: Vec::new(),
                    file_warnings: Vec::new(),
                    error: None,
                });
                respond(c, msg, Ok(done)).await
            }
            ("media", "chunk-key") => respond(c, msg, Ok(ChunkKey { key: [7; 32] })).await,
            ("media", "session") => {
                let opened = SessionOpened {
                    session: "s1".into(),
                    check_key: None,
                };
                respond(c, msg, Ok(opened)).await
            }
            ("media", "snapshot") => {
                let job = self.job.lock().unwrap().expect("a transfer was started");
                let reply = SnapshotReply {
                    info: snapshot_info(job),
                    tree: Vec::new(),
                };
                respond(c, msg, Ok(reply)).await
            }
            ("media", "snapshots") => {
                let r = ListSnapshotsReply {
                    snapshots: Vec::new(),
                };
                respond(c, msg, Ok(r)).await
            }
            ("media", "close-session") => respond(c, msg, Ok(SessionClosed { closed: true })).await,
            _ => {
                let r: Result<(), _> = Err(ErrorReply::bad_request(format!(
                    "the fake {peer} does not answer {verb}"
                )));
                respond(c, msg, r).await
            }
        }
    }
}

fn snapshot_info(job: JobId) -> SnapshotInfo {
    SnapshotInfo {
        id: SnapshotId(SNAPSHOT.into()),
        system: SYSTEM.into(),
        job,
        time: chrono::Utc::now(),
        paths: vec!["/srv".into()],
        media: MEDIA.into(),
        stats: TransferStats::default(),
        file_errors: Vec::new(),
        signer: None,
        signature: None,
    }
}

/// A nats-server, the scheduler running in this process, system `web01`
/// registered, and the fake peers answering as `fakes` says.
struct Cell {
    _nats: NatsServer,
    _dir: tempfile::TempDir,
    client: async_nats::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Cell {
    async fn start(fakes: &Fakes) -> Cell {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let client = nats.client().await;
        let dir = tempfile::tempdir().unwrap();
        let config: arca_scheduler::Config = toml::from_str(&format!(
            "identity-file = {:?}\nfirewalls = [\"{FIREWALL}\"]\nretry-secs = 2\nagent-timeout-secs = 3\n",
            dir.path().join("scheduler.nk")
        ))
        .unwrap();
        fakes.clone().serve(client.clone()).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let c = client.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = arca_scheduler::run(config, c, shutdown).await {
                panic!("the scheduler stopped: {e:#}");
            }
        });
        let cell = Cell {
            _nats: nats,
            _dir: dir,
            client,
            stop: Some(stop),
        };
        let load = LoadSystems {
            systems: vec![system()],
            mode: LoadMode::default(),
        };
        let _: LoadSystemsReply = rpc::retry(Duration::from_secs(10), || {
            rpc::call(
                &cell.client,
                subject::scheduler("main", SchedulerVerb::LoadSystems),
                &load,
                rpc::DEFAULT_TIMEOUT,
                None,
            )
        })
        .await
        .expect("the scheduler registers the system");
        cell
    }

    /// Starts a backup of `web01` and waits for its end.
    async fn backup(&self) -> JobRecord {
        let start = StartBackup {
            systems: vec![SYSTEM.into()],
            backup_type: None,
        };
        let s = subject::scheduler("main", SchedulerVerb::Backup);
        let started = rpc::call(&self.client, s, &start, rpc::DEFAULT_TIMEOUT, None)
            .await
            .expect("the backup is queued");
        let job = started.jobs[0];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = subject::scheduler("main", SchedulerVerb::GetJob);
            let rec = rpc::call(&self.client, s, &GetJob { job }, rpc::DEFAULT_TIMEOUT, None)
                .await
                .expect("the job record is readable");
            if rec.status.is_final() {
                return rec;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job still at {:?}",
                rec.step
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn system() -> SystemConfig {
    let mut s: SystemConfig = serde_json::from_value(serde_json::json!({
        "name": SYSTEM,
        "address": "127.0.0.1",
        "paths": ["/srv"],
        "firewalls": [FIREWALL],
        "media": MEDIA,
    }))
    .expect("a minimal system");
    s.agent = Some(nkeys::KeyPair::new_user().public_key());
    s
}

/// `earlier` was asked before `later`.
fn before(asked: &[String], earlier: &str, later: &str) -> bool {
    let at = |v: &str| asked.iter().position(|a| a == v);
    matches!((at(earlier), at(later)), (Some(a), Some(b)) if a < b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_goes_through_every_step_in_order() {
    let fakes = Fakes::default();
    let cell = Cell::start(&fakes).await;
    let rec = cell.backup().await;
    assert_eq!(rec.status, JobStatus::Succeeded, "{:?}", rec.error);
    assert_eq!(rec.snapshot, Some(SnapshotId(SNAPSHOT.into())));
    assert!(rec.open_windows.is_empty());
    let asked = fakes.asked();
    for (a, b) in [
        ("fw.open", "agent.ping"),
        ("agent.ping", "agent.prepare"),
        ("agent.prepare", "media.session"),
        ("media.session", "agent.backup"),
        ("agent.backup", "agent.status"),
        ("agent.status", "media.snapshot"),
        ("media.snapshot", "agent.finish"),
        ("agent.finish", "fw.close"),
        ("fw.close", "media.close-session"),
    ] {
        assert!(before(&asked, a, b), "{a} before {b}: {asked:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_window_fails_the_job_and_moves_no_data() {
    let fakes = Fakes {
        refuse_open: true,
        ..Fakes::default()
    };
    let cell = Cell::start(&fakes).await;
    let rec = cell.backup().await;
    assert_eq!(rec.status, JobStatus::Failed);
    let error = rec.error.unwrap_or_default();
    assert!(
        error.starts_with("window-opened: firewall fw did not open"),
        "{error}"
    );
    for verb in [
        "agent.ping",
        "agent.prepare",
        "agent.backup",
        "media.session",
    ] {
        assert!(!fakes.was_asked(verb), "{verb} asked: {:?}", fakes.asked());
    }
    // Its close is still attempted: it may have opened without answering.
    assert!(fakes.was_asked("fw.close"), "{:?}", fakes.asked());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_of_another_protocol_fails_the_job_before_its_pre_hook() {
    let fakes = Fakes {
        protocol: PROTOCOL_VERSION + 1,
        ..Fakes::default()
    };
    let cell = Cell::start(&fakes).await;
    let rec = cell.backup().await;
    assert_eq!(rec.status, JobStatus::Failed);
    let error = rec.error.unwrap_or_default();
    assert!(error.starts_with("agent-present: "), "{error}");
    assert!(
        error.contains(&format!("protocol {}", PROTOCOL_VERSION + 1))
            && error.contains(&format!("protocol {PROTOCOL_VERSION}"))
            && error.contains("upgrade arca-scheduler"),
        "{error}"
    );
    for verb in ["agent.prepare", "agent.backup", "agent.finish"] {
        assert!(!fakes.was_asked(verb), "{verb} asked: {:?}", fakes.asked());
    }
    assert!(fakes.was_asked("fw.close"), "{:?}", fakes.asked());
}
