//! Serving a service: endpoints with handlers, answered over invoke (DESIGN §4, §5).
//!
//! A served service is also a NATS micro service (ADR-32: `$SRV.PING|INFO|STATS`), so
//! standard NATS tooling sees it, and it keeps a registry entry alive on a heartbeat.
//!
//! An endpoint answers with one reply ([`Endpoint::new`]) or streams frames
//! ([`Endpoint::streaming`], see [`crate::stream`]); both kinds run through the same
//! middleware stack, and both answer plain and streaming callers.
//!
//! Each endpoint is served by one task, and its handlers run as futures of that task
//! (as the requests of one connection do in an HTTP server): they interleave at their
//! `.await` points, and no task is spawned per request. A handler that computes for long
//! should move that work off the task (`tokio::task::spawn_blocking`); more instances
//! spread CPU-bound work.
//!
//! # Examples
//! ```no_run
//! use serde_json::json;
//! use weft_bus::service::{Endpoint, Request, Service};
//! # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
//! let handle = Service::new("greeter", "1.0.0")
//!     .description("Says hello")
//!     .endpoint(Endpoint::new("hello", |req: Request| async move {
//!         let name = req.payload()["name"].as_str().unwrap_or("world").to_owned();
//!         Ok(json!({ "greeting": format!("hello {name}") }))
//!     }))
//!     .serve(&bus)
//!     .await?;
//! // … later, on shutdown: stop taking requests, finish in-flight ones, deregister.
//! handle.stop().await?;
//! # Ok(()) }
//! ```

pub mod stream;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::service::ServiceExt as _;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, PollSemaphore};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt as _};

use crate::connect::Bus;
use crate::envelope::{Envelope, ErrorCode, ErrorPayload, FrameType};
use crate::error::{Error, ErrorKind, Result};
use crate::middleware::{RecoverLayer, TimeoutLayer, TraceLayer};
use crate::observe::metrics;
use crate::registry::{EndpointInfo, Kind, Registered, Registration, Registry};
use crate::service::stream::{
    ReplySink, StreamHandler, StreamWriter, as_error, deliver, encode_terminal, wants_stream,
};
use crate::subject::{ServiceName, Target, validate_token};

/// A boxed, sendable future (defined with the middleware, which durable consumers
/// share too).
pub use crate::middleware::BoxFuture;

/// What a handler returns: the result payload, or an error sent as
/// `agent.response.error`.
pub type HandlerResult = std::result::Result<Value, ErrorPayload>;

/// Handles requests to one endpoint. Implemented for every
/// `Fn(Request) -> impl Future<Output = HandlerResult>`.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, request: Request) -> BoxFuture<HandlerResult>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, request: Request) -> BoxFuture<HandlerResult> {
        Box::pin(self(request))
    }
}

/// An endpoint's handler with its middleware: a cloneable tower service.
pub type BoxHandler = BoxCloneSyncService<Request, Value, ErrorPayload>;

/// A [`Handler`] as a tower service (the innermost service of an endpoint's stack).
#[derive(Clone)]
struct HandlerService(Arc<dyn Handler>);

impl tower::Service<Request> for HandlerService {
    type Response = Value;
    type Error = ErrorPayload;
    type Future = BoxFuture<HandlerResult>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ErrorPayload>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.0.call(request)
    }
}

/// A [`StreamHandler`] as a [`Handler`]: hands it the request's writer.
struct StreamAdapter(Arc<dyn StreamHandler>);

impl Handler for StreamAdapter {
    fn call(&self, request: Request) -> BoxFuture<HandlerResult> {
        let writer = request
            .writer
            .clone()
            .unwrap_or_else(StreamWriter::detached);
        self.0.call(request, writer)
    }
}

type LayerFn = Arc<dyn Fn(BoxHandler) -> BoxHandler + Send + Sync>;

