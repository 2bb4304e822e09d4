//! A compromised system, as a test fixture.
//!
//! [`Compromised`] holds what an attacker who owns one lower-trust system
//! holds: a NATS connection with that system's real credentials (its
//! enrolled key, its TLS certificate) and the key that signs its snapshot
//! manifests. It speaks the protocol as the real agent does, but sends
//! whatever the test tells it to: trees with hostile paths, sizes that lie,
//! endless "running" answers, floods of requests. Tests use it to show
//! that everything such a system sends is checked by whoever receives it,
//! and that nothing outside that system changes.
//!
//! [`Compromised::serve`] answers the scheduler's requests on the system's
//! agent subjects (the scheduler's tokens are not checked: an attacker has
//! no reason to) and runs a [`Plan`] when a backup starts. The lower-level
//! calls ([`Compromised::put`], [`Compromised::commit`]) talk to media
//! directly within a session the scheduler opened.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_frame as frame;
use arca_runtime::rpc::{self, RpcError, decode_request, respond, verb};
use arca_runtime::trust::manifest_bytes;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, AgentVerb, MediaDataVerb};
use arca_schemas::tree::{Node, NodeKind, TreeBatch};
use arca_schemas::{ChunkId, JobId, PROTOCOL_VERSION, codec};
use futures::StreamExt;

/// What a hostile backup does, given the job's start request.
pub type Plan = Arc<
    dyn Fn(Compromised, StartBackupTransfer) -> Pin<Box<dyn Future<Output = TransferState> + Send>>
        + Send
        + Sync,
>;

/// What a hostile restore does, given the job's start request (the
/// target of a cross-system restore may be compromised too).
pub type RestorePlan = Arc<
    dyn Fn(Compromised, StartRestoreTransfer) -> Pin<Box<dyn Future<Output = TransferState> + Send>>
        + Send
        + Sync,
>;

/// A compromised system: its own connection and key, hostile intent.
#[derive(Clone)]
pub struct Compromised {
    /// Connected with the system's enrolled credentials.
    pub client: async_nats::Client,
    /// The system it owns.
    pub system: String,
    key: Arc<nkeys::KeyPair>,
    /// Start requests received, in order.
    pub started: Arc<Mutex<Vec<StartBackupTransfer>>>,
    /// Jobs whose post hook (`finish`) was asked for, in order.
    pub finished: Arc<Mutex<Vec<JobId>>>,
    /// Jobs whose transfer the scheduler asked to stop (`cancel`), in order.
    pub cancelled: Arc<Mutex<Vec<JobId>>>,
    /// Restore start requests received, in order.
    pub restores: Arc<Mutex<Vec<StartRestoreTransfer>>>,
}

impl std::fmt::Debug for Compromised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compromised")
            .field("system", &self.system)
            .finish()
    }
}

impl Compromised {
    /// The system `system`, owned through `client` (connected with its
    /// credentials) and its agent's nkey `seed`.
    pub fn new(client: async_nats::Client, system: &str, seed: &str) -> anyhow::Result<Self> {
        Ok(Compromised {
            client,
            system: system.to_owned(),
            key: Arc::new(nkeys::KeyPair::from_seed(seed)?),
            started: Default::default(),
            finished: Default::default(),
            cancelled: Default::default(),
            restores: Default::default(),
        })
    }

    /// Signs the manifest of a snapshot of this system, as its agent does.
    pub fn sign_manifest(&self, job: JobId, tree: &[ChunkId]) -> Vec<u8> {
        self.key
            .sign(&manifest_bytes(&self.system, job, tree))
            .expect("a seed key pair signs")
    }

