//! The A2A request handler of one agent ([`AgentHandler`]) and the HTTP handlers of
//! `/a2a` (DESIGN §11, §14).
//!
//! [`AgentHandler`] wraps the crate's `DefaultRequestHandler` (task lifecycle,
//! `historyLength`, `returnImmediately`, cancel semantics) over the KV task store and
//! the [`ChatExecutor`](super::executor::ChatExecutor), and changes three things:
//!
//! - `SendMessage` and `SendStreamingMessage` refuse a message without a text or data
//!   part with -32602 before a task exists;
//! - `SubscribeToTask` re-attaches through the task's subject, so it works from any
//!   gateway instance, not only the one running the task ([`Tasks::follow`]);
//! - push notifications are not offered: the card says `pushNotifications: false` and
//!   the push-config methods answer -32003.
//!
//! The JSON-RPC endpoint `POST /a2a/{agent}` routes on the method name: the 1.0 names
//! (`SendMessage`, …) go to the crate's JSON-RPC binding, which also checks the
//! `A2A-Version` header (absent or `0.3` with a 1.0 name: -32009); the 0.3 names
//! (`message/send`, …) go to [`compat`](super::compat::dispatch) whatever the header says; any
//! other method is -32601. Bad JSON is -32700 and a body that is not a JSON-RPC request
//! -32600, with HTTP 200 as JSON-RPC over HTTP wants.

use a2a::{A2AError, JsonRpcId, StreamResponse, Task};
use a2a_server::{DefaultRequestHandler, RequestHandler, ServiceParams};
use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::card;
use super::compat;
use super::executor::message_text;
use super::store::Tasks;
use crate::AppState;
use crate::error::ApiError;

/// One agent's A2A handler (see the [module docs](self)).
pub struct AgentHandler {
    inner: DefaultRequestHandler,
    tasks: Tasks,
    agent: String,
}

impl AgentHandler {
    /// The handler of `agent` over `inner`, re-attaching through `tasks`.
    pub fn new(inner: DefaultRequestHandler, tasks: Tasks, agent: &str) -> Self {
        AgentHandler {
            inner,
            tasks,
            agent: agent.to_owned(),
        }
    }
}

fn check_message(message: &a2a::Message) -> Result<(), A2AError> {
    if message_text(message).is_none() {
        return Err(A2AError::invalid_params(
            "the message needs a text or data part: the agent reads text (data parts as JSON)",
        ));
    }
    Ok(())
}

#[async_trait]
impl RequestHandler for AgentHandler {
    async fn send_message(
        &self,
        params: &ServiceParams,
        req: a2a::SendMessageRequest,
    ) -> Result<a2a::SendMessageResponse, A2AError> {
        check_message(&req.message)?;
        self.inner.send_message(params, req).await
    }

    async fn send_streaming_message(
        &self,
        params: &ServiceParams,
        req: a2a::SendMessageRequest,
    ) -> Result<BoxStream<'static, Result<StreamResponse, A2AError>>, A2AError> {
        check_message(&req.message)?;
        self.inner.send_streaming_message(params, req).await
    }

    async fn get_task(
        &self,
        params: &ServiceParams,
        req: a2a::GetTaskRequest,
    ) -> Result<Task, A2AError> {
        self.inner.get_task(params, req).await
    }

    async fn list_tasks(
        &self,
        params: &ServiceParams,
        req: a2a::ListTasksRequest,
    ) -> Result<a2a::ListTasksResponse, A2AError> {
        self.inner.list_tasks(params, req).await
    }

    async fn cancel_task(
        &self,
        params: &ServiceParams,
        req: a2a::CancelTaskRequest,
    ) -> Result<Task, A2AError> {
        self.inner.cancel_task(params, req).await
    }

    async fn subscribe_to_task(
        &self,
        _params: &ServiceParams,
        req: a2a::SubscribeToTaskRequest,
    ) -> Result<BoxStream<'static, Result<StreamResponse, A2AError>>, A2AError> {
        self.tasks.follow(&self.agent, &req.id).await
    }

    async fn create_push_config(
        &self,
        params: &ServiceParams,
        req: a2a::TaskPushNotificationConfig,
    ) -> Result<a2a::TaskPushNotificationConfig, A2AError> {
        self.inner.create_push_config(params, req).await
    }

    async fn get_push_config(
        &self,
        params: &ServiceParams,
        req: a2a::GetTaskPushNotificationConfigRequest,
    ) -> Result<a2a::TaskPushNotificationConfig, A2AError> {
        self.inner.get_push_config(params, req).await
    }

    async fn list_push_configs(
        &self,
        params: &ServiceParams,
        req: a2a::ListTaskPushNotificationConfigsRequest,
    ) -> Result<a2a::ListTaskPushNotificationConfigsResponse, A2AError> {
        self.inner.list_push_configs(params, req).await
    }

    async fn delete_push_config(
        &self,
        params: &ServiceParams,
        req: a2a::DeleteTaskPushNotificationConfigRequest,
    ) -> Result<(), A2AError> {
        self.inner.delete_push_config(params, req).await
    }

    async fn get_extended_agent_card(
        &self,
        params: &ServiceParams,
        req: a2a::GetExtendedAgentCardRequest,
    ) -> Result<a2a::AgentCard, A2AError> {
        self.inner.get_extended_agent_card(params, req).await
    }
}

/// The headers as the crate's handlers see them: lowercase names, each value.
fn service_params(headers: &HeaderMap) -> ServiceParams {
    let mut params = ServiceParams::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            params
                .entry(name.as_str().to_owned())
                .or_default()
                .push(v.to_owned());
        }
    }
    params
}