/// A request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request envelope.
    pub envelope: Envelope,
    /// The service it was addressed to.
    pub service: ServiceName,
    /// The endpoint that serves it.
    pub endpoint: String,
    /// The bus, for handlers that publish or invoke in turn.
    pub bus: Bus,
    /// The reply's frame writer, for streaming endpoints.
    writer: Option<StreamWriter>,
}

impl Request {
    /// The request payload (`null` when absent).
    pub fn payload(&self) -> &Value {
        self.envelope.payload_or_null()
    }

    /// The writer of the reply's frames when the endpoint is a streaming one
    /// ([`Endpoint::streaming`]); `None` for plain endpoints. Middleware can use it,
    /// e.g. to send progress deltas or to watch for cancellation.
    pub fn stream_writer(&self) -> Option<&StreamWriter> {
        self.writer.as_ref()
    }

    /// The payload parsed into `T`.
    ///
    /// # Errors
    /// An `INVALID_REQUEST` [`ErrorPayload`] saying what does not match.
    pub fn parse<T: DeserializeOwned>(&self) -> std::result::Result<T, ErrorPayload> {
        serde_json::from_value(self.payload().clone()).map_err(|e| {
            ErrorPayload::invalid_request(format!(
                "invalid input for {}.{}: {e}",
                self.service, self.endpoint
            ))
        })
    }
}

/// One endpoint: a name, a description, JSON Schemas for input and output, and a
/// handler.
#[derive(Clone)]
pub struct Endpoint {
    name: String,
    description: String,
    input_schema: Option<Value>,
    output_schema: Option<Value>,
    metadata: Map<String, Value>,
    timeout: Option<Duration>,
    handler: Arc<dyn Handler>,
    streaming: bool,
}

impl Endpoint {
    /// An endpoint `name` (one token) served by `handler`, answering with one reply.
    /// A streaming caller gets it as `started` then `final` (or one `error`).
    pub fn new(name: impl Into<String>, handler: impl Handler) -> Self {
        Endpoint {
            name: name.into(),
            description: String::new(),
            input_schema: None,
            output_schema: None,
            metadata: Map::new(),
            timeout: None,
            handler: Arc::new(handler),
            streaming: false,
        }
    }

    /// A streaming endpoint `name` (one token) served by `handler`, which writes
    /// `started`/`delta` frames with its [`StreamWriter`] and returns the final
    /// payload (DESIGN §4; see [`crate::stream`]). Its return value is the terminal
    /// frame: `Ok` → `agent.response.final`, `Err` → `agent.response.error`; a panic
    /// or the endpoint's timeout end the stream with an error frame too, so a stream
    /// always ends with exactly one terminal frame. A plain caller
    /// ([`Bus::request`](crate::Bus::request)) gets only the terminal frame.
    ///
    /// # Examples
    /// ```no_run
    /// use serde_json::json;
    /// use weft_bus::service::{Endpoint, Request};
    /// use weft_bus::stream::StreamWriter;
    /// let count = Endpoint::streaming("count", |_req: Request, out: StreamWriter| async move {
    ///     for i in 1..=3 {
    ///         out.delta(json!(i)).await?;
    ///     }
    ///     Ok(json!({ "counted": 3 }))
    /// });
    /// ```
    pub fn streaming(name: impl Into<String>, handler: impl StreamHandler) -> Self {
        Endpoint {
            streaming: true,
            ..Endpoint::new(name, StreamAdapter(Arc::new(handler)))
        }
    }

    /// What the endpoint does (shown to agents as the tool description). Default empty.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    /// JSON Schema of the input payload. Default none (any JSON).
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = Some(schema);
        self
    }

    /// JSON Schema of the output payload. Default none.
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }

    /// Adds an entry to the endpoint's registry metadata
    /// ([`EndpointInfo::metadata`](crate::registry::EndpointInfo::metadata)), e.g.
    /// `.metadata("readOnlyHint", json!(true))`, which MCP hosts see as the tool's
    /// annotation ([`crate::registry::tool`]). Default empty.
    pub fn metadata(mut self, key: impl Into<String>, value: Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }

    /// Time budget of one call (for a streaming endpoint: the whole stream); past it
    /// the handler is cancelled and the caller gets `AGENT_TIMEOUT` (retryable).
    /// Default none (the caller's invoke timeout applies).
    pub fn timeout(mut self, budget: Duration) -> Self {
        self.timeout = Some(budget);
        self
    }
}

