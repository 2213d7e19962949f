//! Prometheus metrics (DESIGN §7): one process-wide [`registry`] that every crate
//! registers into, and the bus's own metrics.
//!
//! All names start with `weft_`; labels are low-cardinality only (service, endpoint,
//! target, consumer, outcome — never an event id, session id or payload value).
//! `docs/operations.md` lists every metric.

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process-wide registry that `/metrics` renders.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::new)
}

/// Renders every registered metric in the Prometheus text format (version 0.0.4).
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&registry().gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Registers and returns a counter vector. For crates adding their own metrics.
///
/// # Panics
/// When `name` is not a valid metric name or is registered twice with other labels
/// (a programming error).
pub fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry()
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// Registers and returns a histogram vector in seconds, with buckets from 1 ms to 60 s.
///
/// # Panics
/// As [`counter`].
pub fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ]),
        labels,
    )
    .expect("valid metric");
    registry()
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// Registers and returns a gauge vector.
///
/// # Panics
/// As [`counter`].
pub fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry()
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// The bus's metrics.
#[derive(Debug, Clone)]
pub struct BusMetrics {
    /// `weft_events_published_total{mode, outcome}`: mode `durable` or
    /// `fire_and_forget`; outcome `ok`, `duplicate` or `error`.
    pub events_published: IntCounterVec,
    /// `weft_invokes_total{target, outcome}`: outcome `ok`, `error` (the handler
    /// answered with an error), `timeout`, `no_responders`, `disconnected` (the
    /// connection was lost while waiting), `denied` (the server refused the publish:
    /// permissions), `transport`.
    pub invokes: IntCounterVec,
    /// `weft_invoke_duration_seconds{target}`: invoke round trip.
    pub invoke_duration: HistogramVec,
    /// `weft_requests_handled_total{service, endpoint, outcome}`: requests a service
    /// handled; outcome `ok` or the error code.
    pub handled: IntCounterVec,
    /// `weft_request_duration_seconds{service, endpoint}`: handler time.
    pub handle_duration: HistogramVec,
    /// `weft_deliveries_total{consumer, outcome}`: durable deliveries; outcome `ack`,
    /// `nak`, `dead_letter`.
    pub deliveries: IntCounterVec,
    /// `weft_handlers_in_flight{consumer}`: durable handlers running now.
    pub in_flight: IntGaugeVec,
    /// `weft_redeliveries_total{consumer}`: deliveries after the first (attempt > 1).
    pub redeliveries: IntCounterVec,
    /// `weft_dead_letters_total{consumer, reason}`: messages dead-lettered; reason
    /// `permanent`, `retries_spent`, `invalid_envelope`, `unacknowledged`.
    pub dead_letters: IntCounterVec,
    /// `weft_replayed_deliveries_total{consumer, outcome}`: the deliveries of
    /// `weft_deliveries_total` that were replayed copies (stored under
    /// `P.replay.<consumer>.…` by [`crate::durable::replay`] or [`crate::durable::dlq::replay`]), counted
    /// by the consumer that handled them; outcome `ack`, `nak`, `dead_letter`.
    pub replayed_deliveries: IntCounterVec,
    /// `weft_consumer_pending{consumer, state}`: sampled from consumer info; state
    /// `pending` (stored, not yet delivered) or `ack_pending` (delivered, not acked).
    pub consumer_pending: IntGaugeVec,
    /// `weft_registry_instances{kind}`: instances this process has registered.
    pub registered: IntGaugeVec,
}

/// The bus's metrics, registered on first use.
pub fn bus() -> &'static BusMetrics {
    static M: OnceLock<BusMetrics> = OnceLock::new();
    M.get_or_init(|| BusMetrics {
        events_published: counter(
            "weft_events_published_total",
            "Events published, by mode (durable, fire_and_forget) and outcome",
            &["mode", "outcome"],
        ),
        invokes: counter(
            "weft_invokes_total",
            "Invokes sent, by target and outcome",
            &["target", "outcome"],
        ),
        invoke_duration: histogram(
            "weft_invoke_duration_seconds",
            "Invoke round-trip time in seconds, by target",
            &["target"],
        ),
        handled: counter(
            "weft_requests_handled_total",
            "Requests handled by services, by service, endpoint and outcome",
            &["service", "endpoint", "outcome"],
        ),
        handle_duration: histogram(
            "weft_request_duration_seconds",
            "Handler time in seconds, by service and endpoint",
            &["service", "endpoint"],
        ),
        deliveries: counter(
            "weft_deliveries_total",
            "Durable consumer deliveries, by consumer and outcome (ack, nak, dead_letter)",
            &["consumer", "outcome"],
        ),
        in_flight: gauge(
            "weft_handlers_in_flight",
            "Durable handlers running now, by consumer",
            &["consumer"],
        ),
        redeliveries: counter(
            "weft_redeliveries_total",
            "Durable deliveries after the first, by consumer",
            &["consumer"],
        ),
        dead_letters: counter(
            "weft_dead_letters_total",
            "Messages dead-lettered, by consumer and reason",
            &["consumer", "reason"],
        ),
        replayed_deliveries: counter(
            "weft_replayed_deliveries_total",
            "Durable deliveries of replayed copies, by consumer and outcome (ack, nak, dead_letter)",
            &["consumer", "outcome"],
        ),
        consumer_pending: gauge(
            "weft_consumer_pending",
            "Messages of a durable consumer by state (pending, ack_pending), sampled",
            &["consumer", "state"],
        ),
        registered: gauge(
            "weft_registry_instances",
            "Registry entries this process keeps alive, by kind",
            &["kind"],
        ),
    })
}
