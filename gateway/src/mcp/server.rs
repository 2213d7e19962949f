//! The mesh as an MCP server (DESIGN §13): every endpoint of every registered
//! service, and every agent's `chat`, as an MCP tool.
//!
//! # Methods
//!
//! | method | answer |
//! |---|---|
//! | `initialize` | protocol version negotiated among every version `rmcp` knows ([`rmcp::model::ProtocolVersion::KNOWN_VERSIONS`]: 2024-11-05 to 2026-07-28); capability `tools` with `listChanged` |
//! | `tools/list` | the registry's endpoints as tools ([`weft_bus::tool`]), all on one page, limited by [`McpOptions::services`] |
//! | `tools/call` | the arguments are checked against the tool's input schema, then the endpoint is invoked on the bus |
//! | `notifications/cancelled` | cancels the invoke: a streaming endpoint's handler sees [`StreamWriter::is_cancelled`](weft_bus::stream::StreamWriter::is_cancelled) |
//! | `notifications/tools/list_changed` (sent) | when the tools of the session change (a service registers, stops or expires), from the registry watch; on 2026-07-28 through `subscriptions/listen` |
//!
//! # `tools/call`
//!
//! | outcome | MCP answer |
//! |---|---|
//! | reply `{"content": [<MCP content blocks>]}` from an endpoint whose metadata has `"mcp.content": "blocks"` ([`CONTENT_METADATA_KEY`]) | result: those content blocks (text, image, audio, resource…), as an attached MCP server gave them |
//! | reply with an object payload | result: `structuredContent` = the payload, and the same JSON as one text content block |
//! | reply with a string payload | result: that string as one text content block |
//! | reply with any other payload | result: its JSON as one text content block |
//! | bus error (the handler's error, timeout, no responders…) | result with `isError: true`, one text block `{"code", "message"}` (and `retryable`, `cause` when set) |
//! | unknown tool, or arguments that fail the input schema | JSON-RPC error -32602 (`data.errors` lists each schema violation with its JSON pointer) |
//!
//! A streaming endpoint ([`Tool::streaming`]) is invoked as a stream: when the request
//! carries a `progressToken`, each `delta` frame is a `notifications/progress` (an
//! object delta with a number `progress` gives `progress`, `total` and `message`;
//! any other delta counts 1, 2, 3… with the delta's text as `message`), and the
//! terminal frame is the result.
//!
//! # Envelope and trace
//!
//! The request envelope has `from` and `channel` `mcp`; over HTTP the headers
//! `X-Session-Id`, `X-Tenant-Id` and `X-User-Id` map as on the rest of the gateway.
//! Each call runs in a SERVER span `tools/call {tool}` (attributes `mcp.method.name`,
//! `gen_ai.tool.name`, `gen_ai.operation.name = execute_tool`, `jsonrpc.request.id`,
//! `mcp.protocol.version`), whose parent is the `traceparent` of the request's
//! `_meta` or else the HTTP request's span: the invoke continues the caller's trace.
//!
//! # Metrics
//!
//! `weft_mcp_requests_total{method, outcome}` (methods `initialize`, `tools/list`,
//! `tools/call`, `ping`; outcomes `ok`, `error`) and `weft_mcp_tool_calls_total{outcome}`
//! (`ok`, `tool_error`, `invalid_arguments`, `unknown_tool`, `cancelled`). There is no
//! tool label: tool names come from whatever registers, so they are unbounded;
//! `weft_handled_total{service, endpoint}` on the serving side counts per endpoint.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ServerCapabilities, ServerConfig, SubscriptionFilter,
    Tool as McpTool, ToolAnnotations,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt as _};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use weft_bus::registry::{Kind, RegistryWatch};
use weft_bus::stream::StreamOptions;
use weft_bus::tool::{Tool, ToolSet};
use weft_bus::{Bus, Envelope, ErrorPayload, FrameType};

use crate::routes::HttpContext;

/// The envelope `from` and `channel` of every invoke made for an MCP client.
pub const MCP_CHANNEL: &str = "mcp";

/// The server name in `initialize` (`serverInfo.name`).
pub const SERVER_NAME: &str = "weft";

