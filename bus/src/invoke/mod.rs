//! Invoke: request-reply to a service or agent (DESIGN §4).
//!
//! The request is an envelope (`agent.message.received`, `frame_type: request`,
//! `to: <target>`) sent as a NATS request to `P.invoke.<target>`, so "no responders" is
//! known at once. The reply inbox is also written into the envelope's `reply_to` for
//! ACP peers. The answer is `agent.response.final` (payload = result) or
//! `agent.response.error` (payload [`ErrorPayload`]).
//!
//! [`Bus::invoke_stream`] asks for a streamed reply instead: a [`FrameStream`] of
//! frames (see [`stream`]).

pub(crate) mod reply;
pub mod stream;

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::invoke::reply::NoReply;
use serde_json::Value;

use crate::connect::Bus;
use crate::envelope::{Envelope, ErrorCode, ErrorPayload, FrameType};
use crate::error::{Error, ErrorKind, Result};
use crate::invoke::stream::{FrameStream, STREAM_METADATA_KEY, StreamOptions, error_payload_of};
use crate::observe::metrics;
use crate::subject::Target;
use tracing::Instrument as _;

/// Timeout of [`Bus::invoke`]: 30 s.
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// NATS micro header naming a service error (ADR-32).
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// NATS micro header with the numeric service error code (ADR-32).
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

impl Bus {
    /// Invokes `target` with `payload` and returns the result payload, waiting at most
    /// [`DEFAULT_INVOKE_TIMEOUT`].
    ///
    /// # Errors
    /// As [`Bus::request`].
    pub async fn invoke(&self, target: &Target, payload: Value) -> Result<Value> {
        let env = Envelope::request(target.to_string(), payload);
        let reply = self.request(target, env, DEFAULT_INVOKE_TIMEOUT).await?;
        Ok(reply.payload.unwrap_or(Value::Null))
    }

    /// Sends the request envelope `request` to `target` and waits up to `timeout` for
    /// the terminal reply. `request.reply_to` is set to the reply inbox.
    ///
    /// # Errors
    /// - [`ErrorKind::NoResponders`]: nothing serves `P.invoke.<target>`;
    /// - [`ErrorKind::Timeout`]: no reply within `timeout`;
    /// - [`ErrorKind::Disconnected`] (retryable): the connection to NATS was lost while
    ///   waiting; the request may or may not have been handled;
    /// - [`ErrorKind::Permission`] (not retryable): the NATS server refused the publish
    ///   to `P.invoke.<target>` because the user's permissions deny it;
    /// - [`ErrorKind::Remote`]: the handler answered `agent.response.error`
    ///   ([`Error::remote`] has its code and message);
    /// - [`ErrorKind::Envelope`]: the request is invalid or the reply is not an
    ///   envelope;
    /// - [`ErrorKind::Publish`]: NATS failed underneath.
    pub async fn request(
        &self,
        target: &Target,
        mut request: Envelope,
        timeout: Duration,
    ) -> Result<Envelope> {
        let target_label = target.to_string();
        let started = Instant::now();
        let span = send_span(self, target, &request, false);
        let result = self
            .request_inner(target, &mut request, timeout)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            crate::observe::trace::record_error(&span, e);
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match e.kind() {
                ErrorKind::Remote => "error",
                ErrorKind::Timeout => "timeout",
                ErrorKind::NoResponders => "no_responders",
                ErrorKind::Disconnected => "disconnected",
                ErrorKind::Permission => "denied",
                _ => "transport",
            },
        };
        let m = metrics::bus();
        m.invokes.with_label_values(&[&target_label, outcome]).inc();
        m.invoke_duration
            .with_label_values(&[&target_label])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn request_inner(
        &self,
        target: &Target,
        request: &mut Envelope,
        timeout: Duration,
    ) -> Result<Envelope> {
        let subject = async_nats::Subject::from(self.subjects().invoke(target));
        if request.frame_type.is_none() {
            request.frame_type = Some(FrameType::Request);
        }
        let replies = self.replies().await?;
        let client = self.client();
        let answer = replies
            .request(subject.clone(), timeout, |inbox| {
                request.reply_to = Some(inbox.clone());
                let prepared = request.validate().map_err(Error::from).and_then(|()| {
                    let headers = crate::observe::trace::outgoing_headers(request);
                    Ok((headers, request.to_bytes()?))
                });
                let subject = subject.clone();
                async move {
                    let (headers, bytes) = prepared?;
                    client
                        .publish_with_reply_and_headers(
                            subject.clone(),
                            inbox,
                            headers,
                            bytes.into(),
                        )
                        .await
                        .map_err(|e| {
                            Error::with_source(
                                ErrorKind::Publish,
                                format!("request to {subject} failed"),
                                e,
                            )
                        })
                }
            })
            .await?;
        let msg = answer.map_err(|no| match no {
            NoReply::NoResponders => Error::new(
                ErrorKind::NoResponders,
                format!("no service is listening on {subject} (is `{target}` running?)"),
            ),
            NoReply::TimedOut => Error::new(
                ErrorKind::Timeout,
                format!("{target} did not answer within {} ms", timeout.as_millis()),
            ),
            NoReply::Lost => disconnected(self.server_url(), target),
            NoReply::Denied => denied(&subject),
        })?;
        if msg.payload.is_empty() {
            // A plain NATS micro service error: headers only.
            if let Some(h) = &msg.headers
                && let Some(text) = h.get(SERVICE_ERROR_HEADER)
            {
                let code = h
                    .get(SERVICE_ERROR_CODE_HEADER)
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                return Err(Error::from_remote(
                    &target.to_string(),
                    ErrorPayload::new(
                        ErrorCode::Other(format!("SERVICE_ERROR_{code}")),
                        text.to_string(),
                    ),
                ));
            }
        }
        let reply = Envelope::from_slice(&msg.payload).map_err(|e| {
            Error::new(
                ErrorKind::Envelope,
                format!("{target} answered with something that is not an envelope: {e}"),
            )
        })?;
        if reply.frame_type == Some(FrameType::Error) {
            return Err(Error::from_remote(
                &target.to_string(),
                error_payload_of(&reply),
            ));
        }
        Ok(reply)
    }

