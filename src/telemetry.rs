//! Logs and traces for Weft processes: `tracing` to stderr (text or JSON lines), and
//! OpenTelemetry span export over OTLP/HTTP when the standard `OTEL_*` environment
//! variables ask for it.
//!
//! # Environment
//!
//! | variable | effect |
//! |---|---|
//! | `RUST_LOG` | the log filter on stderr (default given by the caller, e.g. `warn`) |
//! | `WEFT_LOG_FORMAT` | `text` (default) or `json` (the CLI's `--log-format`), see [`LogFormat`] |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | turns on span export to that collector; spans go to `<endpoint>/v1/traces` |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the same, with the full URL used as it is |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (default, the OTLP specification's) or `http/json`; `grpc` is not built in |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TRACES_HEADERS` | `key=value,…` request headers (e.g. an API key) |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` | export request timeout in milliseconds (default 10000) |
//! | `OTEL_TRACES_EXPORTER` | `otlp` turns export on even without an endpoint (then `http://localhost:4318`); `none` turns it off |
//! | `OTEL_SDK_DISABLED` | `true`: no export, whatever else is set |
//! | `OTEL_SERVICE_NAME` | the `service.name` resource (default: `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `weft`) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `key=value,…` (values percent-encoded) added to the resource; may set `service.version`, `service.instance.id` |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` (default), `always_on`, `always_off`, `traceidratio`, `parentbased_always_off`, `parentbased_traceidratio` (the ratio in `_ARG`, 0..=1, default 1) |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | the batch span processor (delay in ms, default 5000) |
//! | `OTEL_TRACES_FILTER` | which `tracing` spans are exported, a `RUST_LOG`-style filter (default `info`: Weft's spans) |
//!
//! A value this module cannot use (an unknown sampler, a malformed
//! `OTEL_RESOURCE_ATTRIBUTES`, an unsupported protocol) is reported as one `warn` log
//! line when [`init`] runs, saying what is used instead; a protocol or endpoint that
//! cannot work turns export off (with that warning) rather than sending somewhere else.
//!
//! # The resource
//!
//! Every exported span carries `service.name` (above), `service.version` (this crate's
//! version unless `OTEL_RESOURCE_ATTRIBUTES` gives one), `service.instance.id` (a random
//! UUID v4 per process unless `OTEL_RESOURCE_ATTRIBUTES` gives one), the SDK's
//! `telemetry.sdk.name`, `telemetry.sdk.language` and `telemetry.sdk.version`, and
//! every other `OTEL_RESOURCE_ATTRIBUTES` entry (as strings).
//!
//! # What the span layer adds
//!
//! The `tracing` → OpenTelemetry layer ([`span_layer`]) adds `code.file.path`,
//! `code.module.name`, `code.line.number` (where the span was declared) and
//! `thread.id`, `thread.name` (the thread that created it) to every span. It adds no
//! `target` (that would collide with a span field of that name: OTLP attribute keys
//! must be unique), no `level`, and no `busy_ns`/`idle_ns` timings. Span fields become
//! attributes; `otel.name`, `otel.kind`, `otel.status_code` and
//! `otel.status_description` set the span's name, kind and status instead.
//!
//! # For span authors: integers as integers
//!
//! tracing-opentelemetry 0.34 turns `bool`, `i64` (so `i8`…`i32` too), `f64` and `&str`
//! fields into attributes of those types, but has no `record_u64`: `u8`, `u16`, `u32`,
//! `u64`, `usize` and 128-bit integers arrive **as strings** (through `Debug`), as does
//! anything recorded with `?value` or `%value`. So:
//!
//! - record integers as `i64`: `http.response.status_code = i64::from(status.as_u16())`,
//!   `messaging.message.body.size = len as i64` (saturate with
//!   `i64::try_from(n).unwrap_or(i64::MAX)` where a `u64` can exceed it);
//! - `%`/`?` only for values that are text (a subject, an id, an error), never for
//!   numbers or booleans;
//! - declare late fields with `tracing::field::Empty` and `span.record(name, value)`
//!   with the same `i64` rule;
//! - one field per attribute key: a field named like another attribute (`target`,
//!   `code.*`, `thread.*`) would make two attributes with one key.
//!
//! # JSON logs
//!
//! With [`LogFormat::Json`], each log line on stderr is one JSON object:
//!
//! ```text
//! {"timestamp":"2025-06-01T12:00:00.123456Z","level":"WARN","target":"weft_gateway::error","message":"request failed","fields":{"status":503,"code":"AGENT_UNAVAILABLE","error":"…"},"span":{"name":"http","http.request.method":"POST","http.route":"/v1/invoke/{target}"},"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}
//! ```
//!
//! `timestamp` is RFC 3339 in UTC; `fields` (the event's other fields, typed) and
//! `span` (the current span's name and fields) appear when there are some; `trace_id`
//! and `span_id` (W3C hex) are those of the current span's OpenTelemetry context, so a
//! log line joins the exported span it was written in. They are present even when
//! export is off: JSON logs install the OpenTelemetry layer with a tracer that exports
//! nowhere, so a request with a `traceparent` logs that trace id. (The cost: such a
//! process forwards its own span ids in `traceparent`, spans no backend receives; the
//! trace id still links every hop.)
//!
//! Lines a command writes for its user on stderr go through [`say`] / [`say_error`],
//! which print them as JSON objects of the same shape in JSON mode, so every stderr
//! line is JSON then.
//!
//! The W3C trace-context propagator is always installed, so `traceparent` flows
//! through NATS and HTTP headers (see `weft_bus::trace`).

