//! The disk agent: one per system, in the lower-trust zone. It runs the
//! system's hooks, reads its files into chunk streams for media and writes
//! restored files back, verifying every byte. It holds no archive key.
//!
//! Requests that act on a job are idempotent: a hook runs once per job and
//! phase (a repeated request gets the first result), a transfer starts once
//! per job (a repeated start reports it is already known).
//!
//! Invariant 2: after a pre hook, the agent arms a deadline of its own; if
//! no finish request has come by then (the scheduler vanished), it runs the
//! post hook itself, and a later finish request gets that result, marked
//! `by-agent-deadline` so that the scheduler reports it.
//!
//! A transfer can be cancelled (`cancel`): the task stops where it is, and a
//! backup stopped this way commits no snapshot.

pub mod application;
pub mod backup;
pub mod door;
pub mod hooks;
pub mod meta;
pub mod patience;
pub mod prefetch;
pub mod restore;
pub mod select;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_runtime::identity::Identity;
use arca_runtime::nats::Refusals;
use arca_runtime::rpc::{decode_request, respond, verb};
use arca_runtime::trust::{Gate, TrustError};
use arca_schemas::error::ErrorReply;
use arca_schemas::job::{FileError, TransferStats};
use arca_schemas::msg::*;
use arca_schemas::subject::{self, AgentVerb};
use arca_schemas::trust::{AuditKind, AuditRecord, TokenClaims};
use arca_schemas::{JobId, PROTOCOL_VERSION};
use async_nats::{Client, Message};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::OnceCell;

/// Configuration of an agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The system this agent serves (its subject token).
    pub system: String,
    /// The agent's identity: an nkey seed, created with mode 0600 on first
    /// start. Its public key is what `arca system add` enrolls; it
    /// authenticates the agent to NATS and signs its snapshot manifests.
    pub identity_file: std::path::PathBuf,
    /// Public key of the scheduler whose job tokens the agent obeys.
    pub scheduler_key: String,
    /// TLS settings of the NATS connection.
    #[serde(default)]
    pub tls: Option<arca_runtime::nats::TlsFiles>,
    /// Requests to media (each a batch of chunks) sent without an answer
    /// yet, at most.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Files read at the same time during a backup (a disk answers
    /// several reads at once faster than one after the other).
    #[serde(default = "default_readers")]
    pub readers: usize,
    /// Smallest chunk, bytes.
    #[serde(default = "default_min")]
    pub chunk_min: usize,
    /// Average chunk, bytes.
    #[serde(default = "default_avg")]
    pub chunk_avg: usize,
    /// Largest chunk, bytes.
    #[serde(default = "default_max")]
    pub chunk_max: usize,
    /// zstd level for chunks.
    #[serde(default = "default_level")]
    pub zstd_level: i32,
    /// Seconds to wait for media to answer one data request (a chunk
    /// stored, a chunk fetched) before the request is retried.
    #[serde(default = "default_media_timeout")]
    pub media_timeout_secs: u64,
    /// Seconds a request to media that failed in a way a retry can help
    /// (media or nats-server restarting, nobody answering yet) is asked
    /// again after its first failure; never past the job's deadline. A
    /// reply lost to a reconnect is asked for again at once.
    #[serde(default = "default_media_retry")]
    pub media_retry_secs: u64,
}

fn default_media_timeout() -> u64 {
    60
}

fn default_media_retry() -> u64 {
    60
}

fn default_window() -> usize {
    8
}
fn default_readers() -> usize {
    3
}
fn default_min() -> usize {
    256 * 1024
}
fn default_avg() -> usize {
    1024 * 1024
}
fn default_max() -> usize {
    4 * 1024 * 1024
}
fn default_level() -> i32 {
    3
}

impl Config {
    /// A configuration with defaults for `system`.
    pub fn new(system: &str, identity_file: &std::path::Path, scheduler_key: &str) -> Self {
        Config {
            system: system.to_owned(),
            identity_file: identity_file.to_owned(),
            scheduler_key: scheduler_key.to_owned(),
            tls: None,
            window: default_window(),
            readers: default_readers(),
            chunk_min: default_min(),
            chunk_avg: default_avg(),
            chunk_max: default_max(),
            zstd_level: default_level(),
            media_timeout_secs: default_media_timeout(),
            media_retry_secs: default_media_retry(),
        }
    }

