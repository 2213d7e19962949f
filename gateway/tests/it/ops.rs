//! `/metrics`, `/healthz`, `/readyz`, 404/405, auth, the insecure-bind refusal and the
//! registry entry.

use std::time::Duration;

use serde_json::json;
use weft_bus::registry::{Kind, Registry};
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::{TestServer, eventually};
use weft_gateway::{Gateway, GatewayConfig};

use crate::common::{assert_error, json, start, start_with};

#[tokio::test]
async fn metrics_count_requests_by_route_pattern() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start(&bus).await;
    let (status, _) = json(gw.post("/v1/events/metrics.probe", "{}").await).await;
    assert_eq!(status, 202);
    let (status, _) = json(gw.get("/no/such/route").await).await;
    assert_eq!(status, 404);

    let resp = gw.get("/metrics").await;
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("weft_http_requests_total"), "{text}");
    assert!(
        text.contains("weft_http_request_duration_seconds"),
        "{text}"
    );
    assert!(text.contains("weft_events_published_total"), "{text}");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("weft_http_requests_total{")
                && l.contains(r#"route="/v1/events/{event_type}""#)
                && l.contains(r#"status="202""#)
                && l.contains(r#"method="POST""#)
        })
        .unwrap_or_else(|| panic!("no request counter for the events route:\n{text}"));
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1, "{line}");
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    // Route patterns only, never raw paths.
    assert!(!text.contains("metrics.probe"), "{text}");
    assert!(!text.contains("/no/such/route"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn healthz_and_readyz_with_resources() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start(&bus).await;
    let (status, body) = json(gw.get("/healthz").await).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = json(gw.get("/readyz").await).await;
    assert_eq!((status, body), (200, json!({"status": "ready"})));
    gw.stop().await;
}

#[tokio::test]
async fn readyz_is_503_and_names_what_is_missing() {
    let server = TestServer::start().await;
    let bus = server.connect().await; // no streams, no buckets
    let gw = start(&bus).await;
    let (status, body) = json(gw.get("/healthz").await).await;
    assert_eq!(status, 200, "liveness does not depend on resources: {body}");
    let (status, body) = json(gw.get("/readyz").await).await;
    let message = assert_error(status, &body, 503, "NOT_READY");
    assert!(message.contains("stream WEFT_EVENTS"), "{message}");
    assert!(message.contains("KV bucket weft_registry"), "{message}");
    assert!(message.contains("weft up"), "{message}");
    gw.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_the_json_error_shape() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start(&bus).await;
    let (status, body) = json(gw.get("/v2/whatever").await).await;
    let message = assert_error(status, &body, 404, "NOT_FOUND");
    assert!(message.contains("/v2/whatever"), "{message}");

    let resp = gw.get("/v1/events/ticket.created").await;
    let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
    assert_eq!(allow, "POST");
    let (status, body) = json(resp).await;
    assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");

    let (status, body) = json(gw.post("/healthz", "").await).await;
    assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");
    gw.stop().await;
}

#[tokio::test]
async fn a_token_guards_every_route_but_healthz() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start_with(
        &bus,
        GatewayConfig {
            auth_token: Some("s3cret".into()),
            ..GatewayConfig::default()
        },
    )
    .await;

    let resp = gw.post("/v1/events/ticket.created", "{}").await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (status, body) = json(resp).await;
    let message = assert_error(status, &body, 401, "AUTH_FAILURE");
    assert!(message.contains("Authorization"), "{message}");

    for path in ["/metrics", "/readyz", "/nowhere"] {
        let (status, body) = json(gw.get(path).await).await;
        assert_error(status, &body, 401, "AUTH_FAILURE");
    }

    let wrong = gw
        .http
        .post(gw.url("/v1/events/ticket.created"))
        .bearer_auth("guess")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = json(wrong).await;
    let message = assert_error(status, &body, 401, "AUTH_FAILURE");
    assert!(!message.contains("s3cret"), "{message}");

    let basic = gw
        .http
        .get(gw.url("/readyz"))
        .basic_auth("u", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);

    let right = gw
        .http
        .post(gw.url("/v1/events/ticket.created"))
        .bearer_auth("s3cret")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 202);

    let (status, _) = json(gw.get("/healthz").await).await;
    assert_eq!(status, 200, "liveness needs no token");
    gw.stop().await;
}

