//! Streaming invoke against a real nats-server: frames in order, reordering of
//! out-of-order frames, the buffer and gap limits, idle and overall timeouts,
//! cancellation reaching the handler, exactly one terminal frame whatever the handler
//! does, and plain callers of streaming endpoints (and the reverse).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::stream::{FrameStream, StreamOptions, StreamWriter};
use weft_bus::testing::TestServer;
use weft_bus::{Bus, Envelope, ErrorCode, ErrorKind, ErrorPayload, FrameType, Target};

fn target(t: &str) -> Target {
    t.parse().unwrap()
}

async fn open(bus: &Bus, t: &str, options: StreamOptions) -> FrameStream {
    bus.invoke_stream(&target(t), Envelope::request(t, json!({})), options)
        .await
        .expect("invoke_stream")
}

/// Every item of a stream, with a bound on the whole read.
async fn drain(mut frames: FrameStream) -> Vec<weft_bus::Result<weft_bus::stream::Frame>> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = frames.next().await {
            out.push(item);
        }
    })
    .await
    .expect("the stream ended");
    out
}

async fn words_service(bus: &Bus) -> ServiceHandle {
    Service::new("poet", "1.0.0")
        .endpoint(Endpoint::streaming(
            "recite",
            |req: Request, out: StreamWriter| async move {
                out.started(json!({"poem": req.payload()["poem"]})).await?;
                let mut text = Vec::new();
                for w in ["so", "much", "depends"] {
                    out.delta(json!(w)).await?;
                    text.push(w);
                }
                Ok(json!({ "text": text.join(" "), "streamed": out.is_streaming() }))
            },
        ))
        .endpoint(Endpoint::new("plain", |_req: Request| async move {
            Ok(json!("one reply"))
        }))
        .serve(bus)
        .await
        .expect("serve")
}

#[tokio::test]
async fn a_stream_delivers_started_deltas_and_final_in_order() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = words_service(&bus).await;

    let mut request = Envelope::request("poet.recite", json!({"poem": "wheelbarrow"}));
    request.session_id = Some("s-1".into());
    let request_id = request.event_id.clone();
    let frames = bus
        .invoke_stream(&target("poet.recite"), request, StreamOptions::default())
        .await
        .unwrap();
    let frames: Vec<_> = drain(frames)
        .await
        .into_iter()
        .map(|f| f.unwrap())
        .collect();
    let kinds: Vec<(&str, u64)> = frames.iter().map(|f| (f.event_type(), f.seq())).collect();
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
    assert_eq!(frames[0].payload()["poem"], "wheelbarrow");
    assert_eq!(frames[2].payload(), &json!("much"));
    assert_eq!(frames[4].payload()["text"], "so much depends");
    assert_eq!(frames[4].payload()["streamed"], true);
    for f in &frames {
        let env = f.envelope();
        assert_eq!(env.correlation_id.as_deref(), Some(request_id.as_str()));
        assert_eq!(env.session_id.as_deref(), Some("s-1"));
        assert_eq!(env.is_final, f.is_terminal());
    }
}

#[tokio::test]
async fn plain_and_streaming_callers_both_work_on_both_kinds_of_endpoint() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _svc = words_service(&bus).await;

    // A plain invoke of a streaming endpoint gets the final frame only.
    let reply = bus
        .request(
            &target("poet.recite"),
            Envelope::request("poet.recite", json!({})),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(reply.event_type, "agent.response.final");
    assert_eq!(reply.seq, 0);
    let payload = reply.payload.unwrap();
    assert_eq!(payload["text"], "so much depends");
    assert_eq!(payload["streamed"], false);

    // A streaming invoke of a plain endpoint gets started then final.
    let frames = drain(open(&bus, "poet.plain", StreamOptions::default()).await).await;
    let kinds: Vec<(FrameType, u64)> = frames
        .iter()
        .map(|f| {
            let f = f.as_ref().unwrap();
            (f.frame_type(), f.seq())
        })
        .collect();
    assert_eq!(kinds, [(FrameType::Started, 1), (FrameType::Final, 2)]);

    // collect_final reads to the end.
    let v = open(&bus, "poet.recite", StreamOptions::default())
        .await
        .collect_final()
        .await
        .unwrap();
    assert_eq!(v["text"], "so much depends");
}

