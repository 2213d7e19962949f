//! Durable publish (JetStream ack, de-duplication) and durable subscribers (explicit
//! ack, retry policies through redelivery, in-progress acks, dead letters, shared
//! consumers) against a real nats-server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use serde_json::json;
use weft_bus::consumer::{self, ConsumerHandle, Delivery, DeliveryError, DurableConfig};
use weft_bus::retry::{Backoff, Jitter, RetryPolicy};
use weft_bus::subscribe::Received;
use weft_bus::testing::{TestServer, eventually};
use weft_bus::{Bus, Envelope, ErrorKind, EventType};

/// What a test handler saw: each delivery with the time it arrived.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<(Instant, Delivery)>>>);

impl Seen {
    pub fn push(&self, d: &Delivery) {
        self.0.lock().unwrap().push((Instant::now(), d.clone()));
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn all(&self) -> Vec<(Instant, Delivery)> {
        self.0.lock().unwrap().clone()
    }
    /// Waits until at least `n` deliveries were seen.
    pub async fn wait_for(&self, n: usize, within: Duration) {
        let got = eventually(within, || async { (self.len() >= n).then_some(()) }).await;
        assert!(
            got.is_some(),
            "saw {} deliveries, expected at least {n}",
            self.len()
        );
    }
}

/// Starts a durable subscriber whose handler records each delivery and answers with
/// `outcome(delivery)`.
pub async fn subscriber(
    bus: &Bus,
    config: DurableConfig,
    outcome: impl Fn(&Delivery) -> Result<(), DeliveryError> + Send + Sync + 'static,
) -> (ConsumerHandle, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let outcome = Arc::new(outcome);
    let handle = consumer::start(bus, config, move |d: Delivery| {
        s.push(&d);
        let r = outcome(&d);
        async move { r }
    })
    .await
    .unwrap();
    (handle, seen)
}

/// A config with short waits for tests: ack wait 2 s, fixed 50 ms retry delay.
pub fn quick(name: &str, pattern: &str) -> DurableConfig {
    let mut c = DurableConfig::new(name, vec![pattern.parse().unwrap()]);
    c.ack_wait = Duration::from_secs(2);
    c.retry = RetryPolicy::fixed(Duration::from_millis(50));
    c
}

/// The next dead letter on `P.dlq.>`, within 10 s.
pub async fn next_dead_letter(sub: &mut weft_bus::subscribe::Subscription) -> Envelope {
    let letter: Received = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a dead letter within 10 s")
        .expect("subscription open");
    letter.envelope.expect("a dead letter is an envelope")
}

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
    let info = bus
        .jetstream()
        .get_stream("WEFT_EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 1, "stored once");

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
    assert_eq!(bad.kind(), ErrorKind::Envelope, "{bad}");
}

#[tokio::test]
async fn retryable_failures_are_redelivered_with_the_policy_back_off() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let mut config = quick("backoff", "order.placed");
    config.max_deliver = 5;
    config.retry = RetryPolicy::Exponential(
        Backoff::new(Duration::from_millis(200), Duration::from_millis(700))
            .unwrap()
            .jitter(Jitter::None),
    );
    // Fails three times, then succeeds.
    let (handle, seen) = subscriber(&bus, config, |d| {
        if d.attempt <= 3 {
            Err(DeliveryError::Retry(format!("down ({})", d.attempt)))
        } else {
            Ok(())
        }
    })
    .await;
    let mut dlq = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    bus.publish(&"order.placed".parse().unwrap(), json!({"n": 1}))
        .await
        .unwrap();
    seen.wait_for(4, Duration::from_secs(10)).await;

