//! Job tokens and snapshot manifests: issuing, signing and checking them,
//! and the audit stream.
//!
//! The scheduler issues one token per request it sends to an agent or a
//! media service ([`Issuer`]); each attempt of a retried request gets a
//! token of its own, and the receiver answers a repeated request by its
//! job id as before. A receiver checks every token with a [`Gate`]:
//! signature by the scheduler key it trusts, the subject and body the
//! token was issued for, the system it serves, the expiry, and a nonce it
//! has not seen before (kept until the token would have expired anyway).
//! The nonces live in memory only, so a gate also refuses every token
//! issued before it was made: a restarted receiver accepts no token it
//! might have accepted before, and a restart opens no replay window. A
//! token dated more than [`MAX_CLOCK_SKEW_SECS`] ahead of the receiver's
//! clock is refused too.
//!
//! Audit records are believed as their subject says, never as their body
//! says: the server lets each user publish only under its own service and
//! id, so [`read_audit`] takes the author, the system and the kind from the
//! subject, marks an agent's records as its claims, and flags a body that
//! says otherwise.

use std::collections::HashMap;
use std::sync::Mutex;

use arca_schemas::trust::{
    AuditKind, AuditRecord, MAX_CLOCK_SKEW_SECS, SnapshotManifest, TOKEN_HEADER,
    TOKEN_LIFETIME_SECS, TRUST_VERSION, TokenClaims,
};
use arca_schemas::{ChunkId, JobId, SnapshotId, subject};
use chrono::{DateTime, Utc};

use crate::identity::{self, Identity};

/// Why a token or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The request carries no token.
    #[error("the request carries no job token")]
    Missing,
    /// The token cannot be read.
    #[error("the job token cannot be read: {0}")]
    Malformed(String),
    /// The signature is not the trusted scheduler's.
    #[error("the job token is not signed by the trusted scheduler key")]
    Forged,
    /// The token has expired.
    #[error("the job token expired at {0}")]
    Expired(DateTime<Utc>),
    /// The token's nonce was seen before.
    #[error("the job token was used before (nonce {0})")]
    Replayed(String),
    /// The token was issued for another request.
    #[error("the job token is for another request: {0}")]
    Mismatch(String),
    /// The token was issued before this receiver started: its nonce may
    /// have been used with the process that ran before.
    #[error(
        "the job token was issued at {issued}, before this service started at {started}; \
         a token from before a restart is never accepted (the scheduler issues a fresh one \
         with its next request; if this repeats, check that the clocks agree)"
    )]
    BeforeStart {
        /// When the token says it was issued.
        issued: DateTime<Utc>,
        /// When the receiving gate was made.
        started: DateTime<Utc>,
    },
    /// The token is dated further ahead than the clock skew allowed.
    #[error(
        "the job token is dated {issued}, more than {MAX_CLOCK_SKEW_SECS}s ahead of this \
         host's clock; the clocks of the scheduler and this host must agree (use NTP)"
    )]
    FromTheFuture {
        /// When the token says it was issued.
        issued: DateTime<Utc>,
    },
}

impl TrustError {
    /// The typed error to answer with.
    pub fn to_reply(&self) -> arca_schemas::ErrorReply {
        arca_schemas::ErrorReply::forbidden(format!("refused: {self}"))
    }
}

/// What a token says beyond the job, subject and body.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Restore: the snapshot.
    pub snapshot: Option<SnapshotId>,
    /// Restore: the snapshot's own system.
    pub source_system: Option<String>,
    /// Restore onto another system, allowed by an operator.
    pub cross_system: bool,
    /// Backup session: the enrolled key of the system.
    pub agent_key: Option<String>,
}

/// Issues tokens with the scheduler's identity.
#[derive(Debug, Clone)]
pub struct Issuer {
    identity: Identity,
}

impl Issuer {
    /// An issuer signing with `identity`.
    pub fn new(identity: Identity) -> Self {
        Issuer { identity }
    }

    /// The public key agents and media must trust.
    pub fn public_key(&self) -> String {
        self.identity.public_key()
    }

