//! Request/reply with typed bodies and typed errors.
//!
//! Every request has an explicit timeout. [`RpcError::retryable`] tells a
//! caller whether the same request may succeed later: nobody listening yet
//! and timeouts are retryable, a typed refusal carries its own hint.
//!
//! A reply lost to a reconnect does not cost the whole timeout: while a
//! request waits, the client's count of established connections is
//! watched, and a request during which the connection was established
//! anew fails at once with [`RpcError::Reconnected`], which is retryable.
//! Every responder treats a repeated request as the same one, so asking
//! again is safe.

use std::sync::atomic::Ordering;
use std::time::Duration;

use arca_schemas::codec::{self, CodecError};
use arca_schemas::error::{ErrorReply, Reply};
use arca_schemas::msg::Request;
use async_nats::Client;
use serde::{Serialize, de::DeserializeOwned};

/// Default time a request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiting request looks whether the connection was made anew.
const RECONNECT_WATCH: Duration = Duration::from_millis(100);

/// A request that did not get a good answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// Nobody subscribes to the subject (service down or not yet connected).
    #[error("no service answers on {subject}")]
    NoResponders {
        /// Subject.
        subject: String,
    },
    /// The responder did not answer in time.
    #[error("no answer on {subject} within {timeout:?}")]
    Timeout {
        /// Subject.
        subject: String,
        /// Time waited.
        timeout: Duration,
    },
    /// The request could not be sent.
    #[error("request on {subject} failed: {message}")]
    Transport {
        /// Subject.
        subject: String,
        /// Cause.
        message: String,
    },
    /// The client refused to send it (bad subject, message too large).
    #[error("request on {subject} refused by the client: {message}")]
    Rejected {
        /// Subject.
        subject: String,
        /// Cause.
        message: String,
    },
    /// A body did not encode or decode.
    #[error("bad message on {subject}: {source}")]
    Codec {
        /// Subject.
        subject: String,
        /// Cause.
        source: CodecError,
    },
    /// The connection to the server was lost and made again while the
    /// request waited: its reply, if one was sent, may be lost.
    #[error("the connection to NATS was re-established while waiting for an answer on {subject}")]
    Reconnected {
        /// Subject.
        subject: String,
    },
    /// The responder refused with a typed error.
    #[error("{0}")]
    Remote(ErrorReply),
}

impl RpcError {
    /// True when trying the same request again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            RpcError::NoResponders { .. } | RpcError::Timeout { .. } => true,
            RpcError::Transport { .. } | RpcError::Reconnected { .. } => true,
            RpcError::Codec { .. } | RpcError::Rejected { .. } => false,
            RpcError::Remote(e) => e.retryable,
        }
    }

    /// The typed error to pass on to a caller of ours.
    pub fn to_reply(&self) -> ErrorReply {
        match self {
            RpcError::Remote(e) => e.clone(),
            other => ErrorReply {
                code: if other.retryable() {
                    arca_schemas::ErrorCode::Unavailable
                } else {
                    arca_schemas::ErrorCode::Internal
                },
                message: other.to_string(),
                retryable: other.retryable(),
            },
        }
    }
}

/// Sends `body` to `subject` and decodes the typed reply, with the default timeout.
pub async fn request<Q: Serialize, R: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &Q,
) -> Result<R, RpcError> {
    request_with_timeout(client, subject, body, DEFAULT_TIMEOUT).await
}

/// Sends `body` to `subject` and decodes the typed reply.
pub async fn request_with_timeout<Q: Serialize, R: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &Q,
    timeout: Duration,
) -> Result<R, RpcError> {
    let payload = codec::encode(body).map_err(|source| RpcError::Codec {
        subject: subject.clone(),
        source,
    })?;
    send(client, subject, payload, None, timeout).await
}

/// Makes the job token of one attempt: called with the subject and the
/// encoded body, it returns the token to send in the
/// [`arca_schemas::trust::TOKEN_HEADER`] header (a fresh one per call, so
/// that a retried request is not a replay).
pub type Signer = dyn Fn(&str, &[u8]) -> String + Send + Sync;

/// Sends a command and decodes the reply its type names
/// ([`Request::Reply`]), signed with a job token when `sign` is given.
pub async fn call<R: Request>(
    client: &Client,
    subject: String,
    body: &R,
    timeout: Duration,
    sign: Option<&Signer>,
) -> Result<R::Reply, RpcError> {
    match sign {
        Some(token) => request_signed(client, subject, body, timeout, token).await,
        None => request_with_timeout(client, subject, body, timeout).await,
    }
}

/// [`call`], tried again as [`retry_capped`] does: for `within` after the
/// first failure, never past `cap`.
pub async fn call_retried<R: Request>(
    within: Duration,
    cap: Option<tokio::time::Instant>,
    client: &Client,
    subject: String,
    body: &R,
    timeout: Duration,
    sign: Option<&Signer>,
) -> Result<R::Reply, RpcError> {
    retry_capped(within, cap, || {
        call(client, subject.clone(), body, timeout, sign)
    })
    .await
}

/// Like [`request_with_timeout`], with a job token: `token` is called with
/// the subject and the encoded body and returns the token to send in the
/// [`arca_schemas::trust::TOKEN_HEADER`] header (a fresh one per call, so
/// that a retried request is not a replay).
pub async fn request_signed<Q: Serialize, R: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &Q,
    timeout: Duration,
    token: &Signer,
) -> Result<R, RpcError> {
    let payload = codec::encode(body).map_err(|source| RpcError::Codec {
        subject: subject.clone(),
        source,
    })?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        arca_schemas::trust::TOKEN_HEADER,
        token(&subject, &payload).as_str(),
    );
    send(client, subject, payload, Some(headers), timeout).await
}

