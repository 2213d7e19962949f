//! Agents: the definition, the tool loop every provider shares, and serving on the bus.
//!
//! An agent (DESIGN §5) is a service of kind `agent` whose default endpoint is `chat`:
//!
//! - input: `{"message": "...", "session_id"?: "..."}`, a bare JSON string, or
//!   `{"text": "..."}`; without `session_id` in the payload, the request envelope's
//!   `session_id` is used;
//! - output ([`ChatReply`]): `{"reply", "agent", "tool_calls": [{"name", "arguments",
//!   "result" | "error"}], "run_id"}` with `run_id` a UUIDv7;
//! - streaming (DESIGN §16): `chat` is a streaming endpoint. A streaming caller
//!   (`weft call --stream`, `POST /v1/invoke/{agent}/stream`) gets the run as it
//!   happens, one `delta` frame per [`RunEvent`] (`{"type": "text", "text"}` pieces of
//!   the model's text as the provider streams them, `tool_call` and `tool_result`),
//!   then the reply as the final frame; a plain caller gets the reply only. A
//!   streaming caller that goes away cancels the run and its model request.
//!
//! Its tools are the endpoints of the services it manages ([`ServiceTools`]); its
//! memory is kept per session in KV ([`Memory`]).
//!
//! # The tool loop
//! [`Agent::run`]: send the model the conversation (system prompt, memory, the new
//! message) and the tools. If it answers with tool calls, call them in order, append
//! each result as a tool message and ask again; when it answers without tool calls,
//! its text is the reply. At most [`Agent::max_steps`] model calls (default 8): a model
//! still calling tools at the last step fails the run with `AGENT_TIMEOUT`, and the
//! tools of that last turn are not called.
//!
//! A tool that answered with an error does not fail the run: its error goes back to
//! the model as the tool result (`{"error": {code, message, retryable}}`), as do
//! arguments that are not valid JSON and names of tools that do not exist. A tool that
//! cannot be reached (a retryable `AGENT_TIMEOUT`, `AGENT_UNAVAILABLE` or
//! `TRANSPORT_FAILURE`: timed out, nobody serves it, its circuit is open) fails the
//! run with a retryable error, and so does an agent none of whose managed services is
//! registered: an answer made without the tools would be wrong, and the caller (a flow
//! step, a person) can try again.
//!
//! # Spans
//!
//! As the OpenTelemetry GenAI conventions name them: a run is `invoke_agent {agent}`
//! (`gen_ai.operation.name = invoke_agent`, `gen_ai.agent.name`,
//! `gen_ai.conversation.id` = the session, `weft.agent.run_id`); each model call is
//! `chat {model}`, kind CLIENT (`gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.usage.input_tokens` and `output_tokens` when the
//! provider reports them, `gen_ai.response.finish_reasons`); each tool call is
//! `execute_tool {tool}` (`gen_ai.tool.name`, `gen_ai.tool.call.id`,
//! `gen_ai.tool.type = function`), with the tool's `send` span under it. Failures set
//! status ERROR and `error.type`.
//!
//! # Errors on the wire
//! | [`AgentError`] | code | retryable |
//! |---|---|---|
//! | `InvalidInput` (bad input shape, empty message, bad session id) | `INVALID_REQUEST` | no |
//! | `Model`, kind timeout | `AGENT_TIMEOUT` | yes |
//! | `Model`, kind auth | `AUTH_FAILURE` | no |
//! | `Model`, other kinds | `AGENT_UNAVAILABLE` | as [`ModelErrorKind::is_retryable`] |
//! | `MaxSteps` | `AGENT_TIMEOUT` | no |
//! | `Memory`, `Registry` (KV failed) | `TRANSPORT_FAILURE` | yes |
//! | `NoTools` (no managed service registered) | `AGENT_UNAVAILABLE` | yes |
//! | `Tool` (a tool timed out) | `AGENT_TIMEOUT` | yes |
//! | `Tool` (a tool unreachable otherwise) | `AGENT_UNAVAILABLE` | yes |
//!
//! # Examples
//! ```no_run
//! use std::sync::Arc;
//! use weft_agents::Agent;
//! use weft_agents::model::scripted::ScriptedModel;
//! # async fn run(bus: weft_bus::Bus) -> Result<(), Box<dyn std::error::Error>> {
//! let model = ScriptedModel::from_file("examples/support-desk/script.json")?;
//! let handle = Agent::new("support")
//!     .description("Answers questions about support tickets")
//!     .manages(["tickets"])
//!     .model(Arc::new(model))
//!     .system_prompt("You are a helpful support agent.")
//!     .serve(&bus)
//!     .await?;
//! let reply = bus
//!     .invoke(&"support".parse()?, serde_json::json!({"message": "how many tickets are open?"}))
//!     .await?;
//! println!("{}", reply["reply"]);
//! handle.stop().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tower::{Layer as _, ServiceExt as _};
use tracing::Instrument;
use weft_bus::envelope::{ErrorCode, ErrorPayload};
use weft_bus::invoke::Invoker;
use weft_bus::middleware::{BreakerConfig, CircuitBreakerLayer};
use weft_bus::registry::{Kind, Listing, Registry, RegistryWatch};
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::stream::{StreamWriter, WriteError};
use weft_bus::{Bus, Envelope, Error, ErrorKind, ServiceName};

use crate::builtin::{Builtin, DelegateCtx, PlanSlot, WithBuiltins};
use crate::guard::{
    self, Approval, ApprovalLayer, ApprovalPolicy, CallHistory, DEFAULT_LOOP_LIMIT, LoopLimitLayer,
    ToolLayerFn, ToolRequest, ToolService, needs_approval,
};
use crate::memory::{DEFAULT_MEMORY_LIMIT, DEFAULT_MEMORY_TOKENS, Memory, SessionId};
use crate::metrics;
use crate::model::{
    Message, Model, ModelError, ModelErrorKind, ModelRequest, ModelTurn, ToolCall, ToolSpec,
};
use crate::tool::{DEFAULT_TOOL_TIMEOUT, ServiceTools, ToolOutcome, Tools, error_content};

/// Default longest served chat: 5 min ([`Agent::run_timeout`]).
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Default most model calls per run: 8.
pub const DEFAULT_MAX_STEPS: usize = 8;

/// The start of the summary note a summarizing agent keeps at the front of memory.
pub const SUMMARY_PREFIX: &str = "Summary of the earlier conversation: ";

/// The start of the user message asking the model for a summary.
pub const SUMMARY_REQUEST_HEAD: &str = "Conversation to summarize:\n";

/// The agent's default endpoint.
pub const CHAT_ENDPOINT: &str = "chat";

