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

/// How many events the events stream holds on `subject`.
async fn stored(bus: &weft_bus::Bus, subject: &str) -> usize {
    let stream = bus.jetstream().get_stream("WEFT_EVENTS").await.unwrap();
    let info = stream.info_with_subjects(subject).await.unwrap();
    info.filter_map(|s| async { s.ok() })
        .map(|(_, n)| n)
        .fold(0, |a, b| async move { a + b })
        .await
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
    assert_eq!(
        stored(&bus, "weft.events.job.finished").await,
        RUNS,
        "announcements stored"
    );
    drop(worker);
}

/// When each call of a tool arrived, per idempotency key (the request's `event_id`).
type Arrivals = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// 30 chats of an agent served by `weft agent run` (a scripted model calling three
/// tools, the middle one slow), while the agent process is SIGKILLed 15 times at
/// random moments and restarted: every caller, sending its request again after an
/// error as a client would, gets the run's reply (none lost, none stuck); no tool call
/// whose result was journaled was made again (every call of a step arrived before its
/// journaled completion, and each step has one); each session's memory holds the
/// exchange once; and each run's `agent.run.completed` is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_process_sigkilled_between_tool_calls_resumes_its_runs_and_repeats_no_finished_tool()
{
    const CHATS: usize = 30;
    const KILLS: usize = 15;
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let arrivals: Arrivals = Arc::default();
    let endpoint = |name: &'static str, delay_ms: u64| {
        let arrivals = arrivals.clone();
        Endpoint::new(name, move |r: Request| {
            arrivals
                .lock()
                .unwrap()
                .entry(r.envelope.event_id.clone())
                .or_default()
                .push(weft_bus::envelope::now_rfc3339());
            let n = r.payload()["n"].clone();
            async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok(json!({ "n": n }))
            }
        })
        .input_schema(json!({"type": "object", "properties": {"n": {"type": "string"}}}))
    };
    let _svc = Service::new("fx", "1.0.0")
        .endpoint(endpoint("one", 20))
        .endpoint(endpoint("two", 300))
        .endpoint(endpoint("three", 20))
        .serve(&bus)
        .await
        .unwrap();
    let dir = server.dir();
    std::fs::write(
        dir.join("sturdy.script.json"),
        json!({"rules": [{"match": "(?i)job (?P<n>[0-9]+)", "turns": [
            {"tool_calls": [{"name": "fx_one", "arguments": {"n": "{{match.n}}"}}]},
            {"tool_calls": [{"name": "fx_two", "arguments": {"n": "{{result.0./n}}"}}]},
            {"tool_calls": [{"name": "fx_three", "arguments": {"n": "{{result.1./n}}"}}]},
            {"content": "done {{result.0./n}}/{{result.1./n}}/{{result.2./n}}"}
        ]}]})
        .to_string(),
    )
    .unwrap();
    let file = dir.join("sturdy.json");
    std::fs::write(
        &file,
        json!({"name": "sturdy", "manages": ["fx"], "provider": "scripted",
               "script": dir.join("sturdy.script.json")})
        .to_string(),
    )
    .unwrap();
    let file = file.to_string_lossy().into_owned();
    let args = [
        "agent",
        "run",
        file.as_str(),
        "--server",
        server.url(),
        "--lease-ms",
        "1000",
    ];
    let mut agent = Proc::weft("agent", &args, dir);
    let registry = Registry::open(&bus).await.unwrap();
    crate::processes::wait_registered_as(&registry, weft_bus::registry::Kind::Agent, "sturdy")
        .await;

    let request_id = |n: usize| {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("job-{n}").as_bytes()).to_string()
    };
    // Each caller sends its request, and the same request again after any error.
    let callers: Vec<_> = (0..CHATS)
        .map(|n| {
            let bus = bus.clone();
            let id = request_id(n);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100 * n as u64)).await;
                let target: weft_bus::Target = "sturdy".parse().unwrap();
                let mut tries = 0;
                loop {
                    tries += 1;
                    let mut env = weft_bus::Envelope::request(
                        "sturdy",
                        json!({"message": format!("job {n}"), "session_id": format!("job-{n}")}),
                    );
                    env.event_id = id.clone();
                    match bus.request(&target, env, Duration::from_secs(5)).await {
                        Ok(reply) => return (reply.payload.unwrap(), tries),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                    assert!(tries < 100, "chat {n} got no reply after {tries} tries");
                }
            })
        })
        .collect();
    let (seed, delays) = kill_delays(KILLS);
    eprintln!("kill delays from seed {seed}");
    for delay in delays {
        tokio::time::sleep(delay).await;
        agent.kill();
        agent = Proc::weft("agent", &args, dir);
    }
    let mut retried = 0;
    for (n, caller) in callers.into_iter().enumerate() {
        let (reply, tries) = tokio::time::timeout(Duration::from_secs(120), caller)
            .await
            .unwrap_or_else(|_| panic!("chat {n} is stuck"))
            .unwrap();
        assert_eq!(
            reply["reply"],
            format!("done {n}/{n}/{n}"),
            "chat {n}: {reply}"
        );
        assert_eq!(
            reply["run_id"],
            weft_agents::durable::run_id("sturdy", &request_id(n))
        );
        retried += tries - 1;
    }

    let arrivals = arrivals.lock().unwrap().clone();
    let journal = weft_bus::runs::Journal::open(&bus).await.unwrap();
    let memory = weft_agents::Memory::open(&bus).await.unwrap();
    let mut repeated = 0;
    for n in 0..CHATS {
        let run_id = weft_agents::durable::run_id("sturdy", &request_id(n));
        let r =
            weft_bus::runs::RunRef::new(weft_bus::runs::RunKind::Agent, "sturdy", &run_id).unwrap();
        let entries = journal.read(&r).await.unwrap();
        for step in [
            "turn_1", "tool_1_0", "turn_2", "tool_2_0", "turn_3", "tool_3_0", "turn_4",
        ] {
            let completed: Vec<&str> = entries
                .iter()
                .filter(|(_, e)| e.step == step && e.event.name() == "step.completed")
                .map(|(_, e)| e.at.as_str())
                .collect();
            assert_eq!(
                completed.len(),
                1,
                "run {run_id} step {step}: {completed:?}"
            );
            if !step.starts_with("tool_") {
                continue;
            }
            let key = weft_agents::durable::idempotency_key(&run_id, step);
            let calls = arrivals.get(&key).cloned().unwrap_or_default();
            assert!(!calls.is_empty(), "run {run_id} step {step} never called");
            assert!(
                calls.iter().all(|at| at.as_str() <= completed[0]),
                "run {run_id} step {step}: called at {calls:?}, after its completion at {}",
                completed[0]
            );
            repeated += calls.len() - 1;
        }
        let session: weft_agents::SessionId = format!("job-{n}").parse().unwrap();
        let history = memory.load("sturdy", &session).await.unwrap();
        assert_eq!(history.len(), 8, "session job-{n} holds the exchange once");
    }
    eprintln!(
        "{KILLS} kills: {repeated} interrupted tool calls repeated, {retried} requests sent again, over {CHATS} runs"
    );

    // Every run's end is announced once.
    assert_eq!(
        stored(&bus, "weft.events.agent.run.completed").await,
        CHATS,
        "agent.run.completed stored"
    );
    drop(agent);
}
