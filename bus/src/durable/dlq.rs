//! Dead letters (DESIGN §6): a message that failed permanently, or whose deliveries
//! are spent, goes to `P.dlq.<event_type>` (stream `<PREFIX>_DLQ`) with its envelope
//! intact plus `weft.dlq.*` metadata, and only then is the original terminated.
//!
//! A dead letter's **id** is its sequence in `<PREFIX>_DLQ`: stable while it is kept,
//! never reused, and what `weft dlq show ID` and `weft dlq replay ID` take.
//!
//! [`replay()`] republishes a dead letter's envelope (without the `weft.dlq.*` keys) under
//! a fresh `Nats-Msg-Id`, by default to the replay subject of the consumer that gave up
//! on it (`P.replay.<consumer>.<event_type>`, so only that consumer sees it again; see
//! [`crate::durable::replay`]), or to any subject given; it removes the dead letter only after
//! JetStream acked the republish.
//!
//! # Examples
//! ```no_run
//! use weft_bus::dlq;
//! # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
//! for entry in dlq::list(&bus, None).await? {
//!     println!("{} {} {:?}", entry.id, entry.subject, entry.letter.map(|l| l.last_error));
//! }
//! let done = dlq::replay(&bus, 7, None).await?; // dead letter 7, back to its consumer
//! println!("now {} seq {}", done.to_subject, done.sequence);
//! # Ok(()) }
//! ```

use std::collections::HashMap;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::connect::Bus;
use crate::durable::replay::{self, Scan, Start};
use crate::envelope::MSG_ID_HEADER;
use crate::envelope::{Envelope, rfc3339};
use crate::error::{Error, ErrorKind, Result};
use crate::messaging::publish::{PendingAck, send_to_stream};
use crate::subject::{EventPattern, EventType, validate_token};

/// Prefix of the metadata keys a dead letter gains.
pub const METADATA_PREFIX: &str = "weft.dlq.";

/// Why a message was dead-lettered (`weft.dlq.reason`; the `reason` label of
/// `weft_dead_letters_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The handler failed with a permanent error.
    Permanent,
    /// The handler failed with a retryable error and no retry is left (deliveries spent,
    /// or the retry policy is `none`).
    RetriesSpent,
    /// The stored bytes are not an envelope.
    InvalidEnvelope,
    /// The last delivery was never settled: the handler's process died or hung past
    /// the ack wait, and the deliveries are spent.
    Unacknowledged,
}

impl Reason {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Permanent => "permanent",
            Reason::RetriesSpent => "retries_spent",
            Reason::InvalidEnvelope => "invalid_envelope",
            Reason::Unacknowledged => "unacknowledged",
        }
    }
}

/// Where a dead letter came from and why it died: its `weft.dlq.*` metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `weft.dlq.original_subject`: the subject the message was stored under.
    pub original_subject: String,
    /// `weft.dlq.stream`: the stream that stored it.
    pub stream: String,
    /// `weft.dlq.stream_sequence`: its stream sequence.
    pub stream_sequence: u64,
    /// `weft.dlq.consumer`: the durable consumer that gave up.
    pub consumer: String,
    /// `weft.dlq.attempts`: deliveries made.
    pub attempts: i64,
    /// `weft.dlq.reason`.
    pub reason: Reason,
    /// `weft.dlq.last_error`: the last handler error.
    pub last_error: String,
    /// `weft.dlq.first_failed_at`: when a delivery of it first failed (RFC 3339), from
    /// the `<prefix>_failures` bucket; `None` when unknown (that bucket is missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failed_at: Option<String>,
    /// `weft.dlq.last_failed_at`: when it was dead-lettered (RFC 3339).
    pub last_failed_at: String,
}

impl DeadLetter {
    fn to_metadata(&self, into: &mut Map<String, Value>) {
        if let Ok(Value::Object(fields)) = serde_json::to_value(self) {
            for (k, v) in fields {
                into.insert(format!("{METADATA_PREFIX}{k}"), v);
            }
        }
    }

