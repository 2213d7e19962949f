//! Streaming invoke (DESIGN §4): [frames](Frame), the server-side [`StreamWriter`] and
//! the state machine behind it, and the client's [`FrameStream`].
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
//! Serving:
//! ```no_run
//! use serde_json::json;
//! use weft_bus::service::{Endpoint, Request, Service};
//! use weft_bus::stream::StreamWriter;
//! # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
//! let handle = Service::new("poet", "1.0.0")
//!     .endpoint(Endpoint::streaming("recite", |_req: Request, out: StreamWriter| async move {
//!         let mut text = String::new();
//!         for word in ["so", "much", "depends"] {
//!             out.delta(json!(word)).await?; // `?`: a cancelled caller ends the handler
//!             text = format!("{text} {word}");
//!         }
//!         Ok(json!({ "text": text.trim() })) // the final frame
//!     }))
//!     .serve(&bus)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Calling:
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

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{HeaderMap, StatusCode, Subscriber};
use futures::{FutureExt as _, Stream, StreamExt as _};
use prometheus::IntCounterVec;
use serde_json::{Value, json};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::connect::Bus;
use crate::envelope::{
    Envelope, EnvelopeError, ErrorCode, ErrorPayload, FrameType, new_event_id, now_rfc3339,
};
use crate::error::{Error, ErrorKind, Result};
use crate::invoke::reply::{Outcome, Waiting};
use crate::invoke::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use crate::messaging::publish::headers_for;
use crate::service::HandlerResult;

/// Request metadata key asking for a streamed reply: `"weft.stream": true`. Set by
/// [`Bus::invoke_stream`](crate::Bus::invoke_stream); without it a service answers
/// with one plain reply.
pub const STREAM_METADATA_KEY: &str = "weft.stream";

/// `event_type` of the envelope a caller sends to `P.cancel.<request event_id>` when it
/// abandons a stream. Its `correlation_id` is the request's `event_id`; its payload is
/// `{"reason": "<why>"}`.
pub const CANCEL_EVENT_TYPE: &str = "agent.message.cancelled";

/// Error code of the terminal frame of a stream whose caller cancelled it (also what
/// [`WriteError::Cancelled`] becomes when a handler returns it with `?`).
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

/// Turns a reply shell into an `agent.response.error` carrying `err`.
pub(crate) fn as_error(reply: &mut Envelope, err: &ErrorPayload) {
    reply.event_type = FrameType::Error.event_type().to_owned();
    reply.frame_type = Some(FrameType::Error);
    reply.payload = Some(err.to_value());
}

/// Encodes the terminal reply of `service.endpoint`. A terminal reply must go out: one
/// that cannot be encoded (e.g. larger than [`MAX_ENVELOPE_BYTES`](crate::envelope::MAX_ENVELOPE_BYTES))
/// becomes an `agent.response.error` with `CODEC_FAILURE` saying why, and `error` is
/// set to that error (it goes into the NATS micro error headers).
///
/// # Errors
/// [`EnvelopeError`] only when even that error reply cannot be encoded.
pub(crate) fn encode_terminal(
    reply: &mut Envelope,
    error: &mut Option<ErrorPayload>,
    service: &str,
    endpoint: &str,
) -> std::result::Result<Vec<u8>, EnvelopeError> {
    reply.to_bytes().or_else(|e| {
        let err = ErrorPayload::new(
            ErrorCode::CodecFailure,
            format!("the reply of {service}.{endpoint} cannot be encoded: {e}"),
        );
        as_error(reply, &err);
        *error = Some(err);
        reply.to_bytes()
    })
}

/// Whether `request` asks for a streamed reply (metadata `weft.stream: true`).
pub fn wants_stream(request: &Envelope) -> bool {
    request.metadata.get(STREAM_METADATA_KEY) == Some(&Value::Bool(true))
}

// ---------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------

fn frames_sent() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        crate::observe::metrics::counter(
            "weft_stream_frames_total",
            "Frames of streamed replies sent by services, by service, endpoint and frame (started, delta, final, error)",
            &["service", "endpoint", "frame"],
        )
    })
}

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

