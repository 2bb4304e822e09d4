//! Creating the streams and buckets Arca keeps its state in.

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
}

impl Default for EventsRetention {
    fn default() -> Self {
        EventsRetention {
            max_age: EVENTS_MAX_AGE,
            max_bytes: 1 << 30,
            max_msgs: -1,
        }
    }
}

/// Creates (or opens) the events and audit streams and the state buckets, with the
/// default event retention.
pub async fn bootstrap(client: &async_nats::Client) -> anyhow::Result<State> {
    bootstrap_with(client, EventsRetention::default()).await
}

/// Creates (or opens) the events stream and the state buckets; an events
/// stream that exists with other limits is updated to these.
pub async fn bootstrap_with(
    client: &async_nats::Client,
    retention: EventsRetention,
) -> anyhow::Result<State> {
    let js = jetstream::new(client.clone());
    let config = stream::Config {
        name: names::EVENTS_STREAM.to_owned(),
        subjects: vec![arca_schemas::subject::EVENTS_ALL.to_owned()],
        max_age: retention.max_age,
        max_bytes: retention.max_bytes,
        max_messages: retention.max_msgs,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let mut events = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", names::EVENTS_STREAM))?;
    let current = events
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {}: {e}", names::EVENTS_STREAM))?
        .config
        .clone();
    if (current.max_age, current.max_bytes, current.max_messages)
        != (config.max_age, config.max_bytes, config.max_messages)
    {
        js.update_stream(stream::Config {
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            max_messages: config.max_messages,
            ..current
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot update stream {}: {e}", names::EVENTS_STREAM))?;
    }
    // Audit records are kept for a year; they are few.
    js.get_or_create_stream(stream::Config {
        name: names::AUDIT_STREAM.to_owned(),
        subjects: vec![arca_schemas::subject::AUDIT_ALL.to_owned()],
        max_age: Duration::from_secs(365 * 24 * 3600),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", names::AUDIT_STREAM))?;
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
