//! Durable subscribers (DESIGN §6): a named durable pull consumer on `<PREFIX>_EVENTS`
//! (or another stream of envelopes: [`DurableConfig::on_stream`], e.g. the run queue)
//! with explicit ack, shared by every instance of the same name, so work spreads and
//! each message is handled by one instance at a time.
//!
//! # Outcomes
//!
//! | handler result | what the consumer does |
//! |---|---|
//! | `Ok(())` | ack |
//! | [`DeliveryError::Retry`] | nak with the [`RetryPolicy`]'s delay; when the policy does not retry or [`DurableConfig::max_deliver`] deliveries are spent: dead letter |
//! | [`DeliveryError::RetryAfter`] | as `Retry`, with the handler's own delay instead of the policy's (e.g. a flow step's retry policy) |
//! | [`DeliveryError::Permanent`] | dead letter at once |
//! | a panic | caught ([`RecoverLayer`]) and treated as [`DeliveryError::Retry`] |
//! | over [`DurableConfig::handler_timeout`] | cancelled and treated as [`DeliveryError::Retry`] |
//! | bytes that are not an envelope | dead letter at once (the handler is not called) |
//!
//! Retries go through JetStream redelivery (a nak with a delay), never an in-process
//! loop, so another instance may take the next attempt; [`Delivery::attempt`] is
//! JetStream's delivery count. A dead letter ([`crate::durable::dlq`]) is published and acked
//! before the original is terminated.
//!
//! While a message waits in the instance or its handler runs, the consumer sends an
//! in-progress ack for it every third of the ack wait, so a long handler is not
//! redelivered; if the process dies, the message is redelivered after the ack wait, to
//! another instance if one runs. The server allows
//! one delivery more than `max_deliver`: that extra delivery only exists when the last
//! one was never settled (the process died or hung), and it is dead-lettered at once
//! with reason `unacknowledged`, so such messages are not lost silently.
//!
//! # Middleware
//!
//! Handlers run through tower layers, as service endpoints do
//! ([`crate::middleware`]), outermost first: [`RecoverLayer`], [`TraceLayer`] (span
//! `deliver`, parented on the message's trace headers), the layers added with
//! [`DurableConfig::layer`], [`TimeoutLayer`] when [`DurableConfig::handler_timeout`]
//! is set, the handler. Settling (ack, nak, dead letter, in-progress acks) is not a
//! layer: it needs the raw JetStream message, which the layers do not see, so a layer
//! cannot ack twice or lose a message; layers shape the [`DeliveryError`] that
//! settling then acts on.
//!
//! # One consumer, many instances
//!
//! The first instance creates the consumer; later ones join it. When it exists, its
//! settings are updated to the starting instance's (the last one started wins, e.g. in
//! a rolling upgrade) while its position in the stream is kept (`deliver_all` applies
//! only when it is created). A consumer of that name that cannot be updated into a
//! Weft durable subscriber (a push consumer, another ack policy) is an
//! [`ErrorKind::Conflict`] naming it.
//!
//! Each instance pulls messages in batches (four per handler slot, at least 200, at
//! most `max_ack_pending`) and keeps them, with in-progress acks, until a handler slot
//! is free. The handlers of one instance run as futures of one task, as the requests of
//! one connection do in a server: they interleave at their `.await` points, and no task
//! is spawned per message. A handler that computes for long should move that work off
//! the task (`tokio::task::spawn_blocking`), or it holds up the other handlers of its
//! instance; more instances (processes) spread CPU-bound work.
//!
//! # First failure time
//!
//! JetStream does not remember when a delivery failed, so the consumer records a
//! message's first failure in the KV bucket `<prefix>_failures` (key
//! `<consumer>.<stream_sequence>`), only on the failure path, and deletes the record
//! when the message is acked after a redelivery or dead-lettered. Without that bucket,
//! `weft.dlq.first_failed_at` is left out of dead letters whose first failure was not
//! the last.
//!
//! # Examples
//! ```no_run
//! use std::time::Duration;
//! use weft_bus::consumer::{self, Delivery, DeliveryError, DurableConfig};
//! use weft_bus::retry::RetryPolicy;
//! # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
//! let mut config = DurableConfig::new("mailer", vec!["user.signed_up".parse()?]);
//! config.retry = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60))?;
//! config.handler_timeout = Some(Duration::from_secs(20));
//! let handle = consumer::start(&bus, config, |d: Delivery| async move {
//!     if d.envelope.payload.is_none() {
//!         return Err(DeliveryError::Permanent("no payload".into()));
//!     }
//!     Ok(())
//! })
//! .await?;
//! handle.stop().await;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::Message as JsMessage;
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service as _, ServiceExt as _};