/// A service definition; [`Service::serve`] puts it on the bus.
pub struct Service {
    name: String,
    version: String,
    description: String,
    kind: Kind,
    endpoints: Vec<Endpoint>,
    default_endpoint: Option<String>,
    metadata: Map<String, Value>,
    max_concurrency: usize,
    drain_timeout: Duration,
    layers: Vec<LayerFn>,
}

impl Service {
    /// A service `name` (one token) at semver `version`, kind [`Kind::Service`].
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Service {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            kind: Kind::Service,
            endpoints: Vec::new(),
            default_endpoint: None,
            metadata: Map::new(),
            max_concurrency: 256,
            drain_timeout: Duration::from_secs(10),
            layers: Vec::new(),
        }
    }

    /// Wraps every endpoint's handler in `layer` (any tower layer that keeps the
    /// request, response and error types; see [`crate::middleware`]). The first layer
    /// added is the outermost. Weft's own layers sit around them: recover (a panic
    /// becomes `AGENT_UNAVAILABLE`, retryable) and trace outside, the endpoint's
    /// timeout inside.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxHandler> + Send + Sync + 'static,
        L::Service: tower::Service<Request, Response = Value, Error = ErrorPayload>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<Request>>::Future: Send + 'static,
    {
        self.layers.push(Arc::new(move |inner| {
            BoxCloneSyncService::new(layer.layer(inner))
        }));
        self
    }

    /// What the service does. Default empty.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    /// The registry kind. Default [`Kind::Service`]; agents use [`Kind::Agent`].
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// Adds an endpoint, served on `P.invoke.<service>.<endpoint>`.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Also serves endpoint `name` on `P.invoke.<service>`. Default: none, unless the
    /// service has exactly one endpoint, which is then the default.
    pub fn default_endpoint(mut self, name: impl Into<String>) -> Self {
        self.default_endpoint = Some(name.into());
        self
    }

    /// Adds a metadata entry to the registration.
    pub fn metadata(mut self, key: impl Into<String>, value: Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }

    /// Most requests handled at once; more wait in the subscription. Default 256.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// How long [`ServiceHandle::stop`] waits for in-flight requests. Default 10 s.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Starts serving: subscribes every endpoint (in queue group `q`, so instances
    /// share requests), starts the NATS micro service and registers the instance.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidSubject`] for a bad service or endpoint name or an unknown
    /// default endpoint; [`ErrorKind::Subscribe`] when NATS refuses (e.g. a version
    /// that is not semver); [`ErrorKind::Kv`] when the registry is missing.
    pub async fn serve(self, bus: &Bus) -> Result<ServiceHandle> {
        let service: ServiceName = self.name.parse()?;
        let mut names = Vec::new();
        for e in &self.endpoints {
            validate_token("endpoint name", &e.name)?;
            if names.contains(&e.name) {
                return Err(Error::new(
                    ErrorKind::InvalidSubject,
                    format!("service {service} has two endpoints named {}", e.name),
                ));
            }
            names.push(e.name.clone());
        }
        let default = match (&self.default_endpoint, self.endpoints.len()) {
            (Some(d), _) if !names.contains(d) => {
                return Err(Error::new(
                    ErrorKind::InvalidSubject,
                    format!("default endpoint {d} is not an endpoint of {service}"),
                ));
            }
            (Some(d), _) => Some(d.clone()),
            (None, 1) => Some(names[0].clone()),
            (None, _) => None,
        };
        let registry = Registry::open(bus).await?;

        let mut registration = Registration::new(self.kind, service.as_str(), &self.version);
        registration.description = self.description.clone();
        registration.metadata = self.metadata.clone();
        let micro_meta: HashMap<String, String> = [
            ("weft.kind".to_owned(), self.kind.as_str().to_owned()),
            ("weft.instance".to_owned(), registration.instance.clone()),
        ]
        .into();
        let micro = bus
            .client()
            .service_builder()
            .description(&self.description)
            .metadata(micro_meta)
            .start(service.as_str(), &self.version)
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Subscribe,
                    format!("cannot start service {service} {}", self.version),
                    e,
                )
            })?;

        let cancel = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(self.max_concurrency));
        let mut loops = Vec::new();
        for e in &self.endpoints {
            let target = Target::endpoint(service.clone(), &e.name)?;
            let subject = bus.subjects().invoke(&target);
            let is_default = default.as_deref() == Some(e.name.as_str());
            registration.endpoints.push(EndpointInfo {
                name: e.name.clone(),
                subject: subject.clone(),
                description: e.description.clone(),
                input_schema: e.input_schema.clone(),
                output_schema: e.output_schema.clone(),
                default: is_default,
                streaming: e.streaming,
                metadata: e.metadata.clone(),
            });
            let mut subjects = vec![(e.name.clone(), subject)];
            if is_default {
                subjects.push((
                    format!("{}-default", e.name),
                    bus.subjects().invoke(&Target::service(service.clone())),
                ));
            }
            for (micro_name, subject) in subjects {
                let stream = micro
                    .endpoint_builder()
                    .name(&micro_name)
                    .add(subject.clone())
                    .await
                    .map_err(|err| {
                        Error::with_source(
                            ErrorKind::Subscribe,
                            format!("cannot subscribe to {subject}"),
                            err,
                        )
                    })?;
                let m = metrics::bus();
                let ctx = EndpointCtx {
                    bus: bus.clone(),
                    service: service.clone(),
                    endpoint: e.name.clone(),
                    handler: self.stack(&service, e, &subject),
                    streaming: e.streaming,
                    handled_ok: m
                        .handled
                        .with_label_values(&[service.as_str(), &e.name, "ok"]),
                    duration: m
                        .handle_duration
                        .with_label_values(&[service.as_str(), &e.name]),
                };
                loops.push(tokio::spawn(serve_endpoint(
                    stream,
                    ctx,
                    cancel.clone(),
                    permits.clone(),
                )));
            }
        }
        let registered = registry.register(registration.clone()).await?;
        tracing::info!(service = %service, instance = %registration.instance, "service started");
        Ok(ServiceHandle {
            registration,
            micro,
            cancel,
            loops,
            registered,
            drain_timeout: self.drain_timeout,
            consumers: Vec::new(),
        })
    }
}

