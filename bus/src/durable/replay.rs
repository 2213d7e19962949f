//! Replaying stored events (DESIGN §6): select events of `<PREFIX>_EVENTS` by pattern
//! and by a start sequence or time (and optionally an end), then print them or deliver
//! them again to **one** durable consumer.
//!
//! Delivering to one consumer: every durable subscriber also filters its replay
//! subjects `P.replay.<consumer>.<pattern>` (see [`crate::durable::consumer`]), which live in
//! the same events stream. [`to_consumer`] copies each selected event that the
//! consumer's patterns match, byte for byte, to `P.replay.<consumer>.<event_type>`
//! under a fresh `Nats-Msg-Id` (so de-duplication does not drop the copy). Only that
//! consumer receives the copies; other consumers and the consumer's own position in
//! the stream are untouched, and the copies go through its handler, retry policy and
//! dead letters like any delivery ([`crate::durable::consumer::Delivery::replayed`] tells them
//! apart).
//!
//! A selection ends at the first of: its end bound, the last event stored when the
//! selection started (a busy stream does not make a replay endless).
//!
//! # Examples
//! ```no_run
//! use weft_bus::replay::{self, Selection, Start};
//! # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
//! let since = Start::parse("10m")?; // the last ten minutes
//! let selection = Selection::new("ticket.>".parse()?, since);
//! let report = replay::to_consumer(&bus, &selection, "tickets_store").await?;
//! println!("replayed {} of {} events", report.replayed, report.selected);
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::connect::Bus;
use crate::envelope::MSG_ID_HEADER;
use crate::envelope::{Envelope, new_event_id, rfc3339};
use crate::error::{Error, ErrorKind, Result};
use crate::messaging::publish::{PendingAck, send_to_stream};
use crate::subject::{EventPattern, Subjects, validate_token};

/// How long one read of a stream may take before a selection fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Replay publishes awaiting their JetStream ack at once (also for DLQ replays).
pub(crate) const IN_FLIGHT: usize = 64;

/// Where a selection starts (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this stream sequence (from 1).
    Sequence(u64),
    /// At the first event stored at or after this time.
    Time(OffsetDateTime),
}

/// Where a selection ends (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// At this stream sequence.
    Sequence(u64),
    /// At the last event stored at or before this time.
    Time(OffsetDateTime),
}

impl Start {
    /// Parses `--since`: a duration back from now (`90s`, `10m`, `2h`, `1day`; see
    /// `humantime`) or an RFC 3339 time (`2026-11-21T14:00:00Z`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] saying which forms are accepted.
    pub fn parse(text: &str) -> Result<Start> {
        parse_time(text, "--since").map(Start::Time)
    }
}

impl End {
    /// Parses `--until`: a stream sequence (`1200`), a duration back from now (`5m`)
    /// or an RFC 3339 time.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] saying which forms are accepted.
    pub fn parse(text: &str) -> Result<End> {
        match text.trim().parse::<u64>() {
            Ok(seq) => Ok(End::Sequence(seq)),
            Err(_) => parse_time(text, "--until").map(End::Time),
        }
    }

    fn passed(&self, sequence: u64, stored_at: OffsetDateTime) -> bool {
        match *self {
            End::Sequence(s) => sequence > s,
            End::Time(t) => stored_at > t,
        }
    }
}

fn parse_time(text: &str, what: &str) -> Result<OffsetDateTime> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "{what} {text:?} is neither a duration (e.g. 90s, 10m, 2h, 1day) nor an RFC 3339 time (e.g. 2026-11-21T14:00:00Z): {e}"
            ),
        )
    })?;
    Ok(OffsetDateTime::now_utc() - ago)
}

/// Which stored events to replay: a pattern and a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Event pattern, e.g. `ticket.>` (matched on `P.events.<pattern>`).
    pub pattern: EventPattern,
    /// First event.
    pub start: Start,
    /// Last event; `None` for the last one stored when the selection starts.
    pub end: Option<End>,
}

impl Selection {
    /// Events matching `pattern` from `start` to the last one stored now.
    pub fn new(pattern: EventPattern, start: Start) -> Self {
        Selection {
            pattern,
            start,
            end: None,
        }
    }

    /// Ends the selection at `end` (inclusive).
    pub fn until(mut self, end: End) -> Self {
        self.end = Some(end);
        self
    }
}

