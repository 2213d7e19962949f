//! The JSON log line format (`--log-format json`): one object per event, with the
//! current span and the OpenTelemetry trace and span ids (see the parent module).

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats an event as one JSON line. Span fields are kept as JSON by [`JsonFields`]
/// (the layer's `fmt_fields`), so this formatter only works with it.
pub(crate) struct JsonLog;

impl<S> FormatEvent<S, JsonFields> for JsonLog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(now()));
        line.insert("level".into(), Value::String(meta.level().as_str().into()));
        // Events bridged from the `log` crate carry their real target in a field.
        let target = fields
            .log_target
            .take()
            .unwrap_or_else(|| meta.target().into());
        line.insert("target".into(), Value::String(target));
        line.insert(
            "message".into(),
            Value::String(fields.message.take().unwrap_or_default()),
        );
        if !fields.values.is_empty() {
            line.insert("fields".into(), Value::Object(fields.values));
        }
        if let Some(span) = ctx.lookup_current() {
            let mut s = Map::new();
            s.insert("name".into(), Value::String(span.name().into()));
            let ext = span.extensions();
            if let Some(f) = ext.get::<FormattedFields<JsonFields>>()
                && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f)
            {
                s.extend(m);
            }
            line.insert("span".into(), Value::Object(s));
        }
        // The OpenTelemetry layer attaches a span's context while the span is entered.
        let cx = opentelemetry::Context::current();
        let otel = cx.span();
        let sc = otel.span_context();
        if sc.is_valid() {
            line.insert("trace_id".into(), Value::String(sc.trace_id().to_string()));
            line.insert("span_id".into(), Value::String(sc.span_id().to_string()));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// A line that is no `tracing` event (see `super::say`), in the same shape, without
/// the trailing newline.
pub(crate) fn line(
    level: tracing::Level,
    target: &str,
    message: &str,
    fields: &[(&str, &str)],
) -> String {
    let mut line = Map::new();
    line.insert("timestamp".into(), Value::String(now()));
    line.insert("level".into(), Value::String(level.as_str().into()));
    line.insert("target".into(), Value::String(target.into()));
    line.insert("message".into(), Value::String(message.into()));
    if !fields.is_empty() {
        let f = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        line.insert("fields".into(), Value::Object(f));
    }
    Value::Object(line).to_string()
}

/// Now, RFC 3339 in UTC with microseconds.
fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t
        .replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An event's fields as typed JSON values, its message apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    log_target: Option<String>,
    values: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "log.target" => {
                if let Value::String(s) = value {
                    self.log_target = Some(s);
                }
            }
            // The rest of the `log` crate's metadata (module, file, line).
            name if name.starts_with("log.") => {}
            name => {
                self.values.insert(name.into(), value);
            }
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.put(field, v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value)
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(value.to_string()));
        self.put(field, v);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value)
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(value.to_string()));
        self.put(field, v);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.into()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn lines(buf: &Buf) -> Vec<Map<String, Value>> {
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(Value::Object(m)) => m,
                other => panic!("not a JSON object: {l:?} ({other:?})"),
            })
            .collect()
    }

    fn json_layer<S>(buf: &Buf) -> impl tracing_subscriber::Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_subscriber::fmt::layer()
            .with_writer(buf.clone())
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLog)
    }

    #[test]
    fn a_line_has_typed_fields_the_span_and_the_remote_trace_id() {
        let buf = Buf::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(json_layer(&buf))
            .with(crate::telemetry::span_layer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("http", http.route = "/v1/x", code = 7_i64);
            let parent = opentelemetry::trace::SpanContext::new(
                opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736")
                    .unwrap(),
                opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                opentelemetry::trace::TraceFlags::SAMPLED,
                true,
                Default::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
            let _g = span.enter();
            tracing::warn!(status = 503_u16, ok = false, ratio = 0.5, who = %"me", "request failed");
        });
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(json_layer(&buf)),
            || tracing::info!("outside"),
        );
        let lines = lines(&buf);
        assert_eq!(lines.len(), 2);
        let l = &lines[0];
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["message"], "request failed");
        assert_eq!(l["target"], module_path!());
        assert_eq!(l["fields"]["status"], 503);
        assert_eq!(l["fields"]["ok"], false);
        assert_eq!(l["fields"]["ratio"], 0.5);
        assert_eq!(l["fields"]["who"], "me");
        assert_eq!(l["span"]["name"], "http");
        assert_eq!(l["span"]["http.route"], "/v1/x");
        assert_eq!(l["span"]["code"], 7);
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        let span_id = l["span_id"].as_str().unwrap();
        assert_eq!(span_id.len(), 16);
        assert_ne!(
            span_id, "00f067aa0ba902b7",
            "the span's own id, not its parent's"
        );
        let ts = l["timestamp"].as_str().unwrap();
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{ts}: {e}"));
        let outside = &lines[1];
        assert_eq!(outside["message"], "outside");
        for key in ["fields", "span", "trace_id", "span_id"] {
            assert!(!outside.contains_key(key), "{key} in {outside:?}");
        }
    }
}