impl Service {
    /// The middleware stack of one endpoint served on `subject`, outermost first:
    /// recover, trace, the service's layers, the endpoint's timeout, the handler.
    fn stack(&self, service: &ServiceName, e: &Endpoint, subject: &str) -> BoxHandler {
        let mut svc = BoxCloneSyncService::new(HandlerService(e.handler.clone()));
        if let Some(budget) = e.timeout {
            svc = BoxCloneSyncService::new(TimeoutLayer::new(budget).layer(svc));
        }
        for layer in self.layers.iter().rev() {
            svc = layer(svc);
        }
        let (s, ep, subject) = (service.to_string(), e.name.clone(), subject.to_owned());
        let trace = TraceLayer::new(move |r: &Request| {
            let span = crate::observe::trace::messaging_span!(
                "receive", "server", "receive",
                name = subject,
                destination = subject,
                message_id = r.envelope.event_id,
                messaging.consumer.group.name = "q",
                weft.service = %s,
                weft.endpoint = %ep,
                weft.stream = r.writer.is_some(),
            );
            // The envelope mirrors the request's traceparent header (DESIGN §3).
            crate::observe::trace::set_parent(&span, None, Some(&r.envelope));
            span
        });
        BoxCloneSyncService::new(RecoverLayer.layer(trace.layer(svc)))
    }
}

