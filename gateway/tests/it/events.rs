//! `POST /v1/events/{event_type}`: 202 after the ack with the event really stored, and
//! each error status.

use serde_json::json;
use weft_bus::Envelope;
use weft_bus::testing::TestServer;
use weft_gateway::GatewayConfig;

use crate::common::{assert_error, json, start, start_with};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn events_are_acked_stored_and_carry_the_http_headers() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start(&bus).await;

    let resp = gw
        .http
        .post(gw.url("/v1/events/ticket.created"))
        .header("traceparent", TRACEPARENT)
        .header("X-Session-Id", "s-1")
        .header("X-Tenant-Id", "acme")
        .header("X-User-Id", "u-9")
        .body(r#"{"id": 7, "title": "printer on fire"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 202, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    assert_eq!(body["stream"], "WEFT_EVENTS");
    assert_eq!(body["duplicate"], false);
    let sequence = body["sequence"].as_u64().unwrap();
    assert!(sequence >= 1);

    // The event is in the stream, as the gateway said.
    let stream = bus.jetstream().get_stream("WEFT_EVENTS").await.unwrap();
    let stored = stream.get_raw_message(sequence).await.unwrap();
    assert_eq!(stored.subject.as_str(), "weft.events.ticket.created");
    assert_eq!(
        stored.headers.get("Nats-Msg-Id").unwrap().as_str(),
        event_id
    );
    assert_eq!(
        stored.headers.get("traceparent").unwrap().as_str(),
        TRACEPARENT
    );
    let env = Envelope::from_slice(&stored.payload).unwrap();
    assert_eq!(env.event_id, event_id);
    assert_eq!(env.event_type, "ticket.created");
    assert_eq!(
        env.payload,
        Some(json!({"id": 7, "title": "printer on fire"}))
    );
    assert_eq!(env.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(
        env.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(env.session_id.as_deref(), Some("s-1"));
    assert_eq!(env.tenant_id.as_deref(), Some("acme"));
    assert_eq!(env.user_id.as_deref(), Some("u-9"));
    assert_eq!(env.channel.as_deref(), Some("http"));

    // An empty body is a null payload, not an error.
    let (status, body) = json(gw.post("/v1/events/ticket.pinged", "").await).await;
    assert_eq!(status, 202, "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn bad_json_is_400_and_says_where() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start(&bus).await;
    let (status, body) = json(
        gw.post("/v1/events/ticket.created", "{\"id\": 7,\n oops}")
            .await,
    )
    .await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert!(message.contains("not valid JSON"), "{message}");
    assert!(message.contains("line 2 column"), "{message}");
    gw.stop().await;
}

#[tokio::test]
async fn bad_event_types_are_400_and_name_the_bad_token() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start(&bus).await;
    let (status, body) = json(gw.post("/v1/events/ticket.bad%20token", "{}").await).await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert!(message.contains("\"bad token\""), "{message}");

    let (status, body) = json(gw.post("/v1/events/a..b", "{}").await).await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert!(
        message.contains("a..b") && message.contains("empty token"),
        "{message}"
    );

    let (status, body) = json(gw.post("/v1/events/ticket.*", "{}").await).await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert!(message.contains("'*'"), "{message}");
    gw.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_413_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start_with(
        &bus,
        GatewayConfig {
            max_body_bytes: 1024,
            ..GatewayConfig::default()
        },
    )
    .await;
    let big = serde_json::to_string(&json!({ "blob": "x".repeat(4000) })).unwrap();
    let (status, body) = json(gw.post("/v1/events/ticket.created", big).await).await;
    let message = assert_error(status, &body, 413, "PAYLOAD_TOO_LARGE");
    assert!(message.contains("1024 bytes"), "{message}");

    let mut stream = bus.jetstream().get_stream("WEFT_EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);

    // Just under the limit passes.
    let small = serde_json::to_string(&json!({ "blob": "x".repeat(900) })).unwrap();
    let (status, body) = json(gw.post("/v1/events/ticket.created", small).await).await;
    assert_eq!(status, 202, "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn a_missing_events_stream_is_503_transport_failure() {
    let server = TestServer::start().await;
    let bus = server.connect().await; // no streams, no buckets
    let gw = start(&bus).await;
    let (status, body) = json(gw.post("/v1/events/ticket.created", "{}").await).await;
    let message = assert_error(status, &body, 503, "TRANSPORT_FAILURE");
    assert!(message.contains("WEFT_EVENTS"), "{message}");
    assert_eq!(body["retryable"], true, "{body}");
    gw.stop().await;
}