/// Parses a `--subject` argument: an event pattern (`ticket.>`), or the same written
/// as a full events subject (`weft.events.ticket.>`).
///
/// # Errors
/// [`ErrorKind::InvalidSubject`] naming the bad token.
pub fn pattern_of(subjects: &Subjects, text: &str) -> Result<EventPattern> {
    let events = format!("{}.events.", subjects.prefix());
    Ok(text.strip_prefix(&events).unwrap_or(text).parse()?)
}

/// One stored event, as [`select`] yields it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    /// Its stream sequence.
    pub sequence: u64,
    /// The subject it is stored under.
    pub subject: String,
    /// When the stream stored it (RFC 3339, UTC).
    pub stored_at: String,
    /// The envelope; `None` when the bytes are not one (see `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Envelope>,
    /// Why the bytes are not an envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The events of a [`Selection`], read one by one with [`Events::next`].
pub struct Events {
    scan: Scan,
}

impl Events {
    /// The next selected event, or `None` at the end of the selection.
    ///
    /// # Errors
    /// [`ErrorKind::JetStream`] when the stream cannot be read.
    pub async fn next(&mut self) -> Result<Option<StoredEvent>> {
        let Some(m) = self.scan.next().await? else {
            return Ok(None);
        };
        let (envelope, error) = match Envelope::from_slice(&m.payload) {
            Ok(e) => (Some(e), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Some(StoredEvent {
            sequence: m.sequence,
            subject: m.subject,
            stored_at: rfc3339(m.stored_at),
            envelope,
            error,
        }))
    }
}

/// Reads the events of `selection` without delivering them (`weft replay --print`).
///
/// # Errors
/// [`ErrorKind::JetStream`] when the events stream is missing or cannot be read;
/// [`ErrorKind::InvalidConfig`] for a start sequence of 0.
pub async fn select(bus: &Bus, selection: &Selection) -> Result<Events> {
    let scan = Scan::open(
        bus,
        &bus.names().events_stream,
        bus.subjects().events_matching(&selection.pattern),
        selection.start,
        selection.end,
    )
    .await?;
    Ok(Events { scan })
}

/// What [`to_consumer`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// The durable consumer the events went to.
    pub consumer: String,
    /// Events in the selection.
    pub selected: u64,
    /// Events copied to the consumer's replay subjects (acked by JetStream).
    pub replayed: u64,
    /// Selected events that none of the consumer's patterns match (not copied).
    pub skipped: u64,
    /// Stream sequence of the first event copied.
    pub first_sequence: Option<u64>,
    /// Stream sequence of the last event copied.
    pub last_sequence: Option<u64>,
}

/// Delivers the events of `selection` again to the durable consumer `consumer`, and
/// to no other: copies each one its patterns match to
/// `P.replay.<consumer>.<event_type>` (same bytes, fresh `Nats-Msg-Id`, trace headers
/// kept) and waits for the JetStream acks. The subscriber handles the copies when it
/// runs (now, or when it next starts).
///
/// # Errors
/// [`ErrorKind::NotFound`] when there is no durable consumer `consumer` on the events
/// stream; [`ErrorKind::InvalidConfig`] when it takes no replays (it was not created by
/// [`crate::durable::consumer::start`]); [`ErrorKind::Publish`] when a copy is not acked (the
/// message says how many were copied before).
pub async fn to_consumer(bus: &Bus, selection: &Selection, consumer: &str) -> Result<ReplayReport> {
    let patterns = replay_patterns(bus, consumer).await?;
    let mut events = select(bus, selection).await?.scan;
    let mut report = ReplayReport {
        consumer: consumer.to_owned(),
        selected: 0,
        replayed: 0,
        skipped: 0,
        first_sequence: None,
        last_sequence: None,
    };
    let mut acks = VecDeque::new();
    let failed = |report: &ReplayReport, e: Error| {
        Error::with_source(
            ErrorKind::Publish,
            format!(
                "replayed {} events to consumer {consumer}, then failed",
                report.replayed
            ),
            e,
        )
    };
    while let Some(m) = events.next().await? {
        report.selected += 1;
        let event_type = bus.subjects().event_type_of(&m.subject);
        let Some(event_type) = event_type.filter(|t| patterns.iter().any(|p| p.matches(t))) else {
            report.skipped += 1;
            continue;
        };
        let subject = bus.subjects().replay(consumer, &event_type);
        let ack = publish_copy(bus, subject, Some(&m.headers), m.payload)
            .await
            .map_err(|e| failed(&report, e))?;
        acks.push_back(ack);
        report.first_sequence.get_or_insert(m.sequence);
        report.last_sequence = Some(m.sequence);
        while acks.len() >= IN_FLIGHT {
            let ack = acks.pop_front().expect("not empty");
            ack.wait(None).await.map_err(|e| failed(&report, e))?;
            report.replayed += 1;
        }
    }
    while let Some(ack) = acks.pop_front() {
        ack.wait(None).await.map_err(|e| failed(&report, e))?;
        report.replayed += 1;
    }
    tracing::info!(
        consumer,
        replayed = report.replayed,
        skipped = report.skipped,
        "replayed stored events"
    );
    Ok(report)
}

