//! `durable_consume`: a durable pull consumer handling and acking stored events,
//! msgs/s.
//!
//! First the stream is loaded with envelopes on `P.events.bench.consume` (raw
//! JetStream publishes of Weft's bytes, 256 in flight, for half the duration and at
//! most 5 s). Then two new durable consumers, delivering everything stored, read the
//! same messages:
//!
//! - Weft: [`weft_bus::consumer::start`] with a handler that does nothing but count,
//!   and the [`DurableConfig`] defaults (8 handlers at once): each message decoded and
//!   validated, handled in its own task, acked.
//! - Hand ([`super::hand`]): a pull consumer with the same configuration,
//!   `messages()` with the `async-nats` defaults, each message decoded into a `Value`,
//!   `ack()` per message.
//! - Raw: the same, without decoding.
//!
//! Each side is measured until it has handled every stored message or the duration has
//! passed. Its rate counts from its first handled message to its last, so setting up
//! the consumer (a few round trips, more for Weft, which also joins the registry of
//! consumers and reads the stream's info) is not part of the handling rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use weft_bus::consumer::{self, Delivery, DurableConfig};
use weft_bus::{Envelope, EventType};

use super::durable_publish::{IN_FLIGHT, raw_publisher};
use super::{Bench, Cpu, Figure, Run, Sides, Wire, closed_loop, hand};

/// Longest time spent loading the stream.
const MAX_LOAD: Duration = Duration::from_secs(5);

/// Measures both sides.
///
/// # Errors
/// When connecting fails, the stream cannot be loaded, or a consumer cannot be made.
pub async fn run(b: &Bench) -> anyhow::Result<Figure> {
    let event_type: EventType = "bench.consume".parse()?;
    let wire = Arc::new(Wire::new(&Envelope::event(&event_type, b.payload.clone()))?);
    let bus = b.connect("consume").await?;
    let subject = bus.subjects().events(&event_type);

    let load = closed_loop(
        IN_FLIGHT,
        (b.duration / 2).min(MAX_LOAD),
        raw_publisher(&bus, subject.clone().into(), wire.clone()),
    )
    .await
    .require_ops("loading the stream")?;
    let stored = load.ops;
    b.progress(format!("durable_consume: {stored} events stored"));

    let progress = Progress::new();
    let p = progress.clone();
    let mut config = DurableConfig::new("bench_weft", vec![event_type.as_str().parse()?]);
    config.deliver_all = true;
    let concurrency = config.concurrency;
    let handle = consumer::start(&bus, config, move |_: Delivery| {
        p.tick();
        async { Ok(()) }
    })
    .await?;
    let weft = progress.wait(stored, b.duration).await;
    handle.stop().await;

    let bus = b.connect("consume").await?;
    let stream = bus
        .jetstream()
        .get_stream(&bus.names().events_stream)
        .await?;
    let hand = pull_side(&stream, "bench_hand", &subject, true, stored, b.duration).await?;
    let raw = pull_side(&stream, "bench_raw", &subject, false, stored, b.duration).await?;
    // The next round makes them anew.
    for name in ["bench_weft", "bench_hand", "bench_raw"] {
        stream.delete_consumer(name).await?;
    }

    Ok(Figure::rate(
        "durable_consume",
        "msgs/s",
        Sides::all(weft, hand, raw).require_ops("durable_consume")?,
    )
    .message_bytes(wire.message_bytes())
    .note(format!(
        "{stored} stored events; weft: {concurrency} handlers at once (default); hand and raw: one loop, ack() per message"
    )))
}

/// A twin's side: a new durable pull consumer `name` of everything stored on
/// `subject`, with Weft's default configuration, read in one loop that decodes each
/// message into a `Value` when `decode` and acks it, until `stored` messages are
/// handled or `duration` has passed.
async fn pull_side(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    subject: &str,
    decode: bool,
    stored: u64,
    duration: Duration,
) -> anyhow::Result<Run> {
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subjects: vec![subject.into()],
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let progress = Progress::new();
    let mut messages = consumer.messages().await?;
    let p = progress.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            let handled = m.map_err(|e| e.to_string()).and_then(|m| {
                if decode {
                    hand::decode(&m.payload)?;
                }
                Ok(m)
            });
            match handled {
                Ok(m) => match m.ack().await {
                    Ok(()) => p.tick(),
                    Err(e) => p.error(e.to_string()),
                },
                Err(e) => p.error(e),
            }
        }
    });
    let run = progress.wait(stored, duration).await;
    task.abort();
    Ok(run)
}

/// Handled messages, counted by a consumer's handler.
#[derive(Clone)]
struct Progress(Arc<ProgressInner>);

struct ProgressInner {
    origin: Instant,
    /// CPU used when it was made.
    cpu: Cpu,
    handled: AtomicU64,
    errors: AtomicU64,
    /// When the first message was handled, in ns since `origin` (`u64::MAX` before).
    first_ns: AtomicU64,
    /// When the last message was handled, in ns since `origin`.
    last_ns: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Progress {
    fn new() -> Progress {
        Progress(Arc::new(ProgressInner {
            origin: Instant::now(),
            cpu: Cpu::now(),
            handled: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            first_error: Default::default(),
        }))
    }

    fn tick(&self) {
        self.0.handled.fetch_add(1, Ordering::Relaxed);
        let now = self.0.origin.elapsed().as_nanos() as u64;
        self.0.first_ns.fetch_min(now, Ordering::Relaxed);
        self.0.last_ns.fetch_max(now, Ordering::Relaxed);
    }

    fn error(&self, e: String) {
        self.0.errors.fetch_add(1, Ordering::Relaxed);
        self.0
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }

    /// Waits until `target` messages are handled or `duration` has passed.
    async fn wait(&self, target: u64, duration: Duration) -> Run {
        let i = &self.0;
        while i.handled.load(Ordering::Relaxed) < target && i.origin.elapsed() < duration {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let handled = i.handled.load(Ordering::Relaxed);
        let (first, last) = (
            i.first_ns.load(Ordering::Relaxed),
            i.last_ns.load(Ordering::Relaxed),
        );
        // First to last spans `handled - 1` intervals; scaled to `handled` of them.
        let span_ms = last.saturating_sub(first) as f64 / 1e6;
        Run {
            ops: handled,
            errors: i.errors.load(Ordering::Relaxed),
            dropped: None,
            elapsed_ms: span_ms * handled as f64 / handled.saturating_sub(1).max(1) as f64,
            first_error: i
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..Run::default()
        }
        .cpu_since(i.cpu)
    }
}