    /// Reads the `weft.dlq.*` metadata of `env`; `None` when it is missing or malformed.
    pub fn from_envelope(env: &Envelope) -> Option<DeadLetter> {
        let fields: Map<String, Value> = env
            .metadata
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(METADATA_PREFIX)?.to_owned(), v.clone())))
            .collect();
        serde_json::from_value(Value::Object(fields)).ok()
    }
}

/// Publishes a dead letter for the stored message `raw` (with its NATS `headers`, whose
/// trace context is kept) and waits for the JetStream ack. A valid envelope keeps every
/// field and gains `weft.dlq.*` metadata; bytes that are not an envelope are wrapped
/// in a new envelope whose payload is `{"raw": <the bytes as text>}` and which has
/// `weft.dlq.wrapped: true`. Its `Nats-Msg-Id` is
/// `dlq:<stream>:<stream_sequence>:<consumer>`, so a redelivered message is
/// dead-lettered once, while a later copy of the same event (a replay) can die again.
///
/// Returns the dead letter's id (its `<PREFIX>_DLQ` sequence).
///
/// # Errors
/// [`ErrorKind::Publish`] when the DLQ stream does not ack.
pub async fn publish(
    bus: &Bus,
    raw: &[u8],
    headers: Option<&HeaderMap>,
    letter: &DeadLetter,
) -> Result<u64> {
    let event_type: EventType = bus
        .subjects()
        .event_type_of(&letter.original_subject)
        .unwrap_or_else(|| "unknown".parse().expect("valid token"));
    let mut env = match Envelope::from_slice(raw) {
        Ok(env) => env,
        Err(_) => {
            let mut env =
                Envelope::event(&event_type, json!({ "raw": String::from_utf8_lossy(raw) }));
            env.metadata
                .insert(format!("{METADATA_PREFIX}wrapped"), json!(true));
            env
        }
    };
    letter.to_metadata(&mut env.metadata);
    let subject = bus.subjects().dlq(&event_type);
    let mut out = HeaderMap::new();
    out.insert(
        MSG_ID_HEADER,
        format!(
            "dlq:{}:{}:{}",
            letter.stream, letter.stream_sequence, letter.consumer
        )
        .as_str(),
    );
    crate::observe::trace::copy_context(headers, &mut out);
    let bytes = env.to_bytes()?;
    let ack = send_to_stream(bus, subject.clone(), out, bytes.into())
        .await?
        .wait(Some(&bus.names().dlq_stream))
        .await?;
    tracing::warn!(consumer = %letter.consumer, %subject, reason = letter.reason.as_str(), error = %letter.last_error, "dead-lettered");
    Ok(ack.sequence)
}

/// One dead letter as stored in `<PREFIX>_DLQ`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlqEntry {
    /// Its id: the `<PREFIX>_DLQ` stream sequence.
    pub id: u64,
    /// Its subject, `P.dlq.<event_type>`.
    pub subject: String,
    /// When it was stored (RFC 3339, UTC).
    pub stored_at: String,
    /// The `weft.dlq.*` metadata; `None` when missing or malformed (not published by
    /// Weft).
    pub letter: Option<DeadLetter>,
    /// True when the original bytes were not an envelope (the envelope wraps them).
    pub wrapped: bool,
    /// The stored envelope (with its `weft.dlq.*` metadata); `None` when the stored
    /// bytes are not an envelope.
    pub envelope: Option<Envelope>,
}

impl DlqEntry {
    fn new(id: u64, subject: String, stored_at: String, payload: &[u8]) -> DlqEntry {
        let envelope = Envelope::from_slice(payload).ok();
        DlqEntry {
            id,
            subject,
            stored_at,
            letter: envelope.as_ref().and_then(DeadLetter::from_envelope),
            wrapped: envelope.as_ref().is_some_and(|e| {
                e.metadata.get(&format!("{METADATA_PREFIX}wrapped")) == Some(&json!(true))
            }),
            envelope,
        }
    }
}

