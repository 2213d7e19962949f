//! # Weft
//!
//! An event mesh for services, agents and flows over NATS. This facade re-exports the
//! crates a Weft application uses; the `weft` binary is the operator's CLI.
//!
//! | crate | what |
//! |---|---|
//! | [`bus`] | envelope, subjects, publish/subscribe, invoke, services, registry, durable consumers, dead letters, metrics |
//! | [`agents`] | agents: model providers, the tool loop, memory |
//! | [`flows`] | durable flows, every step journaled |
//! | [`gateway`] | the HTTP gateway |
//! | [`telemetry`] | logs on stderr (text or JSON lines with trace ids) and OpenTelemetry span export (OTLP/HTTP) |
//!
//! Start with the README and `docs/protocol.md`.

pub mod telemetry;

pub use weft_agents as agents;
pub use weft_bus as bus;
pub use weft_flows as flows;
pub use weft_gateway as gateway;
