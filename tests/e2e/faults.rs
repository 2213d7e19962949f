//! Faults under load, with real processes: the flow worker SIGKILLed again and again
//! while triggers arrive. (Node faults of a 3-node cluster are in weft-bus's cluster
//! tests and below once the harness is in.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use weft_bus::registry::Registry;
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::{TestServer, eventually};
use weft_flows::{RunFilter, RunStatus, Runs};

use crate::Proc;
use crate::processes::{wait_registered, write_flow};

/// The attempts that reached a handler, per idempotency key (the request's `event_id`,
/// the same for every attempt of a step), from the `weft.flow.step.attempt` metadata
/// steps carry.
type Calls = Arc<Mutex<HashMap<String, Vec<u64>>>>;

fn record(calls: &Calls, r: &Request) {
    let attempt = r.envelope.metadata["weft.flow.step.attempt"]
        .as_u64()
        .unwrap_or_default();
    calls
        .lock()
        .unwrap()
        .entry(r.envelope.event_id.clone())
        .or_default()
        .push(attempt);
}

/// A small xorshift, seeded from the clock (printed, to replay a failure).
fn kill_delays(n: usize) -> (u64, Vec<Duration>) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut x = seed;
    let delays = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(150 + x % 500)
        })
        .collect();
    (seed, delays)
}

/// 1,000 triggers at about 30/s while the worker is SIGKILLed 100 times at random
/// moments and restarted at once: every run completes (none lost, none stuck, none
/// failed); no step whose completion was journaled was called again (every call of a
/// step came from an attempt at or before the one whose completion the journal
/// holds, and the journal holds one completion per step); and every run's
/// announcement is stored exactly once (its publish step's event id is the same on
/// every attempt, so JetStream de-duplicates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_worker_sigkilled_100_times_in_1000_runs_loses_strands_and_repeats_nothing() {
    const RUNS: usize = 1000;
    const KILLS: usize = 100;
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls: Calls = Arc::default();
    let (c1, c2) = (calls.clone(), calls.clone());
    let _svc = Service::new("fx", "1.0.0")
        .endpoint(Endpoint::new("first", move |r: Request| {
            record(&c1, &r);
            async { Ok(json!({"ok": 1})) }
        }))
        .endpoint(Endpoint::new("slow", move |r: Request| {
            record(&c2, &r);
            async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok(json!({"ok": 2}))
            }
        }))
        .serve(&bus)
        .await
        .unwrap();
    let file = write_flow(
        server.dir(),
        "sturdy",
        json!({"name": "sturdy", "trigger": "job.submitted", "steps": [
            {"name": "first", "invoke": "fx.first", "input": "${trigger.payload}"},
            {"name": "slow", "invoke": "fx.slow", "input": "${steps.first.output}"},
            {"name": "announce", "publish": "job.finished", "input": {"n": "${trigger.payload.n}"}}
        ]}),
    );
    let args = [
        "flow",
        "worker",
        file.as_str(),
        "--server",
        server.url(),
        "--lease-ms",
        "1000",
    ];
    let mut worker = Proc::weft("worker", &args, server.dir());
    let registry = Registry::open(&bus).await.unwrap();
    wait_registered(&registry, "sturdy").await;

    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let t: weft_bus::EventType = "job.submitted".parse().unwrap();
            for n in 0..RUNS {
                bus.publish(&t, json!({ "n": n })).await.unwrap();
                tokio::time::sleep(Duration::from_millis(33)).await;
            }
        })
    };
    let (seed, delays) = kill_delays(KILLS);
    eprintln!("kill delays from seed {seed}");
    for delay in delays {
        tokio::time::sleep(delay).await;
        worker.kill();
        worker = Proc::weft("worker", &args, server.dir());
    }
    publisher.await.unwrap();

    let store = Runs::open(&bus).await.unwrap();
    let sturdy = RunFilter {
        flow: Some("sturdy".into()),
        ..RunFilter::default()
    };
    let runs = eventually(Duration::from_secs(120), || async {
        let runs = store.list(&sturdy).await.unwrap();
        (runs.len() == RUNS && runs.iter().all(|r| r.status == RunStatus::Completed))
            .then_some(runs)
    })
    .await
    .unwrap_or_else(|| {
        let runs = futures::executor::block_on(store.list(&sturdy)).unwrap();
        let by_status = runs.iter().fold(HashMap::new(), |mut m, r| {
            *m.entry(r.status.as_str()).or_insert(0) += 1;
            m
        });
        panic!(
            "after {KILLS} kills: {} runs of {RUNS}, by status {by_status:?}",
            runs.len()
        )
    });

    let calls = calls.lock().unwrap().clone();
    let journal = weft_bus::runs::Journal::open(&bus).await.unwrap();
    let mut repeated = 0;
    for run in &runs {
        let entries = journal.read(&run.reference()).await.unwrap();
        for step in ["first", "slow"] {
            let key = weft_flows::worker::idempotency_key(&run.id, step);
            let completions: Vec<u32> = entries
                .iter()
                .filter(|(_, e)| e.step == step && e.event.name() == "step.completed")
                .map(|(_, e)| e.attempt)
                .collect();
            assert_eq!(
                completions.len(),
                1,
                "run {} step {step}: {completions:?}",
                run.id
            );
            let called = calls.get(&key).cloned().unwrap_or_default();
            assert!(
                !called.is_empty(),
                "run {} step {step} never called",
                run.id
            );
            assert!(
                called.iter().all(|a| *a <= u64::from(completions[0])),
                "run {} step {step}: called by attempts {called:?} after attempt {} completed",
                run.id,
                completions[0]
            );
            repeated += called.len() - 1;
        }
    }
    eprintln!("{KILLS} kills: {repeated} interrupted step calls repeated over {RUNS} runs");
    assert!(
        weft_bus::dlq::list(&bus, None).await.unwrap().is_empty(),
        "dead letters"
    );

    // Every announcement is stored once.
    let stream = bus.jetstream().get_stream("WEFT_EVENTS").await.unwrap();
    let info = stream
        .info_with_subjects("weft.events.job.finished")
        .await
        .unwrap();
    let stored: usize = info
        .filter_map(|s| async { s.ok() })
        .map(|(_, n)| n)
        .fold(0, |a, b| async move { a + b })
        .await;
    assert_eq!(stored, RUNS, "announcements stored");
    drop(worker);
}