    /// Answers the system's agent subjects until the task is aborted: a
    /// ping with the current protocol, every hook as run and successful,
    /// a backup start by running `plan` (its result is what status
    /// questions get), a restore start as refused, a cancel as stopped.
    pub async fn serve(&self, plan: Plan) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        self.serve_with(plan, None).await
    }

    /// [`Compromised::serve`], and a restore start by running `restore`
    /// (its result is what status questions get) when one is given.
    pub async fn serve_with(
        &self,
        plan: Plan,
        restore: Option<RestorePlan>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mut sub = self
            .client
            .subscribe(subject::agent_all(&self.system))
            .await?;
        self.client.flush().await?;
        let me = self.clone();
        let states: Arc<Mutex<HashMap<JobId, TransferState>>> = Default::default();
        Ok(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let c = &me.client;
                match AgentVerb::parse(verb(&msg.subject)) {
                    Some(AgentVerb::Ping) => {
                        let pong = Pong {
                            system: me.system.clone(),
                            version: "hostile".into(),
                            protocol: PROTOCOL_VERSION,
                        };
                        respond(c, &msg, Ok(pong)).await
                    }
                    Some(v @ (AgentVerb::Prepare | AgentVerb::Finish)) => {
                        let r = decode_request::<RunHook>(&msg.payload);
                        if let (AgentVerb::Finish, Ok(h)) = (v, &r) {
                            me.finished.lock().expect("finished").push(h.job);
                        }
                        let r = r.map(|h| HookReply {
                            ran: h.hook.is_some(),
                            success: true,
                            exit_code: h.hook.is_some().then_some(0),
                            output: String::new(),
                            seconds: 0.0,
                            by_agent_deadline: false,
                        });
                        respond(c, &msg, r).await
                    }
                    Some(AgentVerb::Backup) => {
                        let r = decode_request::<StartBackupTransfer>(&msg.payload);
                        let r = r.map(|start| {
                            let first = begin(&states, start.job);
                            if first {
                                me.started.lock().expect("started").push(start.clone());
                                let (me2, plan, states) =
                                    (me.clone(), plan.clone(), states.clone());
                                tokio::spawn(async move {
                                    let job = start.job;
                                    let end = plan(me2, start).await;
                                    states.lock().expect("states").insert(job, end);
                                });
                            }
                            TransferAccepted { started: first }
                        });
                        respond(c, &msg, r).await
                    }
                    Some(AgentVerb::Status) => {
                        // A running plan's counters rise at every question,
                        // so that no stall detector sees a stall.
                        let r = decode_request::<GetTransferStatus>(&msg.payload).map(|q| {
                            let mut s = states.lock().expect("states");
                            match s.get_mut(&q.job) {
                                Some(TransferState::Running { stats, .. }) => {
                                    stats.bytes += 1 << 20;
                                    stats.files += 1;
                                    s[&q.job].clone()
                                }
                                Some(state) => state.clone(),
                                None => TransferState::Unknown,
                            }
                        });
                        respond(c, &msg, r).await
                    }
                    Some(AgentVerb::Cancel) => {
                        if let Ok(q) = decode_request::<CancelTransfer>(&msg.payload) {
                            me.cancelled.lock().expect("cancelled").push(q.job);
                        }
                        respond(c, &msg, Ok(TransferCancelled { stopped: true })).await
                    }
                    Some(AgentVerb::Restore) if restore.is_some() => {
                        let r = decode_request::<StartRestoreTransfer>(&msg.payload).map(|start| {
                            let first = begin(&states, start.job);
                            if first {
                                me.restores.lock().expect("restores").push(start.clone());
                                let (me2, plan, states) =
                                    (me.clone(), restore.clone().expect("given"), states.clone());
                                tokio::spawn(async move {
                                    let job = start.job;
                                    let end = plan(me2, start).await;
                                    states.lock().expect("states").insert(job, end);
                                });
                            }
                            TransferAccepted { started: first }
                        });
                        respond(c, &msg, r).await
                    }
                    _ => {
                        let r: Result<(), _> = Err(arca_schemas::ErrorReply::bad_request(
                            "this system does not restore",
                        ));
                        respond(c, &msg, r).await
                    }
                }
            }
        }))
    }

    /// Stores `plain` as one chunk in `start`'s session and returns its id.
    pub async fn put(
        &self,
        start: &StartBackupTransfer,
        plain: &[u8],
        tree: bool,
    ) -> Result<ChunkId, RpcError> {
        let id = frame::chunk_id(&start.chunk_key, plain);
        self.put_frame(start, id, frame::encode(plain, 1), tree)
            .await?;
        Ok(id)
    }

    /// Stores `frame` under the id `id`, whatever they hold.
    pub async fn put_frame(
        &self,
        start: &StartBackupTransfer,
        id: ChunkId,
        frame: Vec<u8>,
        tree: bool,
    ) -> Result<ChunkStored, RpcError> {
        let body = PutChunk {
            session: start.session.clone(),
            id,
            tree,
            frame,
        };
        self.request(start, MediaDataVerb::Put, &body).await
    }

    /// Sends `body` to media's data subject `verb` for this system.
    pub async fn request<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        start: &StartBackupTransfer,
        verb: MediaDataVerb,
        body: &Q,
    ) -> Result<R, RpcError> {
        rpc::request_with_timeout(
            &self.client,
            subject::media_data(&start.media, &self.system, verb),
            body,
            Duration::from_secs(30),
        )
        .await
    }

    /// Sends `body` to media `media`'s data subject `verb` for this system
    /// (e.g. as the target of a restore).
    pub async fn media_request<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        media: &str,
        verb: MediaDataVerb,
        body: &Q,
    ) -> Result<R, RpcError> {
        rpc::request_with_timeout(
            &self.client,
            subject::media_data(media, &self.system, verb),
            body,
            Duration::from_secs(30),
        )
        .await
    }

    /// Stores the tree `nodes` (one tree chunk) and commits it, signed
    /// with the system's own key.
    pub async fn commit(
        &self,
        start: &StartBackupTransfer,
        nodes: Vec<Node>,
    ) -> Result<SnapshotCommitted, RpcError> {
        let plain = codec::encode(&TreeBatch { nodes }).expect("a tree encodes");
        let id = self.put(start, &plain, true).await?;
        self.commit_ids(start, vec![id]).await
    }

    /// Commits the tree chunks `tree` as they are.
    pub async fn commit_ids(
        &self,
        start: &StartBackupTransfer,
        tree: Vec<ChunkId>,
    ) -> Result<SnapshotCommitted, RpcError> {
        let body = CommitSnapshot {
            session: start.session.clone(),
            signature: self.sign_manifest(start.job, &tree),
            tree,
            stats: Default::default(),
            file_errors: vec![],
        };
        self.request(start, MediaDataVerb::Commit, &body).await
    }

    /// A file node at `path` holding `data` as one chunk (stored first);
    /// mode 0644, owned by root.
    pub async fn file(
        &self,
        start: &StartBackupTransfer,
        path: &[u8],
        data: &[u8],
    ) -> Result<Node, RpcError> {
        let (chunks, sizes) = if data.is_empty() {
            (vec![], vec![])
        } else {
            (
                vec![self.put(start, data, false).await?],
                vec![data.len() as u32],
            )
        };
        let mut n = node(path, NodeKind::File { chunks, sizes }, 0o100644);
        n.size = data.len() as u64;
        Ok(n)
    }

    /// Runs `plan` to a transfer outcome: the snapshot committed from the
    /// nodes it makes, or the error media answered.
    pub async fn backup_of(&self, start: &StartBackupTransfer, nodes: Vec<Node>) -> TransferState {
        let committed = self.commit(start, nodes).await;
        TransferState::Done(TransferOutcome {
            stats: Default::default(),
            snapshot: committed.as_ref().ok().map(|c| c.snapshot.id.clone()),
            file_errors: vec![],
            file_warnings: vec![],
            error: committed.err().map(|e| e.to_reply()),
        })
    }
}