#[tokio::test]
async fn no_responders_is_the_first_item_at_once() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let started = Instant::now();
    let items = drain(open(&bus, "nobody.home", StreamOptions::default()).await).await;
    assert_eq!(items.len(), 1);
    let err = items.into_iter().next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoResponders, "{err}");
    assert!(err.to_string().contains("weft.invoke.nobody.home"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A hand-written responder on `weft.invoke.raw.<endpoint>`: for each request it
/// publishes the frames `script` makes (seq, frame type), in the given order, to the
/// reply inbox, then stays silent.
async fn raw_responder(bus: &Bus, endpoint: &str, script: Vec<(u64, FrameType)>) {
    let mut sub = bus
        .client()
        .subscribe(format!("weft.invoke.raw.{endpoint}"))
        .await
        .unwrap();
    let client = bus.client().clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let request = Envelope::from_slice(&msg.payload).unwrap();
            let inbox = msg.reply.clone().unwrap();
            for (seq, ft) in &script {
                let mut frame = request.reply(*ft, json!(seq));
                frame.seq = *seq;
                client
                    .publish(inbox.clone(), frame.to_bytes().unwrap().into())
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
        }
    });
    bus.client().flush().await.unwrap();
}

#[tokio::test]
async fn out_of_order_frames_come_out_in_seq_order() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    use FrameType::{Delta, Final, Started};
    raw_responder(
        &bus,
        "shuffled",
        vec![
            (3, Delta),
            (1, Started),
            (5, Final),
            (2, Delta),
            (2, Delta), // a duplicate is dropped
            (4, Delta),
        ],
    )
    .await;
    let frames = drain(open(&bus, "raw.shuffled", StreamOptions::default()).await).await;
    let seqs: Vec<u64> = frames.iter().map(|f| f.as_ref().unwrap().seq()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(
        frames.last().unwrap().as_ref().unwrap().frame_type(),
        FrameType::Final
    );
}

#[tokio::test]
async fn a_gap_past_the_limit_or_a_full_buffer_ends_the_stream_with_an_error() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    use FrameType::{Delta, Started};

    // seq 1, then seq 9 while 2 is awaited: a gap of 7 > 4.
    raw_responder(&bus, "gappy", vec![(1, Started), (9, Delta)]).await;
    let items = drain(open(&bus, "raw.gappy", StreamOptions::default().max_gap(4)).await).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().seq(), 1);
    let err = items[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stream, "{err}");
    assert!(err.to_string().contains("gap of 7"), "{err}");

    // 2 never comes; 3, 4 fill a buffer of 2 and 5 overflows it.
    raw_responder(
        &bus,
        "holey",
        vec![(1, Started), (3, Delta), (4, Delta), (5, Delta)],
    )
    .await;
    let items = drain(
        open(
            &bus,
            "raw.holey",
            StreamOptions::default().max_buffered(2).max_gap(10),
        )
        .await,
    )
    .await;
    assert_eq!(items.len(), 2, "{items:?}");
    let err = items[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stream, "{err}");
    assert!(err.to_string().contains("buffer full"), "{err}");
}

