//! Streaming invoke (DESIGN §4), the serving half: the [`StreamWriter`] a streaming
//! handler writes its frames with, the state machine behind it ([`StreamState`]), and
//! the [`StreamHandler`] of a streaming endpoint. The caller's half and the wire
//! protocol are in [`crate::invoke::stream`]; [`crate::stream`] has both at one path.
//!
//! # Examples
//!
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

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use async_nats::HeaderMap;
use futures::{FutureExt as _, StreamExt as _};
use prometheus::IntCounterVec;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::connect::Bus;
use crate::envelope::{
    Envelope, EnvelopeError, ErrorCode, ErrorPayload, FrameType, new_event_id, now_rfc3339,
};
use crate::invoke::stream::{CANCELLED_CODE, STREAM_METADATA_KEY, error_payload_of, frame_label};
use crate::invoke::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use crate::observe::trace::headers_for;
use crate::service::{HandlerResult, Request};

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
    /// The caller cancelled the stream (it dropped its [`FrameStream`](crate::invoke::stream::FrameStream), timed out or
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

/// A boxed future of a streaming handler's result.
pub type StreamFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// Handles requests to one streaming endpoint: writes frames with the
/// [`StreamWriter`] and returns the final payload (or the error). Implemented for every
/// `Fn(Request, StreamWriter) -> impl Future<Output = HandlerResult>`.
pub trait StreamHandler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, request: Request, writer: StreamWriter) -> StreamFuture;
}

impl<F, Fut> StreamHandler for F
where
    F: Fn(Request, StreamWriter) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, request: Request, writer: StreamWriter) -> StreamFuture {
        self(request, writer).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