/// Delivers one event envelope again to the durable consumer `consumer`, and to no
/// other: publishes it to `P.replay.<consumer>.<event_type>` under `Nats-Msg-Id`
/// `msg_id` (so a retried call inside the de-duplication window is stored once) and
/// waits for the JetStream ack. Returns the stream sequence of the copy. For callers
/// that hold an event outside the stream, e.g. a flow run's trigger (`weft flow
/// retry`).
///
/// # Errors
/// As [`to_consumer`]; also [`ErrorKind::InvalidConfig`] when none of the
/// consumer's patterns matches the envelope's event type, and
/// [`ErrorKind::InvalidSubject`] when that event type is invalid.
pub async fn envelope_to_consumer(
    bus: &Bus,
    consumer: &str,
    envelope: &Envelope,
    msg_id: &str,
) -> Result<u64> {
    let event_type: crate::subject::EventType = envelope.event_type.parse()?;
    let patterns = replay_patterns(bus, consumer).await?;
    if !patterns.iter().any(|p| p.matches(&event_type)) {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("consumer {consumer} does not take {event_type} events"),
        ));
    }
    let mut headers = crate::observe::trace::headers_for(envelope);
    headers.insert(MSG_ID_HEADER, msg_id);
    let ack = send_to_stream(
        bus,
        bus.subjects().replay(consumer, &event_type),
        headers,
        envelope.to_bytes()?.into(),
    )
    .await?
    .wait(Some(&bus.names().events_stream))
    .await?;
    Ok(ack.sequence)
}

/// Publishes a copy of stored bytes to `subject` with a fresh `Nats-Msg-Id` (so
/// de-duplication keeps it) and the trace headers of `source`; returns without waiting
/// for the JetStream ack (`wait(None)` on the result: any stream may take `subject`).
///
/// # Errors
/// As [`send_to_stream`].
pub(crate) async fn publish_copy(
    bus: &Bus,
    subject: String,
    source: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<PendingAck> {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, new_event_id().as_str());
    crate::observe::trace::copy_context(source, &mut headers);
    send_to_stream(bus, subject, headers, payload).await
}

/// The event patterns for which durable consumer `consumer` takes replays (its
/// `P.replay.<consumer>.<pattern>` filters).
///
/// # Errors
/// [`ErrorKind::NotFound`] when the consumer does not exist on the events stream;
/// [`ErrorKind::InvalidConfig`] when it has no replay filters.
pub async fn replay_patterns(bus: &Bus, consumer: &str) -> Result<Vec<EventPattern>> {
    validate_token("consumer name", consumer)?;
    let stream_name = &bus.names().events_stream;
    let stream = events_stream(bus).await?;
    let info = stream.consumer_info(consumer).await.map_err(|e| {
        use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
        match e.kind() {
            K::NotFound => Error::new(
                ErrorKind::NotFound,
                format!(
                    "there is no durable consumer {consumer} on stream {stream_name} (a durable subscriber creates it when it first starts)"
                ),
            ),
            _ => Error::with_source(
                ErrorKind::JetStream,
                format!("cannot read consumer {consumer} of {stream_name}"),
                e,
            ),
        }
    })?;
    let prefix = bus.subjects().replay_matching(consumer, &">".parse()?);
    let prefix = prefix.trim_end_matches('>');
    let filters: Vec<String> = info
        .config
        .filter_subjects
        .iter()
        .chain(std::iter::once(&info.config.filter_subject))
        .filter(|f| !f.is_empty())
        .cloned()
        .collect();
    let patterns: Vec<EventPattern> = filters
        .iter()
        .filter_map(|f| f.strip_prefix(prefix)?.parse().ok())
        .collect();
    if patterns.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "consumer {consumer} takes no replays: its filters are {filters:?}, none under {prefix}; restart its subscribers with this version of Weft, which adds them"
            ),
        ));
    }
    Ok(patterns)
}