fn frame_label(frame: FrameType) -> &'static str {
    match frame {
        FrameType::Request => "request",
        FrameType::Started => "started",
        FrameType::Delta => "delta",
        FrameType::Final => "final",
        FrameType::Error => "error",
    }
}

// ---------------------------------------------------------------------------------
// Server side: the writer's state machine
// ---------------------------------------------------------------------------------

/// The state of a reply stream on the serving side. Transitions, one frame at a time:
///
/// ```text
///             started                 delta
///  Pending ───────────▶ Open ◀──────────────┐
///     │  ╲                │ ╲───────────────┘
///     │   ╲ delta/final:  │ final | error
///     │    ╲ started first│
///     │ error             ▼
///     └─────────────────▶ Closed   (any frame now: WriteError::Closed)
/// ```
///
/// A successful stream therefore always begins with `started`; a stream that fails
/// before it starts is one `error` frame. `Closed` is reached exactly once, by exactly
/// one terminal frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Nothing sent yet.
    Pending,
    /// `started` sent; deltas may follow.
    Open,
    /// The terminal frame was sent.
    Closed,
}

/// What the state machine says about sending one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Send it; the stream is then in this state.
    To(StreamState),
    /// Send an implicit `started` (payload `null`) first.
    StartFirst,
}

impl StreamState {
    fn step(self, frame: FrameType) -> std::result::Result<Step, WriteError> {
        use FrameType as F;
        use StreamState as S;
        match (self, frame) {
            (_, F::Request) => Err(WriteError::NotAReplyFrame),
            (S::Closed, _) => Err(WriteError::Closed),
            (S::Pending, F::Started) => Ok(Step::To(S::Open)),
            (S::Pending, F::Delta | F::Final) => Ok(Step::StartFirst),
            (S::Pending | S::Open, F::Error) | (S::Open, F::Final) => Ok(Step::To(S::Closed)),
            (S::Open, F::Started) => Err(WriteError::AlreadyStarted),
            (S::Open, F::Delta) => Ok(Step::To(S::Open)),
        }
    }
}

/// Why a [`StreamWriter`] could not send a frame. Converts into an [`ErrorPayload`], so
/// handlers use `?` on writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The caller cancelled the stream (it dropped its [`FrameStream`], timed out or
    /// disconnected). Becomes code `CANCELLED`.
    #[error("the caller cancelled the stream")]
    Cancelled,
    /// The terminal frame was already sent (e.g. a task kept a writer after its
    /// handler returned). Becomes `AGENT_UNAVAILABLE`.
    #[error("the stream is closed: its terminal frame was already sent")]
    Closed,
    /// `started` was called after the stream had started. Becomes `AGENT_UNAVAILABLE`.
    #[error("started must be the first frame, and the stream has already started")]
    AlreadyStarted,
    /// A `request` frame type was asked for (internal misuse).
    #[error("a reply stream carries started, delta, final and error frames only")]
    NotAReplyFrame,
    /// The frame is too large or not encodable. Becomes `CODEC_FAILURE`; nothing was
    /// sent, and the stream stays open.
    #[error("the frame cannot be encoded: {0}")]
    Codec(EnvelopeError),
    /// NATS refused the publish. Becomes `TRANSPORT_FAILURE`, retryable.
    #[error("cannot send the frame to {subject}: {message}")]
    Transport {
        /// The reply subject.
        subject: String,
        /// What NATS said.
        message: String,
    },
}

impl From<WriteError> for ErrorPayload {
    fn from(e: WriteError) -> Self {
        let message = e.to_string();
        match e {
            WriteError::Cancelled => {
                ErrorPayload::new(ErrorCode::Other(CANCELLED_CODE.into()), message)
            }
            WriteError::Codec(_) => ErrorPayload::new(ErrorCode::CodecFailure, message),
            WriteError::Transport { .. } => {
                ErrorPayload::new(ErrorCode::TransportFailure, message).retryable()
            }
            WriteError::Closed | WriteError::AlreadyStarted | WriteError::NotAReplyFrame => {
                ErrorPayload::new(ErrorCode::AgentUnavailable, message)
            }
        }
    }
}

