//! One trace links gateway → flow → agent → service: the demo runs in this process
//! with an in-process span exporter, a ticket is posted with a `traceparent`, and every
//! hop's spans carry that trace id.

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
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("e2e")));
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

/// `weft up` exports its spans over OTLP/HTTP (JSON here) when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set: a collector inside the test receives spans of
/// the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_up_exports_spans_over_otlp_when_asked() {
    use axum::routing::post;

    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let endpoint = format!("http://{otlp}");
    let mut up = crate::Up::start_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "weft-e2e"),
        ],
    );
    let http = up.http.clone();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client = http_client();
    let mut accepted = false;
    for _ in 0..100 {
        let sent = client
            .post(format!("http://{http}/v1/events/trace.me"))
            .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
            .body("{}")
            .send()
            .await;
        if let Ok(r) = sent {
            assert_eq!(r.status(), 202);
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the gateway never came up");
    // A clean stop flushes the batch exporter (the wait blocks: keep it off the
    // runtime's workers, which serve the collector).
    let status = tokio::task::block_in_place(|| up.proc.interrupt(Duration::from_secs(30)))
        .expect("weft up stops");
    assert!(status.success());
    let bodies = received.lock().unwrap().join("\n");
    assert!(
        bodies.contains(trace_id),
        "no span of the trace reached the collector: {bodies}"
    );
    assert!(bodies.contains("weft-e2e"), "service.name missing");
    assert!(bodies.contains("\"publish\""), "no publish span: {bodies}");
}
