//! One trace links gateway → flow → agent → service: the demo runs in this process
//! with an in-process span exporter (and the span layer `weft` processes use), a ticket
//! is posted with a `traceparent`, and every hop's spans carry that trace id. Export
//! from a `weft up` process over OTLP is tested in `telemetry.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;
use weft_bus::testing::TestServer;
use weft_gateway::{Gateway, GatewayConfig};

use crate::http_client;

/// Keeps every finished span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn one_trace_links_gateway_flow_agent_and_service() {
    let collected = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber =
        tracing_subscriber::registry().with(weft::telemetry::span_layer(provider.tracer("e2e")));
    // Thread-local, and this runtime runs every task on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    // tracing-core 0.1 caches `Interest::never` in a callsite that another test's
    // thread (with no subscriber) registers first while exactly one dispatch exists
    // (tokio-rs/tracing#3611): spans of that callsite then never reach this one. A
    // second live dispatch sends registration down the general path, which asks every
    // dispatch; the rebuild fixes callsites registered before.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    tracing::callsite::rebuild_interest_cache();

    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gateway = Gateway::bind(
        bus.clone(),
        GatewayConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..GatewayConfig::default()
        },
    )
    .await
    .unwrap();
    let http = gateway.local_addr();
    tokio::spawn(gateway.serve(std::future::pending()));
    let demo = weft_example_support_desk::start(&bus).await.unwrap();
    let mut triaged = bus
        .subscribe_events(&"ticket.triaged".parse().unwrap(), None)
        .await
        .unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = http_client()
        .post(format!("http://{http}/v1/events/ticket.created"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(json!({"title": "Cannot log in", "body": "reset fails"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let event = tokio::time::timeout(Duration::from_secs(20), triaged.next())
        .await
        .expect("ticket.triaged")
        .unwrap()
        .envelope
        .unwrap();
    assert_eq!(
        event.trace_id.as_deref(),
        Some(trace_id),
        "the announced event carries the trace"
    );
    assert!(event.traceparent.as_deref().unwrap().contains(trace_id));
    demo.stop().await.unwrap();
    let _ = provider.force_flush();

    let spans = collected.0.lock().unwrap().clone();
    let in_trace: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .collect();
    let seen: Vec<String> = in_trace
        .iter()
        .map(|s| {
            format!(
                "{} {:?}",
                s.name,
                s.attributes
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    use opentelemetry::Value;
    use opentelemetry::trace::SpanKind;
    let span = |name: &str| {
        in_trace
            .iter()
            .copied()
            .filter(|s| s.name == name)
            .collect::<Vec<&SpanData>>()
    };
    let value = |s: &SpanData, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    let string = |v: &str| Some(Value::from(v.to_owned()));
    // Every span of the trace has unique attribute keys.
    for s in &in_trace {
        let mut keys: Vec<&str> = s.attributes.iter().map(|kv| kv.key.as_str()).collect();
        keys.sort();
        let before = keys.len();
        keys.dedup();
        assert_eq!(
            keys.len(),
            before,
            "duplicate attribute keys on {}: {seen:#?}",
            s.name
        );
    }
    // gateway: the HTTP server span, a child of the caller's traceparent
    let http = span("POST /v1/events/{event_type}");
    assert_eq!(http.len(), 1, "{seen:#?}");
    assert_eq!(http[0].span_kind, SpanKind::Server);
    assert_eq!(
        value(http[0], "http.route"),
        string("/v1/events/{event_type}")
    );
    assert_eq!(
        value(http[0], "url.path"),
        string("/v1/events/ticket.created")
    );
    assert_eq!(
        value(http[0], "http.response.status_code"),
        Some(Value::I64(202))
    );
    assert_eq!(http[0].parent_span_id.to_string(), "00f067aa0ba902b7");
    // its publish, and the announcement at the end: one span name for both
    let publishes = span("publish weft.events.{event_type}");
    let destinations: Vec<Option<Value>> = publishes
        .iter()
        .map(|s| value(s, "messaging.destination.name"))
        .collect();
    assert!(
        destinations.contains(&string("weft.events.ticket.created")),
        "{seen:#?}"
    );
    assert!(
        destinations.contains(&string("weft.events.ticket.triaged")),
        "{seen:#?}"
    );
    for p in &publishes {
        assert_eq!(p.span_kind, SpanKind::Producer);
        assert_eq!(value(p, "messaging.operation.type"), string("send"));
        assert!(
            matches!(value(p, "weft.stream.sequence"), Some(Value::I64(_))),
            "{seen:#?}"
        );
    }
    // flow: the trigger's processing, the run and its steps
    let process = span("process weft.events.{event_type}");
    let flow_delivery = process
        .iter()
        .find(|s| value(s, "messaging.consumer.group.name") == string("flow_triage"))
        .unwrap_or_else(|| panic!("{seen:#?}"));
    assert_eq!(flow_delivery.span_kind, SpanKind::Consumer);
    assert_eq!(
        value(flow_delivery, "weft.delivery.attempt"),
        Some(Value::I64(1))
    );
    let run = span("flow.run");
    assert_eq!(run.len(), 1, "{seen:#?}");
    assert_eq!(run[0].parent_span_id, flow_delivery.span_context.span_id());
    assert_eq!(value(run[0], "weft.flow.name"), string("triage"));
    assert_eq!(value(run[0], "weft.flow.status"), string("completed"));
    let steps = span("flow.step");
    let mut step_names: Vec<String> = steps
        .iter()
        .map(|s| value(s, "weft.flow.step").unwrap().to_string())
        .collect();
    step_names.sort();
    assert_eq!(step_names, ["announce", "classify", "draft"], "{seen:#?}");
    assert!(
        steps
            .iter()
            .all(|s| value(s, "weft.flow.step.attempt") == Some(Value::I64(1)))
    );
    // the classify invoke: client span under the step, server span under it
    let send = span("send weft.invoke.tickets.classify");
    assert_eq!(send.len(), 1, "{seen:#?}");
    assert_eq!(send[0].span_kind, SpanKind::Client);
    let receive = span("receive weft.invoke.tickets.classify");
    assert_eq!(receive.len(), 1, "{seen:#?}");
    assert_eq!(receive[0].span_kind, SpanKind::Server);
    assert_eq!(receive[0].parent_span_id, send[0].span_context.span_id());
    assert_eq!(
        value(receive[0], "messaging.consumer.group.name"),
        string("q")
    );
    // the agent: its chat handled, the run, the model call and the tool
    assert_eq!(span("receive weft.invoke.support").len(), 1, "{seen:#?}");
    let agent = span("invoke_agent support");
    assert_eq!(agent.len(), 1, "{seen:#?}");
    assert_eq!(
        value(agent[0], "gen_ai.operation.name"),
        string("invoke_agent")
    );
    let chats = span("chat scripted");
    assert_eq!(chats.len(), 2, "two model turns: {seen:#?}");
    assert!(chats.iter().all(|c| c.span_kind == SpanKind::Client
        && value(c, "gen_ai.provider.name") == string("scripted")));
    let tool = span("execute_tool tickets_get");
    assert_eq!(tool.len(), 1, "{seen:#?}");
    assert_eq!(value(tool[0], "gen_ai.tool.name"), string("tickets_get"));
    assert_eq!(
        span("receive weft.invoke.tickets.get").len(),
        1,
        "{seen:#?}"
    );
    // no span carries the old generic names
    for old in [
        "http",
        "publish",
        "invoke",
        "handle",
        "deliver",
        "agent.run",
    ] {
        assert!(
            span(old).is_empty(),
            "a span is still named {old}: {seen:#?}"
        );
    }
}
