//! `durable_publish`: publish with JetStream acks, 256 in flight, msgs/s.
//!
//! - Weft: [`weft_bus::Bus::publish`] of a new event (envelope built, validated and
//!   encoded, then the ack awaited) from 256 tasks at once.
//! - Hand ([`super::hand`]): `jetstream::Context::publish_with_headers` of the
//!   envelope-shaped JSON built and encoded per message, ack awaited, from 256 tasks.
//! - Raw: `jetstream::Context::publish_with_headers` of the same bytes and headers
//!   (a unique `Nats-Msg-Id` each, so de-duplication stores every message), ack
//!   awaited, from 256 tasks at once.
//!
//! Both publish to `P.events.bench.publish`, stored by the bench's events stream.

use std::sync::Arc;

use weft_bus::{Bus, Envelope, EventType};

use super::hand::Shape;
use super::{Bench, Figure, OpFuture, Sides, Wire, warm_and_measure};

/// Publishes awaiting their ack at once.
pub const IN_FLIGHT: usize = 256;

/// Measures both sides.
///
/// # Errors
/// When connecting fails or a side stores nothing.
pub async fn run(b: &Bench) -> anyhow::Result<Figure> {
    let event_type: EventType = "bench.publish".parse()?;
    let wire = Arc::new(Wire::new(&Envelope::event(&event_type, b.payload.clone()))?);

    let bus = b.connect("publish").await?;
    let weft = warm_and_measure(b, IN_FLIGHT, weft_publisher(&bus, event_type.clone(), b)).await;

    let bus = b.connect("publish").await?;
    let subject = async_nats::Subject::from(bus.subjects().events(&event_type));
    let shape = Arc::new(Shape::of(&Envelope::event(&event_type, b.payload.clone()))?);
    let hand = warm_and_measure(
        b,
        IN_FLIGHT,
        js_publisher(&bus, subject.clone(), move || shape.message()),
    )
    .await;

    let bus = b.connect("publish").await?;
    let raw = warm_and_measure(b, IN_FLIGHT, raw_publisher(&bus, subject, wire.clone())).await;

    Ok(Figure::rate(
        "durable_publish",
        "msgs/s",
        Sides::all(weft, hand, raw).require_ops("durable_publish")?,
    )
    .message_bytes(wire.message_bytes())
    .note(format!(
        "{IN_FLIGHT} publishes awaiting their JetStream ack at once"
    )))
}

/// One durable publish of a new event of `event_type` through Weft.
pub fn weft_publisher(
    bus: &Bus,
    event_type: EventType,
    b: &Bench,
) -> impl Fn() -> OpFuture + Clone + Send + Sync + 'static {
    let shared = Arc::new((bus.clone(), event_type, b.payload.clone()));
    move || {
        let shared = shared.clone();
        Box::pin(async move {
            let (bus, event_type, payload) = &*shared;
            bus.publish(event_type, payload.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// One durable publish of the next message of `wire` through the bare JetStream
/// context.
pub fn raw_publisher(
    bus: &Bus,
    subject: async_nats::Subject,
    wire: Arc<Wire>,
) -> impl Fn() -> OpFuture + Clone + Send + Sync + 'static {
    js_publisher(bus, subject, move || wire.next())
}

/// One durable publish through the bare JetStream context of the message `next`
/// makes, the ack awaited.
pub fn js_publisher(
    bus: &Bus,
    subject: async_nats::Subject,
    next: impl Fn() -> (Vec<u8>, async_nats::HeaderMap) + Send + Sync + 'static,
) -> impl Fn() -> OpFuture + Clone + Send + Sync + 'static {
    let (js, next) = (bus.jetstream().clone(), Arc::new(next));
    move || {
        let (js, subject, next) = (js.clone(), subject.clone(), next.clone());
        Box::pin(async move {
            let (bytes, headers) = next();
            js.publish_with_headers(subject, headers, bytes.into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