#[tokio::test]
async fn idle_and_overall_timeouts_end_the_stream() {
    let server = TestServer::start().await;
    let bus = server.bus().await;

    // Started, then silence: the idle timeout fires.
    raw_responder(&bus, "silent", vec![(1, FrameType::Started)]).await;
    let t0 = Instant::now();
    let items = drain(
        open(
            &bus,
            "raw.silent",
            StreamOptions::default().idle_timeout(Duration::from_millis(400)),
        )
        .await,
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(items.len(), 2, "{items:?}");
    let err = items[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("idle timeout of 400 ms"), "{err}");
    assert!(err.to_string().contains("seq 2"), "{err}");
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // Deltas keep coming every 50 ms, never a final: the overall timeout fires.
    let _svc = Service::new("chatty", "1.0.0")
        .endpoint(Endpoint::streaming(
            "forever",
            |_req: Request, out: StreamWriter| async move {
                loop {
                    out.delta(json!("more")).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        ))
        .serve(&bus)
        .await
        .unwrap();
    let t0 = Instant::now();
    let items = drain(
        open(
            &bus,
            "chatty.forever",
            StreamOptions::default()
                .timeout(Duration::from_millis(600))
                .idle_timeout(Duration::from_millis(300)),
        )
        .await,
    )
    .await;
    let took = t0.elapsed();
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("within 600 ms"), "{err}");
    assert!(items.len() > 3, "{}", items.len());
    assert!(
        took >= Duration::from_millis(580) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

/// A service whose `wait` endpoint sends deltas until cancelled (reporting the
/// cancellation on `seen`), and whose `late` endpoint first works 300 ms without
/// writing, then reports whether it was cancelled meanwhile.
async fn cancellable_service(
    bus: &Bus,
    seen: mpsc::UnboundedSender<&'static str>,
) -> ServiceHandle {
    let seen2 = seen.clone();
    Service::new("patient", "1.0.0")
        .endpoint(Endpoint::streaming(
            "wait",
            move |_req: Request, out: StreamWriter| {
                let seen = seen.clone();
                async move {
                    out.started(Value::Null).await?;
                    loop {
                        tokio::select! {
                            _ = out.cancelled() => {
                                let _ = seen.send("cancelled");
                                // Writes now fail, and `?` ends the handler.
                                out.delta(json!("too late")).await?;
                                let _ = seen.send("wrote after cancel");
                                return Ok(Value::Null);
                            }
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                out.delta(json!("tick")).await?;
                            }
                        }
                    }
                }
            },
        ))
        .endpoint(Endpoint::streaming(
            "late",
            move |_req: Request, out: StreamWriter| {
                let seen = seen2.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = seen.send(if out.is_cancelled() {
                        "cancelled before the first frame"
                    } else {
                        "not cancelled"
                    });
                    Ok(Value::Null)
                }
            },
        ))
        .serve(bus)
        .await
        .unwrap()
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_handler() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let _svc = cancellable_service(&bus, tx).await;

    let mut frames = open(&bus, "patient.wait", StreamOptions::default()).await;
    for _ in 0..3 {
        frames.next().await.unwrap().unwrap();
    }
    let dropped = Instant::now();
    drop(frames);
    let got = tokio::time::timeout(Duration::from_secs(3), seen.recv())
        .await
        .expect("the handler saw no cancellation within 3 s");
    assert_eq!(got, Some("cancelled"));
    assert!(
        dropped.elapsed() < Duration::from_secs(1),
        "{:?}",
        dropped.elapsed()
    );
    // The write after cancellation failed, so the handler never got further.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.try_recv().is_err());

    // Dropped before any frame: the cancellation waits for the service to listen.
    let frames = open(&bus, "patient.late", StreamOptions::default()).await;
    drop(frames);
    let got = tokio::time::timeout(Duration::from_secs(3), seen.recv())
        .await
        .unwrap();
    assert_eq!(got, Some("cancelled before the first frame"));

    // FrameStream::cancel waits for the service's ack.
    let mut frames = open(&bus, "patient.wait", StreamOptions::default()).await;
    frames.next().await.unwrap().unwrap();
    assert!(frames.cancel().await, "the service acknowledged");
    assert_eq!(seen.recv().await, Some("cancelled"));
}

/// Subscribes to a fresh inbox, sends a streaming request to `subject` by hand and
/// returns every message that arrives within `window`, decoded.
async fn raw_frames(bus: &Bus, t: &str, window: Duration) -> Vec<Envelope> {
    let inbox = bus.client().new_inbox();
    let mut sub = bus.client().subscribe(inbox.clone()).await.unwrap();
    let mut req = Envelope::request(t, json!({}));
    req.metadata.insert("weft.stream".into(), json!(true));
    req.reply_to = Some(inbox.clone());
    bus.client()
        .publish_with_reply(
            format!("weft.invoke.{t}"),
            inbox,
            req.to_bytes().unwrap().into(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        out.push(Envelope::from_slice(&msg.payload).unwrap());
    }
    out
}

fn summary(frames: &[Envelope]) -> Vec<(String, u64)> {
    frames
        .iter()
        .map(|f| {
            (
                f.event_type
                    .trim_start_matches("agent.response.")
                    .to_owned(),
                f.seq,
            )
        })
        .collect()
}

#[tokio::test]
async fn every_stream_ends_with_exactly_one_terminal_frame() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let late_write_failed = Arc::new(AtomicBool::new(false));
    let flag = late_write_failed.clone();
    let _svc = Service::new("flaky", "1.0.0")
        .endpoint(Endpoint::streaming(
            "panics",
            |_req: Request, out: StreamWriter| async move {
                out.delta(json!("partial")).await?;
                if true {
                    panic!("the model fell over");
                }
                Ok(Value::Null)
            },
        ))
        .endpoint(Endpoint::streaming(
            "fails",
            |_req: Request, out: StreamWriter| async move {
                out.delta(json!("partial")).await?;
                Err(ErrorPayload::new(
                    ErrorCode::Other("QUOTA".into()),
                    "out of tokens",
                ))
            },
        ))
        .endpoint(Endpoint::streaming(
            "refuses",
            |_req: Request, _out: StreamWriter| async move {
                Err(ErrorPayload::invalid_request("no poem given"))
            },
        ))
        .endpoint(Endpoint::streaming(
            "silent",
            |_req: Request, _out: StreamWriter| async move { Ok(json!("done")) },
        ))
        .endpoint(Endpoint::streaming(
            "leaks",
            move |_req: Request, out: StreamWriter| {
                let flag = flag.clone();
                async move {
                    // A task keeps the writer after the handler returned.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let r = out.delta(json!("after the end")).await;
                        flag.store(
                            r == Err(weft_bus::stream::WriteError::Closed),
                            Ordering::SeqCst,
                        );
                    });
                    Ok(json!("returned early"))
                }
            },
        ))
        .endpoint(
            Endpoint::streaming("slow", |_req: Request, out: StreamWriter| async move {
                out.delta(json!("partial")).await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Value::Null)
            })
            .timeout(Duration::from_millis(200)),
        )
        .serve(&bus)
        .await
        .unwrap();
    let window = Duration::from_millis(600);
    let s = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(a, b)| (a.to_string(), *b)).collect()
    };

    let frames = raw_frames(&bus, "flaky.panics", window).await;
    assert_eq!(
        summary(&frames),
        s(&[("started", 1), ("delta", 2), ("error", 3)])
    );
    let err = &frames[2].payload.as_ref().unwrap();
    assert_eq!(err["code"], "AGENT_UNAVAILABLE");
    assert_eq!(err["retryable"], true);
    assert!(
        err["cause"]
            .as_str()
            .unwrap()
            .contains("the model fell over")
    );

    let frames = raw_frames(&bus, "flaky.fails", window).await;
    assert_eq!(
        summary(&frames),
        s(&[("started", 1), ("delta", 2), ("error", 3)])
    );
    assert_eq!(frames[2].payload.as_ref().unwrap()["code"], "QUOTA");

    // Failing before anything was written: one error frame, no started.
    let frames = raw_frames(&bus, "flaky.refuses", window).await;
    assert_eq!(summary(&frames), s(&[("error", 1)]));

    // Returning without writing: started, then final.
    let frames = raw_frames(&bus, "flaky.silent", window).await;
    assert_eq!(summary(&frames), s(&[("started", 1), ("final", 2)]));

    // A writer kept past the handler's return cannot add frames.
    let frames = raw_frames(&bus, "flaky.leaks", window).await;
    assert_eq!(summary(&frames), s(&[("started", 1), ("final", 2)]));
    assert!(late_write_failed.load(Ordering::SeqCst));

    // The endpoint's timeout ends the stream with AGENT_TIMEOUT.
    let frames = raw_frames(&bus, "flaky.slow", window).await;
    assert_eq!(
        summary(&frames),
        s(&[("started", 1), ("delta", 2), ("error", 3)])
    );
    assert_eq!(frames[2].payload.as_ref().unwrap()["code"], "AGENT_TIMEOUT");

    // Through the client, a handler's error frame is an item, not an Err.
    let items = drain(open(&bus, "flaky.fails", StreamOptions::default()).await).await;
    let last = items.last().unwrap().as_ref().unwrap();
    assert_eq!(last.error().unwrap().message, "out of tokens");
}