pub(crate) async fn events_stream(bus: &Bus) -> Result<async_nats::jetstream::stream::Stream> {
    get_stream(bus, &bus.names().events_stream).await
}

pub(crate) async fn get_stream(
    bus: &Bus,
    name: &str,
) -> Result<async_nats::jetstream::stream::Stream> {
    bus.jetstream().get_stream(name).await.map_err(|e| {
        Error::with_source(
            ErrorKind::JetStream,
            format!("cannot open stream {name} (`weft up` creates it)"),
            e,
        )
    })
}

/// A stored message read by a [`Scan`].
pub(crate) struct Stored {
    pub sequence: u64,
    pub subject: String,
    pub stored_at: OffsetDateTime,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Reads a range of a stream in order with an ephemeral ordered consumer (no acks; the
/// server removes the consumer when it goes idle). Shared by replays and the DLQ.
pub(crate) struct Scan {
    messages: Option<pull::Ordered>,
    stream: String,
    /// The stream's last sequence when the scan started.
    last: u64,
    end: Option<End>,
}

impl Scan {
    /// Opens a scan of `stream` over `filter` from `start` to `end`.
    pub(crate) async fn open(
        bus: &Bus,
        stream_name: &str,
        filter: String,
        start: Start,
        end: Option<End>,
    ) -> Result<Scan> {
        let deliver_policy = match start {
            Start::Sequence(0) => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "stream sequences start at 1",
                ));
            }
            Start::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            Start::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
        };
        let stream = get_stream(bus, stream_name).await?;
        let js_err = |what: &str, e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::JetStream,
                format!("cannot {what} stream {stream_name}: {e}"),
            )
        };
        // `get_stream` just read the stream's info; no second round trip.
        let last = stream.cached_info().state.last_sequence;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("read", &e))?;
        let messages = if consumer.cached_info().num_pending == 0 {
            None
        } else {
            Some(consumer.messages().await.map_err(|e| js_err("read", &e))?)
        };
        Ok(Scan {
            messages,
            stream: stream_name.to_owned(),
            last,
            end,
        })
    }

    /// The next message of the range, or `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Stored>> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let next = tokio::time::timeout(READ_TIMEOUT, messages.next()).await;
        let m = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                return Err(Error::with_source(
                    ErrorKind::JetStream,
                    format!("cannot read stream {}", self.stream),
                    e,
                ));
            }
            Ok(None) => {
                self.messages = None;
                return Ok(None);
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "reading stream {} stalled for {} s",
                        self.stream,
                        READ_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        let info = m.info().map_err(|e| {
            Error::new(
                ErrorKind::JetStream,
                format!("a message of {} has no metadata: {e}", self.stream),
            )
        })?;
        let (sequence, stored_at, pending) = (info.stream_sequence, info.published, info.pending);
        if sequence > self.last || self.end.is_some_and(|e| e.passed(sequence, stored_at)) {
            self.messages = None;
            return Ok(None);
        }
        if pending == 0 || sequence == self.last {
            // This one is the last of the range: stop reading after it.
            self.messages = None;
        }
        let m = m.message;
        Ok(Some(Stored {
            sequence,
            subject: m.subject.to_string(),
            stored_at,
            headers: m.headers.unwrap_or_default(),
            payload: m.payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let Start::Time(t) = Start::parse("10m").unwrap() else {
            panic!()
        };
        let ago = OffsetDateTime::now_utc() - t;
        assert!(ago >= time::Duration::minutes(10) && ago < time::Duration::minutes(11));
        assert_eq!(
            Start::parse("2026-11-21T14:00:00Z").unwrap(),
            Start::Time(time::macros::datetime!(2026-11-21 14:00 UTC))
        );
        let e = Start::parse("yesterday").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("\"yesterday\""), "{e}");
    }

    #[test]
    fn until_takes_sequences_durations_and_times() {
        assert_eq!(End::parse("42").unwrap(), End::Sequence(42));
        assert!(matches!(End::parse("2h").unwrap(), End::Time(_)));
        assert!(End::parse("-3").is_err());
    }

    #[test]
    fn patterns_may_be_written_as_subjects() {
        let s = Subjects::new(crate::Prefix::default());
        assert_eq!(
            pattern_of(&s, "weft.events.ticket.>").unwrap().as_str(),
            "ticket.>"
        );
        assert_eq!(pattern_of(&s, "ticket.*").unwrap().as_str(), "ticket.*");
        assert!(pattern_of(&s, "ticket.a b").is_err());
    }
}
