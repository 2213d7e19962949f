//! Publishing events: durable by default (waits for the JetStream ack), and an
//! explicitly named fire-and-forget publish for telemetry-like events.
//!
//! Every message carries the NATS headers `Nats-Msg-Id: <event_id>` (JetStream
//! de-duplication) and the W3C trace context ([`crate::observe::trace`]). Each publish runs in
//! a `publish` span.

use std::sync::OnceLock;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{
    GetStreamErrorKind, PublishAckFuture, PublishError, PublishErrorKind, RequestError,
    RequestErrorKind,
};
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use prometheus::IntCounter;
use serde_json::Value;
use tokio::time::Instant;

use crate::connect::Bus;
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::observe::metrics;
use crate::retry::{Backoff, RetryPolicy};
use crate::subject::EventType;
use tracing::Instrument as _;

/// Header carrying the event id, used by JetStream de-duplication (defined with the
/// envelope).
pub use crate::envelope::MSG_ID_HEADER;
/// The NATS headers of an envelope (defined with the trace context, which writes them
/// too).
pub use crate::observe::trace::headers_for;

/// Sends `payload` with `headers` to `subject` through JetStream and returns at once,
/// without waiting for the ack, so a caller may send several before it waits
/// ([`PendingAck::wait`]). Every JetStream publish of the crate is sent by
/// [`PendingAck::send`]: through here, or through [`send_and_wait`] for a durable
/// publish that tries again after transient failures.
///
/// # Errors
/// [`ErrorKind::Publish`] "cannot publish to {subject}" when the client cannot send it
/// (e.g. the connection is closed, or the message is larger than the server takes).
pub(crate) async fn send_to_stream(
    bus: &Bus,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<PendingAck> {
    PendingAck::send(bus, &subject, headers, payload)
        .await
        .map_err(|e| cannot_publish(&subject, e))
}

/// The error of a publish the client did not take.
fn cannot_publish(subject: &str, e: PublishError) -> Error {
    Error::with_source(
        ErrorKind::Publish,
        format!("cannot publish to {subject}"),
        e,
    )
}

/// A JetStream publish sent by [`send_to_stream`] whose ack has not been awaited yet.
#[must_use = "a publish is stored only when its ack says so; call `wait`"]
pub(crate) struct PendingAck {
    bus: Bus,
    subject: String,
    ack: PublishAckFuture,
}

impl PendingAck {
    /// Sends the message; the error keeps the client's [`PublishErrorKind`].
    async fn send(
        bus: &Bus,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PendingAck, PublishError> {
        let subject = subject.to_owned();
        let ack = bus
            .jetstream()
            .publish_with_headers(subject.clone(), headers, payload)
            .await?;
        Ok(PendingAck {
            bus: bus.clone(),
            subject,
            ack,
        })
    }

    /// Waits for the JetStream ack (the context's ack timeout bounds the wait).
    ///
    /// `stream` is the stream expected to take the subject, named in the error; `None`
    /// when the subject is the caller's choice and any stream may take it.
    ///
    /// # Errors
    /// [`ErrorKind::Publish`] "no JetStream ack for {subject}", with a hint found by
    /// asking JetStream about the stream after the failure ([`diagnose`]): the stream
    /// does not exist (`weft up` creates it), no stream takes the subject, the stream
    /// has no leader right now (a node is down or an election is running), or the ack
    /// did not come in time.
    pub(crate) async fn wait(self, stream: Option<&str>) -> Result<PublishAck> {
        let PendingAck { bus, subject, ack } = self;
        match ack.await {
            Ok(ack) => Ok(ack),
            Err(e) => Err(no_ack(&bus, &subject, stream, e, None, PROBE_TIMEOUT).await),
        }
    }

    /// Waits for the ack until `deadline` at most; a wait cut short is reported as
    /// [`PublishErrorKind::TimedOut`], like the context's own ack timeout.
    async fn wait_until(self, deadline: Instant) -> Result<PublishAck, PublishError> {
        match tokio::time::timeout_at(deadline, self.ack).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(PublishErrorKind::TimedOut)),
        }
    }
}

/// The longest one attempt of a durable publish waits for its ack (a quarter of the
/// budget when that is shorter): an ack lost with a dead node, or with a leader that
/// stepped down, is sent again after this long.
const MAX_ATTEMPT_WAIT: Duration = Duration::from_millis(2500);

