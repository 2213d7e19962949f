//! Dead letters (DESIGN §6): a message whose deliveries are spent, or that failed
//! permanently, goes to `P.dlq.<event_type>` with its envelope intact plus `weft.dlq.*`
//! metadata, and only then is the original terminated.

use serde_json::{Value, json};

use crate::connect::Bus;
use crate::envelope::{Envelope, now_rfc3339};
use crate::error::{Error, ErrorKind, Result};
use crate::publish::MSG_ID_HEADER;
use crate::subject::EventType;

/// Where a dead letter came from and why it died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The subject the original was stored under.
    pub original_subject: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its stream sequence.
    pub stream_sequence: u64,
    /// The durable consumer that gave up.
    pub consumer: String,
    /// Deliveries made.
    pub attempts: i64,
    /// The last handler error.
    pub last_error: String,
}

/// Publishes a dead letter for the stored message `raw` and waits for the JetStream
/// ack. A valid envelope keeps every field and gains `weft.dlq.*` metadata; bytes that
/// are not an envelope are wrapped in a new envelope whose payload is
/// `{"raw": <the bytes as text>}`.
///
/// # Errors
/// [`ErrorKind::Publish`] when the DLQ stream does not ack.
pub async fn publish(bus: &Bus, raw: &[u8], letter: &DeadLetter) -> Result<()> {
    let event_type: EventType = bus
        .subjects()
        .event_type_of(&letter.original_subject)
        .unwrap_or_else(|| "unknown".parse().expect("valid token"));
    let mut env = match Envelope::from_slice(raw) {
        Ok(env) => env,
        Err(_) => Envelope::event(&event_type, json!({ "raw": String::from_utf8_lossy(raw) })),
    };
    let meta = [
        ("weft.dlq.original_subject", json!(letter.original_subject)),
        ("weft.dlq.stream", json!(letter.stream)),
        ("weft.dlq.stream_sequence", json!(letter.stream_sequence)),
        ("weft.dlq.consumer", json!(letter.consumer)),
        ("weft.dlq.attempts", json!(letter.attempts)),
        ("weft.dlq.last_error", json!(letter.last_error)),
        ("weft.dlq.failed_at", Value::String(now_rfc3339())),
    ];
    for (k, v) in meta {
        env.metadata.insert(k.into(), v);
    }
    let subject = bus.subjects().dlq(&event_type);
    let mut headers = async_nats::HeaderMap::new();
    // One dead letter per (event, consumer): two flows may both give up on one event.
    headers.insert(
        MSG_ID_HEADER,
        format!("{}:{}", env.event_id, letter.consumer).as_str(),
    );
    let bytes = env.to_bytes()?;
    bus.jetstream()
        .publish_with_headers(subject.clone(), headers, bytes.into())
        .await
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Publish,
                format!("cannot publish to {subject}"),
                e,
            )
        })?
        .await
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Publish,
                format!("no JetStream ack for {subject}"),
                e,
            )
        })?;
    tracing::warn!(consumer = %letter.consumer, %subject, error = %letter.last_error, "dead-lettered");
    Ok(())
}
