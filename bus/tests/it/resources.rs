//! The mesh's resources: created once, differences accepted, upgraded or refused as
//! `weft_bus::resources` documents, and changed in place by `update`.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use weft_bus::ErrorKind;
use weft_bus::resources::{self, ResourceConfig, ResourceUpdate};
use weft_bus::testing::{TestServer, test_resources};

async fn config_of(bus: &weft_bus::Bus, stream: &str) -> stream::Config {
    bus.jetstream()
        .get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone()
}

#[tokio::test]
async fn ensure_is_idempotent_and_keeps_a_compatible_difference_with_a_note() {
    let server = TestServer::start().await;
    let bus = server.bus().await; // created once with the test config
    let again = resources::ensure(&bus, &test_resources()).await.unwrap();
    assert!(
        again.notes.is_empty(),
        "same config is a no-op: {:?}",
        again.notes
    );

    let other = ResourceConfig {
        events_max_age: Duration::from_secs(3600),
        ..test_resources()
    };
    let kept = resources::ensure(&bus, &other).await.unwrap();
    assert!(
        kept.notes.iter().any(|n| n.contains("WEFT_EVENTS")
            && n.contains("max age")
            && n.contains("weft resources update")),
        "{:?}",
        kept.notes
    );
    assert_eq!(
        config_of(&bus, "WEFT_EVENTS").await.max_age,
        test_resources().events_max_age,
        "ensure does not change a max age; update does"
    );
}

#[tokio::test]
async fn a_stream_with_other_subjects_or_retention_is_a_conflict_naming_it() {
    let server = TestServer::start().await;
    let bus = server.connect().await;
    bus.jetstream()
        .create_stream(stream::Config {
            name: "WEFT_DLQ".into(),
            subjects: vec!["somebody.else.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let e = resources::ensure(&bus, &test_resources())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("WEFT_DLQ") && text.contains("somebody.else.>"),
        "{text}"
    );

    let server = TestServer::start().await;
    let bus = server.connect().await;
    bus.jetstream()
        .create_stream(stream::Config {
            name: "WEFT_EVENTS".into(),
            subjects: vec!["weft.events.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    let e = resources::ensure(&bus, &test_resources())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("retention"), "{e}");
}

#[tokio::test]
async fn an_old_memory_registry_is_recreated_on_file_storage_with_expiry_markers() {
    let server = TestServer::start().await;
    let bus = server.connect().await;
    let ttl = test_resources().registry_ttl;
    // The registry as earlier versions made it.
    bus.jetstream()
        .create_key_value(kv::Config {
            bucket: "weft_registry".into(),
            history: 1,
            max_age: ttl,
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    let made = resources::ensure(&bus, &test_resources()).await.unwrap();
    assert!(
        made.notes
            .iter()
            .any(|n| n.contains("re-created KV bucket weft_registry")),
        "{:?}",
        made.notes
    );
    let c = config_of(&bus, "KV_weft_registry").await;
    assert_eq!(c.storage, stream::StorageType::File);
    assert_eq!(c.subject_delete_marker_ttl, Some(ttl));
    assert!(
        resources::ensure(&bus, &test_resources())
            .await
            .unwrap()
            .notes
            .is_empty()
    );
}

#[tokio::test]
async fn replicas_beyond_a_single_server_are_refused_clearly_and_update_changes_max_ages() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let e = resources::ensure(
        &bus,
        &ResourceConfig {
            replicas: Some(3),
            ..test_resources()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::JetStream, "{e}");
    assert!(e.to_string().contains("replicas"), "{e}");
    eprintln!("replicas 3 on one server: {e}");

    let notes = resources::update(
        &bus,
        &ResourceUpdate {
            events_max_age: Some(Duration::from_secs(14 * 24 * 3600)),
            dlq_max_age: Some(Duration::from_secs(3600)),
            ..ResourceUpdate::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        notes.len(),
        3,
        "events, its failures bucket and the DLQ: {notes:?}"
    );
    assert_eq!(
        config_of(&bus, "WEFT_EVENTS").await.max_age,
        Duration::from_secs(14 * 24 * 3600)
    );
    assert_eq!(
        config_of(&bus, "WEFT_DLQ").await.max_age,
        Duration::from_secs(3600)
    );
    let listed = resources::list(&bus).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        // Sorted by stream name: the buckets' `KV_…` first.
        [
            "weft_a2a_agents",
            "weft_failures",
            "weft_flows",
            "weft_memory",
            "weft_registry",
            "weft_tasks",
            "WEFT_DLQ",
            "WEFT_EVENTS",
            "WEFT_RUNQ",
            "WEFT_RUNS"
        ]
    );
    assert!(
        listed
            .iter()
            .all(|r| r.replicas == 1 && r.storage == "file")
    );
}
