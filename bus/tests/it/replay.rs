//! Dead letter listing and replay, and replay of stored events by sequence and by
//! time, against a real nats-server.

use std::time::Duration;

use serde_json::json;
use weft_bus::consumer::DeliveryError;
use weft_bus::dlq;
use weft_bus::replay::{self, End, Selection, Start};
use weft_bus::testing::{TestServer, eventually};
use weft_bus::{ErrorKind, EventType};

use crate::durable::{next_dead_letter, quick, subscriber};

/// Fails every first-hand delivery permanently and accepts replayed copies.
fn fail_unless_replayed(d: &weft_bus::consumer::Delivery) -> Result<(), DeliveryError> {
    if d.replayed {
        Ok(())
    } else {
        Err(DeliveryError::Permanent("bad data".into()))
    }
}

/// The dead letters, once `done` says they are as expected (within 5 s): a letter is
/// seen on `P.dlq.>` as the server routes it, which may be before the DLQ stream has
/// stored it.
async fn letters_once(
    bus: &weft_bus::Bus,
    done: impl Fn(&[dlq::DlqEntry]) -> bool,
) -> Vec<dlq::DlqEntry> {
    eventually(Duration::from_secs(5), || async {
        let entries = dlq::list(bus, None).await.unwrap();
        done(&entries).then_some(entries)
    })
    .await
    .expect("the dead letters were never as expected")
}

#[tokio::test]
async fn dlq_replay_yields_exactly_one_new_delivery_to_the_consumer_that_gave_up() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (picky, picky_seen) =
        subscriber(&bus, quick("picky", "order.>"), fail_unless_replayed).await;
    let (other, other_seen) = subscriber(&bus, quick("other", "order.>"), |_| Ok(())).await;
    let mut letters = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    let published = bus
        .publish(&"order.placed".parse().unwrap(), json!({"n": 7}))
        .await
        .unwrap();
    next_dead_letter(&mut letters).await;
    other_seen.wait_for(1, Duration::from_secs(5)).await;

    let entries = letters_once(&bus, |e| !e.is_empty()).await;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.subject, "weft.dlq.order.placed");
    let letter = entry.letter.clone().unwrap();
    assert_eq!(letter.consumer, "picky");
    assert_eq!(letter.stream_sequence, published.sequence);
    assert_eq!(dlq::get(&bus, entry.id).await.unwrap(), *entry);
    assert!(
        dlq::list(&bus, Some(&"invoice.>".parse().unwrap()))
            .await
            .unwrap()
            .is_empty()
    );

    let done = dlq::replay(&bus, entry.id, None).await.unwrap();
    assert_eq!(done.to_subject, "weft.replay.picky.order.placed");
    assert_eq!(done.event_id, published.event_id);
    picky_seen.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = picky_seen.all();
    assert_eq!(all.len(), 2, "exactly one new delivery");
    let again = &all[1].1;
    assert!(again.replayed);
    assert_eq!(again.subject, "weft.replay.picky.order.placed");
    assert_eq!(again.attempt, 1);
    assert_eq!(again.envelope.event_id, published.event_id);
    assert_eq!(again.envelope.payload, Some(json!({"n": 7})));
    assert!(
        again
            .envelope
            .metadata
            .keys()
            .all(|k| !k.starts_with("weft.dlq.")),
        "{:?}",
        again.envelope.metadata
    );
    assert_eq!(other_seen.len(), 1, "other consumers do not see the replay");

    // The dead letter is gone once the replay was acked.
    assert!(dlq::list(&bus, None).await.unwrap().is_empty());
    let e = dlq::get(&bus, entry.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = dlq::replay(&bus, entry.id, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    picky.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn a_replayed_event_that_fails_again_is_dead_lettered_again() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (handle, seen) = subscriber(&bus, quick("stubborn", "order.>"), |_| {
        Err(DeliveryError::Permanent("still bad".into()))
    })
    .await;
    let mut letters = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    bus.publish(&"order.placed".parse().unwrap(), json!({}))
        .await
        .unwrap();
    next_dead_letter(&mut letters).await;
    let id = letters_once(&bus, |e| !e.is_empty()).await[0].id;
    dlq::replay(&bus, id, None).await.unwrap();
    let env = next_dead_letter(&mut letters).await;
    assert_eq!(
        env.metadata["weft.dlq.original_subject"],
        "weft.replay.stubborn.order.placed"
    );
    assert_eq!(seen.len(), 2);
    // The replayed letter is gone and a new one is stored.
    let entries = letters_once(&bus, |e| e.iter().any(|l| l.id != id)).await;
    assert_eq!(
        entries.len(),
        1,
        "a new dead letter, not swallowed as a duplicate"
    );
    assert_ne!(entries[0].id, id);
    handle.stop().await;
}

#[tokio::test]
async fn dlq_replay_all_by_event_type_to_a_subject_reaches_every_consumer() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    // Fails the first time it sees an event, then accepts it.
    let known = std::sync::Mutex::new(std::collections::HashSet::new());
    let (a, a_seen) = subscriber(&bus, quick("a", "order.>"), move |d| {
        if known.lock().unwrap().insert(d.envelope.event_id.clone()) {
            Err(DeliveryError::Permanent("bad".into()))
        } else {
            Ok(())
        }
    })
    .await;
    let (b, b_seen) = subscriber(&bus, quick("b", "order.>"), |_| Ok(())).await;
    let mut letters = bus.subscribe_subject("weft.dlq.>", None).await.unwrap();
    for t in ["order.placed", "order.cancelled", "order.placed"] {
        bus.publish(&t.parse().unwrap(), json!({})).await.unwrap();
    }
    for _ in 0..3 {
        next_dead_letter(&mut letters).await;
    }
    b_seen.wait_for(3, Duration::from_secs(5)).await;
    let placed: EventType = "order.placed".parse().unwrap();
    let to = bus.subjects().events(&placed);
    let done = dlq::replay_all(&bus, Some(&placed.clone().into()), Some(&to))
        .await
        .unwrap();
    assert_eq!(done.len(), 2);
    assert!(
        done.iter()
            .all(|r| r.to_subject == "weft.events.order.placed")
    );
    // Republished to the events subject: both consumers get both events again.
    b_seen.wait_for(5, Duration::from_secs(5)).await;
    a_seen.wait_for(5, Duration::from_secs(5)).await;
    let left = dlq::list(&bus, None).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].subject, "weft.dlq.order.cancelled");

    let e = dlq::replay_all(&bus, None, Some("weft.events.>"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSubject, "{e}");
    a.stop().await;
    b.stop().await;
}