use crate::connect::Bus;
use crate::durable::dlq::{self, DeadLetter, Reason};
use crate::envelope::{Envelope, now_rfc3339};
use crate::error::{Error, ErrorKind, Result};
use crate::middleware::{BoxFuture, LayerError, RecoverLayer, TimeoutLayer, TraceLayer};
use crate::observe::metrics;
use crate::retry::RetryPolicy;
use crate::subject::{EventPattern, validate_token};

/// A durable handler with its middleware: a cloneable tower service.
pub type BoxDeliveryHandler = BoxCloneSyncService<Delivery, (), DeliveryError>;

type LayerFn = Arc<dyn Fn(BoxDeliveryHandler) -> BoxDeliveryHandler + Send + Sync>;

/// Settings of a durable subscriber. Every field states its default; build with
/// [`DurableConfig::new`] and change fields, add layers with [`DurableConfig::layer`].
#[derive(Clone)]
pub struct DurableConfig {
    /// Durable consumer name (one token), shared by all instances.
    pub name: String,
    /// Event patterns to receive, e.g. `ticket.created` (at least one; patterns must
    /// not overlap).
    pub filters: Vec<EventPattern>,
    /// How long the server waits for an ack (or an in-progress ack) before it
    /// redelivers. At least 100 ms. Default 30 s.
    pub ack_wait: Duration,
    /// Deliveries before a failing message is dead-lettered (at least 1). Default 5.
    pub max_deliver: i64,
    /// Messages delivered and not yet acked, over all instances together, before the
    /// server stops delivering (at least 1). Default 1000.
    pub max_ack_pending: i64,
    /// Wait for the server to confirm each ack (a request-reply per message) before
    /// counting the message done. Default `false`: acks are sent without waiting, which
    /// is several times faster; a lost ack only means one more delivery, which
    /// at-least-once handlers already expect.
    pub confirm_acks: bool,
    /// When a retryable failure is delivered again. Default
    /// [`RetryPolicy::default`] (exponential from 1 s to 60 s, bounded jitter).
    pub retry: RetryPolicy,
    /// Handlers running at once in this instance (at least 1), as futures of one task
    /// (see "One consumer, many instances" in the module docs). Default 8.
    pub concurrency: usize,
    /// Time budget of one handler call; past it the handler is cancelled and the
    /// failure is retryable. Default none.
    pub handler_timeout: Option<Duration>,
    /// Where a new consumer starts: `true` for every stored event, `false` (default)
    /// for events published from now on. Ignored when the consumer exists.
    pub deliver_all: bool,
    /// How often this instance samples the consumer's pending counts into
    /// `weft_consumer_pending`. Default 5 s.
    pub stats_interval: Duration,
    /// Another stream than the events stream, and its subjects to consume
    /// ([`DurableConfig::on_stream`]); `filters` are then unused.
    source: Option<(String, Vec<String>)>,
    layers: Vec<LayerFn>,
}

