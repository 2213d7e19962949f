//! Durable flows through the CLI and the HTTP API, with real processes: a sleep whose
//! timer survives a restart of every process (nats-server included), manual starts,
//! approvals, cancel and retry, and the inspection commands.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_bus::Bus;
use weft_bus::testing::eventually;

use crate::processes::{wait_registered, write_flow};
use crate::{Proc, Up, http_client, weft_output};

async fn get(http: &str, path: &str) -> (u16, Value) {
    let resp = http_client()
        .get(format!("http://{http}{path}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post(http: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = http_client()
        .post(format!("http://{http}{path}"))
        .header("x-user-id", "ada")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn run_status(http: &str, id: &str) -> Option<String> {
    let (code, run) = get(http, &format!("/v1/runs/{id}")).await;
    (code == 200).then(|| run["status"].as_str().unwrap_or_default().to_owned())
}

async fn until_status(http: &str, id: &str, want: &str, within: Duration) -> Value {
    if let Some(run) = eventually(within, || async {
        let (code, run) = get(http, &format!("/v1/runs/{id}")).await;
        (code == 200 && run["status"] == want).then_some(run)
    })
    .await
    {
        return run;
    }
    let (code, run) = get(http, &format!("/v1/runs/{id}")).await;
    panic!("run {id} is not {want} within {within:?}: {code} {run:#}");
}

/// Prints the logs of the test's processes when the test fails.
struct Dump(Vec<std::path::PathBuf>);

impl Drop for Dump {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.0 {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {} (last lines)", p.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

async fn ready(http: &str) {
    let up = eventually(Duration::from_secs(30), || async {
        let resp = http_client()
            .get(format!("http://{http}/readyz"))
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
    assert!(up.is_some(), "the gateway at {http} is not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_outlives_a_restart_of_every_process_and_runs_are_driven_over_cli_and_http() {
    let mut up = Up::start(&[]);
    let nats = format!("nats://127.0.0.1:{}", up.nats_port);
    let http = up.http.clone();
    ready(&http).await;
    let dir = up.dir.path().to_owned();
    let napper = write_flow(
        &dir,
        "napper",
        json!({"name": "napper", "steps": [
            {"name": "nap", "sleep": "6s"},
            {"name": "after", "transform": "{n: .trigger.payload.n, slept_until: .steps.nap.output.until}"}
        ]}),
    );
    let gate = write_flow(
        &dir,
        "gate",
        json!({"name": "gate", "steps": [
            {"name": "ok", "approval": {"prompt": "ship ${trigger.payload.what}?", "timeout": "1h"}},
            {"name": "done", "transform": ".steps.ok.output"}
        ]}),
    );
    let doomed = write_flow(
        &dir,
        "doomed",
        json!({"name": "doomed", "steps": [
            {"name": "call", "invoke": "nobody.home", "timeout_ms": 300, "max_attempts": 1}
        ]}),
    );
    let worker_args = [
        "flow",
        "worker",
        &napper,
        &gate,
        &doomed,
        "--server",
        &nats,
        "--lease-ms",
        "2000",
    ];
    let mut worker = Proc::weft("worker", &worker_args, &dir);
    let worker_log = worker.log.clone();
    let _dump = Dump(vec![
        worker_log,
        dir.join("weft-up.log"),
        dir.join("worker-again.log"),
    ]);
    let bus = Bus::connect(&nats).await.unwrap();
    let registry = weft_bus::registry::Registry::open(&bus).await.unwrap();
    wait_registered(&registry, "doomed").await;

    // `weft flow ls` shows the three flows.
    let flows: Value =
        serde_json::from_str(&weft_output(&["flow", "ls", "--json", "--server", &nats])).unwrap();
    let names: Vec<&str> = flows
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["doomed", "gate", "napper"], "{flows:#}");
    let (code, listed) = get(&http, "/v1/flows").await;
    assert_eq!((code, listed.as_array().map(Vec::len)), (200, Some(3)));

    // A sleeping run outlives the worker, the gateway and nats-server.
    let (code, started) = post(&http, "/v1/flows/napper/runs", json!({"n": 7})).await;
    assert_eq!(code, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    let run = until_status(&http, &id, "waiting", Duration::from_secs(10)).await;
    assert_eq!(run["steps"][0]["waiting_for"], "sleep", "{run:#}");
    drop(bus);
    worker.kill();
    up.proc.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let data = dir.join("data");
    let port = up.nats_port.to_string();
    up.proc = Proc::weft(
        "weft-up-again",
        &[
            "up",
            "--nats-port",
            &port,
            "--http",
            &http,
            "--data",
            data.to_str().unwrap(),
        ],
        &dir,
    );
    ready(&http).await;
    let _worker = Proc::weft("worker-again", &worker_args, &dir);
    let run = until_status(&http, &id, "completed", Duration::from_secs(30)).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(6),
        "woke after {:?}",
        t0.elapsed()
    );
    assert_eq!(run["output"]["n"], 7, "{run:#}");
    assert_eq!(run["steps"][1]["attempts"], 1);
    assert_eq!(run["cause"], "manual");

    // `weft flow start --wait`; an approval from HTTP.
    let id = weft_output(&[
        "flow",
        "start",
        "gate",
        r#"{"what": "v2"}"#,
        "--server",
        &nats,
    ]);
    let id = id.trim();
    let run = until_status(&http, id, "waiting", Duration::from_secs(10)).await;
    assert_eq!(run["steps"][0]["input"], "ship v2?");
    let (code, body) = post(
        &http,
        &format!("/v1/runs/{id}/approve"),
        json!({"step": "nope"}),
    )
    .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (409, Some("CONFLICT")),
        "{body}"
    );
    let (code, body) = post(
        &http,
        &format!("/v1/runs/{id}/approve"),
        json!({"step": "ok"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let run = until_status(&http, id, "completed", Duration::from_secs(10)).await;
    assert_eq!(
        run["output"]["by"], "ada",
        "the X-User-Id header approved it"
    );
    let (code, body) = post(&http, &format!("/v1/runs/{id}/cancel"), json!({})).await;
    assert_eq!(code, 409, "an ended run is not cancelled: {body}");

    // `weft flow cancel` of a waiting run; `weft flow show`.
    let id = weft_output(&[
        "flow",
        "start",
        "gate",
        r#"{"what": "v3"}"#,
        "--server",
        &nats,
    ]);
    let id = id.trim().to_owned();
    until_status(&http, &id, "waiting", Duration::from_secs(10)).await;
    weft_output(&[
        "flow",
        "cancel",
        &id,
        "--reason",
        "changed my mind",
        "--server",
        &nats,
    ]);
    until_status(&http, &id, "cancelled", Duration::from_secs(10)).await;
    let shown: Value = serde_json::from_str(&weft_output(&[
        "flow", "show", &id, "--json", "--server", &nats,
    ]))
    .unwrap();
    assert_eq!(shown["steps"][0]["status"], "cancelled");
    assert!(
        shown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("changed my mind"),
        "{shown:#}"
    );
    assert_eq!(shown["definition"]["name"], "gate");
    let text = weft_output(&["flow", "show", &id, "--server", &nats]);
    assert!(text.contains("status   cancelled"), "{text}");

    // A failed run keeps its error; retried over HTTP, it fails again (still nobody
    // home), one retry later.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "flow",
            "start",
            "doomed",
            "--wait",
            "--timeout",
            "20s",
            "--json",
            "--server",
            &nats,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a failed run is a failed exit");
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "AGENT_UNAVAILABLE", "{failed:#}");
    let id = failed["id"].as_str().unwrap();
    let (code, body) = post(&http, &format!("/v1/runs/{id}/retry"), Value::Null).await;
    assert_eq!(code, 200, "{body}");
    let again = eventually(Duration::from_secs(10), || async {
        let (_, run) = get(&http, &format!("/v1/runs/{id}")).await;
        (run["status"] == "failed" && run["retries"] == 1).then_some(run)
    })
    .await
    .expect("the retried run did not fail again");
    assert_eq!(again["steps"][0]["attempts"], 2);
    let (code, _) = post(&http, &format!("/v1/runs/{id}/cancel"), json!({})).await;
    assert_eq!(code, 409);

    // Listings, with filters.
    let runs: Value = serde_json::from_str(&weft_output(&[
        "flow",
        "runs",
        "gate",
        "--status",
        "cancelled",
        "--json",
        "--server",
        &nats,
    ]))
    .unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
    let (code, runs) = get(&http, "/v1/flows/gate/runs?status=completed&since=1h").await;
    assert_eq!(
        (code, runs.as_array().map(Vec::len)),
        (200, Some(1)),
        "{runs}"
    );
    let (code, body) = get(&http, "/v1/flows/gate/runs?status=sleepy").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(run_status(&http, "no-such-run").await, None);
    let (code, body) = post(&http, "/v1/flows/unknown/runs", json!({})).await;
    assert_eq!(code, 404, "{body}");
}

/// A flow's agent step whose agent run waits for a person to approve a tool call: the
/// step fails with the retryable `INPUT_REQUIRED` and tries again with the same
/// `event_id`, which finds the same agent run; once the call is approved, the next
/// attempt gets that run's reply and the flow run completes with it.
#[tokio::test]
async fn a_flow_agent_step_waits_through_its_agent_runs_approval() {
    use std::sync::Arc;
    use weft_agents::{Agent, ScriptedModel, durable};
    use weft_bus::retry::RetryPolicy;
    use weft_bus::service::{Endpoint, Request, Service};
    use weft_flows::worker::{self, WorkerConfig};
    use weft_flows::{Flow, RunStatus, Runs, Step};

    let server = weft_bus::testing::TestServer::start().await;
    let bus = server.bus().await;
    let _svc = Service::new("fx", "1.0.0")
        .endpoint(
            Endpoint::new("list", |_r: Request| async { Ok(json!({"count": 3})) })
                .input_schema(json!({"type": "object"})),
        )
        .serve(&bus)
        .await
        .unwrap();
    let model = ScriptedModel::from_json(
        r#"{"rules": [{"match": ".*", "turns": [
            {"tool_calls": [{"name": "fx_list", "arguments": {}}]},
            {"content": "{{result.0./count}} counted"}]}]}"#,
    )
    .unwrap();
    let agent = Agent::new("counter")
        .manages(["fx"])
        .model(Arc::new(model))
        .approve(["fx_*"])
        .serve(&bus)
        .await
        .unwrap();
    let flow = Flow::manual("gated").step(
        Step::agent("count", "counter".parse().unwrap(), json!("count them"))
            .retry(RetryPolicy::fixed(Duration::from_millis(200)))
            .max_attempts(1000),
    );
    let config = WorkerConfig {
        lease: Duration::from_secs(2),
        ..WorkerConfig::default()
    };
    let worker = worker::start(&bus, vec![flow], config).await.unwrap();
    let runs = Runs::open(&bus).await.unwrap();
    let started = runs.start("gated", json!({})).await.unwrap();

    let waiting = eventually(Duration::from_secs(10), || async {
        durable::runs(&bus, Some("counter"), Some(RunStatus::Waiting), None)
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await
    .expect("the agent run waits for approval");
    let failing = eventually(Duration::from_secs(10), || async {
        let run = runs.find(&started.run_id).await.unwrap()?;
        let step = run.step("count")?.clone();
        (step.attempts >= 2).then_some(step)
    })
    .await
    .expect("the step tries again");
    assert_eq!(
        failing.error.as_ref().unwrap().code.as_str(),
        weft_flows::driver::INPUT_REQUIRED
    );
    assert!(
        failing
            .error
            .as_ref()
            .unwrap()
            .message
            .contains(&waiting.id),
        "{:?}",
        failing.error
    );

    durable::approve(&bus, &waiting.id, "ada", None)
        .await
        .unwrap();
    let run = runs
        .wait(&started.run_id, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output.as_ref().unwrap()["reply"], "3 counted");
    // Every attempt of the step found the same agent run.
    let agent_runs = durable::runs(&bus, Some("counter"), None, None)
        .await
        .unwrap();
    assert_eq!(agent_runs.len(), 1, "{agent_runs:?}");
    assert_eq!(
        run.output.as_ref().unwrap()["run_id"],
        json!(agent_runs[0].id)
    );
    worker.stop().await;
    agent.stop().await.unwrap();
}