/// An agent definition; [`Agent::serve`] puts it on the bus, [`Agent::chat`] runs one
/// chat in process.
#[derive(Clone)]
pub struct Agent {
    name: String,
    version: String,
    description: String,
    manages: Vec<String>,
    model: Option<Arc<dyn Model>>,
    system_prompt: Option<String>,
    max_steps: usize,
    tool_timeout: Duration,
    memory_limit: usize,
    memory_tokens: usize,
    summarize_memory: bool,
    breaker: CircuitBreakerLayer,
    loop_limit: usize,
    run_timeout: Duration,
    approval: Option<ApprovalPolicy>,
    tool_layers: Vec<ToolLayerFn>,
    builtins: Vec<Builtin>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("manages", &self.manages)
            .field("model", &self.model.as_ref().map(|m| m.name().to_owned()))
            .field("max_steps", &self.max_steps)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent `name` (one token, `[A-Za-z0-9_-]+`; checked by [`Agent::serve`]) at
    /// version `0.1.0`, managing no services, with no model yet.
    pub fn new(name: impl Into<String>) -> Self {
        Agent {
            name: name.into(),
            version: "0.1.0".into(),
            description: String::new(),
            manages: Vec::new(),
            model: None,
            system_prompt: None,
            max_steps: DEFAULT_MAX_STEPS,
            tool_timeout: DEFAULT_TOOL_TIMEOUT,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            memory_tokens: DEFAULT_MEMORY_TOKENS,
            summarize_memory: false,
            breaker: CircuitBreakerLayer::default(),
            loop_limit: DEFAULT_LOOP_LIMIT,
            run_timeout: DEFAULT_RUN_TIMEOUT,
            approval: None,
            tool_layers: Vec::new(),
            builtins: Vec::new(),
        }
    }

    /// Offers the built-in tools `builtins` ([`crate::builtin`]: `plan`, `delegate`)
    /// beside the managed services' tools. Default none.
    pub fn builtins(mut self, builtins: impl IntoIterator<Item = Builtin>) -> Self {
        for b in builtins {
            if !self.builtins.contains(&b) {
                self.builtins.push(b);
            }
        }
        self
    }

    /// Longest a served chat may take, model calls and tools included; past it the run
    /// is cancelled (its model request aborted) and the caller gets `AGENT_TIMEOUT`
    /// (retryable). A caller that gives up sooner cancels a streaming chat itself.
    /// Default [`DEFAULT_RUN_TIMEOUT`] (5 min).
    pub fn run_timeout(mut self, timeout: Duration) -> Self {
        self.run_timeout = timeout;
        self
    }

    /// Most runs of one tool with the same arguments in one run (at least 1); a
    /// further identical call is refused and the model told why ([`LoopLimitLayer`]).
    /// Default [`DEFAULT_LOOP_LIMIT`] (3).
    pub fn loop_limit(mut self, calls: usize) -> Self {
        self.loop_limit = calls.max(1);
        self
    }

    /// Tools whose names match one of `patterns` (`*` globs, e.g. `tickets_*`) need a
    /// person's approval; until a run can pause for one, they are denied with a reason
    /// the model reads ([`needs_approval`]). Replaces an earlier [`Agent::approval`].
    /// Default none: every tool runs.
    pub fn approve<I, S>(self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns = patterns.into_iter().map(Into::into).collect();
        self.approval_policy(needs_approval(patterns))
    }

    /// Decides every tool call with `policy` ([`Approval::Allow`], or
    /// [`Approval::Deny`] with a reason the model reads). Replaces an earlier
    /// [`Agent::approve`]. Default none: every tool runs.
    pub fn approval(
        self,
        policy: impl Fn(&ToolRequest) -> Approval + Send + Sync + 'static,
    ) -> Self {
        self.approval_policy(Arc::new(policy))
    }

    fn approval_policy(mut self, policy: ApprovalPolicy) -> Self {
        self.approval = Some(policy);
        self
    }

    /// Wraps every tool call in `layer` (a tower [`Layer`](tower::Layer) over
    /// [`ToolService`]: logging, retry, metrics of your own), inside the loop limit and
    /// approval and outside the tools. The first layer added is the outermost.
    pub fn tool_layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<ToolService> + Send + Sync + 'static,
        L::Service: tower::Service<ToolRequest, Response = Value, Error = ErrorPayload>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<ToolRequest>>::Future: Send + 'static,
    {
        self.tool_layers.push(guard::layer_fn(layer));
        self
    }

    /// `tools` with the agent's built-ins ([`Agent::builtins`]); the plan of the
    /// session (`memory`) loaded.
    async fn with_builtins(
        &self,
        bus: &Bus,
        tools: Arc<dyn Tools>,
        memory: Option<(&Memory, &SessionId)>,
    ) -> Result<WithBuiltins, AgentError> {
        let plan = match (self.builtins.contains(&Builtin::Plan), memory) {
            (false, _) => None,
            (true, Some((memory, session))) => {
                let current = memory
                    .load_plan(&self.name, session)
                    .await
                    .map_err(AgentError::Memory)?;
                Some(PlanSlot {
                    stored: Some((memory.clone(), self.name.clone(), session.clone())),
                    current: std::sync::Mutex::new(current),
                })
            }
            (true, None) => Some(PlanSlot {
                stored: None,
                current: std::sync::Mutex::new(None),
            }),
        };
        Ok(WithBuiltins {
            inner: tools,
            plan,
            delegate: self.delegate_ctx(Some(bus)),
        })
    }

    /// The tool stack of one run over `tools` ([`crate::guard`]): loop limit, approval,
    /// the tool layers, the tools.
    fn tool_stack(&self, tools: Arc<dyn Tools>) -> ToolService {
        let mut stack = ToolService::new(tower::service_fn(move |req: ToolRequest| {
            let tools = tools.clone();
            async move { tools.call(&req.call.name, &req.call.arguments).await }
        }));
        for layer in self.tool_layers.iter().rev() {
            stack = layer(stack);
        }
        if let Some(policy) = &self.approval {
            stack = ToolService::new(ApprovalLayer::new(policy.clone()).layer(stack));
        }
        ToolService::new(LoopLimitLayer::new(self.loop_limit).layer(stack))
    }

