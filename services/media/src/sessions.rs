//! Backup sessions: opened by the scheduler for a job, used by the
//! system's agent to store chunks and commit one snapshot, closed when the
//! job ends (`close-session`) or after `session-idle-secs` without a
//! request. A closed session accepts nothing more.
//!
//! A session's `touched` set (the chunks its backup stored or asked
//! about) keeps them from a prune running meanwhile; it holds at most
//! `session-max-chunks` ids, so a system cannot grow media's memory
//! without bound.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use arca_runtime::rpc::decode_request;
use arca_schemas::msg::{OpenSession, SessionOpened, SnapshotInfo};
use arca_schemas::subject;
use arca_schemas::trust::TokenClaims;
use arca_schemas::{ChunkId, JobId};

use crate::error::MediaError;

use crate::Media;

pub(crate) struct Session {
    pub(crate) job: JobId,
    pub(crate) system: String,
    /// The key enrolled for `system` when the scheduler opened the
    /// session: the only one whose manifest signature commits.
    pub(crate) agent_key: String,
    pub(crate) paths: Vec<String>,
    pub(crate) committed: Option<SnapshotInfo>,
    /// Chunks this backup stored or was told are stored: prune keeps them.
    pub(crate) touched: HashSet<ChunkId>,
    /// When the snapshot was committed.
    pub(crate) committed_at: Option<Instant>,
    pub(crate) opened_at: Instant,
    /// When a request last used the session.
    pub(crate) used_at: Instant,
    /// The system's storage quota, bytes, as the scheduler passed it.
    pub(crate) quota: Option<u64>,
    /// A commit is running: another waits for its answer.
    pub(crate) committing: bool,
    /// The job ended or the session expired; it is kept (refusing every
    /// request) only while a prune that may need its `touched` runs.
    pub(crate) closed: bool,
}

impl Session {
    pub(crate) fn new(
        job: JobId,
        system: String,
        agent_key: String,
        paths: Vec<String>,
        quota: Option<u64>,
    ) -> Self {
        let now = Instant::now();
        Session {
            job,
            system,
            agent_key,
            paths,
            committed: None,
            touched: HashSet::new(),
            committed_at: None,
            opened_at: now,
            used_at: now,
            quota,
            committing: false,
            closed: false,
        }
    }
}

/// A running commit of a session; dropping it lets the next one run.
pub(crate) struct Committing<'a> {
    media: &'a Media,
    session: String,
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        if let Some(s) = self
            .media
            .sessions
            .lock()
            .expect("sessions lock")
            .get_mut(&self.session)
        {
            s.committing = false;
        }
    }
}

