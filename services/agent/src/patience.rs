//! How long the agent waits for media, and how long it asks again.
//!
//! A transfer's request to media that fails in a way a retry can help
//! (media restarting, nobody answering yet, a reply lost to a reconnect)
//! is asked again for `media-retry-secs` after its first failure, never
//! past the job's deadline, which the scheduler sends with the transfer's
//! start. A reply lost to a reconnect is asked for again at once. A
//! nats-server restart of a few seconds thus costs a few seconds, not the
//! job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arca_runtime::rpc::{self, RpcError};
use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;

/// One request's timeout and retry window, and the job's deadline.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Time one attempt may take.
    pub timeout: Duration,
    /// How long failures are retried after the first.
    pub retry: Duration,
    /// No retry after this (the job's deadline), when known.
    pub deadline: Option<Instant>,
}

impl Patience {
    /// Attempts of `timeout` each, retried for `retry`, up to the
    /// `deadline_secs` the scheduler gave.
    pub fn new(timeout: Duration, retry: Duration, deadline_secs: Option<u64>) -> Patience {
        Patience {
            timeout,
            retry,
            deadline: deadline_secs.map(|s| Instant::now() + Duration::from_secs(s)),
        }
    }

    /// The same, with attempts of `timeout` each.
    pub fn with_timeout(self, timeout: Duration) -> Patience {
        Patience { timeout, ..self }
    }

    /// Sends `body` to `subject` until it is answered, refused, or the
    /// retries end.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        client: &async_nats::Client,
        subject: &str,
        body: &Q,
    ) -> Result<R, RpcError> {
        let warned = AtomicBool::new(false);
        let warned = &warned;
        rpc::retry_capped(self.retry, self.deadline, || async move {
            let r = rpc::request_with_timeout(client, subject.to_owned(), body, self.timeout).await;
            if let Err(e) = &r
                && e.retryable()
                && !warned.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(%subject, error = %e, "media did not answer; asking again");
            }
            r
        })
        .await
    }
}
