//! External MCP servers on the bus (DESIGN §13, client side): [`Bridge`] connects to
//! an MCP server, registers service `NAME` with one endpoint per tool, and serves
//! each invoke of `P.invoke.NAME.<endpoint>` by calling the tool.
//!
//! | endpoint field | from the MCP tool |
//! |---|---|
//! | name | the tool name mapped to a subject token ([`super::names::endpoint_name`]: `math.mul` → `math-2e-mul`) |
//! | description | the tool's description |
//! | input, output schema | the tool's `inputSchema`, `outputSchema` |
//! | metadata | the tool's annotations (`readOnlyHint`…), `mcp.tool` = the tool's own name, `mcp.content: "blocks"` (the mesh's MCP server gives content blocks back as they came) |
//!
//! | tool result | invoke reply |
//! |---|---|
//! | `structuredContent` | that value |
//! | text content only | the text (blocks joined by newlines), a JSON string |
//! | other content (images, resources…) | `{"content": [<the MCP content blocks>]}` |
//! | `isError: true` | error `TOOL_ERROR` with the text of the content as message |
//! | JSON-RPC error (e.g. -32602) | error `INVALID_REQUEST` with the server's message |
//! | no answer within [`AttachOptions::call_timeout`] | error `AGENT_TIMEOUT` (retryable) |
//! | the server is gone | error `AGENT_UNAVAILABLE` (retryable) |
//!
//! # Supervision
//!
//! [`Bridge::run`] keeps the bridge up until its shutdown future completes:
//!
//! - `notifications/tools/list_changed` from the server: the tools are listed again
//!   and the service re-registered with the new endpoints;
//! - the stdio server exits, or the HTTP server stops answering: the service is
//!   deregistered (agents see its tools go) and the bridge connects again with
//!   back-off, 500 ms doubling to 30 s (reset after 30 s of healthy connection);
//! - shutdown: the service is deregistered and a stdio server is shut down as the MCP
//!   spec says (stdin closed, then `SIGTERM`, then kill).

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation, Tool as McpTool,
};
use rmcp::service::{NotificationContext, Peer, RoleClient};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ServiceError, ServiceExt as _};
use serde_json::{Value, json};
use tokio::sync::watch;
use weft_bus::registry::Kind;
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::{Bus, ErrorCode, ErrorPayload, ServiceName};

use super::names::endpoint_name;

/// Default longest wait for one tool call: 60 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// First wait before connecting again after the server went away: 500 ms.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);

/// Longest wait between connection attempts: 30 s.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The error code of a tool result with `isError: true`.
pub const TOOL_ERROR: &str = "TOOL_ERROR";

/// Where the MCP server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpSource {
    /// A stdio server: `command` with `args`, spawned (and re-spawned) by the bridge.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A Streamable HTTP server at `url`, sent `headers` on every request (e.g.
    /// `Authorization`).
    Http {
        /// The MCP endpoint, e.g. `https://example.com/mcp`.
        url: String,
        /// Extra request headers, `(name, value)`.
        headers: Vec<(String, String)>,
    },
}

impl std::fmt::Display for McpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            McpSource::Stdio { command, args } => {
                write!(f, "stdio: {command}")?;
                args.iter().try_for_each(|a| write!(f, " {a}"))
            }
            McpSource::Http { url, .. } => write!(f, "{url}"),
        }
    }
}

/// What to attach, under which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOptions {
    /// The service name the tools are registered under (`weft mcp attach NAME`).
    pub name: ServiceName,
    /// The MCP server.
    pub source: McpSource,
    /// Longest wait for one tool call. Default [`DEFAULT_CALL_TIMEOUT`], 60 s.
    pub call_timeout: Duration,
}