    /// The agent's identity, created on first start.
    pub fn identity(&self) -> anyhow::Result<Identity> {
        Ok(Identity::load_or_create(&self.identity_file)?)
    }

    /// Credentials of the NATS connection: the identity, TLS, and the
    /// system's own inbox prefix (the only one the server lets it use).
    pub fn credentials(&self) -> anyhow::Result<arca_runtime::nats::Credentials> {
        Ok(arca_runtime::nats::Credentials {
            identity: Some(self.identity()?),
            tls: self.tls.clone(),
            inbox_prefix: Some(subject::agent_inbox_prefix(&self.system)),
        })
    }
}

/// Adds the applications' report to a hook's reply: before the command's
/// output for a post hook (they were released first), after it for a pre
/// hook.
fn merge(r: &mut HookReply, apps: application::Report, first: bool) {
    r.ran = true;
    r.success &= apps.success;
    r.output = match (first, r.output.is_empty()) {
        (_, true) => apps.output,
        (true, false) => format!("{}\n{}", apps.output, r.output),
        (false, false) => format!("{}\n{}", r.output, apps.output),
    };
}

/// Most file errors a transfer reports one by one; the rest are counted
/// in a last entry (messages must stay within the server's max_payload).
pub const MAX_FILE_ERRORS: usize = 1000;

/// Keeps the first [`MAX_FILE_ERRORS`] errors and counts the others.
pub fn cap_file_errors(errors: &[FileError]) -> Vec<FileError> {
    if errors.len() <= MAX_FILE_ERRORS {
        return errors.to_vec();
    }
    let mut out = errors[..MAX_FILE_ERRORS].to_vec();
    out.push(FileError {
        path: "...".to_owned(),
        error: format!(
            "and {} more files; the agent's log names every one",
            errors.len() - MAX_FILE_ERRORS
        ),
    });
    out
}

impl Progress {
    /// Records a file that could not be read or written; the transfer goes on.
    pub fn file_failed(&mut self, path: &std::path::Path, error: String) {
        tracing::warn!(path = %path.display(), %error, "file not transferred");
        self.file_errors.push(FileError {
            path: path.to_string_lossy().into_owned(),
            error,
        });
    }

    /// Records a file transferred with a warning (e.g. changed while read).
    pub fn file_warned(&mut self, path: &std::path::Path, warning: String) {
        tracing::warn!(path = %path.display(), %warning, "file transferred with a warning");
        self.file_warnings.push(FileError {
            path: path.to_string_lossy().into_owned(),
            error: warning,
        });
    }
}

/// Live state of a transfer, polled by the scheduler.
#[derive(Debug, Default)]
pub struct Progress {
    /// Counters so far.
    pub stats: TransferStats,
    /// Files that failed so far.
    pub file_errors: Vec<FileError>,
    /// Files transferred with a warning so far.
    pub file_warnings: Vec<FileError>,
    /// What is being read or written.
    pub current: Option<String>,
    /// Set when the transfer ended.
    pub outcome: Option<TransferOutcome>,
}

/// The result of each (job, hook phase), shared by repeated requests.
type HookResults = HashMap<(JobId, HookPhase), Arc<OnceCell<HookReply>>>;

struct Agent {
    config: Config,
    identity: Identity,
    /// Checks the scheduler's job tokens.
    gate: Gate,
    params: backup::ChunkParams,
    client: Client,
    hooks: Mutex<HookResults>,
    /// What the built-in hook kinds hold for each job.
    apps: Mutex<HashMap<JobId, Arc<application::JobApps>>>,
    transfers: Mutex<HashMap<JobId, Arc<Mutex<Progress>>>>,
    tasks: Mutex<HashMap<JobId, tokio::task::AbortHandle>>,
    /// Woken whenever a transfer ends, for status questions that wait.
    ended: tokio::sync::Notify,
}

/// The longest a status question waits for its transfer to end.
const STATUS_WAIT_MAX: Duration = Duration::from_secs(5);