    /// Invokes `target` with the request envelope `request` and asks for a streamed
    /// reply (DESIGN §4): returns at once with a [`FrameStream`] of the frames in `seq`
    /// order. `request.reply_to` is set to the stream's inbox and its metadata gets
    /// `weft.stream: true`. Dropping the stream before its terminal frame cancels the
    /// handler.
    ///
    /// A plain endpoint answers with `started` then `final` (or one `error`); a
    /// responder that does not know streams with one unnumbered terminal frame.
    ///
    /// # Errors
    /// [`ErrorKind::Envelope`] for an invalid or oversized request,
    /// [`ErrorKind::Subscribe`] or [`ErrorKind::Publish`] when NATS fails. Everything
    /// after the request is sent (no responders, timeouts, protocol errors) comes as an
    /// item of the stream, see [`FrameStream`].
    ///
    /// # Examples
    /// ```no_run
    /// use futures::StreamExt;
    /// use weft_bus::stream::StreamOptions;
    /// # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
    /// let target: weft_bus::Target = "support".parse()?;
    /// let request = weft_bus::Envelope::request("support", serde_json::json!({"message": "hi"}));
    /// let options = StreamOptions::default().idle_timeout(std::time::Duration::from_secs(10));
    /// let mut frames = bus.invoke_stream(&target, request, options).await?;
    /// while let Some(frame) = frames.next().await {
    ///     let frame = frame?;
    ///     println!("{}: {}", frame.event_type(), frame.payload());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn invoke_stream(
        &self,
        target: &Target,
        mut request: Envelope,
        options: StreamOptions,
    ) -> Result<FrameStream> {
        let subject = self.subjects().invoke(target);
        let inbox = self.client().new_inbox();
        request.reply_to = Some(inbox.clone());
        if request.frame_type.is_none() {
            request.frame_type = Some(FrameType::Request);
        }
        request
            .metadata
            .insert(STREAM_METADATA_KEY.to_owned(), Value::Bool(true));
        request.validate()?;
        // The span lives as long as the stream, which ends it at its terminal frame.
        let span = send_span(self, target, &request, true);
        let headers = span.in_scope(|| crate::observe::trace::outgoing_headers(&mut request));
        let bytes = request.to_bytes()?;
        let subscriber = self.client().subscribe(inbox.clone()).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Subscribe,
                format!("cannot subscribe to the reply inbox of a stream from {target}"),
                e,
            )
        })?;
        // Filed before the publish, so a refusal of it is not missed.
        let waiting = self.waiters().file(subject.clone().into(), false);
        self.client()
            .publish_with_reply_and_headers(subject.clone(), inbox, headers, bytes.into())
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Publish,
                    format!("cannot publish to {subject}"),
                    e,
                )
            })?;
        Ok(FrameStream::new(
            self,
            target.to_string(),
            subject,
            &request,
            stream::Sent {
                subscriber,
                waiting,
                span,
            },
            options,
        ))
    }
}