    let all = seen.all();
    let attempts: Vec<i64> = all.iter().map(|(_, d)| d.attempt).collect();
    assert_eq!(
        attempts,
        [1, 2, 3, 4],
        "the handler sees the attempt number"
    );
    // 200 ms, 400 ms, then the 700 ms cap (not 800 ms).
    for (i, expected) in [200u64, 400, 700].into_iter().enumerate() {
        let gap = all[i + 1].0 - all[i].0;
        let expected = Duration::from_millis(expected);
        assert!(
            gap >= expected - Duration::from_millis(20)
                && gap <= expected + Duration::from_millis(400),
            "gap {} was {gap:?}, expected about {expected:?}",
            i + 1
        );
    }
    // Acked on the 4th: no 5th delivery, no dead letter.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(seen.len(), 4);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), dlq.next())
            .await
            .is_err()
    );
    let text = weft_bus::metrics::render();
    assert!(
        text.contains("weft_redeliveries_total{consumer=\"backoff\"} 3"),
        "{text}"
    );
    assert!(text.contains("weft_deliveries_total{consumer=\"backoff\",outcome=\"nak\"} 3"));
    assert!(text.contains("weft_deliveries_total{consumer=\"backoff\",outcome=\"ack\"} 1"));
    handle.stop().await;
}

#[tokio::test]
async fn spent_deliveries_dead_letter_with_all_metadata() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let mut config = quick("failing", "order.placed");
    config.max_deliver = 3;
    config.retry = RetryPolicy::fixed(Duration::from_millis(300));
    let (handle, seen) = subscriber(&bus, config, |d| {
        Err(DeliveryError::Retry(format!(
            "downstream is down (attempt {})",
            d.attempt
        )))
    })
    .await;
    let mut dlq = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    let published = bus
        .publish(&"order.placed".parse().unwrap(), json!({"n": 1}))
        .await
        .unwrap();

    let env = next_dead_letter(&mut dlq).await;
    assert_eq!(
        env.event_id, published.event_id,
        "the original envelope is kept intact"
    );
    assert_eq!(env.payload.clone().unwrap()["n"], 1);
    let m = &env.metadata;
    assert_eq!(m["weft.dlq.original_subject"], "weft.events.order.placed");
    assert_eq!(m["weft.dlq.stream"], "WEFT_EVENTS");
    assert_eq!(m["weft.dlq.stream_sequence"], published.sequence);
    assert_eq!(m["weft.dlq.consumer"], "failing");
    assert_eq!(m["weft.dlq.attempts"], 3);
    assert_eq!(m["weft.dlq.reason"], "retries_spent");
    assert_eq!(m["weft.dlq.last_error"], "downstream is down (attempt 3)");
    let first = m["weft.dlq.first_failed_at"].as_str().unwrap();
    let last = m["weft.dlq.last_failed_at"].as_str().unwrap();
    assert!(first < last, "first failure {first} before the last {last}");
    let span = parse(last) - parse(first);
    // Two retry delays of 300 ms lie between the first and the last failure.
    assert!(
        span >= time::Duration::milliseconds(550) && span < time::Duration::seconds(3),
        "{span}"
    );
    let letter = weft_bus::dlq::DeadLetter::from_envelope(&env).unwrap();
    assert_eq!(letter.attempts, 3);

    // The original is terminated: no fourth delivery, nothing pending on the consumer.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(seen.len(), 3);
    let info = bus
        .jetstream()
        .get_stream("WEFT_EVENTS")
        .await
        .unwrap()
        .consumer_info("failing")
        .await
        .unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    // The failure record is gone once the message is dead-lettered.
    let failures = bus.kv("weft_failures").await.unwrap();
    let key = format!("failing.{}", published.sequence);
    assert!(failures.get(key).await.unwrap().is_none());
    assert!(
        weft_bus::metrics::render()
            .contains("weft_dead_letters_total{consumer=\"failing\",reason=\"retries_spent\"} 1")
    );
    handle.stop().await;
}

