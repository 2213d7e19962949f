//! Durable subscribers: a named durable pull consumer on `<PREFIX>_EVENTS` with explicit
//! ack, shared by every instance of the same name so work spreads (DESIGN §6).
//!
//! Outcomes of a handler:
//! - `Ok(())` → ack;
//! - [`DeliveryError::Retry`] → nak with [`DurableConfig::retry_delay`], until
//!   [`DurableConfig::max_deliver`] deliveries are spent, then dead letter;
//! - [`DeliveryError::Permanent`], or bytes that are not an envelope → dead letter at
//!   once.
//!
//! While a handler runs, the consumer sends in-progress acks every third of the ack
//! wait, so a long step is not redelivered; if the process dies, the message is
//! redelivered after the ack wait to another instance.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connect::Bus;
use crate::dlq::{self, DeadLetter};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics;
use crate::service::BoxFuture;
use crate::subject::{EventPattern, validate_token};

/// Settings of a durable subscriber. Every field states its default.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    /// Durable consumer name (one token), shared by all instances.
    pub name: String,
    /// Event patterns to receive, e.g. `ticket.created` (at least one).
    pub filters: Vec<EventPattern>,
    /// How long the server waits for an ack before redelivering. Default 30 s.
    pub ack_wait: Duration,
    /// Deliveries before a failing message is dead-lettered. Default 5.
    pub max_deliver: i64,
    /// Delay of a nak after a retryable failure. Default 1 s.
    pub retry_delay: Duration,
    /// Handlers running at once in this instance. Default 8.
    pub concurrency: usize,
    /// Where a new consumer starts: `true` for every stored event, `false` (default)
    /// for events published from now on.
    pub deliver_all: bool,
}

impl DurableConfig {
    /// A config for consumer `name` receiving `filters`, with the defaults above.
    pub fn new(name: impl Into<String>, filters: Vec<EventPattern>) -> Self {
        DurableConfig {
            name: name.into(),
            filters,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            retry_delay: Duration::from_secs(1),
            concurrency: 8,
            deliver_all: false,
        }
    }
}

/// One delivery as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub envelope: Envelope,
    /// The subject it was stored under.
    pub subject: String,
    /// Which delivery this is, from 1.
    pub attempt: i64,
    /// Its stream sequence.
    pub stream_sequence: u64,
}

/// Why a handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (nak with delay).
    #[error("{0}")]
    Retry(String),
    /// Trying again cannot help: dead letter now.
    #[error("{0}")]
    Permanent(String),
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

/// A running durable subscriber; [`ConsumerHandle::stop`] stops it cleanly.
pub struct ConsumerHandle {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ConsumerHandle {
    /// Stops pulling and waits for running handlers to finish (their messages are
    /// acked or nak'ed as usual).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Creates (or joins) the durable consumer and starts handling deliveries.
///
/// # Errors
/// [`ErrorKind::InvalidSubject`] for a bad name or no filters;
/// [`ErrorKind::JetStream`] when the stream is missing or the consumer exists with a
/// conflicting configuration.
pub async fn start(
    bus: &Bus,
    config: DurableConfig,
    handler: impl DeliveryHandler,
) -> Result<ConsumerHandle> {
    validate_token("consumer name", &config.name)?;
    if config.filters.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidSubject,
            format!("durable consumer {} needs at least one filter", config.name),
        ));
    }
    let stream_name = bus.names().events_stream.clone();
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
    let filter_subjects: Vec<String> = config
        .filters
        .iter()
        .map(|f| bus.subjects().events_matching(f))
        .collect();
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
        .create_consumer(pull::Config {
            durable_name: Some(config.name.clone()),
            filter_subjects,
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            max_ack_pending: 1000,
            deliver_policy: if config.deliver_all {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        })
        .await
        .map_err(|e| {
            Error::with_source(
                ErrorKind::JetStream,
                format!(
                    "cannot create durable consumer {} on {stream_name}",
                    config.name
                ),
                e,
            )
        })?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(config.concurrency.max(1))
        .messages()
        .await
        .map_err(|e| {
            Error::with_source(
                ErrorKind::JetStream,
                format!("cannot pull from consumer {}", config.name),
                e,
            )
        })?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(
        bus.clone(),
        config,
        Arc::new(handler),
        messages,
        cancel.clone(),
    ));
    Ok(ConsumerHandle { cancel, task })
}

async fn run(
    bus: Bus,
    config: DurableConfig,
    handler: Arc<dyn DeliveryHandler>,
    mut messages: pull::Stream,
    cancel: CancellationToken,
) {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let tracker = TaskTracker::new();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = messages.next() => m,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(consumer = %config.name, error = %e, "pull failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            None => break,
        };
        let (bus, config, handler) = (bus.clone(), config.clone(), handler.clone());
        tracker.spawn(async move {
            let gauge = metrics::bus().in_flight.with_label_values(&[&config.name]);
            gauge.inc();
            handle(&bus, &config, handler.as_ref(), msg).await;
            gauge.dec();
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn handle(
    bus: &Bus,
    config: &DurableConfig,
    handler: &dyn DeliveryHandler,
    msg: async_nats::jetstream::Message,
) {
    let (attempt, stream_sequence, stream) = match msg.info() {
        Ok(i) => (i.delivered, i.stream_sequence, i.stream.to_owned()),
        Err(_) => (1, 0, String::new()),
    };
    let subject = msg.subject.to_string();
    let outcome = match Envelope::from_slice(&msg.payload) {
        Err(e) => Err(DeliveryError::Permanent(format!(
            "not a valid envelope: {e}"
        ))),
        Ok(envelope) => {
            let delivery = Delivery {
                envelope,
                subject: subject.clone(),
                attempt,
                stream_sequence,
            };
            // In-progress acks keep a long handler from being redelivered.
            let every = (config.ack_wait / 3).max(Duration::from_millis(100));
            let progress = async {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "in-progress ack failed");
                    }
                }
            };
            let work = AssertUnwindSafe(handler.call(delivery)).catch_unwind();
            tokio::select! {
                r = work => r.unwrap_or_else(|_| Err(DeliveryError::Retry("handler panicked".into()))),
                _ = progress => unreachable!("the progress loop never ends"),
            }
        }
    };
    let counter = |o: &str| {
        metrics::bus()
            .deliveries
            .with_label_values(&[&config.name, o])
            .inc()
    };
    match outcome {
        Ok(()) => {
            counter("ack");
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(consumer = %config.name, error = %e, "ack failed; the message will be redelivered");
            }
        }
        Err(DeliveryError::Retry(reason)) if attempt < config.max_deliver => {
            counter("nak");
            tracing::info!(consumer = %config.name, %subject, attempt, %reason, "retrying later");
            let _ = msg.ack_with(AckKind::Nak(Some(config.retry_delay))).await;
        }
        Err(e) => {
            counter("dead_letter");
            let letter = DeadLetter {
                original_subject: subject,
                stream,
                stream_sequence,
                consumer: config.name.clone(),
                attempts: attempt,
                last_error: e.to_string(),
            };
            match dlq::publish(bus, &msg.payload, &letter).await {
                Ok(()) => {
                    let _ = msg.ack_with(AckKind::Term).await;
                }
                Err(err) => {
                    // Keep the original: it will be redelivered and dead-lettered later.
                    tracing::error!(consumer = %config.name, error = %err, "cannot publish dead letter; leaving the message for redelivery");
                    let _ = msg.ack_with(AckKind::Nak(Some(config.retry_delay))).await;
                }
            }
        }
    }
}
