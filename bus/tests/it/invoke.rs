//! Invoke against a real nats-server: success, handler error, timeout, no responders,
//! requests sharing the reply inbox.

use std::time::Duration;

use serde_json::{Value, json};
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::TestServer;
use weft_bus::{Envelope, ErrorCode, ErrorKind, ErrorPayload, Target};

async fn echo_service(bus: &weft_bus::Bus) -> weft_bus::service::ServiceHandle {
    Service::new("echo", "1.0.0")
        .description("test service")
        .endpoint(Endpoint::new("say", |req: Request| async move {
            Ok(json!({ "echo": req.payload().clone(), "session": req.envelope.session_id }))
        }))
        .endpoint(Endpoint::new("fail", |_req: Request| async move {
            Err(ErrorPayload::invalid_request("no good").with_cause("because"))
        }))
        .endpoint(Endpoint::new("slow", |_req: Request| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(Value::Null)
        }))
        .endpoint(Endpoint::new("panic", |_req: Request| async move {
            if true {
                panic!("boom");
            }
            Ok(Value::Null)
        }))
        .default_endpoint("say")
        .serve(bus)
        .await
        .expect("serve")
}

#[tokio::test]
async fn invoke_returns_the_handler_result_and_copies_the_session() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let svc = echo_service(&bus).await;

    let target: Target = "echo.say".parse().unwrap();
    let mut req = Envelope::request("echo.say", json!({"x": 1}));
    req.session_id = Some("s-1".into());
    req.from = Some("tester".into());
    let sent_id = req.event_id.clone();
    let reply = bus
        .request(&target, req, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.payload.as_ref().unwrap()["echo"], json!({"x": 1}));
    assert_eq!(reply.payload.as_ref().unwrap()["session"], "s-1");
    assert_eq!(reply.event_type, "agent.response.final");
    assert!(reply.is_final);
    assert_eq!(reply.correlation_id.as_deref(), Some(sent_id.as_str()));
    assert_eq!(reply.to.as_deref(), Some("tester"));
    assert_eq!(reply.session_id.as_deref(), Some("s-1"));

    // The default endpoint answers on P.invoke.<service>.
    let v = bus
        .invoke(&"echo".parse().unwrap(), json!("hi"))
        .await
        .unwrap();
    assert_eq!(v["echo"], "hi");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn handler_errors_come_back_as_error_envelopes_with_their_code() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = echo_service(&bus).await;

    let err = bus
        .invoke(&"echo.fail".parse().unwrap(), json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote);
    let remote = err.remote().unwrap();
    assert_eq!(remote.code, ErrorCode::InvalidRequest);
    assert_eq!(remote.message, "no good");
    assert_eq!(remote.cause.as_deref(), Some("because"));

    // On the wire: an agent.response.error envelope plus the NATS micro headers.
    let msg = bus
        .client()
        .request(
            "weft.invoke.echo.fail",
            Envelope::request("echo.fail", json!({}))
                .to_bytes()
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let env = Envelope::from_slice(&msg.payload).unwrap();
    assert_eq!(env.event_type, "agent.response.error");
    assert!(env.is_final);
    let headers = msg.headers.unwrap();
    assert_eq!(
        headers.get("Nats-Service-Error").unwrap().as_str(),
        "no good"
    );
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );

    // A panic is caught and answered, retryable.
    let err = bus
        .invoke(&"echo.panic".parse().unwrap(), json!({}))
        .await
        .unwrap_err();
    let remote = err.remote().unwrap();
    assert_eq!(remote.code, ErrorCode::AgentUnavailable);
    assert!(remote.retryable);
    assert!(remote.cause.as_deref().unwrap().contains("boom"));

    // Bytes that are not an envelope get CODEC_FAILURE, not silence.
    let msg = bus
        .client()
        .request("weft.invoke.echo.say", "not json".into())
        .await
        .unwrap();
    let env = Envelope::from_slice(&msg.payload).unwrap();
    assert_eq!(env.payload.unwrap()["code"], "CODEC_FAILURE");
}

#[tokio::test]
async fn invoke_times_out_and_says_so() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = echo_service(&bus).await;
    let started = std::time::Instant::now();
    let err = bus
        .request(
            &"echo.slow".parse().unwrap(),
            Envelope::request("echo.slow", json!({})),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.to_string().contains("300 ms"), "{err}");
}

#[tokio::test]
async fn invoke_without_a_service_is_no_responders_at_once() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let started = std::time::Instant::now();
    let err = bus
        .invoke(&"nobody.home".parse().unwrap(), json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoResponders, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("weft.invoke.nobody.home"), "{err}");
}

#[tokio::test]
async fn services_are_nats_micro_services() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = echo_service(&bus).await;
    let msg = bus
        .client()
        .request("$SRV.INFO.echo", "".into())
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(info["name"], "echo");
    assert_eq!(info["version"], "1.0.0");
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&"weft.invoke.echo.say"), "{subjects:?}");
    assert!(subjects.contains(&"weft.invoke.echo"), "{subjects:?}");
}

/// Requests on one connection share one reply inbox. A request that ends first,
/// answered or given up, must not disturb the others: a slow request still gets its
/// reply after a fast one finished and after another one was dropped while waiting,
/// and many at once each get their own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_gets_its_reply_after_others_end_first() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = Service::new("nap", "1.0.0")
        .endpoint(Endpoint::new("for", |req: Request| async move {
            let ms = req.payload()["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!(ms))
        }))
        .serve(&bus)
        .await
        .unwrap();
    let target: Target = "nap.for".parse().unwrap();
    let call = |ms: u64| {
        let (bus, target) = (bus.clone(), target.clone());
        async move { bus.invoke(&target, json!({ "ms": ms })).await }
    };

    for _ in 0..5 {
        let slow = tokio::spawn(call(400));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Starts after the slow one and finishes first.
        assert_eq!(call(10).await.unwrap(), json!(10));
        // Starts after the slow one and is dropped while waiting.
        let dropped = tokio::time::timeout(Duration::from_millis(50), call(1_000)).await;
        assert!(dropped.is_err(), "the 1 s call cannot answer within 50 ms");
        let got = tokio::time::timeout(Duration::from_secs(3), slow)
            .await
            .expect("the slow request never got its reply")
            .unwrap();
        assert_eq!(got.unwrap(), json!(400));
    }

    // Many at once, in any order of completion, all answered exactly.
    let calls: Vec<_> = (0..64u64)
        .map(|i| tokio::spawn(call((i * 7) % 50)))
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let ms = (i as u64 * 7) % 50;
        assert_eq!(c.await.unwrap().unwrap(), json!(ms));
    }
}
