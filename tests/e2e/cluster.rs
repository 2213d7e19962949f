//! Node faults on a real 3-node cluster (`weft_bus::testing::TestCluster`, every
//! stream and bucket with 3 replicas) while flows and agents work: a node SIGKILLed
//! under flow load loses, strands and fails no run; the registry's node restarted
//! leaves agents with their tools. (Publishing through a leader's death is tested in
//! weft-bus's cluster tests.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use weft_agents::{Agent, ScriptedModel};
use weft_bus::registry::Kind;
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::{TestCluster, eventually};
use weft_bus::{Bus, ConnectOptions};
use weft_flows::worker::{self, WorkerConfig};
use weft_flows::{Flow, RunFilter, RunStatus, Runs, Step};

async fn connect(urls: String, name: &str) -> Bus {
    ConnectOptions::new(urls)
        .name(name)
        .connect()
        .await
        .unwrap()
}

/// 450 triggers at about 30/s; the node leading the journal stream `WEFT_RUNS` (every
/// run's entries) is SIGKILLed a third of the way in and restarted two thirds in. Every
/// run completes: none lost, none stuck, none failed because of the fault. Steps that
/// met the election were retried (their attempts say so), not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_flow_load_loses_strands_and_fails_no_run() {
    const RUNS: usize = 450;
    let cluster = TestCluster::start(3).await;
    let admin = cluster.bus().await;
    let service_bus = connect(cluster.urls(), "fx").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let _svc = Service::new("fx", "1.0.0")
        .endpoint(Endpoint::new("work", move |r: Request| {
            c.fetch_add(1, Ordering::Relaxed);
            let n = r.payload()["n"].clone();
            async move { Ok(json!({ "n": n })) }
        }))
        .serve(&service_bus)
        .await
        .unwrap();
    let flow = Flow::new("sturdy", "job.submitted".parse().unwrap())
        .step(Step::invoke(
            "one",
            "fx.work".parse().unwrap(),
            json!("${trigger.payload}"),
        ))
        .step(Step::invoke(
            "two",
            "fx.work".parse().unwrap(),
            json!("${steps.one.output}"),
        ))
        .step(Step::publish(
            "done",
            "job.finished".parse().unwrap(),
            json!("${steps.two.output}"),
        ));
    let worker_bus = connect(cluster.urls(), "worker").await;
    let config = WorkerConfig {
        lease: Duration::from_secs(3),
        ..WorkerConfig::default()
    };
    let handle = worker::start(&worker_bus, vec![flow], config)
        .await
        .unwrap();

    let victim = cluster.node_of_leader(&admin, "WEFT_RUNS").await;
    let publisher_bus = connect(cluster.urls(), "publisher").await;
    let t: weft_bus::EventType = "job.submitted".parse().unwrap();
    let mut publish_errors = Vec::new();
    for n in 0..RUNS {
        if n == RUNS / 3 {
            cluster.kill(victim);
        }
        if n == 2 * RUNS / 3 {
            cluster.restart(victim).await;
        }
        if let Err(e) = publisher_bus.publish(&t, json!({ "n": n })).await {
            publish_errors.push(e.to_string());
        }
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    assert!(
        publish_errors.is_empty(),
        "publishes failed: {publish_errors:?}"
    );

    let store = Runs::open(&admin).await.unwrap();
    let sturdy = RunFilter {
        flow: Some("sturdy".into()),
        ..RunFilter::default()
    };
    let runs = eventually(Duration::from_secs(120), || async {
        let runs = store.list(&sturdy).await.ok()?;
        (runs.len() == RUNS && runs.iter().all(|r| r.status == RunStatus::Completed))
            .then_some(runs)
    })
    .await
    .unwrap_or_else(|| {
        let runs = futures::executor::block_on(store.list(&sturdy)).unwrap_or_default();
        let mut by_status: HashMap<&str, usize> = HashMap::new();
        for r in &runs {
            *by_status.entry(r.status.as_str()).or_default() += 1;
        }
        let failed: Vec<_> = runs
            .iter()
            .filter_map(|r| r.error.clone())
            .take(3)
            .collect();
        panic!(
            "node{victim} killed: {} runs of {RUNS}, by status {by_status:?}, errors {failed:?}",
            runs.len()
        )
    });
    let retried = runs
        .iter()
        .filter(|r| r.steps.iter().any(|s| s.attempts > 1))
        .count();
    eprintln!(
        "node{victim} (journal leader) killed: {RUNS} runs completed, {retried} with a step retried, {} calls",
        calls.load(Ordering::Relaxed)
    );
    assert!(
        weft_bus::dlq::list(&admin, None).await.unwrap().is_empty(),
        "a run was dead-lettered"
    );
    handle.stop().await;
}