/// The [`ErrorKind::Disconnected`] error of a request to `target` that waited when the
/// connection to `server` was lost.
pub(crate) fn disconnected(server: &str, target: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Disconnected,
        format!(
            "connection to NATS at {server} was lost while waiting for the reply of {target}; the request may or may not have been handled"
        ),
    )
}

/// The [`ErrorKind::Permission`] error of a publish to `subject` the server refused.
pub(crate) fn denied(subject: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Permission,
        format!("not allowed to publish to {subject}: the NATS user's permissions deny it"),
    )
}

/// The client span of a request to `target` (see [`crate::observe::trace`]):
/// `send P.invoke.<target>`, kind CLIENT.
fn send_span(bus: &Bus, target: &Target, request: &Envelope, stream: bool) -> tracing::Span {
    let subject = format_args!("{}.invoke.{target}", bus.prefix());
    crate::observe::trace::messaging_span!(
        "send",
        "client",
        "send",
        name = subject,
        destination = subject,
        message_id = request.event_id,
        weft.stream = stream
    )
}

/// One outbound invoke, as the [`Invoker`] service takes it.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// Where to.
    pub target: Target,
    /// The request envelope (`reply_to` is set when sent).
    pub envelope: Envelope,
    /// How long to wait for the terminal reply.
    pub timeout: Duration,
}

impl InvokeRequest {
    /// A request to `target` carrying `envelope`, waiting up to `timeout`.
    pub fn new(target: Target, envelope: Envelope, timeout: Duration) -> Self {
        InvokeRequest {
            target,
            envelope,
            timeout,
        }
    }
}

/// One circuit per invoke target.
impl crate::middleware::CircuitKey for InvokeRequest {
    fn circuit_key(&self) -> String {
        self.target.to_string()
    }
}

/// Outbound invokes as a tower [`Service`](tower::Service), so callers (flows, agents,
/// your code) stack middleware such as
/// [`CircuitBreakerLayer`](crate::middleware::CircuitBreakerLayer) on them. The
/// response is the terminal reply envelope; errors are as [`Bus::request`].
///
/// # Examples
/// ```no_run
/// use std::time::Duration;
/// use weft_bus::invoke::{InvokeRequest, Invoker};
/// use weft_bus::middleware::{CircuitBreakerLayer, ServiceBuilder, ServiceExt};
/// # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
/// let invoker = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::default())
///     .service(Invoker::new(bus));
/// let target: weft_bus::Target = "tickets.list".parse()?;
/// let env = weft_bus::Envelope::request("tickets.list", serde_json::json!({}));
/// let reply = invoker
///     .oneshot(InvokeRequest::new(target, env, Duration::from_secs(5)))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Invoker {
    bus: Bus,
}

/// An outbound invoke stack, boxed so callers can keep it in a struct.
pub type BoxInvoker = tower::util::BoxCloneSyncService<InvokeRequest, Envelope, Error>;

impl Invoker {
    /// Invokes over `bus`.
    pub fn new(bus: Bus) -> Self {
        Invoker { bus }
    }

    /// The invoke stack flows and agents use: `breaker` around an [`Invoker`] on `bus`.
    /// Callers keep one breaker per component so circuits persist between calls.
    pub fn guarded(bus: &Bus, breaker: &crate::middleware::CircuitBreakerLayer) -> BoxInvoker {
        use tower::Layer as _;
        tower::util::BoxCloneSyncService::new(breaker.layer(Invoker::new(bus.clone())))
    }
}

impl tower::Service<InvokeRequest> for Invoker {
    type Response = Envelope;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Envelope>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: InvokeRequest) -> Self::Future {
        let bus = self.bus.clone();
        Box::pin(async move {
            bus.request(&request.target, request.envelope, request.timeout)
                .await
        })
    }
}
