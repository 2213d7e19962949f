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
use weft_flows::{RunStatus, RunStore};

use crate::Proc;
use crate::processes::{wait_registered, write_flow};

/// Calls per (endpoint, flow run id), from the `weft.flow.run_id` metadata steps carry.
type Calls = Arc<Mutex<HashMap<(String, String), u32>>>;

fn record(calls: &Calls, endpoint: &str, r: &Request) {
    let run = r.envelope.metadata["weft.flow.run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    *calls
        .lock()
        .unwrap()
        .entry((endpoint.to_owned(), run))
        .or_default() += 1;
}

/// 300 triggers at about 30/s while the worker is SIGKILLed 20 times and restarted at
/// once: every run completes (none lost, none stuck, none failed), no step of a run is
/// called more often than its attempts say (a completed step never runs again), and
/// every run's announcement is stored exactly once (its publish step's event id is
/// the same on every attempt, so JetStream de-duplicates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_worker_sigkilled_20_times_under_load_loses_and_strands_nothing() {
    const RUNS: usize = 300;
    const KILLS: usize = 20;
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let calls: Calls = Arc::default();
    let (c1, c2) = (calls.clone(), calls.clone());
    let _svc = Service::new("fx", "1.0.0")
        .endpoint(Endpoint::new("first", move |r: Request| {
            record(&c1, "first", &r);
            async { Ok(json!({"ok": 1})) }
        }))
        .endpoint(Endpoint::new("slow", move |r: Request| {
            record(&c2, "slow", &r);
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
        "--ack-wait-ms",
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
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(250 + 37 * (kill as u64 % 7))).await;
        worker.kill();
        worker = Proc::weft("worker", &args, server.dir());
    }
    publisher.await.unwrap();

    let store = RunStore::open(&bus).await.unwrap();
    let runs = eventually(Duration::from_secs(90), || async {
        let runs = store.list(Some("sturdy")).await.unwrap();
        (runs.len() == RUNS && runs.iter().all(|r| r.status == RunStatus::Completed))
            .then_some(runs)
    })
    .await
    .unwrap_or_else(|| {
        let runs = futures::executor::block_on(store.list(Some("sturdy"))).unwrap();
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
    let mut repeated = 0;
    for run in &runs {
        for (i, endpoint) in ["first", "slow"].into_iter().enumerate() {
            let n = calls
                .get(&(endpoint.to_owned(), run.id.clone()))
                .copied()
                .unwrap_or(0);
            let attempts = run.steps[i].attempts;
            assert!(
                n >= 1 && n <= attempts,
                "run {} step {endpoint}: {n} calls, {attempts} attempts",
                run.id
            );
            repeated += (attempts > 1) as usize;
        }
    }
    eprintln!("{KILLS} kills: {repeated} step attempts repeated over {RUNS} runs");
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