/// The first retry of a durable publish waits about this long (bounded jitter: between
/// half of it and all of it).
const RETRY_INITIAL: Duration = Duration::from_millis(25);

/// Retries of a durable publish wait at most this long between attempts, so a publish
/// goes through at most this long after a new leader was elected.
const RETRY_MAX: Duration = Duration::from_millis(250);

/// The longest a diagnosis ([`diagnose`]) waits for one JetStream API answer: a stream
/// without a leader may not answer at all. A durable publish waits at most a quarter of
/// its budget.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes to `subject` and waits for the ack, trying again after transient failures
/// until `budget` (from the call) is spent: the same bytes and headers, so the same
/// `Nats-Msg-Id`, and JetStream's de-duplication stores a message that two attempts
/// delivered once. Each attempt waits for its ack at most a quarter of the budget
/// (never past its end), so an ack lost with a dead node leaves time to try again.
/// Between attempts it waits 25 ms doubling up to 250 ms, with bounded jitter (each
/// wait between 12.5 ms and that).
///
/// Transient: no responders on the subject while `stream` exists (it has no leader:
/// a node is down or an election is running), an ack that does not come in time or
/// is lost with the connection, JetStream answering "temporarily unavailable" or "not
/// leader", and a client too busy to take the message in time. Everything else fails
/// at once: no stream takes the subject (`stream` does not exist), a message larger
/// than the server takes, a closed client, any other JetStream error.
///
/// # Errors
/// [`ErrorKind::Publish`]: "cannot publish to {subject}" when the client refused the
/// message, otherwise "no JetStream ack for {subject}" with the number of attempts,
/// the time spent and a hint ([`diagnose`]).
pub(crate) async fn send_and_wait(
    bus: &Bus,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    stream: &str,
    budget: Duration,
) -> Result<PublishAck> {
    let started = Instant::now();
    let deadline = started + budget;
    let attempt_wait = (budget / 4).min(MAX_ATTEMPT_WAIT);
    let mut stream_exists = false;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let sent = PendingAck::send(bus, &subject, headers.clone(), payload.clone()).await;
        let failure = match sent {
            Ok(pending) => {
                let until = deadline.min(Instant::now() + attempt_wait);
                match pending.wait_until(until).await {
                    Ok(ack) => {
                        if attempt > 1 {
                            tracing::debug!(%subject, attempt, "durable publish stored after retries");
                        }
                        return Ok(ack);
                    }
                    Err(e) => Failure::Ack(e),
                }
            }
            Err(e) => Failure::Send(e),
        };
        let retry = match &failure {
            Failure::Send(e) => matches!(
                e.kind(),
                PublishErrorKind::TimedOut | PublishErrorKind::MaxAckPending
            ),
            Failure::Ack(e) => match e.kind() {
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => true,
                PublishErrorKind::StreamNotFound => {
                    // Also what a stream without a leader looks like: ask once.
                    stream_exists = stream_exists
                        || !matches!(
                            stream_state(bus, stream, attempt_wait.min(left(deadline))).await,
                            StreamState::Missing
                        );
                    stream_exists
                }
                PublishErrorKind::Other => jetstream_code(e).is_some_and(|code| {
                    code == ErrorCode::CLUSTER_NOT_AVAILABLE
                        || code == ErrorCode::CLUSTER_NOT_LEADER
                }),
                _ => false,
            },
        };
        let delay = RetryPolicy::Exponential(retry_backoff())
            .delay(i64::from(attempt))
            .unwrap_or(RETRY_MAX);
        if !retry || Instant::now() + delay >= deadline {
            return Err(match failure {
                Failure::Send(e) => cannot_publish(&subject, e),
                Failure::Ack(e) => {
                    let tried = (attempt, started.elapsed());
                    let probe = attempt_wait.min(PROBE_TIMEOUT);
                    no_ack(bus, &subject, Some(stream), e, Some(tried), probe).await
                }
            });
        }
        tracing::debug!(%subject, attempt, ?delay, error = %failure, "durable publish failed; trying again");
        tokio::time::sleep(delay).await;
    }
}

/// The time left until `deadline` (zero once it passed).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The back-off between attempts of a durable publish.
fn retry_backoff() -> Backoff {
    Backoff::new(RETRY_INITIAL, RETRY_MAX).expect("initial delay above 0 and below the maximum")
}

