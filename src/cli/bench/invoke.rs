//! `invoke_latency` (sequential request-reply, p50 and p99 µs) and
//! `invoke_throughput` (request-reply with 64 in flight, req/s).
//!
//! The responder and the caller use separate connections.
//!
//! - Weft: a [`Service`] `bench` with a no-op endpoint `noop` (answers `null`),
//!   called with [`weft_bus::Bus::invoke`]: request envelope built, validated and
//!   encoded; the reply decoded and checked.
//! - Hand ([`super::hand`]): a core NATS queue subscription on the same subject
//!   decoding each request into a `Value` and answering with a reply built and encoded
//!   for it (`correlation_id` = the request's `event_id`), called with
//!   `Client::send_request` carrying a request built and encoded per call, the reply
//!   decoded into a `Value`.
//! - Raw: a core NATS queue subscription on the same subject answering with the bytes
//!   of Weft's reply envelope, called with `Client::send_request` carrying the bytes
//!   of Weft's request envelope (same headers, same `reply_to` length).

use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;
use weft_bus::envelope::FrameType;
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::{Bus, Envelope, Target};

use super::hand::{self, Shape};
use super::{
    Bench, Figure, OpFuture, Run, Sides, Wire, latency_figures, one_at_a_time, warm_and_measure,
};

/// Requests awaiting their reply at once in `invoke_throughput`.
pub const IN_FLIGHT: usize = 64;

/// The no-op endpoint both sides call: `bench.noop`.
pub fn target() -> anyhow::Result<Target> {
    Ok(Target::endpoint("bench".parse()?, "noop")?)
}

/// Serves `bench.noop` through Weft: a no-op handler answering `null`. `served`
/// counts requests.
pub async fn serve_noop(
    bus: &Bus,
    served: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> anyhow::Result<ServiceHandle> {
    let service = Service::new("bench", "1.0.0")
        .description("weft bench: a no-op endpoint")
        .endpoint(Endpoint::new("noop", move |_: Request| {
            if let Some(s) = &served {
                s.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            async { Ok(Value::Null) }
        }))
        .serve(bus)
        .await?;
    // Callers on other connections get "no responders" until the server has the
    // subscriptions: a flush is a round trip after them.
    bus.client().flush().await?;
    Ok(service)
}

/// Weft's request envelope to `bench.noop` (with a `reply_to` inbox of `client`'s
/// shape) and Weft's reply to it: the templates of both twins.
fn exchange(b: &Bench, client: &async_nats::Client) -> anyhow::Result<(Envelope, Envelope)> {
    let mut request = Envelope::request(target()?.to_string(), b.payload.clone());
    request.reply_to = Some(client.new_inbox());
    request.frame_type = Some(FrameType::Request);
    let reply = request.reply(FrameType::Final, Value::Null);
    Ok((request, reply))
}

/// The raw twin's request and reply templates (see [`exchange`]).
pub struct RawWires {
    /// Weft's request envelope to `bench.noop`.
    pub request: Wire,
    /// Weft's reply to it.
    pub reply: Arc<Wire>,
}

pub fn raw_wires(b: &Bench, client: &async_nats::Client) -> anyhow::Result<RawWires> {
    let (request, reply) = exchange(b, client)?;
    Ok(RawWires {
        request: Wire::new(&request)?,
        reply: Arc::new(Wire::new(&reply)?),
    })
}

/// The hand twin's request and reply shapes (see [`exchange`]).
pub fn hand_shapes(
    b: &Bench,
    client: &async_nats::Client,
) -> anyhow::Result<(Arc<Shape>, Arc<Shape>)> {
    let (request, reply) = exchange(b, client)?;
    Ok((Arc::new(Shape::of(&request)?), Arc::new(Shape::of(&reply)?)))
}

/// Answers every request on `bench.noop` (queue group `q`) with the next reply of
/// `wire`, until the returned task is aborted.
pub async fn serve_raw(bus: &Bus, wire: Arc<Wire>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    serve_core(bus, move |_| Some(wire.next())).await
}

/// Answers every request on `bench.noop` (queue group `q`) as a hand-written
/// responder: the request decoded into a `Value`, a reply of `shape` built and encoded
/// for it; a request that is not a JSON object gets no reply. Until the returned task
/// is aborted.
pub async fn serve_hand(
    bus: &Bus,
    shape: Arc<Shape>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    serve_core(bus, move |m| {
        let request = hand::decode(&m.payload).ok()?;
        Some(shape.reply_to(&request))
    })
    .await
}

/// Answers every request on `bench.noop` (queue group `q`) with what `answer` makes of
/// it, one at a time, until the returned task is aborted.
async fn serve_core(
    bus: &Bus,
    answer: impl Fn(&async_nats::Message) -> Option<(Vec<u8>, async_nats::HeaderMap)> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = bus.client().clone();
    let subject = bus.subjects().invoke(&target()?);
    let mut requests = client.queue_subscribe(subject, "q".into()).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let (Some(reply), Some((bytes, headers))) = (m.reply.clone(), answer(&m)) {
                let _ = client
                    .publish_with_headers(reply, headers, bytes.into())
                    .await;
            }
        }
    }))
}

