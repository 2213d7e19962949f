//! Streaming invoke (DESIGN §4), the caller's half: [frames](Frame), the
//! [`FrameStream`] that yields them in `seq` order, its [`StreamOptions`], and the
//! protocol's wire constants. The serving half (the [`StreamWriter`] and the state
//! machine behind it) is [`crate::service::stream`]; [`crate::stream`] has both at one
//! path.
//!
//! # Wire protocol
//!
//! (`docs/protocol.md`, section "Streaming invoke", is the reference; this is the
//! summary.)
//!
//! 1. The caller sends an invoke request (`agent.message.received`, `frame_type:
//!    request`) to `P.invoke.<target>` with a fresh reply inbox and metadata
//!    `weft.stream: true` ([`STREAM_METADATA_KEY`]). Without that key the service
//!    answers with one plain reply (the terminal frame, no `seq`), so
//!    [`Bus::request`](crate::Bus::request) works on streaming endpoints too.
//! 2. The service subscribes to `P.cancel.<request event_id>` ([`crate::subject::Subjects::cancel`])
//!    *before* its handler runs, then publishes the frames to the inbox:
//!    `agent.response.started` → `agent.response.delta`… → `agent.response.final` |
//!    `agent.response.error`, numbered by `seq` from 1, sharing `correlation_id` (the
//!    request's `event_id`). A stream that fails before it starts is a single
//!    `agent.response.error` at seq 1. Exactly one terminal frame ends every stream.
//! 3. The caller reorders by `seq` (bounded buffer, bounded gap), enforces an overall
//!    and an idle timeout, and when it goes away before the terminal frame it sends a
//!    cancel envelope ([`CANCEL_EVENT_TYPE`]) as a NATS request to `P.cancel.<id>`. The
//!    service acknowledges with an `agent.response.final` reply and the handler sees
//!    [`StreamWriter::is_cancelled`]. "No responders" on the cancel means the service
//!    has not subscribed yet (the request is still on its way) or has already finished;
//!    the caller retries every 100 ms until an ack, a terminal frame, or
//!    [`CANCEL_GRACE`].
//!
//! # Examples
//!
//! Calling (serving: see [`crate::service::stream`]):
//! ```no_run
//! use futures::StreamExt;
//! use weft_bus::stream::StreamOptions;
//! # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
//! let target: weft_bus::Target = "poet.recite".parse()?;
//! let request = weft_bus::Envelope::request("poet.recite", serde_json::json!({}));
//! let mut frames = bus.invoke_stream(&target, request, StreamOptions::default()).await?;
//! while let Some(frame) = frames.next().await {
//!     let frame = frame?;
//!     println!("{} #{}: {}", frame.event_type(), frame.seq(), frame.payload());
//! }
//! # Ok(()) }
//! ```
//!
//! [`StreamWriter`]: crate::service::stream::StreamWriter
//! [`StreamWriter::is_cancelled`]: crate::service::stream::StreamWriter::is_cancelled

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{StatusCode, Subscriber};
use futures::{Stream, StreamExt as _};
use prometheus::IntCounterVec;
use serde_json::{Value, json};
use tokio::time::{Instant, Sleep};

use crate::connect::Bus;
use crate::envelope::{Envelope, ErrorCode, ErrorPayload, FrameType, new_event_id, now_rfc3339};
use crate::error::{Error, ErrorKind, Result};
use crate::invoke::reply::{Outcome, Waiting};
use crate::invoke::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};

/// Request metadata key asking for a streamed reply: `"weft.stream": true`. Set by
/// [`Bus::invoke_stream`](crate::Bus::invoke_stream); without it a service answers
/// with one plain reply.
pub const STREAM_METADATA_KEY: &str = "weft.stream";

/// `event_type` of the envelope a caller sends to `P.cancel.<request event_id>` when it
/// abandons a stream. Its `correlation_id` is the request's `event_id`; its payload is
/// `{"reason": "<why>"}`.
pub const CANCEL_EVENT_TYPE: &str = "agent.message.cancelled";

/// Error code of the terminal frame of a stream whose caller cancelled it (also what
/// [`WriteError::Cancelled`](crate::service::stream::WriteError::Cancelled) becomes when a handler returns it with `?`).
pub const CANCELLED_CODE: &str = "CANCELLED";