impl fmt::Debug for DurableConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableConfig")
            .field("name", &self.name)
            .field("filters", &self.filters)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("confirm_acks", &self.confirm_acks)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .field("handler_timeout", &self.handler_timeout)
            .field("deliver_all", &self.deliver_all)
            .field("stats_interval", &self.stats_interval)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl DurableConfig {
    /// A config for consumer `name` receiving `filters`, with the defaults above.
    pub fn new(name: impl Into<String>, filters: Vec<EventPattern>) -> Self {
        DurableConfig {
            name: name.into(),
            filters,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
            confirm_acks: false,
            retry: RetryPolicy::default(),
            concurrency: 8,
            handler_timeout: None,
            deliver_all: false,
            stats_interval: Duration::from_secs(5),
            source: None,
            layers: Vec::new(),
        }
    }

    /// A config for consumer `name` of the envelopes on `subjects` (full subjects,
    /// wildcards allowed) of `stream` instead of the events stream, e.g. the run
    /// queue's wakes. It receives everything stored (`deliver_all`, as a work-queue
    /// stream requires). Replays to it are not offered (they go to the events stream).
    pub fn on_stream(
        name: impl Into<String>,
        stream: impl Into<String>,
        subjects: Vec<String>,
    ) -> Self {
        DurableConfig {
            source: Some((stream.into(), subjects)),
            deliver_all: true,
            ..DurableConfig::new(name, Vec::new())
        }
    }

    /// Wraps the handler in `layer` (any tower layer that keeps the request, response
    /// and error types; see [`crate::middleware`]). The first layer added is the
    /// outermost; recover and trace sit outside all of them, the timeout inside.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxDeliveryHandler> + Send + Sync + 'static,
        L::Service: tower::Service<Delivery, Response = (), Error = DeliveryError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<Delivery>>::Future: Send + 'static,
    {
        self.layers.push(Arc::new(move |inner| {
            BoxCloneSyncService::new(layer.layer(inner))
        }));
        self
    }

    fn validate(&self) -> Result<()> {
        validate_token("consumer name", &self.name)?;
        let bad = |what: String| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("durable consumer {}: {what}", self.name),
            ))
        };
        if self.filters.is_empty() && self.source.as_ref().is_none_or(|(_, s)| s.is_empty()) {
            return bad("needs at least one filter".into());
        }
        if self.max_deliver < 1 {
            return bad(format!(
                "max_deliver is {}; it must be at least 1",
                self.max_deliver
            ));
        }
        if self.max_ack_pending < 1 {
            return bad(format!(
                "max_ack_pending is {}; it must be at least 1",
                self.max_ack_pending
            ));
        }
        if self.concurrency < 1 {
            return bad("concurrency is 0; it must be at least 1".into());
        }
        if self.ack_wait < Duration::from_millis(100) {
            return bad(format!(
                "ack_wait is {} ms; it must be at least 100 ms",
                self.ack_wait.as_millis()
            ));
        }
        Ok(())
    }

    /// The middleware stack, outermost first: recover, trace, the added layers, the
    /// timeout, the handler.
    fn stack(
        &self,
        handler: Arc<dyn DeliveryHandler>,
        prefix: &crate::Prefix,
    ) -> BoxDeliveryHandler {
        let mut svc = BoxCloneSyncService::new(HandlerService(handler));
        if let Some(budget) = self.handler_timeout {
            svc = BoxCloneSyncService::new(TimeoutLayer::new(budget).layer(svc));
        }
        for layer in self.layers.iter().rev() {
            svc = layer(svc);
        }
        let consumer = self.name.clone();
        // Low-cardinality destinations: events by type, and a replayed copy's subject,
        // which has this consumer in it.
        let events: Arc<str> = match &self.source {
            // Another stream: its filter, e.g. `weft.runq.flow.triage.*`.
            Some((_, subjects)) => subjects.join(",").into(),
            None => format!("{prefix}.events.{{event_type}}").into(),
        };
        let replays: Arc<str> = format!("{prefix}.replay.{}.{{event_type}}", self.name).into();
        let replay_subjects = format!("{prefix}.replay.");
        let trace = TraceLayer::new(move |d: &Delivery| {
            let template = if d.subject.starts_with(&replay_subjects) {
                &*replays
            } else {
                &*events
            };
            let span = crate::observe::trace::messaging_span!(
                "process", "consumer", "process",
                name = template,
                destination = d.subject,
                message_id = d.envelope.event_id,
                messaging.destination.template = template,
                messaging.consumer.group.name = %consumer,
                weft.delivery.attempt = d.attempt,
                weft.stream.sequence = d.stream_sequence as i64,
                weft.replayed = d.replayed,
            );
            crate::observe::trace::set_parent(&span, Some(&d.headers), Some(&d.envelope));
            span
        });
        BoxCloneSyncService::new(RecoverLayer.layer(trace.layer(svc)))
    }
}

/// One delivery as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub envelope: Envelope,
    /// The subject it is stored under: `P.events.<event_type>`, or
    /// `P.replay.<consumer>.<event_type>` for a replayed copy.
    pub subject: String,
    /// Which delivery this is, from 1 (JetStream's delivery count).
    pub attempt: i64,
    /// Its stream sequence.
    pub stream_sequence: u64,
    /// True for a copy made by a replay ([`crate::durable::replay`], [`crate::durable::dlq::replay`]).
    pub replayed: bool,
    /// The message's NATS headers (`Nats-Msg-Id`, trace context, …).
    pub headers: HeaderMap,
}

/// Why a handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (nak with the retry policy's delay).
    #[error("{0}")]
    Retry(String),
    /// Try again after this delay, the handler's own schedule rather than the
    /// consumer's [`RetryPolicy`] (a flow step's retry policy, say). Max deliveries
    /// still apply.
    #[error("{1}")]
    RetryAfter(Duration, String),
    /// Trying again cannot help: dead letter now.
    #[error("{0}")]
    Permanent(String),
}

