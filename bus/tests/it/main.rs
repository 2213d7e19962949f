//! Integration tests of weft-bus against a real nats-server.

mod durable;
mod envelope_golden;
mod envelope_props;
mod invoke;
mod middleware;
mod registry;
mod replay;
mod stream;
mod subject_props;
