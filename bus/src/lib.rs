//! # weft-bus
//!
//! The part of Weft every other part stands on: the [envelope], validated
//! [subjects](subject), the [connection](Bus), durable and fire-and-forget
//! [publish], core [subscriptions](subscribe), [invoke] with
//! request-reply and [streaming](stream), [services](service) that are also NATS micro services, the
//! [registry] (whose endpoints are [tools](tool) for agents and MCP), [durable consumers](consumer) with [retry policies](retry),
//! [dead letters](dlq) and [replay], the
//! mesh's JetStream [resources], [KV helpers](kv), Prometheus [metrics], a local
//! [`nats-server`](server) and, with the `testing` feature, a test harness.
//!
//! The wire contract (subjects, envelope, headers, streams, buckets) is described in
//! `docs/protocol.md`.

pub mod connect;
pub mod consumer;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod invoke;
pub mod kv;
pub mod metrics;
pub mod middleware;
pub mod publish;
pub mod registry;
pub mod replay;
mod reply;
pub mod resources;
pub mod retry;
pub mod runs;
pub mod server;
pub mod service;
pub mod stream;
pub mod subject;
pub mod subscribe;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tool;
pub mod trace;

pub use connect::{Bus, ConnectOptions};
pub use envelope::{Envelope, ErrorCode, ErrorPayload, FrameType};
pub use error::{Error, ErrorKind, Result};
pub use subject::{EventPattern, EventType, Prefix, ServiceName, Target};