/// One Weft invoke of `bench.noop`.
pub fn weft_caller(
    bus: &Bus,
    b: &Bench,
) -> anyhow::Result<impl Fn() -> OpFuture + Clone + Send + Sync + 'static> {
    let shared = Arc::new((bus.clone(), target()?, b.payload.clone()));
    Ok(move || -> OpFuture {
        let shared = shared.clone();
        Box::pin(async move {
            let (bus, target, payload) = &*shared;
            bus.invoke(target, payload.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })
}

/// One raw request of `bench.noop` with the next request of `wire`.
pub fn raw_caller(
    bus: &Bus,
    wire: Arc<Wire>,
) -> anyhow::Result<impl Fn() -> OpFuture + Clone + Send + Sync + 'static> {
    core_caller(bus, move || wire.next(), |_| Ok(()))
}

/// One hand-written request of `bench.noop`: a request of `shape` built and encoded,
/// the reply decoded into a `Value`.
pub fn hand_caller(
    bus: &Bus,
    shape: Arc<Shape>,
) -> anyhow::Result<impl Fn() -> OpFuture + Clone + Send + Sync + 'static> {
    core_caller(
        bus,
        move || shape.message(),
        |reply| hand::decode(reply).map(|_| ()),
    )
}

/// One core NATS request of `bench.noop` with the message `next` makes, the reply's
/// payload checked by `check`.
fn core_caller(
    bus: &Bus,
    next: impl Fn() -> (Vec<u8>, async_nats::HeaderMap) + Send + Sync + 'static,
    check: fn(&[u8]) -> Result<(), String>,
) -> anyhow::Result<impl Fn() -> OpFuture + Clone + Send + Sync + 'static> {
    let client = bus.client().clone();
    let subject = async_nats::Subject::from(bus.subjects().invoke(&target()?));
    let next = Arc::new(next);
    Ok(move || -> OpFuture {
        let (client, subject, next) = (client.clone(), subject.clone(), next.clone());
        Box::pin(async move {
            let (bytes, headers) = next();
            let reply = client
                .send_request(
                    subject,
                    async_nats::Request::new()
                        .headers(headers)
                        .payload(bytes.into()),
                )
                .await
                .map_err(|e| e.to_string())?;
            check(&reply.payload)
        })
    })
}

/// A side's responder, running until stopped.
enum Responder {
    Weft(Box<ServiceHandle>),
    Twin(tokio::task::JoinHandle<()>),
}

impl Responder {
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Responder::Weft(service) => (*service).stop().await?,
            Responder::Twin(task) => task.abort(),
        }
        Ok(())
    }
}

/// One operation of a side: its invoke of `bench.noop`.
pub type Caller = Arc<dyn Fn() -> OpFuture + Send + Sync>;

/// Which side of the bench.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// Through Weft.
    Weft,
    /// The hand-written twin.
    Hand,
    /// The raw twin.
    Raw,
}

/// Starts `side`'s responder of `bench.noop` on a connection of its own, runs `measure`
/// with that side's caller on another, stops the responder, and returns what
/// `measure` returned and the bytes of one request on the wire.
///
/// # Errors
/// When connecting or serving fails.
pub async fn with_side<T>(
    b: &Bench,
    side: Side,
    measure: impl AsyncFnOnce(Caller) -> T,
) -> anyhow::Result<(T, usize)> {
    let (server, client) = (b.connect("service").await?, b.connect("client").await?);
    let wires = raw_wires(b, client.client())?;
    let message_bytes = wires.request.message_bytes();
    let (responder, caller): (_, Caller) = match side {
        Side::Weft => (
            Responder::Weft(Box::new(serve_noop(&server, None).await?)),
            Arc::new(weft_caller(&client, b)?),
        ),
        Side::Hand => {
            let (request, reply) = hand_shapes(b, client.client())?;
            (
                Responder::Twin(serve_hand(&server, reply).await?),
                Arc::new(hand_caller(&client, request)?),
            )
        }
        Side::Raw => (
            Responder::Twin(serve_raw(&server, wires.reply.clone()).await?),
            Arc::new(raw_caller(&client, Arc::new(wires.request))?),
        ),
    };
    let out = measure(caller).await;
    responder.stop().await?;
    Ok((out, message_bytes))
}

/// Measures `invoke_latency_p50` and `invoke_latency_p99`.
///
/// # Errors
/// When connecting or serving fails, or a side gets no reply.
pub async fn latency(b: &Bench) -> anyhow::Result<Vec<Figure>> {
    let timed =
        async |side| with_side(b, side, async |op| sequential(b, async || op().await).await).await;
    let (weft, message_bytes) = timed(Side::Weft).await?;
    let (hand, _) = timed(Side::Hand).await?;
    let (raw, _) = timed(Side::Raw).await?;
    let quantiles = [("invoke_latency_p50", 0.5), ("invoke_latency_p99", 0.99)];
    Ok(
        latency_figures(&quantiles, Sides::all(weft, hand, raw), "invoke_latency")?
            .into_iter()
            .map(|f| f.message_bytes(message_bytes).note("one request at a time"))
            .collect(),
    )
}

/// Warms up, then times `op` one request at a time.
pub async fn sequential(
    b: &Bench,
    op: impl AsyncFn() -> Result<(), String>,
) -> (Run, Vec<std::time::Duration>) {
    one_at_a_time(b.warmup, &op).await;
    one_at_a_time(b.duration, &op).await
}

/// Measures `invoke_throughput`.
///
/// # Errors
/// When connecting or serving fails, or a side gets no reply.
pub async fn throughput(b: &Bench) -> anyhow::Result<Figure> {
    let rate = async |side| {
        with_side(b, side, async |op| {
            warm_and_measure(b, IN_FLIGHT, move || op()).await
        })
        .await
    };
    let (weft, message_bytes) = rate(Side::Weft).await?;
    let (hand, _) = rate(Side::Hand).await?;
    let (raw, _) = rate(Side::Raw).await?;
    Ok(Figure::rate(
        "invoke_throughput",
        "req/s",
        Sides::all(weft, hand, raw).require_ops("invoke_throughput")?,
    )
    .message_bytes(message_bytes)
    .note(format!("{IN_FLIGHT} requests awaiting their reply at once")))
}
