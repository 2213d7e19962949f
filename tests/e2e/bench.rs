//! `weft bench --quick --json` against a running server: the report has every figure,
//! each positive, with its hand-written and raw twins and both ratios where the figure
//! has twins, and the bench leaves no stream behind.

use futures::StreamExt;
use serde_json::Value;
use weft_bus::testing::TestServer;

use crate::weft_output;

#[tokio::test]
async fn bench_reports_every_figure_and_cleans_up() {
    let server = TestServer::start().await;
    let out = weft_output(&["bench", "--quick", "--json", "--server", server.url()]);
    let report: Value = serde_json::from_str(&out).expect("one JSON report on stdout");

    assert_eq!(report["payload_bytes"], 128);
    assert!(
        report["server_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("2.")),
        "{report}"
    );
    assert_eq!(report["local_server"], false);
    let figures = report["figures"].as_array().expect("figures");
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "pubsub",
            "durable_publish",
            "invoke_latency_p50",
            "invoke_latency_p99",
            "invoke_throughput",
            "durable_consume",
            "flow_runs",
            "flow_steps",
            "agent_chat",
            "agent_loop_p50",
            "agent_loop_p99",
            "mcp_call",
            "mcp_call_p50",
            "a2a_send",
            "a2a_send_p50",
        ]
    );
    for f in figures {
        let name = f["name"].as_str().unwrap();
        assert!(f["unit"].as_str().is_some_and(|u| !u.is_empty()), "{f}");
        let weft = f["weft"].as_f64().unwrap();
        assert!(weft > 0.0, "{name}: weft figure {weft}");
        let expected = if name.starts_with("invoke_latency")
            || name.starts_with("agent_loop")
            || name == "mcp_call_p50"
            || name == "a2a_send_p50"
        {
            "lower"
        } else {
            "higher"
        };
        assert_eq!(f["better"], expected, "{f}");
        assert!(f["counts"]["weft"]["ops"].as_u64().unwrap() > 0, "{f}");
        let twins: &[&str] = if name.starts_with("flow_") || name == "agent_chat" {
            &[]
        } else if name.starts_with("mcp_") || name.starts_with("a2a_") {
            // A bridge's twin is a direct bus invoke, in the raw column.
            &["raw"]
        } else {
            &["hand", "raw"]
        };
        for side in ["hand", "raw"] {
            let ratio = &f[format!("ratio_{side}")];
            if !twins.contains(&side) {
                assert!(f[side].is_null() && ratio.is_null(), "{name}: {side}: {f}");
                continue;
            }
            let twin = f[side].as_f64().unwrap();
            assert!(twin > 0.0, "{name}: {side} figure {twin}");
            assert!(f["counts"][side]["ops"].as_u64().unwrap() > 0, "{f}");
            let ratio = ratio.as_f64().unwrap();
            assert!((ratio - weft / twin).abs() < 1e-9 * ratio.max(1.0), "{f}");
        }
    }
    let pubsub = &figures[0];
    for side in ["weft", "hand", "raw"] {
        assert!(pubsub["counts"][side]["dropped"].is_u64(), "{pubsub}");
    }
    assert!(pubsub["message_bytes"].as_u64().unwrap() > 128, "{pubsub}");
    assert!(
        figures[6]["ceiling"].as_f64().unwrap() > 0.0,
        "{}",
        figures[6]
    );
    // However many chats ran, the registry has one consumer: the agent's watch.
    assert!(
        figures[8]["note"]
            .as_str()
            .unwrap()
            .contains("1 consumer(s) on the registry"),
        "{}",
        figures[8]
    );

    // mcp_call's twin is a bus invoke of the same endpoint, and says so.
    assert!(
        figures[11]["note"]
            .as_str()
            .unwrap()
            .contains("twin: a direct bus invoke"),
        "{}",
        figures[11]
    );

    // The bench ran under its own prefix and removed its streams and buckets.
    let bus = server.connect().await;
    let left: Vec<String> = bus
        .jetstream()
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    assert!(
        left.iter()
            .all(|n| !n.contains("BENCH") && !n.contains("bench")),
        "left behind: {left:?}"
    );
}