/// The base URL cards name: the scheme this gateway serves and the `Host` the client
/// used (its listen address without one).
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let scheme = if state.config().tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| state.config().addr.to_string());
    format!("{scheme}://{host}")
}

fn a2a_server(state: &AppState) -> Result<&super::A2aServer, ApiError> {
    state
        .a2a()
        .ok_or_else(|| ApiError::NotReady("A2A is not served: the gateway started without the mesh's registry and task buckets (run `weft up`)".into()))
}

fn card_response(json: Value, headers: &HeaderMap) -> Response {
    let tag = card::etag(&json);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        axum::Json(json).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// `GET /a2a/{agent}/.well-known/agent-card.json`: the agent's card (public, no token).
///
/// # Errors
/// 404 `NOT_FOUND` for an agent that is not registered; 503 without the registry.
pub async fn agent_card(
    State(state): State<AppState>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let server = a2a_server(&state)?;
    let json = server.card(&agent, &base_url(&state, &headers)).await?;
    Ok(card_response(json, &headers))
}

/// `GET /.well-known/agent-card.json`: the default agent's card (`--a2a-default`, or
/// the only registered agent).
///
/// # Errors
/// 404 `NOT_FOUND` when there is no default agent (none, or several and no
/// `--a2a-default`), naming `/a2a`.
pub async fn default_card(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let server = a2a_server(&state)?;
    let agent = server.default_agent().await?;
    let json = server.card(&agent, &base_url(&state, &headers)).await?;
    Ok(card_response(json, &headers))
}

/// `GET /a2a`: the directory, `{"agents": [{name, description, version, url,
/// card_url}]}`, sorted by name.
///
/// # Errors
/// 503 without the registry.
pub async fn directory(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let server = a2a_server(&state)?;
    let base = base_url(&state, &headers);
    let agents: Vec<Value> = server
        .agents()
        .await?
        .into_iter()
        .map(|r| {
            let url = card::agent_url(&base, &r.name);
            json!({
                "name": r.name,
                "description": r.description,
                "version": r.version,
                "url": url,
                "card_url": format!("{url}/.well-known/agent-card.json"),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "agents": agents })).into_response())
}

fn jsonrpc_error(id: JsonRpcId, error: A2AError) -> Response {
    axum::Json(a2a::JsonRpcResponse::error(id, error.to_jsonrpc_error())).into_response()
}

/// The request's `id`, as JSON-RPC reads it (`null` when absent or of another type).
fn request_id(body: &Value) -> JsonRpcId {
    match body.get("id") {
        Some(Value::String(s)) => JsonRpcId::String(s.clone()),
        Some(Value::Number(n)) if n.is_i64() => JsonRpcId::Number(n.as_i64().unwrap_or_default()),
        _ => JsonRpcId::Null,
    }
}

/// `POST /a2a/{agent}`: the JSON-RPC endpoint, 1.0 and 0.3 (see the
/// [module docs](self)).
///
/// # Errors
/// 404 for an agent that is not registered, 413 over the body limit; everything else
/// is a JSON-RPC error with HTTP 200.
pub async fn jsonrpc(
    State(state): State<AppState>,
    Path(agent): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let server = a2a_server(&state)?;
    let endpoint = server.endpoint(&agent).await?;
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, state.config().max_body_bytes).await?;
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    if let Some(value) = &parsed
        && let Some(method) = value.get("method").and_then(Value::as_str)
    {
        if compat::is_compat(method) {
            let params = service_params(&parts.headers);
            let id = request_id(value);
            return Ok(compat::dispatch(
                endpoint.handler.as_ref(),
                &params,
                id,
                method,
                value.clone(),
            )
            .await);
        }
        if !a2a::methods::is_valid(method)
            && value.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
        {
            return Ok(jsonrpc_error(
                request_id(value),
                A2AError::method_not_found(method),
            ));
        }
    }
    // Bad JSON, a malformed request or a 1.0 method: the crate's binding answers.
    Ok(forward(
        endpoint.jsonrpc.clone(),
        parts,
        "/".to_owned(),
        Body::from(bytes),
    )
    .await)
}

/// `/a2a/{agent}/{*rest}`: the HTTP+JSON binding (`POST message:send`, `GET
/// tasks/{id}`, …), answered by the crate's REST router.
///
/// # Errors
/// 404 for an agent that is not registered, 413 over the body limit.
pub async fn rest(
    State(state): State<AppState>,
    Path((agent, rest)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let server = a2a_server(&state)?;
    let endpoint = server.endpoint(&agent).await?;
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, state.config().max_body_bytes).await?;
    let mut path = format!("/{rest}");
    if let Some(q) = parts.uri.query() {
        path = format!("{path}?{q}");
    }
    Ok(forward(endpoint.rest.clone(), parts, path, Body::from(bytes)).await)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!(
            "request body is larger than the gateway's limit of {limit} bytes (or could not be read)"
        ))
    })
}

/// Sends a fresh request (method, headers, `path`, `body`; none of the outer router's
/// extensions) to `router`.
async fn forward(
    router: axum::Router,
    parts: axum::http::request::Parts,
    path: String,
    body: Body,
) -> Response {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.headers_mut() = parts.headers;
    match path.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return ApiError::InvalidRequest(format!("bad path {path:?}")).into_response(),
    }
    match router.oneshot(request).await {
        Ok(r) => r.into_response(),
        Err(never) => match never {},
    }
}
