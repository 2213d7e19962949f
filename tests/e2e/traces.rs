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

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
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
    let has = |name: &str, key: &str, value: &str| {
        in_trace
            .iter()
            .any(|s| s.name == name && attr(s, key).as_deref() == Some(value))
    };
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
    // gateway: the HTTP request, a child of the caller's traceparent, and its publish
    assert!(
        has("http", "http.route", "/v1/events/{event_type}"),
        "{seen:#?}"
    );
    assert!(
        has(
            "publish",
            "messaging.destination.name",
            "weft.events.ticket.created"
        ),
        "{seen:#?}"
    );
    // flow: the trigger delivery, and its invokes
    assert!(has("deliver", "consumer", "flow_triage"), "{seen:#?}");
    assert!(
        has(
            "invoke",
            "messaging.destination.name",
            "weft.invoke.tickets.classify"
        ),
        "{seen:#?}"
    );
    // service: classify handled in the same trace
    assert!(has("handle", "endpoint", "classify"), "{seen:#?}");
    // agent: chat handled, and its tool call handled by the service
    assert!(has("handle", "endpoint", "chat"), "{seen:#?}");
    assert!(has("handle", "endpoint", "get"), "{seen:#?}");
    // and the announcement
    assert!(
        has(
            "publish",
            "messaging.destination.name",
            "weft.events.ticket.triaged"
        ),
        "{seen:#?}"
    );
}