/// Default overall time budget of a [`FrameStream`]: 5 minutes.
pub const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Default longest wait for the next frame: 30 s (the invoke timeout).
pub const DEFAULT_IDLE_TIMEOUT: Duration = crate::invoke::DEFAULT_INVOKE_TIMEOUT;
/// Default largest number of out-of-order frames held while waiting for a missing one.
pub const DEFAULT_MAX_BUFFERED: usize = 64;
/// Default largest distance between the expected `seq` and an arriving one.
pub const DEFAULT_MAX_GAP: u64 = 64;
/// How long a caller that abandoned a stream keeps trying to deliver its cancellation:
/// 5 s.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// Pause between cancellation attempts that found no listener.
const CANCEL_RETRY: Duration = Duration::from_millis(100);
/// How long one cancellation attempt waits for the service's ack.
const CANCEL_ACK_TIMEOUT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------

/// One frame of a streamed reply: a reply envelope whose `frame_type` is
/// `response.started`, `response.delta`, `response.final` or `response.error`.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    envelope: Envelope,
    frame_type: FrameType,
}

impl Frame {
    /// Wraps a reply envelope.
    ///
    /// # Errors
    /// [`ErrorKind::Stream`] when the envelope has no `frame_type` or is a request.
    pub fn from_envelope(envelope: Envelope) -> Result<Frame> {
        match envelope.frame_type {
            Some(FrameType::Request) => Err(Error::new(
                ErrorKind::Stream,
                format!(
                    "envelope {} is a request, not a reply frame",
                    envelope.event_id
                ),
            )),
            Some(frame_type) => Ok(Frame {
                envelope,
                frame_type,
            }),
            None => Err(Error::new(
                ErrorKind::Stream,
                format!(
                    "envelope {} ({}) has no frame_type, so it is not a reply frame",
                    envelope.event_id, envelope.event_type
                ),
            )),
        }
    }

    /// Started, delta, final or error.
    pub fn frame_type(&self) -> FrameType {
        self.frame_type
    }

    /// The `event_type`, e.g. `agent.response.delta`.
    pub fn event_type(&self) -> &str {
        &self.envelope.event_type
    }

    /// The frame number, from 1; 0 for a plain (unnumbered) reply.
    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }

    /// Whether this frame ends the stream (final or error).
    pub fn is_terminal(&self) -> bool {
        self.frame_type.is_terminal()
    }

    /// The payload (`null` when absent).
    pub fn payload(&self) -> &Value {
        self.envelope.payload_or_null()
    }

    /// For an error frame: its [`ErrorPayload`] (an unreadable payload reads as
    /// `CODEC_FAILURE`). `None` for the other frames.
    pub fn error(&self) -> Option<ErrorPayload> {
        (self.frame_type == FrameType::Error).then(|| error_payload_of(&self.envelope))
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The envelope, owned.
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }
}

/// The [`ErrorPayload`] of an `agent.response.error` envelope; a payload that does not
/// parse becomes `CODEC_FAILURE` saying so.
pub(crate) fn error_payload_of(env: &Envelope) -> ErrorPayload {
    serde_json::from_value(env.payload_or_null().clone()).unwrap_or_else(|e| {
        ErrorPayload::new(
            ErrorCode::CodecFailure,
            format!("error reply with an unreadable payload: {e}"),
        )
    })
}

// ---------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------

fn streams() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        crate::observe::metrics::counter(
            "weft_streams_total",
            "Streaming invokes by callers, by target and outcome (final, error, cancelled, timeout, idle_timeout, protocol, no_responders, disconnected, denied, transport)",
            &["target", "outcome"],
        )
    })
}

pub(crate) fn frame_label(frame: FrameType) -> &'static str {
    match frame {
        FrameType::Request => "request",
        FrameType::Started => "started",
        FrameType::Delta => "delta",
        FrameType::Final => "final",
        FrameType::Error => "error",
    }
}

// ---------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------

/// Settings of a streaming invoke: set the fields
/// (`StreamOptions { idle_timeout, ..Default::default() }`) or chain the setters.
/// Every field states its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Overall budget from the request to the terminal frame. Default
    /// [`DEFAULT_STREAM_TIMEOUT`] (5 min).
    pub timeout: Duration,
    /// Longest wait for the next frame, the first one included. Default
    /// [`DEFAULT_IDLE_TIMEOUT`] (30 s).
    pub idle_timeout: Duration,
    /// Most out-of-order frames held while a missing one is awaited. Default
    /// [`DEFAULT_MAX_BUFFERED`] (64).
    pub max_buffered: usize,
    /// Largest distance between the `seq` awaited next and an arriving frame's `seq`.
    /// Default [`DEFAULT_MAX_GAP`] (64).
    pub max_gap: u64,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            timeout: DEFAULT_STREAM_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_buffered: DEFAULT_MAX_BUFFERED,
            max_gap: DEFAULT_MAX_GAP,
        }
    }
}