fn parse(t: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn a_permanent_error_dead_letters_on_the_first_failure() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let mut config = quick("strict", "order.placed");
    config.max_deliver = 5;
    let (handle, seen) = subscriber(&bus, config, |_| {
        Err(DeliveryError::Permanent("order has no lines".into()))
    })
    .await;
    let mut dlq = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    bus.publish(&"order.placed".parse().unwrap(), json!({}))
        .await
        .unwrap();
    let env = next_dead_letter(&mut dlq).await;
    assert_eq!(env.metadata["weft.dlq.attempts"], 1);
    assert_eq!(env.metadata["weft.dlq.reason"], "permanent");
    assert_eq!(env.metadata["weft.dlq.last_error"], "order has no lines");
    assert_eq!(
        env.metadata["weft.dlq.first_failed_at"],
        env.metadata["weft.dlq.last_failed_at"]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.len(), 1, "no retry after a permanent error");
    handle.stop().await;
}

#[tokio::test]
async fn retry_policy_none_dead_letters_a_retryable_failure_at_once() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let mut config = quick("once", "order.placed");
    config.retry = RetryPolicy::None;
    let (handle, seen) =
        subscriber(&bus, config, |_| Err(DeliveryError::Retry("flaky".into()))).await;
    let mut dlq = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    bus.publish(&"order.placed".parse().unwrap(), json!({}))
        .await
        .unwrap();
    let env = next_dead_letter(&mut dlq).await;
    assert_eq!(env.metadata["weft.dlq.reason"], "retries_spent");
    assert_eq!(seen.len(), 1);
    handle.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_is_redelivered() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (handle, seen) = subscriber(&bus, quick("panicky", "order.placed"), |d| {
        if d.attempt == 1 {
            panic!("bug on the first try");
        }
        Ok(())
    })
    .await;
    let mut dlq = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    bus.publish(&"order.placed".parse().unwrap(), json!({}))
        .await
        .unwrap();
    seen.wait_for(2, Duration::from_secs(5)).await;
    let attempts: Vec<i64> = seen.all().iter().map(|(_, d)| d.attempt).collect();
    assert_eq!(attempts, [1, 2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.len(), 2, "acked after the second delivery");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), dlq.next())
            .await
            .is_err()
    );
    handle.stop().await;
}

