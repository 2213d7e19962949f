//! `pubsub`: fire-and-forget publish → core subscription, msgs/s.
//!
//! One connection publishes as fast as it can for the duration, another subscribes to
//! `P.bench.pubsub` (outside every stream, so JetStream stores nothing) and counts.
//!
//! - Weft: [`weft_bus::Bus::publish_fire_and_forget`] of a new event envelope per message (new
//!   id and time, encoded), [`weft_bus::Bus::subscribe_subject`] decoding and validating every
//!   envelope.
//! - Hand ([`super::hand`]): `Client::publish_with_headers` of the envelope-shaped JSON
//!   built and encoded per message, `Client::subscribe` decoding each into a `Value`.
//! - Raw: `Client::publish_with_headers` of the same bytes and headers,
//!   `Client::subscribe` counting messages.
//!
//! The rate is messages received per second, from the first publish to the last
//! message received. The publisher stays at most [`WINDOW`] messages ahead of the
//! subscriber, so the figure is the rate the pair sustains, not how fast a publisher
//! can overrun a subscriber on shared cores. A subscriber that still falls behind loses
//! messages inside its client (slow consumer): they are counted as drops
//! (sent − received), never waited for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use weft_bus::subscribe::Received;
use weft_bus::{Envelope, EventType};

use super::hand::{self, Shape};
use super::{Bench, Figure, Run, Sides, Wire};

/// The publisher stays at most this many messages ahead of the subscriber: a quarter of
/// the client's subscription buffer (65,536 messages), so the subscriber's client never
/// has to drop, and on a machine where publisher, subscriber and server share the cores
/// a publisher running ahead does not take the CPU the subscriber needs.
const WINDOW: u64 = 16_384;
/// The subscriber is done when nothing arrived for this long after the last publish…
const IDLE: Duration = Duration::from_millis(200);
/// … or after this long at most.
const DRAIN_MAX: Duration = Duration::from_secs(3);

