//! The media service (the patent's media agent): it owns the repository,
//! accepts chunk streams from agents in sessions the scheduler opens,
//! commits snapshots only when every chunk they name is stored, and serves
//! chunks back for restores.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arca_repo::{Kind, Repository, SnapshotRecord, frame};
use arca_runtime::rpc::{decode_request, respond, verb};
use arca_runtime::trust::Gate;
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, MediaDataVerb, MediaVerb};
use arca_schemas::tree::{NodeKind, TreeBatch};
use arca_schemas::trust::{AuditKind, AuditRecord, TokenClaims};
use arca_schemas::{JobId, SnapshotId, codec};
use async_nats::{Client, Message};
use futures::StreamExt;
use serde::Deserialize;

mod fair;
pub mod limits;
mod quota;
mod sessions;
mod tree_check;

use sessions::Session;

/// Configuration of a media service.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Id in subjects (`arca.media.<id>...`).
    #[serde(default = "default_id")]
    pub id: String,
    /// Folder of the repository; created when missing.
    pub repository: PathBuf,
    /// The repository's key file (mode 0600), created with the repository.
    /// Default: `key` inside the repository folder; keep it elsewhere (and
    /// backed up) to keep the key apart from the data.
    pub key_file: Option<PathBuf>,
    /// A file (mode 0600) holding the passphrase that seals the key file;
    /// `ARCA_KEY_PASSPHRASE` in the environment also gives it. With a
    /// passphrase, a new key file is created sealed.
    #[serde(default)]
    pub key_passphrase_file: Option<PathBuf>,
    /// Target size of a pack, MiB.
    #[serde(default = "default_pack_mib")]
    pub pack_size_mib: u64,
    /// Public key of the scheduler whose job tokens open sessions.
    pub scheduler_key: String,
    /// The service's identity (an nkey seed, mode 0600, created when
    /// missing), to authenticate to NATS.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// TLS settings of the NATS connection.
    #[serde(default)]
    pub tls: Option<arca_runtime::nats::TlsFiles>,
    /// A backup session no request used for this long is closed (its
    /// job ended without saying so, or its agent stopped), seconds.
    #[serde(default = "default_session_idle_secs")]
    pub session_idle_secs: u64,
    /// Most chunks one backup session may store or ask about (media keeps
    /// their ids while the backup runs, for a prune running meanwhile).
    #[serde(default = "default_session_max_chunks")]
    pub session_max_chunks: usize,
}

fn default_session_idle_secs() -> u64 {
    limits::DEFAULT_SESSION_IDLE_SECS
}

fn default_session_max_chunks() -> usize {
    limits::DEFAULT_SESSION_MAX_CHUNKS
}

impl Config {
    /// The key file: `key-file`, or `key` inside the repository folder.
    pub fn key_file_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.repository.join("key"))
    }

    /// The passphrase of the key file, if one is configured: the content
    /// of `key-passphrase-file` (without its final line break), else
    /// `ARCA_KEY_PASSPHRASE`.
    pub fn passphrase(&self) -> anyhow::Result<Option<Vec<u8>>> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(path) = &self.key_passphrase_file {
            let mode = std::fs::metadata(path)
                .map_err(|e| anyhow::anyhow!("key-passphrase-file {}: {e}", path.display()))?
                .permissions()
                .mode();
            anyhow::ensure!(
                mode & 0o077 == 0,
                "key-passphrase-file {} has mode {:o}; it must be readable by its owner only: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
            let mut p = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("key-passphrase-file {}: {e}", path.display()))?;
            while p.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                p.pop();
            }
            anyhow::ensure!(
                !p.is_empty(),
                "key-passphrase-file {} is empty",
                path.display()
            );
            return Ok(Some(p));
        }
        Ok(std::env::var_os("ARCA_KEY_PASSPHRASE")
            .filter(|p| !p.is_empty())
            .map(|p| p.into_encoded_bytes()))
    }

    /// Credentials of the NATS connection.
    pub fn credentials(&self) -> anyhow::Result<arca_runtime::nats::Credentials> {
        arca_runtime::nats::Credentials::from_files(self.identity_file.as_deref(), self.tls.clone())
    }
}

fn default_pack_mib() -> u64 {
    arca_repo::DEFAULT_PACK_SIZE >> 20
}

fn default_id() -> String {
    arca_schemas::names::DEFAULT_MEDIA.to_owned()
}

/// A restore onto another system that an operator allowed: `target` may
/// read the snapshot of `source`, and only it: the chunks of its tree and
/// the file chunks they name, computed when the grant opens. Each chunk
/// served is checked here against its id with the source's key, and sent
/// with its id under `check_key`, the only key the target is given.
struct RestoreGrant {
    job: JobId,
    target: String,
    source: String,
    snapshot: SnapshotId,
    opened_at: std::time::Instant,
    chunks: HashSet<arca_schemas::ChunkId>,
    check_key: [u8; 32],
}

/// How long a restore session lets its target read when the scheduler
/// never closes it (it closes it when the restore job ends).
const RESTORE_GRANT_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A fresh random key for a grant's check values.
fn random_key() -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(uuid::Uuid::new_v4().as_bytes());
    h.update(uuid::Uuid::new_v4().as_bytes());
    *h.finalize().as_bytes()
}