    /// Circuit breaker on tool calls: a failing service is not called for a while and
    /// the model is told so at once. Default [`BreakerConfig::default`] (5 failures,
    /// 10 s).
    pub fn circuit_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = CircuitBreakerLayer::new(config);
        self
    }

    /// Semver version of the agent service. Default `0.1.0`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// What the agent does (registry description, A2A card). Default empty.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Adds services whose endpoints are the agent's tools. Default none.
    pub fn manages<I, S>(mut self, services: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.manages.extend(services.into_iter().map(Into::into));
        self
    }

    /// The model. Required: without one, [`Agent::serve`] fails and
    /// [`Agent::chat`] answers a [`ModelErrorKind::Config`] error.
    pub fn model(mut self, model: Arc<dyn Model>) -> Self {
        self.model = Some(model);
        self
    }

    /// The system prompt, sent first on every model call (not stored in memory).
    /// Default none.
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.system_prompt = Some(prompt.into());
        self
    }

    /// Most model calls per run (at least 1). Default [`DEFAULT_MAX_STEPS`] (8).
    pub fn max_steps(mut self, steps: usize) -> Self {
        self.max_steps = steps.max(1);
        self
    }

    /// How long one tool call may take. Default [`DEFAULT_TOOL_TIMEOUT`] (30 s).
    pub fn tool_timeout(mut self, timeout: Duration) -> Self {
        self.tool_timeout = timeout;
        self
    }

    /// Most messages remembered per session. Default [`DEFAULT_MEMORY_LIMIT`] (50).
    pub fn memory_limit(mut self, messages: usize) -> Self {
        self.memory_limit = messages;
        self
    }

    /// Most tokens remembered per session, approximately
    /// ([`crate::memory::approx_tokens`]). Default [`DEFAULT_MEMORY_TOKENS`] (8,000).
    pub fn memory_tokens(mut self, tokens: usize) -> Self {
        self.memory_tokens = tokens;
        self
    }

    /// When memory is over its limits, have the model summarize the oldest turns into
    /// a note kept at the front of the history (a system message), instead of
    /// dropping them. If the model fails, they are dropped, with a warning. Default
    /// off.
    pub fn summarize_memory(mut self, on: bool) -> Self {
        self.summarize_memory = on;
        self
    }

    /// `history` within the memory's limits, the turns it would drop summarized by the
    /// model into the leading summary note (with the earlier summary, if any).
    async fn summarized(&self, memory: &Memory, history: Vec<Message>) -> Vec<Message> {
        let earlier = history
            .first()
            .filter(|m| m.role == crate::model::Role::System)
            .map(|m| m.content.clone());
        let (mut kept, dropped) = memory.split(history);
        let Some(model) = self.model.as_deref().filter(|_| !dropped.is_empty()) else {
            return kept;
        };
        let mut transcript = String::from(SUMMARY_REQUEST_HEAD);
        if let Some(e) = &earlier {
            transcript.push_str(&format!("(earlier summary) {e}\n"));
        }
        for m in &dropped {
            let role = serde_json::to_value(m.role).ok();
            let role = role.as_ref().and_then(Value::as_str).unwrap_or("?");
            if !m.content.is_empty() {
                transcript.push_str(&format!("{role}: {}\n", m.content));
            }
            for c in &m.tool_calls {
                transcript.push_str(&format!("{role}: called {}({})\n", c.name, c.arguments));
            }
        }
        let request = ModelRequest {
            messages: vec![
                Message::system(
                    "Summarize the conversation you are given in a few sentences: the facts, names, numbers and decisions a later turn may need. Answer with the summary only.",
                ),
                Message::user(transcript),
            ],
            tools: Vec::new(),
        };
        match complete(model, &request, None).await {
            Ok(turn) => {
                let summary = turn.content.unwrap_or_default();
                if kept
                    .first()
                    .is_some_and(|m| m.role == crate::model::Role::System)
                {
                    kept.remove(0);
                }
                kept.insert(0, Message::system(format!("{SUMMARY_PREFIX}{summary}")));
            }
            Err(e) => {
                tracing::warn!(agent = %self.name, error = %e, dropped = dropped.len(), "cannot summarize older turns; they are dropped from memory");
            }
        }
        kept
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The services it manages.
    pub fn managed_services(&self) -> &[String] {
        &self.manages
    }

    /// Runs one chat: loads the session's memory, discovers the tools of the managed
    /// services in the registry, runs [the tool loop](Agent::run) and stores the
    /// exchange in memory. Counted in `weft_agent_runs_total`.
    ///
    /// A failed run stores nothing in memory. A failure to store memory after a
    /// successful run is logged and the reply is still returned.
    ///
    /// # Errors
    /// [`AgentError`]; [`AgentError::to_error_payload`] gives its wire form.
    pub async fn chat(&self, bus: &Bus, request: ChatRequest) -> Result<ChatReply, AgentError> {
        self.chat_with(bus, &Buckets::default(), request, None)
            .await
    }

    /// [`Agent::chat`], reporting the run's events to `on_event` as they happen
    /// ([`Agent::run_streaming`]).
    ///
    /// # Errors
    /// As [`Agent::chat`].
    pub async fn chat_streaming(
        &self,
        bus: &Bus,
        request: ChatRequest,
        on_event: EventSink<'_>,
    ) -> Result<ChatReply, AgentError> {
        self.chat_with(bus, &Buckets::default(), request, Some(on_event))
            .await
    }

    /// [`Agent::chat`] with the KV buckets taken from (and, on first use, opened into)
    /// `buckets`.
    async fn chat_with(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        request: ChatRequest,
        events: Option<EventSink<'_>>,
    ) -> Result<ChatReply, AgentError> {
        let result = self.chat_inner(bus, buckets, request, events).await;
        record_run(&self.name, &result);
        result
    }

    async fn chat_inner(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        request: ChatRequest,
        events: Option<EventSink<'_>>,
    ) -> Result<ChatReply, AgentError> {
        if request.message.trim().is_empty() {
            return Err(AgentError::InvalidInput(format!(
                "the message to agent {} is empty",
                self.name
            )));
        }
        let memory = match &request.session_id {
            Some(session) => {
                let memory = buckets
                    .memory(bus, self.memory_limit, self.memory_tokens)
                    .await
                    .map_err(AgentError::Memory)?;
                let history = memory
                    .load(&self.name, session)
                    .await
                    .map_err(AgentError::Memory)?;
                Some((memory, session, history))
            }
            None => None,
        };
        let tools = if self.manages.is_empty() {
            ServiceTools::from_registrations(bus, &[])
        } else {
            let registry = buckets.registry(bus).await.map_err(AgentError::Registry)?;
            let tools = ServiceTools::discover_in(bus, registry, &self.manages);
            if tools.is_empty() {
                // Answering without the tools would be a wrong answer reported as
                // success; the caller (a flow step, a person) can try again.
                return Err(AgentError::NoTools {
                    agent: self.name.clone(),
                    services: self.manages.clone(),
                });
            }
            tools
        }
        .invoker(Invoker::guarded(bus, &self.breaker))
        .timeout(self.tool_timeout)
        .caller(&self.name)
        .session_id(request.session_id.as_ref().map(|s| s.to_string()))
        .parent(request.parent);
        let mut history = memory
            .as_ref()
            .map(|(_, _, h)| h.clone())
            .unwrap_or_default();
        let tools = self
            .with_builtins(
                bus,
                Arc::new(tools),
                memory.as_ref().map(|(m, s, _)| (*m, *s)),
            )
            .await?;
        if let Some(plan) = tools
            .plan
            .as_ref()
            .and_then(|p| p.current.lock().unwrap_or_else(|e| e.into_inner()).clone())
        {
            // Shown, not stored: the plan lives under its own key.
            history.insert(
                0,
                Message::system(format!(
                    "Your plan for this conversation so far (update it with the plan tool):\n{}",
                    plan.to_prompt()
                )),
            );
        }
        let conversation = request.session_id.as_ref().map(|s| s.to_string());
        let run = self
            .run_in(
                Arc::new(tools),
                history,
                &request.message,
                conversation.as_deref(),
                events,
            )
            .await?;
        if let Some((memory, session, mut history)) = memory {
            history.extend(run.messages.iter().cloned());
            if self.summarize_memory {
                history = self.summarized(memory, history).await;
            }
            if let Err(e) = memory.save(&self.name, session, history).await {
                tracing::error!(agent = %self.name, run_id = %run.run_id, error = %e, "cannot store agent memory; the reply is sent anyway");
            }
        }
        Ok(ChatReply {
            reply: run.reply,
            agent: self.name.clone(),
            tool_calls: run.tool_calls,
            run_id: run.run_id,
        })
    }

    /// The tool loop ([module docs](self)): answers `message` given the earlier
    /// `history` (oldest first, without system prompt) and `tools`. Uses no memory and
    /// no registry, so it can run with any [`Tools`]. Counts model and tool calls in
    /// the metrics.
    ///
    /// # Errors
    /// [`AgentError::Model`] when the model fails or the agent has none;
    /// [`AgentError::MaxSteps`] when the model still calls tools after
    /// [`Agent::max_steps`] calls.
    pub async fn run(
        &self,
        tools: Arc<dyn Tools>,
        history: Vec<Message>,
        message: &str,
    ) -> Result<Run, AgentError> {
        let tools = self.local_builtins(tools);
        self.run_in(tools, history, message, None, None).await
    }

    /// [`Agent::run`], reporting what happens as it happens to `on_event`: the model's
    /// text as it streams ([`Model::stream`]), each tool call and each tool result, in
    /// order (DESIGN §16).
    ///
    /// # Errors
    /// As [`Agent::run`].
    pub async fn run_streaming(
        &self,
        tools: Arc<dyn Tools>,
        history: Vec<Message>,
        message: &str,
        on_event: EventSink<'_>,
    ) -> Result<Run, AgentError> {
        let tools = self.local_builtins(tools);
        self.run_in(tools, history, message, None, Some(on_event))
            .await
    }

    /// `tools` with the built-ins a run without the bus can have: `plan` for the run
    /// only, `delegate` to a sub-agent only.
    fn local_builtins(&self, tools: Arc<dyn Tools>) -> Arc<dyn Tools> {
        if self.builtins.is_empty() {
            return tools;
        }
        Arc::new(WithBuiltins {
            inner: tools,
            plan: self.builtins.contains(&Builtin::Plan).then(|| PlanSlot {
                stored: None,
                current: std::sync::Mutex::new(None),
            }),
            delegate: self.delegate_ctx(None),
        })
    }

    /// What `delegate` needs, when the agent offers it and has a model.
    fn delegate_ctx(&self, bus: Option<&Bus>) -> Option<DelegateCtx> {
        match (&self.model, self.builtins.contains(&Builtin::Delegate)) {
            (Some(model), true) => Some(DelegateCtx {
                bus: bus.cloned(),
                agent: self.name.clone(),
                model: model.clone(),
                max_steps: self.max_steps,
                timeout: self.tool_timeout,
            }),
            _ => None,
        }
    }

    /// [`Agent::run`] in an `invoke_agent {agent}` span (OpenTelemetry GenAI
    /// conventions) whose `gen_ai.conversation.id` is `conversation` (the session).
    async fn run_in(
        &self,
        tools: Arc<dyn Tools>,
        history: Vec<Message>,
        message: &str,
        conversation: Option<&str>,
        events: Option<EventSink<'_>>,
    ) -> Result<Run, AgentError> {
        let run_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!(
            "invoke_agent",
            otel.name = %format_args!("invoke_agent {}", self.name),
            otel.kind = "internal",
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %self.name,
            gen_ai.conversation.id = conversation,
            weft.agent.run_id = %run_id,
        );
        let result = self
            .run_loop(tools, history, message, run_id, events)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            weft_bus::trace::record_error(&span, e);
        }
        result
    }

    async fn run_loop(
        &self,
        tools: Arc<dyn Tools>,
        history: Vec<Message>,
        message: &str,
        run_id: String,
        events: Option<EventSink<'_>>,
    ) -> Result<Run, AgentError> {
        let Some(model) = self.model.as_deref() else {
            return Err(AgentError::Model {
                provider: "none".into(),
                error: ModelError::new(
                    ModelErrorKind::Config,
                    format!(
                        "agent {} has no model (set one with Agent::model)",
                        self.name
                    ),
                ),
            });
        };
        let mut request = ModelRequest {
            messages: Vec::with_capacity(history.len() + 2),
            tools: tools.specs(),
        };
        let stack = self.tool_stack(tools);
        let run = (
            Arc::<str>::from(run_id.as_str()),
            Arc::new(CallHistory::default()),
        );
        if let Some(prompt) = &self.system_prompt {
            request.messages.push(Message::system(prompt.clone()));
        }
        request.messages.extend(history);
        let first_new = request.messages.len();
        request.messages.push(Message::user(message));
        let mut records = Vec::new();
        for step in 1..=self.max_steps {
            let turn = complete(model, &request, events).await?;
            if turn.tool_calls.is_empty() {
                let reply = turn.content.unwrap_or_default();
                request
                    .messages
                    .push(Message::assistant(reply.clone(), Vec::new()));
                tracing::debug!(steps = step, tool_calls = records.len(), "run finished");
                return Ok(Run {
                    run_id,
                    reply,
                    tool_calls: records,
                    messages: request.messages.split_off(first_new),
                    steps: step,
                });
            }
            if step == self.max_steps {
                break;
            }
            request.messages.push(Message::assistant(
                turn.content.unwrap_or_default(),
                turn.tool_calls.clone(),
            ));
            for call in turn.tool_calls {
                if let Some(events) = events {
                    events(RunEvent::ToolCall {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    });
                }
                let (record, content) = self.call_tool(&stack, &run, &request.tools, &call).await;
                if let Some(events) = events {
                    events(RunEvent::ToolResult {
                        id: call.id.clone(),
                        name: record.name.clone(),
                        result: record.result.clone(),
                        error: record.error.clone(),
                    });
                }
                if let Some(error) = record.error.as_ref().filter(|e| is_unavailable(e)) {
                    return Err(AgentError::Tool {
                        agent: self.name.clone(),
                        tool: record.name.clone(),
                        error: Box::new(error.clone()),
                    });
                }
                request.messages.push(Message::tool(call.id, content));
                records.push(record);
            }
        }
        Err(AgentError::MaxSteps {
            agent: self.name.clone(),
            max_steps: self.max_steps,
        })
    }

    async fn call_tool(
        &self,
        stack: &ToolService,
        (run_id, history): &(Arc<str>, Arc<CallHistory>),
        specs: &[ToolSpec],
        call: &ToolCall,
    ) -> (ToolCallRecord, String) {
        let known = specs.iter().any(|s| s.name == call.name);
        let (outcome, result): (&str, ToolOutcome) = if !known {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            (
                "unknown_tool",
                Err(ErrorPayload::new(
                    ErrorCode::NoHandler,
                    format!(
                        "there is no tool named {:?}; the tools are: {}",
                        call.name,
                        if names.is_empty() {
                            "(none)".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                )),
            )
        } else if let Some(why) = &call.arguments_error {
            (
                "invalid_arguments",
                Err(ErrorPayload::invalid_request(format!(
                    "the arguments of {} are not valid JSON ({why}); call it again with a JSON object",
                    call.name
                ))),
            )
        } else {
            let span = tracing::info_span!(
                "execute_tool",
                otel.name = %format_args!("execute_tool {}", call.name),
                otel.kind = "internal",
                gen_ai.operation.name = "execute_tool",
                gen_ai.tool.name = %call.name,
                gen_ai.tool.call.id = %call.id,
                gen_ai.tool.type = "function",
            );
            let request = ToolRequest {
                agent: Arc::from(self.name.as_str()),
                run_id: run_id.clone(),
                call: call.clone(),
                history: history.clone(),
            };
            let result = stack
                .clone()
                .oneshot(request)
                .instrument(span.clone())
                .await;
            if let Err(e) = &result {
                weft_bus::trace::record_error(&span, e);
            }
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => match &e.code {
                    ErrorCode::AgentTimeout => "timeout",
                    ErrorCode::AgentUnavailable => "unavailable",
                    ErrorCode::TransportFailure => "transport",
                    ErrorCode::Other(c) if c == guard::LOOP_LIMIT => "loop_limit",
                    ErrorCode::Other(c) if c == guard::APPROVAL_REQUIRED => "denied",
                    _ => "error",
                },
            };
            (outcome, result)
        };
        metrics::agents()
            .tool_calls
            .with_label_values(&[
                self.name.as_str(),
                if known { call.name.as_str() } else { "unknown" },
                outcome,
            ])
            .inc();
        if let Err(e) = &result {
            tracing::info!(tool = %call.name, code = %e.code, message = %e.message, "tool call failed; the error goes back to the model");
        }
        let content = match &result {
            Ok(v) => v.to_string(),
            Err(e) => error_content(e).to_string(),
        };
        let (result, error) = match result {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        (
            ToolCallRecord {
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                result,
                error,
            },
            content,
        )
    }

    /// Starts serving the agent: a [`Service`] of kind [`Kind::Agent`] with the default
    /// endpoint `chat` (input and output schemas included) and registry metadata
    /// `{"manages": [...], "model": <provider>, "model_id"?: <model>}`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidSubject`] for a bad agent or managed service name;
    /// [`ErrorKind::Other`] when no model is set; otherwise as [`Service::serve`].
    pub async fn serve(self, bus: &Bus) -> weft_bus::Result<ServiceHandle> {
        for s in &self.manages {
            s.parse::<ServiceName>().map_err(|e| {
                Error::new(
                    ErrorKind::InvalidSubject,
                    format!("agent {} manages {s:?}: {e}", self.name),
                )
            })?;
        }
        let Some(model) = &self.model else {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "agent {} has no model (set one with Agent::model)",
                    self.name
                ),
            ));
        };
        let mut service = Service::new(&self.name, &self.version)
            .kind(Kind::Agent)
            .description(&self.description)
            .metadata("manages", json!(self.manages))
            .metadata("model", json!(model.name()));
        if let Some(id) = model.model_id() {
            service = service.metadata("model_id", json!(id));
        }
        let run_timeout = self.run_timeout;
        // Every chat of this service shares the KV handles, opened on first use.
        let agent = Arc::new(self);
        let buckets = Arc::new(Buckets::default());
        let handler = move |req: Request, out: StreamWriter| {
            let agent = agent.clone();
            let buckets = buckets.clone();
            async move { agent.handle(req, &buckets, out).await }
        };
        service
            .endpoint(
                Endpoint::streaming(CHAT_ENDPOINT, handler)
                    .description("Chat with the agent: send a message, get its reply and the tools it called")
                    .input_schema(chat_input_schema())
                    .output_schema(chat_output_schema())
                    .timeout(run_timeout),
            )
            .default_endpoint(CHAT_ENDPOINT)
            .serve(bus)
            .await
    }

    /// Serves one `chat`: a streaming caller gets the run's events as `delta` frames
    /// ([`RunEvent`]) and the reply as the final frame; a plain caller the reply only.
    /// A caller that goes away cancels the run (and its model request).
    async fn handle(
        &self,
        req: Request,
        buckets: &Buckets,
        out: StreamWriter,
    ) -> Result<Value, ErrorPayload> {
        if !out.is_streaming() {
            return self.handle_events(req, buckets, None).await;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
        let run = async move {
            let sink = move |event: RunEvent| {
                let _ = tx.send(event);
            };
            self.handle_events(req, buckets, Some(&sink)).await
            // `sink`, and with it the sender, drops here: `forward` then ends.
        };
        let forward = async {
            while let Some(event) = rx.recv().await {
                let frame = serde_json::to_value(&event).unwrap_or(Value::Null);
                if out.delta(frame).await.is_err() {
                    break; // cancelled or closed: `cancelled` below ends the run
                }
            }
        };
        tokio::select! {
            (result, ()) = async { tokio::join!(run, forward) } => result,
            () = out.cancelled() => Err(WriteError::Cancelled.into()),
        }
    }

    async fn handle_events(
        &self,
        req: Request,
        buckets: &Buckets,
        events: Option<EventSink<'_>>,
    ) -> Result<Value, ErrorPayload> {
        let mut request =
            match ChatRequest::from_payload(req.payload(), req.envelope.session_id.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    record_run(&self.name, &Err::<(), _>(&e));
                    return Err(e.to_error_payload());
                }
            };
        request.parent = Some(req.envelope);
        let reply = self
            .chat_with(&req.bus, buckets, request, events)
            .await
            .map_err(|e| e.to_error_payload())?;
        serde_json::to_value(reply).map_err(|e| {
            ErrorPayload::new(
                ErrorCode::CodecFailure,
                format!("cannot encode the reply: {e}"),
            )
        })
    }
}