/// Whether the caller wants frames or one plain reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Numbered frames to the reply subject.
    Stream,
    /// Only the terminal frame, unnumbered, as a plain invoke reply.
    Plain,
}

/// Where the frames go and what is left to send: the state machine's data, behind one
/// lock so that `seq` order is publish order.
struct Outbox {
    state: StreamState,
    next_seq: u64,
    mode: Mode,
    /// The reply shell every frame is cut from (DESIGN §4).
    shell: Envelope,
    /// The reply subject; `None` when the request had neither a NATS reply subject
    /// nor `reply_to` (frames are then dropped with a warning).
    subject: Option<String>,
    client: Option<async_nats::Client>,
    /// The micro request: the terminal frame is its response (keeps `$SRV.STATS`).
    micro: Option<async_nats::service::Request>,
}

impl Outbox {
    fn frame(&self, frame_type: FrameType, payload: Value, seq: u64) -> Envelope {
        let mut f = self.shell.clone();
        f.event_id = new_event_id();
        f.occurred_at = now_rfc3339();
        f.event_type = frame_type.event_type().to_owned();
        f.frame_type = Some(frame_type);
        f.is_final = frame_type.is_terminal();
        f.payload = Some(payload);
        f.seq = seq;
        f
    }

    /// Runs one frame through the state machine (sending the implicit `started`
    /// first when it says so) and sends what the caller is to see.
    async fn send(
        &mut self,
        frame_type: FrameType,
        payload: Value,
        labels: &Labels,
    ) -> std::result::Result<(), WriteError> {
        if self.state.step(frame_type)? == Step::StartFirst {
            self.emit(FrameType::Started, Value::Null, StreamState::Open, labels)
                .await?;
        }
        match self.state.step(frame_type)? {
            Step::To(next) => self.emit(frame_type, payload, next, labels).await,
            Step::StartFirst => Err(WriteError::NotAReplyFrame),
        }
    }

    /// Sends one frame the state machine allowed, moving to `next`.
    async fn emit(
        &mut self,
        frame_type: FrameType,
        payload: Value,
        next: StreamState,
        labels: &Labels,
    ) -> std::result::Result<(), WriteError> {
        let terminal = frame_type.is_terminal();
        if self.mode == Mode::Plain && !terminal {
            // A plain caller sees only the terminal frame.
            self.state = next;
            return Ok(());
        }
        let seq = match self.mode {
            Mode::Stream => self.next_seq,
            Mode::Plain => 0,
        };
        let mut env = self.frame(frame_type, payload, seq);
        let mut error = (frame_type == FrameType::Error).then(|| error_payload_of(&env));
        let bytes = if terminal {
            encode_terminal(&mut env, &mut error, &labels.service, &labels.endpoint)
        } else {
            env.to_bytes()
        }
        .map_err(WriteError::Codec)?;
        self.next_seq += 1;
        self.state = next;
        let Some(subject) = self.subject.clone() else {
            if terminal {
                tracing::warn!(service = %labels.service, endpoint = %labels.endpoint, "request has no reply subject and no reply_to; answer dropped");
            }
            return Ok(());
        };
        let Some(client) = &self.client else {
            return Ok(());
        };
        let micro = if terminal { self.micro.take() } else { None };
        deliver(
            client,
            micro.as_ref(),
            &subject,
            &env,
            bytes,
            error.as_ref(),
        )
        .await
        .map_err(|message| WriteError::Transport {
            subject: subject.clone(),
            message,
        })?;
        if self.mode == Mode::Stream {
            frames_sent()
                .with_label_values(&[
                    &labels.service,
                    &labels.endpoint,
                    frame_label(env.frame_type.unwrap_or(frame_type)),
                ])
                .inc();
        }
        Ok(())
    }
}

