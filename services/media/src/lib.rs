//! The media service (the patent's media agent): it owns the repository,
//! accepts chunk streams from agents in sessions the scheduler opens,
//! commits snapshots only when every chunk they name is stored, and serves
//! chunks back for restores.
//!
//! This file starts the service and dispatches each request to the module
//! of its concept: [`config`], backup [`sessions`], [`ingest`] (put, has,
//! commit), [`restore`] (serving snapshots and chunks, cross-system
//! grants included) and [`maintenance`] (verify, forget, prune, repair).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use arca_repo::Repository;
use arca_runtime::rpc::{decode_request, respond, verb};
use arca_runtime::trust::Gate;
use arca_schemas::JobId;
use arca_schemas::error::ErrorReply;
use arca_schemas::msg::*;
use arca_schemas::subject::{self, MediaDataVerb, MediaVerb};
use arca_schemas::trust::{AuditKind, AuditRecord};
use async_nats::{Client, Message};
use futures::StreamExt;

mod config;
mod convert;
pub mod error;
mod fair;
mod ingest;
pub mod limits;
mod maintenance;
mod quota;
mod restore;
mod sessions;
mod tree_check;

pub use config::{Config, check_key_file, reseal_key_file};
pub use error::MediaError;
use restore::RestoreGrant;
use sessions::Session;

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
                        tokio::spawn(async move { respond::<()>(&m.client, &msg, Err(busy.to_reply())).await });
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
    f: impl FnOnce() -> error::Result<T> + Send + 'static,
) -> error::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MediaError::Task(format!("{what} task failed: {e}")))?
}

/// The wire's form of a result: the error becomes its reply here, at the
/// boundary.
fn wire<T>(r: error::Result<T>) -> Result<T, ErrorReply> {
    r.map_err(|e| e.to_reply())
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
        r: error::Result<T>,
    ) {
        let r = wire(r);
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
                    .map_err(|e| MediaError::from(e.to_reply()))
                    .and_then(|claims| self.open_session(&msg.payload, &claims));
                self.answer(&msg, None, r).await
            }
            Some(MediaVerb::RestoreSession) => {
                let r = match self.gate.check(&msg) {
                    Ok(claims) => self.open_restore(&msg.payload, claims).await,
                    Err(e) => Err(e.to_reply().into()),
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
                    Err(e) => Err(e.to_reply().into()),
                };
                self.answer(&msg, None, r).await
            }
            Some(MediaVerb::Snapshots) => {
                let r = self.list_snapshots(&msg.payload).await;
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaVerb::Snapshot) => {
                let r = self.get_snapshot(&msg.payload, None).await;
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaVerb::ChunkKey) => {
                let r = self.chunk_key(&msg.payload);
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaVerb::Verify) => {
                let r = self.clone().verify(msg.payload.clone()).await;
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaVerb::Forget) => {
                let r = self.clone().forget(msg.payload.clone()).await;
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaVerb::Prune) => {
                let r = self.clone().prune(msg.payload.clone()).await;
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaVerb::Tree) => {
                let r = self.clone().tree(msg.payload.clone()).await;
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaVerb::RepairIndex) => {
                let r = self.clone().repair_index().await;
                respond(&self.client, &msg, wire(r)).await
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
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaDataVerb::Put) => {
                let r = self.clone().put(system, msg.payload.clone()).await;
                respond(&self.client, &msg, wire(r)).await
            }
            Some(MediaDataVerb::PutMany) => {
                let r = self.clone().put_many(system, msg.payload.clone()).await;
                respond(&self.client, &msg, wire(r)).await
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
                respond(&self.client, &msg, wire(r)).await
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
}

/// The system of a data subject: `arca.media.<id>.data.<system>.<verb>`.
fn data_system(subject: &str) -> &str {
    subject.split('.').nth(4).unwrap_or_default()
}