/// The endpoint metadata key saying that replies may be MCP content blocks,
/// `{"content": [...]}`; its value is `"blocks"`. [`super::attach`] sets it on the
/// endpoints it registers, so an external server's images and resources reach MCP
/// clients as they were.
pub const CONTENT_METADATA_KEY: &str = "mcp.content";

/// Default longest wait for one `tools/call`: 30 s (the gateway's invoke timeout).
pub const DEFAULT_CALL_TIMEOUT: Duration = crate::config::DEFAULT_INVOKE_TIMEOUT;

/// What the MCP server exposes and how long a call may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpOptions {
    /// Only the services and agents with these names are tools (`--mcp-services
    /// a,b`). Default none: every service and agent.
    pub services: Option<BTreeSet<String>>,
    /// Longest wait for one `tools/call` (for a streaming endpoint, the whole
    /// stream). Default [`DEFAULT_CALL_TIMEOUT`], 30 s.
    pub call_timeout: Duration,
}

impl Default for McpOptions {
    fn default() -> Self {
        McpOptions {
            services: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// The tools at one registry generation, with their MCP form and schema validators.
struct Catalog {
    generation: u64,
    set: ToolSet,
    listed: Vec<McpTool>,
    validators: HashMap<String, OnceLock<Result<jsonschema::Validator, String>>>,
}

impl Catalog {
    fn build(generation: u64, registry: &RegistryWatch, options: &McpOptions) -> Catalog {
        let mut registrations = registry.newest_each(Kind::Service);
        registrations.extend(registry.newest_each(Kind::Agent));
        if let Some(only) = &options.services {
            registrations.retain(|r| only.contains(&r.name));
        }
        let set = ToolSet::from_registrations(&registrations);
        for p in set.problems() {
            tracing::warn!(tool = %p.tool, endpoint = %p.endpoint, "endpoint left out of the MCP tools: {}", p.reason);
        }
        let listed = set.tools().iter().map(mcp_tool).collect();
        let validators = set
            .tools()
            .iter()
            .map(|t| (t.name.clone(), OnceLock::new()))
            .collect();
        Catalog {
            generation,
            set,
            listed,
            validators,
        }
    }

    /// Checks `arguments` against the input schema of `tool`.
    fn validate(&self, tool: &Tool, arguments: &Value) -> Result<(), McpError> {
        let Some(cell) = self.validators.get(&tool.name) else {
            return Ok(());
        };
        let validator = cell.get_or_init(|| {
            jsonschema::validator_for(&tool.input_schema).map_err(|e| e.to_string())
        });
        let validator = match validator {
            Ok(v) => v,
            Err(e) => {
                // A service registered a schema that is no JSON Schema: say so instead
                // of guessing whether the arguments fit.
                return Err(McpError::invalid_params(
                    format!("tool {} has an invalid input schema: {e}", tool.name),
                    None,
                ));
            }
        };
        let errors: Vec<Value> = validator
            .iter_errors(arguments)
            .map(|e| json!({"path": e.instance_path().to_string(), "message": e.to_string()}))
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        let first = errors[0]["message"].as_str().unwrap_or_default().to_owned();
        let at = errors[0]["path"].as_str().unwrap_or_default().to_owned();
        Err(McpError::invalid_params(
            format!(
                "arguments of {} do not match its input schema: {first}{}",
                tool.name,
                if at.is_empty() {
                    String::new()
                } else {
                    format!(" (at {at})")
                }
            ),
            Some(json!({ "errors": errors })),
        ))
    }
}

/// An endpoint tool in MCP form.
fn mcp_tool(tool: &Tool) -> McpTool {
    let schema = |v: &Value| Arc::new(v.as_object().cloned().unwrap_or_default());
    let mut out = McpTool::new(
        tool.name.clone(),
        tool.description.clone(),
        schema(&tool.input_schema),
    );
    out.output_schema = tool.output_schema.as_ref().map(schema);
    if !tool.annotations.is_empty() {
        out.annotations =
            serde_json::from_value::<ToolAnnotations>(Value::Object(tool.annotations.clone())).ok();
        out.title = tool
            .annotations
            .get("title")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    out
}

/// What every session of one server shares.
struct Shared {
    bus: Bus,
    registry: RegistryWatch,
    changes: watch::Receiver<u64>,
    options: McpOptions,
    catalog: Mutex<Option<Arc<Catalog>>>,
}

impl Shared {
    /// The tools now: rebuilt only when the registry changed since the last read.
    fn catalog(&self) -> Arc<Catalog> {
        let generation = *self.changes.borrow();
        let mut cached = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        match cached.as_ref() {
            Some(c) if c.generation == generation => c.clone(),
            _ => {
                let fresh = Arc::new(Catalog::build(generation, &self.registry, &self.options));
                *cached = Some(fresh.clone());
                fresh
            }
        }
    }
}

/// The MCP server over the mesh: an [`rmcp::ServerHandler`] answering from the
/// registry (see the [module docs](self)). One value per MCP session; clones of a
/// server made by [`McpServer::new`] share its tool catalog.
#[derive(Clone)]
pub struct McpServer {
    shared: Arc<Shared>,
    /// Cancelled when the session's handler is dropped: ends its list-changed task.
    session: CancellationToken,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl McpServer {
    /// A server over `bus`, reading the process's shared registry watch
    /// ([`Bus::registry_watch`]).
    ///
    /// # Errors
    /// [`weft_bus::ErrorKind::Kv`] when the registry cannot be watched.
    pub async fn new(bus: &Bus, options: McpOptions) -> weft_bus::Result<McpServer> {
        let registry = bus.registry_watch().await?.clone();
        let changes = registry.changes();
        let token = CancellationToken::new();
        Ok(McpServer {
            shared: Arc::new(Shared {
                bus: bus.clone(),
                registry,
                changes,
                options,
                catalog: Mutex::new(None),
            }),
            _guard: Arc::new(token.clone().drop_guard()),
            session: token,
        })
    }

    /// A handler for a new session, sharing this server's catalog.
    pub fn session(&self) -> McpServer {
        let token = CancellationToken::new();
        McpServer {
            shared: self.shared.clone(),
            _guard: Arc::new(token.clone().drop_guard()),
            session: token,
        }
    }

    /// The tools as `tools/list` shows them now.
    pub fn tools(&self) -> Vec<McpTool> {
        self.shared.catalog().listed.clone()
    }

    /// Sends `notify` each time the tools change, until the session ends or the peer
    /// goes away. Changes that leave the tool list as it was (a flow worker
    /// registering, a heartbeat) send nothing.
    fn notify_changes<F, Fut>(&self, notify: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let shared = self.shared.clone();
        let session = self.session.clone();
        async move {
            let mut changes = shared.registry.changes();
            let mut last = shared.catalog().listed.clone();
            loop {
                tokio::select! {
                    () = session.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let now = shared.catalog().listed.clone();
                if now != last {
                    last = now;
                    if !notify().await {
                        return;
                    }
                }
            }
        }
    }

    /// The request envelope of a call to `tool`, with the HTTP headers' context.
    fn envelope(
        &self,
        tool: &Tool,
        arguments: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<Envelope, ErrorPayload> {
        let mut env = Envelope::request(tool.target.to_string(), tool.payload(arguments));
        if let Some(parts) = context.extensions.get::<axum::http::request::Parts>() {
            HttpContext::from_headers(&parts.headers)
                .map_err(|e| ErrorPayload::new(weft_bus::ErrorCode::InvalidRequest, e.to_string()))?
                .apply(&mut env);
        }
        env.from = Some(MCP_CHANNEL.to_owned());
        env.channel = Some(MCP_CHANNEL.to_owned());
        env.to_bytes()
            .map_err(|e| ErrorPayload::from(&weft_bus::Error::from(e)))?;
        Ok(env)
    }

    /// Invokes `tool` with `env`; a stream when the endpoint streams.
    async fn invoke(
        &self,
        tool: &Tool,
        env: Envelope,
        context: &RequestContext<RoleServer>,
    ) -> Outcome {
        let bus = &self.shared.bus;
        let timeout = self.shared.options.call_timeout;
        if !tool.streaming {
            return tokio::select! {
                reply = bus.request(&tool.target, env, timeout) => match reply {
                    Ok(reply) => Outcome::Reply(reply.payload.unwrap_or(Value::Null)),
                    Err(e) => Outcome::Failed(ErrorPayload::from(&e)),
                },
                () = context.ct.cancelled() => Outcome::Cancelled,
            };
        }
        let options = StreamOptions::default().timeout(timeout);
        let mut frames = match bus.invoke_stream(&tool.target, env, options).await {
            Ok(f) => f,
            Err(e) => return Outcome::Failed(ErrorPayload::from(&e)),
        };
        let progress = context.meta.get_progress_token();
        let mut deltas = 0u64;
        loop {
            let frame = tokio::select! {
                frame = frames.next() => frame,
                () = context.ct.cancelled() => {
                    frames.cancel().await;
                    return Outcome::Cancelled;
                }
            };
            let frame = match frame {
                None => {
                    return Outcome::Failed(ErrorPayload::new(
                        weft_bus::ErrorCode::TransportFailure,
                        "the stream ended without a terminal frame",
                    ));
                }
                Some(Err(e)) => return Outcome::Failed(ErrorPayload::from(&e)),
                Some(Ok(frame)) => frame,
            };
            match frame.frame_type() {
                FrameType::Delta => {
                    deltas += 1;
                    if let Some(token) = &progress {
                        let note = progress_of(token.clone(), frame.payload(), deltas);
                        // A client that went away ends the call through its
                        // cancellation; a failed notification alone does not.
                        let _ = context.peer.notify_progress(note).await;
                    }
                }
                FrameType::Final => return Outcome::Reply(frame.payload().clone()),
                FrameType::Error => {
                    return Outcome::Failed(frame.error().unwrap_or_else(|| {
                        ErrorPayload::new(weft_bus::ErrorCode::TransportFailure, "error frame")
                    }));
                }
                FrameType::Started | FrameType::Request => {}
            }
        }
    }
}

/// How a call ended.
enum Outcome {
    Reply(Value),
    Failed(ErrorPayload),
    Cancelled,
}

/// A `delta` frame as a progress notification (see the module docs).
fn progress_of(token: ProgressToken, delta: &Value, count: u64) -> ProgressNotificationParam {
    let mut note = ProgressNotificationParam::new(token, count as f64);
    match delta {
        Value::Object(o) if o.get("progress").is_some_and(Value::is_number) => {
            note.progress = o["progress"].as_f64().unwrap_or(count as f64);
            note.total = o.get("total").and_then(Value::as_f64);
            note.message = o.get("message").and_then(Value::as_str).map(str::to_owned);
        }
        Value::String(s) => note.message = Some(s.clone()),
        Value::Null => {}
        other => note.message = Some(other.to_string()),
    }
    note
}

/// A reply payload as a tool result (see the module docs).
fn success(tool: &Tool, payload: Value) -> CallToolResult {
    if tool
        .metadata
        .get(CONTENT_METADATA_KEY)
        .and_then(Value::as_str)
        == Some("blocks")
        && let Some(blocks) = content_blocks(&payload)
    {
        return CallToolResult::success(blocks);
    }
    match payload {
        Value::Object(_) => CallToolResult::structured(payload),
        Value::String(s) => CallToolResult::success(vec![ContentBlock::text(s)]),
        other => CallToolResult::success(vec![ContentBlock::text(other.to_string())]),
    }
}

/// The blocks of a `{"content": [...]}` payload (that one key, every element a valid
/// MCP content block).
fn content_blocks(payload: &Value) -> Option<Vec<ContentBlock>> {
    let o = payload.as_object().filter(|o| o.len() == 1)?;
    serde_json::from_value(o.get("content")?.clone()).ok()
}

/// A bus error as a tool result with `isError: true`.
fn failure(error: &ErrorPayload) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.to_value().to_string())])
}

/// `weft_mcp_requests_total{method, outcome}`.
fn count_request<T>(method: &str, result: &Result<T, McpError>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    crate::metrics::mcp()
        .requests
        .with_label_values(&[method, outcome])
        .inc();
}

/// `weft_mcp_tool_calls_total{outcome}`.
fn count_call(outcome: &str) {
    crate::metrics::mcp()
        .tool_calls
        .with_label_values(&[outcome])
        .inc();
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "The tools of a Weft mesh: each is an endpoint of a service or agent \
             (`<service>_<endpoint>`), invoked over NATS. Errors of the service come back \
             as results with isError and a JSON {code, message}.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        context.peer.set_peer_info(request.clone());
        let result = self.negotiate_initialize(&request);
        count_request("initialize", &result);
        result
    }

    async fn ping(&self, _context: RequestContext<RoleServer>) -> Result<(), McpError> {
        count_request::<()>("ping", &Ok(()));
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let result = Ok(ListToolsResult::with_all_items(self.tools()));
        count_request("tools/list", &result);
        result
    }

    fn get_tool(&self, name: &str) -> Option<McpTool> {
        self.shared
            .catalog()
            .listed
            .iter()
            .find(|t| t.name == name)
            .cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let result = self.call(request, context).await;
        count_request("tools/call", &result);
        result.map(CallToolResponse::from)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let peer: Peer<RoleServer> = context.peer;
        tokio::spawn(self.notify_changes(move || {
            let peer = peer.clone();
            async move { peer.notify_tool_list_changed().await.is_ok() }
        }));
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        (requested.tools_list_changed == Some(true))
            .then(|| SubscriptionFilter::builder().tools_list_changed().build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let context = Arc::new(context);
        let notifier = context.clone();
        tokio::select! {
            () = self.notify_changes(move || {
                let c = notifier.clone();
                async move { c.sink().notify_tool_list_changed().await.is_ok() }
            }) => {}
            () = context.cancelled() => {}
        }
        Ok(())
    }
}

impl McpServer {
    /// `tools/call`: find, validate, invoke, map (see the module docs).
    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let catalog = self.shared.catalog();
        let name: &str = &request.name;
        let Some(tool) = catalog.set.get(name) else {
            count_call("unknown_tool");
            let known: Vec<&str> = catalog
                .set
                .tools()
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool {name:?}; tools/list shows the {} tools",
                    known.len()
                ),
                Some(json!({ "tool": name })),
            ));
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        if let Err(e) = catalog.validate(tool, &arguments) {
            count_call("invalid_arguments");
            return Err(e);
        }
        let span = tracing::info_span!(
            "mcp",
            otel.name = %format_args!("tools/call {name}"),
            otel.kind = "server",
            mcp.method.name = "tools/call",
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %name,
            jsonrpc.request.id = %context.id,
            mcp.protocol.version = context.protocol_version().map(|v| tracing::field::display(v.to_string())),
        );
        self.set_parent(&span, &context);
        let outcome = async {
            match self.envelope(tool, arguments, &context) {
                Ok(env) => self.invoke(tool, env, &context).await,
                Err(e) => Outcome::Failed(e),
            }
        }
        .instrument(span.clone())
        .await;
        match outcome {
            Outcome::Reply(payload) => {
                count_call("ok");
                Ok(success(tool, payload))
            }
            Outcome::Failed(error) => {
                count_call("tool_error");
                weft_bus::trace::record_error(&span, &error);
                Ok(failure(&error))
            }
            Outcome::Cancelled => {
                count_call("cancelled");
                Err(McpError::new(
                    rmcp::model::ErrorCode::INTERNAL_ERROR,
                    Cow::Borrowed("the client cancelled the call"),
                    None,
                ))
            }
        }
    }