/// Sends one reply envelope: as the micro request's response when there is one with a
/// reply subject (so `$SRV.STATS` counts it), otherwise published to `subject`. Error
/// replies carry the NATS micro headers `Nats-Service-Error` and
/// `Nats-Service-Error-Code` (ADR-32).
pub(crate) async fn deliver(
    client: &async_nats::Client,
    micro: Option<&async_nats::service::Request>,
    subject: &str,
    reply: &Envelope,
    bytes: Vec<u8>,
    error: Option<&ErrorPayload>,
) -> std::result::Result<(), String> {
    let mut headers: HeaderMap = headers_for(reply);
    if let Some(err) = error {
        headers.insert(SERVICE_ERROR_HEADER, err.message.as_str());
        headers.insert(
            SERVICE_ERROR_CODE_HEADER,
            err.code.status().to_string().as_str(),
        );
    }
    match micro {
        Some(m) if m.message.reply.is_some() => m
            .respond_with_headers(Ok(bytes.into()), headers)
            .await
            .map_err(|e| e.to_string()),
        _ => client
            .publish_with_headers(subject.to_owned(), headers, bytes.into())
            .await
            .map_err(|e| e.to_string()),
    }
}

#[derive(Debug, Clone)]
struct Labels {
    service: String,
    endpoint: String,
}

struct Shared {
    outbox: tokio::sync::Mutex<Outbox>,
    cancel: CancellationToken,
    labels: Labels,
    mode: Mode,
}

/// What a streaming handler writes its frames with (see [`Endpoint::streaming`]).
/// Cheap to clone; clones write to the same stream, in `seq` order.
///
/// The handler's return value is the terminal frame: `Ok(value)` becomes
/// `agent.response.final` with `value` as payload, `Err(error)` becomes
/// `agent.response.error`; a panic or a timeout becomes an error frame too. So every
/// stream ends with exactly one terminal frame, whatever the handler does; writes after
/// it fail with [`WriteError::Closed`].
///
/// When the caller asked for a plain reply (e.g. [`Bus::request`](crate::Bus::request)
/// on a streaming endpoint), `started` and `delta` succeed without sending anything
/// and the caller gets only the final frame: make its payload the whole result.
///
/// [`Endpoint::streaming`]: crate::service::Endpoint::streaming
#[derive(Clone)]
pub struct StreamWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("service", &self.shared.labels.service)
            .field("endpoint", &self.shared.labels.endpoint)
            .field("cancelled", &self.shared.cancel.is_cancelled())
            .finish()
    }
}

impl StreamWriter {
    /// A writer attached to nothing: every write succeeds and goes nowhere. For
    /// calling a streaming handler directly, e.g. in unit tests.
    pub fn detached() -> StreamWriter {
        StreamWriter {
            shared: Arc::new(Shared {
                outbox: tokio::sync::Mutex::new(Outbox {
                    state: StreamState::Pending,
                    next_seq: 1,
                    mode: Mode::Plain,
                    shell: Envelope::new(FrameType::Final.event_type()),
                    subject: None,
                    client: None,
                    micro: None,
                }),
                cancel: CancellationToken::new(),
                labels: Labels {
                    service: String::new(),
                    endpoint: String::new(),
                },
                mode: Mode::Plain,
            }),
        }
    }

    /// Sends `agent.response.started` with `payload` (e.g. the model name). Optional:
    /// the first delta sends a `started` with a `null` payload when none was sent.
    ///
    /// # Errors
    /// [`WriteError::Cancelled`], [`WriteError::AlreadyStarted`],
    /// [`WriteError::Closed`], [`WriteError::Codec`] or [`WriteError::Transport`].
    pub async fn started(&self, payload: Value) -> std::result::Result<(), WriteError> {
        self.write(FrameType::Started, payload).await
    }

    /// Sends an `agent.response.delta` with `payload` (e.g. a chunk of text).
    ///
    /// # Errors
    /// [`WriteError::Cancelled`] once the caller has cancelled, [`WriteError::Closed`]
    /// after the terminal frame, [`WriteError::Codec`] for a frame over 1 MiB (nothing
    /// is sent; the stream stays open), [`WriteError::Transport`] when NATS refuses.
    pub async fn delta(&self, payload: Value) -> std::result::Result<(), WriteError> {
        self.write(FrameType::Delta, payload).await
    }

    async fn write(&self, frame: FrameType, payload: Value) -> std::result::Result<(), WriteError> {
        if self.shared.cancel.is_cancelled() {
            return Err(WriteError::Cancelled);
        }
        let mut outbox = self.shared.outbox.lock().await;
        outbox.send(frame, payload, &self.shared.labels).await
    }

