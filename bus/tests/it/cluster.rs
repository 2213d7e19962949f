//! Durable publish on a 3-node cluster ([`TestCluster`]) through leader elections: a
//! stream leader killed (or stopped) under publish load loses no acknowledged event and
//! stores none twice, and a publish that cannot be stored says whether its stream has
//! no leader or does not exist.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use serde_json::json;
use weft_bus::publish::MSG_ID_HEADER;
use weft_bus::testing::TestCluster;
use weft_bus::{Bus, ConnectOptions, Envelope, ErrorKind, EventType};

/// Events published in the kill test.
const TOTAL: usize = 1500;
/// Publishes in flight at once.
const IN_FLIGHT: usize = 8;

/// How many times each `Nats-Msg-Id` is stored in `stream`, reading all of its
/// `expected` messages in order (within 30 s).
async fn stored_ids(bus: &Bus, stream: &str, expected: u64) -> HashMap<String, usize> {
    let stream = bus.jetstream().get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = HashMap::new();
    for _ in 0..expected {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the stored events within 30 s")
            .expect("the ordered consumer is open")
            .unwrap();
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(MSG_ID_HEADER))
            .expect("every stored event has a message id")
            .to_string();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

#[tokio::test]
async fn killing_the_events_leader_under_load_loses_and_doubles_no_acked_publish() {
    take_the_events_leader_down_under_load(Outage::Kill, Client::OnAFollower).await;
}

#[tokio::test]
async fn killing_the_publishers_node_and_events_leader_loses_and_doubles_no_acked_publish() {
    take_the_events_leader_down_under_load(Outage::Kill, Client::OnTheLeader).await;
}

#[tokio::test]
async fn stopping_the_events_leader_under_load_loses_and_doubles_no_acked_publish() {
    take_the_events_leader_down_under_load(Outage::Stop, Client::OnAFollower).await;
}

/// How the leader goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// SIGKILL: the others elect a leader after their election timeout.
    Kill,
    /// SIGTERM: the leader hands its leaderships over as it shuts down.
    Stop,
}

/// Which node the publishing client is connected to when the leader is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Another node: the leader's route goes, the client stays connected.
    OnAFollower,
    /// The leader itself: the client loses its connection and moves to another node.
    OnTheLeader,
}