mod json;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{ResourceDetector as _, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines on stderr look (`--log-format`, `WEFT_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format). The default.
    #[default]
    Text,
    /// One JSON object per line with `timestamp`, `level`, `target`, `message`,
    /// `fields`, `span`, `trace_id` and `span_id` (see the module docs).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    /// `text` or `json` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?}: use text or json")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Keeps span export running; dropping it flushes and shuts the exporter down.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// The `tracing` → OpenTelemetry layer as Weft configures it: spans go to `tracer`,
/// without the `target`, `level` and `busy_ns`/`idle_ns` attributes, with `code.*` and
/// `thread.*` (see the module docs). Exposed so in-process tests see the spans a
/// `weft` process exports.
pub fn span_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_location(true)
        .with_threads(true)
}

/// Installs the global `tracing` subscriber: logs on stderr in `format`, filtered by
/// `RUST_LOG` (else `default_filter`, e.g. `warn`), plus OTLP span export when the
/// environment asks for it (module docs). Call once, early, before any tokio runtime
/// (the exporter builds a blocking HTTP client).
///
/// Never fails: a setting it cannot use is logged as a warning (after the subscriber is
/// installed), and [`Telemetry::exporting`] says whether export runs.
///
/// # Panics
/// When a global subscriber is already installed.
pub fn init(default_filter: &str, format: LogFormat) -> Telemetry {
    let _ = FORMAT.set(format);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let plan = Plan::from_env(&process_env, || uuid::Uuid::new_v4().to_string());
    let mut warnings = plan.warnings;
    let log_filter = match process_env("RUST_LOG").map(|v| (EnvFilter::try_new(&v), v)) {
        Some((Ok(f), _)) => f,
        Some((Err(e), v)) => {
            warnings.push(format!(
                "RUST_LOG={v:?} is not a valid filter ({e}); using {default_filter:?}"
            ));
            EnvFilter::new(default_filter)
        }
        None => EnvFilter::new(default_filter),
    };
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colours for a terminal only, not for a file or a log collector.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLog)
            .with_filter(log_filter)
            .boxed(),
    };

    let exporter = match plan.export {
        Some(protocol) => {
            // reqwest is built without a default TLS crypto provider in this workspace
            // (see weft-agents); the exporter's HTTP client needs one, even for http://.
            let _ = rustls::crypto::ring::default_provider().install_default();
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build()
            {
                Ok(e) => Some(e),
                Err(e) => {
                    warnings.push(format!("OTLP span export is off: {e}"));
                    None
                }
            }
        }
        None => None,
    };
    let exporting = exporter.is_some();
    // JSON logs want trace ids even without export: a provider with no exporter.
    let provider = (exporting || format == LogFormat::Json).then(|| {
        let builder = SdkTracerProvider::builder()
            .with_sampler(plan.sampler)
            .with_resource(plan.resource);
        match exporter {
            Some(e) => builder.with_batch_exporter(e),
            None => builder,
        }
        .build()
    });
    let spans = provider
        .as_ref()
        .map(|p| span_layer(p.tracer("weft")).with_filter(EnvFilter::new(&plan.spans_filter)));
    tracing_subscriber::registry().with(logs).with(spans).init();
    for w in warnings {
        tracing::warn!(target: "weft::telemetry", "{w}");
    }
    Telemetry {
        provider,
        exporting,
    }
}

/// The log format [`init`] installed.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Prints a line a command writes for its user on stderr (progress, a warning, the
/// final error), in the format [`init`] installed: as text, `label: message` (just
/// `message` when `label` is empty); as JSON, a log object of the same shape as the
/// log lines (`timestamp`, `level`, `target` `weft`, `message`), whatever the log
/// filter, so stderr stays one JSON object per line.
pub fn say(level: tracing::Level, label: &str, message: &str) {
    say_fields(level, label, message, &[]);
}

/// [`say`] for the error a command ends with and the hint that may follow: as text,
/// `error: …` then `hint: …`; as JSON, one `ERROR` object with `fields.hint`.
pub fn say_error(message: &str, hint: Option<&str>) {
    match hint {
        Some(h) => say_fields(tracing::Level::ERROR, "error", message, &[("hint", h)]),
        None => say_fields(tracing::Level::ERROR, "error", message, &[]),
    }
}

fn say_fields(level: tracing::Level, label: &str, message: &str, fields: &[(&str, &str)]) {
    use std::io::Write as _;
    let mut text = match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Json => json::line(level, "weft", message, fields),
        LogFormat::Text => {
            let mut t = if label.is_empty() {
                message.to_owned()
            } else {
                format!("{label}: {message}")
            };
            for (k, v) in fields {
                t.push_str(&format!("\n{k}: {v}"));
            }
            t
        }
    };
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// An environment variable, `None` when unset or blank.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// What the `OTEL_*` variables ask for, read once.
struct Plan {
    /// `Some(protocol)` when spans are to be exported.
    export: Option<Protocol>,
    sampler: Sampler,
    resource: Resource,
    spans_filter: String,
    /// Settings that could not be used, as log lines.
    warnings: Vec<String>,
}

impl Plan {
    /// Reads the settings through `env` (blank counts as unset); `instance_id` makes
    /// the default `service.instance.id`.
    fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        instance_id: impl FnOnce() -> String,
    ) -> Plan {
        let mut warnings = Vec::new();
        let export = match export_requested(env, &mut warnings) {
            false => None,
            true => match protocol(env) {
                Ok(p) => Some(p),
                Err(e) => {
                    warnings.push(format!("OTLP span export is off: {e}"));
                    None
                }
            },
        };
        let sampler = sampler(env, &mut warnings);
        let resource = resource(env, instance_id, &mut warnings);
        let spans_filter = match env("OTEL_TRACES_FILTER") {
            None => "info".to_owned(),
            Some(f) => match EnvFilter::try_new(&f) {
                Ok(_) => f,
                Err(e) => {
                    warnings.push(format!(
                        "OTEL_TRACES_FILTER={f:?} is not a valid filter ({e}); using \"info\""
                    ));
                    "info".to_owned()
                }
            },
        };
        Plan {
            export,
            sampler,
            resource,
            spans_filter,
            warnings,
        }
    }
}

/// Whether span export is asked for: an endpoint is set or `OTEL_TRACES_EXPORTER`
/// names `otlp`, and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`.
fn export_requested(env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some();
    let Some(exporters) = env("OTEL_TRACES_EXPORTER") else {
        return endpoint;
    };
    let mut otlp = false;
    let mut none = false;
    for name in exporters.split(',').map(|s| s.trim().to_ascii_lowercase()) {
        match name.as_str() {
            "otlp" => otlp = true,
            "none" => none = true,
            "" => {}
            other => warnings.push(format!(
                "OTEL_TRACES_EXPORTER names {other:?}, which this build does not have (only otlp and none); ignored"
            )),
        }
    }
    if none && !otlp {
        return false;
    }
    otlp || endpoint
}

/// The OTLP protocol: the traces variable, else the general one, else `http/protobuf`
/// (the OTLP specification's default; opentelemetry-otlp 0.33 would pick JSON when both
/// of its HTTP features are built, so it is always given explicitly).
fn protocol(env: &dyn Fn(&str) -> Option<String>) -> Result<Protocol, String> {
    let Some((name, value)) = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| env(name).map(|v| (name, v))) else {
        return Ok(Protocol::HttpBinary);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        "grpc" => Err(format!(
            "{name}=grpc is not built in: use http/protobuf (the default) or http/json, to the collector's OTLP/HTTP port (usually 4318)"
        )),
        _ => Err(format!(
            "{name}={value:?} is not an OTLP protocol: use http/protobuf (the default) or http/json"
        )),
    }
}

/// The sampler of `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the
/// OpenTelemetry SDK specification's names), default `parentbased_always_on`.
fn sampler(env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> Sampler {
    let default = || Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    let Some(name) = env("OTEL_TRACES_SAMPLER") else {
        return default();
    };
    let mut ratio = || match env("OTEL_TRACES_SAMPLER_ARG") {
        None => 1.0,
        Some(arg) => match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                warnings.push(format!(
                    "OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio between 0 and 1; using 1"
                ));
                1.0
            }
        },
    };
    match name.trim().to_ascii_lowercase().as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()),
        "parentbased_always_on" => default(),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio())))
        }
        _ => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER={name:?} is not a sampler this build has (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio); using parentbased_always_on"
            ));
            default()
        }
    }
}