/// Durable handlers: every layer failure is worth a redelivery.
impl LayerError for DeliveryError {
    fn timed_out(after: Duration) -> Self {
        DeliveryError::Retry(format!(
            "the handler did not finish within {} ms",
            after.as_millis()
        ))
    }
    fn panicked(message: String) -> Self {
        DeliveryError::Retry(format!("the handler panicked: {message}"))
    }
    fn rejected(reason: String) -> Self {
        DeliveryError::Retry(reason)
    }
}

impl crate::observe::trace::ErrorType for DeliveryError {
    fn error_type(&self) -> std::borrow::Cow<'_, str> {
        match self {
            DeliveryError::Retry(_) | DeliveryError::RetryAfter(..) => "retry".into(),
            DeliveryError::Permanent(_) => "permanent".into(),
        }
    }
}

/// Handles durable deliveries. Implemented for every
/// `Fn(Delivery) -> impl Future<Output = Result<(), DeliveryError>>`.
pub trait DeliveryHandler: Send + Sync + 'static {
    /// Handles one delivery.
    fn call(&self, delivery: Delivery) -> BoxFuture<std::result::Result<(), DeliveryError>>;
}

impl<F, Fut> DeliveryHandler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::result::Result<(), DeliveryError>> + Send + 'static,
{
    fn call(&self, delivery: Delivery) -> BoxFuture<std::result::Result<(), DeliveryError>> {
        Box::pin(self(delivery))
    }
}

/// A [`DeliveryHandler`] as a tower service (the innermost service of the stack).
#[derive(Clone)]
struct HandlerService(Arc<dyn DeliveryHandler>);

impl tower::Service<Delivery> for HandlerService {
    type Response = ();
    type Error = DeliveryError;
    type Future = BoxFuture<std::result::Result<(), DeliveryError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), DeliveryError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        self.0.call(delivery)
    }
}

/// A running durable subscriber; [`ConsumerHandle::stop`] stops it cleanly.
pub struct ConsumerHandle {
    name: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ConsumerHandle {
    /// The durable consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops pulling and waits for running handlers to finish (their messages are
    /// acked, nak'ed or dead-lettered as usual). Messages pulled but not started are
    /// redelivered after the ack wait.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Messages pulled per batch: four per handler slot, at least 200 (the `async-nats`
/// default, which keeps the pull pipeline full), at most `max_ack_pending`. Pulled
/// messages wait for a free handler with in-progress acks.
fn prefetch(config: &DurableConfig) -> usize {
    (config.concurrency * 4).max(200).min(
        usize::try_from(config.max_ack_pending)
            .unwrap_or(usize::MAX)
            .max(1),
    )
}

/// Creates (or joins) the durable consumer and starts handling deliveries.
///
/// # Errors
/// [`ErrorKind::InvalidSubject`] for a bad name; [`ErrorKind::InvalidConfig`] for no
/// filters or an out-of-range setting; [`ErrorKind::JetStream`] when the stream is
/// missing or the server refuses; [`ErrorKind::Conflict`] when a consumer of that name
/// exists and cannot be updated into this one (push, or another ack policy).
pub async fn start(
    bus: &Bus,
    config: DurableConfig,
    handler: impl DeliveryHandler,
) -> Result<ConsumerHandle> {
    config.validate()?;
    let consumer = create_or_join(bus, &config).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(prefetch(&config))
        .messages()
        .await
        .map_err(|e| {
            Error::with_source(
                ErrorKind::JetStream,
                format!("cannot pull from consumer {}", config.name),
                e,
            )
        })?;
    let failures = match bus
        .jetstream()
        .get_key_value(&bus.names().failures_bucket)
        .await
    {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(consumer = %config.name, bucket = %bus.names().failures_bucket, error = %e, "no failures bucket: dead letters will lack first_failed_at (`weft up` creates it)");
            None
        }
    };
    let cancel = CancellationToken::new();
    let config_name = config.name.clone();
    let ctx = Arc::new(Ctx {
        bus: bus.clone(),
        handler: config.stack(Arc::new(handler), bus.prefix()),
        config,
        failures,
        replay_prefix: bus.subjects().all_replay().trim_end_matches('>').to_owned(),
        series: Series::new(&config_name),
    });
    let task = tokio::spawn(run(ctx.clone(), consumer, messages, cancel.clone()));
    Ok(ConsumerHandle {
        name: ctx.config.name.clone(),
        cancel,
        task,
    })
}

async fn create_or_join(bus: &Bus, config: &DurableConfig) -> Result<Consumer<pull::Config>> {
    let stream_name = match &config.source {
        Some((stream, _)) => stream.clone(),
        None => bus.names().events_stream.clone(),
    };
    let stream = bus
        .jetstream()
        .get_stream(&stream_name)
        .await
        .map_err(|e| {
            Error::with_source(
                ErrorKind::JetStream,
                format!("stream {stream_name} is missing (run `weft up`)"),
                e,
            )
        })?;
    let s = bus.subjects();
    let mut filter_subjects: Vec<String> = config
        .filters
        .iter()
        .map(|f| s.events_matching(f))
        .collect();
    if let Some((_, subjects)) = &config.source {
        filter_subjects = subjects.clone();
    } else if stream
        .cached_info()
        .config
        .subjects
        .contains(&s.all_replay())
    {
        filter_subjects.extend(
            config
                .filters
                .iter()
                .map(|f| s.replay_matching(&config.name, f)),
        );
    } else {
        tracing::warn!(stream = %stream_name, consumer = %config.name, "the events stream has no {} subject: replays to this consumer are off (`weft up` adds it)", s.all_replay());
    }
    let name = &config.name;
    let mut wanted = pull::Config {
        durable_name: Some(name.clone()),
        description: Some("Weft durable subscriber".into()),
        filter_subjects,
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        // One more than the handler gets: see "Outcomes" in the module docs.
        max_deliver: config.max_deliver.saturating_add(1),
        max_ack_pending: config.max_ack_pending,
        deliver_policy: if config.deliver_all {
            DeliverPolicy::All
        } else {
            DeliverPolicy::New
        },
        ..Default::default()
    };
    use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
    match stream.consumer_info(name).await {
        Ok(existing) => {
            let c = &existing.config;
            if c.deliver_subject.is_some() || c.ack_policy != AckPolicy::Explicit {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "consumer {name} on {stream_name} exists but is not a pull consumer with explicit acks; delete it or choose another name"
                    ),
                ));
            }
            // Keep its position: a deliver policy cannot change on an existing consumer.
            wanted.deliver_policy = c.deliver_policy;
        }
        Err(e) if e.kind() == K::NotFound => {}
        Err(e) => {
            return Err(Error::with_source(
                ErrorKind::JetStream,
                format!("cannot read consumer {name} of {stream_name}"),
                e,
            ));
        }
    }
    // Create-or-update: joins a consumer that another instance creates meanwhile.
    stream.create_consumer(wanted).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Conflict,
            format!(
                "cannot create or update durable consumer {name} on {stream_name} (its filters may overlap, or an existing consumer cannot take these settings)"
            ),
            e,
        )
    })
}