impl StreamOptions {
    /// Sets [`StreamOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`StreamOptions::idle_timeout`].
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Sets [`StreamOptions::max_buffered`].
    pub fn max_buffered(mut self, frames: usize) -> Self {
        self.max_buffered = frames;
        self
    }

    /// Sets [`StreamOptions::max_gap`].
    pub fn max_gap(mut self, gap: u64) -> Self {
        self.max_gap = gap;
        self
    }
}

/// The reorder buffer: frames in, frames out in `seq` order.
#[derive(Debug)]
struct Reorder {
    next: u64,
    pending: BTreeMap<u64, Frame>,
    max_buffered: usize,
    max_gap: u64,
}

/// What [`Reorder::push`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Accepted,
    Duplicate,
}

impl Reorder {
    fn new(max_buffered: usize, max_gap: u64) -> Self {
        Reorder {
            next: 1,
            pending: BTreeMap::new(),
            max_buffered,
            max_gap,
        }
    }

    /// Takes a frame in.
    ///
    /// Errors (a message) when the frame has no `seq` mid-stream, is further ahead
    /// than `max_gap`, or would overflow the buffer.
    fn push(&mut self, frame: Frame) -> std::result::Result<Pushed, String> {
        let seq = frame.seq();
        if seq == 0 {
            // A responder that does not stream (a plain Weft endpoint answering a
            // plain request, an ACP peer) sends one unnumbered terminal frame.
            if frame.is_terminal() && self.next == 1 && self.pending.is_empty() {
                self.pending.insert(1, frame);
                return Ok(Pushed::Accepted);
            }
            return Err(format!(
                "a {} frame without seq arrived while waiting for seq {}",
                frame.event_type(),
                self.next
            ));
        }
        if seq < self.next || self.pending.contains_key(&seq) {
            return Ok(Pushed::Duplicate);
        }
        let gap = seq - self.next;
        if gap > self.max_gap {
            return Err(format!(
                "frame seq {seq} arrived while waiting for seq {}: a gap of {gap}, more than the limit of {}",
                self.next, self.max_gap
            ));
        }
        if gap > 0 && self.pending.len() >= self.max_buffered {
            return Err(format!(
                "reorder buffer full: {} frames held while waiting for seq {} (limit {}), and seq {seq} arrived",
                self.pending.len(),
                self.next,
                self.max_buffered
            ));
        }
        self.pending.insert(seq, frame);
        Ok(Pushed::Accepted)
    }

    /// The next frame in order, if it has arrived.
    ///
    /// Errors (a message) when a `started` frame is not the first.
    fn pop(&mut self) -> std::result::Result<Option<Frame>, String> {
        let Some(frame) = self.pending.remove(&self.next) else {
            return Ok(None);
        };
        if frame.frame_type() == FrameType::Started && self.next != 1 {
            return Err(format!(
                "a started frame arrived as seq {}; started must be the first frame",
                self.next
            ));
        }
        self.next += 1;
        if frame.is_terminal() {
            self.pending.clear();
        }
        Ok(Some(frame))
    }

    /// The `seq` awaited next.
    fn awaiting(&self) -> u64 {
        self.next
    }

    fn buffered(&self) -> usize {
        self.pending.len()
    }
}