struct EndpointCtx {
    bus: Bus,
    service: ServiceName,
    endpoint: String,
    handler: BoxHandler,
    streaming: bool,
    /// `weft_requests_handled_total{…, outcome="ok"}` and the duration histogram of
    /// this endpoint, resolved once rather than per request.
    handled_ok: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

/// Serves one endpoint until cancelled, then finishes the requests it took. Its
/// handlers run as futures of this one task (no task per request): each takes one of
/// the service's `permits` (the concurrency limit every endpoint shares) before its
/// request is read.
async fn serve_endpoint(
    mut stream: async_nats::service::endpoint::Endpoint,
    ctx: EndpointCtx,
    cancel: CancellationToken,
    permits: Arc<Semaphore>,
) {
    let ctx = &ctx;
    let mut running = FuturesUnordered::new();
    // Keeps this endpoint's place in the semaphore's queue across loop turns (a fresh
    // `acquire` each turn would go to the back whenever another branch fired).
    let mut permits = PollSemaphore::new(permits);
    let mut permit = None;
    // Made once: a new one per turn would join and leave the token's waiters list
    // (two locks) for every request.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let mut open = true;
    loop {
        if !open && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = &mut cancelled, if open => open = false,
            Some(()) = running.next() => {}
            p = std::future::poll_fn(|cx| permits.poll_acquire(cx)), if open && permit.is_none() => match p {
                Some(p) => permit = Some(p),
                None => open = false,
            },
            r = stream.next(), if open && permit.is_some() => match r {
                Some(request) => {
                    let permit = permit.take();
                    running.push(async move {
                        handle(ctx, request).await;
                        drop(permit);
                    });
                }
                None => open = false,
            },
        }
    }
}

/// Handles one request: decode, run the endpoint's stack, answer through a
/// [`ReplySink`] (one plain reply, or frames when the caller streams).
async fn handle(ctx: &EndpointCtx, request: async_nats::service::Request) {
    let started = Instant::now();
    let decoded = Envelope::from_slice(&request.message.payload);
    let reply_subject = request
        .message
        .reply
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| decoded.as_ref().ok().and_then(|e| e.reply_to.clone()));
    let env = match decoded {
        Ok(env) => env,
        Err(e) => {
            let err = ErrorPayload::new(
                ErrorCode::CodecFailure,
                format!(
                    "request to {}.{} is not a valid envelope: {e}",
                    ctx.service, ctx.endpoint
                ),
            );
            record(ctx, started, &Err(err.clone()));
            let Some(subject) = reply_subject else {
                tracing::warn!(service = %ctx.service, endpoint = %ctx.endpoint, "undecodable request without a reply subject; dropped");
                return;
            };
            let mut r = Envelope::new(FrameType::Error.event_type());
            as_error(&mut r, &err);
            r.is_final = true;
            r.from = Some(ctx.service.to_string());
            let bytes = r.to_bytes().unwrap_or_default();
            let client = ctx.bus.client();
            if let Err(e) = deliver(client, Some(&request), &subject, &r, bytes, Some(&err)).await {
                tracing::warn!(service = %ctx.service, endpoint = %ctx.endpoint, error = %e, "cannot send reply");
            }
            return;
        }
    };
    if !ctx.streaming && !wants_stream(&env) {
        return handle_plain(ctx, started, env, reply_subject, request).await;
    }
    let sink = ReplySink::open(
        &ctx.bus,
        &env,
        reply_subject,
        request,
        ctx.service.as_str(),
        &ctx.endpoint,
    )
    .await;
    let req = Request {
        envelope: env,
        service: ctx.service.clone(),
        endpoint: ctx.endpoint.clone(),
        bus: ctx.bus.clone(),
        writer: ctx.streaming.then(|| sink.writer()),
    };
    let result = ctx.handler.clone().oneshot(req).await;
    record(ctx, started, &result);
    sink.finish(&result).await;
}

