//! Middleware: user layers, endpoint timeouts, and the circuit breaker on outbound
//! invokes, against a real nats-server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use weft_bus::invoke::{InvokeRequest, Invoker};
use weft_bus::middleware::{
    BreakerConfig, BreakerState, CircuitBreakerLayer, Layer, ServiceBuilder, ServiceExt,
};
use weft_bus::service::{BoxHandler, Endpoint, Request, Service};
use weft_bus::testing::TestServer;
use weft_bus::{Envelope, ErrorCode, ErrorKind, ErrorPayload, Target};

/// A user layer: counts calls and rejects requests carrying `{"deny": true}`.
#[derive(Clone)]
struct Gatekeeper(Arc<AtomicUsize>);

impl Layer<BoxHandler> for Gatekeeper {
    type Service = tower::util::BoxCloneSyncService<Request, Value, ErrorPayload>;
    fn layer(&self, inner: BoxHandler) -> Self::Service {
        let count = self.0.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request| {
            count.fetch_add(1, Ordering::SeqCst);
            let inner = inner.clone();
            async move {
                if req.payload()["deny"] == true {
                    return Err(ErrorPayload::new(
                        ErrorCode::AuthFailure,
                        "denied by the gatekeeper",
                    ));
                }
                inner.oneshot(req).await
            }
        }))
    }
}

#[tokio::test]
async fn user_layers_and_endpoint_timeouts_wrap_handlers() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let _svc = Service::new("guarded", "1.0.0")
        .endpoint(Endpoint::new("ok", |_r: Request| async {
            Ok(json!("fine"))
        }))
        .endpoint(
            Endpoint::new("slow", |_r: Request| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(json!("late"))
            })
            .timeout(Duration::from_millis(200)),
        )
        .layer(Gatekeeper(seen.clone()))
        .serve(&bus)
        .await
        .unwrap();

    assert_eq!(
        bus.invoke(&"guarded.ok".parse().unwrap(), json!({}))
            .await
            .unwrap(),
        "fine"
    );
    let denied = bus
        .invoke(&"guarded.ok".parse().unwrap(), json!({"deny": true}))
        .await
        .unwrap_err();
    assert_eq!(denied.remote().unwrap().code, ErrorCode::AuthFailure);

    let started = std::time::Instant::now();
    let late = bus
        .invoke(&"guarded.slow".parse().unwrap(), json!({}))
        .await
        .unwrap_err();
    let remote = late.remote().expect("an error reply, not a client timeout");
    assert_eq!(remote.code, ErrorCode::AgentTimeout);
    assert!(remote.retryable);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "the layer saw every request"
    );
}

#[tokio::test]
async fn the_circuit_breaker_opens_rejects_half_opens_and_closes() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let breaker = CircuitBreakerLayer::new(BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_millis(500),
    });
    let invoker = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(Invoker::new(bus.clone()));
    let target: Target = "flaky.call".parse().unwrap();
    let call = |t: &Target| {
        let request = InvokeRequest::new(
            t.clone(),
            Envelope::request(t.to_string(), json!({})),
            Duration::from_secs(2),
        );
        invoker.clone().oneshot(request)
    };

    // Nothing serves the target: three no-responders open the circuit.
    for _ in 0..3 {
        let e = call(&target).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoResponders);
    }
    assert_eq!(breaker.state("flaky.call"), BreakerState::Open);
    let rejected = call(&target).await.unwrap_err();
    assert_eq!(rejected.kind(), ErrorKind::Rejected, "{rejected}");
    assert!(rejected.to_string().contains("circuit open"), "{rejected}");
    // Other targets are not affected.
    let other: Target = "other.call".parse().unwrap();
    let e = call(&other).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders);

    // After open_for, one trial: still failing → open again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(breaker.state("flaky.call"), BreakerState::HalfOpen);
    let e = call(&target).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::NoResponders,
        "the trial call goes through"
    );
    assert_eq!(breaker.state("flaky.call"), BreakerState::Open);

    // The target comes up; after open_for the trial succeeds and the circuit closes.
    let _svc = Service::new("flaky", "1.0.0")
        .endpoint(Endpoint::new("call", |_r: Request| async {
            Ok(json!("back"))
        }))
        .serve(&bus)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = call(&target).await.unwrap();
    assert_eq!(reply.payload.unwrap(), "back");
    assert_eq!(breaker.state("flaky.call"), BreakerState::Closed);

    // A non-retryable error reply is a healthy target saying no: it does not count.
    let _strict = Service::new("strict", "1.0.0")
        .endpoint(Endpoint::new("call", |_r: Request| async {
            Err::<Value, _>(ErrorPayload::invalid_request("no"))
        }))
        .serve(&bus)
        .await
        .unwrap();
    let strict: Target = "strict.call".parse().unwrap();
    for _ in 0..5 {
        let e = call(&strict).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Remote);
    }
    assert_eq!(breaker.state("strict.call"), BreakerState::Closed);
}