/// The frames of one streaming invoke, in `seq` order: a [`Stream`] of
/// `Result<Frame>` made by [`Bus::invoke_stream`](crate::Bus::invoke_stream).
///
/// It ends after the terminal frame (final or error: an error frame from the
/// handler is an `Ok` item, see [`Frame::error`]), or after the first `Err` item:
///
/// - [`ErrorKind::NoResponders`]: nothing serves the target (at once);
/// - [`ErrorKind::Timeout`]: the overall timeout passed, or no frame came within the
///   idle timeout (the message says which and what `seq` it waited for);
/// - [`ErrorKind::Stream`]: a frame broke the protocol (a `seq` gap past `max_gap`,
///   a full reorder buffer, a misplaced `started`, a frame that is not a reply);
/// - [`ErrorKind::Envelope`]: a frame is not an envelope;
/// - [`ErrorKind::Remote`]: a plain NATS micro service answered with an error in
///   headers only;
/// - [`ErrorKind::Disconnected`]: the connection to NATS was lost while waiting for
///   frames (the handler may or may not have finished; the service is told to cancel
///   should the connection come back within [`CANCEL_GRACE`]);
/// - [`ErrorKind::Permission`]: the NATS server refused the publish of the request
///   (the user's permissions deny `P.invoke.<target>`);
/// - [`ErrorKind::Publish`]: the reply subscription ended (the connection closed).
///
/// Dropping it before the terminal frame (or any `Err` item) cancels the stream: the
/// service is told on `P.cancel.<request event_id>` and its handler sees
/// [`StreamWriter::is_cancelled`](crate::service::stream::StreamWriter::is_cancelled). [`FrameStream::cancel`] does the same and waits
/// until the service acknowledged.
pub struct FrameStream {
    target: String,
    subject: String,
    client: async_nats::Client,
    subscriber: Option<Subscriber>,
    /// The request filed with the connection's waiters, so a lost connection or a
    /// refused publish ends the stream at once.
    waiting: Option<Waiting>,
    /// The server URL (credentials redacted), for messages.
    server: String,
    reorder: Reorder,
    idle_timeout: Duration,
    timeout: Duration,
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    /// Cancel envelope template and where it goes.
    cancel_subject: String,
    cancel_envelope: Envelope,
    /// The stream yielded its terminal frame or an error.
    done: bool,
    /// The service needs no cancellation (terminal seen, or cancellation sent).
    settled: bool,
    outcome_recorded: bool,
    /// The request's client span (`send P.invoke.<target>`), ended with the outcome.
    span: tracing::Span,
}

impl std::fmt::Debug for FrameStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameStream")
            .field("target", &self.target)
            .field("request_id", &self.request_id())
            .field("awaiting_seq", &self.reorder.awaiting())
            .field("buffered", &self.reorder.buffered())
            .field("done", &self.done)
            .finish()
    }
}

/// A streaming request that went out: its reply inbox, its entry in the
/// connection's waiters, and its client span.
pub(crate) struct Sent {
    pub(crate) subscriber: Subscriber,
    pub(crate) waiting: Waiting,
    pub(crate) span: tracing::Span,
}

impl FrameStream {
    /// A stream reading the reply inbox of `sent`, the request `request` sent to
    /// `subject`.
    pub(crate) fn new(
        bus: &Bus,
        target: String,
        subject: String,
        request: &Envelope,
        sent: Sent,
        options: StreamOptions,
    ) -> FrameStream {
        let Sent {
            subscriber,
            waiting,
            span,
        } = sent;
        let mut cancel = Envelope::new(CANCEL_EVENT_TYPE);
        cancel.correlation_id = Some(request.event_id.clone());
        cancel.from = request.from.clone();
        cancel.to = request.to.clone();
        cancel.session_id = request.session_id.clone();
        cancel.inherit_context(request);
        let now = Instant::now();
        FrameStream {
            target,
            subject,
            client: bus.client().clone(),
            subscriber: Some(subscriber),
            waiting: Some(waiting),
            server: bus.server_url().to_owned(),
            reorder: Reorder::new(options.max_buffered, options.max_gap),
            idle_timeout: options.idle_timeout,
            timeout: options.timeout,
            idle: Box::pin(tokio::time::sleep_until(now + options.idle_timeout)),
            deadline: Box::pin(tokio::time::sleep_until(now + options.timeout)),
            cancel_subject: bus.subjects().cancel(&request.event_id),
            cancel_envelope: cancel,
            done: false,
            settled: false,
            outcome_recorded: false,
            span,
        }
    }

    /// The `event_id` of the request (every frame's `correlation_id`).
    pub fn request_id(&self) -> &str {
        self.cancel_envelope
            .correlation_id
            .as_deref()
            .unwrap_or_default()
    }