#[tokio::test]
async fn a_handler_over_its_timeout_is_cancelled_and_retried() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let mut config = quick("slowpoke", "order.placed");
    config.handler_timeout = Some(Duration::from_millis(200));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handle = consumer::start(&bus, config, move |d: Delivery| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if d.attempt == 1 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(())
        }
    })
    .await
    .unwrap();
    let started = Instant::now();
    bus.publish(&"order.placed".parse().unwrap(), json!({}))
        .await
        .unwrap();
    let twice = eventually(Duration::from_secs(3), || async {
        (calls.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    assert!(twice.is_some(), "not retried after the timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    handle.stop().await;
}

#[tokio::test]
async fn in_progress_acks_keep_a_slow_handler_from_redelivery() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let mut config = quick("slow", "report.requested");
    config.ack_wait = Duration::from_millis(500);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handle = consumer::start(&bus, config, move |_d: Delivery| {
        c.fetch_add(1, Ordering::SeqCst);
        // Four ack waits long.
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }
    })
    .await
    .unwrap();
    bus.publish(&"report.requested".parse().unwrap(), json!({}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "redelivered while the handler was working"
    );
    let info = bus
        .jetstream()
        .get_stream("WEFT_EVENTS")
        .await
        .unwrap()
        .consumer_info("slow")
        .await
        .unwrap();
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(info.num_ack_pending, 0, "acked when done");
    handle.stop().await;
}

#[tokio::test]
async fn two_instances_of_one_subscriber_share_work_without_double_handling() {
    let server = TestServer::start().await;
    let (bus_a, bus_b) = (server.bus().await, server.connect().await);
    let handled: Arc<Mutex<HashMap<String, Vec<&'static str>>>> = Arc::default();
    let running: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let mut handles = Vec::new();
    for (bus, instance) in [(&bus_a, "a"), (&bus_b, "b")] {
        let mut config = quick("shared", "job.>");
        config.concurrency = 2;
        let (h, r) = (handled.clone(), running.clone());
        handles.push(
            consumer::start(bus, config, move |d: Delivery| {
                let (h, r) = (h.clone(), r.clone());
                async move {
                    let id = d.envelope.event_id.clone();
                    assert!(
                        r.lock().unwrap().insert(id.clone()),
                        "{id} handled by two instances at once"
                    );
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    h.lock()
                        .unwrap()
                        .entry(id.clone())
                        .or_default()
                        .push(instance);
                    r.lock().unwrap().remove(&id);
                    Ok(())
                }
            })
            .await
            .unwrap(),
        );
    }
    let t: EventType = "job.run".parse().unwrap();
    for n in 0..40 {
        bus_a.publish(&t, json!({"n": n})).await.unwrap();
    }
    let done = eventually(Duration::from_secs(15), || async {
        (handled.lock().unwrap().len() == 40).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "only {} handled",
        handled.lock().unwrap().len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handled = handled.lock().unwrap().clone();
    assert!(
        handled.values().all(|by| by.len() == 1),
        "handled more than once: {handled:?}"
    );
    let by_a = handled.values().filter(|by| by[0] == "a").count();
    assert!(
        by_a > 0 && by_a < 40,
        "work did not spread: a handled {by_a} of 40"
    );
    for h in handles {
        h.stop().await;
    }
}

#[tokio::test]
async fn bad_bytes_are_dead_lettered_at_once_and_good_ones_acked() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (handle, seen) = subscriber(&bus, quick("ok", "thing.>"), |_| Ok(())).await;
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
    let env = next_dead_letter(&mut dlq).await;
    assert_eq!(env.event_type, "thing.two");
    assert_eq!(env.payload.unwrap()["raw"], "{not json");
    assert_eq!(env.metadata["weft.dlq.reason"], "invalid_envelope");
    assert_eq!(env.metadata["weft.dlq.wrapped"], true);
    assert!(
        env.metadata["weft.dlq.last_error"]
            .as_str()
            .unwrap()
            .contains("not a valid envelope")
    );
    seen.wait_for(1, Duration::from_secs(3)).await;
    handle.stop().await;
}

#[tokio::test]
async fn a_delivery_never_settled_is_dead_lettered_as_unacknowledged() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let mut config = quick("crashy", "order.placed");
    config.max_deliver = 1;
    config.ack_wait = Duration::from_millis(300);
    // Create the consumer, then stop: a "process" that takes the message and dies.
    let (handle, _) = subscriber(&bus, config.clone(), |_| Ok(())).await;
    handle.stop().await;
    bus.publish(&"order.placed".parse().unwrap(), json!({}))
        .await
        .unwrap();
    let raw: PullConsumer = bus
        .jetstream()
        .get_stream("WEFT_EVENTS")
        .await
        .unwrap()
        .get_consumer("crashy")
        .await
        .unwrap();
    let mut batch = raw.fetch().max_messages(1).messages().await.unwrap();
    let taken = batch.next().await.unwrap().unwrap();
    assert_eq!(taken.info().unwrap().delivered, 1);
    drop(batch); // never acked

    let mut dlq = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    let (handle, seen) = subscriber(&bus, config, |_| Ok(())).await;
    let env = next_dead_letter(&mut dlq).await;
    assert_eq!(env.metadata["weft.dlq.reason"], "unacknowledged");
    assert_eq!(env.metadata["weft.dlq.attempts"], 1);
    assert!(
        env.metadata["weft.dlq.last_error"]
            .as_str()
            .unwrap()
            .contains("never settled")
    );
    assert_eq!(seen.len(), 0, "the handler is not called past max_deliver");
    handle.stop().await;
}

#[tokio::test]
async fn a_restarted_subscriber_updates_its_consumer_and_keeps_its_position() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let t: EventType = "order.placed".parse().unwrap();
    let (handle, seen) = subscriber(&bus, quick("evolving", "order.placed"), |_| Ok(())).await;
    bus.publish(&t, json!(1)).await.unwrap();
    seen.wait_for(1, Duration::from_secs(5)).await;
    handle.stop().await;

    let mut config = quick("evolving", "order.placed");
    config.ack_wait = Duration::from_secs(7);
    config.max_ack_pending = 5;
    config.deliver_all = true; // ignored: the consumer exists
    let (handle, seen) = subscriber(&bus, config, |_| Ok(())).await;
    let info = bus
        .jetstream()
        .get_stream("WEFT_EVENTS")
        .await
        .unwrap()
        .consumer_info("evolving")
        .await
        .unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(7));
    assert_eq!(info.config.max_ack_pending, 5);
    assert!(
        info.config
            .filter_subjects
            .contains(&"weft.replay.evolving.order.placed".to_owned()),
        "{:?}",
        info.config.filter_subjects
    );
    bus.publish(&t, json!(2)).await.unwrap();
    seen.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let payloads: Vec<_> = seen
        .all()
        .into_iter()
        .map(|(_, d)| d.envelope.payload.unwrap())
        .collect();
    assert_eq!(
        payloads,
        [json!(2)],
        "the first event is not delivered again"
    );
    handle.stop().await;
}

