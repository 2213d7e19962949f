//! `weft up`'s telemetry as an operator meets it: OTLP export with only the standard
//! variables set (protobuf by default), the resource, the sampler, and `--log-format
//! json` lines that join the exported spans. Spans go to the OTLP receiver of
//! [`crate::otlp`]; each test stops `weft up` cleanly first, which flushes the batch
//! exporter, so what it reads is complete.

use std::time::Duration;

use serde_json::Value;

use crate::otlp::{self, Attr, Receiver};
use crate::{Up, http_client};

/// `weft up` with `extra` arguments and `env`, once its banner is out.
fn start(extra: &[&str], env: &[(&str, &str)]) -> Up {
    let mut up = Up::start_env(extra, env);
    tokio::task::block_in_place(|| up.proc.banner());
    up
}

/// SIGINT, and the clean exit that flushes the exporter (off the runtime's workers,
/// which serve the receiver).
fn stop(up: &mut Up) {
    let status = tokio::task::block_in_place(|| up.proc.interrupt(Duration::from_secs(30)))
        .expect("weft up stops on SIGINT");
    assert!(status.success(), "weft up failed:\n{}", up.log());
}

/// POSTs `body` to the gateway with `traceparent: 00-<trace>-<parent>-<flags>`.
async fn post(up: &Up, path: &str, traceparent: &str, body: &str) -> u16 {
    http_client()
        .post(format!("http://{}{path}", up.http))
        .header("traceparent", traceparent)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("the gateway answers")
        .status()
        .as_u16()
}

