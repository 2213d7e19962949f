//! Prometheus metrics of agents (DESIGN §7), registered once into
//! [`weft_bus::metrics::registry`] on first use.
//!
//! | metric | labels |
//! |---|---|
//! | `weft_agent_runs_total` | `agent`, `outcome`: `ok` or [`AgentError::outcome`](crate::agent::AgentError::outcome) |
//! | `weft_agent_tool_calls_total` | `agent`, `tool` (`unknown` for names the model made up), `outcome`: `ok`, `error`, `timeout`, `unavailable`, `transport`, `unknown_tool`, `invalid_arguments`, `loop_limit`, `denied` (approval) |
//! | `weft_model_requests_total` | `provider`, `outcome`: `ok` or a [`ModelErrorKind`](crate::model::ModelErrorKind) label |
//! | `weft_model_request_duration_seconds` | `provider` |
//! | `weft_model_tokens_total` | `provider`, `kind`: `input` (prompt) or `output` (answer), as the provider reports them |
//!
//! Labels are low-cardinality: never a session id, run id or message text.

use std::sync::OnceLock;

use prometheus::{HistogramVec, IntCounterVec};
use weft_bus::metrics::{counter, histogram};

/// The agents' metrics.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// `weft_agent_runs_total{agent, outcome}`: chat runs.
    pub runs: IntCounterVec,
    /// `weft_agent_tool_calls_total{agent, tool, outcome}`: tool calls made by runs.
    pub tool_calls: IntCounterVec,
    /// `weft_model_requests_total{provider, outcome}`: model calls.
    pub model_requests: IntCounterVec,
    /// `weft_model_request_duration_seconds{provider}`: model call time in seconds.
    pub model_duration: HistogramVec,
    /// `weft_model_tokens_total{provider, kind}`: tokens the provider reported, `kind`
    /// `input` or `output`.
    pub model_tokens: IntCounterVec,
}

/// The agents' metrics, registered on first use.
pub fn agents() -> &'static AgentMetrics {
    static M: OnceLock<AgentMetrics> = OnceLock::new();
    M.get_or_init(|| AgentMetrics {
        runs: counter(
            "weft_agent_runs_total",
            "Agent chat runs, by agent and outcome",
            &["agent", "outcome"],
        ),
        tool_calls: counter(
            "weft_agent_tool_calls_total",
            "Tool calls made by agent runs, by agent, tool and outcome",
            &["agent", "tool", "outcome"],
        ),
        model_requests: counter(
            "weft_model_requests_total",
            "Model requests, by provider and outcome",
            &["provider", "outcome"],
        ),
        model_duration: histogram(
            "weft_model_request_duration_seconds",
            "Model request time in seconds, by provider",
            &["provider"],
        ),
        model_tokens: counter(
            "weft_model_tokens_total",
            "Tokens of model requests as the provider reports them, by provider and kind (input, output)",
            &["provider", "kind"],
        ),
    })
}
