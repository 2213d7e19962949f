//! Durable publish (JetStream ack, de-duplication) and the durable consumer
//! (explicit ack, retry, dead letter) against a real nats-server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use weft_bus::consumer::{self, Delivery, DeliveryError, DurableConfig};
use weft_bus::testing::{TestServer, eventually};
use weft_bus::{Envelope, EventType};

#[tokio::test]
async fn durable_publish_is_acked_stored_once_and_seen_by_subscribers() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let mut sub = bus
        .subscribe_events(&"ticket.>".parse().unwrap(), None)
        .await
        .unwrap();
    let t: EventType = "ticket.created".parse().unwrap();
    let env = Envelope::event(&t, json!({"title": "x"}));
    let first = bus.publish_envelope(&env).await.unwrap();
    assert_eq!(first.stream, "WEFT_EVENTS");
    assert!(!first.duplicate);
    let second = bus.publish_envelope(&env).await.unwrap();
    assert!(
        second.duplicate,
        "same event_id inside the window must be stored once"
    );
    assert_eq!(second.sequence, first.sequence);

    let got = tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.subject, "weft.events.ticket.created");
    assert_eq!(got.envelope.unwrap().event_id, env.event_id);

    let bad = bus
        .publish(&t, json!("x".repeat(2 * 1024 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), weft_bus::ErrorKind::Envelope, "{bad}");
}

#[tokio::test]
async fn durable_consumer_retries_then_dead_letters_with_metadata() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let mut config = DurableConfig::new("failing", vec!["order.placed".parse().unwrap()]);
    config.max_deliver = 3;
    config.retry_delay = Duration::from_millis(100);
    let handle = consumer::start(&bus, config, move |d: Delivery| {
        let a = a.clone();
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            assert_eq!(d.attempt as usize, a.load(Ordering::SeqCst));
            Err::<(), _>(DeliveryError::Retry("downstream is down".into()))
        }
    })
    .await
    .unwrap();
    let mut dlq = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    let published = bus
        .publish(&"order.placed".parse().unwrap(), json!({"n": 1}))
        .await
        .unwrap();

    let letter = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(letter.subject, "weft.dlq.order.placed");
    let env = letter.envelope.unwrap();
    assert_eq!(
        env.event_id, published.event_id,
        "the original envelope is kept intact"
    );
    assert_eq!(env.payload.unwrap()["n"], 1);
    assert_eq!(env.metadata["weft.dlq.attempts"], 3);
    assert_eq!(env.metadata["weft.dlq.consumer"], "failing");
    assert_eq!(
        env.metadata["weft.dlq.original_subject"],
        "weft.events.order.placed"
    );
    assert_eq!(env.metadata["weft.dlq.stream_sequence"], published.sequence);
    assert_eq!(env.metadata["weft.dlq.last_error"], "downstream is down");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    handle.stop().await;
}

#[tokio::test]
async fn durable_consumer_acks_and_dead_letters_bad_bytes_at_once() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let handle = consumer::start(
        &bus,
        DurableConfig::new("ok", vec!["thing.>".parse().unwrap()]),
        move |_d: Delivery| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        },
    )
    .await
    .unwrap();
    let mut dlq = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    bus.publish(&"thing.one".parse().unwrap(), json!(1))
        .await
        .unwrap();
    // Raw garbage on the events subject: dead-lettered with the reason, not dropped.
    bus.jetstream()
        .publish("weft.events.thing.two", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(5), dlq.next())
        .await
        .unwrap()
        .unwrap();
    let env = letter.envelope.unwrap();
    assert_eq!(env.payload.unwrap()["raw"], "{not json");
    assert!(
        env.metadata["weft.dlq.last_error"]
            .as_str()
            .unwrap()
            .contains("not a valid envelope")
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            (seen.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await
        .is_some()
    );
    handle.stop().await;
}
