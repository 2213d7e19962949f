//! Flow metrics, registered into the process-wide registry of `weft_bus::metrics`.

use std::sync::OnceLock;

use prometheus::{HistogramVec, IntCounterVec};
use weft_bus::metrics::{counter, histogram};

/// The flow engine's metrics.
#[derive(Debug, Clone)]
pub struct FlowMetrics {
    /// `weft_flow_runs_total{flow, status}`: runs that were `started` or ended
    /// `completed`, `failed` or `cancelled`.
    pub runs: IntCounterVec,
    /// `weft_flow_steps_total{flow, step, outcome}`: step attempts; outcome `ok`,
    /// `retry` or `failed`.
    pub steps: IntCounterVec,
    /// `weft_flow_step_duration_seconds{flow, step}`: time of one step attempt.
    pub step_duration: HistogramVec,
}

/// The flow metrics, registered on first use.
pub fn flows() -> &'static FlowMetrics {
    static M: OnceLock<FlowMetrics> = OnceLock::new();
    M.get_or_init(|| FlowMetrics {
        runs: counter(
            "weft_flow_runs_total",
            "Flow runs by flow and status (started, completed, failed, cancelled)",
            &["flow", "status"],
        ),
        steps: counter(
            "weft_flow_steps_total",
            "Flow step attempts by flow, step and outcome (ok, retry, failed)",
            &["flow", "step", "outcome"],
        ),
        step_duration: histogram(
            "weft_flow_step_duration_seconds",
            "Duration of one flow step attempt in seconds, by flow and step",
            &["flow", "step"],
        ),
    })
}
