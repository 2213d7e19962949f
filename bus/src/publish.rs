//! Publishing events: durable by default (waits for the JetStream ack), and an
//! explicitly named fire-and-forget publish for telemetry-like events.
//!
//! Every message carries the NATS headers `Nats-Msg-Id: <event_id>` (JetStream
//! de-duplication) and, when the envelope has one, `traceparent`.

use async_nats::HeaderMap;
use serde_json::Value;

use crate::connect::Bus;
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics;
use crate::subject::EventType;

/// Header carrying the event id, used by JetStream de-duplication.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// What JetStream said about a durable publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub event_id: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// True when the same `event_id` was already stored inside the duplicate window
    /// (the event was stored once).
    pub duplicate: bool,
}

/// The NATS headers of an envelope: `Nats-Msg-Id` and `traceparent`.
pub fn headers_for(env: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID_HEADER, env.event_id.as_str());
    if let Some(tp) = env.traceparent.as_deref().filter(|t| !t.is_empty()) {
        h.insert(TRACEPARENT_HEADER, tp);
    }
    h
}

impl Bus {
    /// Publishes `payload` as a new event of `event_type` and waits for the JetStream
    /// ack.
    ///
    /// # Errors
    /// As [`Bus::publish_envelope`].
    pub async fn publish(&self, event_type: &EventType, payload: Value) -> Result<Published> {
        self.publish_envelope(&Envelope::event(event_type, payload))
            .await
    }

    /// Publishes an event envelope to `P.events.<event_type>` and waits for the
    /// JetStream ack, so success means the event is stored.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidSubject`] for a bad event type, [`ErrorKind::Envelope`] for
    /// an invalid or oversized envelope, [`ErrorKind::Publish`] when no stream takes the
    /// subject or the ack does not come in time.
    pub async fn publish_envelope(&self, env: &Envelope) -> Result<Published> {
        let result = self.publish_envelope_inner(env).await;
        let outcome = match &result {
            Ok(p) if p.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        metrics::bus()
            .events_published
            .with_label_values(&["durable", outcome])
            .inc();
        result
    }

    async fn publish_envelope_inner(&self, env: &Envelope) -> Result<Published> {
        let event_type: EventType = env.event_type.parse()?;
        env.validate()?;
        let subject = self.subjects().events(&event_type);
        let bytes = env.to_bytes()?;
        let ack = self
            .jetstream()
            .publish_with_headers(subject.clone(), headers_for(env), bytes.into())
            .await
            .map_err(|e| {
                Error::with_source(ErrorKind::Publish, format!("cannot publish to {subject}"), e)
            })?
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Publish,
                    format!(
                        "no JetStream ack for {subject} (does stream {} exist? `weft up` creates it)",
                        self.names().events_stream
                    ),
                    e,
                )
            })?;
        Ok(Published {
            event_id: env.event_id.clone(),
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes an envelope to `subject` with core NATS: no JetStream ack, so it may
    /// be lost. For telemetry-like events only; the name says so.
    ///
    /// # Errors
    /// [`ErrorKind::Envelope`] for an oversized envelope, [`ErrorKind::Publish`] when
    /// the client cannot queue the message.
    pub async fn publish_fire_and_forget(&self, subject: &str, env: &Envelope) -> Result<()> {
        let bytes = env.to_bytes()?;
        let r = self
            .client()
            .publish_with_headers(subject.to_owned(), headers_for(env), bytes.into())
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Publish,
                    format!("cannot publish to {subject}"),
                    e,
                )
            });
        metrics::bus()
            .events_published
            .with_label_values(&["fire_and_forget", if r.is_ok() { "ok" } else { "error" }])
            .inc();
        r
    }

    /// Publishes a new event of `event_type` with core NATS and no ack (see
    /// [`Bus::publish_fire_and_forget`]).
    ///
    /// # Errors
    /// As [`Bus::publish_fire_and_forget`].
    pub async fn publish_event_fire_and_forget(
        &self,
        event_type: &EventType,
        payload: Value,
    ) -> Result<()> {
        let env = Envelope::event(event_type, payload);
        self.publish_fire_and_forget(&self.subjects().events(event_type), &env)
            .await
    }
}
