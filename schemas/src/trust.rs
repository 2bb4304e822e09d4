//! What crosses the trust boundary signed: the scheduler's job tokens, the
//! agent's snapshot manifest, and the audit records.
//!
//! A token travels in the [`TOKEN_HEADER`] header of a request, as
//! `<hex of the MessagePack claims>.<hex of the ed25519 signature>`; the
//! signature is over the MessagePack bytes, made with the scheduler's
//! identity key. A receiver checks it against the scheduler key of its own
//! configuration, and the claims against the request: the subject it came
//! on, the digest of the body, the expiry and a nonce it has not seen.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ChunkId, JobId, SnapshotId};

/// Header that carries a job token.
pub const TOKEN_HEADER: &str = "Arca-Token";

/// Seconds a token is valid after it was issued: it authorizes the
/// delivery of one request, not the work that follows (clocks must agree
/// within this).
pub const TOKEN_LIFETIME_SECS: i64 = 120;

/// Seconds a token's issue time may lie ahead of the receiver's clock: a
/// token dated further in the future is refused (the clocks of the
/// scheduler and of every receiver must agree within this).
pub const MAX_CLOCK_SKEW_SECS: i64 = 30;

/// What one token allows: one request, on one subject, with one body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TokenClaims {
    /// Format version of the claims.
    pub v: u32,
    /// Public key of the scheduler that issued it.
    pub issuer: String,
    /// Job the request belongs to.
    pub job: JobId,
    /// System the request acts for: the receiving agent's system, or the
    /// system whose data media is asked to accept or serve.
    pub system: String,
    /// The job step (the request's verb), e.g. `prepare`, `backup`.
    pub step: String,
    /// Subject the request must arrive on.
    pub subject: String,
    /// Restore: the snapshot to read.
    #[serde(default)]
    pub snapshot: Option<SnapshotId>,
    /// Restore: the system the snapshot belongs to.
    #[serde(default)]
    pub source_system: Option<String>,
    /// Restore: true when an operator allowed writing a snapshot of
    /// `source-system` onto `system`.
    #[serde(default)]
    pub cross_system: bool,
    /// Backup session: the enrolled public key of `system`, which must
    /// have signed the snapshot manifest.
    #[serde(default)]
    pub agent_key: Option<String>,
    /// BLAKE3 of the request body.
    #[serde(with = "serde_bytes")]
    #[schemars(with = "Vec<u8>")]
    pub body: [u8; 32],
    /// When it was issued.
    pub issued: DateTime<Utc>,
    /// When it stops being valid.
    pub expires: DateTime<Utc>,
    /// Unique per token: a receiver refuses a nonce it has seen.
    pub nonce: String,
}

/// What the agent signs when it commits a snapshot: the system and job it
/// was made for, and its tree chunks (which name every file chunk by a
/// keyed hash of its content). Signed as MessagePack with named fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotManifest {
    /// Format version.
    pub v: u32,
    /// System the snapshot is of.
    pub system: String,
    /// Job that made it.
    pub job: JobId,
    /// Tree chunks in order.
    pub tree: Vec<ChunkId>,
}

/// Door refusals (see [`AuditKind::DoorRefused`]) of one identity from
/// one address are recorded at most once per this many seconds; those in
/// between are counted into the next record's `count`.
pub const DOOR_RECORD_INTERVAL_SECS: u64 = 60;

/// Door refusal records written per minute at most, over all identities
/// and addresses: a flood of ever new keys or addresses is counted, not
/// recorded one by one.
pub const DOOR_RECORDS_PER_MINUTE: u32 = 30;

/// Version of [`SnapshotManifest`] and [`TokenClaims`].
pub const TRUST_VERSION: u32 = 1;