    /// Whether the caller has cancelled the stream.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Completes when the caller cancels the stream (never, for a plain caller), e.g.
    /// to `tokio::select!` against long work.
    pub async fn cancelled(&self) {
        self.shared.cancel.cancelled().await
    }

    /// A token cancelled when the caller cancels the stream, for work handed to other
    /// tasks. Cancelling this token yourself does not cancel the stream.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.shared.cancel.child_token()
    }

    /// Whether the caller asked for frames (`false`: it wants one plain reply, and
    /// `started`/`delta` send nothing).
    pub fn is_streaming(&self) -> bool {
        self.shared.mode == Mode::Stream
    }

    /// Where the stream is in its state machine (waits for a write in progress).
    pub async fn state(&self) -> StreamState {
        self.shared.outbox.lock().await.state
    }
}

/// The serving side of one request: owns the reply, listens for cancellation, and
/// guarantees the terminal frame (also when dropped before [`ReplySink::finish`]).
pub(crate) struct ReplySink {
    shared: Arc<Shared>,
    finished: bool,
    stop_listening: CancellationToken,
}

impl ReplySink {
    /// Opens the reply to `request`. In stream mode (the request has
    /// [`STREAM_METADATA_KEY`]) it subscribes to the cancel subject first, so the
    /// subscription exists before any frame reaches the caller.
    pub(crate) async fn open(
        bus: &Bus,
        request: &Envelope,
        subject: Option<String>,
        micro: async_nats::service::Request,
        service: &str,
        endpoint: &str,
    ) -> ReplySink {
        let mode = if wants_stream(request) && subject.is_some() {
            Mode::Stream
        } else {
            Mode::Plain
        };
        let cancel = CancellationToken::new();
        let stop_listening = CancellationToken::new();
        if mode == Mode::Stream {
            listen_for_cancel(bus, request, cancel.clone(), stop_listening.clone()).await;
        }
        let shared = Arc::new(Shared {
            outbox: tokio::sync::Mutex::new(Outbox {
                state: StreamState::Pending,
                next_seq: 1,
                mode,
                shell: request.reply(FrameType::Final, Value::Null),
                subject,
                client: Some(bus.client().clone()),
                micro: Some(micro),
            }),
            cancel,
            labels: Labels {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
            },
            mode,
        });
        ReplySink {
            shared,
            finished: false,
            stop_listening,
        }
    }

    /// A writer for the handler.
    pub(crate) fn writer(&self) -> StreamWriter {
        StreamWriter {
            shared: self.shared.clone(),
        }
    }

    /// Sends the terminal frame for the handler's `result`, unless one was sent.
    pub(crate) async fn finish(mut self, result: &HandlerResult) {
        close(&self.shared, result).await;
        self.finished = true;
        self.stop_listening.cancel();
    }
}

impl Drop for ReplySink {
    fn drop(&mut self) {
        self.stop_listening.cancel();
        if self.finished {
            return;
        }
        // The serving task was dropped before the handler finished (shutdown): the
        // caller still gets its terminal frame.
        let shared = self.shared.clone();
        let result: HandlerResult = Err(ErrorPayload::new(
            ErrorCode::AgentUnavailable,
            "the service stopped before the handler finished",
        )
        .retryable());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { close(&shared, &result).await });
            }
            Err(_) => tracing::warn!(
                service = %shared.labels.service,
                endpoint = %shared.labels.endpoint,
                "reply dropped outside a runtime; the caller gets no terminal frame"
            ),
        }
    }
}

/// The terminal transition: `Ok` → final, `Err` → error; nothing if already closed.
async fn close(shared: &Shared, result: &HandlerResult) {
    let mut outbox = shared.outbox.lock().await;
    if outbox.state == StreamState::Closed {
        return;
    }
    let (frame, payload) = match result {
        Ok(v) => (FrameType::Final, v.clone()),
        Err(e) => (FrameType::Error, e.to_value()),
    };
    if let Err(e) = outbox.send(frame, payload, &shared.labels).await {
        tracing::warn!(service = %shared.labels.service, endpoint = %shared.labels.endpoint, error = %e, "cannot send the terminal frame");
    }
}

