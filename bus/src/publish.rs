//! Publishing events: durable by default (waits for the JetStream ack), and an
//! explicitly named fire-and-forget publish for telemetry-like events.
//!
//! Every message carries the NATS headers `Nats-Msg-Id: <event_id>` (JetStream
//! de-duplication) and the W3C trace context ([`crate::trace`]). Each publish runs in
//! a `publish` span.

use std::sync::OnceLock;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use prometheus::IntCounter;
use serde_json::Value;

use crate::connect::Bus;
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics;
use crate::subject::EventType;
use tracing::Instrument as _;

/// Header carrying the event id, used by JetStream de-duplication.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Sends `payload` with `headers` to `subject` through JetStream and returns at once,
/// without waiting for the ack, so a caller may send several before it waits
/// ([`PendingAck::wait`]). Every JetStream publish of the crate goes through here.
///
/// # Errors
/// [`ErrorKind::Publish`] "cannot publish to {subject}" when the client cannot send it
/// (e.g. the connection is closed).
pub(crate) async fn send_to_stream(
    bus: &Bus,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<PendingAck> {
    match bus
        .jetstream()
        .publish_with_headers(subject.clone(), headers, payload)
        .await
    {
        Ok(ack) => Ok(PendingAck { subject, ack }),
        Err(e) => Err(Error::with_source(
            ErrorKind::Publish,
            format!("cannot publish to {subject}"),
            e,
        )),
    }
}

/// A JetStream publish sent by [`send_to_stream`] whose ack has not been awaited yet.
#[must_use = "a publish is stored only when its ack says so; call `wait`"]
pub(crate) struct PendingAck {
    subject: String,
    ack: PublishAckFuture,
}

impl PendingAck {
    /// Waits for the JetStream ack (the context's ack timeout bounds the wait).
    ///
    /// `stream` is the stream expected to take the subject, named in the error; `None`
    /// when the subject is the caller's choice and any stream may take it.
    ///
    /// # Errors
    /// [`ErrorKind::Publish`] "no JetStream ack for {subject}", with a hint: whether
    /// `stream` exists (`weft up` creates it), or whether any stream takes the subject.
    pub(crate) async fn wait(self, stream: Option<&str>) -> Result<PublishAck> {
        let PendingAck { subject, ack } = self;
        ack.await.map_err(|e| {
            let hint = match stream {
                Some(stream) => format!("does stream {stream} exist? `weft up` creates it"),
                None => "is the subject in a stream?".to_owned(),
            };
            Error::with_source(
                ErrorKind::Publish,
                format!("no JetStream ack for {subject} ({hint})"),
                e,
            )
        })
    }
}

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
        h.insert(crate::trace::TRACEPARENT, tp);
    }
    h
}

/// Counts one publish in `weft_events_published_total{mode, outcome}`. The five
/// series are looked up once: finding a series by its labels costs more than the
/// increment, and fire-and-forget publishes are counted one by one.
fn count_published(mode: &'static str, outcome: &'static str) {
    const SERIES: [(&str, &str); 5] = [
        ("durable", "ok"),
        ("durable", "duplicate"),
        ("durable", "error"),
        ("fire_and_forget", "ok"),
        ("fire_and_forget", "error"),
    ];
    static COUNTERS: OnceLock<Vec<IntCounter>> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        let published = &metrics::bus().events_published;
        SERIES
            .iter()
            .map(|(m, o)| published.with_label_values(&[m, o]))
            .collect()
    });
    match SERIES.iter().position(|s| *s == (mode, outcome)) {
        Some(i) => counters[i].inc(),
        None => metrics::bus()
            .events_published
            .with_label_values(&[mode, outcome])
            .inc(),
    }
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
        let span = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %format_args!("{}.events.{}", self.prefix(), env.event_type),
            event_id = %env.event_id,
        );
        let result = self.publish_envelope_inner(env).instrument(span).await;
        let outcome = match &result {
            Ok(p) if p.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        count_published("durable", outcome);
        result
    }

    async fn publish_envelope_inner(&self, env: &Envelope) -> Result<Published> {
        let event_type: EventType = env.event_type.parse()?;
        env.validate()?;
        let subject = self.subjects().events(&event_type);
        let (env, headers) = crate::trace::outgoing(env);
        let bytes = env.to_bytes()?;
        let ack = send_to_stream(self, subject, headers, bytes.into())
            .await?
            .wait(Some(&self.names().events_stream))
            .await?;
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
        let span = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %subject,
            event_id = %env.event_id,
        );
        let (env, headers) = span.in_scope(|| crate::trace::outgoing(env));
        let bytes = env.to_bytes()?;
        let r = self
            .client()
            .publish_with_headers(subject.to_owned(), headers, bytes.into())
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Publish,
                    format!("cannot publish to {subject}"),
                    e,
                )
            });
        count_published("fire_and_forget", if r.is_ok() { "ok" } else { "error" });
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
