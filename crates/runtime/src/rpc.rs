//! Request/reply with typed bodies and typed errors.
//!
//! Every request has an explicit timeout. [`RpcError::retryable`] tells a
//! caller whether the same request may succeed later: nobody listening yet
//! and timeouts are retryable, a typed refusal carries its own hint.

use std::time::Duration;

use arca_schemas::codec::{self, CodecError};
use arca_schemas::error::{ErrorReply, Reply};
use async_nats::Client;
use serde::{Serialize, de::DeserializeOwned};

/// Default time a request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The responder refused with a typed error.
    #[error("{0}")]
    Remote(ErrorReply),
}

impl RpcError {
    /// True when trying the same request again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            RpcError::NoResponders { .. } | RpcError::Timeout { .. } => true,
            RpcError::Transport { .. } => true,
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

/// Like [`request_with_timeout`], with a job token: `token` is called with
/// the subject and the encoded body and returns the token to send in the
/// [`arca_schemas::trust::TOKEN_HEADER`] header (a fresh one per call, so
/// that a retried request is not a replay).
pub async fn request_signed<Q: Serialize, R: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &Q,
    timeout: Duration,
    token: &(dyn Fn(&str, &[u8]) -> String + Send + Sync),
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
    let msg = client
        .send_request(subject.clone(), req)
        .await
        .map_err(|e| {
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

/// Retries `f` while it fails with a retryable error, until `within` has passed.
pub async fn retry<T, F, Fut>(within: Duration, mut f: F) -> Result<T, RpcError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RpcError>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Err(e) if e.retryable() && tokio::time::Instant::now() + delay < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

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