    /// The target invoked, e.g. `poet.recite`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Reads frames up to the terminal one and returns the final payload.
    ///
    /// # Errors
    /// [`ErrorKind::Remote`] with the handler's error for an error frame, or the
    /// stream's own errors (see [`FrameStream`]).
    pub async fn collect_final(mut self) -> Result<Value> {
        while let Some(frame) = self.next().await {
            let frame = frame?;
            match frame.frame_type() {
                FrameType::Final => return Ok(frame.payload().clone()),
                FrameType::Error => {
                    return Err(Error::from_remote(
                        &self.target,
                        frame
                            .error()
                            .unwrap_or_else(|| error_payload_of(frame.envelope())),
                    ));
                }
                _ => {}
            }
        }
        Err(Error::new(
            ErrorKind::Stream,
            format!(
                "the stream from {} ended without a terminal frame",
                self.target
            ),
        ))
    }

    /// Cancels the stream and waits (up to [`CANCEL_GRACE`]) until the service
    /// acknowledged. Returns whether it did: `false` when the stream had already
    /// ended, or no instance was handling the request within the grace period.
    pub async fn cancel(mut self) -> bool {
        if self.settled {
            return false;
        }
        self.settled = true;
        self.done = true;
        self.record("cancelled");
        let bytes = self.cancel_bytes("cancelled by the caller");
        deliver_cancel(
            self.client.clone(),
            self.cancel_subject.clone(),
            bytes,
            self.subscriber.take(),
        )
        .await
    }

    fn cancel_bytes(&self, reason: &str) -> Vec<u8> {
        let mut env = self.cancel_envelope.clone();
        env.event_id = new_event_id();
        env.occurred_at = now_rfc3339();
        env.payload = Some(json!({ "reason": reason }));
        env.to_bytes().unwrap_or_default()
    }

    /// Tells the service in the background, if it still needs telling.
    fn cancel_in_background(&mut self, reason: &str) {
        if self.settled {
            return;
        }
        self.settled = true;
        let (client, subject, bytes, sub) = (
            self.client.clone(),
            self.cancel_subject.clone(),
            self.cancel_bytes(reason),
            self.subscriber.take(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    deliver_cancel(client, subject, bytes, sub).await;
                });
            }
            Err(_) => {
                tracing::warn!(%subject, "stream dropped outside a runtime; the service is not told")
            }
        }
    }

    fn record(&mut self, outcome: &str) {
        if !self.outcome_recorded {
            self.outcome_recorded = true;
            streams().with_label_values(&[&self.target, outcome]).inc();
            // A final frame, or a caller that went away, is no failure of the call.
            if !matches!(outcome, "final" | "cancelled") {
                use tracing_opentelemetry::OpenTelemetrySpanExt as _;
                self.span.set_attribute("error.type", outcome.to_owned());
                self.span
                    .set_status(opentelemetry::trace::Status::error(format!(
                        "stream ended: {outcome}"
                    )));
            }
            // The stream's span ends with its outcome.
            self.span = tracing::Span::none();
        }
    }

    /// Ends the stream with `error`: records it and, when a handler may still be
    /// working (timeouts, protocol errors, a lost connection that may come back),
    /// cancels it. After no responders, a refused publish, a closed subscription or
    /// an error reply there is nothing to cancel.
    fn fail(&mut self, outcome: &str, error: Error) -> Poll<Option<Result<Frame>>> {
        self.done = true;
        self.record(outcome);
        if matches!(
            outcome,
            "timeout" | "idle_timeout" | "protocol" | "disconnected"
        ) {
            self.cancel_in_background(&error.to_string());
        }
        self.settled = true;
        self.subscriber = None;
        self.waiting = None;
        Poll::Ready(Some(Err(error)))
    }

    /// Takes one message from the inbox into the reorder buffer.
    fn ingest(
        &mut self,
        msg: async_nats::Message,
    ) -> std::result::Result<Pushed, (&'static str, Error)> {
        match msg.status {
            Some(StatusCode::NO_RESPONDERS) => {
                return Err((
                    "no_responders",
                    Error::new(
                        ErrorKind::NoResponders,
                        format!(
                            "no service is listening on {} (is `{}` running?)",
                            self.subject, self.target
                        ),
                    ),
                ));
            }
            Some(status) if status != StatusCode::OK => {
                return Err((
                    "transport",
                    Error::new(
                        ErrorKind::Publish,
                        format!(
                            "NATS answered status {status} for the stream from {}{}",
                            self.target,
                            msg.description
                                .map(|d| format!(" ({d})"))
                                .unwrap_or_default()
                        ),
                    ),
                ));
            }
            _ => {}
        }
        if msg.payload.is_empty()
            && let Some(h) = &msg.headers
            && let Some(text) = h.get(SERVICE_ERROR_HEADER)
        {
            // A plain NATS micro service error: headers only.
            let code = h
                .get(SERVICE_ERROR_CODE_HEADER)
                .map(|c| c.to_string())
                .unwrap_or_default();
            return Err((
                "error",
                Error::from_remote(
                    &self.target,
                    ErrorPayload::new(
                        ErrorCode::Other(format!("SERVICE_ERROR_{code}")),
                        text.to_string(),
                    ),
                ),
            ));
        }
        let env = Envelope::from_slice(&msg.payload).map_err(|e| {
            (
                "protocol",
                Error::new(
                    ErrorKind::Envelope,
                    format!("{} sent a frame that is not an envelope: {e}", self.target),
                ),
            )
        })?;
        if env.correlation_id.as_deref() != Some(self.request_id()) {
            // Not a reply to this request (the inbox is ours alone, so this is a
            // misbehaving peer): say so and go on.
            tracing::warn!(
                target = %self.target,
                request_id = %self.request_id(),
                correlation_id = env.correlation_id.as_deref().unwrap_or_default(),
                "ignoring a frame for another request on this stream's inbox"
            );
            return Ok(Pushed::Duplicate);
        }
        let frame = Frame::from_envelope(env).map_err(|e| ("protocol", e))?;
        self.reorder.push(frame).map_err(|m| {
            (
                "protocol",
                Error::new(
                    ErrorKind::Stream,
                    format!("stream from {}: {m}", self.target),
                ),
            )
        })
    }
}