#[tokio::test]
async fn public_addresses_without_a_token_are_refused_before_binding() {
    let server = TestServer::start().await;
    let bus = server.connect().await;
    let err = Gateway::bind(
        bus.clone(),
        GatewayConfig {
            addr: "0.0.0.0:0".parse().unwrap(),
            ..GatewayConfig::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, weft_gateway::Error::Insecure { .. }), "{err}");
    assert!(err.to_string().contains("0.0.0.0:0"), "{err}");

    // A port in use is a clear bind error naming the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Gateway::bind(
        bus,
        GatewayConfig {
            addr,
            ..GatewayConfig::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, weft_gateway::Error::Bind { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn the_registry_entry_lives_while_serving_and_goes_on_shutdown() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let registry = Registry::open(&bus).await.unwrap();
    let gw = start(&bus).await;
    let addr = gw.addr.to_string();

    let entries = eventually(Duration::from_secs(3), || async {
        let e = registry
            .list_kind(Kind::Gateway, Some("gateway"))
            .await
            .unwrap();
        (!e.is_empty()).then_some(e)
    })
    .await
    .expect("the gateway registered itself");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].metadata["addr"], addr.as_str());
    assert_eq!(entries[0].metadata["url"], format!("http://{addr}"));

    // Heartbeats keep it past the harness's 3 s TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        registry.list_kind(Kind::Gateway, None).await.unwrap().len(),
        1
    );
    gw.stop().await;
    assert!(
        registry
            .list_kind(Kind::Gateway, None)
            .await
            .unwrap()
            .is_empty(),
        "entry not deleted on graceful shutdown"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let svc = Service::new("sleepy", "1.0.0")
        .endpoint(Endpoint::new("nap", |_r: Request| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            Ok(json!({"rested": true}))
        }))
        .serve(&bus)
        .await
        .unwrap();
    let gw = start(&bus).await;
    let url = gw.url("/v1/invoke/sleepy.nap");
    let in_flight = tokio::spawn(gw.http.post(url).body("{}").send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = gw.addr;
    gw.stop().await; // returns once the in-flight request is answered

    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    let (status, body) = json(resp).await;
    assert_eq!((status, body), (200, json!({"rested": true})));
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "still accepting connections after shutdown"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_describes_every_v1_route_and_each_answers() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let gw = start(&bus).await;
    let (status, doc) = json(gw.get("/v1/openapi.json").await).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc["info"]["title"], "Weft gateway");
    let paths = doc["paths"].as_object().expect("paths");
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "/v1/agents/{agent}/runs",
            "/v1/events/{event_type}",
            "/v1/flows",
            "/v1/flows/{flow}/runs",
            "/v1/invoke/{target}",
            "/v1/invoke/{target}/stream",
            "/v1/runs/{id}",
            "/v1/runs/{id}/approve",
            "/v1/runs/{id}/cancel",
            "/v1/runs/{id}/retry",
        ]
    );
    let start = &paths["/v1/flows/{flow}/runs"];
    assert!(
        start["get"].is_object() && start["post"].is_object(),
        "{start}"
    );
    let publish = &paths["/v1/events/{event_type}"]["post"];
    assert_eq!(
        publish["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Accepted"
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.contains_key("ErrorBody"), "{schemas:?}");
    let invoke_params = paths["/v1/invoke/{target}"]["post"]["parameters"]
        .as_array()
        .unwrap();
    assert!(
        invoke_params
            .iter()
            .any(|p| p["name"] == "timeout_ms" && p["in"] == "query"),
        "{invoke_params:?}"
    );
    // Every documented path is routed: a request with a bad token or body never meets
    // the 404 fallback.
    for path in listed {
        let concrete = path
            .replace("{event_type}", "probe.doc")
            .replace("{target}", "nobody")
            .replace("{flow}", "nobody")
            .replace("{agent}", "nobody")
            .replace("{id}", "nobody");
        let (status, body) = json(gw.post(&concrete, "{").await).await;
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            status != 404 || !message.starts_with("no route"),
            "{concrete} is not routed: {body}"
        );
    }
    gw.stop().await;
}
