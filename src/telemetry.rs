//! Logs and traces for Weft processes: `tracing` to stderr, and OpenTelemetry export
//! over OTLP when the standard `OTEL_*` environment variables ask for it.
//!
//! | variable | effect |
//! |---|---|
//! | `RUST_LOG` | the log filter on stderr (default given by the caller, e.g. `warn`) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | turns on span export over OTLP/HTTP to that collector |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (default) or `http/json` |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` | as the OpenTelemetry specification says |
//! | `OTEL_SERVICE_NAME` | the `service.name` resource (default `weft`) |
//! | `OTEL_TRACES_FILTER` | which spans are exported (default `info`: Weft's publish, invoke, handle and deliver spans) |
//!
//! The W3C trace-context propagator is always installed, so `traceparent` flows
//! through NATS and HTTP headers (see `weft_bus::trace`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Keeps span export running; dropping it flushes and shuts the exporter down.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

fn otlp_requested() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}

/// Installs the global `tracing` subscriber: logs on stderr filtered by `RUST_LOG`
/// (else `default_filter`, e.g. `warn`), plus OTLP span export when the environment
/// asks for it (table above). Call once, early, inside a tokio runtime.
///
/// # Errors
/// When the OTLP exporter cannot be built from the environment (e.g. an unsupported
/// protocol); logs still work then, the error says why export is off.
pub fn init(default_filter: &str) -> Result<Telemetry, String> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        );
    if !otlp_requested() {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    }
    // reqwest is built without a default TLS crypto provider in this workspace (see
    // weft-agents); the exporter's HTTP client needs one, even for http:// endpoints.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("OTLP span export is off: {e}"));
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            tracing_subscriber::registry().with(logs).init();
            return Err(e);
        }
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "weft".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let spans_filter = std::env::var("OTEL_TRACES_FILTER").unwrap_or_else(|_| "info".into());
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("weft"))
        .with_filter(EnvFilter::new(spans_filter));
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}
