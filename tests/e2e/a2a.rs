//! A2A both ways against the official Python `a2a-sdk` 1.3.0 (issue "A2A both ways",
//! docs/a2a.md):
//!
//! - its client (`tests/a2a/py_client.py`) against `/a2a/support` of `weft up --demo`:
//!   card, send, stream, get, list, cancel of a running and of a finished task,
//!   subscribe, multi-turn memory through `contextId`, an unknown task, bad params,
//!   and with a token, 401; and against an agent whose tool needs approval, a task in
//!   `TASK_STATE_INPUT_REQUIRED` that its next message resumes;
//! - raw 0.3 requests in go-micro's documented shape;
//! - outbound: its server (`tests/a2a/echo_server.py`) reached by a JSON flow's `a2a`
//!   step, `weft a2a call`, the demo agent's `delegate`, and `weft a2a add`;
//! - tasks as mesh state: re-attach and cancel from a second gateway, and a gateway
//!   restart in the middle of a streaming task.
//!
//! The SDK is installed by `scripts/install-a2a-clients` (cached outside the
//! checkout); without it these tests fail with the install hint.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use weft_bus::Bus;
use weft_bus::testing::eventually;

use crate::{Proc, Up, http_client, weft_output};

/// The Python of the venv `scripts/install-a2a-clients` made.
fn python() -> PathBuf {
    let vars = crate::installed(
        "install-a2a-clients",
        "the A2A tests need Python 3.11 with venv and PyPI (a2a-sdk 1.3.0)",
    );
    PathBuf::from(
        vars.get("A2A_PYTHON")
            .expect("install-a2a-clients printed no A2A_PYTHON"),
    )
}

/// This repository's `tests/a2a/<file>`.
fn script(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/a2a")
        .join(file)
}

/// Runs `py_client.py` with `args` and returns its report (every check must pass).
async fn py_client(args: &[&str]) -> Value {
    let mut c = tokio::process::Command::new(python());
    c.arg(script("py_client.py"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), c.output())
        .await
        .expect("py_client.py ran over 240 s")
        .expect("py_client.py ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("py_client report is not JSON ({e}): {stdout}\nstderr:\n{stderr}")
    });
    let failed: Vec<(&String, &Value)> = report["checks"]
        .as_object()
        .expect("checks")
        .iter()
        .filter(|(_, c)| c["ok"] != true)
        .collect();
    assert!(
        failed.is_empty(),
        "failed checks: {failed:#?}\nstderr:\n{stderr}"
    );
    assert!(
        out.status.success(),
        "py_client exited {}\n{stderr}",
        out.status
    );
    report
}

/// The echo agent of `echo_server.py`, killed on drop; its log is in `_logs`.
struct Echo {
    _proc: std::process::Child,
    _logs: tempfile::TempDir,
    url: String,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self._proc.kill();
        let _ = self._proc.wait();
    }
}