/// Whether a tool call's error says the tool cannot be reached now (timed out, nobody
/// serves it, its circuit is open, the transport failed) rather than that it answered
/// no: then the run fails with a retryable error instead of answering without it.
fn is_unavailable(error: &ErrorPayload) -> bool {
    error.retryable
        && matches!(
            error.code,
            ErrorCode::AgentTimeout | ErrorCode::AgentUnavailable | ErrorCode::TransportFailure
        )
}

/// The KV buckets chats use: memory, and the registry through the connection's
/// shared watch. Each is opened on first use and then shared (the handles are cheap
/// clones); one that cannot be opened is tried again by the next chat, which fails as
/// it would have.
#[derive(Default)]
struct Buckets {
    memory: OnceCell<Memory>,
}

impl Buckets {
    /// The memory bucket, keeping `limit` messages per session.
    async fn memory(&self, bus: &Bus, limit: usize, tokens: usize) -> weft_bus::Result<&Memory> {
        self.memory
            .get_or_try_init(|| async { Ok(Memory::open(bus).await?.limit(limit).tokens(tokens)) })
            .await
    }

    /// The connection's live registry view ([`Bus::registry_watch`]).
    async fn registry<'b>(&self, bus: &'b Bus) -> weft_bus::Result<&'b RegistryWatch> {
        bus.registry_watch().await
    }
}

