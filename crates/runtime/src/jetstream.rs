//! Creating the streams and buckets Arca keeps its state in.
//!
//! The events and audit streams hold what systems cause (file errors,
//! progress, refusals), so each is bounded three ways, all enforced by the
//! server: the whole stream (`max-bytes`, oldest first), each message
//! (`max-msg-size`: a larger one is refused), and each subject
//! (`max-msgs-per-subject`, oldest of that subject first). Events are on
//! `arca.events.<job>.<kind>` and an agent's audit records on
//! `arca.audit.agent.<system>.<kind>` (a service's about a system end in
//! `.<system>`), so a subject belongs to one job or one system: a flood
//! from one system replaces only its own older messages and stays within
//! `max-msgs-per-subject x max-msg-size` per subject, far below the
//! stream's `max-bytes`, and never pushes out another system's. Limits of
//! a stream that exists already are updated at start.

use std::time::Duration;

use arca_schemas::names;
use async_nats::jetstream::{self, kv, stream};

/// State handles shared by the services.
#[derive(Clone)]
pub struct State {
    /// JetStream context.
    pub js: jetstream::Context,
    /// Registered systems.
    pub systems: kv::Store,
    /// Job records.
    pub jobs: kv::Store,
    /// Snapshot catalog.
    pub snapshots: kv::Store,
    /// Schedule state (last instant handled per system and backup type).
    pub schedules: kv::Store,
}

/// How long job events are kept by default.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);

/// Most bytes of one job event: room for an `ended` event naming its
/// first file errors (each field an agent sent cut to its bound); a larger
/// event is refused by the stream.
pub const EVENTS_MAX_MSG_SIZE: i32 = 1 << 20;

/// Most events kept per subject, that is per job and kind: 2,000
/// `progress` events (every 2 s) are the last 66 minutes of a transfer;
/// the oldest of that job's kind go first.
pub const EVENTS_MAX_MSGS_PER_SUBJECT: i64 = 2000;

/// Retention limits of the events stream; the oldest events go first when
/// any is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsRetention {
    /// Oldest event kept.
    pub max_age: Duration,
    /// Most bytes kept (`-1`: no limit).
    pub max_bytes: i64,
    /// Most events kept (`-1`: no limit).
    pub max_msgs: i64,
    /// Most bytes of one event.
    pub max_msg_size: i32,
    /// Most events kept per job and kind.
    pub max_msgs_per_subject: i64,
}

impl Default for EventsRetention {
    fn default() -> Self {
        EventsRetention {
            max_age: EVENTS_MAX_AGE,
            max_bytes: 1 << 30,
            max_msgs: -1,
            max_msg_size: EVENTS_MAX_MSG_SIZE,
            max_msgs_per_subject: EVENTS_MAX_MSGS_PER_SUBJECT,
        }
    }
}

/// How long audit records are kept by default.
pub const AUDIT_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Most bytes of one audit record (a real one is under 1 KiB; its reason
/// is cut to [`crate::trust::AUDIT_REASON_MAX`]); a larger one is refused.
pub const AUDIT_MAX_MSG_SIZE: i32 = 8 * 1024;

/// Retention limits of the audit stream. With the defaults one subject
/// (one system's records of one kind by one author) holds at most
/// 1,000 x 8 KiB = 8 MiB, and the stream 1 GiB: 128 subjects at their
/// worst before the oldest records overall go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Oldest record kept.
    pub max_age: Duration,
    /// Most bytes kept; the oldest records go first.
    pub max_bytes: i64,
    /// Most bytes of one record.
    pub max_msg_size: i32,
    /// Most records kept per subject; the oldest of that subject go first.
    pub max_msgs_per_subject: i64,
}

impl Default for AuditRetention {
    fn default() -> Self {
        AuditRetention {
            max_age: AUDIT_MAX_AGE,
            max_bytes: 1 << 30,
            max_msg_size: AUDIT_MAX_MSG_SIZE,
            max_msgs_per_subject: 1000,
        }
    }
}

/// Creates (or opens) the events and audit streams and the state buckets, with the
/// default event retention.
pub async fn bootstrap(client: &async_nats::Client) -> anyhow::Result<State> {
    bootstrap_with(
        client,
        EventsRetention::default(),
        AuditRetention::default(),
    )
    .await
}

/// Creates (or opens) the events and audit streams and the state buckets;
/// a stream that exists with other limits is updated to these.
pub async fn bootstrap_with(
    client: &async_nats::Client,
    retention: EventsRetention,
    audit: AuditRetention,
) -> anyhow::Result<State> {
    let js = jetstream::new(client.clone());
    ensure_stream(
        &js,
        stream::Config {
            name: names::EVENTS_STREAM.to_owned(),
            subjects: vec![arca_schemas::subject::EVENTS_ALL.to_owned()],
            max_age: retention.max_age,
            max_bytes: retention.max_bytes,
            max_messages: retention.max_msgs,
            max_message_size: retention.max_msg_size,
            max_messages_per_subject: retention.max_msgs_per_subject,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        &js,
        stream::Config {
            name: names::AUDIT_STREAM.to_owned(),
            subjects: vec![arca_schemas::subject::AUDIT_ALL.to_owned()],
            max_age: audit.max_age,
            max_bytes: audit.max_bytes,
            max_message_size: audit.max_msg_size,
            max_messages_per_subject: audit.max_msgs_per_subject,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let bucket = |name: &str, history: i64| kv::Config {
        bucket: name.to_owned(),
        history,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let systems = open_bucket(&js, bucket(names::SYSTEMS_BUCKET, 5)).await?;
    let jobs = open_bucket(&js, bucket(names::JOBS_BUCKET, 1)).await?;
    let snapshots = open_bucket(&js, bucket(names::SNAPSHOTS_BUCKET, 1)).await?;
    let schedules = open_bucket(&js, bucket(names::SCHEDULES_BUCKET, 1)).await?;
    Ok(State {
        js,
        systems,
        jobs,
        snapshots,
        schedules,
    })
}

/// Creates the stream `config` names, or updates the limits of the one
/// that exists to `config`'s.
async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> anyhow::Result<()> {
    let name = config.name.clone();
    let mut s = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {name}: {e}"))?;
    let current = s
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?
        .config
        .clone();
    let limits = |c: &stream::Config| {
        (
            c.max_age,
            c.max_bytes,
            c.max_messages,
            c.max_message_size,
            c.max_messages_per_subject,
            c.discard,
        )
    };
    if limits(&current) != limits(&config) {
        tracing::info!(stream = %name, "updating the stream's limits");
        js.update_stream(stream::Config {
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            max_messages: config.max_messages,
            max_message_size: config.max_message_size,
            max_messages_per_subject: config.max_messages_per_subject,
            discard: config.discard,
            ..current
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot update the limits of stream {name}: {e}"))?;
    }
    Ok(())
}

async fn open_bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    let name = config.bucket.clone();
    match js.get_key_value(&name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create key-value bucket {name}: {e}")),
    }
}