    /// A fresh token for one request of `job` for `system` on `subject`
    /// with `body`.
    pub fn issue(
        &self,
        job: JobId,
        system: &str,
        subject: &str,
        body: &[u8],
        grant: &Grant,
    ) -> String {
        let now = Utc::now();
        let claims = TokenClaims {
            v: TRUST_VERSION,
            issuer: self.identity.public_key(),
            job,
            system: system.to_owned(),
            step: subject.rsplit('.').next().unwrap_or_default().to_owned(),
            subject: subject.to_owned(),
            snapshot: grant.snapshot.clone(),
            source_system: grant.source_system.clone(),
            cross_system: grant.cross_system,
            agent_key: grant.agent_key.clone(),
            body: *blake3::hash(body).as_bytes(),
            issued: now,
            expires: now + chrono::Duration::seconds(TOKEN_LIFETIME_SECS),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        };
        seal(&self.identity, &claims)
    }
}

/// Encodes and signs claims: `<hex msgpack>.<hex signature>`. Public so
/// that tests can make tokens a scheduler would never issue.
pub fn seal(identity: &Identity, claims: &TokenClaims) -> String {
    let bytes = rmp_serde::to_vec_named(claims).expect("claims encode");
    let sig = identity.sign(&bytes);
    format!("{}.{}", hex::encode(&bytes), hex::encode(sig))
}

/// Reads and checks the signature of a token, without checking it against
/// a request.
pub fn open(trusted_key: &str, token: &str) -> Result<TokenClaims, TrustError> {
    let (body, sig) = token
        .split_once('.')
        .ok_or_else(|| TrustError::Malformed("no signature part".into()))?;
    let bytes = hex::decode(body).map_err(|e| TrustError::Malformed(e.to_string()))?;
    let sig = hex::decode(sig).map_err(|e| TrustError::Malformed(e.to_string()))?;
    identity::verify(trusted_key, &bytes, &sig).map_err(|_| TrustError::Forged)?;
    rmp_serde::from_slice(&bytes).map_err(|e| TrustError::Malformed(e.to_string()))
}