fn record_run<T, E: std::borrow::Borrow<AgentError>>(agent: &str, result: &Result<T, E>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.borrow().outcome(),
    };
    metrics::agents()
        .runs
        .with_label_values(&[agent, outcome])
        .inc();
}

/// One model call, timed and counted; streamed when `events` is set (its text pieces
/// become [`RunEvent::Text`]).
async fn complete(
    model: &dyn Model,
    request: &ModelRequest,
    events: Option<EventSink<'_>>,
) -> Result<ModelTurn, AgentError> {
    let started = Instant::now();
    // OpenTelemetry GenAI conventions: `chat {model}`, kind CLIENT.
    let span = tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {}", model.model_id().unwrap_or(model.name())),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = model.name(),
        gen_ai.request.model = model.model_id(),
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
    );
    let result = match events {
        Some(events) => {
            let on_text = |text: &str| {
                events(RunEvent::Text {
                    text: text.to_owned(),
                })
            };
            model
                .stream(request, &on_text)
                .instrument(span.clone())
                .await
        }
        None => model.complete(request).instrument(span.clone()).await,
    };
    match &result {
        Ok(turn) => {
            if let Some(m) = &turn.response_model {
                span.record("gen_ai.response.model", m.as_str());
            }
            if let Some(u) = turn.usage {
                span.record("gen_ai.usage.input_tokens", u.input_tokens as i64);
                span.record("gen_ai.usage.output_tokens", u.output_tokens as i64);
                let tokens = &metrics::agents().model_tokens;
                tokens
                    .with_label_values(&[model.name(), "input"])
                    .inc_by(u.input_tokens);
                tokens
                    .with_label_values(&[model.name(), "output"])
                    .inc_by(u.output_tokens);
            }
            if let Some(r) = &turn.finish_reason {
                weft_bus::trace::set_strings(
                    &span,
                    "gen_ai.response.finish_reasons",
                    vec![r.clone()],
                );
            }
        }
        Err(e) => weft_bus::trace::record_error(&span, e),
    }
    let m = metrics::agents();
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind().as_str(),
    };
    m.model_requests
        .with_label_values(&[model.name(), outcome])
        .inc();
    m.model_duration
        .with_label_values(&[model.name()])
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|error| AgentError::Model {
        provider: model.name().to_owned(),
        error,
    })
}