/// Every dead letter, oldest first; with `event_type`, only those whose event type
/// the pattern matches.
///
/// # Errors
/// [`ErrorKind::JetStream`] when the DLQ stream is missing or cannot be read.
pub async fn list(bus: &Bus, event_type: Option<&EventPattern>) -> Result<Vec<DlqEntry>> {
    let filter = match event_type {
        Some(p) => bus.subjects().dlq_matching(p),
        None => bus.subjects().all_dlq(),
    };
    let mut scan = Scan::open(
        bus,
        &bus.names().dlq_stream,
        filter,
        Start::Sequence(1),
        None,
    )
    .await?;
    let mut out = Vec::new();
    while let Some(m) = scan.next().await? {
        out.push(DlqEntry::new(
            m.sequence,
            m.subject,
            rfc3339(m.stored_at),
            &m.payload,
        ));
    }
    Ok(out)
}

/// The dead letter with id `id`.
///
/// # Errors
/// [`ErrorKind::NotFound`] when there is none (never stored, replayed, or expired);
/// [`ErrorKind::JetStream`] when the DLQ stream is missing or cannot be read.
pub async fn get(bus: &Bus, id: u64) -> Result<DlqEntry> {
    get_raw(bus, id).await.map(|(entry, _, _)| entry)
}

/// Dead letter `id` with its NATS headers, and the DLQ stream it was read from.
async fn get_raw(bus: &Bus, id: u64) -> Result<(DlqEntry, HeaderMap, Stream)> {
    let name = &bus.names().dlq_stream;
    let stream = replay::get_stream(bus, name).await?;
    let m = stream.get_raw_message(id).await.map_err(|e| {
        use async_nats::jetstream::stream::RawMessageErrorKind as K;
        match e.kind() {
            K::NoMessageFound => Error::new(
                ErrorKind::NotFound,
                format!(
                    "there is no dead letter {id} in {name} (replayed, expired, or never there; `weft dlq ls` lists them)"
                ),
            ),
            _ => Error::with_source(
                ErrorKind::JetStream,
                format!("cannot read dead letter {id} from {name}"),
                e,
            ),
        }
    })?;
    let entry = DlqEntry::new(id, m.subject.to_string(), rfc3339(m.time), &m.payload);
    Ok((entry, m.headers, stream))
}

/// What [`replay()`] did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// The dead letter's id (now removed).
    pub id: u64,
    /// The event id of the republished envelope (the original's).
    pub event_id: String,
    /// Where it was republished.
    pub to_subject: String,
    /// The stream that stored the republish.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
}

/// Replays dead letter `id`: republishes its envelope, without the `weft.dlq.*` keys,
/// to `to` — by default (`None`) the replay subject of the consumer that dead-lettered
/// it, `P.replay.<consumer>.<event_type>`, so that consumer alone gets it again — under
/// a fresh `Nats-Msg-Id`; after the JetStream ack, removes the dead letter.
///
/// # Errors
/// [`ErrorKind::NotFound`] when there is no dead letter `id`, or the consumer that
/// dead-lettered it no longer exists (then pass `to`);
/// [`ErrorKind::InvalidConfig`] when the dead letter cannot be replayed (it wraps bytes
/// that were not an envelope, or has no `weft.dlq.*` metadata and no `to` was given);
/// [`ErrorKind::InvalidSubject`] for a bad `to`; [`ErrorKind::Publish`] when the
/// republish is not acked (the dead letter is kept); [`ErrorKind::JetStream`] when it
/// was republished but could not be removed (the message says so).
pub async fn replay(bus: &Bus, id: u64, to: Option<&str>) -> Result<Replayed> {
    if let Some(to) = to {
        check_subject(to)?;
    }
    let (entry, headers, dlq) = get_raw(bus, id).await?;
    let sent = republish(bus, entry, &headers, to, &mut HashMap::new()).await?;
    settle(&dlq, sent).await
}

/// A dead letter's republish, sent and not yet acked.
struct Republish {
    id: u64,
    event_id: String,
    to_subject: String,
    ack: PendingAck,
}