/// Every chunk a snapshot's restore reads: its tree chunks and the file
/// chunks they name.
fn snapshot_chunks(
    repo: &Repository,
    record: &SnapshotRecord,
) -> Result<HashSet<arca_schemas::ChunkId>, ErrorReply> {
    let mut chunks = HashSet::new();
    for id in &record.tree {
        chunks.insert(*id);
        let batch = repo
            .tree_batch(&record.info.system, id)
            .map_err(|e| e.to_reply())?;
        for n in batch.nodes {
            if let NodeKind::File { chunks: c, .. } = n.kind {
                chunks.extend(c);
            }
        }
    }
    Ok(chunks)
}

struct Media {
    id: String,
    repo: Repository,
    client: Client,
    sessions: Mutex<HashMap<String, Session>>,
    restores: Mutex<HashMap<String, RestoreGrant>>,
    gate: Gate,
    /// Raised when a prune or an index repair starts and when it ends (odd
    /// while one runs): only they remove chunks from the index.
    removals: std::sync::atomic::AtomicU64,
    /// Per system, tree chunks whose every chunk was found stored by a
    /// commit, and the value of `removals` then: while it is unchanged,
    /// those chunks are still stored and a commit need not read them again.
    complete_trees: Mutex<HashMap<String, (u64, HashSet<arca_schemas::ChunkId>)>>,
    /// Each system's share of the work on data requests.
    fair: fair::Fairness,
    /// What the systems with a quota hold.
    usage: quota::Usage,
    /// `session-idle-secs`.
    session_idle: std::time::Duration,
    /// `session-max-chunks`.
    session_max_chunks: usize,
}

/// Rewrites the key file sealed by `passphrase`, or without one; the
/// key file is opened with the configured passphrase. The key itself,
/// and so the repository, is unchanged.
pub fn reseal_key_file(config: &Config, passphrase: Option<&[u8]>) -> anyhow::Result<()> {
    let path = config.key_file_path();
    anyhow::ensure!(
        path.exists(),
        "key file {} does not exist (the media service creates it on its first start)",
        path.display()
    );
    let current = config.passphrase()?;
    let keys = arca_repo::Keys::load_or_create(&path, current.as_deref())?;
    keys.write_key_file(&path, passphrase, true)?;
    Ok(())
}

/// Opens the key file, if it exists, with the configured passphrase.
pub fn check_key_file(config: &Config) -> anyhow::Result<()> {
    let path = config.key_file_path();
    if path.exists() {
        let passphrase = config.passphrase()?;
        arca_repo::Keys::load_or_create(&path, passphrase.as_deref())?;
    }
    Ok(())
}

/// A removal of chunks running; see [`Media::removing`].
struct Removing<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Removing<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Pause of data requests after which media returns free memory.
const QUIET: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the media service until `shutdown` resolves.
pub async fn run(
    config: Config,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    arca_runtime::ensure_name("media id", &config.id)?;
    let gate = Gate::new(&config.scheduler_key)?;
    let key_file = config.key_file_path();
    let passphrase = config.passphrase()?;
    if passphrase.is_some() && arca_repo::crypto::key_file_sealed(&key_file) == Some(false) {
        tracing::warn!(key_file = %key_file.display(), "a passphrase is configured but the key file is not sealed by it; seal it with `arca-media --config FILE --seal-key`");
    }
    let repository = config.repository.clone();
    let pack_size = config.pack_size_mib << 20;
    let (repo, report) = tokio::task::spawn_blocking(move || {
        Repository::open_or_init_sealed(&repository, &key_file, passphrase.as_deref(), pack_size)
    })
    .await??;
    if report.recovered_packs > 0 || report.scanned_packs > 0 {
        tracing::warn!(
            recovered = report.recovered_packs,
            scanned = report.scanned_packs,
            "packs left by an interrupted run were recovered and indexed"
        );
    }
    for p in &report.missing_packs {
        tracing::error!(pack = %p, "an index file names a pack that does not exist; run `arca verify`");
    }
    let media = Arc::new(Media {
        id: config.id.clone(),
        repo,
        client: client.clone(),
        sessions: Mutex::new(HashMap::new()),
        restores: Mutex::new(HashMap::new()),
        gate,
        removals: Default::default(),
        complete_trees: Mutex::new(HashMap::new()),
        fair: fair::Fairness::new(),
        usage: Default::default(),
        session_idle: std::time::Duration::from_secs(config.session_idle_secs.max(1)),
        session_max_chunks: config.session_max_chunks,
    });
    let mut control = client.subscribe(subject::media_all(&config.id)).await?;
    let mut data = client
        .subscribe(subject::media_data_all(&config.id))
        .await?;
    client.flush().await?;
    tracing::info!(id = %config.id, repository = %config.repository.display(), "media service ready");
    tokio::pin!(shutdown);
    // Once data requests pause, the memory they used goes back to the
    // system instead of staying with the service until the next job.
    let mut tick = tokio::time::interval(QUIET);
    let mut last_data: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(msg) = control.next() => {
                let m = media.clone();
                tokio::spawn(async move { m.control(msg).await });
            }
            Some(msg) = data.next() => {
                last_data = Some(tokio::time::Instant::now());
                let m = media.clone();
                // A place among the requests in flight is taken here, so
                // that a flood is answered "busy" instead of spawning a
                // task per message.
                match m.fair.admit(data_system(&msg.subject)) {
                    Ok(place) => {
                        tokio::spawn(async move { m.data(msg, place).await });
                    }
                    Err(busy) => {
                        tokio::spawn(async move { respond::<()>(&m.client, &msg, Err(busy)).await });
                    }
                }
            }
            _ = tick.tick() => {
                media.expire_sessions();
                if last_data.is_some_and(|t| t.elapsed() >= QUIET) {
                    last_data = None;
                    tokio::task::spawn_blocking(arca_runtime::memory::release_free_memory);
                }
            }
            else => break,
        }
    }
    tracing::info!("media service stopped");
    Ok(())
}