impl AttachOptions {
    /// Options for `source` under `name`, with the default call timeout.
    pub fn new(name: ServiceName, source: McpSource) -> Self {
        AttachOptions {
            name,
            source,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// Why a bridge could not start (later failures are retried, see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A header given for an HTTP server is not a valid HTTP header.
    #[error("invalid header {0:?}: {1}")]
    Header(String, String),
}

/// A bridge from one MCP server onto the bus (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Bridge {
    options: AttachOptions,
}

/// The bridge's MCP client: it only listens for `tools/list_changed`.
#[derive(Clone)]
struct Listener {
    changed: watch::Sender<u64>,
}

impl ClientHandler for Listener {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("weft-mcp-attach", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// How one connection ended.
enum Ended {
    Shutdown,
    Lost(String),
}

impl Bridge {
    /// A bridge with `options`.
    ///
    /// # Errors
    /// [`AttachError::Header`] for an HTTP header that is not valid.
    pub fn new(options: AttachOptions) -> Result<Bridge, AttachError> {
        if let McpSource::Http { headers, .. } = &options.source {
            http_headers(headers)?;
        }
        Ok(Bridge { options })
    }

    /// Runs the bridge until `shutdown` completes, connecting again whenever the
    /// server goes away (see the module docs). Returns once the service is
    /// deregistered and a stdio server has exited.
    pub async fn run(&self, bus: &Bus, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        let mut backoff = RESTART_BACKOFF_MIN;
        loop {
            let began = Instant::now();
            let reason = match self.connect_and_serve(bus, shutdown.as_mut()).await {
                Ended::Shutdown => return,
                Ended::Lost(reason) => reason,
            };
            if began.elapsed() >= RESTART_BACKOFF_MAX {
                backoff = RESTART_BACKOFF_MIN;
            }
            tracing::warn!(service = %self.options.name, source = %self.options.source, %reason,
                "MCP server lost; connecting again in {} ms", backoff.as_millis());
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.as_mut() => return,
            }
            backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        }
    }

    /// One connection: initialize, register, serve until lost or shut down.
    async fn connect_and_serve(
        &self,
        bus: &Bus,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Ended {
        let (changed, mut on_change) = watch::channel(0u64);
        let listener = Listener { changed };
        let connecting = async {
            match &self.options.source {
                McpSource::Stdio { command, args } => {
                    let mut cmd = tokio::process::Command::new(command);
                    cmd.args(args);
                    let transport = TokioChildProcess::new(cmd)
                        .map_err(|e| format!("cannot start {command}: {e}"))?;
                    listener
                        .serve(transport)
                        .await
                        .map_err(|e| format!("initialize failed: {e}"))
                }
                McpSource::Http { url, headers } => {
                    // reqwest is built without a TLS provider of its own: use ring,
                    // as the rest of Weft does (a no-op when one is installed).
                    let _ = rustls::crypto::ring::default_provider().install_default();
                    let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                        .custom_headers(http_headers(headers).map_err(|e| e.to_string())?);
                    listener
                        .serve(StreamableHttpClientTransport::from_config(config))
                        .await
                        .map_err(|e| format!("initialize failed: {e}"))
                }
            }
        };
        let client = tokio::select! {
            c = connecting => match c {
                Ok(c) => c,
                Err(reason) => return Ended::Lost(reason),
            },
            () = shutdown.as_mut() => return Ended::Shutdown,
        };
        let peer = client.peer().clone();
        let server = client
            .peer_info()
            .and_then(|i| i.server_info.clone())
            .map(|i| (i.name, i.version));
        let stop = client.cancellation_token();
        let mut closed = pin!(client.waiting());
        let mut service: Option<ServiceHandle> = None;
        let ended = loop {
            match self.register(bus, &peer, server.as_ref()).await {
                Ok(handle) => {
                    if let Some(old) = service.replace(handle) {
                        // The new registration is live: the old one may go.
                        if let Err(e) = old.stop().await {
                            tracing::warn!(error = %e, "cannot stop the previous registration");
                        }
                    }
                }
                Err(reason) => {
                    stop.cancel();
                    let _ = closed.as_mut().await;
                    break Ended::Lost(reason);
                }
            }
            tokio::select! {
                quit = closed.as_mut() => break Ended::Lost(format!("connection closed ({quit:?})")),
                _ = on_change.changed() => {
                    tracing::info!(service = %self.options.name, "tools changed; registering them again");
                }
                () = shutdown.as_mut() => {
                    stop.cancel();
                    let _ = closed.as_mut().await;
                    break Ended::Shutdown;
                }
            }
        };
        if let Some(handle) = service
            && let Err(e) = handle.stop().await
        {
            tracing::warn!(error = %e, "cannot deregister the bridge's service; it expires after the registry TTL");
        }
        ended
    }

    /// Lists the tools and serves them as the bridge's service.
    async fn register(
        &self,
        bus: &Bus,
        peer: &Peer<RoleClient>,
        server: Option<&(String, String)>,
    ) -> Result<ServiceHandle, String> {
        let tools = peer
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"))?;
        let version = server
            .map(|(_, v)| v.as_str())
            .filter(|v| is_semver(v))
            .unwrap_or("0.0.0");
        let mut service = Service::new(self.options.name.as_str(), version)
            .kind(Kind::Service)
            .description(format!("MCP server {} (attached)", self.options.source))
            .metadata("mcp.source", json!(self.options.source.to_string()));
        if let Some((name, v)) = server {
            service = service.metadata("mcp.server", json!({"name": name, "version": v}));
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        for tool in &tools {
            let endpoint = endpoint_name(&tool.name);
            if endpoint.is_empty() {
                tracing::warn!("an MCP tool with an empty name is left out");
                continue;
            }
            if let Some(first) = seen.insert(endpoint.clone(), tool.name.to_string()) {
                tracing::warn!(tool = %tool.name, %first, "two tools map to one endpoint; the second is left out");
                continue;
            }
            service = service.endpoint(self.endpoint(peer, tool, endpoint));
        }
        let handle = service
            .serve(bus)
            .await
            .map_err(|e| format!("cannot register service {}: {e}", self.options.name))?;
        tracing::info!(service = %self.options.name, tools = tools.len(), "MCP tools registered");
        Ok(handle)
    }

    /// The endpoint serving `tool`.
    fn endpoint(&self, peer: &Peer<RoleClient>, tool: &McpTool, name: String) -> Endpoint {
        let peer = peer.clone();
        let tool_name = tool.name.to_string();
        let timeout = self.options.call_timeout;
        let mut endpoint = Endpoint::new(name, move |req: Request| {
            let peer = peer.clone();
            let tool_name = tool_name.clone();
            async move { call(&peer, &tool_name, req.payload(), timeout).await }
        })
        .input_schema(Value::Object((*tool.input_schema).clone()))
        .metadata("mcp.tool", json!(tool.name))
        .metadata(super::server::CONTENT_METADATA_KEY, json!("blocks"));
        if let Some(d) = &tool.description {
            endpoint = endpoint.description(d.as_ref());
        }
        if let Some(s) = &tool.output_schema {
            endpoint = endpoint.output_schema(Value::Object((**s).clone()));
        }
        if let Some(Value::Object(hints)) = tool
            .annotations
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok())
        {
            for (k, v) in hints {
                endpoint = endpoint.metadata(k, v);
            }
        }
        endpoint
    }
}

/// Calls `tool` with the invoke's payload (see the module docs for the mapping).
async fn call(
    peer: &Peer<RoleClient>,
    tool: &str,
    payload: &Value,
    timeout: Duration,
) -> Result<Value, ErrorPayload> {
    let arguments = match payload {
        Value::Object(o) => Some(o.clone()),
        Value::Null => None,
        other => {
            return Err(ErrorPayload::new(
                ErrorCode::InvalidRequest,
                format!("the arguments of MCP tool {tool:?} must be a JSON object, not {other}"),
            ));
        }
    };
    let mut params = CallToolRequestParams::new(tool.to_owned());
    params.arguments = arguments;
    match tokio::time::timeout(timeout, peer.call_tool(params)).await {
        Err(_) => Err(ErrorPayload::new(
            ErrorCode::AgentTimeout,
            format!(
                "MCP tool {tool:?} did not answer within {} ms",
                timeout.as_millis()
            ),
        )
        .retryable()),
        Ok(Err(ServiceError::McpError(e))) => Err(ErrorPayload::new(
            ErrorCode::InvalidRequest,
            format!("MCP tool {tool:?}: {} ({})", e.message, e.code.0),
        )),
        Ok(Err(e)) => Err(ErrorPayload::new(
            ErrorCode::AgentUnavailable,
            format!("MCP tool {tool:?}: the server did not answer: {e}"),
        )
        .retryable()),
        Ok(Ok(result)) => reply(tool, result),
    }
}

/// A tool result as an invoke reply.
fn reply(tool: &str, result: CallToolResult) -> Result<Value, ErrorPayload> {
    let texts: Option<Vec<&str>> = result
        .content
        .iter()
        .map(|c| match c {
            ContentBlock::Text(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    if result.is_error == Some(true) {
        let message = match &texts {
            Some(t) if !t.is_empty() => t.join("\n"),
            _ => format!("MCP tool {tool:?} failed"),
        };
        return Err(ErrorPayload::new(
            ErrorCode::Other(TOOL_ERROR.into()),
            message,
        ));
    }
    if let Some(structured) = result.structured_content {
        return Ok(structured);
    }
    match texts {
        Some(t) => Ok(Value::String(t.join("\n"))),
        None => Ok(json!({ "content": result.content })),
    }
}

/// The headers of an HTTP source, checked.
fn http_headers(
    headers: &[(String, String)],
) -> Result<HashMap<axum::http::HeaderName, axum::http::HeaderValue>, AttachError> {
    headers
        .iter()
        .map(|(k, v)| {
            let name = axum::http::HeaderName::try_from(k.as_str())
                .map_err(|e| AttachError::Header(k.clone(), e.to_string()))?;
            let value = axum::http::HeaderValue::try_from(v.as_str())
                .map_err(|e| AttachError::Header(k.clone(), e.to_string()))?;
            Ok((name, value))
        })
        .collect()
}

/// True for `MAJOR.MINOR.PATCH` with an optional `-pre`/`+build` suffix.
fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_map_to_replies() {
        let structured = CallToolResult::structured(json!({"sum": 3}));
        assert_eq!(reply("add", structured).unwrap(), json!({"sum": 3}));
        let text = CallToolResult::success(vec![ContentBlock::text("a"), ContentBlock::text("b")]);
        assert_eq!(reply("echo", text).unwrap(), json!("a\nb"));
        let failed = CallToolResult::error(vec![ContentBlock::text("fixture failure")]);
        let e = reply("fail", failed).unwrap_err();
        assert_eq!(e.code, ErrorCode::Other(TOOL_ERROR.into()));
        assert_eq!(e.message, "fixture failure");
        let image = CallToolResult::success(vec![ContentBlock::image("aGk=", "image/png")]);
        let v = reply("pic", image).unwrap();
        assert_eq!(v["content"][0]["type"], "image");
        assert_eq!(v["content"][0]["mimeType"], "image/png");
    }

    #[test]
    fn versions_are_checked_as_semver() {
        assert!(is_semver("1.2.3"));
        assert!(is_semver("1.2.3-beta.1"));
        assert!(!is_semver("1.2"));
        assert!(!is_semver("v1.2.3"));
        assert!(!is_semver(""));
    }
}
