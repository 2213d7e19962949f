//! `weft dlq ls|show|replay` and `weft replay` end to end: the binary against a real
//! nats-server, with a durable subscriber in this process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use weft_bus::consumer::{self, Delivery, DeliveryError, DurableConfig};
use weft_bus::retry::RetryPolicy;
use weft_bus::testing::{TestServer, eventually};

use crate::weft_output;

/// A subscriber `orders` that rejects first-hand `order.*` events permanently and
/// accepts replayed copies; returns what it saw.
async fn picky_subscriber(
    bus: &weft_bus::Bus,
) -> (consumer::ConsumerHandle, Arc<Mutex<Vec<Delivery>>>) {
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let s = seen.clone();
    let mut config = DurableConfig::new("orders", vec!["order.*".parse().unwrap()]);
    config.retry = RetryPolicy::fixed(Duration::from_millis(50));
    let handle = consumer::start(bus, config, move |d: Delivery| {
        s.lock().unwrap().push(d.clone());
        async move {
            if d.replayed {
                Ok(())
            } else {
                Err(DeliveryError::Permanent(format!(
                    "cannot price order {}",
                    d.envelope.payload_or_null()
                )))
            }
        }
    })
    .await
    .unwrap();
    (handle, seen)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let ok = eventually(Duration::from_secs(10), || async { check().then_some(()) }).await;
    assert!(ok.is_some(), "timed out waiting for {what}");
}

#[tokio::test]
async fn dlq_ls_show_and_replay_and_replay_print_work_from_the_cli() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let url = server.url().to_owned();
    let (handle, seen) = picky_subscriber(&bus).await;
    let mut published = Vec::new();
    for (t, n) in [
        ("order.placed", 1),
        ("order.placed", 2),
        ("order.cancelled", 3),
    ] {
        published.push(
            bus.publish(&t.parse().unwrap(), json!({"n": n}))
                .await
                .unwrap(),
        );
    }
    let dead = || async {
        let entries = weft_bus::dlq::list(&bus, None).await.unwrap();
        (entries.len() == 3).then_some(entries)
    };
    let entries = eventually(Duration::from_secs(10), dead)
        .await
        .expect("three dead letters");

    // ls: JSON with ids and metadata, the text table, and a filter.
    let out = weft_output(&["dlq", "ls", "--json", "--server", &url]);
    let listed: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["id"], entries[0].id);
    assert_eq!(listed[0]["letter"]["consumer"], "orders");
    assert_eq!(listed[0]["letter"]["reason"], "permanent");
    assert_eq!(
        listed[0]["letter"]["stream_sequence"],
        published[0].sequence
    );
    let text = weft_output(&["dlq", "ls", "--server", &url]);
    assert!(text.starts_with("    ID  LAST FAILED"), "{text}");
    assert!(text.contains("cannot price order {\"n\":2}"), "{text}");
    let out = weft_output(&[
        "dlq",
        "ls",
        "--json",
        "--event-type",
        "order.cancelled",
        "--server",
        &url,
    ]);
    let cancelled: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(cancelled.len(), 1);

    // show: text and JSON.
    let id = entries[0].id.to_string();
    let text = weft_output(&["dlq", "show", &id, "--server", &url]);
    assert!(
        text.contains(&format!("dead letter {id} on weft.dlq.order.placed")),
        "{text}"
    );
    assert!(text.contains("reason:           permanent"), "{text}");
    assert!(text.contains(&published[0].event_id), "{text}");
    let shown: Value =
        serde_json::from_str(weft_output(&["dlq", "show", &id, "--json", "--server", &url]).trim())
            .unwrap();
    assert_eq!(
        shown["envelope"]["event_id"],
        published[0].event_id.as_str()
    );

    // replay ID: one new delivery, to this consumer, and the dead letter is gone.
    let text = weft_output(&["dlq", "replay", &id, "--server", &url]);
    assert!(
        text.contains(&format!("replayed dead letter {id}"))
            && text.contains("weft.replay.orders.order.placed"),
        "{text}"
    );
    wait_until("the replayed delivery", || seen.lock().unwrap().len() == 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "exactly one new delivery");
        assert!(seen[3].replayed);
        assert_eq!(seen[3].envelope.event_id, published[0].event_id);
    }
    let out = weft_output(&["dlq", "ls", "--json", "--server", &url]);
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(out.trim())
            .unwrap()
            .len(),
        2
    );

    // replay --all --event-type: only the matching one.
    let out = weft_output(&[
        "dlq",
        "replay",
        "--all",
        "--event-type",
        "order.placed",
        "--json",
        "--server",
        &url,
    ]);
    let done: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["replayed"].as_array().unwrap().len(), 1);
    wait_until("the second replay", || seen.lock().unwrap().len() == 5).await;
    let text = weft_output(&["dlq", "ls", "--server", &url]);
    assert!(
        text.contains("order.cancelled") && !text.contains("order.placed"),
        "{text}"
    );

    // replay --print by sequence, with an end.
    let out = weft_output(&[
        "replay",
        "--subject",
        "order.>",
        "--from-seq",
        "2",
        "--until",
        "3",
        "--print",
        "--json",
        "--server",
        &url,
    ]);
    let printed = json_lines(&out);
    let sequences: Vec<u64> = printed
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [2, 3]);
    assert_eq!(
        printed[0]["envelope"]["event_id"],
        published[1].event_id.as_str()
    );
    // … and by time, as text.
    let out = weft_output(&[
        "replay",
        "--subject",
        "weft.events.order.>",
        "--since",
        "1h",
        "--print",
        "--server",
        &url,
    ]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains(&published[2].event_id), "{out}");

    // replay --to-consumer: the selected events come back to this consumer as replays.
    let text = weft_output(&[
        "replay",
        "--subject",
        "order.placed",
        "--from-seq",
        "1",
        "--to-consumer",
        "orders",
        "--server",
        &url,
    ]);
    assert!(
        text.contains("replayed 2 of 2 selected events to consumer orders"),
        "{text}"
    );
    wait_until("the stream replays", || seen.lock().unwrap().len() == 7).await;
    handle.stop().await;
}

#[tokio::test]
async fn dlq_and_replay_mistakes_get_one_clear_line_and_a_failure_exit() {
    let server = TestServer::start().await;
    let _bus = server.bus().await;
    let url = server.url().to_owned();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(args)
            .args(["--server", &url])
            .env_remove("NATS_URL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "weft {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    };
    let err = run(&["dlq", "show", "42"]);
    assert!(
        err.starts_with("error: there is no dead letter 42 in WEFT_DLQ"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let err = run(&["dlq", "replay", "--all", "--to", "weft.events.>"]);
    assert!(err.contains("cannot publish to \"weft.events.>\""), "{err}");
    let err = run(&[
        "replay",
        "--subject",
        "order.>",
        "--since",
        "soon",
        "--print",
    ]);
    assert!(
        err.contains("--since \"soon\" is neither a duration"),
        "{err}"
    );
    let err = run(&[
        "replay",
        "--subject",
        "order.>",
        "--from-seq",
        "1",
        "--to-consumer",
        "ghost",
    ]);
    assert!(err.contains("there is no durable consumer ghost"), "{err}");
    let err = run(&[
        "replay",
        "--subject",
        "order..x",
        "--from-seq",
        "1",
        "--print",
    ]);
    assert!(err.contains("empty token"), "{err}");
}