/// Runs repository work off the async threads; a task that panicked is an
/// internal error.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, ErrorReply> + Send + 'static,
) -> Result<T, ErrorReply> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ErrorReply::internal(format!("{what} task failed: {e}")))?
}

impl Media {
    /// Records a refused request in the audit stream.
    async fn refuse(
        &self,
        subject: &str,
        system: Option<String>,
        job: Option<JobId>,
        reason: String,
    ) {
        let mut a = AuditRecord::new(AuditKind::Refused, format!("media/{}", self.id));
        a.system = system;
        a.job = job;
        a.subject = Some(subject.to_owned());
        a.reason = Some(reason);
        arca_runtime::trust::audit(&self.client, "media", &self.id, a).await;
    }

    /// Answers a command, auditing a refusal for want of authorization.
    async fn answer<T: serde::Serialize>(
        &self,
        msg: &Message,
        system: Option<String>,
        r: Result<T, ErrorReply>,
    ) {
        if let Err(e) = &r
            && e.code == arca_schemas::ErrorCode::Forbidden
        {
            self.refuse(&msg.subject, system, None, e.message.clone())
                .await;
        }
        respond(&self.client, msg, r).await
    }

    async fn control(self: Arc<Self>, msg: Message) {
        match MediaVerb::parse(verb(&msg.subject)) {
            Some(MediaVerb::Session) => {
                let r = self
                    .gate
                    .check(&msg)
                    .map_err(|e| e.to_reply())
                    .and_then(|claims| self.open_session(&msg.payload, &claims));
                self.answer(&msg, None, r).await
            }
            Some(MediaVerb::RestoreSession) => {
                let r = match self.gate.check(&msg) {
                    Ok(claims) => self.open_restore(&msg.payload, claims).await,
                    Err(e) => Err(e.to_reply()),
                };
                self.answer(&msg, None, r).await
            }
            Some(MediaVerb::CloseSession) => {
                let r = decode_request::<CloseSession>(&msg.payload).map(|req| SessionClosed {
                    closed: self.close_job(req.job),
                });
                respond(&self.client, &msg, r).await
            }
            Some(MediaVerb::CloseRestore) => {
                let r = match self.gate.check(&msg) {
                    Ok(claims) => self.close_restore(&msg.payload, &claims),
                    Err(e) => Err(e.to_reply()),
                };
                self.answer(&msg, None, r).await
            }
            Some(MediaVerb::Snapshots) => {
                let r = self.list_snapshots(&msg.payload).await;
                respond(&self.client, &msg, r).await
            }
            Some(MediaVerb::Snapshot) => {
                let r = self.get_snapshot(&msg.payload, None).await;
                respond(&self.client, &msg, r).await
            }
            Some(MediaVerb::ChunkKey) => {
                let r = decode_request::<GetChunkKey>(&msg.payload).and_then(|req| {
                    if !subject::valid_token(&req.system) {
                        return Err(ErrorReply::bad_request(format!(
                            "invalid system name {:?}",
                            req.system
                        )));
                    }
                    Ok(ChunkKey {
                        key: self.repo.chunk_id_key(&req.system),
                    })
                });
                respond(&self.client, &msg, r).await
            }
            Some(MediaVerb::Verify) => {
                let r = self.clone().verify(msg.payload.clone()).await;
                respond(&self.client, &msg, r).await
            }
            Some(MediaVerb::Forget) => {
                let repo = self.repo.clone();
                let r = match decode_request::<ForgetSnapshots>(&msg.payload) {
                    Ok(req) if req.policy.is_empty() => Err(ErrorReply::bad_request(
                        "a policy that keeps nothing is refused: name at least one --keep-* rule",
                    )),
                    Ok(req) => tokio::task::spawn_blocking(move || {
                        repo.forget(&req.system, &req.policy, req.dry_run)
                    })
                    .await
                    .map_err(|e| ErrorReply::internal(e.to_string()))
                    .and_then(|r| r.map_err(|e| e.to_reply()))
                    .map(|(kept, forgotten)| ForgetReply { kept, forgotten }),
                    Err(e) => Err(e),
                };
                respond(&self.client, &msg, r).await
            }
            Some(MediaVerb::Prune) => {
                let me = self.clone();
                let r = match decode_request::<PruneRepository>(&msg.payload) {
                    Ok(req) => tokio::task::spawn_blocking(move || {
                        let since = std::time::Instant::now();
                        let guard = me.clone();
                        let _removing = me.removing();
                        let r = me
                            .repo
                            .prune(&move |s, id| guard.in_use(s, id, since), req.dry_run);
                        if r.is_ok() && !req.dry_run {
                            me.drop_old_sessions(since);
                        }
                        r
                    })
                    .await
                    .map_err(|e| ErrorReply::internal(e.to_string()))
                    .and_then(|r| r.map_err(|e| e.to_reply())),
                    Err(e) => Err(e),
                };
                respond(&self.client, &msg, r).await
            }
            Some(MediaVerb::Tree) => {
                let r = match decode_request::<ListTree>(&msg.payload) {
                    Ok(req) => {
                        let repo = self.repo.clone();
                        blocking("listing", move || list_tree(&repo, &req)).await
                    }
                    Err(e) => Err(e),
                };
                respond(&self.client, &msg, r).await
            }
            Some(MediaVerb::RepairIndex) => {
                let me = self.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let _removing = me.removing();
                    me.repo.repair_index()
                })
                .await
                .map_err(|e| ErrorReply::internal(e.to_string()))
                .and_then(|r| r.map_err(|e| e.to_reply()))
                .map(|r| RepairIndexReply {
                    packs: r.packs,
                    chunks: r.chunks,
                    damaged: r.damaged,
                });
                respond(&self.client, &msg, r).await
            }
            None => {
                let r: Result<(), _> = Err(ErrorReply::bad_request(format!(
                    "unknown verb in {}",
                    msg.subject
                )));
                respond(&self.client, &msg, r).await
            }
        }
    }

    async fn data(self: Arc<Self>, msg: Message, place: fair::Admitted) {
        let system = data_system(&msg.subject).to_owned();
        // One of the system's turns at the repository, for the whole
        // request: a system flooding media waits behind itself.
        let _turn = place.turn().await;
        match MediaDataVerb::parse(verb(&msg.subject)) {
            Some(MediaDataVerb::Has) => {
                let r = self.has(&system, &msg.payload);
                respond(&self.client, &msg, r).await
            }
            Some(MediaDataVerb::Put) => {
                let r = self.clone().put(system, msg.payload.clone()).await;
                respond(&self.client, &msg, r).await
            }
            Some(MediaDataVerb::PutMany) => {
                let r = self.clone().put_many(system, msg.payload.clone()).await;
                respond(&self.client, &msg, r).await
            }
            Some(MediaDataVerb::Commit) => {
                let r = self
                    .clone()
                    .commit(system.clone(), msg.payload.clone())
                    .await;
                self.answer(&msg, Some(system), r).await
            }
            // A read outside a restore grant is refused and audited.
            Some(MediaDataVerb::GetMany) => {
                let r = self
                    .clone()
                    .get_many(system.clone(), msg.payload.clone())
                    .await;
                self.answer(&msg, Some(system), r).await
            }
            Some(MediaDataVerb::Get) => {
                let r = self.clone().get(system.clone(), msg.payload.clone()).await;
                self.answer(&msg, Some(system), r).await
            }
            Some(MediaDataVerb::Snapshot) => {
                let r = self.get_snapshot(&msg.payload, Some(&system)).await;
                respond(&self.client, &msg, r).await
            }
            None => {
                let r: Result<(), _> = Err(ErrorReply::bad_request(format!(
                    "unknown verb in {}",
                    msg.subject
                )));
                respond(&self.client, &msg, r).await
            }
        }
    }

    fn open_session(
        &self,
        payload: &[u8],
        claims: &TokenClaims,
    ) -> Result<SessionOpened, ErrorReply> {
        let req: OpenSession = decode_request(payload)?;
        if !subject::valid_token(&req.system) {
            return Err(ErrorReply::bad_request(format!(
                "invalid system name {:?}",
                req.system
            )));
        }
        if claims.system != req.system || claims.job != req.job {
            return Err(ErrorReply::forbidden(format!(
                "refused: the job token is for system {} job {}, the request for {} job {}",
                claims.system, claims.job, req.system, req.job
            )));
        }
        let Some(agent_key) = claims.agent_key.clone() else {
            return Err(ErrorReply::forbidden(format!(
                "refused: the job token names no enrolled key for system {}",
                req.system
            )));
        };
        if let Some(id) = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .find(|(_, s)| s.job == req.job && !s.closed)
            .map(|(id, _)| id.clone())
        {
            return Ok(SessionOpened {
                session: id,
                check_key: None,
            });
        }
        if req.quota_bytes.is_some() {
            // What the system holds now; every put of the session adds.
            self.usage
                .set(&req.system, self.repo.stored_bytes(&req.system));
        }
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let id = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(job = %req.job, system = %req.system, session = %id, quota = ?req.quota_bytes, "session opened");
        sessions.insert(
            id.clone(),
            Session::new(req.job, req.system, agent_key, req.paths, req.quota_bytes),
        );
        Ok(SessionOpened {
            session: id,
            check_key: None,
        })
    }

    /// Opens (once per job) a restore session letting `req.system` read a
    /// snapshot of another system, as the token allows.
    async fn open_restore(
        &self,
        payload: &[u8],
        claims: TokenClaims,
    ) -> Result<SessionOpened, ErrorReply> {
        let req: OpenRestoreSession = decode_request(payload)?;
        let repo = self.repo.clone();
        let id = req.snapshot.clone();
        let record = tokio::task::spawn_blocking(move || repo.read_snapshot(&id))
            .await
            .map_err(|e| ErrorReply::internal(e.to_string()))?
            .map_err(|e| e.to_reply())?;
        let source = record.info.system.clone();
        if claims.system != req.system
            || claims.job != req.job
            || claims.snapshot.as_ref() != Some(&req.snapshot)
            || claims.source_system.as_deref() != Some(source.as_str())
            || !claims.cross_system
        {
            return Err(ErrorReply::forbidden(format!(
                "refused: the job token does not allow restoring snapshot {} of {source} onto {}",
                req.snapshot, req.system
            )));
        }
        let existing = |restores: &mut HashMap<String, RestoreGrant>| {
            restores.retain(|_, g| g.opened_at.elapsed() < RESTORE_GRANT_TTL);
            restores
                .iter()
                .find(|(_, g)| g.job == req.job)
                .map(|(id, g)| SessionOpened {
                    session: id.clone(),
                    check_key: Some(g.check_key.to_vec()),
                })
        };
        if let Some(opened) = existing(&mut self.restores.lock().expect("restores lock")) {
            return Ok(opened);
        }
        let repo = self.repo.clone();
        let chunks = tokio::task::spawn_blocking(move || snapshot_chunks(&repo, &record))
            .await
            .map_err(|e| ErrorReply::internal(e.to_string()))??;
        let mut restores = self.restores.lock().expect("restores lock");
        if let Some(opened) = existing(&mut restores) {
            return Ok(opened);
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let check_key = random_key();
        tracing::warn!(job = %req.job, snapshot = %req.snapshot, %source, target = %req.system, session = %id, chunks = chunks.len(), "cross-system restore session opened");
        restores.insert(
            id.clone(),
            RestoreGrant {
                job: req.job,
                target: req.system,
                source,
                snapshot: req.snapshot,
                opened_at: std::time::Instant::now(),
                chunks,
                check_key,
            },
        );
        Ok(SessionOpened {
            session: id,
            check_key: Some(check_key.to_vec()),
        })
    }

    /// Ends the restore grant of the token's job (when the job ends).
    fn close_restore(
        &self,
        payload: &[u8],
        claims: &TokenClaims,
    ) -> Result<RestoreSessionClosed, ErrorReply> {
        let req: CloseRestoreSession = decode_request(payload)?;
        if claims.job != req.job {
            return Err(ErrorReply::forbidden(format!(
                "refused: the job token is not for job {}",
                req.job
            )));
        }
        let mut restores = self.restores.lock().expect("restores lock");
        let before = restores.len();
        restores.retain(|_, g| g.job != req.job);
        let closed = restores.len() < before;
        if closed {
            tracing::info!(job = %req.job, "cross-system restore session closed");
        }
        Ok(RestoreSessionClosed { closed })
    }

    /// Within a restore session: refuses any chunk outside the granted
    /// snapshot, and gives the source's chunk-id key (to check each chunk
    /// before serving it) and the grant's check key. `None` outside a
    /// session.
    fn grant_keys(
        &self,
        system: &str,
        session: Option<&str>,
        ids: &[arca_schemas::ChunkId],
    ) -> Result<Option<GrantKeys>, ErrorReply> {
        let Some(session) = session else {
            return Ok(None);
        };
        let restores = self.restores.lock().expect("restores lock");
        let Some(g) = restores
            .get(session)
            .filter(|g| g.target == system && g.opened_at.elapsed() < RESTORE_GRANT_TTL)
        else {
            return Err(ErrorReply::forbidden(format!(
                "refused: no restore session {session} for system {system}"
            )));
        };
        if let Some(id) = ids.iter().find(|id| !g.chunks.contains(id)) {
            return Err(ErrorReply::forbidden(format!(
                "refused: chunk {id} is not part of snapshot {}, the only one restore session \
                 {session} lets {system} read",
                g.snapshot
            )));
        }
        Ok(Some(GrantKeys {
            source: self.repo.chunk_id_key(&g.source),
            check: g.check_key,
        }))
    }

    /// The system whose data a restore request of `system` reads: its own,
    /// or, within a restore session for it, the snapshot's system.
    fn read_scope(
        &self,
        system: &str,
        session: Option<&str>,
    ) -> Result<(String, Option<SnapshotId>), ErrorReply> {
        let Some(session) = session else {
            return Ok((system.to_owned(), None));
        };
        let restores = self.restores.lock().expect("restores lock");
        match restores.get(session) {
            Some(g) if g.target == system && g.opened_at.elapsed() < RESTORE_GRANT_TTL => {
                Ok((g.source.clone(), Some(g.snapshot.clone())))
            }
            _ => Err(ErrorReply::forbidden(format!(
                "refused: no restore session {session} for system {system}"
            ))),
        }
    }

    async fn put(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<ChunkStored, ErrorReply> {
        let req: PutChunk = decode_request(&payload)?;
        self.check_session(&req.session, &system)?;
        self.touch(&req.session, &[req.id])?;
        let quota = self.session_quota(&req.session);
        blocking("put", move || {
            if self.repo.has_chunk(&system, &req.id) {
                return Ok(ChunkStored { new: false });
            }
            let kind = if req.tree { Kind::Tree } else { Kind::Data };
            let reserved = self.usage.reserve(&system, quota, req.frame.len() as u64)?;
            check_frame(&self.repo, &system, kind, &req.id, &req.frame)?;
            let new = self
                .repo
                .put_chunk(&system, kind, &req.id, &req.frame)
                .map_err(|e| e.to_reply())?;
            reserved.keep(if new { req.frame.len() as u64 } else { 0 });
            Ok(ChunkStored { new })
        })
        .await
    }

    /// Stores a batch of chunks with one durable write.
    async fn put_many(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<ChunksStored, ErrorReply> {
        let req: PutChunks = decode_request(&payload)?;
        self.check_session(&req.session, &system)?;
        limits::at_most("put-many", req.chunks.len(), limits::MAX_PUT_CHUNKS)?;
        let ids: Vec<_> = req.chunks.iter().map(|c| c.id).collect();
        self.touch(&req.session, &ids)?;
        let quota = self.session_quota(&req.session);
        blocking("put", move || {
            // Each chunk once: a repeated id, or one already stored, is
            // answered as not new without being decoded.
            let mut seen = HashSet::new();
            let todo: Vec<&PutChunk> = req
                .chunks
                .iter()
                .filter(|c| seen.insert(c.id) && !self.repo.has_chunk(&system, &c.id))
                .collect();
            let bytes = todo.iter().map(|c| c.frame.len() as u64).sum();
            let reserved = self.usage.reserve(&system, quota, bytes)?;
            // Every chunk's claim is checked, as for a single put.
            let items: Vec<(Kind, arca_schemas::ChunkId, &[u8])> = todo
                .iter()
                .map(|c| {
                    let kind = if c.tree { Kind::Tree } else { Kind::Data };
                    check_frame(&self.repo, &system, kind, &c.id, &c.frame)?;
                    Ok((kind, c.id, c.frame.as_slice()))
                })
                .collect::<Result<_, ErrorReply>>()?;
            let stored = self
                .repo
                .put_chunks(&system, &items)
                .map_err(|e| e.to_reply())?;
            let mut new = vec![false; req.chunks.len()];
            let mut kept = 0;
            for ((_, id, frame), n) in items.iter().zip(stored) {
                if n {
                    kept += frame.len() as u64;
                    if let Some(i) = req.chunks.iter().position(|c| c.id == *id) {
                        new[i] = true;
                    }
                }
            }
            reserved.keep(kept);
            Ok(ChunksStored { new })
        })
        .await
    }

    /// True when a backup depends on the chunk although no snapshot that
    /// a prune started at `since` has read names it: the backup is still
    /// running, or committed its snapshot after the prune started.
    fn in_use(&self, system: &str, id: &arca_schemas::ChunkId, since: std::time::Instant) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .values()
            .any(|s| {
                s.system == system
                    && s.committed_at.is_none_or(|t| t >= since)
                    && s.touched.contains(id)
            })
    }

    fn has(&self, system: &str, payload: &[u8]) -> Result<HasChunksReply, ErrorReply> {
        let req: HasChunks = decode_request(payload)?;
        self.check_session(&req.session, system)?;
        limits::at_most("has", req.ids.len(), MAX_HAS_BATCH)?;
        self.touch(&req.session, &req.ids)?;
        Ok(HasChunksReply {
            present: req
                .ids
                .iter()
                .map(|id| self.repo.has_chunk(system, id))
                .collect(),
        })
    }

    async fn verify(self: Arc<Self>, payload: bytes::Bytes) -> Result<VerifyReport, ErrorReply> {
        let req: VerifyRepository = decode_request(&payload)?;
        blocking("verify", move || {
            let percent = if req.subset_percent == 0 {
                100
            } else {
                req.subset_percent
            };
            self.repo
                .verify(req.read_data, percent)
                .map_err(|e| e.to_reply())
        })
        .await
    }

    async fn get(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<ChunkData, ErrorReply> {
        let req: GetChunk = decode_request(&payload)?;
        let keys = self.grant_keys(&system, req.session.as_deref(), &[req.id])?;
        let (system, _) = self.read_scope(&system, req.session.as_deref())?;
        blocking("get", move || {
            let frame = self
                .repo
                .get_chunk(&system, &req.id)
                .map_err(|e| e.to_reply())?;
            let check = match keys {
                Some(keys) => Some(check_value(&frame, &req.id, keys).map_err(|e| e.to_reply())?),
                None => None,
            };
            Ok(ChunkData { frame, check })
        })
        .await
    }

    /// Several chunks in one answer: at most [`limits::MAX_GET_IDS`] ids
    /// and [`limits::MAX_GET_BYTES`] of frames (counted from the index
    /// before anything is read, a repeated id as often as it is named);
    /// each distinct chunk is read once.
    async fn get_many(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<ChunksData, ErrorReply> {
        let req: GetChunks = decode_request(&payload)?;
        let keys = self.grant_keys(&system, req.session.as_deref(), &req.ids)?;
        let (system, _) = self.read_scope(&system, req.session.as_deref())?;
        limits::at_most("get-many", req.ids.len(), limits::MAX_GET_IDS)?;
        let bytes: u64 = req
            .ids
            .iter()
            .filter_map(|id| self.repo.chunk_len(&system, id))
            .map(u64::from)
            .sum();
        if bytes > limits::MAX_GET_BYTES {
            return Err(ErrorReply::bad_request(format!(
                "refused: get-many asks for {} of chunks, at most {} per request; ask for \
                 fewer chunks at a time",
                arca_schemas::text::human_bytes(bytes),
                arca_schemas::text::human_bytes(limits::MAX_GET_BYTES)
            )));
        }
        blocking("get", move || {
            let mut seen = HashSet::new();
            let distinct: Vec<arca_schemas::ChunkId> = req
                .ids
                .iter()
                .filter(|id| seen.insert(**id))
                .copied()
                .collect();
            // Each distinct chunk read (and, for a grant, checked) once.
            type Checked = Result<(Vec<u8>, Option<arca_schemas::ChunkId>), ErrorReply>;
            let read: HashMap<arca_schemas::ChunkId, Checked> = distinct
                .iter()
                .copied()
                .zip(self.repo.get_chunks(&system, &distinct))
                .map(|(id, r)| {
                    let checked = r
                        .and_then(|frame| match keys {
                            Some(keys) => {
                                check_value(&frame, &id, keys).map(|check| (frame, Some(check)))
                            }
                            None => Ok((frame, None)),
                        })
                        .map_err(|e| e.to_reply());
                    (id, checked)
                })
                .collect();
            let chunks = req
                .ids
                .iter()
                .map(|id| match &read[id] {
                    Ok((frame, check)) => FetchedChunk {
                        frame: Some(frame.clone()),
                        error: None,
                        check: *check,
                    },
                    Err(e) => FetchedChunk {
                        frame: None,
                        error: Some(e.clone()),
                        check: None,
                    },
                })
                .collect();
            Ok(ChunksData { chunks })
        })
        .await
    }

    async fn commit(
        self: Arc<Self>,
        system: String,
        payload: bytes::Bytes,
    ) -> Result<SnapshotCommitted, ErrorReply> {
        let req: CommitSnapshot = decode_request(&payload)?;
        self.check_session(&req.session, &system)?;
        if req.tree.len() > limits::MAX_TREE_CHUNKS {
            return Err(tree_check::refused(
                &system,
                format!(
                    "names {} tree chunks, at most {}",
                    req.tree.len(),
                    limits::MAX_TREE_CHUNKS
                ),
            ));
        }
        // One commit of a session at a time; the next gets its answer.
        let _committing = self.start_commit(&req.session)?;
        let (job, paths, agent_key) = {
            let sessions = self.sessions.lock().expect("sessions lock");
            let s = sessions
                .get(&req.session)
                .ok_or_else(|| ErrorReply::not_found(format!("no session {}", req.session)))?;
            if let Some(info) = &s.committed {
                return Ok(SnapshotCommitted {
                    snapshot: info.clone(),
                });
            }
            (s.job, s.paths.clone(), s.agent_key.clone())
        };
        // Invariant 4: the snapshot is the system's only when the key
        // enrolled for it signed this manifest; otherwise nothing commits.
        let manifest = arca_runtime::trust::manifest_bytes(&system, job, &req.tree);
        if let Err(e) = arca_runtime::identity::verify(&agent_key, &manifest, &req.signature) {
            return Err(ErrorReply::forbidden(format!(
                "refused: the snapshot manifest is not signed by the key enrolled for system \
                 {system} ({e}); snapshot not committed"
            )));
        }
        let signature = hex::encode(&req.signature);
        let me = self.clone();
        let info = blocking("commit", move || -> Result<SnapshotInfo, ErrorReply> {
            me.check_tree_complete(&system, &req.tree)?;
            me.repo.flush(&system).map_err(|e| e.to_reply())?;
            let info = SnapshotInfo {
                id: SnapshotId::new(),
                system: system.clone(),
                job,
                time: chrono::Utc::now(),
                paths,
                media: me.id.clone(),
                stats: req.stats,
                file_errors: req.file_errors,
                signer: Some(agent_key),
                signature: Some(signature),
            };
            me.repo
                .write_snapshot(&SnapshotRecord {
                    info: info.clone(),
                    tree: req.tree,
                })
                .map_err(|e| e.to_reply())?;
            // The backup's data is stored: what it used goes back now.
            arca_runtime::memory::release_free_memory();
            Ok(info)
        })
        .await?;
        tracing::info!(snapshot = %info.id, system = %info.system, job = %info.job, "snapshot committed");
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if let Some(s) = sessions.get_mut(&req.session) {
            s.committed = Some(info.clone());
            s.committed_at = Some(std::time::Instant::now());
        }
        Ok(SnapshotCommitted { snapshot: info })
    }

    /// Invariant 3: a snapshot is committed only when every chunk it
    /// references is durably stored.
    ///
    /// A tree chunk found complete by an earlier commit, with no prune or
    /// index repair since, is only checked to be stored: the chunks it
    /// names were stored then and nothing removed chunks since. An
    /// unchanged tree's commit so reads only the tree chunks that changed.
    fn check_tree_complete(
        &self,
        system: &str,
        tree: &[arca_schemas::ChunkId],
    ) -> Result<(), ErrorReply> {
        use std::sync::atomic::Ordering;
        let key = self.repo.chunk_id_key(system);
        let epoch = self.removals.load(Ordering::SeqCst);
        let known: HashSet<arca_schemas::ChunkId> = {
            let trees = self.complete_trees.lock().expect("trees lock");
            match trees.get(system) {
                Some((e, ids)) if *e == epoch && epoch.is_multiple_of(2) => {
                    tree.iter().filter(|id| ids.contains(id)).copied().collect()
                }
                _ => HashSet::new(),
            }
        };
        // Each tree chunk is decoded once; a tree naming one twice would
        // make every restore of it do the work twice, and is refused.
        let mut seen = HashSet::with_capacity(tree.len());
        if let Some(twice) = tree.iter().find(|id| !seen.insert(**id)) {
            return Err(tree_check::refused(
                system,
                format!("names tree chunk {twice} more than once"),
            ));
        }
        drop(seen);
        for id in tree {
            if known.contains(id) {
                if !self.repo.has_chunk(system, id) {
                    return Err(ErrorReply::bad_request(format!(
                        "tree chunk {id} is not stored; snapshot not committed"
                    )));
                }
                continue;
            }
            let frame_bytes = self.repo.get_chunk(system, id).map_err(|e| e.to_reply())?;
            let plain = frame::decode(&frame_bytes, &key, id).map_err(|e| e.to_reply())?;
            let batch: TreeBatch = codec::decode(&plain).map_err(|e| {
                ErrorReply::bad_request(format!("tree chunk {id} is not a tree: {e}"))
            })?;
            drop(plain);
            tree_check::check_batch(system, id, &batch)?;
            for node in &batch.nodes {
                if let NodeKind::File { chunks, .. } = &node.kind
                    && let Some(missing) = chunks.iter().find(|c| !self.repo.has_chunk(system, c))
                {
                    return Err(ErrorReply::bad_request(format!(
                        "chunk {missing} of {} is not stored; snapshot not committed",
                        arca_schemas::text::escape_bytes(&node.path)
                    )));
                }
            }
        }
        // Remembered only when no removal started meanwhile.
        if epoch.is_multiple_of(2) && self.removals.load(Ordering::SeqCst) == epoch {
            let mut trees = self.complete_trees.lock().expect("trees lock");
            let entry = trees
                .entry(system.to_owned())
                .or_insert_with(|| (epoch, HashSet::new()));
            if entry.0 != epoch {
                *entry = (epoch, HashSet::new());
            }
            entry.1.extend(tree.iter().copied());
        }
        Ok(())
    }

    /// Marks a removal of chunks (prune, index repair) as running until
    /// the guard is dropped: commits check every tree chunk again.
    fn removing(&self) -> Removing<'_> {
        self.removals
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.complete_trees.lock().expect("trees lock").clear();
        Removing(&self.removals)
    }

    async fn list_snapshots(&self, payload: &[u8]) -> Result<ListSnapshotsReply, ErrorReply> {
        let req: MediaListSnapshots = decode_request(payload)?;
        let repo = self.repo.clone();
        let records =
            tokio::task::spawn_blocking(move || repo.list_snapshots(req.system.as_deref()))
                .await
                .map_err(|e| ErrorReply::internal(e.to_string()))?
                .map_err(|e| e.to_reply())?;
        let mut snapshots: Vec<_> = records.into_iter().map(|r| r.info).collect();
        snapshots.reverse();
        Ok(ListSnapshotsReply { snapshots })
    }

    /// A snapshot's record; with `system`, only when it belongs to it.
    async fn get_snapshot(
        &self,
        payload: &[u8],
        system: Option<&str>,
    ) -> Result<SnapshotReply, ErrorReply> {
        let req: GetSnapshot = decode_request(payload)?;
        let system = match system {
            Some(s) => {
                let (scope, granted) = self.read_scope(s, req.session.as_deref())?;
                if granted.is_some_and(|g| g != req.snapshot) {
                    return Err(ErrorReply::forbidden(format!(
                        "refused: restore session is not for snapshot {}",
                        req.snapshot
                    )));
                }
                Some(scope)
            }
            None => None,
        };
        let repo = self.repo.clone();
        let id = req.snapshot.clone();
        let record = tokio::task::spawn_blocking(move || repo.read_snapshot(&id))
            .await
            .map_err(|e| ErrorReply::internal(e.to_string()))?
            .map_err(|e| e.to_reply())?;
        if system.is_some_and(|s| s != record.info.system) {
            return Err(ErrorReply::not_found(format!("snapshot {}", req.snapshot)));
        }
        Ok(SnapshotReply {
            info: record.info,
            tree: record.tree,
        })
    }
}

/// The keys a restore session reads with.
#[derive(Clone, Copy)]
struct GrantKeys {
    /// The source system's chunk-id key (never sent).
    source: [u8; 32],
    /// The grant's check key (the target's).
    check: [u8; 32],
}

/// A chunk served within a restore session: checked against `id` with the
/// source system's key, and its id under the grant's check key.
fn check_value(
    frame_bytes: &[u8],
    id: &arca_schemas::ChunkId,
    keys: GrantKeys,
) -> Result<arca_schemas::ChunkId, arca_repo::RepoError> {
    let plain = frame::decode(frame_bytes, &keys.source, id)?;
    Ok(frame::chunk_id(&keys.check, &plain))
}

/// One page of a snapshot's file list, chunk lists summed up by a digest.
fn list_tree(repo: &Repository, req: &ListTree) -> Result<TreePage, ErrorReply> {
    let record = repo
        .read_snapshot(&req.snapshot)
        .map_err(|e| e.to_reply())?;
    let system = record.info.system;
    let pages = record.tree.len() as u32;
    let Some(id) = record.tree.get(req.page as usize) else {
        return Ok(TreePage {
            system,
            pages,
            entries: Vec::new(),
        });
    };
    let batch = repo.tree_batch(&system, id).map_err(|e| e.to_reply())?;
    let entries = batch
        .nodes
        .into_iter()
        .map(|mut node| {
            let content = match &mut node.kind {
                NodeKind::File { chunks, sizes } => {
                    let mut h = blake3::Hasher::new();
                    for c in chunks.iter() {
                        h.update(&c.0);
                    }
                    chunks.clear();
                    sizes.clear();
                    Some(h.finalize().to_hex().to_string())
                }
                _ => None,
            };
            TreeEntry { node, content }
        })
        .collect();
    Ok(TreePage {
        system,
        pages,
        entries,
    })
}

/// The system of a data subject: `arca.media.<id>.data.<system>.<verb>`.
fn data_system(subject: &str) -> &str {
    subject.split('.').nth(4).unwrap_or_default()
}

/// Checks an agent's claim about a chunk before it is stored: the frame
/// decodes, within the bound of its kind ([`frame::MAX_CHUNK`] for data,
/// [`frame::MAX_TREE_CHUNK`] for a tree), to bytes that hash to its id
/// under the system's key, so a chunk can never lie about itself.
fn check_frame(
    repo: &Repository,
    system: &str,
    kind: Kind,
    id: &arca_schemas::ChunkId,
    bytes: &[u8],
) -> Result<(), ErrorReply> {
    let cap = match kind {
        Kind::Data => frame::MAX_CHUNK,
        Kind::Tree => frame::MAX_TREE_CHUNK,
    };
    frame::decode_within(bytes, &repo.chunk_id_key(system), id, cap)
        .map(drop)
        .map_err(|e| e.to_reply())
}
