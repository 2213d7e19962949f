//! `a2a_send` (sends/s with 16 in flight) and `a2a_send_p50` (sequential, µs): a
//! blocking A2A 1.0 `SendMessage` over JSON-RPC to an in-process gateway's
//! `/a2a/bench_a2a`, from the official client ([`a2a_client`]), beside a direct bus
//! invoke of the same agent's `chat` in the same run. The twin in the `raw` column is
//! that bus invoke, not raw async-nats: the figure is what the A2A bridge adds to a
//! chat (HTTP, JSON-RPC, the task's lifecycle with one KV write and one update
//! message per event, the streaming invoke under it).
//!
//! The agent `bench_a2a` manages nothing and its scripted model answers every message
//! with `done` at once, so the chat itself costs as little as a chat can.

use std::sync::Arc;

use a2a_client::A2AClientFactory;
use a2a_client::agent_card::AgentCardResolver;
use a2a_client::jsonrpc::JsonRpcTransportFactory;
use serde_json::json;
use weft_agents::{Agent, ScriptedModel};
use weft_bus::Target;

use super::{Bench, BenchGateway, Figure, OpFuture, bridge_beside_twin};

/// Sends in flight for `a2a_send`.
pub const IN_FLIGHT: usize = 16;

const AGENT: &str = "bench_a2a";

const SCRIPT: &str = r#"{"rules": [{"match": ".*", "turns": [{"content": "done"}]}]}"#;

/// Measures `a2a_send` and `a2a_send_p50`.
///
/// # Errors
/// When the agent, the gateway or the client cannot start, or the agent's card never
/// appears.
pub async fn run(b: &Bench) -> anyhow::Result<Vec<Figure>> {
    let agent_bus = b.connect("agent").await?;
    let agent = Agent::new(AGENT)
        .description("weft bench: answers done")
        .model(Arc::new(ScriptedModel::from_json(SCRIPT)?))
        .serve(&agent_bus)
        .await?;
    let gateway = BenchGateway::start(b).await?;
    let url = format!("{}/a2a/{AGENT}", gateway.url);
    // The gateway's registry watch sees the agent within a moment.
    // Without TLS features of its own, the client takes the workspace's reqwest.
    let http = weft_gateway::a2a::bridge::http_client().map_err(|e| anyhow::anyhow!(e.message))?;
    let resolver = AgentCardResolver::new(Some(http.clone()));
    let mut card = None;
    for _ in 0..50 {
        if let Ok(c) = resolver.resolve(&url).await {
            card = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let card = card.ok_or_else(|| anyhow::anyhow!("no Agent Card at {url}"))?;
    let factory = A2AClientFactory::builder()
        .no_defaults()
        .register(Arc::new(JsonRpcTransportFactory::new(Some(http))))
        .build();
    let client = Arc::new(factory.create_from_card(&card).await?);
    let a2a = move || -> OpFuture {
        let client = client.clone();
        Box::pin(async move {
            let request = weft_gateway::a2a::bridge::text_request("ping", None);
            match client
                .send_message(&request)
                .await
                .map_err(|e| e.to_string())?
            {
                a2a::SendMessageResponse::Task(t)
                    if t.status.state == a2a::TaskState::Completed =>
                {
                    Ok(())
                }
                other => Err(format!("unexpected SendMessage answer: {other:?}")),
            }
        })
    };
    let caller = b.connect("caller").await?;
    let chat = {
        let shared = Arc::new((caller.clone(), AGENT.parse::<Target>()?));
        move || -> OpFuture {
            let shared = shared.clone();
            Box::pin(async move {
                let (bus, target) = &*shared;
                bus.invoke(target, json!({"message": "ping"}))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        }
    };

    let figures = bridge_beside_twin(
        b,
        ("a2a_send", "a2a_send_p50"),
        "sends/s",
        IN_FLIGHT,
        ("A2A sends", a2a),
        ("bus chats", chat),
        "twin: a direct bus invoke of the agent's chat (not raw async-nats); blocking SendMessage",
    )
    .await;

    gateway.stop().await;
    agent.stop().await?;
    figures
}
