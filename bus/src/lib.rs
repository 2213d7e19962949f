//! # weft-bus
//!
//! The part of Weft every other part stands on. Its modules, grouped by concept; each
//! group imports only the groups listed before it (see the exceptions below):
//!
//! - **foundation**: the [envelope], validated [subjects](subject), [errors](error),
//!   [retry policies](retry) with back-off, the [connection](Bus) and a local
//!   [`nats-server`](server);
//! - [`observe`]: Prometheus [metrics] and the [trace] context;
//! - [`messaging`]: durable and fire-and-forget [publish], core [subscriptions](subscribe);
//! - [`middleware`]: the tower layers every handler runs through;
//! - [`registry`]: who is on the mesh, with its [KV helpers](kv) and the [tools](tool)
//!   endpoints become for agents and MCP;
//! - [`durable`]: [durable consumers](consumer), [dead letters](dlq), [replay] and the
//!   mesh's JetStream [resources];
//! - [`invoke`]: the caller's side of request-reply and [streaming](stream);
//! - [`service`]: the serving side: endpoints, handlers, streamed replies, NATS micro
//!   services;
//! - [`runs`]: the journal and queue of durable runs;
//! - with the `testing` feature, a test harness.
//!
//! One exception: the [connection](Bus) keeps the connection's reply inbox and
//! registry watch, so `connect` also names those two types.
//!
//! The wire contract (subjects, envelope, headers, streams, buckets) is described in
//! `docs/protocol.md`.

pub mod connect;
pub mod durable;
pub mod envelope;
pub mod error;
pub mod invoke;
pub mod messaging;
pub mod middleware;
pub mod observe;
pub mod registry;
pub mod retry;
pub mod runs;
pub mod server;
pub mod service;
/// Streaming invoke (DESIGN §4) at one path, both halves: the caller's
/// ([`invoke::stream`]: frames, [`FrameStream`](invoke::stream::FrameStream), the wire
/// protocol) and the serving one ([`service::stream`]:
/// [`StreamWriter`](service::stream::StreamWriter)).
pub mod stream {
    pub use crate::invoke::stream::*;
    pub use crate::service::stream::*;
}
pub mod subject;
#[cfg(feature = "testing")]
pub mod testing;

/// Durable delivery's modules at their earlier paths (`weft_bus::consumer`, …).
pub use durable::{consumer, dlq, replay, resources};
/// Core messaging's modules at their earlier paths (`weft_bus::publish`, …).
pub use messaging::{publish, subscribe};
/// Observability's modules at their earlier paths (`weft_bus::metrics`, …).
pub use observe::{metrics, trace};
/// The registry's neighbours at their earlier paths (`weft_bus::kv`, `weft_bus::tool`).
pub use registry::{kv, tool};

pub use connect::{Bus, ConnectOptions};
pub use envelope::{Envelope, ErrorCode, ErrorPayload, FrameType};
pub use error::{Error, ErrorKind, Result};
pub use subject::{EventPattern, EventType, Prefix, ServiceName, Target};