    /// The span's parent: `_meta.traceparent`, else the HTTP request's context.
    fn set_parent(&self, span: &tracing::Span, context: &RequestContext<RoleServer>) {
        if let Some(tp) = context.meta.get_traceparent() {
            let mut carrier = async_nats::HeaderMap::new();
            carrier.insert(weft_bus::trace::TRACEPARENT, tp);
            weft_bus::trace::set_parent(span, Some(&carrier), None);
        } else if let Some(cx) = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<opentelemetry::Context>())
        {
            let _ = span.set_parent(cx.clone());
        }
    }
}

/// The tower service to mount at `/mcp`: Streamable HTTP ([`rmcp`]), sessions kept
/// in this gateway's memory, request bodies up to `max_body_bytes`.
///
/// DNS-rebinding protection (MCP 2025-11-25, transports §Security): on a loopback
/// address only `Host: localhost`, `127.0.0.1` or `[::1]` (any port) is served and
/// an `Origin` header, when present, must be such a loopback origin; both are
/// answered 403 otherwise. On other addresses the gateway needs its bearer token
/// (DESIGN §8), which a rebinding page cannot send, and any host is served.
pub fn http_service(
    server: McpServer,
    loopback: bool,
    max_body_bytes: usize,
    shutdown: CancellationToken,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    McpServer,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(max_body_bytes);
    config = if loopback {
        config
            .with_allowed_hosts(["localhost", "127.0.0.1", "::1", "[::1]"])
            .with_allowed_origins([
                "http://localhost:*",
                "http://127.0.0.1:*",
                "http://[::1]:*",
                "https://localhost:*",
                "https://127.0.0.1:*",
                "https://[::1]:*",
            ])
    } else {
        config.disable_allowed_hosts()
    };
    StreamableHttpService::new(move || Ok(server.session()), Default::default(), config)
}

