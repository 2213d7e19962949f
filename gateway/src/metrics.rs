//! The gateway's Prometheus metrics (DESIGN §7), registered once into the process-wide
//! [`weft_bus::metrics::registry`] that `GET /metrics` renders, and the middleware that
//! records them.
//!
//! | metric | labels |
//! |---|---|
//! | `weft_http_requests_total` | `route` (the matched route pattern, e.g. `/v1/events/{event_type}`, or `unmatched`), `method`, `status` |
//! | `weft_http_request_duration_seconds` | `route` |
//! | `weft_mcp_requests_total` | `method` (`initialize`, `tools/list`, `tools/call`, `ping`), `outcome` (`ok`, `error`) |
//! | `weft_mcp_tool_calls_total` | `outcome` (`ok`, `tool_error`, `invalid_arguments`, `unknown_tool`, `cancelled`); no tool label, tool names are unbounded |
//!
//! Labels stay low-cardinality: the route pattern, never the raw path; methods outside
//! the standard set count as `OTHER`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec};

/// Route label of requests that matched no route (answered 404).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// `weft_http_requests_total{route, method, status}`: requests answered.
    pub requests: IntCounterVec,
    /// `weft_http_request_duration_seconds{route}`: time to the response head, in
    /// seconds.
    pub duration: HistogramVec,
}

/// The gateway's metrics, registered on first use.
pub fn http() -> &'static HttpMetrics {
    static M: OnceLock<HttpMetrics> = OnceLock::new();
    M.get_or_init(|| HttpMetrics {
        requests: weft_bus::metrics::counter(
            "weft_http_requests_total",
            "HTTP requests answered by the gateway, by route pattern, method and status",
            &["route", "method", "status"],
        ),
        duration: weft_bus::metrics::histogram(
            "weft_http_request_duration_seconds",
            "Time the gateway took to answer, in seconds, by route pattern",
            &["route"],
        ),
    })
}

/// The MCP server's metrics ([`crate::mcp::server`]).
#[derive(Debug, Clone)]
pub struct McpMetrics {
    /// `weft_mcp_requests_total{method, outcome}`: MCP requests answered.
    pub requests: IntCounterVec,
    /// `weft_mcp_tool_calls_total{outcome}`: `tools/call` requests by how they ended.
    pub tool_calls: IntCounterVec,
}

/// The MCP server's metrics, registered on first use.
pub fn mcp() -> &'static McpMetrics {
    static M: OnceLock<McpMetrics> = OnceLock::new();
    M.get_or_init(|| McpMetrics {
        requests: weft_bus::metrics::counter(
            "weft_mcp_requests_total",
            "MCP requests answered by the gateway or weft mcp, by method and outcome",
            &["method", "outcome"],
        ),
        tool_calls: weft_bus::metrics::counter(
            "weft_mcp_tool_calls_total",
            "MCP tools/call requests, by outcome (ok, tool_error, invalid_arguments, unknown_tool, cancelled)",
            &["outcome"],
        ),
    })
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware (for [`axum::middleware::from_fn`]) counting and timing every request
/// by its matched route pattern.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let m = http();
    m.requests
        .with_label_values(&[route.as_str(), method, response.status().as_str()])
        .inc();
    m.duration
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