impl Stream for FrameStream {
    type Item = Result<Frame>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.reorder.pop() {
                Ok(Some(frame)) => {
                    if frame.is_terminal() {
                        this.done = true;
                        this.settled = true;
                        this.subscriber = None;
                        this.waiting = None;
                        this.record(frame_label(frame.frame_type()));
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) => {}
                Err(m) => {
                    let e = Error::new(
                        ErrorKind::Stream,
                        format!("stream from {}: {m}", this.target),
                    );
                    return this.fail("protocol", e);
                }
            }
            let Some(sub) = this.subscriber.as_mut() else {
                return Poll::Ready(None);
            };
            match sub.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => match this.ingest(msg) {
                    Ok(Pushed::Accepted) => {
                        let at = Instant::now() + this.idle_timeout;
                        this.idle.as_mut().reset(at);
                    }
                    Ok(Pushed::Duplicate) => {}
                    Err((outcome, e)) => return this.fail(outcome, e),
                },
                Poll::Ready(None) => {
                    let e = Error::new(
                        ErrorKind::Publish,
                        format!(
                            "the reply subscription for the stream from {} closed (connection lost?)",
                            this.target
                        ),
                    );
                    return this.fail("transport", e);
                }
                Poll::Pending => break,
            }
        }
        // Frames that arrived are taken first; then the connection's events.
        if let Some(waiting) = this.waiting.as_mut()
            && let Poll::Ready(outcome) = waiting.poll_outcome(cx)
        {
            this.waiting = None;
            match outcome {
                Some(Outcome::Lost) => {
                    let e = crate::invoke::disconnected(&this.server, &this.target);
                    return this.fail("disconnected", e);
                }
                Some(Outcome::Denied) => {
                    let e = crate::invoke::denied(&this.subject);
                    return this.fail("denied", e);
                }
                // Replies come on the stream's own inbox, never through the table.
                Some(Outcome::Reply(_)) | None => {}
            }
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            let e = Error::new(
                ErrorKind::Timeout,
                format!(
                    "the stream from {} did not finish within {} ms (waiting for frame seq {})",
                    this.target,
                    this.timeout.as_millis(),
                    this.reorder.awaiting()
                ),
            );
            return this.fail("timeout", e);
        }
        if this.idle.as_mut().poll(cx).is_ready() {
            let held = this.reorder.buffered();
            let e = Error::new(
                ErrorKind::Timeout,
                format!(
                    "no frame from {} within the idle timeout of {} ms (waiting for frame seq {}{})",
                    this.target,
                    this.idle_timeout.as_millis(),
                    this.reorder.awaiting(),
                    if held > 0 {
                        format!(", {held} later frames held")
                    } else {
                        String::new()
                    }
                ),
            );
            return this.fail("idle_timeout", e);
        }
        Poll::Pending
    }
}

