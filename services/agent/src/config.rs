//! The agent's configuration file, and the chunk sizes it comes to on a
//! given server.

use arca_runtime::identity::Identity;
use arca_schemas::subject;
use serde::Deserialize;

use crate::backup;

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

/// Chunk sizes that keep every frame within the server's `max_payload`.
pub(crate) fn chunk_params(config: &Config, max_payload: usize) -> backup::ChunkParams {
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
