//! `weft call --stream`: frames printed as they arrive, as text and as JSON lines, and
//! an error frame ending the command with a non-zero exit.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::stream::StreamWriter;
use weft_bus::testing::TestServer;
use weft_bus::{Envelope, ErrorPayload};

use crate::weft_output;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_call_stream_prints_frames_as_they_arrive() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = Service::new("counter", "1.0.0")
        .endpoint(Endpoint::streaming(
            "count",
            |req: Request, out: StreamWriter| async move {
                let to = req.payload()["to"].as_u64().unwrap_or(3);
                out.started(json!({"to": to})).await?;
                for i in 1..=to {
                    out.delta(json!(i)).await?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(json!({"counted": to}))
            },
        ))
        .endpoint(Endpoint::streaming(
            "fail",
            |_req: Request, out: StreamWriter| async move {
                out.delta(json!("partial")).await?;
                Err(ErrorPayload::invalid_request("cannot count that far"))
            },
        ))
        .serve(&bus)
        .await
        .unwrap();
    let url = server.url().to_owned();

    let text = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            weft_output(&[
                "call",
                "--stream",
                "--server",
                &url,
                "counter.count",
                r#"{"to": 2}"#,
            ])
        })
        .await
        .unwrap()
    };
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            r#"#1 started {"to":2}"#,
            "#2 delta 1",
            "#3 delta 2",
            r#"#4 final {"counted":2}"#,
        ],
        "{text}"
    );

    let lines = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            weft_output(&[
                "call",
                "--stream",
                "--json",
                "--server",
                &url,
                "counter.count",
            ])
        })
        .await
        .unwrap()
    };
    let frames: Vec<Envelope> = lines
        .lines()
        .map(|l| Envelope::from_slice(l.as_bytes()).unwrap())
        .collect();
    let kinds: Vec<(&str, u64)> = frames
        .iter()
        .map(|f| (f.event_type.as_str(), f.seq))
        .collect();
    assert_eq!(
        kinds,
        [
            ("agent.response.started", 1),
            ("agent.response.delta", 2),
            ("agent.response.delta", 3),
            ("agent.response.delta", 4),
            ("agent.response.final", 5),
        ]
    );
    assert_eq!(frames[4].payload.as_ref().unwrap()["counted"], 3);

    // An error frame: printed with --json, then a one-line error and exit code 1.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "call",
                "--stream",
                "--json",
                "--server",
                &url,
                "counter.fail",
            ])
            .env_remove("NATS_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    assert!(last.contains("agent.response.error"), "{stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cannot count that far"), "{stderr}");
    assert!(stderr.trim().lines().count() <= 2, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_weft_call_stream_cancels_the_handler() {
    use std::io::{BufRead, BufReader};

    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _svc = Service::new("ticker", "1.0.0")
        .endpoint(Endpoint::streaming(
            "tick",
            move |_req: Request, out: StreamWriter| {
                let seen = tx.clone();
                async move {
                    loop {
                        tokio::select! {
                            _ = out.cancelled() => {
                                let _ = seen.send(());
                                return Ok(serde_json::Value::Null);
                            }
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                out.delta(json!("tick")).await?;
                            }
                        }
                    }
                }
            },
        ))
        .serve(&bus)
        .await
        .unwrap();

    let mut proc = crate::Proc::weft(
        "call-stream",
        &["call", "--stream", "--server", server.url(), "ticker.tick"],
        server.dir(),
    );
    let stdout = proc.child.stdout.take().unwrap();
    // Keep reading, so the pipe stays open until the process ends.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = first_tx.send(lines.next().unwrap().unwrap());
        lines.count()
    });
    let first = tokio::time::timeout(Duration::from_secs(10), first_rx)
        .await
        .expect("a first line within 10 s")
        .unwrap();
    assert_eq!(first.trim(), "#1 started", "{first}");
    let status = tokio::task::spawn_blocking(move || proc.interrupt(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("weft call exited after Ctrl-C");
    assert_eq!(status.code(), Some(1));
    reader.await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), seen.recv())
        .await
        .expect("the handler saw no cancellation within 3 s");
    let log = std::fs::read_to_string(server.dir().join("call-stream.log")).unwrap();
    assert!(log.contains("cancelled by Ctrl-C"), "{log}");

    // `weft call --stream … | head -1`: the reader goes away, weft stops quietly and
    // the handler is cancelled.
    let mut proc = crate::Proc::weft(
        "call-stream-head",
        &["call", "--stream", "--server", server.url(), "ticker.tick"],
        server.dir(),
    );
    let stdout = proc.child.stdout.take().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        // stdout is closed here; the next frame hits a broken pipe.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(status) = proc.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .await
    .unwrap()
    .expect("weft call exited once its stdout was closed");
    assert_eq!(status.code(), Some(0));
    tokio::time::timeout(Duration::from_secs(3), seen.recv())
        .await
        .expect("the handler saw no cancellation within 3 s");
}
