//! `agent_chat`: chats/s of an agent on the scripted model, 16 chats in flight. There
//! is no raw twin: the tool loop is Weft's own.
//!
//! Agent `bench_agent` manages the service `bench` (endpoint `noop`); its scripted
//! model answers every message with one call of the tool `bench_noop`, then a reply.
//! Each chat is thus one invoke of the agent, a registry lookup of its tools, two
//! model turns in process and one tool invoke. The figure is the mesh's ceiling for
//! agent chats with a model that costs nothing; a real model's latency divides it.
//! The registry's consumer count after the run is in the note: it stays at the one
//! watch of each connection, however many chats ran.

use std::sync::Arc;

use serde_json::json;
use weft_agents::{Agent, ScriptedModel};
use weft_bus::Target;

use super::invoke::serve_noop;
use super::{Bench, Figure, closed_loop};

/// Chats in flight.
pub const IN_FLIGHT: usize = 16;

const SCRIPT: &str = r#"{"rules": [{"match": ".*", "turns": [
  {"tool_calls": [{"name": "bench_noop", "arguments": {}}]},
  {"content": "done"}
]}]}"#;

/// Measures `agent_chat`.
///
/// # Errors
/// When connecting fails, the service or agent cannot start, or no chat completes.
pub async fn run(b: &Bench) -> anyhow::Result<Figure> {
    let service_bus = b.connect("service").await?;
    let service = serve_noop(&service_bus, None).await?;
    let agent_bus = b.connect("agent").await?;
    let agent = Agent::new("bench_agent")
        .description("weft bench: one no-op tool call per chat")
        .manages(["bench"])
        .model(Arc::new(ScriptedModel::from_json(SCRIPT)?))
        .serve(&agent_bus)
        .await?;
    agent_bus.client().flush().await?;
    let caller = b.connect("caller").await?;
    let target: Target = "bench_agent".parse()?;
    // Warm up: the agent's registry watch starts on its first chat.
    caller
        .invoke(&target, json!({"message": "warm up"}))
        .await?;
    let chats = {
        let (caller, target) = (caller.clone(), target.clone());
        closed_loop(IN_FLIGHT, b.duration, move || {
            let (caller, target) = (caller.clone(), target.clone());
            Box::pin(async move {
                let out = caller
                    .invoke(&target, json!({"message": "ping"}))
                    .await
                    .map_err(|e| e.to_string())?;
                if out["tool_calls"][0]["name"] != "bench_noop" {
                    return Err(format!("unexpected chat reply: {out}"));
                }
                Ok(())
            })
        })
        .await
        .require_ops("agent chats")?
    };
    let registry = format!("KV_{}", caller.names().registry_bucket);
    let consumers = caller
        .jetstream()
        .get_stream(&registry)
        .await?
        .info()
        .await?
        .state
        .consumer_count;
    agent.stop().await?;
    service.stop().await?;
    Ok(Figure::weft_only("agent_chat", "chats/s", chats).note(format!(
        "scripted model, {IN_FLIGHT} in flight, one tool call per chat; {consumers} consumer(s) on the registry afterwards"
    )))
}
