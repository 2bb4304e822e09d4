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
pub mod config;
pub mod door;
pub mod error;
mod handler;
pub mod hooks;
pub mod meta;
pub mod patience;
pub mod prefetch;
pub mod progress;
pub mod restore;
pub mod select;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arca_runtime::nats::Refusals;
use arca_runtime::trust::Gate;
use arca_schemas::subject;
use async_nats::Client;
use futures::StreamExt;

pub use config::Config;
use config::chunk_params;
use handler::Agent;
pub use progress::{MAX_FILE_ERRORS, Progress, cap_file_errors};

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
    let system = config.system.clone();
    let key = identity.public_key();
    let agent = Arc::new(Agent::new(config, identity, gate, params, client.clone()));
    tokio::pin!(shutdown);
    let mut requests = loop {
        let requests = client.subscribe(subject::agent_all(&system)).await?;
        let refused = door::refused_subscriptions(&client, &refusals).await;
        if refused.is_empty() {
            break requests;
        }
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