/// Middleware (for [`axum::middleware::from_fn_with_state`], state = the body limit in
/// bytes) in front of `/mcp`, answering bodies the SDK would refuse with a bare text
/// as JSON-RPC errors (JSON-RPC 2.0 §5.1) instead:
///
/// | body of a `POST` | answer |
/// |---|---|
/// | larger than the limit | 413, `{"jsonrpc": "2.0", "id": null, "error": {"code": -32600, …}}` |
/// | not JSON | 400, error -32700 (parse error, saying where) |
/// | JSON but no JSON-RPC 2.0 message (no `"jsonrpc": "2.0"`, no `method`/`result`/`error`) | 400, error -32600 (invalid request) |
/// | `tools/call` whose `params` lack a string `name` or have non-object `arguments` | 200, error -32602 (invalid params) with the request's `id` (the SDK would say -32601) |
///
/// Other requests, and well-formed bodies, go on unchanged.
pub async fn json_rpc_body(
    axum::extract::State(limit): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return json_rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                format!("request body is larger than the gateway's limit of {limit} bytes"),
            );
        }
    };
    let message: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return json_rpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                format!("parse error: the body is not JSON: {e}"),
            );
        }
    };
    if let Err(why) = json_rpc_shape(&message) {
        return json_rpc_error(
            StatusCode::BAD_REQUEST,
            -32600,
            format!("invalid request: {why}"),
        );
    }
    if message["method"] == "tools/call"
        && let Err(why) = tool_call_params(&message["params"])
    {
        use axum::response::IntoResponse as _;
        let body = json!({"jsonrpc": "2.0", "id": message["id"], "error": {
            "code": -32602, "message": format!("invalid params of tools/call: {why}")}});
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Why `message` is no JSON-RPC 2.0 message (or batch of them).
fn json_rpc_shape(message: &Value) -> Result<(), String> {
    match message {
        Value::Array(batch) if batch.is_empty() => Err("an empty batch".into()),
        Value::Array(batch) => batch.iter().try_for_each(json_rpc_shape),
        Value::Object(o) => {
            if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
                return Err("\"jsonrpc\" must be \"2.0\"".into());
            }
            match (
                o.get("method"),
                o.contains_key("result") || o.contains_key("error"),
            ) {
                (Some(Value::String(_)), _) | (None, true) => Ok(()),
                (Some(_), _) => Err("\"method\" must be a string".into()),
                (None, false) => Err("a message needs \"method\", \"result\" or \"error\"".into()),
            }
        }
        other => Err(format!("a message is a JSON object, not {other}")),
    }
}