/// The `service.*` keys Weft always sets.
const SERVICE_NAME: &str = "service.name";
const SERVICE_VERSION: &str = "service.version";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";

/// The resource (module docs): the SDK's `telemetry.sdk.*`, `OTEL_RESOURCE_ATTRIBUTES`,
/// then `service.name`, `service.version` and `service.instance.id`.
fn resource(
    env: &dyn Fn(&str) -> Option<String>,
    instance_id: impl FnOnce() -> String,
    warnings: &mut Vec<String>,
) -> Resource {
    let given = match env("OTEL_RESOURCE_ATTRIBUTES").map(|v| parse_resource_attributes(&v)) {
        None => Vec::new(),
        Some(Ok(attrs)) => attrs,
        Some(Err(e)) => {
            warnings.push(format!("OTEL_RESOURCE_ATTRIBUTES is ignored: {e}"));
            Vec::new()
        }
    };
    let lookup = |key: &str| {
        given
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let name = env("OTEL_SERVICE_NAME")
        .or_else(|| lookup(SERVICE_NAME))
        .unwrap_or_else(|| "weft".into());
    let version = lookup(SERVICE_VERSION).unwrap_or_else(|| env!("CARGO_PKG_VERSION").into());
    let instance = lookup(SERVICE_INSTANCE_ID).unwrap_or_else(instance_id);
    Resource::builder_empty()
        .with_attributes(
            TelemetryResourceDetector
                .detect()
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attributes(given.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .with_attributes([
            KeyValue::new(SERVICE_NAME, name),
            KeyValue::new(SERVICE_VERSION, version),
            KeyValue::new(SERVICE_INSTANCE_ID, instance),
        ])
        .build()
}

/// Parses `key=value,key=value` with percent-encoded values (OpenTelemetry resource
/// SDK specification). Blank entries are skipped; any malformed entry rejects the whole
/// value, as the specification asks.
fn parse_resource_attributes(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut attrs = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, raw)) = entry.split_once('=') else {
            return Err(format!("the entry {entry:?} has no '='"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("the entry {entry:?} has an empty key"));
        }
        let decoded = percent_encoding::percent_decode_str(raw.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of {key:?} is not UTF-8 once percent-decoded"))?;
        attrs.push((key.to_owned(), decoded.into_owned()));
    }
    Ok(attrs)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::{Key, Value};

    use super::*;

    fn plan(vars: &[(&str, &str)]) -> Plan {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Plan::from_env(
            &move |k| vars.get(k).cloned().filter(|v| !v.trim().is_empty()),
            || "generated-id".into(),
        )
    }

    fn res(p: &Plan, key: &'static str) -> Option<Value> {
        p.resource.get(&Key::from_static_str(key))
    }

    #[test]
    fn export_is_off_without_an_endpoint() {
        assert_eq!(plan(&[]).export, None);
    }

    #[test]
    fn the_default_protocol_is_http_protobuf() {
        let p = plan(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]);
        assert_eq!(p.export, Some(Protocol::HttpBinary));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn http_json_is_chosen_by_either_protocol_variable_the_traces_one_first() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let p = plan(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
        assert_eq!(p.export, Some(Protocol::HttpJson));
        let p = plan(&[
            ep,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(p.export, Some(Protocol::HttpBinary));
    }

    #[test]
    fn grpc_or_an_unknown_protocol_turns_export_off_with_a_warning() {
        for value in ["grpc", "thrift"] {
            let p = plan(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", value),
            ]);
            assert_eq!(p.export, None, "{value}");
            assert!(
                p.warnings[0].contains("OTEL_EXPORTER_OTLP_PROTOCOL")
                    && p.warnings[0].contains("http/protobuf"),
                "{:?}",
                p.warnings
            );
        }
    }

    #[test]
    fn traces_exporter_and_sdk_disabled_switch_export() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(plan(&[ep, ("OTEL_TRACES_EXPORTER", "none")]).export, None);
        assert_eq!(plan(&[ep, ("OTEL_SDK_DISABLED", "true")]).export, None);
        assert_eq!(
            plan(&[("OTEL_TRACES_EXPORTER", "otlp")]).export,
            Some(Protocol::HttpBinary)
        );
        let p = plan(&[ep, ("OTEL_TRACES_EXPORTER", "zipkin")]);
        assert_eq!(p.export, Some(Protocol::HttpBinary));
        assert!(p.warnings[0].contains("zipkin"), "{:?}", p.warnings);
    }

    #[test]
    fn the_resource_has_service_name_version_instance_and_sdk_keys() {
        let p = plan(&[]);
        assert_eq!(res(&p, "service.name"), Some(Value::from("weft")));
        assert_eq!(
            res(&p, "service.version"),
            Some(Value::from(env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(
            res(&p, "service.instance.id"),
            Some(Value::from("generated-id"))
        );
        assert_eq!(res(&p, "telemetry.sdk.language"), Some(Value::from("rust")));
        assert_eq!(
            res(&p, "telemetry.sdk.name"),
            Some(Value::from("opentelemetry"))
        );
        assert!(res(&p, "telemetry.sdk.version").is_some());
    }

    #[test]
    fn resource_attributes_are_added_percent_decoded_and_may_set_the_service_keys() {
        let p = plan(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test, service.instance.id=pod-7,service.version=9.9,team=a%2Cb%20c",
        )]);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(
            res(&p, "deployment.environment.name"),
            Some(Value::from("test"))
        );
        assert_eq!(res(&p, "service.instance.id"), Some(Value::from("pod-7")));
        assert_eq!(res(&p, "service.version"), Some(Value::from("9.9")));
        assert_eq!(res(&p, "team"), Some(Value::from("a,b c")));
        assert_eq!(res(&p, "service.name"), Some(Value::from("weft")));
    }

    #[test]
    fn otel_service_name_wins_over_the_resource_attribute() {
        let attrs = ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs");
        assert_eq!(
            res(&plan(&[attrs]), "service.name"),
            Some(Value::from("from-attrs"))
        );
        assert_eq!(
            res(
                &plan(&[attrs, ("OTEL_SERVICE_NAME", "from-name")]),
                "service.name"
            ),
            Some(Value::from("from-name"))
        );
    }

    #[test]
    fn a_malformed_resource_attribute_drops_the_whole_variable_with_a_warning() {
        let p = plan(&[("OTEL_RESOURCE_ATTRIBUTES", "a=1,oops,b=2")]);
        assert_eq!(res(&p, "a"), None);
        assert_eq!(res(&p, "b"), None);
        assert!(p.warnings[0].contains("\"oops\""), "{:?}", p.warnings);
        assert_eq!(res(&p, "service.name"), Some(Value::from("weft")));
    }

    #[test]
    fn samplers_follow_the_specification_names() {
        let s = |vars: &[(&str, &str)]| format!("{:?}", plan(vars).sampler);
        assert_eq!(
            s(&[]),
            format!("{:?}", Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        );
        assert_eq!(s(&[("OTEL_TRACES_SAMPLER", "always_off")]), "AlwaysOff");
        assert_eq!(s(&[("OTEL_TRACES_SAMPLER", "always_on")]), "AlwaysOn");
        assert_eq!(
            s(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25")
            ]),
            "TraceIdRatioBased(0.25)"
        );
        assert_eq!(
            s(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5")
            ]),
            format!(
                "{:?}",
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5)))
            )
        );
        assert_eq!(
            s(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]),
            format!("{:?}", Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        );
    }

    #[test]
    fn a_bad_sampler_or_ratio_falls_back_with_a_warning() {
        let p = plan(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]);
        assert_eq!(
            format!("{:?}", p.sampler),
            format!("{:?}", Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        );
        assert!(p.warnings[0].contains("jaeger_remote"), "{:?}", p.warnings);
        let p = plan(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert_eq!(format!("{:?}", p.sampler), "TraceIdRatioBased(1.0)");
        assert!(
            p.warnings[0].contains("OTEL_TRACES_SAMPLER_ARG"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("TEXT".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!(
            "yaml"
                .parse::<LogFormat>()
                .unwrap_err()
                .contains("text or json")
        );
    }
}