/// JSON Schema of the `chat` input (the canonical object form; a bare string and
/// `{text}` are accepted too).
pub fn chat_input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "message": {"type": "string", "description": "What to ask or tell the agent"},
            "session_id": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]{1,128}$",
                "description": "Conversation to continue; the agent remembers earlier messages of the same session"
            }
        },
        "required": ["message"]
    })
}

/// JSON Schema of the `chat` output ([`ChatReply`]).
pub fn chat_output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "reply": {"type": "string"},
            "agent": {"type": "string"},
            "run_id": {"type": "string", "format": "uuid"},
            "tool_calls": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "arguments": {},
                        "result": {},
                        "error": {"type": "object"}
                    },
                    "required": ["name", "arguments"]
                }
            }
        },
        "required": ["reply", "agent", "tool_calls", "run_id"]
    })
}

/// The input of one chat.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// What the user says.
    pub message: String,
    /// The session to remember the exchange in; `None` for a fresh conversation.
    pub session_id: Option<SessionId>,
    /// The request envelope the chat came in, if any: tool requests inherit its trace,
    /// tenant, user, conversation and channel ([`ServiceTools::parent`]).
    pub parent: Option<Envelope>,
}

impl ChatRequest {
    /// A message without a session.
    pub fn new(message: impl Into<String>) -> Self {
        ChatRequest {
            message: message.into(),
            session_id: None,
            parent: None,
        }
    }

    /// Sets the session.
    pub fn session(mut self, session_id: SessionId) -> Self {
        self.session_id = Some(session_id);
        self
    }

    /// Reads the `chat` payload: `{"message", "session_id"?}`, `{"text",
    /// "session_id"?}` or a bare JSON string. `envelope_session` (the request
    /// envelope's `session_id`) is used when the payload has none; an empty session
    /// id counts as none.
    ///
    /// # Errors
    /// [`AgentError::InvalidInput`] saying what is wrong: another shape, a
    /// non-string field, an empty message, a session id that is not one token.
    pub fn from_payload(
        payload: &Value,
        envelope_session: Option<&str>,
    ) -> Result<ChatRequest, AgentError> {
        let invalid = |m: String| AgentError::InvalidInput(m);
        let (message, session) = match payload {
            Value::String(s) => (s.clone(), None),
            Value::Object(o) => {
                let message = match (o.get("message"), o.get("text")) {
                    (Some(Value::String(s)), _) => s.clone(),
                    (None, Some(Value::String(s))) => s.clone(),
                    (Some(other), _) => {
                        return Err(invalid(format!(
                            "chat input field `message` must be a string, not {}",
                            json_type(other)
                        )));
                    }
                    (None, Some(other)) => {
                        return Err(invalid(format!(
                            "chat input field `text` must be a string, not {}",
                            json_type(other)
                        )));
                    }
                    (None, None) => {
                        return Err(invalid(
                            "chat input has no `message`: send {\"message\": \"...\", \"session_id\": \"...\"} or a JSON string".into(),
                        ));
                    }
                };
                let session = match o.get("session_id") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if s.is_empty() => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(invalid(format!(
                            "chat input field `session_id` must be a string, not {}",
                            json_type(other)
                        )));
                    }
                };
                (message, session)
            }
            other => {
                return Err(invalid(format!(
                    "chat input must be {{\"message\": \"...\", \"session_id\"?: \"...\"}}, {{\"text\": \"...\"}} or a JSON string, not {}",
                    json_type(other)
                )));
            }
        };
        if message.trim().is_empty() {
            return Err(invalid("chat input `message` is empty".into()));
        }
        let session = session.or_else(|| {
            envelope_session
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        });
        let session_id = session
            .map(|s| s.parse::<SessionId>())
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(ChatRequest {
            message,
            session_id,
            parent: None,
        })
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The output of one chat: `{"reply", "agent", "tool_calls", "run_id"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    /// The model's final text.
    pub reply: String,
    /// The agent's name.
    pub agent: String,
    /// The tools called during the run, in order.
    pub tool_calls: Vec<ToolCallRecord>,
    /// The run's id (UUIDv7), also in the agent's logs.
    pub run_id: String,
}

/// What a run reports while it runs (DESIGN §16): the payload of each `delta` frame
/// of a streamed `chat`, tagged by `type`.
///
/// | `type` | fields |
/// |---|---|
/// | `text` | `text`: a piece of the model's text, as the provider streamed it |
/// | `tool_call` | `id`, `name`, `arguments`: the model called a tool (sent before the call) |
/// | `tool_result` | `id`, `name`, and `result` or `error`: the tool answered |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// A piece of the model's text.
    Text {
        /// The text.
        text: String,
    },
    /// The model called a tool.
    ToolCall {
        /// The provider's call id.
        id: String,
        /// The tool.
        name: String,
        /// The arguments.
        arguments: Value,
    },
    /// A tool answered.
    ToolResult {
        /// The call id.
        id: String,
        /// The tool.
        name: String,
        /// The result payload, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        /// The error payload, on failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorPayload>,
    },
}

/// Where a streaming run sends its [`RunEvent`]s: called once per event, in order.
pub type EventSink<'a> = &'a (dyn Fn(RunEvent) + Send + Sync);

/// One tool call of a run: `{"name", "arguments", "result"}` or `{"name", "arguments",
/// "error"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The tool name, e.g. `tickets_list`.
    pub name: String,
    /// The arguments the model gave (the raw text as a JSON string when it was not
    /// valid JSON).
    pub arguments: Value,
    /// The result payload, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error payload, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorPayload>,
}

/// The result of [`Agent::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The run's id (UUIDv7).
    pub run_id: String,
    /// The model's final text.
    pub reply: String,
    /// The tools called, in order.
    pub tool_calls: Vec<ToolCallRecord>,
    /// The messages this run added, starting with the user message and ending with
    /// the final assistant message (what memory appends).
    pub messages: Vec<Message>,
    /// Model calls made.
    pub steps: usize,
}