/// A dead letter of a `bulk.item` event given up on by consumer `picky`; `n` makes it
/// unique.
fn bulk_letter(n: u64) -> dlq::DeadLetter {
    dlq::DeadLetter {
        original_subject: "weft.events.bulk.item".into(),
        stream: "WEFT_EVENTS".into(),
        stream_sequence: n,
        consumer: "picky".into(),
        attempts: 1,
        reason: dlq::Reason::Permanent,
        last_error: "bad data".into(),
        first_failed_at: None,
        last_failed_at: "2026-11-21T14:00:00.000Z".into(),
    }
}

#[tokio::test]
async fn dlq_replay_all_pipelines_many_letters_and_stops_at_one_it_cannot_replay() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (picky, picky_seen) =
        subscriber(&bus, quick("picky", "bulk.>"), fail_unless_replayed).await;
    let t: EventType = "bulk.item".parse().unwrap();
    // More than the republishes awaiting their acks at once (64).
    let n = 70;
    for i in 0..n {
        let raw = weft_bus::Envelope::event(&t, json!(i)).to_bytes().unwrap();
        dlq::publish(&bus, &raw, None, &bulk_letter(i))
            .await
            .unwrap();
    }
    let ids: Vec<u64> = dlq::list(&bus, None)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), n as usize);

    let done = dlq::replay_all(&bus, None, None).await.unwrap();
    assert_eq!(
        done.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids,
        "every one, oldest first"
    );
    assert!(
        done.iter()
            .all(|r| r.to_subject == "weft.replay.picky.bulk.item")
    );
    assert!(dlq::list(&bus, None).await.unwrap().is_empty());
    picky_seen
        .wait_for(n as usize, Duration::from_secs(10))
        .await;
    assert!(picky_seen.all().iter().all(|(_, d)| d.replayed));

    // Two good letters, one that wraps bytes that were not an envelope, one good.
    for i in n..n + 4 {
        let raw = match i - n {
            2 => b"not an envelope".to_vec(),
            _ => weft_bus::Envelope::event(&t, json!(i)).to_bytes().unwrap(),
        };
        dlq::publish(&bus, &raw, None, &bulk_letter(i))
            .await
            .unwrap();
    }
    let before = dlq::list(&bus, None).await.unwrap();
    let e = dlq::replay_all(&bus, None, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(
        e.to_string()
            .starts_with("replayed 2 dead letters, then stopped: "),
        "{e}"
    );
    assert!(e.to_string().contains("wraps bytes"), "{e}");
    let left: Vec<u64> = dlq::list(&bus, None)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, [before[2].id, before[3].id], "stopped at the bad one");
    picky_seen
        .wait_for(n as usize + 2, Duration::from_secs(10))
        .await;
    picky.stop().await;
}