/// Checks dead letter `entry` ([`prepare`]) and sends its republish, with the trace
/// context of its `headers`, without waiting for the ack.
///
/// # Errors
/// As [`prepare`]; [`ErrorKind::Envelope`] or [`ErrorKind::Publish`] when it cannot
/// be sent.
async fn republish(
    bus: &Bus,
    entry: DlqEntry,
    headers: &HeaderMap,
    to: Option<&str>,
    cache: &mut PatternCache,
) -> Result<Republish> {
    let id = entry.id;
    let (env, to_subject) = prepare(bus, entry, to, cache).await?;
    let ack = replay::publish_copy(
        bus,
        to_subject.clone(),
        Some(headers),
        env.to_bytes()?.into(),
    )
    .await?;
    Ok(Republish {
        id,
        event_id: env.event_id,
        to_subject,
        ack,
    })
}

/// The replay patterns of each consumer looked up so far, by consumer name.
type PatternCache = HashMap<String, Vec<EventPattern>>;

/// Checks that dead letter `entry` can be replayed to `to` (by default, to the consumer
/// that dead-lettered it) and returns its envelope without the `weft.dlq.*` keys, and
/// the subject to republish it to. A consumer's replay patterns are looked up once per
/// `cache`.
///
/// # Errors
/// As [`replay()`], before anything is published.
async fn prepare(
    bus: &Bus,
    entry: DlqEntry,
    to: Option<&str>,
    cache: &mut PatternCache,
) -> Result<(Envelope, String)> {
    let id = entry.id;
    let cannot = |why: &str| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("dead letter {id} cannot be replayed: {why} (`weft dlq show {id}` shows it)"),
        )
    };
    let Some(mut env) = entry.envelope else {
        return Err(cannot("it is not an envelope"));
    };
    if entry.wrapped {
        return Err(cannot("it wraps bytes that were not an envelope"));
    }
    let to_subject = match (to, &entry.letter) {
        (Some(to), _) => to.to_owned(),
        (None, None) => return Err(cannot("it has no weft.dlq.* metadata; give a subject")),
        (None, Some(letter)) => {
            let event_type: EventType = env.event_type.parse()?;
            if !cache.contains_key(&letter.consumer) {
                let patterns = replay::replay_patterns(bus, &letter.consumer)
                    .await
                    .map_err(|e| {
                        Error::with_source(
                            e.kind(),
                            format!(
                                "cannot replay dead letter {id} to consumer {}; give a subject instead (e.g. {} for every consumer)",
                                letter.consumer,
                                bus.subjects().events(&event_type)
                            ),
                            e,
                        )
                    })?;
                cache.insert(letter.consumer.clone(), patterns);
            }
            let patterns = &cache[&letter.consumer];
            if !patterns.iter().any(|p| p.matches(&event_type)) {
                return Err(cannot(&format!(
                    "consumer {} no longer receives {event_type}; give a subject",
                    letter.consumer
                )));
            }
            bus.subjects().replay(&letter.consumer, &event_type)
        }
    };
    env.metadata.retain(|k, _| !k.starts_with(METADATA_PREFIX));
    Ok((env, to_subject))
}

/// Waits for the JetStream ack of a dead letter's republish, and only then removes the
/// dead letter from `dlq`.
///
/// # Errors
/// [`ErrorKind::Publish`] when the republish is not acked (the dead letter is kept);
/// [`ErrorKind::JetStream`] when it was acked but the dead letter could not be removed.
async fn settle(dlq: &Stream, sent: Republish) -> Result<Replayed> {
    let Republish {
        id,
        event_id,
        to_subject,
        ack,
    } = sent;
    let ack = ack.wait(None).await?;
    dlq.delete_message(id).await.map_err(|e| {
        Error::with_source(
            ErrorKind::JetStream,
            format!(
                "dead letter {id} was replayed to {to_subject} (stream {} seq {}) but could not be removed; remove it before replaying again",
                ack.stream, ack.sequence
            ),
            e,
        )
    })?;
    tracing::info!(id, to = %to_subject, "replayed a dead letter");
    Ok(Replayed {
        id,
        event_id,
        to_subject,
        stream: ack.stream,
        sequence: ack.sequence,
    })
}