/// Starts `echo_server.py` with `args` and waits for its `READY <url>` line.
fn echo(args: &[&str]) -> Echo {
    let logs = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(logs.path().join("echo.log")).unwrap();
    let mut child = Command::new(python())
        .arg(script("echo_server.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start echo_server.py");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.strip_prefix("READY ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("echo_server.py never printed READY");
    Echo {
        _proc: child,
        _logs: logs,
        url,
    }
}

/// POSTs a JSON-RPC `body` to `url` (with `A2A-Version: version` when given) and
/// returns the JSON answer (for streams: the `data:` events).
async fn rpc(url: &str, version: Option<&str>, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = http_client().post(url).json(&body);
    if let Some(v) = version {
        req = req.header("A2A-Version", v);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    if sse {
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str(d.trim()).unwrap())
            .collect();
        return (status, Value::Array(events));
    }
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// GETs `url` and returns its JSON body.
async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn nats_url(up: &Up) -> String {
    format!("nats://127.0.0.1:{}", up.nats_port)
}

#[tokio::test]
async fn the_official_python_client_uses_every_method_of_a_demo_agent() {
    let mut up = Up::start(&["--demo"]);
    up.proc.banner();
    let url = format!("http://{}/a2a/support", up.http);
    let report = py_client(&["--url", &url]).await;
    for check in [
        "card",
        "send",
        "stream",
        "get",
        "list",
        "cancel_running",
        "cancel_finished",
        "subscribe",
        "memory",
        "unknown_task",
        "bad_params",
    ] {
        assert!(
            report["checks"].get(check).is_some(),
            "check {check} did not run: {report:#}"
        );
    }
    // contextId is the agent's session: both turns of the memory check are in it.
    let context = report["context_ids"]["memory"].as_str().unwrap();
    let history = weft_output(&[
        "agent",
        "history",
        "support",
        "--session",
        context,
        "--json",
        "--server",
        &nats_url(&up),
    ]);
    let messages: Vec<Value> = serde_json::from_str(history.trim()).unwrap();
    let users = messages.iter().filter(|m| m["role"] == "user").count();
    assert_eq!(users, 2, "session {context} holds {messages:#?}");
    // The stream's and the subscription's events came in the documented order.
    let events = &report["checks"]["stream"]["detail"]["events"];
    assert_eq!(events[0], "task", "{events}");
    assert_eq!(
        events.as_array().unwrap().last().unwrap(),
        "status_update",
        "{events}"
    );
}

/// An agent whose tool needs a person's approval, reached by the official client: the
/// task goes to `TASK_STATE_INPUT_REQUIRED` (the run waits in the journal, no process
/// waiting on it), and the task's next message, "yes", resumes the run to
/// `TASK_STATE_COMPLETED`; `weft agent show` then tells the run's story.
#[tokio::test]
async fn a_run_waiting_for_approval_is_input_required_and_the_next_message_resumes_it() {
    let mut up = Up::start(&["--demo"]);
    up.proc.banner();
    let dir = up.dir.path();
    std::fs::write(
        dir.join("gatekeeper.script.json"),
        json!({"rules": [{"match": ".*", "turns": [
            {"tool_calls": [{"name": "tickets_list", "arguments": {}}]},
            {"content": "{{result.0./count}}{{result.0./error/code}} tickets, approved"}
        ]}]})
        .to_string(),
    )
    .unwrap();
    let file = dir.join("gatekeeper.json");
    std::fs::write(
        &file,
        json!({"name": "gatekeeper", "manages": ["tickets"], "provider": "scripted",
               "script": dir.join("gatekeeper.script.json"),
               "guardrails": {"approve": ["tickets_*"]}})
        .to_string(),
    )
    .unwrap();
    let nats = nats_url(&up);
    let _agent = Proc::weft(
        "gatekeeper",
        &["agent", "run", file.to_str().unwrap(), "--server", &nats],
        dir,
    );
    let bus = weft_bus::ConnectOptions::new(&nats)
        .connect()
        .await
        .unwrap();
    let registry = weft_bus::registry::Registry::open(&bus).await.unwrap();
    crate::processes::wait_registered_as(&registry, weft_bus::registry::Kind::Agent, "gatekeeper")
        .await;

    let url = format!("http://{}/a2a/gatekeeper", up.http);
    let report = py_client(&[
        "--url",
        &url,
        "--check",
        "approval",
        "--approval",
        "count the tickets",
        "--approval-expect",
        "^[0-9]+ tickets, approved$",
    ])
    .await;
    let asked = &report["checks"]["approval"]["detail"]["asked"];
    assert_eq!(asked["state"], "TASK_STATE_INPUT_REQUIRED", "{report:#}");

    let runs = weft_output(&["agent", "runs", "gatekeeper", "--json", "--server", &nats]);
    let runs: Vec<Value> = serde_json::from_str(runs.trim()).unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["status"], "completed");
    let id = runs[0]["id"].as_str().unwrap();
    let shown = weft_output(&["agent", "show", id, "--json", "--server", &nats]);
    let shown: Value = serde_json::from_str(shown.trim()).unwrap();
    let steps: Vec<&str> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["turn_1", "approval_1_0", "tool_1_0", "turn_2", "memory"],
        "{shown:#}"
    );
    assert_eq!(shown["steps"][1]["output"]["approved"], true);
    assert_eq!(shown["input"]["message"], "count the tickets");

    // The same run over HTTP; approving it again is a conflict.
    let base = format!("http://{}", up.http);
    let listed = get_json(format!("{base}/v1/agents/gatekeeper/runs?status=completed")).await;
    assert_eq!(listed[0]["id"], id, "{listed:#}");
    let one = get_json(format!("{base}/v1/runs/{id}")).await;
    assert_eq!(one["kind"], "agent");
    assert_eq!(one["steps"], shown["steps"]);
    let again = http_client()
        .post(format!("{base}/v1/runs/{id}/approve"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let body: Value = again.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("waits for no approval"),
        "{body}"
    );
}

#[tokio::test]
async fn with_a_token_cards_stay_public_and_everything_else_needs_it() {
    let mut up = Up::start(&["--demo", "--token", "s3cret"]);
    up.proc.banner();
    let base = format!("http://{}", up.http);
    let url = format!("{base}/a2a/support");
    py_client(&[
        "--url",
        &url,
        "--token",
        "s3cret",
        "--check",
        "card",
        "--check",
        "send",
        "--check",
        "unauthorized",
    ])
    .await;
    let card: Value = get_json(format!("{url}/.well-known/agent-card.json")).await;
    assert_eq!(
        card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"],
        "Bearer"
    );
    assert_eq!(card["security"], json!([{"bearer": []}]));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}});
    let (status, answer) = rpc(&url, Some("1.0"), None, body.clone()).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["code"], "AUTH_FAILURE");
    let (status, answer) = rpc(&url, Some("1.0"), Some("s3cret"), body).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (200, &json!(-32001)),
        "{answer}"
    );
    // The default agent's card (the only agent) and the directory need no token.
    let root = http_client()
        .get(format!("{base}/.well-known/agent-card.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), 200);
    let dir: Value = get_json(format!("{base}/a2a")).await;
    assert_eq!(dir["agents"][0]["name"], "support", "{dir}");
}

/// The request body of go-micro's A2A guide (`message/send`, `kind` parts, no
/// version header).
fn go_micro_send(method: &str, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": {
        "role": "user", "kind": "message", "messageId": "m1",
        "parts": [{"kind": "text", "text": text}]
    }}})
}

