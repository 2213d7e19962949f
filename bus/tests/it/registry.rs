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
async fn a_watch_sees_entries_register_stop_and_expire() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let registry = Registry::open(&bus).await.unwrap();
    let early = registry
        .register(weft_bus::registry::Registration::new(
            Kind::Service,
            "early",
            "1.0.0",
        ))
        .await
        .unwrap();
    let watch = bus.registry_watch().await.unwrap();
    assert_eq!(
        watch.list_kind(Kind::Service, Some("early")).len(),
        1,
        "the initial listing holds what was registered before the watch"
    );
    let mut changes = watch.changes();
    changes.borrow_and_update();

    let svc = Service::new("late", "1.0.0")
        .endpoint(Endpoint::new("x", |_r: Request| async { Ok(json!({})) }))
        .serve(&bus)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("a registration is a change")
        .unwrap();
    assert_eq!(
        watch.newest(Kind::Service, "late").unwrap().endpoints[0].name,
        "x"
    );

    svc.stop().await.unwrap();
    let gone = eventually(Duration::from_secs(2), || async {
        watch.newest(Kind::Service, "late").is_none().then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "a clean stop removes the entry from the watch"
    );

    // Heartbeats rewrite the same value: the watch keeps the entry past the TTL
    // (3 s in the harness) without counting a change.
    let before = *changes.borrow_and_update();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(watch.list_kind(Kind::Service, Some("early")).len(), 1);
    assert_eq!(*changes.borrow(), before, "heartbeats are not changes");

    // A dropped registration stops heartbeating and expires: the expiry marker
    // reaches the watch.
    drop(early);
    let expired = eventually(Duration::from_secs(15), || async {
        watch
            .list_kind(Kind::Service, Some("early"))
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(expired.is_some(), "the watch still shows an expired entry");
}

#[tokio::test]
async fn reading_the_registry_creates_no_consumers() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let registry = Registry::open(&bus).await.unwrap();
    let _kept = registry
        .register(weft_bus::registry::Registration::new(
            Kind::Service,
            "s",
            "1.0.0",
        ))
        .await
        .unwrap();
    let consumers = || weft_bus::testing::consumers_on(&bus, "KV_weft_registry");
    for _ in 0..50 {
        assert_eq!(registry.list().await.unwrap().len(), 1);
        registry.list_kind(Kind::Service, Some("s")).await.unwrap();
    }
    assert_eq!(
        consumers().await,
        0,
        "one-shot listings left consumers behind"
    );
    let watch = bus.registry_watch().await.unwrap();
    for _ in 0..50 {
        assert_eq!(bus.registry_watch().await.unwrap().len(), 1);
    }
    assert_eq!(watch.len(), 1);
    assert_eq!(
        consumers().await,
        1,
        "one watch per connection, whatever the reads"
    );
}

#[tokio::test]
async fn a_watch_recovers_when_the_registry_bucket_is_recreated() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let registry = Registry::open(&bus).await.unwrap();
    let _a = registry
        .register(weft_bus::registry::Registration::new(
            Kind::Service,
            "a",
            "1.0.0",
        ))
        .await
        .unwrap();
    let watch = bus.registry_watch().await.unwrap().clone();
    assert!(watch.newest(Kind::Service, "a").is_some());

    // The bucket goes away under the watch and comes back empty.
    bus.jetstream()
        .delete_stream("KV_weft_registry")
        .await
        .unwrap();
    weft_bus::resources::ensure(&bus, &weft_bus::testing::test_resources())
        .await
        .unwrap();
    // A registration made now, in the new bucket, reaches the watch, and `a` is there
    // again once its heartbeat rewrote it.
    let registry = Registry::open(&bus).await.unwrap();
    let _b = registry
        .register(weft_bus::registry::Registration::new(
            Kind::Service,
            "b",
            "1.0.0",
        ))
        .await
        .unwrap();
    let both = eventually(Duration::from_secs(10), || async {
        (watch.newest(Kind::Service, "a").is_some() && watch.newest(Kind::Service, "b").is_some())
            .then_some(())
    })
    .await;
    assert!(
        both.is_some(),
        "the watch did not follow the new bucket: {:?}",
        watch.list()
    );
}

#[tokio::test]
async fn a_stopped_watch_keeps_its_view_and_follows_no_more() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let watch = bus.registry_watch().await.unwrap().clone();
    let registry = Registry::open(&bus).await.unwrap();
    let _first = registry
        .register(weft_bus::registry::Registration::new(
            Kind::Service,
            "first",
            "1.0.0",
        ))
        .await
        .unwrap();
    let mut changes = watch.changes();
    let seen = tokio::time::timeout(Duration::from_secs(2), async {
        while watch.newest(Kind::Service, "first").is_none() {
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert!(seen.is_ok(), "the watch follows before it is stopped");
    watch.stop();
    let _second = registry
        .register(weft_bus::registry::Registration::new(
            Kind::Service,
            "second",
            "1.0.0",
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        watch.newest(Kind::Service, "first").is_some(),
        "the view keeps what it had"
    );
    assert!(
        watch.newest(Kind::Service, "second").is_none(),
        "a stopped watch follows no more"
    );
}
