//! `POST /v1/invoke/{target}/stream`: Server-Sent Events over a real socket, one
//! event per frame in order; errors before the stream starts keep the JSON shape; a
//! client disconnect cancels the handler.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::stream::StreamWriter;
use weft_bus::testing::TestServer;
use weft_bus::{Envelope, ErrorPayload};
use weft_gateway::GatewayConfig;

use crate::common::{assert_error, http_client, json, start, start_with};

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl SseEvent {
    fn envelope(&self) -> Envelope {
        Envelope::from_slice(self.data.as_bytes())
            .unwrap_or_else(|e| panic!("data is not an envelope ({e}): {}", self.data))
    }
}

/// Reads an SSE body as it arrives, event by event.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` at the end of the body.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "" => {} // a comment (keep-alive)
                        "event" => {
                            event.event = value.to_owned();
                            any = true;
                        }
                        "id" => event.id = Some(value.to_owned()),
                        "data" => {
                            if !event.data.is_empty() {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            any = true;
                        }
                        other => panic!("unexpected SSE field {other:?} in {block:?}"),
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let chunk = self.response.chunk().await.expect("read the body")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    async fn all(mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = self.next().await {
                out.push(e);
            }
        })
        .await
        .expect("the body ended");
        out
    }
}

async fn story_service(
    bus: &weft_bus::Bus,
    seen: mpsc::UnboundedSender<&'static str>,
) -> ServiceHandle {
    Service::new("story", "1.0.0")
        .endpoint(Endpoint::streaming(
            "tell",
            |req: Request, out: StreamWriter| async move {
                out.started(json!({"for": req.envelope.session_id})).await?;
                let mut text = Vec::new();
                for w in ["once", "upon", "a", "time"] {
                    out.delta(json!(w)).await?;
                    text.push(w);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(json!({ "text": text.join(" ") }))
            },
        ))
        .endpoint(Endpoint::streaming(
            "refuse",
            |_req: Request, _out: StreamWriter| async move {
                Err(ErrorPayload::invalid_request("tell me which story"))
            },
        ))
        .endpoint(Endpoint::streaming(
            "break",
            |_req: Request, out: StreamWriter| async move {
                out.delta(json!("once")).await?;
                Err(ErrorPayload::new(
                    weft_bus::ErrorCode::AgentUnavailable,
                    "the storyteller left",
                ))
            },
        ))
        .endpoint(Endpoint::streaming(
            "stall",
            |_req: Request, out: StreamWriter| async move {
                out.delta(json!("once")).await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Value::Null)
            },
        ))
        .endpoint(Endpoint::streaming(
            "endless",
            move |_req: Request, out: StreamWriter| {
                let seen = seen.clone();
                async move {
                    out.started(Value::Null).await?;
                    loop {
                        tokio::select! {
                            _ = out.cancelled() => {
                                let _ = seen.send("cancelled");
                                return Ok(Value::Null);
                            }
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                out.delta(json!("and then")).await?;
                            }
                        }
                    }
                }
            },
        ))
        .serve(bus)
        .await
        .expect("serve")
}

#[tokio::test]
async fn sse_streams_the_frames_in_order() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (tx, _seen) = mpsc::unbounded_channel();
    let svc = story_service(&bus, tx).await;
    let gw = start(&bus).await;

    let resp = gw
        .http
        .post(gw.url("/v1/invoke/story.tell/stream"))
        .header("X-Session-Id", "s-7")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let events = SseReader::new(resp).all().await;

    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "agent.response.started",
            "agent.response.delta",
            "agent.response.delta",
            "agent.response.delta",
            "agent.response.delta",
            "agent.response.final",
        ]
    );
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_deref().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6"]);
    let envelopes: Vec<Envelope> = events.iter().map(SseEvent::envelope).collect();
    for (i, env) in envelopes.iter().enumerate() {
        assert_eq!(env.event_type, events[i].event);
        assert_eq!(env.seq, i as u64 + 1);
        assert_eq!(env.session_id.as_deref(), Some("s-7"));
        assert_eq!(env.channel.as_deref(), Some("http"));
    }
    assert_eq!(envelopes[0].payload.as_ref().unwrap()["for"], "s-7");
    assert_eq!(envelopes[2].payload.as_ref().unwrap(), &json!("upon"));
    assert_eq!(
        envelopes[5].payload.as_ref().unwrap()["text"],
        "once upon a time"
    );
    gw.stop().await;
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn errors_before_the_stream_starts_are_json_and_after_are_events() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (tx, _seen) = mpsc::unbounded_channel();
    let _svc = story_service(&bus, tx).await;
    let gw = start_with(
        &bus,
        GatewayConfig {
            invoke_timeout: Duration::from_millis(800),
            ..GatewayConfig::default()
        },
    )
    .await;

    let (status, body) = json(gw.post("/v1/invoke/nobody.home/stream", "{}").await).await;
    let message = assert_error(status, &body, 503, "AGENT_UNAVAILABLE");
    assert!(message.contains("weft.invoke.nobody.home"), "{message}");

    let (status, body) = json(gw.post("/v1/invoke/story.tell.more/stream", "{}").await).await;
    assert_error(status, &body, 400, "INVALID_REQUEST");

    let (status, body) = json(
        gw.post("/v1/invoke/story.tell/stream?idle_timeout_ms=0", "{}")
            .await,
    )
    .await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert!(message.contains("idle_timeout_ms"), "{message}");

    // The handler refused before writing anything: its error, as JSON.
    let (status, body) = json(gw.post("/v1/invoke/story.refuse/stream", "{}").await).await;
    let message = assert_error(status, &body, 400, "INVALID_REQUEST");
    assert_eq!(message, "tell me which story");

    // A failure after the stream started is its last event.
    let events = SseReader::new(gw.post("/v1/invoke/story.break/stream", "{}").await)
        .all()
        .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "agent.response.started",
            "agent.response.delta",
            "agent.response.error"
        ]
    );
    let last = events[2].envelope();
    assert_eq!(last.payload.unwrap()["message"], "the storyteller left");

    // The bus stream going idle mid-way: the gateway's own error event, no id.
    let started = Instant::now();
    let events = SseReader::new(
        gw.post("/v1/invoke/story.stall/stream?idle_timeout_ms=300", "{}")
            .await,
    )
    .all()
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let last = events.last().unwrap();
    assert_eq!(last.event, "agent.response.error");
    assert_eq!(last.id, None);
    let env = last.envelope();
    assert_eq!(env.payload.as_ref().unwrap()["code"], "AGENT_TIMEOUT");
    assert_eq!(env.metadata["weft.origin"], "gateway");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_handler() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let _svc = story_service(&bus, tx).await;
    let gw = start(&bus).await;

    // A client of its own, so the connection is closed, not pooled.
    let client = http_client();
    let resp = client
        .post(gw.url("/v1/invoke/story.endless/stream"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut reader = SseReader::new(resp);
    for _ in 0..3 {
        reader.next().await.expect("an event");
    }
    drop(reader);
    drop(client);
    let got = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("the handler saw no cancellation within 5 s");
    assert_eq!(got, Some("cancelled"));
    gw.stop().await;
}
