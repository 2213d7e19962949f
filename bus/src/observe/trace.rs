//! W3C trace context over NATS (DESIGN §7): `traceparent`/`tracestate` travel in NATS
//! headers and are mirrored into the envelope's `traceparent`, `trace_id` and `span_id`,
//! so one trace covers gateway → flow → agent → service.
//!
//! Spans are `tracing` spans; they become OpenTelemetry spans when the process installs
//! a [`tracing_opentelemetry`] layer and the W3C propagator
//! (`opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())`),
//! as `weft::telemetry::init` does when span export is on (`OTEL_EXPORTER_OTLP_ENDPOINT`)
//! or the logs are JSON (which carry trace and span ids). Without
//! them, an incoming `traceparent` is passed through unchanged, so the trace id still
//! links the hops that do export.
//!
//! # Spans
//!
//! They follow the OpenTelemetry messaging semantic conventions (experimental, as of
//! semconv 1.37): the span name is `{messaging.operation.name} {destination}`, where
//! the destination is a low-cardinality template for event subjects
//! (`weft.events.{event_type}`) and the subject itself for invoke subjects (one per
//! service endpoint). Run ids, event ids and event types are attributes, never in
//! names.
//!
//! | span | kind | `messaging.operation.name` / `.type` | where |
//! |---|---|---|---|
//! | `publish P.events.{event_type}` | PRODUCER | `publish` / `send` | [`Bus::publish`](crate::Bus::publish), fire-and-forget publishes |
//! | `send P.invoke.<target>` | CLIENT | `send` / `send` | [`Bus::request`](crate::Bus::request) and streaming invokes |
//! | `receive P.invoke.<target>` | SERVER | `receive` / `receive` | a service handling a request ([`crate::service`]) |
//! | `process P.events.{event_type}` | CONSUMER | `process` / `process` | a durable subscriber handling a delivery ([`crate::durable::consumer`]) |
//!
//! Every messaging span has `messaging.system = "nats"`, `messaging.destination.name`
//! (the subject), `messaging.message.id` (the envelope's `event_id`) and, where one
//! applies, `messaging.destination.template`, `messaging.consumer.group.name` (the
//! durable consumer, or the queue group `q` of a service) and
//! `messaging.message.body.size` (bytes). Weft's own attributes are under `weft.`
//! (`weft.delivery.attempt`, `weft.stream.sequence`, `weft.replayed`,
//! `weft.service`, `weft.endpoint`, `weft.stream`). A failed span has status ERROR
//! and `error.type` (an error code such as `AGENT_TIMEOUT`, or an
//! [`ErrorKind`](crate::ErrorKind) name). Integers are recorded as `i64`, so they
//! arrive as integers (tracing-opentelemetry turns `u64` fields into strings).

/// A messaging span (see the table above): `$operation {destination}`, its kind, the
/// `messaging.*` attributes every messaging span has, and the span's own fields
/// after them. Field values are evaluated only when the span is enabled.
macro_rules! messaging_span {
    (
        $operation:literal, $kind:literal, $type:literal,
        name = $name:expr, destination = $destination:expr, message_id = $id:expr
        $(, $($field:tt)+)?
    ) => {
        tracing::info_span!(
            $operation,
            otel.name = %format_args!("{} {}", $operation, $name),
            otel.kind = $kind,
            messaging.system = "nats",
            messaging.operation.name = $operation,
            messaging.operation.type = $type,
            messaging.destination.name = %$destination,
            messaging.message.id = %$id
            $(, $($field)+)?
        )
    };
}
pub(crate) use messaging_span;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::envelope::{Envelope, MSG_ID_HEADER};

/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Reads trace headers, falling back to the envelope's `traceparent`.
struct Carrier<'a> {
    headers: Option<&'a HeaderMap>,
    envelope: Option<&'a Envelope>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .and_then(|h| h.get(key))
            .map(|v| v.as_str())
            .or_else(|| {
                (key == TRACEPARENT)
                    .then(|| self.envelope.and_then(|e| e.traceparent.as_deref()))
                    .flatten()
            })
            .filter(|v| !v.is_empty())
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter(|k| self.get(k).is_some())
            .collect()
    }
}

