//! Registry entries appear on serve and are deleted on clean stop. (Expiry after
//! SIGKILL is tested end to end in the workspace's tests/, with a real process.)

use std::time::Duration;

use serde_json::json;
use weft_bus::registry::{Kind, Registry};
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::{TestServer, eventually};

#[tokio::test]
async fn entries_appear_with_schemas_and_are_deleted_on_stop() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let svc = Service::new("tickets", "0.2.0")
        .description("tickets")
        .metadata("team", json!("support"))
        .endpoint(
            Endpoint::new("get", |_r: Request| async { Ok(json!({})) })
                .description("get a ticket")
                .input_schema(json!({"type": "object", "properties": {"id": {"type": "string"}}})),
        )
        .serve(&bus)
        .await
        .unwrap();
    let registry = Registry::open(&bus).await.unwrap();
    let entries = registry
        .list_kind(Kind::Service, Some("tickets"))
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.version, "0.2.0");
    assert_eq!(e.endpoints[0].name, "get");
    assert_eq!(e.endpoints[0].subject, "weft.invoke.tickets.get");
    assert_eq!(
        e.endpoints[0].input_schema.as_ref().unwrap()["type"],
        "object"
    );
    assert!(e.endpoints[0].default, "a single endpoint is the default");

    let listing = registry.listing().await.unwrap();
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].instances, 1);
    assert_eq!(listing[0].metadata["team"], "support");
    // Listing by kind: this service, and no agents.
    assert_eq!(registry.listing_kind(Kind::Service).await.unwrap(), listing);
    assert!(registry.listing_kind(Kind::Agent).await.unwrap().is_empty());

    // Heartbeats keep it past the TTL (3 s in the harness).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        registry.list().await.unwrap().len(),
        1,
        "heartbeat did not keep the entry"
    );

    svc.stop().await.unwrap();
    assert!(
        registry.list().await.unwrap().is_empty(),
        "entry not deleted on clean stop"
    );
}

#[tokio::test]
async fn dropped_registrations_expire_within_the_ttl() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let registry = Registry::open(&bus).await.unwrap();
    let reg = weft_bus::registry::Registration::new(Kind::Flow, "f", "1.0.0");
    let kept = registry.register(reg).await.unwrap();
    drop(kept); // heartbeat stops, no delete
    assert_eq!(registry.list().await.unwrap().len(), 1);
    let gone = eventually(Duration::from_secs(6), || async {
        registry.list().await.unwrap().is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "entry outlived its TTL");
}

#[tokio::test]
async fn resources_are_idempotent_and_conflicts_are_named() {
    let server = TestServer::start().await;
    let bus = server.bus().await; // created once with the test config
    let again = weft_bus::resources::ensure(&bus, &weft_bus::testing::test_resources()).await;
    assert!(
        again.is_ok(),
        "same config should be a no-op: {:?}",
        again.err()
    );
    let other = weft_bus::resources::ResourceConfig {
        events_max_age: Duration::from_secs(3600),
        ..weft_bus::testing::test_resources()
    };
    let err = weft_bus::resources::ensure(&bus, &other).await.unwrap_err();
    assert_eq!(err.kind(), weft_bus::ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("WEFT_EVENTS"), "{err}");
}