/// One audit record, JSON, on `arca.audit.<service>.<id>.<kind>` (a
/// high-trust service's record about one system adds the system as a
/// fifth token, see [`crate::subject::audit`]) and kept in the stream
/// `ARCA_AUDIT`. A reader believes the subject, which the server enforces,
/// over the body: `by`, `system` and `kind` are taken from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct AuditRecord {
    /// Format version.
    pub v: u32,
    /// When.
    pub time: DateTime<Utc>,
    /// What happened.
    pub kind: AuditKind,
    /// Who recorded it: `scheduler/<id>`, `media/<id>`, `agent/<system>`.
    pub by: String,
    /// The system concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The job concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// The operator who asked, as the console named them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Cross-system restore: the snapshot's own system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_system: Option<String>,
    /// The snapshot concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotId>,
    /// Enrollment and key changes: the public key recorded now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Key changes: the key recorded before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<String>,
    /// The subject of a refused request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Refusals: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Refusals at the door: the client address (as the NATS server saw
    /// it) a refused connection came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Refusals at the door: how many refusals of this identity from this
    /// address the record stands for (itself and those not recorded one by
    /// one since the previous record, see [`DOOR_RECORD_INTERVAL_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Set by the reader, never by the writer: true when the record is an
    /// agent's own report (it came on `arca.audit.agent.<system>...`), so
    /// what it says is that system's claim, not what a high-trust service
    /// saw.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claim: bool,
    /// Set by the reader, never by the writer: what the body said that its
    /// subject contradicts (another author, system or kind). The record
    /// shows what the subject, which the server enforces, says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    /// Restores: the operator asked to keep device nodes, set-id bits,
    /// `security.*`/`trusted.*` attributes and owners (`--keep-privileges`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_privileges: bool,
}

/// Kinds of [`AuditRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    /// A system was registered with its agent's public key.
    Enrolled,
    /// A registered system's agent key was changed or removed.
    KeyChanged,
    /// An operator restored one system's snapshot onto another system.
    CrossSystemRestore,
    /// An operator restored a snapshot into a target folder keeping its
    /// device nodes, set-id bits, capabilities and owners
    /// (`--keep-privileges`).
    PrivilegedRestore,
    /// A request was refused: missing, forged, expired or replayed token,
    /// a manifest signature that does not match, a restore onto another
    /// system without the operator's override.
    Refused,
    /// The NATS server refused a client at the door: a key it does not
    /// know (not enrolled, or not yet admitted by `arca nats-config`), or
    /// an enrolled agent key connecting as the agent of another system,
    /// whose subscriptions the server refuses. Recorded by the scheduler
    /// from the server's own reports, rate-limited.
    DoorRefused,
}

impl AuditKind {
    /// Every kind.
    pub const ALL: &'static [AuditKind] = &[
        AuditKind::Enrolled,
        AuditKind::KeyChanged,
        AuditKind::CrossSystemRestore,
        AuditKind::PrivilegedRestore,
        AuditKind::Refused,
        AuditKind::DoorRefused,
    ];

    /// The kinds an agent may record about itself (the server lets it
    /// publish only these): a bounded set, so that its records fall under
    /// a bounded number of subjects of the audit stream.
    pub const BY_AGENT: &'static [AuditKind] = &[AuditKind::Refused];

    /// The kind named `s` (its [`AuditKind::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// Kebab-case name; the fourth token of the subject.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Enrolled => "enrolled",
            AuditKind::KeyChanged => "key-changed",
            AuditKind::CrossSystemRestore => "cross-system-restore",
            AuditKind::PrivilegedRestore => "privileged-restore",
            AuditKind::Refused => "refused",
            AuditKind::DoorRefused => "door-refused",
        }
    }
}

impl AuditRecord {
    /// A record of `kind` made now by `by`, every other field empty.
    pub fn new(kind: AuditKind, by: impl Into<String>) -> Self {
        AuditRecord {
            v: TRUST_VERSION,
            time: Utc::now(),
            kind,
            by: by.into(),
            system: None,
            job: None,
            operator: None,
            source_system: None,
            snapshot: None,
            key: None,
            previous_key: None,
            subject: None,
            reason: None,
            address: None,
            count: None,
            claim: false,
            mismatch: None,
            keep_privileges: false,
        }
    }
}
