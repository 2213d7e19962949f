//! Outbound A2A (DESIGN §14): remote A2A agents reached from the mesh, on the official
//! `a2a-client-lf` client.
//!
//! - [`A2aClient::send`]: one message to the agent at a URL; resolves its card
//!   (`{url}/.well-known/agent-card.json`), sends the message (streaming when the card
//!   says it can, else blocking), follows a task that is not finished yet (polling
//!   `GetTask` every [`POLL_INTERVAL`]) to its end, all within a deadline.
//! - The bus service `a2a` ([`serve`]), endpoint `send`: `{"url", "message",
//!   "context_id"?}` → `{"reply", "task_id", "context_id", "state"}`; a streaming caller
//!   also gets the reply's text as it comes, as `delta` frames `{"type": "text",
//!   "text"}` (the shape of an agent's `chat`). Flows (`a2a` steps) and agents
//!   (`delegate` to a URL) use it.
//! - Remote agents ([`RemoteAgents`], KV bucket `<prefix>_a2a_agents`, written by `weft
//!   a2a add`): the bridge serves each as an agent of the mesh (kind `agent`, endpoint
//!   `chat`, metadata `a2a_url`), so routers, `delegate` and MCP reach it like a local
//!   agent; the chat's `session_id` is the A2A `contextId`.
//!
//! # Errors
//!
//! | what happened | code | retryable |
//! |---|---|---|
//! | the URL is not `http(s)://`, the message is empty | `INVALID_REQUEST` | no |
//! | the card or the endpoint answered 401 / 403 | `AUTH_FAILURE` | no |
//! | no card at the URL (404), a card that is not A2A 1.0 | `NO_HANDLER` | no |
//! | connection refused, reset, 5xx | `TRANSPORT_FAILURE` | yes |
//! | the deadline passed | `AGENT_TIMEOUT` | yes |
//! | JSON-RPC -32602 / -32600 / -32700 | `INVALID_REQUEST` | no |
//! | the task ended `failed`, `rejected` or `canceled` | `AGENT_UNAVAILABLE` with the agent's status text | no |
//! | other A2A errors | `AGENT_UNAVAILABLE` with the A2A code and message | no |
//!
//! A task that stops in `TASK_STATE_INPUT_REQUIRED` or `AUTH_REQUIRED` is a success
//! with that `state`: the caller continues with the same `context_id`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use a2a::{A2AError, AgentCard, Message, Part, PartContent, Role, StreamResponse, Task, TaskState};
use a2a_client::A2AClientFactory;
use a2a_client::jsonrpc::JsonRpcTransportFactory;
use a2a_client::rest::RestTransportFactory;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weft_bus::registry::Kind;
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::stream::StreamWriter;
use weft_bus::{Bus, ErrorCode, ErrorPayload};

/// The bridge's service name.
pub const SERVICE: &str = "a2a";

/// How often a task that is not finished is polled: 500 ms.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Default deadline of one send (card, message, following the task): 5 min.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(300);

/// Default connect timeout: 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default longest silence on a connection (a read): 60 s.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a resolved card is reused: 60 s.
pub const CARD_TTL: Duration = Duration::from_secs(60);

/// The input of `a2a.send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The agent's base URL (its card is at `{url}/.well-known/agent-card.json`; the
    /// card's own URL works too).
    pub url: String,
    /// The text to send.
    pub message: String,
    /// The A2A context to continue (the previous reply's `context_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
}

/// The output of `a2a.send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendReply {
    /// The agent's answer: the text of its artifacts, else of its last status message.
    pub reply: String,
    /// The remote task id (empty when the agent answered with a message, no task).
    pub task_id: String,
    /// The context id, to continue the conversation.
    pub context_id: String,
    /// The task's last state, in 0.3 spelling: `completed`, `input-required`, …
    pub state: String,
}

/// A client for remote A2A agents (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct A2aClient {
    http: reqwest::Client,
    factory: Arc<A2AClientFactory>,
    timeout: Duration,
    cards: Arc<Mutex<HashMap<String, (AgentCard, Instant)>>>,
}