/// Measures both sides.
///
/// # Errors
/// When connecting or subscribing fails, or a side receives nothing.
pub async fn run(b: &Bench) -> anyhow::Result<Figure> {
    let subject = b.subject("pubsub");
    let event_type: EventType = "bench.pubsub".parse()?;
    let wire = Wire::new(&Envelope::event(&event_type, b.payload.clone()))?;

    let (publisher, subscriber) = (b.connect("pub").await?, b.connect("sub").await?);
    let counting = Counting::start(
        subscriber.subscribe_subject(&subject, None).await?,
        |r: &Received| r.envelope.is_ok(),
    );
    subscriber.client().flush().await?;
    let weft = measure(b, publisher.client(), counting, async || {
        let env = Envelope::event(&event_type, b.payload.clone());
        publisher
            .publish_fire_and_forget(&subject, &env)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    drop((publisher, subscriber));

    let shape = Shape::of(&Envelope::event(&event_type, b.payload.clone()))?;
    let decoded = |m: &async_nats::Message| hand::decode(&m.payload).is_ok();
    let hand = core_side(b, &subject, decoded, || shape.message()).await?;
    let raw = core_side(b, &subject, |_| true, || wire.next()).await?;

    Ok(Figure::rate(
        "pubsub",
        "msgs/s",
        Sides::all(weft, hand, raw).require_ops("pubsub")?,
    )
    .message_bytes(wire.message_bytes())
    .note("messages received per second"))
}

/// A twin's side on bare clients: `publish_with_headers` of the messages `next` makes,
/// a subscriber counting what arrives on `subject` and what `valid` accepts.
async fn core_side(
    b: &Bench,
    subject: &str,
    valid: fn(&async_nats::Message) -> bool,
    next: impl Fn() -> (Vec<u8>, async_nats::HeaderMap),
) -> anyhow::Result<Run> {
    let (pub_bus, sub_bus) = (b.connect("pub").await?, b.connect("sub").await?);
    let (publisher, subscriber) = (pub_bus.client(), sub_bus.client());
    let counting = Counting::start(subscriber.subscribe(subject.to_owned()).await?, valid);
    subscriber.flush().await?;
    let subject = async_nats::Subject::from(subject);
    Ok(measure(b, publisher, counting, async || {
        let (bytes, headers) = next();
        publisher
            .publish_with_headers(subject.clone(), headers, bytes.into())
            .await
            .map_err(|e| e.to_string())
    })
    .await)
}

/// A task counting what a subscription delivers, until stopped.
struct Counting {
    received: Arc<AtomicU64>,
    invalid: Arc<AtomicU64>,
    /// When the last message arrived, in ns since `origin`.
    last_ns: Arc<AtomicU64>,
    origin: Instant,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    fn start<S, T>(mut stream: S, valid: fn(&T) -> bool) -> Counting
    where
        S: Stream<Item = T> + Send + Unpin + 'static,
        T: Send + 'static,
    {
        let (received, invalid, last_ns) = Default::default();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let origin = Instant::now();
        let (r, i, l): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) = (
            Arc::clone(&received),
            Arc::clone(&invalid),
            Arc::clone(&last_ns),
        );
        let task = tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = &mut stopped => break,
                    item = stream.next() => item,
                };
                let Some(item) = item else { break };
                if valid(&item) { &r } else { &i }.fetch_add(1, Ordering::Relaxed);
                l.store(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        });
        Counting {
            received,
            invalid,
            last_ns,
            origin,
            stop,
            task,
        }
    }

    fn seen(&self) -> u64 {
        self.received.load(Ordering::Relaxed) + self.invalid.load(Ordering::Relaxed)
    }

    /// Waits until `sent` messages arrived, or nothing arrived for [`IDLE`], or
    /// [`DRAIN_MAX`] passed.
    async fn settle(&self, sent: u64) {
        let give_up = Instant::now() + DRAIN_MAX;
        let (mut last, mut quiet_since) = (self.seen(), Instant::now());
        while self.seen() < sent && quiet_since.elapsed() < IDLE && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.seen();
            if now != last {
                (last, quiet_since) = (now, Instant::now());
            }
        }
    }

    /// Waits while the publisher, having sent `sent`, is [`WINDOW`] messages or more
    /// ahead of this subscriber. Returns false when the subscriber made no progress for
    /// [`IDLE`]: messages were lost, and waiting for them would never end.
    async fn keep_up(&self, sent: u64) -> bool {
        let (mut last, mut quiet_since) = (self.seen(), Instant::now());
        while sent.saturating_sub(last) >= WINDOW {
            if quiet_since.elapsed() >= IDLE {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
            let now = self.seen();
            if now != last {
                (last, quiet_since) = (now, Instant::now());
            }
        }
        true
    }

    fn reset(&self) {
        self.received.store(0, Ordering::Relaxed);
        self.invalid.store(0, Ordering::Relaxed);
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// What one publishing phase did.
struct Phase {
    started: Instant,
    sent: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Publishes with `publish` for `length`, never more than [`WINDOW`] messages ahead of
/// what `counting` has seen, then flushes the publisher's connection.
async fn publish_for(
    length: Duration,
    publisher: &async_nats::Client,
    counting: &Counting,
    publish: &mut impl AsyncFnMut() -> Result<(), String>,
) -> Phase {
    let started = Instant::now();
    let (mut sent, mut errors, mut first_error) = (0, 0, None);
    let mut windowed = true;
    while started.elapsed() < length {
        if windowed {
            windowed = counting.keep_up(sent).await;
        }
        match publish().await {
            Ok(()) => sent += 1,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Err(e) = publisher.flush().await {
        first_error.get_or_insert(e.to_string());
    }
    Phase {
        started,
        sent,
        errors,
        first_error,
    }
}

/// Publishes for the warm-up, lets the subscriber settle, then publishes for the
/// duration and counts what arrives.
async fn measure(
    b: &Bench,
    publisher: &async_nats::Client,
    counting: Counting,
    mut publish: impl AsyncFnMut() -> Result<(), String>,
) -> Run {
    let warm = publish_for(b.warmup, publisher, &counting, &mut publish).await;
    counting.settle(warm.sent).await;
    counting.reset();
    let cpu = super::Cpu::now();
    let p = publish_for(b.duration, publisher, &counting, &mut publish).await;
    counting.settle(p.sent).await;
    let received = counting.received.load(Ordering::Relaxed);
    let invalid = counting.invalid.load(Ordering::Relaxed);
    let first_ns = p.started.duration_since(counting.origin).as_nanos() as u64;
    let last_ns = counting.last_ns.load(Ordering::Relaxed).max(first_ns);
    counting.stop().await;
    Run {
        ops: received,
        errors: p.errors + invalid,
        dropped: Some(p.sent.saturating_sub(received + invalid)),
        elapsed_ms: (last_ns - first_ns) as f64 / 1e6,
        first_error: p.first_error.or_else(|| {
            (invalid > 0).then(|| format!("{invalid} messages were not valid envelopes"))
        }),
        ..Run::default()
    }
    .cpu_since(cpu)
}
