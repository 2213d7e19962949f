//! `weft chat` against `weft up --demo`: one message with `-m`, and a piped session
//! with commands; the agent's tool calls and streamed text are shown as they happen.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::Up;

fn weft_chat(nats: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["chat", "--server", nats])
        .args(args)
        .env_remove("NATS_URL")
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
