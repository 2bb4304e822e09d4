//! Publishing job events and following them.

use arca_schemas::event::{EventDetail, JobEvent};
use arca_schemas::{JobId, JobKind, PROTOCOL_VERSION, names, subject};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::{Stream, StreamExt};

/// Publishes one event into the events stream and waits for the stream's
/// acknowledgement. Failures are logged, never fatal to the job: events
/// report a job, they do not drive it.
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
    let body = serde_json::to_vec(&event).expect("events encode");
    match js.publish(subject.clone(), body.into()).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(%subject, error = %e, "event not acknowledged by the stream");
            }
        }
        Err(e) => tracing::warn!(%subject, error = %e, "cannot publish event"),
    }
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