impl Drop for FrameStream {
    fn drop(&mut self) {
        if !self.settled {
            self.record("cancelled");
            self.cancel_in_background("the caller dropped the stream");
        }
    }
}

/// Delivers a cancellation: a NATS request to `subject`, retried every
/// [`CANCEL_RETRY`] while nobody listens, until the service acknowledges, a terminal
/// frame shows up on the inbox (`inbox`, when still held), or [`CANCEL_GRACE`] ends.
/// Returns whether the service acknowledged.
async fn deliver_cancel(
    client: async_nats::Client,
    subject: String,
    bytes: Vec<u8>,
    mut inbox: Option<Subscriber>,
) -> bool {
    let deadline = Instant::now() + CANCEL_GRACE;
    loop {
        let attempt = client
            .send_request(
                subject.clone(),
                async_nats::Request::new()
                    .payload(bytes.clone().into())
                    .timeout(Some(CANCEL_ACK_TIMEOUT)),
            )
            .await;
        match attempt {
            Ok(_) => {
                tracing::debug!(%subject, "cancellation acknowledged");
                return true;
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(e) => {
                tracing::debug!(%subject, error = %e, "cancellation not acknowledged");
                return false;
            }
        }
        if Instant::now() >= deadline {
            tracing::debug!(%subject, "nobody took the cancellation within the grace period");
            return false;
        }
        // Nobody listens yet (the request is on its way) or any more (the stream is
        // over). A frame on the inbox tells which; otherwise try again shortly.
        let pause = tokio::time::sleep(CANCEL_RETRY);
        match inbox.as_mut() {
            Some(sub) => {
                tokio::select! {
                    _ = pause => {}
                    m = sub.next() => match m {
                        None => inbox = None,
                        Some(m) => {
                            let terminal = Envelope::from_slice(&m.payload)
                                .ok()
                                .and_then(|e| e.frame_type)
                                .is_some_and(FrameType::is_terminal);
                            if terminal || m.status.is_some() {
                                return false;
                            }
                        }
                    },
                }
            }
            None => pause.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ft: FrameType, seq: u64) -> Frame {
        let req = Envelope::request("t", Value::Null);
        let mut env = req.reply(ft, json!(seq));
        env.seq = seq;
        Frame::from_envelope(env).unwrap()
    }

    #[test]
    fn reorder_yields_in_seq_order() {
        let mut r = Reorder::new(8, 8);
        for seq in [3, 1, 4, 2] {
            let ft = if seq == 1 {
                FrameType::Started
            } else {
                FrameType::Delta
            };
            assert_eq!(r.push(frame(ft, seq)).unwrap(), Pushed::Accepted);
        }
        let got: Vec<u64> = std::iter::from_fn(|| r.pop().unwrap().map(|f| f.seq())).collect();
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!(
            r.push(frame(FrameType::Delta, 2)).unwrap(),
            Pushed::Duplicate
        );
        assert_eq!(r.awaiting(), 5);
    }

    #[test]
    fn reorder_bounds_gap_and_buffer() {
        let mut r = Reorder::new(2, 4);
        let e = r.push(frame(FrameType::Delta, 6)).unwrap_err();
        assert!(e.contains("gap of 5"), "{e}");
        r.push(frame(FrameType::Delta, 3)).unwrap();
        r.push(frame(FrameType::Delta, 4)).unwrap();
        let e = r.push(frame(FrameType::Delta, 5)).unwrap_err();
        assert!(e.contains("buffer full"), "{e}");
        // The awaited frame is always taken.
        r.push(frame(FrameType::Started, 1)).unwrap();
    }

    #[test]
    fn reorder_takes_one_unnumbered_terminal_and_refuses_late_started() {
        let mut r = Reorder::new(2, 4);
        r.push(frame(FrameType::Final, 0)).unwrap();
        assert_eq!(r.pop().unwrap().unwrap().frame_type(), FrameType::Final);

        let mut r = Reorder::new(2, 4);
        r.push(frame(FrameType::Started, 1)).unwrap();
        assert!(r.push(frame(FrameType::Delta, 0)).is_err());
        r.push(frame(FrameType::Started, 2)).unwrap();
        r.pop().unwrap();
        assert!(r.pop().unwrap_err().contains("first frame"));
    }
}
