//! Integration tests of weft-bus against a real nats-server.

mod cluster;
mod durable;
mod envelope_golden;
mod envelope_props;
mod invoke;
mod middleware;
mod registry;
mod replay;
mod resources;
mod runs;
mod security;
mod stream;
mod subject_props;