/// Why a chat failed. `#[non_exhaustive]`: new variants may appear.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The input is not a valid chat request.
    #[error("{0}")]
    InvalidInput(String),
    /// The model failed (or the agent has none).
    #[error("model {provider} failed: {error}")]
    Model {
        /// The provider ([`Model::name`]).
        provider: String,
        /// What went wrong.
        error: ModelError,
    },
    /// The model still called tools after the most steps allowed.
    #[error(
        "agent {agent} gave no answer within {max_steps} model calls (the model kept calling tools)"
    )]
    MaxSteps {
        /// The agent.
        agent: String,
        /// The limit ([`Agent::max_steps`]).
        max_steps: usize,
    },
    /// Agent memory could not be read.
    #[error("{0}")]
    Memory(weft_bus::Error),
    /// The registry could not be read to find the tools.
    #[error("{0}")]
    Registry(weft_bus::Error),
    /// None of the services the agent manages is registered now, so it has no tools.
    #[error(
        "agent {agent} has no tools now: none of the services it manages ({}) is registered; try again once they run",
        services.join(", ")
    )]
    NoTools {
        /// The agent.
        agent: String,
        /// The services it manages.
        services: Vec<String>,
    },
    /// A tool could not be reached (timeout, no responders, open circuit, transport
    /// failure), so the agent cannot answer correctly now.
    #[error("agent {agent} cannot reach its tool {tool}: {error}")]
    Tool {
        /// The agent.
        agent: String,
        /// The tool name.
        tool: String,
        /// The tool call's error.
        error: Box<ErrorPayload>,
    },
}

impl AgentError {
    /// The `outcome` label of `weft_agent_runs_total`: `invalid_input`,
    /// `model_error`, `max_steps`, `memory_error`, `registry_error`, `no_tools` or
    /// `tool_unavailable`.
    pub fn outcome(&self) -> &'static str {
        match self {
            AgentError::InvalidInput(_) => "invalid_input",
            AgentError::Model { .. } => "model_error",
            AgentError::MaxSteps { .. } => "max_steps",
            AgentError::Memory(_) => "memory_error",
            AgentError::Registry(_) => "registry_error",
            AgentError::NoTools { .. } => "no_tools",
            AgentError::Tool { .. } => "tool_unavailable",
        }
    }

    /// The error as an `agent.response.error` payload (table in the [module
    /// docs](self)).
    pub fn to_error_payload(&self) -> ErrorPayload {
        match self {
            AgentError::InvalidInput(m) => ErrorPayload::invalid_request(m.clone()),
            AgentError::Model { error, .. } => {
                let code = match error.kind() {
                    ModelErrorKind::Timeout => ErrorCode::AgentTimeout,
                    ModelErrorKind::Auth => ErrorCode::AuthFailure,
                    _ => ErrorCode::AgentUnavailable,
                };
                let mut p = ErrorPayload::new(code, self.to_string());
                p.retryable = error.kind().is_retryable();
                if let Some(source) = std::error::Error::source(error) {
                    p.cause = Some(source.to_string());
                }
                p
            }
            AgentError::MaxSteps { .. } => {
                ErrorPayload::new(ErrorCode::AgentTimeout, self.to_string())
            }
            AgentError::Memory(e) | AgentError::Registry(e) => {
                ErrorPayload::new(ErrorCode::TransportFailure, e.to_string()).retryable()
            }
            AgentError::NoTools { .. } => {
                ErrorPayload::new(ErrorCode::AgentUnavailable, self.to_string()).retryable()
            }
            AgentError::Tool { error, .. } => {
                let code = match error.code {
                    ErrorCode::AgentTimeout => ErrorCode::AgentTimeout,
                    _ => ErrorCode::AgentUnavailable,
                };
                ErrorPayload::new(code, self.to_string()).retryable()
            }
        }
    }
}

/// A failed run's span says why: `error.type` is the run's outcome
/// ([`AgentError::outcome`]).
impl weft_bus::trace::ErrorType for AgentError {
    fn error_type(&self) -> std::borrow::Cow<'_, str> {
        self.outcome().into()
    }
}

impl From<AgentError> for ErrorPayload {
    fn from(e: AgentError) -> Self {
        e.to_error_payload()
    }
}

/// A served agent as `weft agent list` shows it: the registry entries of kind `agent`
/// grouped by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Versions its instances run, sorted.
    pub versions: Vec<String>,
    /// Number of live instances.
    pub instances: usize,
    /// Services it manages (from the registry metadata `manages`).
    pub manages: Vec<String>,
    /// Model provider (metadata `model`), e.g. `openai` or `scripted`.
    pub model: String,
    /// Model id (metadata `model_id`), e.g. `gpt-4o-mini`, when the provider has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
}

/// Every live agent in the registry, sorted by name.
///
/// # Errors
/// [`ErrorKind::Kv`] when the registry cannot be read.
pub async fn list(bus: &Bus) -> weft_bus::Result<Vec<AgentInfo>> {
    let listing = Registry::open(bus).await?.listing_kind(Kind::Agent).await?;
    Ok(listing.into_iter().map(AgentInfo::from).collect())
}