async fn send<R: DeserializeOwned>(
    client: &Client,
    subject: String,
    payload: Vec<u8>,
    headers: Option<async_nats::HeaderMap>,
    timeout: Duration,
) -> Result<R, RpcError> {
    let mut req = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(timeout));
    if let Some(h) = headers {
        req = req.headers(h);
    }
    let connects = client.statistics();
    let before = connects.connects.load(Ordering::Relaxed);
    let reconnected = async {
        loop {
            tokio::time::sleep(RECONNECT_WATCH).await;
            if connects.connects.load(Ordering::Relaxed) != before {
                return;
            }
        }
    };
    let sent = tokio::select! {
        r = client.send_request(subject.clone(), req) => r,
        () = reconnected => return Err(RpcError::Reconnected { subject }),
    };
    let msg = sent.map_err(|e| {
        use async_nats::client::RequestErrorKind as K;
        match e.kind() {
            K::NoResponders => RpcError::NoResponders {
                subject: subject.clone(),
            },
            K::TimedOut => RpcError::Timeout {
                subject: subject.clone(),
                timeout,
            },
            K::InvalidSubject | K::MaxPayloadExceeded => RpcError::Rejected {
                subject: subject.clone(),
                message: e.to_string(),
            },
            _ => RpcError::Transport {
                subject: subject.clone(),
                message: e.to_string(),
            },
        }
    })?;
    let reply: Reply<R> = codec::decode(&msg.payload).map_err(|source| RpcError::Codec {
        subject: subject.clone(),
        source,
    })?;
    Result::from(reply).map_err(RpcError::Remote)
}

/// Retries `f` while it fails with a retryable error, for `within` after
/// its first failure: a failure is always followed by at least one more
/// attempt when `within` is not zero, however long the failed attempt took.
/// A reply lost to a reconnect ([`RpcError::Reconnected`]) starts the
/// window again: the time the connection was away is not the responder's.
pub async fn retry<T, F, Fut>(within: Duration, f: F) -> Result<T, RpcError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RpcError>>,
{
    retry_capped(within, None, f).await
}

/// Like [`retry`], and never past `cap` (a job's deadline).
pub async fn retry_capped<T, F, Fut>(
    within: Duration,
    cap: Option<tokio::time::Instant>,
    mut f: F,
) -> Result<T, RpcError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RpcError>>,
{
    let mut delay = RETRY_FIRST;
    let mut window_end: Option<tokio::time::Instant> = None;
    loop {
        match f().await {
            Err(e) if e.retryable() => {
                let now = tokio::time::Instant::now();
                let end = match window_end {
                    Some(end) if !matches!(e, RpcError::Reconnected { .. }) => end,
                    _ => {
                        delay = RETRY_FIRST;
                        now + within
                    }
                };
                window_end = Some(end);
                let end = cap.map_or(end, |c| end.min(c));
                if now >= end {
                    return Err(e);
                }
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(delay.min(end - now)).await;
                delay = (delay * 2).min(RETRY_MOST);
            }
            other => return other,
        }
    }
}

/// The first pause between two attempts; each next one doubles, up to
/// [`RETRY_MOST`].
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest pause between two attempts.
pub const RETRY_MOST: Duration = Duration::from_secs(2);

/// Decodes a request body, or the typed error to answer with.
pub fn decode_request<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ErrorReply> {
    codec::decode(payload).map_err(|e| ErrorReply::bad_request(format!("malformed request: {e}")))
}

/// Answers a request message with a typed reply. A message without a reply
/// subject is ignored (it was a publish, not a request).
pub async fn respond<T: Serialize>(
    client: &Client,
    msg: &async_nats::Message,
    result: Result<T, ErrorReply>,
) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    if let Err(e) = &result {
        tracing::debug!(subject = %msg.subject, error = %e, "request refused");
    }
    let body = match codec::encode(&Reply::from(result)) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode reply");
            return;
        }
    };
    if let Err(e) = client.publish(reply, body.into()).await {
        tracing::warn!(error = %e, "cannot send reply");
    }
}

/// The last token of a subject (the verb).
pub fn verb(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn timeout() -> RpcError {
        RpcError::Timeout {
            subject: "s".into(),
            timeout: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn a_failed_attempt_longer_than_the_window_is_still_tried_again() {
        let tries = AtomicUsize::new(0);
        let r: Result<usize, _> = retry(Duration::from_millis(50), || async {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(80)).await;
                return Err(timeout());
            }
            Ok(n)
        })
        .await;
        assert_eq!(r.unwrap(), 1);
    }

    #[tokio::test]
    async fn retries_end_when_the_window_after_the_first_failure_has_passed() {
        let tries = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let r: Result<(), _> = retry(Duration::from_millis(300), || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(timeout())
        })
        .await;
        assert!(r.is_err());
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(tries.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn a_reply_lost_to_a_reconnect_starts_the_window_again() {
        let tries = AtomicUsize::new(0);
        let r: Result<usize, _> = retry(Duration::from_millis(200), || async {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            match n {
                0 => Err(timeout()),
                // Ends after the window that began with the first failure,
                // having learnt that its reply was lost to a reconnect.
                1 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    Err(RpcError::Reconnected {
                        subject: "s".into(),
                    })
                }
                _ => Ok(n),
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);
    }

    #[tokio::test]
    async fn the_cap_ends_retries_before_the_window() {
        let started = std::time::Instant::now();
        let cap = tokio::time::Instant::now() + Duration::from_millis(200);
        let r: Result<(), _> = retry_capped(Duration::from_secs(30), Some(cap), || async {
            Err(timeout())
        })
        .await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried() {
        let tries = AtomicUsize::new(0);
        let r: Result<(), _> = retry(Duration::from_secs(5), || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(RpcError::Remote(ErrorReply::bad_request("no")))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