#[tokio::test]
async fn replay_by_sequence_reaches_only_the_named_consumer() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (a, a_seen) = subscriber(&bus, quick("reader", "doc.>"), |_| Ok(())).await;
    let (b, b_seen) = subscriber(&bus, quick("bystander", "doc.>"), |_| Ok(())).await;
    let t: EventType = "doc.saved".parse().unwrap();
    let mut published = Vec::new();
    for n in 0..5 {
        published.push(bus.publish(&t, json!(n)).await.unwrap());
    }
    // Not matched by the pattern: never selected.
    bus.publish(&"other.thing".parse().unwrap(), json!(0))
        .await
        .unwrap();
    a_seen.wait_for(5, Duration::from_secs(5)).await;
    b_seen.wait_for(5, Duration::from_secs(5)).await;

    let selection = Selection::new(
        "doc.>".parse().unwrap(),
        Start::Sequence(published[1].sequence),
    )
    .until(End::Sequence(published[3].sequence));
    let mut printed = Vec::new();
    let mut events = replay::select(&bus, &selection).await.unwrap();
    while let Some(e) = events.next().await.unwrap() {
        printed.push(e.sequence);
    }
    let expected: Vec<u64> = published[1..=3].iter().map(|p| p.sequence).collect();
    assert_eq!(printed, expected);

    let report = replay::to_consumer(&bus, &selection, "reader")
        .await
        .unwrap();
    assert_eq!(
        (report.selected, report.replayed, report.skipped),
        (3, 3, 0)
    );
    a_seen.wait_for(8, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let replayed: Vec<_> = a_seen
        .all()
        .into_iter()
        .filter(|(_, d)| d.replayed)
        .map(|(_, d)| d.envelope.event_id)
        .collect();
    let ids: Vec<_> = published[1..=3]
        .iter()
        .map(|p| p.event_id.clone())
        .collect();
    assert_eq!(replayed, ids, "in order, each once");
    assert_eq!(a_seen.len(), 8);
    assert_eq!(b_seen.len(), 5, "the other consumer sees no replay");

    let e = replay::to_consumer(&bus, &selection, "nobody")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = replay::select(
        &bus,
        &Selection::new("doc.>".parse().unwrap(), Start::Sequence(0)),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn replay_by_time_selects_what_was_stored_since() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let t: EventType = "metric.sampled".parse().unwrap();
    bus.publish(&t, json!("old")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let recent_a = bus.publish(&t, json!("new 1")).await.unwrap();
    let recent_b = bus.publish(&t, json!("new 2")).await.unwrap();

    let since = Start::parse("1s").unwrap();
    let selection = Selection::new("metric.*".parse().unwrap(), since);
    let mut events = replay::select(&bus, &selection).await.unwrap();
    let mut got = Vec::new();
    while let Some(e) = events.next().await.unwrap() {
        got.push(e.envelope.unwrap().event_id);
    }
    assert_eq!(got, [recent_a.event_id.clone(), recent_b.event_id.clone()]);

    // An end in the past selects nothing stored after it.
    let until_old = Selection::new("metric.*".parse().unwrap(), Start::Sequence(1))
        .until(End::parse("1s").unwrap());
    let mut events = replay::select(&bus, &until_old).await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.envelope.unwrap().payload, Some(json!("old")));
    assert!(events.next().await.unwrap().is_none());

    // Delivered to a consumer created after the events were stored.
    let (h, seen) = subscriber(&bus, quick("late", "metric.>"), |_| Ok(())).await;
    let report = replay::to_consumer(&bus, &selection, "late").await.unwrap();
    assert_eq!(report.replayed, 2);
    seen.wait_for(2, Duration::from_secs(5)).await;
    let ok = eventually(Duration::from_secs(2), || async {
        (seen.len() == 2).then_some(())
    })
    .await;
    assert!(ok.is_some());
    h.stop().await;
}

#[tokio::test]
async fn replay_to_a_consumer_without_replay_filters_is_refused() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    bus.jetstream()
        .get_stream("WEFT_EVENTS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("foreign".into()),
            filter_subject: "weft.events.x.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let selection = Selection::new("x.>".parse().unwrap(), Start::Sequence(1));
    let e = replay::to_consumer(&bus, &selection, "foreign")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(e.to_string().contains("takes no replays"), "{e}");
}

#[tokio::test]
async fn an_events_stream_made_before_replays_gains_the_replay_subject() {
    use async_nats::jetstream::stream;
    let server = TestServer::start().await;
    let bus = server.connect().await;
    let config = weft_bus::testing::test_resources();
    // The events stream as earlier versions created it.
    bus.jetstream()
        .create_stream(stream::Config {
            name: "WEFT_EVENTS".into(),
            description: Some("Weft events".into()),
            subjects: vec!["weft.events.>".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: config.events_max_age,
            duplicate_window: config.duplicate_window,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let t: EventType = "kept.event".parse().unwrap();
    bus.publish(&t, json!(1)).await.unwrap();
    weft_bus::resources::ensure(&bus, &config).await.unwrap();
    weft_bus::resources::ensure(&bus, &config).await.unwrap();
    let info = bus
        .jetstream()
        .get_stream("WEFT_EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.subjects, ["weft.events.>", "weft.replay.>"]);
    assert_eq!(info.state.messages, 1, "stored events are kept");
}

/// The value of `series` (`name{labels}`) in the `/metrics` text, if it is there.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn replayed_deliveries_are_counted_by_the_consumer_that_handles_them() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    // n 1: fails first-hand; its replayed copy is retried once, then acked.
    // n 2: fails every time, replayed or not. n 3: always acked.
    let (handle, seen) = subscriber(&bus, quick("replays_counted", "parcel.>"), |d| {
        let n = d.envelope.payload.as_ref().and_then(|p| p["n"].as_i64());
        match (n, d.replayed, d.attempt) {
            (Some(1), true, 1) => Err(DeliveryError::Retry("once more".into())),
            (Some(1), true, _) | (Some(3), _, _) => Ok(()),
            _ => Err(DeliveryError::Permanent("bad parcel".into())),
        }
    })
    .await;
    let t: EventType = "parcel.sent".parse().unwrap();
    let mut published = Vec::new();
    for n in 1..=3 {
        published.push(bus.publish(&t, json!({ "n": n })).await.unwrap());
    }
    seen.wait_for(3, Duration::from_secs(5)).await;
    letters_once(&bus, |e| e.len() == 2).await;

    let replayed = dlq::replay_all(&bus, None, None).await.unwrap();
    assert_eq!(replayed.len(), 2);
    let third = Selection::new(
        "parcel.>".parse().unwrap(),
        Start::Sequence(published[2].sequence),
    )
    .until(End::Sequence(published[2].sequence));
    let report = replay::to_consumer(&bus, &third, "replays_counted")
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);

    // First-hand: n 1 and n 2 dead-lettered, n 3 acked. Replayed: n 1 nak then ack,
    // n 2 dead-lettered again, n 3 acked.
    let series = |name: &str, outcome: &str| {
        format!("{name}{{consumer=\"replays_counted\",outcome=\"{outcome}\"}}")
    };
    let want = [
        (series("weft_deliveries_total", "ack"), 3),
        (series("weft_deliveries_total", "nak"), 1),
        (series("weft_deliveries_total", "dead_letter"), 3),
        (series("weft_replayed_deliveries_total", "ack"), 2),
        (series("weft_replayed_deliveries_total", "nak"), 1),
        (series("weft_replayed_deliveries_total", "dead_letter"), 1),
    ];
    let settled = eventually(Duration::from_secs(10), || async {
        let text = weft_bus::metrics::render();
        want.iter()
            .all(|(s, n)| sample(&text, s) == Some(*n))
            .then_some(())
    })
    .await;
    let text = weft_bus::metrics::render();
    let got: Vec<_> = want.iter().map(|(s, _)| (s, sample(&text, s))).collect();
    assert!(settled.is_some(), "counted {got:#?}");
    let replayed_seen = seen.all().iter().filter(|(_, d)| d.replayed).count();
    assert_eq!(replayed_seen, 4, "n 1 twice, n 2 and n 3 once each");
    handle.stop().await;
}