/// How one attempt of [`send_and_wait`] failed.
enum Failure {
    /// The client did not take the message.
    Send(PublishError),
    /// It was sent, but no ack came.
    Ack(PublishError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Send(e) | Failure::Ack(e) => write!(f, "{e}"),
        }
    }
}

/// The JetStream API error code a publish failed with, if the server answered with one.
fn jetstream_code(e: &PublishError) -> Option<ErrorCode> {
    std::error::Error::source(e)?
        .downcast_ref::<async_nats::jetstream::Error>()
        .map(async_nats::jetstream::Error::error_code)
}

/// The [`ErrorKind::Publish`] error of a publish whose ack did not come, with a hint
/// from [`diagnose`] (each of its requests waiting `probe` at most); `tried` is the
/// number of attempts and the time they took.
async fn no_ack(
    bus: &Bus,
    subject: &str,
    stream: Option<&str>,
    e: PublishError,
    tried: Option<(u32, Duration)>,
    probe: Duration,
) -> Error {
    let hint = diagnose(bus, subject, stream, &e, probe).await;
    let tried = match tried {
        Some((1, _)) | None => String::new(),
        Some((n, spent)) => format!(" after {n} attempts in {} ms", spent.as_millis()),
    };
    Error::with_source(
        ErrorKind::Publish,
        format!("no JetStream ack for {subject}{tried} ({hint})"),
        e,
    )
}

/// What JetStream says about a stream, asked after a publish failed.
enum StreamState {
    /// It does not exist.
    Missing,
    /// It exists without a leader ("temporarily unavailable" counts as that).
    Leaderless,
    /// Its leader is the named server.
    Led(String),
    /// JetStream did not tell (no answer in time, another error); the reason.
    Unknown(String),
}

/// Asks for `stream`'s info, waiting `wait` at most.
async fn stream_state(bus: &Bus, stream: &str, wait: Duration) -> StreamState {
    match tokio::time::timeout(wait, bus.jetstream().get_stream(stream)).await {
        Ok(Ok(s)) => match s.cached_info().cluster.as_ref().map(|c| c.leader.clone()) {
            Some(None) => StreamState::Leaderless,
            Some(Some(leader)) => StreamState::Led(leader),
            None => StreamState::Led("its server".into()),
        },
        Ok(Err(e)) => match e.kind() {
            GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                StreamState::Missing
            }
            GetStreamErrorKind::JetStream(js)
                if js.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE =>
            {
                StreamState::Leaderless
            }
            GetStreamErrorKind::Request if timed_out(&e) => silent(wait),
            _ => StreamState::Unknown(e.to_string()),
        },
        Err(_) => silent(wait),
    }
}

/// The stream info request got no answer within `wait`.
fn silent(wait: Duration) -> StreamState {
    StreamState::Unknown(format!(
        "no answer to stream info within {} ms",
        wait.as_millis()
    ))
}

/// Whether a JetStream API request failed because it timed out.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<RequestError>())
        .is_some_and(|r| r.kind() == RequestErrorKind::TimedOut)
}

/// Why a publish to `subject` got no ack, found by asking JetStream after the failure
/// `e` (each request waiting `probe` at most): when `stream` is `None`, first which
/// stream takes the subject, then that stream's info. The hint says the stream does
/// not exist (`weft up` creates it) or no stream takes the subject; that the stream has
/// no leader right now (a node is down or an election is running), also as the likely
/// cause when its info does not answer (a stream without a leader may stay silent);
/// or, when it has a leader by now, that the ack did not come in time, that it had
/// none when the publish was tried, or that JetStream refused the message.
async fn diagnose(
    bus: &Bus,
    subject: &str,
    stream: Option<&str>,
    e: &PublishError,
    probe: Duration,
) -> String {
    let stream = match stream {
        Some(s) => s.to_owned(),
        None => {
            let names = bus.jetstream().stream_by_subject(subject);
            match tokio::time::timeout(probe, names).await {
                Ok(Ok(name)) => name,
                Ok(Err(_)) if e.kind() == PublishErrorKind::StreamNotFound => {
                    return "no stream takes the subject".into();
                }
                _ => return "is the subject in a stream?".into(),
            }
        }
    };
    match stream_state(bus, &stream, probe).await {
        StreamState::Missing => format!("stream {stream} does not exist; `weft up` creates it"),
        StreamState::Leaderless => format!(
            "stream {stream} has no leader right now (a node is down or an election is running)"
        ),
        StreamState::Unknown(why) => format!(
            "stream {stream} has no leader right now (a node is down or an election is running), or JetStream cannot be reached: {why}"
        ),
        StreamState::Led(leader) => match e.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                format!("stream {stream} (leader {leader}) did not ack in time")
            }
            PublishErrorKind::StreamNotFound => {
                format!("stream {stream} had no leader; it has one now ({leader}), try again")
            }
            _ => format!("stream {stream} (leader {leader}) refused it"),
        },
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