#[tokio::test]
async fn conflicting_consumers_and_bad_settings_are_refused_with_the_reason() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    bus.jetstream()
        .get_stream("WEFT_EVENTS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::push::Config {
            durable_name: Some("pushy".into()),
            deliver_subject: "somewhere".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let start = |config: DurableConfig| {
        let bus = bus.clone();
        async move {
            consumer::start(&bus, config, |_d: Delivery| async { Ok(()) })
                .await
                .err()
                .expect("refused")
        }
    };
    let e = start(quick("pushy", "a.b")).await;
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("pushy"), "{e}");

    let mut c = quick("zero", "a.b");
    c.max_deliver = 0;
    let e = start(c).await;
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("max_deliver"), "{e}");
    let mut c = quick("quick", "a.b");
    c.ack_wait = Duration::from_millis(5);
    assert!(start(c).await.to_string().contains("ack_wait"));
    let e = start(DurableConfig::new("nothing", vec![])).await;
    assert!(e.to_string().contains("at least one filter"), "{e}");
    let e = start(quick("a b", "a.b")).await;
    assert_eq!(e.kind(), ErrorKind::InvalidSubject);
}

#[tokio::test]
async fn layers_wrap_the_handler_and_pending_counts_are_sampled() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let t: EventType = "audit.logged".parse().unwrap();
    for n in 0..3 {
        bus.publish(&t, json!(n)).await.unwrap();
    }
    let mut config = quick("layered", "audit.logged");
    config.deliver_all = true;
    config.concurrency = 1;
    config.max_ack_pending = 1;
    config.stats_interval = Duration::from_millis(100);
    let config = config.layer(tower::util::MapRequestLayer::new(|mut d: Delivery| {
        d.envelope
            .metadata
            .insert("seen_by_layer".into(), json!(true));
        d
    }));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let seen = Seen::default();
    let s = seen.clone();
    let handle = consumer::start(&bus, config, move |d: Delivery| {
        s.push(&d);
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Ok(())
        }
    })
    .await
    .unwrap();
    seen.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(seen.all()[0].1.envelope.metadata["seen_by_layer"], true);
    // One delivered and waiting for its ack, two not yet delivered.
    let sampled = eventually(Duration::from_secs(3), || async {
        let text = weft_bus::metrics::render();
        (text.contains("weft_consumer_pending{consumer=\"layered\",state=\"pending\"} 2")
            && text.contains("weft_consumer_pending{consumer=\"layered\",state=\"ack_pending\"} 1"))
        .then_some(())
    })
    .await;
    assert!(sampled.is_some(), "{}", weft_bus::metrics::render());
    gate.add_permits(3);
    seen.wait_for(3, Duration::from_secs(5)).await;
    handle.stop().await;
}
