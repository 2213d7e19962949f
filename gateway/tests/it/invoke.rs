//! `POST /v1/invoke/{target}`: 200 with the result, a handler's error with its status,
//! timeout, no responders, bad input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::testing::TestServer;
use weft_bus::{ErrorCode, ErrorPayload};
use weft_gateway::GatewayConfig;

use crate::common::{assert_error, json, start, start_with};

async fn echo_service(bus: &weft_bus::Bus) -> ServiceHandle {
    Service::new("echo", "1.0.0")
        .description("test service")
        .endpoint(Endpoint::new("say", |req: Request| async move {
            let e = &req.envelope;
            Ok(json!({
                "echo": req.payload().clone(),
                "session": e.session_id,
                "tenant": e.tenant_id,
                "user": e.user_id,
                "channel": e.channel,
                "from": e.from,
            }))
        }))
        .endpoint(Endpoint::new("fail", |_req: Request| async move {
            Err(ErrorPayload::invalid_request("no good").with_cause("because"))
        }))
        .endpoint(Endpoint::new("deny", |_req: Request| async move {
            Err(ErrorPayload::new(ErrorCode::AuthFailure, "not yours"))
        }))
        .endpoint(Endpoint::new("slow", |_req: Request| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(Value::Null)
        }))
        .default_endpoint("say")
        .serve(bus)
        .await
        .expect("serve")
}

#[tokio::test]
async fn invoke_answers_200_with_the_result() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let svc = echo_service(&bus).await;
    let gw = start(&bus).await;

    let resp = gw
        .http
        .post(gw.url("/v1/invoke/echo.say"))
        .header("X-Session-Id", "s-1")
        .header("X-Tenant-Id", "acme")
        .header("X-User-Id", "u-9")
        .body(r#"{"x": 1}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "echo": {"x": 1},
            "session": "s-1",
            "tenant": "acme",
            "user": "u-9",
            "channel": "http",
            "from": "http",
        })
    );

    // The service's default endpoint, and an empty body as a null payload.
    let (status, body) = json(gw.post("/v1/invoke/echo", "").await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["echo"], Value::Null);
    gw.stop().await;
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn handler_errors_keep_their_code_and_status() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = echo_service(&bus).await;
    let gw = start(&bus).await;

    let (status, body) = json(gw.post("/v1/invoke/echo.fail", "{}").await).await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert_eq!(message, "no good");
    assert_eq!(body["cause"], "because");

    let (status, body) = json(gw.post("/v1/invoke/echo.deny", "{}").await).await;
    let message = assert_error(status, &body, 403, "AUTH_FAILURE");
    assert_eq!(message, "not yours");
    gw.stop().await;
}

#[tokio::test]
async fn slow_handlers_are_504_within_the_timeout() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = echo_service(&bus).await;
    let gw = start_with(
        &bus,
        GatewayConfig {
            invoke_timeout: Duration::from_millis(800),
            ..GatewayConfig::default()
        },
    )
    .await;

    // ?timeout_ms= shortens the wait…
    let started = Instant::now();
    let (status, body) = json(gw.post("/v1/invoke/echo.slow?timeout_ms=200", "{}").await).await;
    let message = assert_error(status, &body, 504, "AGENT_TIMEOUT");
    assert!(message.contains("200 ms"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // …but never lengthens it past invoke_timeout.
    let started = Instant::now();
    let (status, body) = json(gw.post("/v1/invoke/echo.slow?timeout_ms=60000", "{}").await).await;
    let message = assert_error(status, &body, 504, "AGENT_TIMEOUT");
    assert!(message.contains("800 ms"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
    gw.stop().await;
}

#[tokio::test]
async fn no_responders_is_503_at_once() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start(&bus).await;
    let started = Instant::now();
    let (status, body) = json(gw.post("/v1/invoke/nobody.home", "{}").await).await;
    let message = assert_error(status, &body, 503, "AGENT_UNAVAILABLE");
    assert!(message.contains("weft.invoke.nobody.home"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2));
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_is_400() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = echo_service(&bus).await;
    let gw = start(&bus).await;

    let (status, body) = json(gw.post("/v1/invoke/echo.say", "[1, 2").await).await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert!(message.contains("line 1 column"), "{message}");

    let (status, body) = json(gw.post("/v1/invoke/echo.say.more", "{}").await).await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert!(message.contains("at most two tokens"), "{message}");

    let (status, body) = json(gw.post("/v1/invoke/ec%20ho", "{}").await).await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert!(message.contains("\"ec ho\""), "{message}");

    for query in ["timeout_ms=soon", "timeout_ms=0"] {
        let (status, body) =
            json(gw.post(&format!("/v1/invoke/echo.say?{query}"), "{}").await).await;
        let message = assert_error(status, &body, 400, "INVALID_REQUEST");
        assert!(message.contains("timeout_ms"), "{query}: {message}");
    }
    gw.stop().await;
}