/// What every handler task of one subscriber shares.
struct Ctx {
    bus: Bus,
    config: DurableConfig,
    handler: BoxDeliveryHandler,
    failures: Option<kv::Store>,
    /// `P.replay.`: deliveries under it are replayed copies.
    replay_prefix: String,
    /// This consumer's metric series, resolved once rather than per delivery.
    series: Series,
}

/// The per-consumer metric series touched on every delivery.
struct Series {
    in_flight: prometheus::IntGauge,
    redeliveries: prometheus::IntCounter,
    /// `weft_deliveries_total`, indexed by [`Settled`].
    delivered: [prometheus::IntCounter; 3],
    /// `weft_replayed_deliveries_total`, indexed by [`Settled`].
    replayed: [prometheus::IntCounter; 3],
}

/// How a delivery was settled: the `outcome` label of the delivery counters.
#[derive(Clone, Copy)]
enum Settled {
    Ack = 0,
    Nak = 1,
    DeadLetter = 2,
}

impl Series {
    fn new(consumer: &str) -> Series {
        let m = metrics::bus();
        let by_outcome = |v: &prometheus::IntCounterVec| {
            ["ack", "nak", "dead_letter"].map(|outcome| v.with_label_values(&[consumer, outcome]))
        };
        Series {
            in_flight: m.in_flight.with_label_values(&[consumer]),
            redeliveries: m.redeliveries.with_label_values(&[consumer]),
            delivered: by_outcome(&m.deliveries),
            replayed: by_outcome(&m.replayed_deliveries),
        }
    }

    /// Counts one settled delivery, and a replayed copy's also as a replay.
    fn settled(&self, how: Settled, replayed: bool) {
        self.delivered[how as usize].inc();
        if replayed {
            self.replayed[how as usize].inc();
        }
    }
}