/// Replays every dead letter (oldest first), or those whose event type `event_type`
/// matches, as [`replay()`] does, stopping at the first failure.
///
/// The dead letters are read in one pass of the DLQ stream and their republishes are
/// pipelined (up to 64 awaiting their acks); each one is removed only after its own
/// republish was acked. When one fails, no further dead letter is republished, those
/// already republished are still awaited (and removed when acked), and the first
/// failure is returned.
///
/// # Errors
/// As [`replay()`], with how many were replayed in the message.
pub async fn replay_all(
    bus: &Bus,
    event_type: Option<&EventPattern>,
    to: Option<&str>,
) -> Result<Vec<Replayed>> {
    if let Some(to) = to {
        check_subject(to)?;
    }
    let filter = match event_type {
        Some(p) => bus.subjects().dlq_matching(p),
        None => bus.subjects().all_dlq(),
    };
    let name = &bus.names().dlq_stream;
    let mut scan = Scan::open(bus, name, filter, Start::Sequence(1), None).await?;
    let dlq = replay::get_stream(bus, name).await?;
    let mut cache = PatternCache::new();
    let mut in_flight = FuturesOrdered::new();
    let mut done = Vec::new();
    let mut failure = None;
    let mut settled = |result: Result<Replayed>, failure: &mut Option<Error>| match result {
        Ok(r) => done.push(r),
        Err(e) => {
            failure.get_or_insert(e);
        }
    };
    while failure.is_none() {
        if in_flight.len() >= replay::IN_FLIGHT {
            let result = in_flight.next().await.expect("not empty");
            settled(result, &mut failure);
            continue;
        }
        let sent = async {
            let Some(m) = scan.next().await? else {
                return Ok(None);
            };
            let entry = DlqEntry::new(m.sequence, m.subject, rfc3339(m.stored_at), &m.payload);
            let sent = republish(bus, entry, &m.headers, to, &mut cache).await?;
            Ok(Some(settle(&dlq, sent)))
        }
        .await;
        match sent {
            Ok(Some(republished)) => in_flight.push_back(republished),
            Ok(None) => break,
            Err(e) => settled(Err(e), &mut failure),
        }
    }
    while let Some(result) = in_flight.next().await {
        settled(result, &mut failure);
    }
    match failure {
        None => Ok(done),
        Some(e) => Err(Error::with_source(
            e.kind(),
            format!("replayed {} dead letters, then stopped", done.len()),
            e,
        )),
    }
}

/// A subject to publish to: dot-separated tokens, no wildcards.
fn check_subject(subject: &str) -> Result<()> {
    for token in subject.split('.') {
        validate_token("subject token", token).map_err(|e| {
            Error::new(
                ErrorKind::InvalidSubject,
                format!("cannot publish to {subject:?}: {e}"),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_the_envelope() {
        let letter = DeadLetter {
            original_subject: "weft.events.a.b".into(),
            stream: "WEFT_EVENTS".into(),
            stream_sequence: 7,
            consumer: "c".into(),
            attempts: 3,
            reason: Reason::RetriesSpent,
            last_error: "boom".into(),
            first_failed_at: Some("2026-01-01T00:00:00.000Z".into()),
            last_failed_at: "2026-01-01T00:00:03.000Z".into(),
        };
        let mut env = Envelope::event(&"a.b".parse().unwrap(), json!(1));
        letter.to_metadata(&mut env.metadata);
        assert_eq!(env.metadata["weft.dlq.stream_sequence"], 7);
        assert_eq!(env.metadata["weft.dlq.reason"], "retries_spent");
        assert_eq!(DeadLetter::from_envelope(&env), Some(letter));
        env.metadata.remove("weft.dlq.consumer");
        assert_eq!(DeadLetter::from_envelope(&env), None);
    }

    #[test]
    fn replay_targets_must_be_plain_subjects() {
        assert!(check_subject("weft.events.a").is_ok());
        for bad in ["weft.events.>", "a..b", "", "a b"] {
            let e = check_subject(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidSubject, "{bad}");
        }
    }
}