/// A subject as a span names it: an events subject by its template (event types are
/// many), any other as it is. Formatted only when the span is recorded.
struct Destination<'a> {
    prefix: &'a str,
    subject: &'a str,
}

impl std::fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let events = self
            .subject
            .strip_prefix(self.prefix)
            .is_some_and(|rest| rest.starts_with(".events."));
        if events {
            write!(f, "{}.events.{{event_type}}", self.prefix)
        } else {
            f.write_str(self.subject)
        }
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
    /// Transient failures are retried within a budget
    /// ([`ConnectOptions::publish_timeout`](crate::ConnectOptions::publish_timeout),
    /// default 20 s), counted from the call. Transient are: the events stream has no
    /// leader (a node is down or an election is running; NATS reports it as no
    /// responders), an ack that does not come in time (each attempt waits at most a
    /// quarter of the budget and at most 2.5 s) or is lost with the connection, and JetStream saying it is
    /// temporarily unavailable. Each retry sends the same bytes with the same
    /// `Nats-Msg-Id` after a back-off of 25 ms doubling up to 250 ms (with jitter), so
    /// an event that two attempts delivered is stored once; that retry's answer then
    /// has `duplicate: true`. The outcome is counted once in
    /// `weft_events_published_total`. A SIGKILLed stream leader is replaced after
    /// nats-server's election timeout (4–9 s), which the default budget covers twice;
    /// raise the publish timeout where publishes must outlast longer outages.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidSubject`] for a bad event type, [`ErrorKind::Envelope`] for
    /// an invalid or oversized envelope, [`ErrorKind::Publish`] at once when the events
    /// stream does not exist ("stream P_EVENTS does not exist; `weft up` creates it") or
    /// the message is too large for the server, and when the budget is spent ("no
    /// JetStream ack for … after N attempts in T ms", saying whether the stream has no
    /// leader right now or its leader did not ack in time).
    pub async fn publish_envelope(&self, env: &Envelope) -> Result<Published> {
        let span = {
            // (Not held across an await: `Arguments` is not `Send`.)
            let template = format_args!("{}.events.{{event_type}}", self.prefix());
            crate::observe::trace::messaging_span!(
                "publish", "producer", "send",
                name = template,
                destination = format_args!("{}.events.{}", self.prefix(), env.event_type),
                message_id = env.event_id,
                messaging.destination.template = %template,
                messaging.message.body.size = tracing::field::Empty,
                weft.stream.sequence = tracing::field::Empty,
                weft.duplicate = tracing::field::Empty,
            )
        };
        let result = self
            .publish_envelope_inner(env)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(p) => {
                span.record("weft.stream.sequence", p.sequence as i64);
                span.record("weft.duplicate", p.duplicate);
            }
            Err(e) => crate::observe::trace::record_error(&span, e),
        }
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
        let (env, headers) = crate::observe::trace::outgoing(env);
        let bytes = env.to_bytes()?;
        tracing::Span::current().record("messaging.message.body.size", bytes.len() as i64);
        let stream = &self.names().events_stream;
        let budget = self.publish_timeout();
        let ack = send_and_wait(self, subject, headers, bytes.into(), stream, budget).await?;
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
        let span = crate::observe::trace::messaging_span!(
            "publish",
            "producer",
            "send",
            name = Destination {
                prefix: self.prefix().as_str(),
                subject
            },
            destination = subject,
            message_id = env.event_id,
            messaging.message.body.size = tracing::field::Empty,
        );
        let (env, headers) = span.in_scope(|| crate::observe::trace::outgoing(env));
        let bytes = env.to_bytes()?;
        span.record("messaging.message.body.size", bytes.len() as i64);
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
        if let Err(e) = &r {
            crate::observe::trace::record_error(&span, e);
        }
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
