//! JetStream stream and key-value bucket names.

/// Stream that keeps every job event (`arca.events.>`).
pub const EVENTS_STREAM: &str = "ARCA_EVENTS";
/// Stream that keeps the audit records (`arca.audit.>`).
pub const AUDIT_STREAM: &str = "ARCA_AUDIT";
/// Bucket of registered systems, keyed by system name.
pub const SYSTEMS_BUCKET: &str = "ARCA_SYSTEMS";
/// Bucket of job records, keyed by job id.
pub const JOBS_BUCKET: &str = "ARCA_JOBS";
/// Bucket of the snapshot catalog, keyed by snapshot id.
pub const SNAPSHOTS_BUCKET: &str = "ARCA_SNAPSHOTS";

/// Bucket of schedule state: the last schedule instant handled, keyed by
/// `<system>.<backup type>`.
pub const SCHEDULES_BUCKET: &str = "ARCA_SCHEDULES";

/// Default id of the scheduler when a deployment runs one.
pub const DEFAULT_SCHEDULER: &str = "main";
/// Default id of the media service.
pub const DEFAULT_MEDIA: &str = "main";
