//! `mcp_call` (calls/s with 16 in flight) and `mcp_call_p50` (sequential, µs):
//! `tools/call` of the tool `bench_noop` over Streamable HTTP to an in-process
//! gateway's `/mcp`, from the official SDK's client ([`rmcp`]), beside a direct bus
//! invoke of the same endpoint `bench.noop` in the same run. Here the twin in the
//! `raw` column is that bus invoke, not raw async-nats: the figure is what the MCP
//! bridge (HTTP, JSON-RPC, session, schema check, result mapping) adds to an invoke.

use std::sync::Arc;

use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;

use super::invoke::{serve_noop, weft_caller};
use super::{Bench, BenchGateway, Figure, OpFuture, bridge_beside_twin};

/// Calls in flight for `mcp_call`.
pub const IN_FLIGHT: usize = 16;

/// The MCP tool of `bench.noop` (DESIGN §12).
const TOOL: &str = "bench_noop";

/// Measures `mcp_call` and `mcp_call_p50`.
///
/// # Errors
/// When the service, the gateway or the MCP session cannot start, or the tool never
/// appears in `tools/list`.
pub async fn run(b: &Bench) -> anyhow::Result<Vec<Figure>> {
    let service_bus = b.connect("service").await?;
    let service = serve_noop(&service_bus, None).await?;
    let gateway = BenchGateway::start(b).await?;
    let url = format!("{}/mcp", gateway.url);
    let client = ().serve(StreamableHttpClientTransport::from_uri(url.as_str())).await?;
    // The gateway's registry watch sees `bench` within a moment.
    let mut listed = false;
    for _ in 0..50 {
        let tools = client.list_all_tools().await?;
        if tools.iter().any(|t| t.name == TOOL) {
            listed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::ensure!(listed, "tool {TOOL} never appeared in tools/list at {url}");

    let arguments = b.payload.as_object().cloned();
    let peer = client.peer().clone();
    let mcp = {
        let shared = Arc::new((peer, arguments));
        move || -> OpFuture {
            let shared = shared.clone();
            Box::pin(async move {
                let (peer, arguments) = &*shared;
                let mut params = CallToolRequestParams::new(TOOL);
                params.arguments = arguments.clone();
                let result = peer.call_tool(params).await.map_err(|e| e.to_string())?;
                match result.is_error {
                    Some(true) => Err(format!("tool error: {:?}", result.content)),
                    _ => Ok(()),
                }
            })
        }
    };
    let caller = b.connect("caller").await?;
    let invoke = weft_caller(&caller, b)?;

    let figures = bridge_beside_twin(
        b,
        ("mcp_call", "mcp_call_p50"),
        "calls/s",
        IN_FLIGHT,
        ("MCP tool calls", mcp),
        ("bus invokes", invoke),
        "twin: a direct bus invoke of the same endpoint (not raw async-nats); one MCP session",
    )
    .await;

    let _ = client.cancel().await;
    gateway.stop().await;
    service.stop().await?;
    figures
}