/// Writes the current span's trace context into `headers` and mirrors it into `env`
/// (`traceparent`, `trace_id`, `span_id`). When there is no current OpenTelemetry
/// context, the envelope's own `traceparent` (e.g. inherited from the request that
/// caused it) goes into the headers unchanged.
pub fn inject(env: &mut Envelope, headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(headers))
        });
        if let Some(tp) = headers.get(TRACEPARENT) {
            env.traceparent = Some(tp.as_str().to_owned());
            env.trace_id = Some(sc.trace_id().to_string());
            env.span_id = Some(sc.span_id().to_string());
            return;
        }
    }
    if let Some(tp) = env.traceparent.as_deref().filter(|t| !t.is_empty()) {
        headers.insert(TRACEPARENT, tp);
    }
}

/// The envelope to send and its NATS headers: when a span with an OpenTelemetry
/// context is current, a copy of `env` carrying that context ([`inject`]); otherwise
/// `env` itself, with `Nats-Msg-Id` and its own `traceparent` (no copy on the hot path
/// of a process that does not trace).
pub fn outgoing(env: &Envelope) -> (std::borrow::Cow<'_, Envelope>, HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        let mut copy = env.clone();
        let headers = outgoing_headers(&mut copy);
        (std::borrow::Cow::Owned(copy), headers)
    } else {
        (std::borrow::Cow::Borrowed(env), headers_for(env))
    }
}

/// The NATS headers of an envelope: `Nats-Msg-Id` and `traceparent`.
pub fn headers_for(env: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID_HEADER, env.event_id.as_str());
    if let Some(tp) = env.traceparent.as_deref().filter(|t| !t.is_empty()) {
        h.insert(TRACEPARENT, tp);
    }
    h
}

/// The NATS headers of an outgoing envelope: `Nats-Msg-Id: <event_id>` and the trace
/// context written by [`inject`] (which also mirrors it into `env`).
pub fn outgoing_headers(env: &mut Envelope) -> HeaderMap {
    let mut headers = HeaderMap::new();
    inject(env, &mut headers);
    headers.insert(MSG_ID_HEADER, env.event_id.as_str());
    headers
}

/// Copies the trace context headers (`traceparent`, `tracestate`) of `from`, if any,
/// into `to`: a dead letter or a replayed copy stays in the trace of the original.
pub fn copy_context(from: Option<&HeaderMap>, to: &mut HeaderMap) {
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(v) = from.and_then(|h| h.get(name)) {
            to.insert(name, v.as_str());
        }
    }
}

/// Makes `span` a child of the trace context carried by `headers` (or, failing that,
/// by the envelope's `traceparent`). Does nothing when neither carries a valid one.
pub fn set_parent(span: &tracing::Span, headers: Option<&HeaderMap>, envelope: Option<&Envelope>) {
    let carrier = Carrier { headers, envelope };
    // Most messages of an untraced mesh carry no context: skip the propagator (a
    // global lock and a parse) for them, and for spans no subscriber records.
    if span.is_disabled() || carrier.get(TRACEPARENT).is_none() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of the current span, as 32 hex digits, when there is one.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// What an error says for the span it failed: `error.type`, the OpenTelemetry
/// attribute naming the class of error (low cardinality).
pub trait ErrorType {
    /// E.g. `AGENT_TIMEOUT`, `timeout`, `permanent`.
    fn error_type(&self) -> std::borrow::Cow<'_, str>;
}

impl ErrorType for crate::envelope::ErrorPayload {
    fn error_type(&self) -> std::borrow::Cow<'_, str> {
        self.code.as_str().into()
    }
}

impl ErrorType for crate::Error {
    fn error_type(&self) -> std::borrow::Cow<'_, str> {
        match self.remote() {
            Some(remote) => remote.code.as_str().to_owned().into(),
            None => self.kind().as_str().into(),
        }
    }
}

/// Marks `span` failed: OpenTelemetry status ERROR with `error` as its description,
/// and the `error.type` attribute. A no-op when spans are not exported.
pub fn record_error(span: &tracing::Span, error: &(impl ErrorType + std::fmt::Display)) {
    span.set_attribute("error.type", error.error_type().into_owned());
    span.set_status(opentelemetry::trace::Status::error(error.to_string()));
}

/// Sets an attribute whose value is a list of strings (e.g.
/// `gen_ai.response.finish_reasons`), which `tracing` fields cannot express. A no-op
/// when spans are not exported.
pub fn set_strings(span: &tracing::Span, key: &'static str, values: Vec<String>) {
    let values: Vec<opentelemetry::StringValue> = values.into_iter().map(Into::into).collect();
    span.set_attribute(key, opentelemetry::Value::Array(values.into()));
}
