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
}

/// How long job events are kept.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);

/// Creates (or opens) the events stream and the state buckets.
pub async fn bootstrap(client: &async_nats::Client) -> anyhow::Result<State> {
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(stream::Config {
        name: names::EVENTS_STREAM.to_owned(),
        subjects: vec![arca_schemas::subject::EVENTS_ALL.to_owned()],
        max_age: EVENTS_MAX_AGE,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", names::EVENTS_STREAM))?;
    let bucket = |name: &str, history: i64| kv::Config {
        bucket: name.to_owned(),
        history,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let systems = open_bucket(&js, bucket(names::SYSTEMS_BUCKET, 5)).await?;
    let jobs = open_bucket(&js, bucket(names::JOBS_BUCKET, 1)).await?;
    let snapshots = open_bucket(&js, bucket(names::SNAPSHOTS_BUCKET, 1)).await?;
    Ok(State {
        js,
        systems,
        jobs,
        snapshots,
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