/// Checks the tokens of the requests one service receives, and remembers
/// the nonces it has accepted until they expire.
#[derive(Debug)]
pub struct Gate {
    trusted_key: String,
    /// When the gate was made: tokens issued earlier are refused.
    started: DateTime<Utc>,
    seen: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Gate {
    /// A gate trusting tokens of the scheduler whose public key is `trusted_key`.
    pub fn new(trusted_key: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            identity::valid_public_key(trusted_key),
            "scheduler-key {trusted_key:?} is not a public user nkey (U..., 56 characters); \
             copy the scheduler's public key (`arca identity show FILE`)"
        );
        Ok(Gate {
            trusted_key: trusted_key.to_owned(),
            started: Utc::now(),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Checks the token of `msg`: signed by the trusted scheduler, issued
    /// for this subject and this body, after this gate was made and not
    /// too far in the future, unexpired, not seen before. The caller
    /// checks `system` and what else the request needs.
    pub fn check(&self, msg: &async_nats::Message) -> Result<TokenClaims, TrustError> {
        let token = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(TOKEN_HEADER))
            .map(|v| v.as_str().to_owned())
            .ok_or(TrustError::Missing)?;
        let claims = open(&self.trusted_key, &token)?;
        if claims.subject != msg.subject.as_str() {
            return Err(TrustError::Mismatch(format!(
                "issued for {}, received on {}",
                claims.subject, msg.subject
            )));
        }
        if claims.body != *blake3::hash(&msg.payload).as_bytes() {
            return Err(TrustError::Mismatch(
                "the request body is not the one the token was issued for".into(),
            ));
        }
        let now = Utc::now();
        if claims.expires <= now {
            return Err(TrustError::Expired(claims.expires));
        }
        if claims.issued > now + chrono::Duration::seconds(MAX_CLOCK_SKEW_SECS) {
            return Err(TrustError::FromTheFuture {
                issued: claims.issued,
            });
        }
        if claims.issued < self.started {
            return Err(TrustError::BeforeStart {
                issued: claims.issued,
                started: self.started,
            });
        }
        let mut seen = self.seen.lock().expect("nonces lock");
        seen.retain(|_, expires| *expires > now);
        if seen.contains_key(&claims.nonce) {
            return Err(TrustError::Replayed(claims.nonce.clone()));
        }
        seen.insert(claims.nonce.clone(), claims.expires);
        Ok(claims)
    }
}

/// The bytes an agent signs for a snapshot of `system` made by `job`.
pub fn manifest_bytes(system: &str, job: JobId, tree: &[ChunkId]) -> Vec<u8> {
    rmp_serde::to_vec_named(&SnapshotManifest {
        v: TRUST_VERSION,
        system: system.to_owned(),
        job,
        tree: tree.to_vec(),
    })
    .expect("manifest encodes")
}

/// Most bytes of an audit record's `reason` (they may quote what a system
/// sent); longer ones are cut.
pub const AUDIT_REASON_MAX: usize = 2048;

/// Publishes an audit record on `arca.audit.<service>.<id>.<kind>` (for a
/// high-trust service's record about a system, with the system as a fifth
/// token) and waits for the `ARCA_AUDIT` stream to store it; failures are
/// logged, since a refusal stands whether or not its record could be kept.
pub async fn audit(client: &async_nats::Client, service: &str, id: &str, mut record: AuditRecord) {
    tracing::warn!(kind = record.kind.as_str(), system = ?record.system, reason = ?record.reason, "audit");
    if let Some(r) = &record.reason {
        record.reason = Some(arca_schemas::text::bounded(r, AUDIT_REASON_MAX).into_owned());
    }
    let subject = match record.system.as_deref() {
        Some(system) if service != "agent" && subject::valid_token(system) => {
            subject::audit_about(service, id, record.kind.as_str(), system)
        }
        _ => subject::audit(service, id, record.kind.as_str()),
    };
    let body = match serde_json::to_vec(&record) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode audit record");
            return;
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    let stored = async {
        js.publish(subject.clone(), body.into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), stored).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(%subject, error = %e, "audit record not stored"),
        Err(_) => tracing::error!(%subject, "audit record not confirmed within 5 s"),
    }
}

/// Every audit record kept, oldest first; with `since`, only those
/// recorded at or after it.
pub async fn read_audit(
    js: &async_nats::jetstream::Context,
    since: Option<DateTime<Utc>>,
) -> anyhow::Result<Vec<AuditRecord>> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures::StreamExt;
    let mut stream = js
        .get_stream(arca_schemas::names::AUDIT_STREAM)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open stream {}: {e}",
                arca_schemas::names::AUDIT_STREAM
            )
        })?;
    if stream.info().await?.state.messages == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream.create_consumer(OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), messages.next()).await;
        let Ok(Some(m)) = next else { break };
        let m = m?;
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        let stored = m
            .info()
            .ok()
            .and_then(|i| {
                DateTime::from_timestamp(i.published.unix_timestamp(), i.published.nanosecond())
            })
            .unwrap_or_else(Utc::now);
        match as_subject_says(&m.subject, &m.payload, stored) {
            Some(r) if since.is_none_or(|t| r.time >= t) => out.push(r),
            Some(_) => {}
            None => tracing::warn!(subject = %m.subject, "audit record on an unknown subject"),
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The record stored on `subject` with `body`, as the subject says: the
/// author (`by`), the system and the kind come from the subject, which the
/// server enforces; a record under `arca.audit.agent.<system>` is that
/// agent's claim; whatever the body said otherwise is kept in `mismatch`;
/// an agent's claim is dated when the stream stored it (`stored`). A body
/// that cannot be read still yields a record, flagged. `None` for a
/// subject that is not an audit subject.
pub fn as_subject_says(subject: &str, body: &[u8], stored: DateTime<Utc>) -> Option<AuditRecord> {
    let s = subject::AuditSubject::parse(subject)?;
    let kind = AuditKind::parse(&s.kind);
    let mut problems = Vec::new();
    let mut r = match serde_json::from_slice::<AuditRecord>(body) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!(
                "unreadable body: {}",
                arca_schemas::text::bounded(&e.to_string(), 200)
            ));
            let mut r = AuditRecord::new(kind.unwrap_or(AuditKind::Refused), s.by());
            r.time = stored;
            r
        }
    };
    let by = s.by();
    if r.by != by {
        problems.push(format!("body says by={:?}", r.by));
        r.by = by;
    }
    match kind {
        Some(k) if k != r.kind => {
            problems.push(format!("body says kind={}", r.kind.as_str()));
            r.kind = k;
        }
        Some(_) => {}
        None => problems.push(format!("unknown kind {:?} in the subject", s.kind)),
    }
    if r.system != s.system {
        if let Some(claimed) = &r.system {
            problems.push(format!("body says system={claimed:?}"));
        }
        r.system = s.system.clone();
    }
    r.claim = s.service == "agent";
    if r.claim && (r.time - stored).num_seconds().abs() > 60 {
        problems.push(format!("body says time={}", r.time.to_rfc3339()));
        r.time = stored;
    }
    // What a writer put there means nothing: these are the reader's.
    r.mismatch = (!problems.is_empty()).then(|| problems.join("; "));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_records_are_read_as_their_subject_says() {
        let mut forged = AuditRecord::new(AuditKind::CrossSystemRestore, "scheduler/main");
        forged.system = Some("other".into());
        forged.claim = false;
        let body = serde_json::to_vec(&forged).unwrap();
        let r = as_subject_says("arca.audit.agent.evil.refused", &body, Utc::now()).unwrap();
        assert_eq!(r.by, "agent/evil");
        assert_eq!(r.system.as_deref(), Some("evil"));
        assert_eq!(r.kind, AuditKind::Refused);
        assert!(r.claim);
        let m = r.mismatch.unwrap();
        assert!(m.contains("scheduler/main") && m.contains("other"), "{m}");

        let mut honest = AuditRecord::new(AuditKind::Enrolled, "scheduler/main");
        honest.system = Some("web01".into());
        let body = serde_json::to_vec(&honest).unwrap();
        let r = as_subject_says(
            "arca.audit.scheduler.main.enrolled.web01",
            &body,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(r, honest);

        let r = as_subject_says(
            "arca.audit.agent.evil.refused",
            b"{\"kind\":\"restore-approved\"}",
            Utc::now(),
        )
        .unwrap();
        assert_eq!((r.by.as_str(), r.claim), ("agent/evil", true));
        assert!(r.mismatch.unwrap().contains("unreadable"));
    }

    #[test]
    fn a_gate_refuses_tokens_from_before_it_started_and_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let sched = identity(dir.path(), "s.nk");
        let issuer = Issuer::new(sched.clone());
        let subj = "arca.agent.web01.cancel";
        let msg = |token: &str| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(TOKEN_HEADER, token);
            async_nats::Message {
                subject: subj.into(),
                reply: None,
                payload: b"x".to_vec().into(),
                headers: Some(headers),
                status: None,
                description: None,
                length: 0,
            }
        };
        let old = issuer.issue(JobId::new(), "web01", subj, b"x", &Grant::default());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let gate = Gate::new(&sched.public_key()).unwrap();
        assert!(matches!(
            gate.check(&msg(&old)),
            Err(TrustError::BeforeStart { .. })
        ));
        let fresh = issuer.issue(JobId::new(), "web01", subj, b"x", &Grant::default());
        assert!(gate.check(&msg(&fresh)).is_ok());
        assert!(matches!(
            gate.check(&msg(&fresh)),
            Err(TrustError::Replayed(_))
        ));
        let mut c = open(&sched.public_key(), &fresh).unwrap();
        c.nonce = "later".into();
        c.issued = Utc::now() + chrono::Duration::seconds(MAX_CLOCK_SKEW_SECS + 60);
        c.expires = c.issued + chrono::Duration::seconds(TOKEN_LIFETIME_SECS);
        assert!(matches!(
            gate.check(&msg(&seal(&sched, &c))),
            Err(TrustError::FromTheFuture { .. })
        ));
    }

    fn identity(dir: &std::path::Path, name: &str) -> Identity {
        Identity::load_or_create(&dir.join(name)).unwrap()
    }

    #[test]
    fn tokens_open_only_with_the_issuers_key() {
        let dir = tempfile::tempdir().unwrap();
        let sched = identity(dir.path(), "s.nk");
        let other = identity(dir.path(), "o.nk");
        let issuer = Issuer::new(sched.clone());
        let job = JobId::new();
        let t = issuer.issue(
            job,
            "web01",
            "arca.agent.web01.prepare",
            b"x",
            &Grant::default(),
        );
        let c = open(&sched.public_key(), &t).unwrap();
        assert_eq!(
            (c.job, c.system.as_str(), c.step.as_str()),
            (job, "web01", "prepare")
        );
        assert_eq!(open(&other.public_key(), &t), Err(TrustError::Forged));
        let forged = seal(&other, &c);
        assert_eq!(open(&sched.public_key(), &forged), Err(TrustError::Forged));
        assert!(matches!(
            open(&sched.public_key(), "zz"),
            Err(TrustError::Malformed(_))
        ));
    }
}