/// Subscribes to `P.cancel.<request id>` and cancels `cancel` on the first message,
/// acknowledging every cancel request, until `stop` is cancelled.
async fn listen_for_cancel(
    bus: &Bus,
    request: &Envelope,
    cancel: CancellationToken,
    stop: CancellationToken,
) {
    let subject = bus.subjects().cancel(&request.event_id);
    let mut sub = match bus.client().subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%subject, error = %e, "cannot subscribe to the cancel subject; this stream cannot be cancelled by its caller");
            return;
        }
    };
    let client = bus.client().clone();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => break },
            };
            let cancel_env = Envelope::from_slice(&msg.payload);
            match &cancel_env {
                Ok(env) => {
                    tracing::debug!(%subject, reason = %env.payload_or_null()["reason"], "stream cancelled by its caller")
                }
                Err(e) => {
                    tracing::debug!(%subject, error = %e, "stream cancelled by a message that is not an envelope")
                }
            }
            cancel.cancel();
            if let Some(reply) = msg.reply {
                let ack = match &cancel_env {
                    Ok(env) => env.reply(FrameType::Final, json!({ "cancelled": true })),
                    Err(_) => {
                        let mut a = Envelope::new(FrameType::Final.event_type())
                            .with_payload(json!({ "cancelled": true }));
                        a.frame_type = Some(FrameType::Final);
                        a.is_final = true;
                        a
                    }
                };
                if let Ok(bytes) = ack.to_bytes()
                    && let Err(e) = client
                        .publish_with_headers(reply, headers_for(&ack), bytes.into())
                        .await
                {
                    tracing::debug!(error = %e, "cannot acknowledge a cancellation");
                }
            }
        }
    });
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
/// [`StreamWriter::is_cancelled`]. [`FrameStream::cancel`] does the same and waits
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

/// A boxed future of a streaming handler's result.
pub type StreamFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// Handles requests to one streaming endpoint: writes frames with the
/// [`StreamWriter`] and returns the final payload (or the error). Implemented for every
/// `Fn(Request, StreamWriter) -> impl Future<Output = HandlerResult>`.
pub trait StreamHandler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, request: crate::service::Request, writer: StreamWriter) -> StreamFuture;
}

impl<F, Fut> StreamHandler for F
where
    F: Fn(crate::service::Request, StreamWriter) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, request: crate::service::Request, writer: StreamWriter) -> StreamFuture {
        self(request, writer).boxed()
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
    fn the_state_machine_allows_exactly_one_terminal_frame() {
        use FrameType as F;
        use StreamState as S;
        assert_eq!(S::Pending.step(F::Started), Ok(Step::To(S::Open)));
        assert_eq!(S::Pending.step(F::Delta), Ok(Step::StartFirst));
        assert_eq!(S::Pending.step(F::Final), Ok(Step::StartFirst));
        assert_eq!(S::Pending.step(F::Error), Ok(Step::To(S::Closed)));
        assert_eq!(S::Open.step(F::Delta), Ok(Step::To(S::Open)));
        assert_eq!(S::Open.step(F::Final), Ok(Step::To(S::Closed)));
        assert_eq!(S::Open.step(F::Error), Ok(Step::To(S::Closed)));
        assert_eq!(S::Open.step(F::Started), Err(WriteError::AlreadyStarted));
        for f in [F::Started, F::Delta, F::Final, F::Error] {
            assert_eq!(S::Closed.step(f), Err(WriteError::Closed));
        }
        assert_eq!(S::Pending.step(F::Request), Err(WriteError::NotAReplyFrame));
    }

    #[test]
    fn write_errors_become_error_payloads_with_codes() {
        let p: ErrorPayload = WriteError::Cancelled.into();
        assert_eq!(p.code.as_str(), CANCELLED_CODE);
        let p: ErrorPayload = WriteError::Transport {
            subject: "s".into(),
            message: "m".into(),
        }
        .into();
        assert_eq!(p.code, ErrorCode::TransportFailure);
        assert!(p.retryable);
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
