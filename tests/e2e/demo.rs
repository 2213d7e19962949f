//! The demo end to end: `weft up --demo` as a process, a ticket posted over HTTP,
//! `ticket.triaged` seen on the bus, the run listed as completed, the agent answering,
//! metrics moved, and a clean shutdown on Ctrl-C.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::{Up, http_client, weft_output};

#[tokio::test]
async fn weft_up_demo_triages_a_ticket_end_to_end() {
    let mut up = Up::start(&["--demo"]);
    let (nats_port, http) = (up.nats_port, up.http.clone());
    let nats_url = format!("nats://127.0.0.1:{nats_port}");

    // Wait for the banner, which comes once everything runs.
    let banner = up.proc.banner();
    assert!(banner.contains("WEFT_EVENTS"), "{banner}");
    assert!(banner.contains("weft_registry"), "{banner}");
    assert!(banner.contains(&http), "{banner}");

    let bus = weft_bus::Bus::connect(&nats_url).await.unwrap();
    let mut triaged = bus
        .subscribe_events(&"ticket.triaged".parse().unwrap(), None)
        .await
        .unwrap();

    // POST a ticket: 202 with an event id, after the JetStream ack.
    let client = http_client();
    let resp = client
        .post(format!("http://{http}/v1/events/ticket.created"))
        .header("content-type", "application/json")
        .body(
            json!({"title": "Cannot log in", "body": "The password reset link fails"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let event_id = body["event_id"].as_str().unwrap().to_owned();

    // ticket.triaged arrives, carrying the classification and the drafted reply.
    let got = tokio::time::timeout(Duration::from_secs(30), triaged.next())
        .await
        .expect("no ticket.triaged within 30 s")
        .unwrap();
    let payload = got.envelope.unwrap().payload.unwrap();
    assert_eq!(payload["ticket_id"], event_id.as_str());
    assert_eq!(
        payload["classification"],
        json!({"category": "account", "priority": "high"})
    );
    let reply = payload["reply"].as_str().unwrap();
    assert!(
        reply.contains("Cannot log in"),
        "draft should use the stored ticket: {reply}"
    );

    // The run is listed as completed, with its three steps.
    let runs: Value = serde_json::from_str(&weft_output(&[
        "flow", "runs", "triage", "--json", "--server", &nats_url,
    ]))
    .unwrap();
    let run = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["trigger_event_id"] == event_id.as_str())
        .expect("run listed");
    assert_eq!(run["status"], "completed");
    let steps: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["classify", "draft", "announce"]);
    assert!(
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "completed" && s["attempts"] == 1)
    );

    // The agent answers from its tools, over the CLI and over HTTP.
    let answer: Value = serde_json::from_str(&weft_output(&[
        "call",
        "support",
        r#"{"message":"How many tickets are open?"}"#,
        "--json",
        "--server",
        &nats_url,
    ]))
    .unwrap();
    assert_eq!(answer["agent"], "support");
    assert!(
        answer["reply"].as_str().unwrap().contains("1 open ticket"),
        "{answer}"
    );
    assert_eq!(answer["tool_calls"][0]["name"], "tickets_list");
    let resp = client
        .post(format!("http://{http}/v1/invoke/support"))
        .body(r#"{"message":"How many tickets are open?"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let over_http: Value = resp.json().await.unwrap();
    assert_eq!(over_http["reply"], answer["reply"]);

    // Everything is registered.
    let ls: Value =
        serde_json::from_str(&weft_output(&["ls", "--json", "--server", &nats_url])).unwrap();
    let names: Vec<(String, String)> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_owned(),
                l["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (kind, name) in [
        ("service", "tickets"),
        ("agent", "support"),
        ("flow", "triage"),
        ("gateway", "gateway"),
    ] {
        assert!(
            names.contains(&(kind.into(), name.into())),
            "{kind} {name} missing from {names:?}"
        );
    }

    // Metrics moved.
    let metrics = client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "weft_events_published_total{mode=\"durable\",outcome=\"ok\"}",
        "weft_invokes_total{outcome=\"ok\",target=\"tickets.classify\"}",
        "weft_flow_runs_total{flow=\"triage\",status=\"completed\"} 1",
        "weft_flow_step_duration_seconds_count{flow=\"triage\",step=\"draft\"} 1",
        "weft_agent_tool_calls_total",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} not in /metrics:\n{metrics}"
        );
    }

    // Ctrl-C: clean shutdown, exit 0, nats-server gone.
    let status = up
        .proc
        .interrupt(Duration::from_secs(30))
        .expect("weft up did not stop within 30 s");
    assert!(status.success(), "weft up exited with {status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err(),
        "nats-server still listening"
    );
}