impl std::fmt::Debug for A2aClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("A2aClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Maps an A2A error onto the mesh's error codes ([module docs](self)).
pub fn error_of(e: &A2AError) -> ErrorPayload {
    use a2a::error_code as c;
    let text = e.message.clone();
    match e.code {
        c::INVALID_PARAMS | c::INVALID_REQUEST | c::PARSE_ERROR => ErrorPayload::new(
            ErrorCode::InvalidRequest,
            format!("the remote agent refused the request: {text}"),
        ),
        c::INTERNAL_ERROR
            if text.contains("HTTP request failed") || text.contains("error sending request") =>
        {
            ErrorPayload::new(
                ErrorCode::TransportFailure,
                format!("cannot reach the remote agent: {text}"),
            )
            .retryable()
        }
        c::INTERNAL_ERROR if text.contains("401") || text.contains("403") => ErrorPayload::new(
            ErrorCode::AuthFailure,
            format!("the remote agent refused the credentials: {text}"),
        ),
        code => ErrorPayload::new(
            ErrorCode::AgentUnavailable,
            format!("the remote agent answered A2A error {code}: {text}"),
        ),
    }
}

/// The text of `parts` (text parts, data parts as JSON), joined.
fn text_of(parts: &[Part]) -> String {
    parts
        .iter()
        .filter_map(|p| match &p.content {
            PartContent::Text(t) => Some(t.clone()),
            PartContent::Data(v) => Some(v.to_string()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("")
}

/// 0.3 spelling of a state.
fn state_name(state: &TaskState) -> &'static str {
    match state {
        TaskState::Submitted => "submitted",
        TaskState::Working => "working",
        TaskState::Completed => "completed",
        TaskState::Failed => "failed",
        TaskState::Canceled => "canceled",
        TaskState::InputRequired => "input-required",
        TaskState::Rejected => "rejected",
        TaskState::AuthRequired => "auth-required",
        TaskState::Unspecified => "unknown",
    }
}

fn settled(state: &TaskState) -> bool {
    state.is_terminal() || matches!(state, TaskState::InputRequired | TaskState::AuthRequired)
}

/// The reply of a finished `task`.
fn reply_of(task: &Task) -> Result<SendReply, ErrorPayload> {
    let artifacts = task
        .artifacts
        .iter()
        .flatten()
        .map(|a| text_of(&a.parts))
        .collect::<Vec<_>>()
        .join("\n");
    let status = task
        .status
        .message
        .as_ref()
        .map(|m| text_of(&m.parts))
        .unwrap_or_default();
    let state = &task.status.state;
    if matches!(
        state,
        TaskState::Failed | TaskState::Rejected | TaskState::Canceled
    ) {
        let why = if status.is_empty() {
            "no reason given".to_owned()
        } else {
            status
        };
        return Err(ErrorPayload::new(
            ErrorCode::AgentUnavailable,
            format!(
                "the remote task {} ended {}: {why}",
                task.id,
                state_name(state)
            ),
        ));
    }
    Ok(SendReply {
        reply: if artifacts.is_empty() {
            status
        } else {
            artifacts
        },
        task_id: task.id.clone(),
        context_id: task.context_id.clone(),
        state: state_name(state).to_owned(),
    })
}

/// The base URL of an agent given its base or its card URL.
fn base_of(url: &str) -> &str {
    url.trim_end_matches('/')
        .trim_end_matches("/.well-known/agent-card.json")
        .trim_end_matches("/.well-known/agent.json")
}

/// The HTTP client of A2A calls: connect timeout [`CONNECT_TIMEOUT`], read timeout
/// [`READ_TIMEOUT`], HTTPS with the process's rustls provider (the CLI installs ring).
///
/// # Errors
/// `TRANSPORT_FAILURE` when it cannot be built (no TLS provider installed).
pub fn http_client() -> Result<reqwest::Client, ErrorPayload> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| {
            ErrorPayload::new(
                ErrorCode::TransportFailure,
                format!("cannot build the HTTP client: {e}"),
            )
        })
}

impl A2aClient {
    /// A client whose sends each take at most `timeout` (connect 5 s, read 60 s).
    ///
    /// # Errors
    /// `TRANSPORT_FAILURE` when the HTTP client cannot be built (no TLS provider).
    pub fn new(timeout: Duration) -> Result<A2aClient, ErrorPayload> {
        let http = http_client()?;
        let factory = A2AClientFactory::builder()
            .no_defaults()
            .register(Arc::new(JsonRpcTransportFactory::new(Some(http.clone()))))
            .register(Arc::new(RestTransportFactory::new(Some(http.clone()))))
            .build();
        Ok(A2aClient {
            http,
            factory: Arc::new(factory),
            timeout,
            cards: Arc::default(),
        })
    }

    /// The card of the agent at `url` (cached for [`CARD_TTL`]).
    ///
    /// # Errors
    /// As the [module docs](self) list for cards.
    pub async fn card(&self, url: &str) -> Result<AgentCard, ErrorPayload> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ErrorPayload::invalid_request(format!(
                "an A2A agent URL is http(s)://…, not {url:?}"
            )));
        }
        let base = base_of(url);
        if let Some((card, at)) = self.cards.lock().ok().and_then(|c| c.get(base).cloned())
            && at.elapsed() < CARD_TTL
        {
            return Ok(card);
        }
        let card_url = format!("{base}/.well-known/agent-card.json");
        let response = self.http.get(&card_url).send().await.map_err(|e| {
            ErrorPayload::new(
                ErrorCode::TransportFailure,
                format!("cannot fetch the agent card {card_url}: {e}"),
            )
            .retryable()
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(ErrorPayload::new(
                ErrorCode::AuthFailure,
                format!("{card_url} answered {status}"),
            ));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(ErrorPayload::new(
                ErrorCode::NoHandler,
                format!("no agent card at {card_url} (404)"),
            ));
        }
        if !status.is_success() {
            let e = ErrorPayload::new(
                ErrorCode::TransportFailure,
                format!("{card_url} answered {status}"),
            );
            return Err(if status.is_server_error() {
                e.retryable()
            } else {
                e
            });
        }
        let card: AgentCard = response.json().await.map_err(|e| {
            ErrorPayload::new(
                ErrorCode::NoHandler,
                format!(
                    "{card_url} is not an A2A 1.0 Agent Card (supportedInterfaces missing?): {e}"
                ),
            )
        })?;
        if let Ok(mut c) = self.cards.lock() {
            c.insert(base.to_owned(), (card.clone(), Instant::now()));
        }
        Ok(card)
    }

    /// Sends `request` and follows its task to the end (see the
    /// [module docs](self)); `on_text` gets the reply's text as it streams.
    ///
    /// # Errors
    /// As the [module docs](self) list.
    pub async fn send(
        &self,
        request: &SendRequest,
        on_text: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<SendReply, ErrorPayload> {
        if request.message.trim().is_empty() {
            return Err(ErrorPayload::invalid_request("the message is empty"));
        }
        let deadline = self.timeout;
        match tokio::time::timeout(deadline, self.send_inner(request, on_text)).await {
            Ok(r) => r,
            Err(_) => Err(ErrorPayload::new(
                ErrorCode::AgentTimeout,
                format!(
                    "the remote agent at {} did not finish within {} ms",
                    request.url,
                    deadline.as_millis()
                ),
            )
            .retryable()),
        }
    }

    async fn send_inner(
        &self,
        request: &SendRequest,
        on_text: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<SendReply, ErrorPayload> {
        let card = self.card(&request.url).await?;
        let client = self
            .factory
            .create_from_card(&card)
            .await
            .map_err(|e| error_of(&e))?;
        let send = text_request(&request.message, request.context_id.clone());
        let mut task: Option<Task> = None;
        if card.capabilities.streaming == Some(true) {
            let mut events = client
                .send_streaming_message(&send)
                .await
                .map_err(|e| error_of(&e))?;
            while let Some(event) = events.next().await {
                match event.map_err(|e| error_of(&e))? {
                    StreamResponse::Message(m) => return Ok(message_reply(&m, request)),
                    StreamResponse::Task(t) => task = Some(t),
                    StreamResponse::StatusUpdate(u) => {
                        let t = task.get_or_insert_with(|| empty_task(&u.task_id, &u.context_id));
                        t.status = u.status;
                    }
                    StreamResponse::ArtifactUpdate(u) => {
                        let t = task.get_or_insert_with(|| empty_task(&u.task_id, &u.context_id));
                        let artifacts = t.artifacts.get_or_insert_with(Vec::new);
                        let known = artifacts
                            .iter_mut()
                            .find(|a| a.artifact_id == u.artifact.artifact_id);
                        // New text streams; a replacement of text already shown (a
                        // final whole-text artifact) does not show again.
                        match known {
                            Some(a) if u.append == Some(true) => {
                                on_text(&text_of(&u.artifact.parts));
                                a.parts.extend(u.artifact.parts);
                            }
                            Some(a) => *a = u.artifact,
                            None => {
                                on_text(&text_of(&u.artifact.parts));
                                artifacts.push(u.artifact);
                            }
                        }
                    }
                }
                if task.as_ref().is_some_and(|t| settled(&t.status.state)) {
                    break;
                }
            }
        } else {
            match client.send_message(&send).await.map_err(|e| error_of(&e))? {
                a2a::SendMessageResponse::Message(m) => return Ok(message_reply(&m, request)),
                a2a::SendMessageResponse::Task(t) => task = Some(t),
            }
        }
        let mut task = task.ok_or_else(|| {
            ErrorPayload::new(
                ErrorCode::CodecFailure,
                "the remote agent's stream ended without a task",
            )
        })?;
        // Not finished (a stream that ended early, a non-blocking server): poll.
        while !settled(&task.status.state) {
            tokio::time::sleep(POLL_INTERVAL).await;
            let get = a2a::GetTaskRequest {
                id: task.id.clone(),
                history_length: Some(0),
                tenant: None,
            };
            task = client.get_task(&get).await.map_err(|e| error_of(&e))?;
        }
        if card.capabilities.streaming != Some(true) {
            on_text(&reply_of(&task).map(|r| r.reply).unwrap_or_default());
        }
        reply_of(&task)
    }
}

/// A blocking `SendMessage` of `text` in context `context_id` (a new one when `None`),
/// asking for no history back.
pub fn text_request(text: &str, context_id: Option<String>) -> a2a::SendMessageRequest {
    let mut message = Message::new(Role::User, vec![Part::text(text)]);
    message.context_id = context_id;
    a2a::SendMessageRequest {
        message,
        configuration: Some(a2a::SendMessageConfiguration {
            accepted_output_modes: None,
            task_push_notification_config: None,
            history_length: Some(0),
            return_immediately: Some(false),
        }),
        metadata: None,
        tenant: None,
    }
}

fn empty_task(id: &str, context: &str) -> Task {
    Task {
        id: id.to_owned(),
        context_id: context.to_owned(),
        status: a2a::TaskStatus {
            state: TaskState::Working,
            message: None,
            timestamp: None,
        },
        artifacts: None,
        history: None,
        metadata: None,
    }
}

fn message_reply(m: &Message, request: &SendRequest) -> SendReply {
    SendReply {
        reply: text_of(&m.parts),
        task_id: m.task_id.clone().unwrap_or_default(),
        context_id: m
            .context_id
            .clone()
            .or_else(|| request.context_id.clone())
            .unwrap_or_default(),
        state: "completed".into(),
    }
}

/// Runs `send` for a bus request, streaming text deltas to a streaming caller.
async fn send_for(
    client: &A2aClient,
    request: SendRequest,
    writer: &StreamWriter,
) -> Result<SendReply, ErrorPayload> {
    if !writer.is_streaming() {
        return client.send(&request, &|_| {}).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let on_text = move |t: &str| {
        let _ = tx.send(t.to_owned());
    };
    let send = client.send(&request, &on_text);
    let forward = async {
        while let Some(text) = rx.recv().await {
            if writer
                .delta(json!({"type": "text", "text": text}))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    tokio::select! {
        r = send => r,
        () = async { forward.await; std::future::pending::<()>().await } => unreachable!(),
        () = writer.cancelled() => Err(ErrorPayload::new(ErrorCode::AgentUnavailable, "cancelled by the caller")),
    }
}

/// A remote agent added with `weft a2a add`: the value of key `<name>` in
/// `<prefix>_a2a_agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteAgent {
    /// Its name in the mesh (one token).
    pub name: String,
    /// Its A2A base URL.
    pub url: String,
    /// From its card.
    #[serde(default)]
    pub description: String,
    /// From its card.
    #[serde(default)]
    pub version: String,
}

/// The remote agents of the mesh (KV bucket `<prefix>_a2a_agents`).
#[derive(Debug, Clone)]
pub struct RemoteAgents {
    kv: async_nats::jetstream::kv::Store,
}

impl RemoteAgents {
    /// Opens the bucket.
    ///
    /// # Errors
    /// [`weft_bus::ErrorKind::Kv`] when it does not exist (`weft up` creates it).
    pub async fn open(bus: &Bus) -> weft_bus::Result<RemoteAgents> {
        Ok(RemoteAgents {
            kv: bus.kv(&bus.names().a2a_agents_bucket).await?,
        })
    }

    /// Adds or replaces `agent`.
    ///
    /// # Errors
    /// [`weft_bus::ErrorKind::Kv`] when the bucket cannot be written.
    pub async fn put(&self, agent: &RemoteAgent) -> weft_bus::Result<()> {
        let bytes = serde_json::to_vec(agent).unwrap_or_default();
        self.kv
            .put(&agent.name, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| {
                weft_bus::Error::new(
                    weft_bus::ErrorKind::Kv,
                    format!("cannot store remote agent {}: {e}", agent.name),
                )
            })
    }

    /// Removes `name`; whether it was there.
    ///
    /// # Errors
    /// [`weft_bus::ErrorKind::Kv`] when the bucket cannot be read or written.
    pub async fn remove(&self, name: &str) -> weft_bus::Result<bool> {
        let kv_error = |e: &dyn std::fmt::Display| {
            weft_bus::Error::new(
                weft_bus::ErrorKind::Kv,
                format!("cannot remove remote agent {name}: {e}"),
            )
        };
        let there = self.kv.get(name).await.map_err(|e| kv_error(&e))?.is_some();
        if there {
            self.kv.delete(name).await.map_err(|e| kv_error(&e))?;
        }
        Ok(there)
    }

    /// Every remote agent, by name.
    ///
    /// # Errors
    /// [`weft_bus::ErrorKind::Kv`] when the bucket cannot be read.
    pub async fn list(&self) -> weft_bus::Result<Vec<RemoteAgent>> {
        Ok(weft_bus::kv::read_all(&self.kv, "")
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }
}

/// The running bridge: the `a2a` service and one agent service per remote agent.
pub struct BridgeHandle {
    service: ServiceHandle,
    stop: tokio_util::sync::CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
}

impl BridgeHandle {
    /// Stops the services (in-flight sends finish) and deregisters them.
    ///
    /// # Errors
    /// As [`ServiceHandle::stop`].
    pub async fn stop(self) -> weft_bus::Result<()> {
        self.stop.cancel();
        let _ = self.watcher.await;
        self.service.stop().await
    }
}

/// The endpoint `send` over `client`.
fn send_endpoint(client: A2aClient) -> Endpoint {
    Endpoint::streaming("send", move |req: Request, writer: StreamWriter| {
        let client = client.clone();
        async move {
            let request: SendRequest = req.parse()?;
            let reply = send_for(&client, request, &writer).await?;
            Ok(serde_json::to_value(reply).unwrap_or(Value::Null))
        }
    })
    .description("Send a message to a remote A2A agent and wait for its reply (DESIGN §14)")
    .input_schema(json!({
        "type": "object",
        "required": ["url", "message"],
        "additionalProperties": false,
        "properties": {
            "url": {"type": "string", "description": "the agent's base URL (http(s)://…)"},
            "message": {"type": "string", "minLength": 1},
            "context_id": {"type": "string", "description": "the context of an earlier reply, to continue it"}
        }
    }))
    .output_schema(json!({
        "type": "object",
        "required": ["reply", "task_id", "context_id", "state"],
        "properties": {
            "reply": {"type": "string"}, "task_id": {"type": "string"},
            "context_id": {"type": "string"}, "state": {"type": "string"}
        }
    }))
    .timeout(DEFAULT_SEND_TIMEOUT)
}

/// The agent service of one remote agent: `chat` forwards to its URL.
async fn serve_remote(
    bus: &Bus,
    client: A2aClient,
    agent: &RemoteAgent,
) -> weft_bus::Result<ServiceHandle> {
    let url = agent.url.clone();
    let name = agent.name.clone();
    let chat = Endpoint::streaming("chat", move |req: Request, writer: StreamWriter| {
        let (client, url, name) = (client.clone(), url.clone(), name.clone());
        async move {
            let p = req.payload();
            let message = p
                .get("message")
                .or_else(|| p.get("text"))
                .and_then(Value::as_str)
                .or_else(|| p.as_str())
                .ok_or_else(|| {
                    ErrorPayload::invalid_request(
                        "chat takes {\"message\": \"…\", \"session_id\"?}",
                    )
                })?
                .to_owned();
            let context_id = p
                .get("session_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| req.envelope.session_id.clone());
            let reply = send_for(
                &client,
                SendRequest {
                    url,
                    message,
                    context_id,
                },
                &writer,
            )
            .await?;
            Ok(json!({
                "reply": reply.reply, "agent": name, "tool_calls": [], "run_id": reply.task_id,
                "context_id": reply.context_id, "state": reply.state,
            }))
        }
    })
    .description(format!("Chat with the remote A2A agent at {}", agent.url))
    .timeout(DEFAULT_SEND_TIMEOUT);
    let version = if agent.version.is_empty() {
        "0.0.0"
    } else {
        &agent.version
    };
    Service::new(agent.name.clone(), version)
        .kind(Kind::Agent)
        .description(if agent.description.is_empty() {
            format!("Remote A2A agent at {}", agent.url)
        } else {
            agent.description.clone()
        })
        .endpoint(chat)
        .default_endpoint("chat")
        .metadata("a2a_url", json!(agent.url))
        .metadata("manages", json!([]))
        .serve(bus)
        .await
}

/// Starts the bridge on `bus`: the `a2a` service, and the remote agents of
/// [`RemoteAgents`], followed as they are added and removed (checked every 2 s).
///
/// # Errors
/// As [`Service::serve`]; `TRANSPORT_FAILURE` when the HTTP client cannot be built.
pub async fn serve(bus: &Bus) -> weft_bus::Result<BridgeHandle> {
    let client = A2aClient::new(DEFAULT_SEND_TIMEOUT)
        .map_err(|e| weft_bus::Error::new(weft_bus::ErrorKind::InvalidConfig, e.message))?;
    let service = Service::new(SERVICE, env!("CARGO_PKG_VERSION"))
        .description("A2A bridge: reach remote A2A agents from flows and agents")
        .endpoint(send_endpoint(client.clone()))
        .default_endpoint("send")
        .serve(bus)
        .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(follow_remote_agents(bus.clone(), client, stop.clone()));
    Ok(BridgeHandle {
        service,
        stop,
        watcher,
    })
}

/// Keeps one agent service per remote agent until `stop`.
async fn follow_remote_agents(
    bus: Bus,
    client: A2aClient,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut served: HashMap<String, (RemoteAgent, ServiceHandle)> = HashMap::new();
    let mut store: Option<RemoteAgents> = None;
    loop {
        if store.is_none() {
            store = RemoteAgents::open(&bus).await.ok();
        }
        if let Some(s) = &store {
            match s.list().await {
                Ok(agents) => {
                    let wanted: HashMap<String, RemoteAgent> =
                        agents.into_iter().map(|a| (a.name.clone(), a)).collect();
                    let gone: Vec<String> = served
                        .iter()
                        .filter(|(n, (a, _))| wanted.get(*n) != Some(a))
                        .map(|(n, _)| n.clone())
                        .collect();
                    for name in gone {
                        if let Some((_, handle)) = served.remove(&name) {
                            let _ = handle.stop().await;
                        }
                    }
                    for (name, agent) in wanted {
                        if served.contains_key(&name) {
                            continue;
                        }
                        match serve_remote(&bus, client.clone(), &agent).await {
                            Ok(h) => {
                                tracing::info!(agent = %name, url = %agent.url, "serving a remote A2A agent");
                                served.insert(name, (agent, h));
                            }
                            Err(e) => {
                                tracing::warn!(agent = %name, error = %e, "cannot serve a remote A2A agent")
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot list remote A2A agents now"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    for (_, (_, handle)) in served {
        let _ = handle.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_urls_reduce_to_the_base() {
        assert_eq!(
            base_of("http://h/a2a/x/.well-known/agent-card.json"),
            "http://h/a2a/x"
        );
        assert_eq!(base_of("http://h/a2a/x/"), "http://h/a2a/x");
    }

    #[test]
    fn failed_tasks_are_errors_and_input_required_is_a_reply() {
        let mut t = empty_task("t", "c");
        t.status.state = TaskState::Failed;
        t.status.message = Some(Message::new(Role::Agent, vec![Part::text("no model")]));
        let e = reply_of(&t).unwrap_err();
        assert_eq!(e.code, ErrorCode::AgentUnavailable);
        assert!(e.message.contains("no model"), "{}", e.message);
        t.status.state = TaskState::InputRequired;
        let r = reply_of(&t).unwrap();
        assert_eq!(
            (r.state.as_str(), r.reply.as_str()),
            ("input-required", "no model")
        );
    }

    #[test]
    fn a2a_errors_map_to_mesh_codes() {
        assert_eq!(
            error_of(&A2AError::invalid_params("x")).code,
            ErrorCode::InvalidRequest
        );
        let t = error_of(&A2AError::internal(
            "HTTP request failed: connection refused",
        ));
        assert_eq!(t.code, ErrorCode::TransportFailure);
        assert!(t.retryable);
        assert_eq!(
            error_of(&A2AError::task_not_found("t")).code,
            ErrorCode::AgentUnavailable
        );
    }
}