impl From<Listing> for AgentInfo {
    /// An agent's registry listing, its `manages`, `model` and `model_id` read from
    /// the metadata.
    fn from(l: Listing) -> Self {
        let meta_str = |k: &str| l.metadata.get(k).and_then(Value::as_str).map(str::to_owned);
        AgentInfo {
            manages: l
                .metadata
                .get("manages")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            model: meta_str("model").unwrap_or_default(),
            model_id: meta_str("model_id"),
            name: l.name,
            description: l.description,
            versions: l.versions,
            instances: l.instances,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::scripted::ScriptedModel;
    use serde_json::json;

    #[test]
    fn chat_input_shapes() {
        let r =
            ChatRequest::from_payload(&json!({"message": "hi", "session_id": "s1"}), None).unwrap();
        assert_eq!(r.message, "hi");
        assert_eq!(r.session_id.unwrap().as_str(), "s1");
        let r = ChatRequest::from_payload(&json!("hello"), Some("env-s")).unwrap();
        assert_eq!(r.message, "hello");
        assert_eq!(r.session_id.unwrap().as_str(), "env-s");
        let r = ChatRequest::from_payload(&json!({"text": "yo"}), None).unwrap();
        assert_eq!(r.message, "yo");
        assert!(r.session_id.is_none());
        for bad in [
            json!(42),
            json!({}),
            json!({"message": 1}),
            json!({"message": "  "}),
            json!({"message": "x", "session_id": "a.b"}),
            json!({"message": "x", "session_id": 3}),
        ] {
            let e = ChatRequest::from_payload(&bad, None).unwrap_err();
            assert!(matches!(e, AgentError::InvalidInput(_)), "{bad}: {e}");
            assert_eq!(e.to_error_payload().code, ErrorCode::InvalidRequest);
        }
    }

    /// In-process tools: `add` sums `a` and `b`; `fail` always fails.
    struct Calc;

    #[async_trait::async_trait]
    impl Tools for Calc {
        fn specs(&self) -> Vec<ToolSpec> {
            ["add", "fail"]
                .iter()
                .map(|n| ToolSpec {
                    name: (*n).into(),
                    description: String::new(),
                    parameters: json!({"type": "object"}),
                })
                .collect()
        }
        async fn call(&self, name: &str, arguments: &Value) -> ToolOutcome {
            match name {
                "add" => Ok(
                    json!({"sum": arguments["a"].as_i64().unwrap_or(0) + arguments["b"].as_i64().unwrap_or(0)}),
                ),
                _ => Err(ErrorPayload::new(ErrorCode::Other("NOPE".into()), "no")),
            }
        }
    }

    fn agent(script: Value) -> Agent {
        Agent::new("calc").model(Arc::new(
            ScriptedModel::from_json(&script.to_string()).unwrap(),
        ))
    }

    #[tokio::test]
    async fn the_loop_calls_tools_and_feeds_results_back() {
        let a = agent(
            json!({"rules": [{"match": "add (?P<a>\\d+) and (?P<b>\\d+)", "turns": [
                {"tool_calls": [{"name": "add", "arguments": {"a": "{{match.a}}", "b": 2}},
                                {"name": "fail"},
                                {"name": "nope"}]},
                {"content": "sum={{result.0./sum}} err={{result.1./error/code}} unknown={{result.2./error/code}}"}
            ]}]}),
        );
        let run = a
            .run(Arc::new(Calc), Vec::new(), "add 40 and 2")
            .await
            .unwrap();
        // "40" is a string, so only b counts.
        assert_eq!(run.reply, "sum=2 err=NOPE unknown=NO_HANDLER");
        assert_eq!(run.steps, 2);
        assert_eq!(run.tool_calls.len(), 3);
        assert_eq!(run.tool_calls[0].result, Some(json!({"sum": 2})));
        assert!(run.tool_calls[1].error.is_some());
        // user, assistant(tool calls), 3 tool results, final assistant
        assert_eq!(run.messages.len(), 6);
        assert_eq!(run.messages[0], Message::user("add 40 and 2"));
    }

    #[tokio::test]
    async fn the_loop_stops_at_max_steps_without_calling_the_last_tools() {
        let a = agent(json!({"rules": [{"match": ".*", "turns": [
            {"tool_calls": [{"name": "add", "arguments": {}}]}
        ]}]}))
        .max_steps(3);
        let e = a.run(Arc::new(Calc), Vec::new(), "loop").await.unwrap_err();
        assert!(
            matches!(e, AgentError::MaxSteps { max_steps: 3, .. }),
            "{e}"
        );
        assert_eq!(e.to_error_payload().code, ErrorCode::AgentTimeout);
    }

    #[tokio::test]
    async fn no_model_is_a_config_error() {
        let e = Agent::new("x")
            .run(Arc::new(Calc), Vec::new(), "hi")
            .await
            .unwrap_err();
        match e {
            AgentError::Model { error, .. } => assert_eq!(error.kind(), ModelErrorKind::Config),
            other => panic!("{other}"),
        }
    }

    /// Answers "ok" and reports 12 input and 3 output tokens.
    struct Counted;

    #[async_trait::async_trait]
    impl Model for Counted {
        fn name(&self) -> &str {
            "counted"
        }
        async fn complete(&self, _request: &ModelRequest) -> Result<ModelTurn, ModelError> {
            Ok(ModelTurn {
                content: Some("ok".into()),
                usage: Some(crate::model::Usage {
                    input_tokens: 12,
                    output_tokens: 3,
                }),
                ..ModelTurn::default()
            })
        }
    }

    #[tokio::test]
    async fn reported_tokens_are_counted_by_provider_and_kind() {
        let tokens = &metrics::agents().model_tokens;
        let input = tokens.with_label_values(&["counted", "input"]);
        let output = tokens.with_label_values(&["counted", "output"]);
        let (i0, o0) = (input.get(), output.get());
        let agent = Agent::new("t").model(Arc::new(Counted));
        agent.run(Arc::new(Calc), Vec::new(), "hi").await.unwrap();
        agent.run(Arc::new(Calc), Vec::new(), "hi").await.unwrap();
        assert_eq!((input.get() - i0, output.get() - o0), (24, 6));
    }

    #[tokio::test]
    async fn run_streaming_reports_tool_calls_results_and_text_in_order() {
        let agent = agent(json!({"rules": [{"match": ".*", "turns": [
            {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}, {"name": "fail"}]},
            {"content": "five"}]}]}));
        let events = std::sync::Mutex::new(Vec::new());
        let sink = |e: RunEvent| events.lock().unwrap().push(e);
        let run = agent
            .run_streaming(Arc::new(Calc), Vec::new(), "go", &sink)
            .await
            .unwrap();
        assert_eq!(run.reply, "five");
        let events = events.into_inner().unwrap();
        let kinds: Vec<Value> = events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap()["type"].clone())
            .collect();
        assert_eq!(
            kinds,
            [
                json!("tool_call"),
                json!("tool_result"),
                json!("tool_call"),
                json!("tool_result"),
                json!("text")
            ]
        );
        assert!(
            matches!(&events[1], RunEvent::ToolResult { result: Some(r), .. } if r["sum"] == 5)
        );
        assert!(
            matches!(&events[3], RunEvent::ToolResult { error: Some(e), .. } if e.message == "no")
        );
        assert_eq!(
            events[4],
            RunEvent::Text {
                text: "five".into()
            }
        );
    }

    #[tokio::test]
    async fn guardrails_and_tool_layers_wrap_every_tool_call() {
        // The model asks for `add` with the same arguments four times, then `fail`, then
        // answers: the fourth `add` is refused by the loop limit (3), `fail` is denied by
        // the approval policy, and a counting tool layer sees only the calls that ran.
        let script = json!({"rules": [{"match": ".*", "turns": [
            {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]},
            {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]},
            {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]},
            {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]},
            {"tool_calls": [{"name": "fail"}]},
            {"content": "done"}]}]});
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let layer = tower::layer::layer_fn(move |inner: ToolService| {
            let counter = counter.clone();
            tower::service_fn(move |req: ToolRequest| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                inner.clone().oneshot(req)
            })
        });
        let a = agent(script)
            .max_steps(8)
            .approve(["fa*"])
            .tool_layer(layer);
        let run = a.run(Arc::new(Calc), Vec::new(), "go").await.unwrap();
        assert_eq!(run.reply, "done");
        let codes: Vec<Option<String>> = run
            .tool_calls
            .iter()
            .map(|r| r.error.as_ref().map(|e| e.code.as_str().to_owned()))
            .collect();
        assert_eq!(
            codes,
            [
                None,
                None,
                None,
                Some("LOOP_LIMIT".into()),
                Some("APPROVAL_REQUIRED".into())
            ]
        );
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "refused calls never reach the layer"
        );
        // The refusals went back to the model as tool results.
        let tool_results: Vec<&Message> = run
            .messages
            .iter()
            .filter(|m| m.role == crate::model::Role::Tool)
            .collect();
        assert!(
            tool_results[3].content.contains("already called 3 times"),
            "{}",
            tool_results[3].content
        );
        assert!(
            tool_results[4]
                .content
                .contains("needs a person's approval"),
            "{}",
            tool_results[4].content
        );

        // A Rust policy decides per call.
        let a = agent(json!({"rules": [{"match": ".*", "turns": [
            {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 2}}]}, {"content": "ok"}]}]}))
        .approval(|req| {
            if req.call.arguments["a"] == 2 {
                Approval::Deny("no twos".into())
            } else {
                Approval::Allow
            }
        });
        let run = a.run(Arc::new(Calc), Vec::new(), "go").await.unwrap();
        assert_eq!(run.tool_calls[0].error.as_ref().unwrap().message, "no twos");
    }
}
