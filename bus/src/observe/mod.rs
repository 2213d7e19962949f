//! Observability: Prometheus [metrics] and the W3C / OpenTelemetry [trace] context
//! every message carries. Everything above it counts and traces through here; it
//! stands only on the [envelope](crate::envelope) and the [errors](crate::error).

pub mod metrics;
pub mod trace;
