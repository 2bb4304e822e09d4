//! In-process tests of the media service: each test starts a nats-server
//! of its own ([`arca_testkit::nats::NatsServer`]) and [`arca_media::run`]
//! inside the test, against a repository in a temporary folder.
//!
//! Fixtures (in this file): [`Media`], a running media service with a
//! scheduler identity whose tokens it trusts; [`Media::backup`], a backup
//! session opened as the scheduler opens one, used through a
//! [`Compromised`] system (the real protocol, with the system's enrolled
//! key) to put chunks and commit.
//!
//! Modules: `ingest` (put, has, commit, a refused commit) and
//! `maintenance` (verify, forget, prune).

use std::time::Duration;

use arca_runtime::identity::Identity;
use arca_runtime::rpc::{self, RpcError};
use arca_runtime::trust::{Grant, Issuer};
use arca_schemas::JobId;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, MediaVerb};
use arca_testkit::hostile::Compromised;
use arca_testkit::nats::NatsServer;

mod ingest;
mod maintenance;

const MEDIA: &str = "main";
const SYSTEM: &str = "web-1";

/// A media service running in the test, and what talks to it.
struct Media {
    _nats: NatsServer,
    dir: tempfile::TempDir,
    client: async_nats::Client,
    issuer: Issuer,
    agent: Identity,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Media {
    async fn start() -> Media {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let dir = tempfile::tempdir().unwrap();
        let scheduler = Identity::load_or_create(&dir.path().join("scheduler.seed")).unwrap();
        let agent = Identity::load_or_create(&dir.path().join("agent.seed")).unwrap();
        let issuer = Issuer::new(scheduler);
        let config: arca_media::Config = toml::from_str(&format!(
            "id = \"{MEDIA}\"\nrepository = \"{}\"\nscheduler-key = \"{}\"\npack-size-mib = 1\n",
            dir.path().join("repo").display(),
            issuer.public_key()
        ))
        .unwrap();
        let client = nats.client().await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(arca_media::run(config, client.clone(), async move {
            let _ = stopped.await;
        }));
        let media = Media {
            _nats: nats,
            dir,
            client,
            issuer,
            agent,
            stop: Some(stop),
            task: Some(task),
        };
        // Ready when it answers.
        for _ in 0..100 {
            if media.snapshots().await.is_ok() {
                return media;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("media did not answer");
    }

    /// Sends a control request (no token) to media.
    async fn control<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        verb: MediaVerb,
        body: &Q,
    ) -> Result<R, RpcError> {
        rpc::request_with_timeout(
            &self.client,
            subject::media(MEDIA, verb),
            body,
            Duration::from_secs(30),
        )
        .await
    }

    /// Snapshots media holds, newest first.
    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, RpcError> {
        let r: ListSnapshotsReply = self
            .control(MediaVerb::Snapshots, &MediaListSnapshots::default())
            .await?;
        Ok(r.snapshots)
    }

    /// Opens a backup session for a new job of [`SYSTEM`], as the
    /// scheduler does, and returns the system (as its agent) and the
    /// start request an agent would receive.
    async fn backup(&self) -> (Compromised, StartBackupTransfer) {
        let job = JobId::new();
        let body = OpenSession {
            job,
            system: SYSTEM.into(),
            paths: vec!["/srv".into()],
            quota_bytes: None,
        };
        let grant = Grant {
            agent_key: Some(self.agent.public_key()),
            ..Grant::default()
        };
        let issuer = self.issuer.clone();
        let opened: SessionOpened = rpc::request_signed(
            &self.client,
            subject::media(MEDIA, MediaVerb::Session),
            &body,
            Duration::from_secs(30),
            &move |subject, payload| issuer.issue(job, SYSTEM, subject, payload, &grant),
        )
        .await
        .expect("the session opens");
        let key: ChunkKey = self
            .control(
                MediaVerb::ChunkKey,
                &GetChunkKey {
                    system: SYSTEM.into(),
                },
            )
            .await
            .unwrap();
        let start = StartBackupTransfer {
            job,
            media: MEDIA.into(),
            session: opened.session,
            paths: vec!["/srv".into()],
            parent: None,
            chunk_key: key.key,
            selection: Default::default(),
            deadline_secs: None,
        };
        let system = Compromised::new(self.client.clone(), SYSTEM, &self.agent.seed()).unwrap();
        (system, start)
    }

    /// Commits a snapshot holding one file `/srv/<name>` with `data`.
    async fn commit_file(&self, name: &str, data: &[u8]) -> SnapshotInfo {
        let (system, start) = self.backup().await;
        let file = system
            .file(&start, format!("/srv/{name}").as_bytes(), data)
            .await
            .unwrap();
        let nodes = vec![arca_testkit::hostile::dir(b"/srv"), file];
        system.commit(&start, nodes).await.unwrap().snapshot
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