/// A plain request to a plain endpoint: one reply envelope, no stream machinery.
async fn handle_plain(
    ctx: &EndpointCtx,
    started: Instant,
    env: Envelope,
    reply_subject: Option<String>,
    request: async_nats::service::Request,
) {
    let mut reply = env.reply(FrameType::Final, Value::Null);
    let req = Request {
        envelope: env,
        service: ctx.service.clone(),
        endpoint: ctx.endpoint.clone(),
        bus: ctx.bus.clone(),
        writer: None,
    };
    let result = ctx.handler.clone().oneshot(req).await;
    record(ctx, started, &result);
    let Some(subject) = reply_subject else {
        tracing::warn!(service = %ctx.service, endpoint = %ctx.endpoint, "request without a reply subject or reply_to; answer dropped");
        return;
    };
    let mut error = match result {
        Ok(value) => {
            reply.payload = Some(value);
            None
        }
        Err(err) => {
            as_error(&mut reply, &err);
            Some(err)
        }
    };
    let bytes = match encode_terminal(&mut reply, &mut error, ctx.service.as_str(), &ctx.endpoint) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(service = %ctx.service, endpoint = %ctx.endpoint, error = %e, "cannot encode even an error reply; answer dropped");
            return;
        }
    };
    let sent = deliver(
        ctx.bus.client(),
        Some(&request),
        &subject,
        &reply,
        bytes,
        error.as_ref(),
    )
    .await;
    if let Err(e) = sent {
        tracing::warn!(service = %ctx.service, endpoint = %ctx.endpoint, error = %e, "cannot send reply");
    }
}

/// Counts and times one handled request.
fn record(ctx: &EndpointCtx, started: Instant, result: &HandlerResult) {
    match result {
        Ok(_) => ctx.handled_ok.inc(),
        Err(e) => metrics::bus()
            .handled
            .with_label_values(&[ctx.service.as_str(), &ctx.endpoint, e.code.as_str()])
            .inc(),
    }
    ctx.duration.observe(started.elapsed().as_secs_f64());
}

/// A running service. [`ServiceHandle::stop`] shuts it down cleanly.
pub struct ServiceHandle {
    registration: Registration,
    micro: async_nats::service::Service,
    cancel: CancellationToken,
    loops: Vec<tokio::task::JoinHandle<()>>,
    registered: Registered,
    drain_timeout: Duration,
    consumers: Vec<crate::durable::consumer::ConsumerHandle>,
}

impl ServiceHandle {
    /// Ties `consumer` to this service: [`ServiceHandle::stop`] stops it (draining
    /// its in-flight deliveries) once the service's own requests are drained. An agent
    /// keeps the consumer of its run queue this way.
    pub fn with_consumer(mut self, consumer: crate::durable::consumer::ConsumerHandle) -> Self {
        self.consumers.push(consumer);
        self
    }

    /// The registration this instance keeps alive.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// Stops taking requests, waits up to the drain timeout for in-flight ones (and
    /// cancels those still running then), stops the consumers tied to it
    /// ([`ServiceHandle::with_consumer`]), stops the micro service and deletes the
    /// registry entry.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the registry entry cannot be deleted (it then expires).
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        let mut loops = self.loops;
        let drained = tokio::time::timeout(self.drain_timeout, async {
            for l in &mut loops {
                let _ = l.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(service = %self.registration.name, "in-flight requests still running after the drain timeout; cancelling them");
            for l in &loops {
                l.abort();
            }
        }
        for c in self.consumers {
            c.stop().await;
        }
        if let Err(e) = self.micro.stop().await {
            tracing::warn!(error = %e, "cannot stop micro service");
        }
        self.registered.deregister().await
    }
}