/// Why `params` are not those of `tools/call` (`{name: string, arguments?: object}`).
fn tool_call_params(params: &Value) -> Result<(), &'static str> {
    if !params["name"].is_string() {
        return Err("\"name\" must be the tool's name, a string");
    }
    match params.get("arguments") {
        None | Some(Value::Object(_)) | Some(Value::Null) => Ok(()),
        Some(_) => Err("\"arguments\" must be an object"),
    }
}

/// An HTTP response carrying one JSON-RPC error with `id: null`.
fn json_rpc_error(
    status: axum::http::StatusCode,
    code: i64,
    message: String,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Serves `server` over stdin/stdout (`weft mcp`) until the client closes stdin or
/// `shutdown` completes. Nothing else may write to stdout meanwhile.
///
/// # Errors
/// The `initialize` handshake failed, or the transport broke.
pub async fn serve_stdio(
    server: McpServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let running = server.serve(rmcp::transport::stdio()).await?;
    let cancel = running.cancellation_token();
    tokio::select! {
        quit = running.waiting() => { quit?; }
        () = shutdown => { cancel.cancel(); }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use weft_bus::registry::{EndpointInfo, Registration};

    fn tool(metadata: Map<String, Value>) -> Tool {
        let mut r = Registration::new(Kind::Service, "s", "1.0.0");
        let e = EndpointInfo {
            name: "e".into(),
            subject: "weft.invoke.s.e".into(),
            description: String::new(),
            input_schema: None,
            output_schema: None,
            default: false,
            streaming: false,
            metadata,
        };
        r.endpoints.push(e.clone());
        Tool::from_endpoint(&r, &e).unwrap()
    }

    #[test]
    fn replies_map_to_results() {
        let plain = tool(Map::new());
        let r = success(&plain, json!({"a": 1}));
        assert_eq!(r.structured_content, Some(json!({"a": 1})));
        assert_eq!(
            serde_json::to_value(&r.content).unwrap()[0]["text"],
            r#"{"a":1}"#
        );
        let r = success(&plain, json!("hello"));
        assert_eq!(r.structured_content, None);
        assert_eq!(
            serde_json::to_value(&r.content).unwrap()[0]["text"],
            "hello"
        );
        let r = success(&plain, json!([1, 2]));
        assert_eq!(
            serde_json::to_value(&r.content).unwrap()[0]["text"],
            "[1,2]"
        );
        // Content blocks only from endpoints that say so.
        let image =
            json!({"content": [{"type": "image", "data": "aGk=", "mimeType": "image/png"}]});
        let r = success(&plain, image.clone());
        assert_eq!(r.structured_content, Some(image.clone()));
        let mut m = Map::new();
        m.insert(CONTENT_METADATA_KEY.into(), json!("blocks"));
        let blocks = tool(m);
        let r = success(&blocks, image);
        assert_eq!(r.structured_content, None);
        assert_eq!(
            serde_json::to_value(&r.content).unwrap()[0]["type"],
            "image"
        );
        // Not blocks after all: a plain result.
        let r = success(&blocks, json!({"content": "text", "more": 1}));
        assert!(r.structured_content.is_some());
        let e = failure(&ErrorPayload::new(weft_bus::ErrorCode::NoHandler, "gone"));
        assert_eq!(e.is_error, Some(true));
        let text = serde_json::to_value(&e.content).unwrap()[0]["text"].clone();
        let body: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
        assert_eq!(
            (body["code"].as_str(), body["message"].as_str()),
            (Some("NO_HANDLER"), Some("gone"))
        );
    }

    #[test]
    fn deltas_map_to_progress() {
        let token = ProgressToken(rmcp::model::NumberOrString::Number(1));
        let p = progress_of(
            token.clone(),
            &json!({"progress": 50, "total": 100, "message": "half"}),
            2,
        );
        assert_eq!(
            (p.progress, p.total, p.message.as_deref()),
            (50.0, Some(100.0), Some("half"))
        );
        let p = progress_of(token.clone(), &json!("word"), 3);
        assert_eq!(
            (p.progress, p.total, p.message.as_deref()),
            (3.0, None, Some("word"))
        );
        let p = progress_of(token, &json!({"n": 1}), 4);
        assert_eq!(
            (p.progress, p.message.as_deref()),
            (4.0, Some(r#"{"n":1}"#))
        );
    }

    #[test]
    fn json_rpc_bodies_are_checked() {
        assert!(json_rpc_shape(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).is_ok());
        assert!(
            json_rpc_shape(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .is_ok()
        );
        assert!(json_rpc_shape(&json!({"jsonrpc": "2.0", "id": 1, "result": {}})).is_ok());
        for bad in [
            json!({"id": 1, "method": "ping"}),
            json!({"jsonrpc": "1.0", "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!([]),
            json!("ping"),
        ] {
            assert!(json_rpc_shape(&bad).is_err(), "{bad} accepted");
        }
        assert!(tool_call_params(&json!({"name": "t", "arguments": {}})).is_ok());
        assert!(tool_call_params(&json!({"name": "t"})).is_ok());
        assert!(tool_call_params(&json!({"arguments": {}})).is_err());
        assert!(tool_call_params(&json!({"name": "t", "arguments": [1]})).is_err());
        assert!(tool_call_params(&Value::Null).is_err());
    }
}