/// Marks `job`'s transfer as running; false when it was already known
/// (a repeated start request).
fn begin(states: &Mutex<HashMap<JobId, TransferState>>, job: JobId) -> bool {
    let mut s = states.lock().expect("states");
    if s.contains_key(&job) {
        return false;
    }
    s.insert(
        job,
        TransferState::Running {
            stats: Default::default(),
            current: None,
        },
    );
    true
}

/// A node of `kind` at `path` with `mode` (type bits included), owned by
/// root, dated now.
pub fn node(path: &[u8], kind: NodeKind, mode: u32) -> Node {
    Node {
        mtime: 1_700_000_000,
        ..Node::bare(path, kind, mode)
    }
}

/// A folder node at `path`, mode 0755.
pub fn dir(path: &[u8]) -> Node {
    node(path, NodeKind::Dir, 0o040755)
}

/// A plan that commits the nodes `make` builds (it may store chunks
/// first through the [`Compromised`] it is given).
pub fn plan_tree<F, Fut>(make: F) -> Plan
where
    F: Fn(Compromised, StartBackupTransfer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Node>> + Send + 'static,
{
    let make = Arc::new(make);
    Arc::new(move |c: Compromised, start: StartBackupTransfer| {
        let make = make.clone();
        Box::pin(async move {
            let nodes = make(c.clone(), start.clone()).await;
            c.backup_of(&start, nodes).await
        })
    })
}

/// A plan that never ends: every status question is answered "running",
/// with counters that keep rising so that no stall detector sees a stall.
pub fn plan_forever() -> Plan {
    Arc::new(|_c: Compromised, _start: StartBackupTransfer| {
        Box::pin(async move {
            std::future::pending::<()>().await;
            unreachable!()
        })
    })
}
