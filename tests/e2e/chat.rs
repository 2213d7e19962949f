//! `weft chat` against `weft up --demo`: one message with `-m`, and a piped session
//! with commands; the agent's tool calls and streamed text are shown as they happen.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::Up;

fn weft_chat(nats: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    weft_chat_env(nats, args, stdin, &[])
}

fn weft_chat_env(
    nats: &str,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["chat", "--server", nats])
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("WEFT_MODEL_PROVIDER")
        .envs(env.iter().copied())
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn weft_chat_shows_tool_calls_and_the_streamed_reply() {
    let mut up = Up::start(&["--demo"]);
    up.proc.banner();
    let nats = format!("nats://127.0.0.1:{}", up.nats_port);

    // One message (the only agent is picked), for scripts.
    let (ok, out, err) = weft_chat(&nats, &["-m", "How many tickets are open?"], "");
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "→ tickets_list({\"status\":\"open\"})\n← {\"count\":0,\"tickets\":[]}\nI count 0 open ticket(s).\n"
    );

    // A piped session: two messages, a new session, an unknown command, exit.
    let input = "How many tickets are open?\nclassify printer on fire\n/new\n/nope\n/exit\n";
    let (ok, out, err) = weft_chat(&nats, &["support", "--session", "e2e-1"], input);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "chatting with support (session e2e-1); /exit leaves, /help helps"
    );
    assert!(
        out.contains("→ tickets_classify({\"title\":\"printer on fire\"})"),
        "{out}"
    );
    assert!(
        out.contains("That looks like a general issue with low priority."),
        "{out}"
    );
    assert!(out.contains("\nnew session chat-"), "{out}");
    assert!(out.contains("unknown command /nope"), "{out}");

    // The session is remembered, and the agent commands read it back.
    let history = crate::weft_output(&["agent", "history", "support", "--server", &nats]);
    assert!(
        history
            .lines()
            .any(|l| l.starts_with("e2e-1") && l.ends_with("8 message(s)")),
        "{history}"
    );
    let session = crate::weft_output(&[
        "agent",
        "history",
        "support",
        "--session",
        "e2e-1",
        "--json",
        "--server",
        &nats,
    ]);
    let messages: serde_json::Value = serde_json::from_str(&session).unwrap();
    assert_eq!(messages[0]["content"], "How many tickets are open?");
    assert_eq!(messages.as_array().unwrap().len(), 8);
    let described: serde_json::Value = serde_json::from_str(&crate::weft_output(&[
        "agent", "describe", "support", "--json", "--server", &nats,
    ]))
    .unwrap();
    let tools: Vec<&str> = described["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["tickets_classify", "tickets_get", "tickets_list"]);
    let plan = crate::weft_output(&[
        "agent",
        "plan",
        "support",
        "--session",
        "e2e-1",
        "--server",
        &nats,
    ]);
    assert_eq!(plan, "agent support keeps no plan for session e2e-1\n");

    // The gateway streams the same events as Server-Sent Events.
    let http = up.http.clone();
    let sse = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            crate::http_client()
                .post(format!("http://{http}/v1/invoke/support/stream"))
                .body(r#"{"message":"How many tickets are open?"}"#)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
    let deltas: Vec<serde_json::Value> = sse
        .split("\n\n")
        .filter(|e| e.contains("event: agent.response.delta"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).unwrap()["payload"].clone())
        .collect();
    let kinds: Vec<&str> = deltas.iter().map(|d| d["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["tool_call", "tool_result", "text"], "{sse}");
    assert_eq!(deltas[2]["text"], "I count 0 open ticket(s).");
    assert!(sse.contains("event: agent.response.final"), "{sse}");

    // No such agent: the error says so.
    let (ok, _, err) = weft_chat(&nats, &["nobody", "-m", "hi"], "");
    assert!(!ok);
    assert!(
        err.contains("no service is listening on weft.invoke.nobody"),
        "{err}"
    );
}

#[test]
fn an_agent_from_a_yaml_file_runs_and_the_chat_routes_between_agents() {
    let mut up = Up::start(&["--demo"]);
    up.proc.banner();
    let nats = format!("nats://127.0.0.1:{}", up.nats_port);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("helper.json"),
        r#"{"rules": [
          {"match": "(?i)^classify (?P<t>.+)$", "turns": [
            {"tool_calls": [{"name": "tickets_classify", "arguments": {"title": "{{match.t}}"}}]},
            {"content": "{{result.0./error/code}}"}]},
          {"match": ".*", "turns": [{"content": "helper here"}]}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("helper.yaml"),
        "name: helper\ndescription: Says hello\nmanages: [tickets]\nprovider: scripted\nscript: helper.json\nguardrails:\n  approve: [\"tickets_classify\"]\nbuiltins: [plan]\n",
    )
    .unwrap();
    let file = dir.path().join("helper.yaml");
    let mut helper = crate::Proc::weft(
        "agent-run",
        &["agent", "run", file.to_str().unwrap(), "--server", &nats],
        dir.path(),
    );
    let line = {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(helper.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    };
    assert!(
        line.starts_with("agent helper runs (model scripted: scripted; manages tickets)"),
        "{line}"
    );

    // The file's guardrails hold: the listed tool waits for a person; denied, the
    // model says so.
    let out = crate::weft_output(&[
        "call",
        "helper",
        r#"{"message":"classify printer"}"#,
        "--server",
        &nats,
    ]);
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["status"], "input_required", "{out}");
    assert_eq!(reply["pending"]["tool"], "tickets_classify", "{out}");
    let run = reply["run_id"].as_str().unwrap();
    let waiting = crate::weft_output(&[
        "agent", "runs", "helper", "--status", "waiting", "--json", "--server", &nats,
    ]);
    let waiting: Vec<serde_json::Value> = serde_json::from_str(waiting.trim()).unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["id"], run);
    let decided = crate::weft_output(&[
        "agent", "approve", run, "--deny", "not now", "--wait", "--json", "--server", &nats,
    ]);
    let decided: serde_json::Value = serde_json::from_str(decided.trim()).unwrap();
    assert_eq!(decided["status"], "completed", "{decided:#}");
    assert_eq!(decided["output"]["reply"], "APPROVAL_DENIED", "{decided:#}");

    // Two agents, none named: a router on the scripted model picks one per message.
    std::fs::write(
        dir.path().join("router.json"),
        r#"{"rules": [
          {"match": "(?i)ticket", "turns": [
            {"tool_calls": [{"name": "route_to_agent", "arguments": {"agent": "support"}}]}, {"content": "sent"}]},
          {"match": ".*", "turns": [
            {"tool_calls": [{"name": "route_to_agent", "arguments": {"agent": "helper"}}]}, {"content": "sent"}]}]}"#,
    )
    .unwrap();
    let script = dir.path().join("router.json");
    let env = [
        ("WEFT_MODEL_PROVIDER", "scripted"),
        ("WEFT_MODEL_SCRIPT", script.to_str().unwrap()),
    ];
    let (ok, out, err) = weft_chat_env(&nats, &["-m", "How many tickets are open?"], "", &env);
    assert!(ok, "{err}");
    assert!(out.starts_with("(→ support)\n→ tickets_list"), "{out}");
    let (ok, out, err) = weft_chat_env(&nats, &["-m", "hello"], "", &env);
    assert!(ok, "{err}");
    assert_eq!(out, "(→ helper)\nhelper here\n");
    // Without a model the chat says what it needs.
    let (ok, _, err) = weft_chat(&nats, &["-m", "hello"], "");
    assert!(!ok);
    assert!(
        err.contains("2 agents are registered, so the chat needs a model to route each message"),
        "{err}"
    );
    helper.interrupt(std::time::Duration::from_secs(10));
}