/// Chats go on while the node leading the registry bucket is SIGKILLed and restarted:
/// the agent's registry view never loses its managed service, and every chat answers
/// with its tool (none answers without it, none fails). The agent, the service and the
/// caller are connected to another node, so the fault is the registry's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_registry_node_leaves_agents_their_tools() {
    let cluster = TestCluster::start(3).await;
    let admin = cluster.bus().await;
    let registry_node = cluster.node_of_leader(&admin, "KV_weft_registry").await;
    let other = (0..3).find(|i| *i != registry_node).unwrap();
    let bus = connect(cluster.url(other), "mesh").await;
    let _tickets = Service::new("tickets", "1.0.0")
        .endpoint(Endpoint::new("list", |_r: Request| async {
            Ok(json!({"count": 2}))
        }))
        .serve(&bus)
        .await
        .unwrap();
    let script = r#"{"rules": [{"match": ".*", "turns": [
        {"tool_calls": [{"name": "tickets_list", "arguments": {}}]},
        {"content": "{{result.0./count}} open"}
    ]}]}"#;
    let _agent = Agent::new("support")
        .manages(["tickets"])
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .serve(&bus)
        .await
        .unwrap();
    let watch = bus.registry_watch().await.unwrap().clone();

    let stop = Arc::new(AtomicBool::new(false));
    let lost_tools = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, lost, watch) = (stop.clone(), lost_tools.clone(), watch.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if watch.newest(Kind::Service, "tickets").is_none() {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let chat = || async {
        bus.invoke(&"support".parse().unwrap(), json!("how many open?"))
            .await
    };
    let (mut ok, mut failures) = (0, Vec::new());
    for i in 0..120 {
        if i == 20 {
            cluster.kill(registry_node);
        }
        if i == 70 {
            cluster.restart(registry_node).await;
        }
        match chat().await {
            Ok(out) => {
                assert_eq!(out["tool_calls"][0]["name"], "tickets_list", "{out}");
                assert_eq!(out["reply"], "2 open", "{out}");
                ok += 1;
            }
            Err(e) => failures.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    eprintln!(
        "registry node{registry_node} killed and restarted: {ok} chats answered with their tool"
    );
    assert!(failures.is_empty(), "chats failed: {failures:?}");
    assert_eq!(
        lost_tools.load(Ordering::Relaxed),
        0,
        "the agent's registry view lost its managed service"
    );
    // The restarted registry still holds the entries (file storage, 3 replicas).
    let listed = weft_bus::registry::Registry::open(&admin)
        .await
        .unwrap()
        .list_kind(Kind::Service, Some("tickets"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

/// Starts `weft up` against `urls` with `extra` flags, waits for its banner and stops
/// it with Ctrl-C; returns the banner and the log.
fn up_once(urls: &str, dir: &std::path::Path, extra: &[&str]) -> (String, String) {
    let http = format!("127.0.0.1:{}", crate::free_port());
    let mut args = vec!["up", "--server", urls, "--http", &http];
    args.extend(extra);
    let mut up = crate::Proc::weft("weft-up", &args, dir);
    let banner = up.banner();
    let status = up.interrupt(Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.join("weft-up.log")).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "weft up did not start and stop cleanly ({status:?}); banner:\n{banner}\nlog:\n{log}"
    );
    (banner, log)
}

/// The user's path on a cluster: `weft up` made the mesh with 1 replica, the operator
/// scales it with `weft resources update --replicas 3`, and `weft up` starts again on
/// it (it once refused: "exists with a different configuration"); `weft resources
/// ls` shows 3 replicas, a leader and current peers for every stream and bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_scaled_to_three_replicas_starts_again_and_lists_its_replicas() {
    let cluster = TestCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.urls();
    up_once(&urls, dir.path(), &[]);
    let updated =
        crate::weft_output(&["resources", "update", "--replicas", "3", "--server", &urls]);
    assert!(
        updated.contains("weft_registry: replicas 1 → 3"),
        "{updated}"
    );
    assert!(updated.contains("WEFT_EVENTS: replicas 1 → 3"), "{updated}");

    let (banner, log) = up_once(&urls, dir.path(), &[]);
    assert!(banner.contains("WEFT_EVENTS"), "{banner}");
    assert!(!log.contains("different configuration"), "{log}");

    let listed = eventually(Duration::from_secs(20), || async {
        let out = crate::weft_output(&["resources", "ls", "--json", "--server", &urls]);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let all_current = list.as_array().unwrap().iter().all(|r| {
            r["replicas"] == 3
                && r["leader"].is_string()
                && r["peers"].as_array().unwrap().len() == 2
                && r["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["current"] == true)
        });
        all_current.then_some(list)
    })
    .await
    .expect("every resource with 3 current replicas");
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bucket"].as_str().or(r["stream"].as_str()).unwrap())
        .collect();
    for want in [
        "WEFT_EVENTS",
        "WEFT_DLQ",
        "WEFT_RUNS",
        "WEFT_RUNQ",
        "weft_registry",
        "weft_flows",
        "weft_memory",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
}