/// Publishes [`TOTAL`] events with [`IN_FLIGHT`] at a time through a client with the
/// default settings (publish budget 20 s); kills or stops the
/// events stream's leader after a third was acked and restarts it after two thirds;
/// then checks that no publish failed and the stream holds each event exactly once.
async fn take_the_events_leader_down_under_load(outage: Outage, client: Client) {
    let cluster = TestCluster::start(3).await;
    let setup = cluster.bus().await;
    let stream = setup.names().events_stream.clone();
    let leader = cluster
        .wait_for_leader(&setup, &stream, Duration::from_secs(30))
        .await;
    // The client connects to the first URL it is given, and moves down the list.
    let first = match client {
        Client::OnTheLeader => leader,
        Client::OnAFollower => (leader + 1) % 3,
    };
    let urls: Vec<String> = (0..3).map(|i| cluster.url((first + i) % 3)).collect();
    let bus = ConnectOptions::new(urls.join(",")).connect().await.unwrap();

    let acked = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (bus, acked) = (bus.clone(), acked.clone());
        tokio::spawn(async move {
            let event_type: EventType = "load.tick".parse().unwrap();
            futures::stream::iter(0..TOTAL)
                .map(|n| {
                    let env = Envelope::event(&event_type, json!({ "n": n }));
                    let (bus, acked) = (bus.clone(), acked.clone());
                    async move {
                        let started = Instant::now();
                        let result = bus.publish_envelope(&env).await;
                        acked.fetch_add(1, Ordering::SeqCst);
                        (env.event_id, result, started, Instant::now())
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
        })
    };
    let reached = |n: usize| {
        let acked = acked.clone();
        async move {
            while acked.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    reached(TOTAL / 3).await;
    let killed_at = Instant::now();
    match outage {
        Outage::Kill => cluster.kill(leader),
        Outage::Stop => cluster.stop(leader).await,
    }
    reached(2 * TOTAL / 3).await;
    let new_leader = cluster.node_of_leader(&setup, &stream).await;
    assert_ne!(
        new_leader, leader,
        "another node leads while node{leader} is down"
    );
    cluster.restart(leader).await;
    let results = publisher.await.unwrap();

    let failed: Vec<String> = results
        .iter()
        .filter_map(|(id, r, started, _)| {
            r.as_ref().err().map(|e| {
                let after = started.saturating_duration_since(killed_at);
                format!("{id} (sent {after:?} after the {outage:?}): {e}")
            })
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {TOTAL} publishes failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let duplicates = results
        .iter()
        .filter(|(_, r, _, _)| r.as_ref().is_ok_and(|p| p.duplicate))
        .count();

    cluster
        .wait_for_leader(&setup, &stream, Duration::from_secs(30))
        .await;
    let info = setup.jetstream().get_stream(&stream).await.unwrap();
    let messages = info.cached_info().state.messages;
    let ids = stored_ids(&setup, &stream, messages).await;
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<_> = results
        .iter()
        .filter(|(id, _, _, _)| !ids.contains_key(id))
        .map(|(id, _, _, _)| id)
        .collect();
    assert!(missing.is_empty(), "acked but not stored: {missing:?}");
    assert_eq!(
        messages, TOTAL as u64,
        "the stream holds exactly the events published"
    );

    let mut times: Vec<Instant> = results.iter().map(|(_, _, _, t)| *t).collect();
    times.sort();
    let (gap, gap_end) = times
        .windows(2)
        .map(|w| (w[1] - w[0], w[1]))
        .max()
        .expect("more than one publish");
    let slowest = results
        .iter()
        .map(|(_, _, started, done)| *done - *started)
        .max()
        .expect("publishes");
    eprintln!(
        "{outage:?}, {client:?}: node{leader} went down, node{new_leader} took over; longest \
         gap between acks {gap:?}, ending {:?} after the outage; slowest publish \
         {slowest:?}; {duplicates} publishes answered `duplicate` (a retry of a publish \
         already stored)",
        gap_end - killed_at
    );
    assert!(gap < Duration::from_secs(15), "the election took {gap:?}");
}

#[tokio::test]
async fn a_failed_publish_says_whether_its_stream_is_missing_or_has_no_leader() {
    let cluster = TestCluster::start(3).await;
    let bus = cluster.bus().await;
    let stream = bus.names().events_stream.clone();
    let leader = cluster
        .wait_for_leader(&bus, &stream, Duration::from_secs(30))
        .await;
    let event_type: EventType = "order.placed".parse().unwrap();

    // A prefix whose streams were never created: no stream takes the subject, and the
    // publish fails at once (one attempt), not after retrying for the whole budget.
    let elsewhere = ConnectOptions::new(cluster.urls())
        .prefix("nostreams".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let e = elsewhere
        .publish(&event_type, json!({}))
        .await
        .expect_err("no stream takes nostreams.events.>");
    assert_eq!(e.kind(), ErrorKind::Publish);
    let text = e.to_string();
    assert!(
        text.contains("stream NOSTREAMS_EVENTS does not exist; `weft up` creates it"),
        "{text}"
    );
    assert!(
        !text.contains("attempts"),
        "retried a missing stream: {text}"
    );

    // Kill the leader and one follower: the follower left has no quorum to elect one.
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    for i in (0..3).filter(|i| *i != survivor) {
        cluster.kill(i);
    }
    let budget = Duration::from_secs(2);
    let lonely = ConnectOptions::new(cluster.url(survivor))
        .publish_timeout(budget)
        .connect()
        .await
        .unwrap();
    let e = lonely
        .publish(&event_type, json!({}))
        .await
        .expect_err("a stream without quorum stores nothing");
    assert_eq!(e.kind(), ErrorKind::Publish);
    let text = e.to_string();
    assert!(
        text.contains(&format!("stream {stream} "))
            && text.contains("has no leader right now (a node is down or an election is running)"),
        "{text}"
    );
    assert!(text.contains("attempts"), "not retried: {text}");
    eprintln!("{text}");
}
