//! Publishing job events and following them.

use arca_schemas::event::{EventDetail, JobEvent};
use arca_schemas::{JobId, JobKind, PROTOCOL_VERSION, names, subject};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::{Stream, StreamExt};

/// Publishes one event into the events stream and waits for the stream's
/// acknowledgement. Failures are logged, never fatal to the job: events
/// report a job, they do not drive it. A publish JetStream cannot take (a
/// restarting server, an election) is retried for up to
/// [`PUBLISH_PATIENCE`], under a message id, so that an event whose
/// acknowledgement was lost is not stored twice.
pub async fn publish(
    js: &jetstream::Context,
    job: JobId,
    kind: JobKind,
    system: &str,
    detail: EventDetail,
) {
    let event = JobEvent {
        v: PROTOCOL_VERSION,
        job,
        job_kind: kind,
        system: system.to_owned(),
        time: chrono::Utc::now(),
        detail,
    };
    let subject = subject::event(&job, event.detail.kind());
    let body: bytes::Bytes = serde_json::to_vec(&event).expect("events encode").into();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        message_id(&job).as_str(),
    );
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let error = match js
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await
        {
            Ok(ack) => match ack.await {
                Ok(_) => return,
                Err(e) => format!("not acknowledged by the stream: {e}"),
            },
            Err(e) => format!("cannot publish: {e}"),
        };
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(%subject, %error, "event lost");
            return;
        }
        tracing::debug!(%subject, %error, "event not stored yet; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(crate::rpc::RETRY_MOST);
    }
}

/// How long publishing one event is retried.
pub const PUBLISH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// A message id no other event has: the job, this process, a counter.
fn message_id(job: &JobId) -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTED: OnceLock<u128> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    format!(
        "{job}.{}.{started}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every event of `job` from the first, then live ones as they come, in
/// order. The stream ends after the job's `ended` event.
pub async fn follow(
    js: &jetstream::Context,
    job: JobId,
) -> anyhow::Result<impl Stream<Item = anyhow::Result<JobEvent>> + use<>> {
    let stream = js.get_stream(names::EVENTS_STREAM).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject::events_of(&job),
            ..Default::default()
        })
        .await?;
    let messages = consumer.messages().await?;
    // Ends right after `ended`, without waiting for a message that will
    // never come.
    let events = futures::stream::unfold((messages, false), |(mut messages, ended)| async move {
        if ended {
            return None;
        }
        let event = match messages.next().await? {
            Ok(m) => serde_json::from_slice::<JobEvent>(&m.payload).map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        let ended = matches!(&event, Ok(e) if matches!(e.detail, EventDetail::Ended { .. }));
        Some((event, (messages, ended)))
    });
    Ok(events)
}