/// How long an agent whose subscriptions the server refused waits before
/// it subscribes again (the operator may have enrolled its key meanwhile).
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` resolves, on a connection whose
/// refusals nothing records (see [`run_watched`]).
pub async fn run(
    config: Config,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_watched(config, client, Refusals::default(), shutdown).await
}

/// Runs the agent until `shutdown` resolves. `refusals` records what the
/// server refuses on `client` ([`arca_runtime::nats::connect_patiently`]
/// makes both): the agent is ready only once the server accepted its
/// subscription; while it refuses it, the agent says so at ERROR, with
/// what to do, and tries again every 30 s.
pub async fn run_watched(
    config: Config,
    client: Client,
    refusals: Refusals,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    arca_runtime::ensure_name("system name", &config.system)?;
    let params = chunk_params(&config, client.server_info().max_payload);
    let identity = config.identity()?;
    let gate = Gate::new(&config.scheduler_key)?;
    let agent = Arc::new(Agent {
        identity,
        gate,
        params,
        client: client.clone(),
        hooks: Mutex::new(HashMap::new()),
        apps: Mutex::new(HashMap::new()),
        transfers: Mutex::new(HashMap::new()),
        tasks: Mutex::new(HashMap::new()),
        ended: tokio::sync::Notify::new(),
        config,
    });
    tokio::pin!(shutdown);
    let system = agent.config.system.clone();
    let mut requests = loop {
        let requests = client.subscribe(subject::agent_all(&system)).await?;
        let refused = door::refused_subscriptions(&client, &refusals).await;
        if refused.is_empty() {
            break requests;
        }
        let key = agent.identity.public_key();
        tracing::error!(
            %system,
            %key,
            refused = ?refused,
            "the NATS server refused this agent's subscriptions, so no request can reach it; \
             not ready: {}; subscribing again in {} s",
            door::not_enrolled_hint(&system, &key),
            REFUSED_RETRY.as_secs()
        );
        drop(requests);
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("agent stopped");
                return Ok(());
            }
            _ = tokio::time::sleep(REFUSED_RETRY) => {}
        }
    };
    tracing::info!(%system, "agent ready");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(msg) = requests.next() => {
                let a = agent.clone();
                tokio::spawn(async move { a.handle(msg).await });
            }
            else => break,
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Chunk sizes that keep every frame within the server's `max_payload`.
fn chunk_params(config: &Config, max_payload: usize) -> backup::ChunkParams {
    // Room for the message envelope (session id, chunk id, field names).
    let limit = max_payload.saturating_sub(64 * 1024);
    let mut p = backup::ChunkParams {
        min: config.chunk_min,
        avg: config.chunk_avg,
        max: config.chunk_max,
        level: config.zstd_level,
    };
    if p.max > arca_frame::MAX_CHUNK {
        tracing::warn!(
            configured = p.max,
            largest = arca_frame::MAX_CHUNK,
            "chunk-max is larger than the largest chunk media accepts; using the largest"
        );
        p.max = arca_frame::MAX_CHUNK;
        p.avg = p.avg.min(p.max / 2);
        p.min = p.min.min(p.avg / 2);
    }
    if p.max > limit {
        tracing::warn!(
            max_payload,
            configured = p.max,
            "the server's max_payload is smaller than the largest chunk; using smaller chunks \
             (set max_payload: 8MB in nats-server's config to keep the configured sizes)"
        );
        p.max = limit.max(fastcdc::v2020::MAXIMUM_MIN);
        p.avg = p.avg.min(p.max / 4).max(fastcdc::v2020::AVERAGE_MIN);
        p.min = p.min.min(p.avg / 4).max(fastcdc::v2020::MINIMUM_MIN);
    }
    p
}

impl Agent {
    /// Checks the job token of a command: signed by the trusted scheduler
    /// for this system, this subject and body, unexpired, unused. A refusal
    /// is answered and audited, and nothing else happens.
    async fn authorize(&self, msg: &Message) -> Result<TokenClaims, ()> {
        let checked = self.gate.check(msg).and_then(|claims| {
            if claims.system == self.config.system {
                Ok(claims)
            } else {
                Err(TrustError::Mismatch(format!(
                    "issued for system {}, this agent serves {}",
                    claims.system, self.config.system
                )))
            }
        });
        match checked {
            Ok(claims) => Ok(claims),
            Err(e) => {
                self.refuse(msg, None, e.to_string()).await;
                respond::<()>(&self.client, msg, Err(e.to_reply())).await;
                Err(())
            }
        }
    }

    /// Records a refused request in the audit stream.
    async fn refuse(&self, msg: &Message, job: Option<JobId>, reason: String) {
        tracing::warn!(subject = %msg.subject, %reason, "request refused");
        let mut a = AuditRecord::new(AuditKind::Refused, format!("agent/{}", self.config.system));
        a.system = Some(self.config.system.clone());
        a.job = job;
        a.subject = Some(msg.subject.to_string());
        a.reason = Some(reason);
        arca_runtime::trust::audit(&self.client, "agent", &self.config.system, a).await;
    }

    async fn handle(self: Arc<Self>, msg: Message) {
        let c = &self.client;
        let verb_ = AgentVerb::parse(verb(&msg.subject));
        // Commands need the scheduler's token; a ping and a status
        // question do not.
        let claims = match verb_ {
            None | Some(AgentVerb::Ping) | Some(AgentVerb::Status) => None,
            Some(_) => match self.authorize(&msg).await {
                Ok(c) => Some(c),
                Err(()) => return,
            },
        };
        match verb_ {
            Some(AgentVerb::Ping) => {
                let pong = Pong {
                    system: self.config.system.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    protocol: PROTOCOL_VERSION,
                };
                respond(c, &msg, Ok(pong)).await
            }
            Some(AgentVerb::Prepare) => {
                let r = self.clone().prepare(&msg.payload).await;
                respond(c, &msg, r).await
            }
            Some(AgentVerb::Finish) => {
                let r = self.finish(&msg.payload).await;
                respond(c, &msg, r).await
            }
            Some(AgentVerb::Backup) => {
                respond(c, &msg, self.clone().start_backup(&msg.payload)).await
            }
            Some(AgentVerb::Restore) => {
                let claims = claims.expect("commands carry claims");
                match self.clone().start_restore(&msg.payload, claims) {
                    Err(e) if e.code == arca_schemas::ErrorCode::Forbidden => {
                        self.refuse(&msg, None, e.message.clone()).await;
                        respond::<TransferAccepted>(c, &msg, Err(e)).await
                    }
                    r => respond(c, &msg, r).await,
                }
            }
            Some(AgentVerb::Status) => respond(c, &msg, self.status(&msg.payload).await).await,
            Some(AgentVerb::Cancel) => respond(c, &msg, self.cancel(&msg.payload)).await,
            None => {
                let r: Result<(), _> = Err(ErrorReply::bad_request(format!(
                    "unknown verb in {}",
                    msg.subject
                )));
                respond(c, &msg, r).await
            }
        }
    }

    fn hook_cell(&self, job: JobId, phase: HookPhase) -> Arc<OnceCell<HookReply>> {
        self.hooks
            .lock()
            .expect("hooks lock")
            .entry((job, phase))
            .or_default()
            .clone()
    }

    fn job_apps(&self, job: JobId) -> Arc<application::JobApps> {
        self.apps
            .lock()
            .expect("apps lock")
            .entry(job)
            .or_default()
            .clone()
    }

    /// True when the job's transfer ended without an error.
    fn transfer_succeeded(&self, job: JobId) -> bool {
        let transfers = self.transfers.lock().expect("transfers lock");
        transfers.get(&job).is_some_and(|p| {
            p.lock()
                .expect("progress lock")
                .outcome
                .as_ref()
                .is_some_and(|o| o.error.is_none())
        })
    }

    /// Runs a hook once per (job, phase); repeated requests share the
    /// result. A pre hook runs its command, then prepares the built-in
    /// applications; a post hook releases them, then runs its command.
    async fn run_hook_once(
        &self,
        job: JobId,
        phase: HookPhase,
        hook: Option<&arca_schemas::HookSpec>,
        apps: &[arca_schemas::Application],
        env: &[(String, String)],
        by_agent_deadline: bool,
    ) -> HookReply {
        let cell = self.hook_cell(job, phase);
        cell.get_or_init(|| async {
            let command = || async {
                match hook {
                    Some(h) => {
                        tracing::info!(%job, phase = phase.as_str(), command = ?h.command, "running hook");
                        let r = hooks::run(h, env).await;
                        tracing::info!(%job, phase = phase.as_str(), success = r.success, exit_code = ?r.exit_code, "hook ended");
                        r
                    }
                    None => hooks::none(),
                }
            };
            let pre = matches!(phase, HookPhase::PreBackup | HookPhase::PreRestore);
            let mut r = if pre {
                let mut r = command().await;
                if r.success && !apps.is_empty() {
                    let a = self.job_apps(job).prepare(job, phase, apps, env).await;
                    tracing::info!(%job, phase = phase.as_str(), success = a.success, output = %a.output, "applications prepared");
                    merge(&mut r, a, false);
                }
                r
            } else {
                let held = self.apps.lock().expect("apps lock").get(&job).cloned();
                let released = match held {
                    Some(ja) => Some(ja.release(self.transfer_succeeded(job)).await),
                    None => None,
                };
                let mut r = command().await;
                if let Some(a) = released {
                    tracing::info!(%job, phase = phase.as_str(), success = a.success, output = %a.output, "applications released");
                    merge(&mut r, a, true);
                }
                r
            };
            r.by_agent_deadline = by_agent_deadline;
            r
        })
        .await
        .clone()
    }

    async fn prepare(self: Arc<Self>, payload: &[u8]) -> Result<HookReply, ErrorReply> {
        let req: RunHook = decode_request(payload)?;
        let post_phase = match req.phase {
            HookPhase::PreBackup => HookPhase::PostBackup,
            HookPhase::PreRestore => HookPhase::PostRestore,
            other => {
                return Err(ErrorReply::bad_request(format!(
                    "{} is not a pre hook",
                    other.as_str()
                )));
            }
        };
        // The deadline is armed before the pre hook runs: if the scheduler
        // vanishes while the hook runs, the post hook still follows.
        if let Some(secs) = req.deadline_secs {
            let first = self.hook_cell(req.job, req.phase).get().is_none();
            if first {
                let me = self.clone();
                let (job, post, env) = (req.job, req.post_hook.clone(), req.env.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    if me.hook_cell(job, post_phase).get().is_none() {
                        tracing::warn!(%job, "no finish request before the deadline; running the post hook now");
                        me.run_hook_once(job, post_phase, post.as_ref(), &[], &env, true)
                            .await;
                    }
                });
            }
        }
        Ok(self
            .run_hook_once(
                req.job,
                req.phase,
                req.hook.as_ref(),
                &req.applications,
                &req.env,
                false,
            )
            .await)
    }

    async fn finish(&self, payload: &[u8]) -> Result<HookReply, ErrorReply> {
        let req: RunHook = decode_request(payload)?;
        if !matches!(req.phase, HookPhase::PostBackup | HookPhase::PostRestore) {
            return Err(ErrorReply::bad_request(format!(
                "{} is not a post hook",
                req.phase.as_str()
            )));
        }
        Ok(self
            .run_hook_once(req.job, req.phase, req.hook.as_ref(), &[], &req.env, false)
            .await)
    }

    /// How a transfer waits for media and retries (`deadline_secs`: what
    /// is left of the job's deadline).
    fn patience(&self, deadline_secs: Option<u64>) -> patience::Patience {
        patience::Patience::new(
            Duration::from_secs(self.config.media_timeout_secs),
            Duration::from_secs(self.config.media_retry_secs),
            deadline_secs,
        )
    }

    /// Registers a transfer for `job`; `None` when it is already known.
    fn register(&self, job: JobId) -> Option<Arc<Mutex<Progress>>> {
        let mut transfers = self.transfers.lock().expect("transfers lock");
        if transfers.contains_key(&job) {
            return None;
        }
        let p = Arc::new(Mutex::new(Progress::default()));
        transfers.insert(job, p.clone());
        Some(p)
    }

    fn start_backup(self: Arc<Self>, payload: &[u8]) -> Result<TransferAccepted, ErrorReply> {
        let req: StartBackupTransfer = decode_request(payload)?;
        let Some(progress) = self.register(req.job) else {
            return Ok(TransferAccepted { started: false });
        };
        tracing::info!(job = %req.job, paths = ?req.paths, "backup transfer started");
        let deadline_secs = req.deadline_secs;
        let me = self.clone();
        let job = req.job;
        let apps = self.apps.lock().expect("apps lock").get(&job).cloned();
        let task = tokio::spawn(async move {
            let job = req.job;
            let outcome = backup::run(
                me.client.clone(),
                me.config.system.clone(),
                me.identity.clone(),
                backup::Request {
                    transfer: req,
                    apps,
                    readers: me.config.readers,
                },
                me.params,
                me.config.window,
                me.patience(deadline_secs),
                progress.clone(),
            )
            .await;
            tracing::info!(%job, snapshot = ?outcome.snapshot, error = ?outcome.error, "backup transfer ended");
            tokio::task::spawn_blocking(arca_runtime::memory::release_free_memory);
            progress.lock().expect("progress lock").outcome = Some(outcome);
            me.ended.notify_waiters();
        });
        self.tasks
            .lock()
            .expect("tasks lock")
            .insert(job, task.abort_handle());
        Ok(TransferAccepted { started: true })
    }

    fn start_restore(
        self: Arc<Self>,
        payload: &[u8],
        claims: TokenClaims,
    ) -> Result<TransferAccepted, ErrorReply> {
        let req: StartRestoreTransfer = decode_request(payload)?;
        // Invariant 4, checked by the system written to: another system's
        // snapshot only with the operator's override in the signed token.
        restore::check_grant(&self.config.system, &req, &claims, None)?;
        let Some(progress) = self.register(req.job) else {
            return Ok(TransferAccepted { started: false });
        };
        tracing::info!(job = %req.job, snapshot = %req.snapshot, target = ?req.target, "restore transfer started");
        let deadline_secs = req.deadline_secs;
        let me = self.clone();
        let job = req.job;
        let task = tokio::spawn(async move {
            let job = req.job;
            let outcome = restore::run(
                me.client.clone(),
                me.config.system.clone(),
                req,
                claims,
                me.config.window,
                me.patience(deadline_secs),
                progress.clone(),
            )
            .await;
            tracing::info!(%job, error = ?outcome.error, files_failed = outcome.file_errors.len(), "restore transfer ended");
            tokio::task::spawn_blocking(arca_runtime::memory::release_free_memory);
            progress.lock().expect("progress lock").outcome = Some(outcome);
            me.ended.notify_waiters();
        });
        self.tasks
            .lock()
            .expect("tasks lock")
            .insert(job, task.abort_handle());
        Ok(TransferAccepted { started: true })
    }

    /// Stops a running transfer. The progress lock is held while the task is
    /// aborted, so the outcome is either the transfer's own (it had ended)
    /// or the cancellation, never both.
    fn cancel(&self, payload: &[u8]) -> Result<TransferCancelled, ErrorReply> {
        let req: CancelTransfer = decode_request(payload)?;
        let Some(progress) = self
            .transfers
            .lock()
            .expect("transfers lock")
            .get(&req.job)
            .cloned()
        else {
            return Ok(TransferCancelled { stopped: false });
        };
        let mut p = progress.lock().expect("progress lock");
        if p.outcome.is_some() {
            return Ok(TransferCancelled { stopped: false });
        }
        if let Some(task) = self.tasks.lock().expect("tasks lock").remove(&req.job) {
            task.abort();
        }
        tracing::warn!(job = %req.job, "transfer cancelled");
        p.outcome = Some(TransferOutcome {
            stats: p.stats.clone(),
            snapshot: None,
            file_errors: p.file_errors.clone(),
            file_warnings: crate::cap_file_errors(&p.file_warnings),
            error: Some(ErrorReply::new(
                arca_schemas::ErrorCode::Conflict,
                "the transfer was cancelled; no snapshot was committed",
            )),
        });
        drop(p);
        self.ended.notify_waiters();
        Ok(TransferCancelled { stopped: true })
    }

    /// How the job's transfer is going; with `wait-ms`, answered as soon
    /// as it ends or when that time (at most [`STATUS_WAIT_MAX`]) passed.
    async fn status(&self, payload: &[u8]) -> Result<TransferState, ErrorReply> {
        let req: GetTransferStatus = decode_request(payload)?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(req.wait_ms.into()).min(STATUS_WAIT_MAX);
        loop {
            // Registered before looking, so that an end between the look
            // and the wait is not missed.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let state = self.transfer_state(req.job);
            if !matches!(state, TransferState::Running { .. })
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(state);
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn transfer_state(&self, job: JobId) -> TransferState {
        let transfers = self.transfers.lock().expect("transfers lock");
        let Some(p) = transfers.get(&job) else {
            return TransferState::Unknown;
        };
        let p = p.lock().expect("progress lock");
        match &p.outcome {
            Some(o) => TransferState::Done(o.clone()),
            None => TransferState::Running {
                stats: p.stats.clone(),
                current: p.current.clone(),
            },
        }
    }
}
