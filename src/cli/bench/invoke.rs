//! `invoke_latency` (sequential request-reply, p50 and p99 µs) and
//! `invoke_throughput` (request-reply with 64 in flight, req/s).
//!
//! The responder and the caller use separate connections.
//!
//! - Weft: a [`Service`] `bench` with a no-op endpoint `noop` (answers `null`),
//!   called with [`weft_bus::Bus::invoke`]: request envelope built, validated and
//!   encoded; the reply decoded and checked.
//! - Raw: a core NATS queue subscription on the same subject answering with the bytes
//!   of Weft's reply envelope, called with `Client::send_request` carrying the bytes
//!   of Weft's request envelope (same headers, same `reply_to` length).

use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;
use weft_bus::envelope::FrameType;
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::{Bus, Envelope, Target};

use super::{
    Bench, Better, Counts, Figure, OpFuture, Run, Wire, one_at_a_time, quantile_us,
    warm_and_measure,
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

/// The raw twin's request and reply templates: Weft's request envelope (with a
/// `reply_to` inbox of the client's shape) and Weft's reply to it.
pub struct RawWires {
    /// Weft's request envelope to `bench.noop`.
    pub request: Wire,
    /// Weft's reply to it.
    pub reply: Arc<Wire>,
}

pub fn raw_wires(b: &Bench, client: &async_nats::Client) -> anyhow::Result<RawWires> {
    let mut request = Envelope::request(target()?.to_string(), b.payload.clone());
    request.reply_to = Some(client.new_inbox());
    request.frame_type = Some(FrameType::Request);
    let reply = request.reply(FrameType::Final, Value::Null);
    Ok(RawWires {
        request: Wire::new(&request)?,
        reply: Arc::new(Wire::new(&reply)?),
    })
}

/// Answers every request on `bench.noop` (queue group `q`) with the next reply of
/// `wire`, until the returned task is aborted.
pub async fn serve_raw(bus: &Bus, wire: Arc<Wire>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = bus.client().clone();
    let subject = bus.subjects().invoke(&target()?);
    let mut requests = client.queue_subscribe(subject, "q".into()).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let (bytes, headers) = wire.next();
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
    let client = bus.client().clone();
    let subject = async_nats::Subject::from(bus.subjects().invoke(&target()?));
    Ok(move || -> OpFuture {
        let (client, subject, wire) = (client.clone(), subject.clone(), wire.clone());
        Box::pin(async move {
            let (bytes, headers) = wire.next();
            client
                .send_request(
                    subject,
                    async_nats::Request::new()
                        .headers(headers)
                        .payload(bytes.into()),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })
}

/// Both sides' callers, each with its responder running.
enum Side {
    Weft(Box<ServiceHandle>),
    Raw(tokio::task::JoinHandle<()>),
}

impl Side {
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Side::Weft(service) => (*service).stop().await?,
            Side::Raw(task) => task.abort(),
        }
        Ok(())
    }
}

/// Measures `invoke_latency_p50` and `invoke_latency_p99`.
///
/// # Errors
/// When connecting or serving fails, or a side gets no reply.
pub async fn latency(b: &Bench) -> anyhow::Result<Vec<Figure>> {
    let (server, client) = (b.connect("service").await?, b.connect("client").await?);
    let side = Side::Weft(Box::new(serve_noop(&server, None).await?));
    let op = weft_caller(&client, b)?;
    let (weft, mut weft_times) = sequential(b, async || op().await).await;
    side.stop().await?;

    let (server, client) = (b.connect("service").await?, b.connect("client").await?);
    let wires = raw_wires(b, client.client())?;
    let message_bytes = wires.request.message_bytes();
    let side = Side::Raw(serve_raw(&server, wires.reply.clone()).await?);
    let op = raw_caller(&client, Arc::new(wires.request))?;
    let (raw, mut raw_times) = sequential(b, async || op().await).await;
    side.stop().await?;

    let weft = weft.require_ops("weft invoke_latency")?;
    let raw = raw.require_ops("raw invoke_latency")?;
    let counts = Counts {
        weft,
        raw: Some(raw),
    };
    let figure = |name, p: f64, weft_times: &mut [_], raw_times: &mut [_]| {
        Figure::compare(
            name,
            "µs",
            Better::Lower,
            (quantile_us(weft_times, p), quantile_us(raw_times, p)),
            counts.clone(),
        )
        .message_bytes(message_bytes)
        .note("one request at a time")
    };
    Ok(vec![
        figure("invoke_latency_p50", 0.5, &mut weft_times, &mut raw_times),
        figure("invoke_latency_p99", 0.99, &mut weft_times, &mut raw_times),
    ])
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
    let (server, client) = (b.connect("service").await?, b.connect("client").await?);
    let side = Side::Weft(Box::new(serve_noop(&server, None).await?));
    let weft = warm_and_measure(b, IN_FLIGHT, weft_caller(&client, b)?).await;
    side.stop().await?;

    let (server, client) = (b.connect("service").await?, b.connect("client").await?);
    let wires = raw_wires(b, client.client())?;
    let message_bytes = wires.request.message_bytes();
    let side = Side::Raw(serve_raw(&server, wires.reply.clone()).await?);
    let raw = warm_and_measure(b, IN_FLIGHT, raw_caller(&client, Arc::new(wires.request))?).await;
    side.stop().await?;

    Ok(Figure::rate(
        "invoke_throughput",
        "req/s",
        weft.require_ops("weft invoke_throughput")?,
        raw.require_ops("raw invoke_throughput")?,
    )
    .message_bytes(message_bytes)
    .note(format!("{IN_FLIGHT} requests awaiting their reply at once")))
}