impl Media {
    /// Checks that `session` is open and belongs to `system`, and notes
    /// that it was used.
    pub(crate) fn check_session(&self, session: &str, system: &str) -> Result<(), MediaError> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get_mut(session) {
            Some(s) if s.system == system && !s.closed => {
                s.used_at = Instant::now();
                Ok(())
            }
            Some(s) if s.system == system => Err(self.no_session(session)),
            Some(_) => Err(MediaError::BadRequest(format!(
                "session {session} does not belong to system {system}"
            ))),
            None => Err(self.no_session(session)),
        }
    }

    pub(crate) fn no_session(&self, session: &str) -> MediaError {
        MediaError::NotFound(format!(
            "no open session {session} on media {}: its job ended, it was idle longer than \
             {}s (session-idle-secs), or the media service restarted; run the backup again",
            self.id,
            self.session_idle.as_secs()
        ))
    }

    /// Records that a session depends on these chunks, before it is told
    /// whether they exist, so that a prune running meanwhile keeps them.
    /// Refused when the session would name more than `session-max-chunks`.
    pub(crate) fn touch(&self, session: &str, ids: &[ChunkId]) -> Result<(), MediaError> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let Some(s) = sessions.get_mut(session) else {
            return Ok(());
        };
        let new = ids.iter().filter(|id| !s.touched.contains(id)).count();
        if s.touched.len() + new > self.session_max_chunks {
            return Err(MediaError::BadRequest(format!(
                "refused: the backup of system {} names more than {} chunks \
                 (session-max-chunks of media {}); raise session-max-chunks in media's \
                 configuration, or split the system's paths",
                s.system, self.session_max_chunks, self.id
            )));
        }
        s.touched.extend(ids.iter().copied());
        Ok(())
    }

    /// Marks a commit of `session` as running, or answers "busy" while
    /// another runs (the agent retries, and then gets its answer).
    pub(crate) fn start_commit(&self, session: &str) -> Result<Committing<'_>, MediaError> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let s = sessions
            .get_mut(session)
            .ok_or_else(|| self.no_session(session))?;
        if s.committing {
            return Err(crate::limits::busy(
                &s.system,
                &format!("a commit of session {session} is running"),
            ));
        }
        s.committing = true;
        Ok(Committing {
            media: self,
            session: session.to_owned(),
        })
    }

    /// Closes the backup session of `job` (and a restore grant of it):
    /// nothing more is stored in it. Returns whether there was one.
    pub(crate) fn close_job(&self, job: JobId) -> bool {
        let pruning = self.pruning();
        let mut found = false;
        self.sessions
            .lock()
            .expect("sessions lock")
            .retain(|id, s| {
                if s.job != job {
                    return true;
                }
                found = true;
                tracing::info!(%job, system = %s.system, session = %id, "session closed: its job ended");
                s.closed = true;
                // A prune running keeps what the backup touched until it ends.
                pruning && s.committed.is_some()
            });
        self.restores
            .lock()
            .expect("restores lock")
            .retain(|_, g| g.job != job);
        found
    }

    /// Closes sessions idle longer than `session-idle-secs`.
    pub(crate) fn expire_sessions(&self) {
        let pruning = self.pruning();
        let idle = self.session_idle;
        self.sessions
            .lock()
            .expect("sessions lock")
            .retain(|id, s| {
                if s.closed {
                    // Kept for a prune that has ended (or failed) since.
                    return pruning;
                }
                if s.committing || s.used_at.elapsed() < idle {
                    return true;
                }
                tracing::warn!(job = %s.job, system = %s.system, session = %id, idle_secs = idle.as_secs(), "session expired: no request used it");
                s.closed = true;
                pruning && s.committed.is_some()
            });
    }

    /// Forgets sessions no prune needs any more: closed, committed before
    /// `since`, or opened more than a day ago.
    pub(crate) fn drop_old_sessions(&self, since: Instant) {
        let day = Duration::from_secs(24 * 3600);
        self.sessions.lock().expect("sessions lock").retain(|_, s| {
            !s.closed && s.committed_at.is_none_or(|t| t >= since) && s.opened_at.elapsed() < day
        });
    }

    /// True while a prune or an index repair runs.
    pub(crate) fn pruning(&self) -> bool {
        !self
            .removals
            .load(std::sync::atomic::Ordering::SeqCst)
            .is_multiple_of(2)
    }
}

impl Media {
    /// The quota of the system of `session`, as the scheduler passed it.
    pub(crate) fn session_quota(&self, session: &str) -> Option<u64> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(session)
            .and_then(|s| s.quota)
    }
}

impl Media {
    pub(crate) fn open_session(
        &self,
        payload: &[u8],
        claims: &TokenClaims,
    ) -> Result<SessionOpened, MediaError> {
        let req: OpenSession = decode_request(payload)?;
        if !subject::valid_token(&req.system) {
            return Err(MediaError::BadRequest(format!(
                "invalid system name {:?}",
                req.system
            )));
        }
        if claims.system != req.system || claims.job != req.job {
            return Err(MediaError::Forbidden(format!(
                "refused: the job token is for system {} job {}, the request for {} job {}",
                claims.system, claims.job, req.system, req.job
            )));
        }
        let Some(agent_key) = claims.agent_key.clone() else {
            return Err(MediaError::Forbidden(format!(
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
}