/// The stderr lines of `up`, each parsed as a JSON object.
///
/// # Panics
/// On a line that is not one.
fn json_lines(up: &Up) -> Vec<Value> {
    up.log()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str(l) {
            Ok(v @ Value::Object(_)) => v,
            _ => panic!("a stderr line that is not a JSON object: {l:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_out_as_otlp_protobuf_with_only_the_endpoint_set() {
    let otlp = Receiver::start().await;
    let endpoint = otlp.endpoint();
    let mut up = start(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    let trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let status = post(
        &up,
        "/v1/events/trace.me",
        &format!("00-{trace}-051581bf3cb55c13-01"),
        "{}",
    )
    .await;
    assert_eq!(status, 202);
    stop(&mut up);

    let spans = otlp.trace(trace);
    assert!(
        !spans.is_empty(),
        "no span of the trace arrived; requests {:?}, errors {:?}",
        otlp.requests(),
        otlp.errors()
    );
    let requests = otlp.requests();
    assert!(
        requests.iter().all(|r| r.content_type == otlp::PROTOBUF),
        "the default protocol is http/protobuf, the receiver saw {requests:?}"
    );
    // The caller's span is the parent of the gateway's.
    assert!(
        spans
            .iter()
            .any(|s| s.parent_span_id.as_deref() == Some("051581bf3cb55c13")),
        "{}",
        otlp.tree(trace)
    );
    for s in &spans {
        let r = &s.resource;
        assert_eq!(r.get("service.name"), Some(&Attr::from("weft")), "{r:?}");
        assert_eq!(
            r.get("service.version"),
            Some(&Attr::from(env!("CARGO_PKG_VERSION"))),
            "{r:?}"
        );
        let instance = r
            .get("service.instance.id")
            .and_then(Attr::as_str)
            .unwrap_or_else(|| panic!("no service.instance.id in {r:?}"));
        assert!(
            uuid::Uuid::parse_str(instance).is_ok(),
            "service.instance.id {instance:?} is no UUID"
        );
        assert_eq!(r.get("telemetry.sdk.language"), Some(&Attr::from("rust")));
        assert_eq!(s.scope, "weft");
        // The layer's own attributes: code.* and thread.*, no level or timings.
        assert!(s.int("code.line.number").is_some(), "{}", s.line(&|_| true));
        for key in ["level", "busy_ns", "idle_ns"] {
            assert!(s.attr(key).is_none(), "{key} on {}", s.line(&|_| true));
        }
    }
    otlp.assert_unique_keys();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_variables_set_the_protocol_resource_and_sampler() {
    let otlp = Receiver::start().await;
    let endpoint = otlp.endpoint();
    let mut up = start(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "weft-e2e"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test,service.instance.id=e2e-1,team=mesh%2Cops",
            ),
            // The caller did not sample (flags 00): the default sampler
            // (parentbased_always_on) would drop the trace, always_on keeps it.
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let status = post(
        &up,
        "/v1/events/trace.me",
        &format!("00-{trace}-b7ad6b7169203331-00"),
        "{}",
    )
    .await;
    assert_eq!(status, 202);
    stop(&mut up);

    let spans = otlp.trace(trace);
    assert!(
        !spans.is_empty(),
        "OTEL_TRACES_SAMPLER=always_on did not sample a trace its caller left unsampled; requests {:?}, errors {:?}",
        otlp.requests(),
        otlp.errors()
    );
    let requests = otlp.requests();
    assert!(
        requests.iter().all(|r| r.content_type == otlp::JSON),
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/json, the receiver saw {requests:?}"
    );
    for s in &spans {
        let r = &s.resource;
        assert_eq!(
            r.get("service.name"),
            Some(&Attr::from("weft-e2e")),
            "{r:?}"
        );
        assert_eq!(
            r.get("deployment.environment.name"),
            Some(&Attr::from("test")),
            "{r:?}"
        );
        assert_eq!(
            r.get("service.instance.id"),
            Some(&Attr::from("e2e-1")),
            "{r:?}"
        );
        assert_eq!(
            r.get("team"),
            Some(&Attr::from("mesh,ops")),
            "percent-decoded: {r:?}"
        );
        assert_eq!(
            r.get("service.version"),
            Some(&Attr::from(env!("CARGO_PKG_VERSION"))),
            "{r:?}"
        );
    }
    otlp.assert_unique_keys();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_trace_and_span_ids_of_the_exported_spans() {
    let otlp = Receiver::start().await;
    let endpoint = otlp.endpoint();
    let mut up = start(
        &["--log-format", "json"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    // Nobody serves `nosuch`: the gateway answers 503 and logs a warning inside the
    // request's span.
    let status = post(
        &up,
        "/v1/invoke/nosuch.op",
        &format!("00-{trace}-00f067aa0ba902b7-01"),
        "{}",
    )
    .await;
    assert_eq!(status, 503);
    stop(&mut up);

    let lines = json_lines(&up);
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some_and(Value::is_string), "{key} in {l:?}");
        }
    }
    assert!(
        lines.iter().any(|l| l["message"] == "gateway listening"),
        "the info lines of RUST_LOG=info: {lines:#?}"
    );
    let in_trace: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("trace_id").is_some_and(|t| t == trace))
        .collect();
    assert!(
        !in_trace.is_empty(),
        "no log line of trace {trace}: {lines:#?}"
    );
    let spans = otlp.trace(trace);
    for l in &in_trace {
        let span_id = l["span_id"]
            .as_str()
            .expect("a span_id beside the trace_id");
        let span = spans
            .iter()
            .find(|s| s.span_id == span_id)
            .unwrap_or_else(|| {
                panic!(
                    "the line {l:?} names span {span_id}, not exported:\n{}",
                    otlp.tree(trace)
                )
            });
        // A span that sets `otel.name` is exported under that name; the log line
        // carries it among the span's fields, beside the `tracing` name.
        let logged = l["span"]
            .get("otel.name")
            .or_else(|| l["span"].get("name"))
            .and_then(Value::as_str);
        assert_eq!(
            logged,
            Some(span.name.as_str()),
            "the line's span is the exported span of that id: {l:?}"
        );
    }
    assert!(
        in_trace
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["status"] == 503),
        "the 503 warning, its status a number: {in_trace:#?}"
    );
    otlp.assert_unique_keys();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_callers_trace_id_without_export() {
    let mut up = start(&[], &[("WEFT_LOG_FORMAT", "json")]);
    let trace = "a3ce929d0e0e47364bf92f3577b34da6";
    let parent = "00f067aa0ba902b7";
    let status = post(
        &up,
        "/v1/invoke/nosuch.op",
        &format!("00-{trace}-{parent}-01"),
        "{}",
    )
    .await;
    assert_eq!(status, 503);
    stop(&mut up);

    let lines = json_lines(&up);
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN" && l["fields"]["status"] == 503)
        .unwrap_or_else(|| panic!("no 503 warning: {lines:#?}"));
    assert_eq!(warning["trace_id"], trace, "{warning:?}");
    let span_id = warning["span_id"].as_str().expect("a span_id");
    assert_eq!(span_id.len(), 16);
    assert_ne!(span_id, parent, "the gateway's own span, not the caller's");
}
