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
//!
//! `agent_loop_p50` / `agent_loop_p99`: one chat at a time with a zero-latency
//! in-process model making two tool calls (of the no-op endpoint) in one turn, then
//! answering: Weft's own overhead of the tool loop (registry lookup, guardrails, tool
//! middleware, spans, metrics, the envelopes of three invokes). The twins are the
//! three request-replies it makes, one after the other: hand-written (JSON built and
//! decoded per message) and raw (pre-encoded bytes).

use std::sync::Arc;

use serde_json::json;
use weft_agents::{Agent, ScriptedModel};
use weft_bus::Target;

use super::invoke::{Side, sequential, serve_noop, with_side};
use super::{Bench, Figure, Sides, closed_loop, latency_figures};

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

const LOOP_SCRIPT: &str = r#"{"rules": [{"match": ".*", "turns": [
  {"tool_calls": [{"name": "bench_noop", "arguments": {}}, {"name": "bench_noop", "arguments": {"n": 2}}]},
  {"content": "done"}
]}]}"#;

/// Measures `agent_loop_p50` and `agent_loop_p99`.
///
/// # Errors
/// When connecting fails, the service or agent cannot start, or no chat completes.
pub async fn loop_latency(b: &Bench) -> anyhow::Result<Vec<Figure>> {
    let service_bus = b.connect("service").await?;
    let service = serve_noop(&service_bus, None).await?;
    let agent_bus = b.connect("agent").await?;
    let agent = Agent::new("bench_loop")
        .description("weft bench: two no-op tool calls per chat, zero-latency model")
        .manages(["bench"])
        .model(Arc::new(ScriptedModel::from_json(LOOP_SCRIPT)?))
        .serve(&agent_bus)
        .await?;
    agent_bus.client().flush().await?;
    let caller = b.connect("caller").await?;
    let target: Target = "bench_loop".parse()?;
    let chat = async || {
        let out = caller
            .invoke(&target, json!({"message": "go"}))
            .await
            .map_err(|e| e.to_string())?;
        match out["tool_calls"].as_array().map(Vec::len) {
            Some(2) => Ok(()),
            _ => Err(format!("unexpected chat reply: {out}")),
        }
    };
    let weft = sequential(b, chat).await;
    agent.stop().await?;
    service.stop().await?;

    // The twins: the loop's three request-replies in sequence.
    let three = async |side| {
        with_side(b, side, async |one| {
            sequential(b, async || {
                for _ in 0..3 {
                    one().await?;
                }
                Ok(())
            })
            .await
        })
        .await
        .map(|(timed, _)| timed)
    };
    let (hand, raw) = (three(Side::Hand).await?, three(Side::Raw).await?);
    let quantiles = [("agent_loop_p50", 0.5), ("agent_loop_p99", 0.99)];
    Ok(
        latency_figures(&quantiles, Sides::all(weft, hand, raw), "agent_loop")?
            .into_iter()
            .map(|f| f.note("one chat at a time: zero-latency model, 2 tool calls; hand and raw: its 3 request-replies in sequence"))
            .collect(),
    )
}