#[tokio::test]
async fn a2a_0_3_requests_in_go_micros_shape_get_0_3_answers_and_http_json_works_too() {
    let mut up = Up::start(&["--demo"]);
    up.proc.banner();
    let url = format!("http://{}/a2a/support", up.http);

    let (status, answer) = rpc(
        &url,
        None,
        None,
        go_micro_send("message/send", "How many tickets are open?"),
    )
    .await;
    assert_eq!(status, 200);
    let task = &answer["result"];
    assert_eq!(task["kind"], "task", "{answer:#}");
    assert_eq!(task["status"]["state"], "completed", "{answer:#}");
    assert_eq!(task["status"]["message"]["role"], "agent");
    assert_eq!(task["artifacts"][0]["parts"][0]["kind"], "text");
    assert!(
        task["artifacts"][0]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .contains("open ticket"),
        "{task}"
    );
    assert_eq!(task["history"][0]["kind"], "message");
    let id = task["id"].as_str().unwrap();
    let context = task["contextId"].as_str().unwrap();

    // go-micro continues with the finished task's id: a new task in the same context.
    let mut next = go_micro_send("message/send", "classify printer on fire");
    next["params"]["message"]["taskId"] = json!(id);
    next["params"]["message"]["contextId"] = json!(context);
    let (_, answer) = rpc(&url, None, None, next).await;
    assert_eq!(answer["result"]["contextId"], context, "{answer:#}");
    assert_ne!(answer["result"]["id"], id);
    assert_eq!(
        answer["result"]["status"]["state"], "completed",
        "{answer:#}"
    );

    let get = json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/get", "params": {"id": id, "historyLength": 0}});
    let (_, answer) = rpc(&url, Some("0.3"), None, get).await;
    assert_eq!(answer["result"]["kind"], "task", "{answer:#}");
    assert!(
        answer["result"]
            .get("history")
            .is_none_or(|h| h.as_array().unwrap().is_empty()),
        "{answer:#}"
    );

    let (_, events) = rpc(
        &url,
        None,
        None,
        go_micro_send("message/stream", "How many tickets are open?"),
    )
    .await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["result"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"task"), "{events:#}");
    assert!(kinds.contains(&"artifact-update"), "{kinds:?}");
    let last = &events.as_array().unwrap().last().unwrap()["result"];
    assert_eq!(
        (last["kind"].as_str(), last["final"].as_bool()),
        (Some("status-update"), Some(true)),
        "{last}"
    );
    assert_eq!(last["status"]["state"], "completed");

    let cancel = json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/cancel", "params": {"id": id}});
    assert_eq!(
        rpc(&url, None, None, cancel).await.1["error"]["code"],
        -32002
    );
    // Re-attaching to a finished task is -32004, to an unknown one -32001.
    let resub =
        json!({"jsonrpc": "2.0", "id": 10, "method": "tasks/resubscribe", "params": {"id": id}});
    assert_eq!(
        rpc(&url, None, None, resub).await.1["error"]["code"],
        -32004
    );
    let resub = json!({"jsonrpc": "2.0", "id": 11, "method": "tasks/resubscribe", "params": {"id": "nope"}});
    assert_eq!(
        rpc(&url, None, None, resub).await.1["error"]["code"],
        -32001
    );
    let unknown =
        json!({"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"id": "nope"}});
    assert_eq!(
        rpc(&url, None, None, unknown).await.1["error"]["code"],
        -32001
    );
    let bad = json!({"jsonrpc": "2.0", "id": 5, "method": "message/send", "params": {"message": {"role": "robot", "parts": []}}});
    assert_eq!(rpc(&url, None, None, bad).await.1["error"]["code"], -32602);
    let push = json!({"jsonrpc": "2.0", "id": 6, "method": "tasks/pushNotificationConfig/set", "params": {}});
    assert_eq!(rpc(&url, None, None, push).await.1["error"]["code"], -32003);
    // A 1.0 name without the version header is -32009; an unknown one -32601.
    let v1 = json!({"jsonrpc": "2.0", "id": 7, "method": "GetTask", "params": {"id": id}});
    assert_eq!(rpc(&url, None, None, v1).await.1["error"]["code"], -32009);
    let nope = json!({"jsonrpc": "2.0", "id": 8, "method": "message/nope", "params": {}});
    assert_eq!(rpc(&url, None, None, nope).await.1["error"]["code"], -32601);
    let (status, answer) = rpc(&url, None, None, json!("{not json")).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (200, &json!(-32600)),
        "{answer}"
    );
    let raw = http_client()
        .post(&url)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let answer: Value = raw.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    // The HTTP+JSON binding at the same base: a task by id, and a send.
    let rest: Value = get_json(format!("{url}/tasks/{id}?historyLength=0")).await;
    assert_eq!(
        (rest["id"].as_str(), rest["status"]["state"].as_str()),
        (Some(id), Some("TASK_STATE_COMPLETED")),
        "{rest:#}"
    );
    let sent: Value = http_client()
        .post(format!("{url}/message:send"))
        .json(&json!({"message": {"role": "ROLE_USER", "messageId": "r1", "parts": [{"text": "How many tickets are open?"}]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        sent["task"]["status"]["state"], "TASK_STATE_COMPLETED",
        "{sent:#}"
    );
    // An agent that is not registered is a 404 with the gateway's error shape.
    let (status, answer) = rpc(
        &format!("http://{}/a2a/ghost", up.http),
        Some("1.0"),
        None,
        json!({}),
    )
    .await;
    assert_eq!(
        (status, &answer["code"]),
        (404, &json!("NOT_FOUND")),
        "{answer}"
    );
}

#[tokio::test]
async fn flows_weft_a2a_call_delegate_and_remote_agents_reach_a_python_a2a_agent() {
    let echo = echo(&[]);
    let mut up = Up::start(&["--demo"]);
    up.proc.banner();
    let nats = nats_url(&up);

    // `weft a2a call`, plain and streaming.
    let out = weft_output(&["a2a", "call", &echo.url, "hello there"]);
    assert_eq!(out.trim(), "echo: hello there (turn 1)");
    let out = weft_output(&["a2a", "call", &echo.url, "streamed", "--stream"]);
    assert_eq!(out.trim(), "echo: streamed (turn 1)");
    let out = weft_output(&["a2a", "call", &echo.url, "json", "--json"]);
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(reply["state"], "completed");
    let again = weft_output(&[
        "a2a",
        "call",
        &echo.url,
        "more",
        "--context",
        reply["context_id"].as_str().unwrap(),
    ]);
    assert_eq!(
        again.trim(),
        "echo: more (turn 2)",
        "the context carried on"
    );

    // The demo agent's `delegate` to a URL goes through the bridge.
    let out = weft_output(&[
        "call",
        "support",
        &json!({"message": format!("ask {} hi from support", echo.url)}).to_string(),
        "--server",
        &nats,
    ]);
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert!(
        reply["reply"]
            .as_str()
            .unwrap()
            .ends_with("says: echo: hi from support (turn 1)"),
        "{reply:#}"
    );
    assert_eq!(reply["tool_calls"][0]["name"], "delegate");

    // A JSON flow with an `a2a` step.
    let bus = Bus::connect(&nats).await.unwrap();
    let file = crate::processes::write_flow(
        up.dir.path(),
        "ask_echo",
        json!({"name": "ask_echo", "trigger": "echo.asked", "steps": [
            {"name": "ask", "a2a": echo.url, "input": {"message": "${trigger.payload.text}"}}
        ]}),
    );
    let _worker = Proc::weft(
        "worker",
        &["flow", "worker", &file, "--server", &nats],
        up.dir.path(),
    );
    let registry = weft_bus::registry::Registry::open(&bus).await.unwrap();
    crate::processes::wait_registered(&registry, "ask_echo").await;
    let trigger = bus
        .publish(
            &"echo.asked".parse().unwrap(),
            json!({"text": "from a flow"}),
        )
        .await
        .unwrap();
    let store = weft_flows::Runs::open(&bus).await.unwrap();
    let run_id = weft_flows::run::run_id("ask_echo", &trigger.event_id);
    let run = eventually(Duration::from_secs(30), || async {
        let run = store.get("ask_echo", &run_id).await.unwrap()?;
        (run.status == weft_flows::RunStatus::Completed).then_some(run)
    })
    .await
    .expect("the a2a flow run did not complete");
    let output = run.steps[0].output.as_ref().unwrap();
    assert_eq!(output["reply"], "echo: from a flow (turn 1)", "{output:#}");
    assert_eq!(output["state"], "completed");

    // `weft a2a add`: a remote agent of the mesh, served by the bridge.
    weft_output(&["a2a", "add", "echo", &echo.url, "--server", &nats]);
    let served = eventually(Duration::from_secs(20), || async {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "call",
                "echo",
                r#"{"message":"via the mesh","session_id":"s-1"}"#,
                "--server",
                &nats,
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .expect("the remote agent was never served");
    let reply: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(reply["reply"], "echo: via the mesh (turn 1)");
    let ls: Value =
        serde_json::from_str(&weft_output(&["a2a", "ls", "--json", "--server", &nats])).unwrap();
    let agents = ls["agents"].as_array().unwrap();
    let remote = agents
        .iter()
        .find(|a| a["name"] == "echo")
        .expect("echo listed");
    assert_eq!(
        (remote["kind"].as_str(), remote["a2a_url"].as_str()),
        (Some("remote"), Some(echo.url.as_str()))
    );
    let local = agents
        .iter()
        .find(|a| a["name"] == "support")
        .expect("support listed");
    assert!(
        local["card_url"]
            .as_str()
            .unwrap()
            .ends_with("/a2a/support/.well-known/agent-card.json"),
        "{local}"
    );
    // And the gateway serves it over A2A like any agent.
    let card: Value = get_json(format!(
        "http://{}/a2a/echo/.well-known/agent-card.json",
        up.http
    ))
    .await;
    assert_eq!(card["name"], "echo");
    // A URL with nothing behind it is a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["a2a", "call", "http://127.0.0.1:9/a2a/none", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TRANSPORT_FAILURE"), "{err}");
}

/// Starts a slow streaming task at `url` and returns its id once its first event came;
/// the stream stays open in the background.
async fn start_streaming_task(url: &str) -> (String, tokio::task::JoinHandle<Vec<Value>>) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "SendStreamingMessage", "params": {"message": {
        "role": "ROLE_USER", "messageId": "slow-1", "parts": [{"text": "draft a first reply to ticket T-none"}]
    }}});
    let resp = http_client()
        .post(url)
        .header("A2A-Version", "1.0")
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    use futures::StreamExt as _;
    let mut buf = String::new();
    let id = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("no first event")
            .expect("the stream ended")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(line) = buf.lines().find_map(|l| l.strip_prefix("data:")) {
            let v: Value = serde_json::from_str(line.trim()).unwrap();
            break v["result"]["task"]["id"].as_str().unwrap().to_owned();
        }
    };
    let rest = tokio::spawn(async move {
        let mut text = buf;
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    });
    (id, rest)
}

/// `weft up --server <url>` with `extra` arguments on a free HTTP port: a gateway (and
/// with `--demo` the demo) on an existing mesh. Returns it and its `/a2a/support` URL.
fn gateway(
    server: &weft_bus::testing::TestServer,
    name: &'static str,
    extra: &[&str],
) -> (Proc, String) {
    let http = format!("127.0.0.1:{}", crate::free_port());
    let mut args = vec!["up", "--server", server.url(), "--http", &http];
    args.extend(extra);
    let mut proc = Proc::weft(name, &args, server.dir());
    proc.banner();
    (proc, format!("http://{http}/a2a/support"))
}

#[tokio::test]
async fn any_gateway_re_attaches_and_cancels_and_a_restart_loses_no_task() {
    let server = weft_bus::testing::TestServer::start().await;
    let _bus = server.bus().await; // the mesh's resources, registry TTL 3 s
    let (mut a, first) = gateway(&server, "gateway-a", &["--demo"]);
    let (_b, other) = gateway(&server, "gateway-b", &[]);

    // Re-attach on the other gateway to a task the first one runs.
    let (id, _stream) = start_streaming_task(&first).await;
    let subscribe =
        json!({"jsonrpc": "2.0", "id": 2, "method": "SubscribeToTask", "params": {"id": id}});
    let (_, events) = rpc(&other, Some("1.0"), None, subscribe).await;
    let events = events.as_array().unwrap();
    assert_eq!(
        events[0]["result"]["task"]["id"],
        id.as_str(),
        "{events:#?}"
    );
    let last = &events.last().unwrap()["result"]["statusUpdate"]["status"]["state"];
    assert_eq!(last, "TASK_STATE_COMPLETED", "{events:#?}");

    // Cancel on the other gateway: the first one's stream ends CANCELED.
    let (id, stream) = start_streaming_task(&first).await;
    let cancel = json!({"jsonrpc": "2.0", "id": 3, "method": "CancelTask", "params": {"id": id}});
    let (_, answer) = rpc(&other, Some("1.0"), None, cancel).await;
    assert_eq!(
        answer["result"]["status"]["state"], "TASK_STATE_CANCELED",
        "{answer:#}"
    );
    let events = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("the stream did not end")
        .unwrap();
    let last = &events.last().unwrap()["result"]["statusUpdate"]["status"]["state"];
    assert_eq!(last, "TASK_STATE_CANCELED", "{events:#?}");

    // The first gateway stops cleanly (SIGTERM) in the middle of a streaming task:
    // the agent drains, so the task ends, and the other gateway answers for it.
    let (id, _stream) = start_streaming_task(&first).await;
    get_until(&other, &id, |s| s == "TASK_STATE_WORKING").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = a.child.wait();
    get_until(&other, &id, |s| {
        s == "TASK_STATE_COMPLETED" || s == "TASK_STATE_FAILED"
    })
    .await;

    // Killed (SIGKILL) mid-task, the gateway and its agent run are gone: once its
    // registry entry expires, a task it ran ends FAILED with the reason, and the
    // restarted gateway answers GetTask.
    let (mut a, first) = gateway(&server, "gateway-a2", &["--demo"]);
    let (id, _stream) = start_streaming_task(&first).await;
    get_until(&other, &id, |s| s == "TASK_STATE_WORKING").await;
    a.kill();
    let (_a, restarted) = gateway(&server, "gateway-a3", &["--demo"]);
    let task = get_until(&restarted, &id, |s| s == "TASK_STATE_FAILED").await;
    let reason = task["status"]["message"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert!(
        reason.contains("gateway running this task stopped"),
        "{task:#}"
    );
}

/// Polls `GetTask` of `id` at `url` until its state passes `want` (40 s at most).
async fn get_until(url: &str, id: &str, want: impl Fn(&str) -> bool) -> Value {
    let get = json!({"jsonrpc": "2.0", "id": 9, "method": "GetTask", "params": {"id": id}});
    let mut last = Value::Null;
    for _ in 0..200 {
        if let Ok(resp) = http_client()
            .post(url)
            .header("A2A-Version", "1.0")
            .json(&get)
            .send()
            .await
            && let Ok(v) = resp.json::<Value>().await
        {
            if v["result"]["status"]["state"].as_str().is_some_and(&want) {
                return v["result"].clone();
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("task {id} never reached the state wanted at {url}: {last:#}");
}