async fn run(
    ctx: Arc<Ctx>,
    consumer: Consumer<pull::Config>,
    mut messages: pull::Stream,
    cancel: CancellationToken,
) {
    let sampler = tokio::spawn(sample_pending(ctx.clone(), consumer, cancel.clone()));
    let concurrency = ctx.config.concurrency;
    let batch = prefetch(&ctx.config);
    // One instance of the middleware stack serves every delivery, driven as tower
    // servers drive a service: `poll_ready`, then `call`.
    let mut svc = ctx.handler.clone();
    // Pulled messages waiting for a handler slot, and the handlers running (in this
    // task: one task per instance, no spawn and no cross-thread wake-up per message).
    let mut queued: VecDeque<JsMessage> = VecDeque::with_capacity(batch);
    let mut running = FuturesUnordered::new();
    // What the handlers hold, for the in-progress acks: key → reply subject.
    let mut held: HashMap<u64, async_nats::Subject> = HashMap::with_capacity(concurrency);
    let mut next_key = 0u64;
    let mut tick = progress_ticker(&ctx.config);
    // Made once: a new one per turn would join and leave the token's waiters list
    // (two locks) for every message.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let mut pulling = true;
    loop {
        if !pulling && running.is_empty() {
            break;
        }
        let can_start = !queued.is_empty() && running.len() < concurrency;
        tokio::select! {
            biased;
            _ = &mut cancelled, if pulling => pulling = false,
            Some(key) = running.next() => {
                held.remove(&key);
                ctx.series.in_flight.dec();
            }
            _ = tick.tick() => {
                let replies = held.values().chain(queued.iter().filter_map(|m| m.reply.as_ref()));
                send_progress(&ctx.bus, replies).await;
            }
            ready = svc.ready(), if can_start => {
                let msg = queued.pop_front().expect("can_start: a message is queued");
                next_key += 1;
                if let Some(reply) = &msg.reply {
                    held.insert(next_key, reply.clone());
                }
                ctx.series.in_flight.inc();
                running.push(handle(&ctx, ready, msg, next_key));
            }
            m = messages.next(), if pulling && queued.len() < batch => match m {
                Some(Ok(m)) => queued.push_back(m),
                Some(Err(e)) => {
                    tracing::warn!(consumer = %ctx.config.name, error = %e, "pull failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => pulling = false,
            },
        }
    }
    // Queued messages that no handler started are redelivered after the ack wait.
    drop(queued);
    cancel.cancel();
    let _ = sampler.await;
}

/// Ticks every third of the ack wait (at least every 30 ms), first after one period.
fn progress_ticker(config: &DurableConfig) -> tokio::time::Interval {
    let every = (config.ack_wait / 3).max(Duration::from_millis(30));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Sends an in-progress ack (`+WPI`) for each held message, so the server does not
/// redeliver it while it waits for or runs in a handler.
async fn send_progress(bus: &Bus, replies: impl Iterator<Item = &async_nats::Subject>) {
    for reply in replies {
        if let Err(e) = bus
            .client()
            .publish(reply.clone(), AckKind::Progress.into())
            .await
        {
            tracing::debug!(error = %e, "in-progress ack failed");
        }
    }
}

/// Samples the consumer's pending counts into `weft_consumer_pending` until stopped.
async fn sample_pending(
    ctx: Arc<Ctx>,
    consumer: Consumer<pull::Config>,
    cancel: CancellationToken,
) {
    let gauge = &metrics::bus().consumer_pending;
    let name = ctx.config.name.as_str();
    let mut tick = tokio::time::interval(ctx.config.stats_interval.max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        match consumer.get_info().await {
            Ok(info) => {
                gauge
                    .with_label_values(&[name, "pending"])
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                gauge
                    .with_label_values(&[name, "ack_pending"])
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::debug!(consumer = name, error = %e, "cannot sample consumer info"),
        }
    }
    for state in ["pending", "ack_pending"] {
        let _ = gauge.remove_label_values(&[name, state]);
    }
}

/// Handles one message from delivery to settlement; resolves to `key`. `svc` is the
/// middleware stack, ready for one call (or the error it failed with when asked).
///
/// A plain function returning one `async` block: the call is made here, so the
/// returned future does not borrow `svc`.
fn handle<'a>(
    ctx: &'a Ctx,
    svc: std::result::Result<&mut BoxDeliveryHandler, DeliveryError>,
    mut msg: JsMessage,
    key: u64,
) -> impl std::future::Future<Output = u64> + 'a {
    let (attempt, stream_sequence) = match msg.info() {
        Ok(i) => (i.delivered, i.stream_sequence),
        Err(_) => (1, 0),
    };
    if attempt > 1 {
        ctx.series.redeliveries.inc();
    }
    // Decided now: the dead letter to write before any handler, or the handler call.
    let call = if attempt > ctx.config.max_deliver {
        Err(Early::Unacknowledged)
    } else {
        match Envelope::from_slice(&msg.payload) {
            Err(e) => Err(Early::InvalidEnvelope(e)),
            Ok(envelope) => {
                // The delivery takes the headers; the message keeps only its trace
                // context, which is all a dead letter copies.
                let mut trace = HeaderMap::new();
                crate::observe::trace::copy_context(msg.headers.as_ref(), &mut trace);
                let headers = msg.message.headers.replace(trace);
                let subject = msg.subject.as_str();
                let delivery = Delivery {
                    envelope,
                    replayed: subject.starts_with(&ctx.replay_prefix),
                    subject: subject.to_owned(),
                    attempt,
                    stream_sequence,
                    headers: headers.unwrap_or_default(),
                };
                Ok(svc.map(|svc| svc.call(delivery)))
            }
        }
    };
    async move {
        match call {
            Ok(Ok(outcome)) => {
                let outcome = outcome.await;
                ctx.settle(&msg, attempt, stream_sequence, outcome).await;
            }
            Ok(Err(not_ready)) => {
                ctx.settle(&msg, attempt, stream_sequence, Err(not_ready))
                    .await;
            }
            Err(early) => ctx.dead_letter_early(&msg, attempt, early).await,
        }
        key
    }
}

/// Why a message is dead-lettered before any handler sees it.
enum Early {
    /// Its last delivery was never settled (see "Outcomes" in the module docs).
    Unacknowledged,
    /// Its bytes are not an envelope.
    InvalidEnvelope(crate::envelope::EnvelopeError),
}

/// Where a failing message is stored and which delivery failed.
struct Failure {
    subject: String,
    stream: String,
    stream_sequence: u64,
    attempt: i64,
}

impl Failure {
    /// Delivery `attempt` of `msg` failed (built on failure paths only).
    fn of(msg: &JsMessage, attempt: i64) -> Failure {
        let (stream, stream_sequence) = match msg.info() {
            Ok(i) => (i.stream.to_owned(), i.stream_sequence),
            Err(_) => (String::new(), 0),
        };
        Failure {
            subject: msg.subject.to_string(),
            stream,
            stream_sequence,
            attempt,
        }
    }
}

/// A message's failure history in the `<prefix>_failures` bucket.
#[derive(Debug, Serialize, Deserialize)]
struct FailureRecord {
    first_failed_at: String,
    last_error: String,
}

impl Ctx {
    /// Whether `msg` is a replayed copy (stored under `P.replay.`).
    fn is_replay(&self, msg: &JsMessage) -> bool {
        msg.subject.starts_with(&self.replay_prefix)
    }

    async fn dead_letter_early(&self, msg: &JsMessage, attempt: i64, early: Early) {
        match early {
            Early::Unacknowledged => {
                let max = self.config.max_deliver;
                let failure = Failure::of(msg, max);
                let record = self.failure_record(failure.stream_sequence).await;
                let mut error = format!(
                    "delivery {max} of {max} was never settled (the handler's process died or hung past the ack wait)"
                );
                if let Some(last) = record.as_ref().map(|r| &r.last_error) {
                    error.push_str(&format!("; last handler error: {last}"));
                }
                let first = record.map(|r| r.first_failed_at);
                self.dead_letter(msg, &failure, Reason::Unacknowledged, error, first)
                    .await;
            }
            Early::InvalidEnvelope(e) => {
                let failure = Failure::of(msg, attempt);
                let error = format!("not a valid envelope: {e}");
                let first = self.first_failure(&failure).await;
                self.dead_letter(msg, &failure, Reason::InvalidEnvelope, error, first)
                    .await;
            }
        }
    }

    async fn settle(
        &self,
        msg: &JsMessage,
        attempt: i64,
        stream_sequence: u64,
        outcome: std::result::Result<(), DeliveryError>,
    ) {
        let name = &self.config.name;
        let Err(error) = outcome else {
            self.series.settled(Settled::Ack, self.is_replay(msg));
            let acked = if self.config.confirm_acks {
                msg.double_ack().await
            } else {
                msg.ack().await
            };
            if let Err(e) = acked {
                tracing::warn!(consumer = %name, error = %e, "ack failed; the message will be redelivered");
            }
            if attempt > 1 {
                self.forget_failure(stream_sequence).await;
            }
            return;
        };
        let failure = &Failure::of(msg, attempt);
        let (delay, reason) = match error {
            DeliveryError::Permanent(reason) => {
                let first = self.first_failure(failure).await;
                self.dead_letter(msg, failure, Reason::Permanent, reason, first)
                    .await;
                return;
            }
            DeliveryError::Retry(reason) => (self.config.retry.delay(failure.attempt), reason),
            DeliveryError::RetryAfter(delay, reason) => (Some(delay), reason),
        };
        match delay {
            Some(delay) if failure.attempt < self.config.max_deliver => {
                self.note_failure(failure, &reason).await;
                self.series.settled(Settled::Nak, self.is_replay(msg));
                tracing::info!(consumer = %name, subject = %failure.subject, attempt = failure.attempt, delay_ms = delay.as_millis() as u64, %reason, "retrying later");
                if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(consumer = %name, error = %e, "nak failed; the message will be redelivered after the ack wait");
                }
            }
            _ => {
                // Dead-lettered now: read the first failure, write nothing.
                let first = self.first_failure(failure).await;
                self.dead_letter(msg, failure, Reason::RetriesSpent, reason, first)
                    .await
            }
        }
    }

    /// Publishes the dead letter, then terminates the original; if the publish fails,
    /// naks it so it comes back and is dead-lettered then.
    async fn dead_letter(
        &self,
        msg: &JsMessage,
        failure: &Failure,
        reason: Reason,
        last_error: String,
        first_failed_at: Option<String>,
    ) {
        let name = &self.config.name;
        let letter = DeadLetter {
            original_subject: failure.subject.clone(),
            stream: failure.stream.clone(),
            stream_sequence: failure.stream_sequence,
            consumer: name.clone(),
            attempts: failure.attempt,
            reason,
            last_error,
            first_failed_at,
            last_failed_at: now_rfc3339(),
        };
        match dlq::publish(&self.bus, &msg.payload, msg.headers.as_ref(), &letter).await {
            Ok(_) => {
                self.series
                    .settled(Settled::DeadLetter, self.is_replay(msg));
                metrics::bus()
                    .dead_letters
                    .with_label_values(&[name, reason.as_str()])
                    .inc();
                if let Err(e) = msg.double_ack_with(AckKind::Term).await {
                    // Redelivered later, then dead-lettered again and de-duplicated.
                    tracing::warn!(consumer = %name, error = %e, "cannot terminate a dead-lettered message");
                }
                if failure.attempt > 1 {
                    self.forget_failure(failure.stream_sequence).await;
                }
            }
            Err(err) => {
                self.series.settled(Settled::Nak, self.is_replay(msg));
                // Kept for the next delivery, which dead-letters it (reason unacknowledged
                // when this was the last one) with this error.
                self.note_failure(failure, &letter.last_error).await;
                let delay = self
                    .config
                    .retry
                    .delay(failure.attempt)
                    .unwrap_or(Duration::from_secs(1));
                tracing::error!(consumer = %name, error = %err, "cannot publish dead letter; leaving the message for redelivery");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    fn failure_key(&self, stream_sequence: u64) -> String {
        format!("{}.{stream_sequence}", self.config.name)
    }

    async fn failure_record(&self, stream_sequence: u64) -> Option<FailureRecord> {
        let store = self.failures.as_ref()?;
        let bytes = store.get(self.failure_key(stream_sequence)).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// When the failing delivery's message first failed: the record's time, or now when
    /// this is its first failure.
    async fn first_failure(&self, failure: &Failure) -> Option<String> {
        if failure.attempt <= 1 {
            return Some(now_rfc3339());
        }
        match self.failure_record(failure.stream_sequence).await {
            Some(r) => Some(r.first_failed_at),
            // With the bucket, no record means no earlier failure.
            None => self.failures.is_some().then(now_rfc3339),
        }
    }

    /// Records a retryable failure and returns the first failure time.
    async fn note_failure(&self, failure: &Failure, error: &str) -> Option<String> {
        let first = self.first_failure(failure).await;
        let (Some(store), Some(first_failed_at)) = (&self.failures, first.clone()) else {
            return first;
        };
        let record = FailureRecord {
            first_failed_at,
            last_error: error.to_owned(),
        };
        if let Ok(bytes) = serde_json::to_vec(&record)
            && let Err(e) = store
                .put(self.failure_key(failure.stream_sequence), bytes.into())
                .await
        {
            tracing::debug!(consumer = %self.config.name, error = %e, "cannot record a failure");
        }
        first
    }

    async fn forget_failure(&self, stream_sequence: u64) {
        if let Some(store) = &self.failures
            && let Err(e) = store.purge(self.failure_key(stream_sequence)).await
        {
            tracing::debug!(consumer = %self.config.name, error = %e, "cannot delete a failure record");
        }
    }
}
