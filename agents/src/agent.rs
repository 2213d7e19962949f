//! Agents: the definition, the tool loop every provider shares, and serving on the bus.
//!
//! An agent (DESIGN §5) is a service of kind `agent` whose default endpoint is `chat`:
//!
//! - input: `{"message": "...", "session_id"?: "..."}`, a bare JSON string, or
//!   `{"text": "..."}`; without `session_id` in the payload, the request envelope's
//!   `session_id` is used;
//! - input `run_id` beside `message`: the message answers the approval that run waits
//!   on ([`crate::durable`]);
//! - output ([`ChatReply`]): `{"reply", "agent", "tool_calls": [{"name", "arguments",
//!   "result" | "error"}], "run_id", "status", "pending"?}` with `run_id` a UUIDv5 of
//!   agent and request (the run in the journal, [`crate::durable`]) and `status`
//!   `completed`, or `input_required` while a tool call waits for a person;
//! - streaming (DESIGN §16): `chat` is a streaming endpoint. A streaming caller
//!   (`weft call --stream`, `POST /v1/invoke/{agent}/stream`) gets the run as it
//!   happens, one `delta` frame per [`RunEvent`] (`{"type": "text", "text"}` pieces of
//!   the model's text as the provider streams them, `tool_call` and `tool_result`),
//!   then the reply as the final frame; a plain caller gets the reply only. A
//!   streaming caller that goes away cancels the run and its model request (journaled
//!   as cancelled).
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
//! | `Journal`, `Moved` (the run journal or queue failed; another instance took the run) | `TRANSPORT_FAILURE` | yes |
//! | `Stored` (the same request again: the run's stored error) | as stored | as stored |
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
use crate::durable::{self, Decision, Lease, Outcome, Pending, RunInput, RunLog, Runtime};
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
use weft_bus::consumer::{self, Delivery, DeliveryError, DurableConfig};
use weft_bus::runs::{EntryEvent, RunKind, RunRef, RunState, RunStatus};

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
    lease: Duration,
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
            lease: durable::DEFAULT_LEASE,
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
    /// person's approval ([`needs_approval`]): a served agent's run pauses until
    /// someone approves or denies ([`crate::durable`]); a run in process, which cannot
    /// pause, is refused with a reason the model reads. Replaces an earlier
    /// [`Agent::approval`]. Default none: every tool runs.
    pub fn approve<I, S>(self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns = patterns.into_iter().map(Into::into).collect();
        self.approval_policy(needs_approval(patterns))
    }

    /// Decides every tool call with `policy` ([`Approval::Allow`],
    /// [`Approval::Deny`] with a reason the model reads, or [`Approval::Ask`] a
    /// person, as [`Agent::approve`] does). Replaces an earlier [`Agent::approve`].
    /// Default none: every tool runs.
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
            async move {
                tools
                    .call_keyed(
                        &req.call.name,
                        &req.call.arguments,
                        req.idempotency_key.as_deref(),
                    )
                    .await
            }
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

    /// One chat without a journal: memory, tools, the loop, memory again.
    async fn chat_inner(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        request: ChatRequest,
        events: Option<EventSink<'_>>,
    ) -> Result<ChatReply, AgentError> {
        let history = self.recall(bus, buckets, &request).await?;
        let (tools, history) = self
            .prepare(
                bus,
                buckets,
                request.session_id.as_ref(),
                request.parent,
                history,
            )
            .await?;
        let conversation = request.session_id.as_ref().map(|s| s.to_string());
        let run = self
            .run_unjournaled(
                tools,
                history,
                &request.message,
                conversation.as_deref(),
                events,
            )
            .await?;
        if let Some(session) = &request.session_id {
            self.remember(bus, buckets, session, &run).await;
        }
        Ok(run.reply())
    }

    /// The session's history (empty without a session), after checking the message.
    async fn recall(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        request: &ChatRequest,
    ) -> Result<Vec<Message>, AgentError> {
        if request.message.trim().is_empty() {
            return Err(AgentError::InvalidInput(format!(
                "the message to agent {} is empty",
                self.name
            )));
        }
        match &request.session_id {
            Some(session) => buckets
                .memory(bus, self.memory_limit, self.memory_tokens)
                .await
                .map_err(AgentError::Memory)?
                .load(&self.name, session)
                .await
                .map_err(AgentError::Memory),
            None => Ok(Vec::new()),
        }
    }

    /// The tools of one run (the managed services' endpoints, with the built-ins and
    /// the session's plan loaded) and the history it sees (with the plan shown).
    async fn prepare(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        session: Option<&SessionId>,
        parent: Option<Envelope>,
        mut history: Vec<Message>,
    ) -> Result<(Arc<dyn Tools>, Vec<Message>), AgentError> {
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
        .session_id(session.map(|s| s.to_string()))
        .parent(parent);
        let memory = match session {
            Some(s) => Some((
                buckets
                    .memory(bus, self.memory_limit, self.memory_tokens)
                    .await
                    .map_err(AgentError::Memory)?,
                s,
            )),
            None => None,
        };
        let tools = self.with_builtins(bus, Arc::new(tools), memory).await?;
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
        Ok((Arc::new(tools), history))
    }

    /// Appends `run`'s exchange to what `session`'s memory holds now, once per run
    /// ([`Memory::append`]: an attempt that stored it and died before saying so does
    /// not store it twice). Summarized when the agent summarizes. A failure is logged;
    /// the reply is sent anyway. Returns whether it was stored.
    async fn remember(&self, bus: &Bus, buckets: &Buckets, session: &SessionId, run: &Run) -> bool {
        let stored = async {
            let memory = buckets
                .memory(bus, self.memory_limit, self.memory_tokens)
                .await?;
            if !self.summarize_memory {
                return memory
                    .append(&self.name, session, &run.run_id, &run.messages)
                    .await;
            }
            if memory.holds_run(&self.name, session, &run.run_id).await? {
                return Ok(false);
            }
            let mut history = memory.load(&self.name, session).await?;
            history.extend(run.messages.iter().cloned());
            let history = self.summarized(memory, history).await;
            memory
                .save(&self.name, session, history, Some(&run.run_id))
                .await
                .map(|_| true)
        };
        match stored.await {
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!(agent = %self.name, run_id = %run.run_id, error = %e, "cannot store agent memory; the reply is sent anyway");
                false
            }
        }
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
        self.run_unjournaled(tools, history, message, None, None)
            .await
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
        self.run_unjournaled(tools, history, message, None, Some(on_event))
            .await
    }

    /// The loop without a journal (so without pauses).
    async fn run_unjournaled(
        &self,
        tools: Arc<dyn Tools>,
        history: Vec<Message>,
        message: &str,
        conversation: Option<&str>,
        events: Option<EventSink<'_>>,
    ) -> Result<Run, AgentError> {
        let run_id = uuid::Uuid::now_v7().to_string();
        match self
            .run_in(tools, history, message, conversation, events, run_id, None)
            .await?
        {
            Ended::Done(run) => Ok(run),
            Ended::Paused(_) => {
                unreachable!("a run without a journal never pauses: Approval::Ask denies there")
            }
        }
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

    /// The tool loop in an `invoke_agent {agent}` span (OpenTelemetry GenAI
    /// conventions) whose `gen_ai.conversation.id` is `conversation` (the session),
    /// journaled in `log` when there is one.
    #[allow(clippy::too_many_arguments)]
    async fn run_in(
        &self,
        tools: Arc<dyn Tools>,
        history: Vec<Message>,
        message: &str,
        conversation: Option<&str>,
        events: Option<EventSink<'_>>,
        run_id: String,
        log: Option<&mut RunLog>,
    ) -> Result<Ended, AgentError> {
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
            .run_loop(tools, history, message, run_id, events, log)
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
        mut log: Option<&mut RunLog>,
    ) -> Result<Ended, AgentError> {
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
            let turn = self
                .turn(model, &request, events, log.as_deref_mut(), step)
                .await?;
            if turn.tool_calls.is_empty() {
                let reply = turn.content.unwrap_or_default();
                request
                    .messages
                    .push(Message::assistant(reply.clone(), Vec::new()));
                tracing::debug!(steps = step, tool_calls = records.len(), "run finished");
                return Ok(Ended::Done(Run {
                    run_id,
                    agent: self.name.clone(),
                    reply,
                    tool_calls: records,
                    messages: request.messages.split_off(first_new),
                    steps: step,
                }));
            }
            if step == self.max_steps {
                break;
            }
            request.messages.push(Message::assistant(
                turn.content.unwrap_or_default(),
                turn.tool_calls.clone(),
            ));
            for (i, call) in turn.tool_calls.into_iter().enumerate() {
                let name = durable::tool_step(step, i);
                let replayed = match log.as_deref() {
                    Some(l) => l.output::<ToolCallRecord>(&name)?,
                    None => None,
                };
                let record = match replayed {
                    Some(record) => {
                        // Counted again, so the loop limit holds across a resume.
                        run.1.record(&call);
                        record
                    }
                    None => match self
                        .approval_of(&run, &call, log.as_deref_mut(), step, i)
                        .await?
                    {
                        Gate::Pause(p) => return Ok(Ended::Paused(p)),
                        Gate::Denied(record) => {
                            if let Some(l) = log.as_deref_mut() {
                                l.start(&name, tool_input(&call)).await?;
                                l.complete(&name, &record, Duration::ZERO).await?;
                            }
                            record
                        }
                        Gate::Go(approved) => {
                            self.tool(
                                &stack,
                                &run,
                                &request.tools,
                                &call,
                                events,
                                log.as_deref_mut(),
                                &name,
                                approved,
                            )
                            .await?
                        }
                    },
                };
                request
                    .messages
                    .push(Message::tool(call.id, record.content()));
                records.push(record);
            }
        }
        Err(AgentError::MaxSteps {
            agent: self.name.clone(),
            max_steps: self.max_steps,
        })
    }

    /// Model turn `step`: replayed from the journal when it holds it, else asked for
    /// and journaled.
    async fn turn(
        &self,
        model: &dyn Model,
        request: &ModelRequest,
        events: Option<EventSink<'_>>,
        log: Option<&mut RunLog>,
        step: usize,
    ) -> Result<ModelTurn, AgentError> {
        let name = durable::turn_step(step);
        let Some(log) = log else {
            return complete(model, request, events).await;
        };
        if let Some(turn) = log.output::<ModelTurn>(&name)? {
            return Ok(turn);
        }
        log.start(&name, Value::Null).await?;
        let started = Instant::now();
        match complete(model, request, events).await {
            Ok(turn) => {
                log.complete(&name, &turn, started.elapsed()).await?;
                Ok(turn)
            }
            Err(e) => {
                log.fail(&name, &e.to_error_payload()).await?;
                Err(e)
            }
        }
    }

    /// Whether tool call `i` of turn `step` may run: a journaled run whose policy
    /// asks a person pauses on step `approval_<step>_<i>` until the decision is
    /// journaled ([`crate::durable`]); a run without a journal leaves the policy to
    /// the [`ApprovalLayer`], which refuses.
    async fn approval_of(
        &self,
        (run_id, history): &(Arc<str>, Arc<CallHistory>),
        call: &ToolCall,
        log: Option<&mut RunLog>,
        step: usize,
        i: usize,
    ) -> Result<Gate, AgentError> {
        let (Some(log), Some(policy)) = (log, &self.approval) else {
            return Ok(Gate::Go(false));
        };
        let name = durable::approval_step(step, i);
        if let Some(d) = log.output::<Decision>(&name)? {
            if d.approved {
                return Ok(Gate::Go(true));
            }
            return Ok(Gate::Denied(ToolCallRecord {
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                result: None,
                error: Some(ErrorPayload::new(
                    ErrorCode::Other(guard::APPROVAL_DENIED.into()),
                    format!(
                        "{} denied this call{}; do not call it again, answer without it",
                        d.by,
                        d.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    ),
                )),
            }));
        }
        let probe = ToolRequest {
            agent: Arc::from(self.name.as_str()),
            run_id: run_id.clone(),
            call: call.clone(),
            history: history.clone(),
            idempotency_key: None,
            approved: false,
        };
        let Approval::Ask(prompt) = policy(&probe) else {
            return Ok(Gate::Go(false));
        };
        let pending = Pending {
            step: name.clone(),
            tool: call.name.clone(),
            arguments: call.arguments.clone(),
            prompt,
        };
        if !log.waiting(&name) {
            log.start(
                &name,
                json!({"tool": pending.tool, "arguments": pending.arguments, "prompt": pending.prompt}),
            )
            .await?;
            log.wait(&name, "approval").await?;
        }
        Ok(Gate::Pause(pending))
    }

    /// Runs tool call `call` (journaled as step `name` when there is a journal) and
    /// reports it to `events`.
    #[allow(clippy::too_many_arguments)]
    async fn tool(
        &self,
        stack: &ToolService,
        run: &(Arc<str>, Arc<CallHistory>),
        specs: &[ToolSpec],
        call: &ToolCall,
        events: Option<EventSink<'_>>,
        mut log: Option<&mut RunLog>,
        name: &str,
        approved: bool,
    ) -> Result<ToolCallRecord, AgentError> {
        let key = match log.as_deref_mut() {
            Some(l) => {
                l.start(name, tool_input(call)).await?;
                Some(Arc::from(durable::idempotency_key(l.id(), name)))
            }
            None => None,
        };
        if let Some(events) = events {
            events(RunEvent::ToolCall {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            });
        }
        let started = Instant::now();
        let record = self.call_tool(stack, run, specs, call, key, approved).await;
        if let Some(events) = events {
            events(RunEvent::ToolResult {
                id: call.id.clone(),
                name: record.name.clone(),
                result: record.result.clone(),
                error: record.error.clone(),
            });
        }
        if let Some(error) = record.error.as_ref().filter(|e| is_unavailable(e)) {
            if let Some(l) = log {
                l.fail(name, error).await?;
            }
            return Err(AgentError::Tool {
                agent: self.name.clone(),
                tool: record.name.clone(),
                error: Box::new(error.clone()),
            });
        }
        if let Some(l) = log {
            l.complete(name, &record, started.elapsed()).await?;
        }
        Ok(record)
    }

    async fn call_tool(
        &self,
        stack: &ToolService,
        (run_id, history): &(Arc<str>, Arc<CallHistory>),
        specs: &[ToolSpec],
        call: &ToolCall,
        idempotency_key: Option<Arc<str>>,
        approved: bool,
    ) -> ToolCallRecord {
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
                idempotency_key,
                approved,
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
        let (result, error) = match result {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        ToolCallRecord {
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            result,
            error,
        }
    }

    /// Sets how long an instance's hold on a run lasts without renewal: past it,
    /// another instance takes the run over ([`crate::durable`]). At least 300 ms.
    /// Default [`durable::DEFAULT_LEASE`] (10 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// Starts serving the agent: a [`Service`] of kind [`Kind::Agent`] with the default
    /// endpoint `chat` (input and output schemas included) and registry metadata
    /// `{"manages": [...], "model": <provider>, "model_id"?: <model>}`. Every chat is a
    /// journaled run ([`crate::durable`]); the instance also takes over runs whose
    /// lease ran out and resumes approved ones (consumer `agent_<name>` of the run
    /// queue).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidSubject`] for a bad agent or managed service name;
    /// [`ErrorKind::Other`] when no model is set; [`ErrorKind::JetStream`] when the
    /// journal or the run queue is missing (`weft up` creates them); otherwise as
    /// [`Service::serve`].
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
        let rt = Runtime::open(bus, &self.name, self.lease).await?;
        // Every chat of this service shares the KV handles, opened on first use.
        let agent = Arc::new(self);
        let buckets = Arc::new(Buckets::default());
        let wakes = {
            let mut d = DurableConfig::on_stream(
                format!("agent_{}", agent.name),
                bus.names().runq_stream.clone(),
                vec![rt.queue.wake_subject(RunKind::Agent, &agent.name)],
            );
            d.ack_wait = agent.lease;
            d.max_deliver = 1000;
            d.concurrency = 16;
            let (a, b, r, bus2) = (agent.clone(), buckets.clone(), rt.clone(), bus.clone());
            consumer::start(bus, d, move |d: Delivery| {
                let (a, b, r, bus) = (a.clone(), b.clone(), r.clone(), bus2.clone());
                async move { a.on_wake(&bus, &b, &r, d).await }
            })
            .await?
        };
        let handler = move |req: Request, out: StreamWriter| {
            let (agent, buckets, rt) = (agent.clone(), buckets.clone(), rt.clone());
            async move { agent.handle(req, &buckets, &rt, out).await }
        };
        Ok(service
            .endpoint(
                Endpoint::streaming(CHAT_ENDPOINT, handler)
                    .description("Chat with the agent: send a message, get its reply and the tools it called")
                    .input_schema(chat_input_schema())
                    .output_schema(chat_output_schema())
                    .timeout(run_timeout),
            )
            .default_endpoint(CHAT_ENDPOINT)
            .serve(bus)
            .await?
            .with_consumer(wakes))
    }

    /// Serves one `chat`: a streaming caller gets the run's events as `delta` frames
    /// ([`RunEvent`]) and the reply as the final frame; a plain caller the reply only.
    /// A caller that goes away cancels the run (journaled as cancelled).
    async fn handle(
        &self,
        req: Request,
        buckets: &Buckets,
        rt: &Runtime,
        out: StreamWriter,
    ) -> Result<Value, ErrorPayload> {
        if !out.is_streaming() {
            return self.handle_events(req, buckets, rt, None).await;
        }
        let run_id = durable::run_id(&self.name, &req.envelope.event_id);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
        let run = async move {
            let sink = move |event: RunEvent| {
                let _ = tx.send(event);
            };
            self.handle_events(req, buckets, rt, Some(&sink)).await
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
            () = out.cancelled() => {
                if let Ok(run) = RunRef::new(RunKind::Agent, &self.name, &run_id) {
                    durable::cancel(rt, &run, "the caller cancelled the chat").await;
                }
                Err(WriteError::Cancelled.into())
            }
        }
    }

    async fn handle_events(
        &self,
        req: Request,
        buckets: &Buckets,
        rt: &Runtime,
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
        let event_id = req.envelope.event_id.clone();
        request.parent = Some(req.envelope);
        let result = self
            .chat_journaled(&req.bus, buckets, rt, request, &event_id, events)
            .await;
        record_run(&self.name, &result);
        let reply = result.map_err(|e| e.to_error_payload())?;
        serde_json::to_value(reply).map_err(|e| {
            ErrorPayload::new(
                ErrorCode::CodecFailure,
                format!("cannot encode the reply: {e}"),
            )
        })
    }

    /// One chat as a journaled run ([`crate::durable`]): run id from the request's
    /// `event_id`; a run that exists answers from its journal (its reply, its error,
    /// its pending approval), is waited for while it runs elsewhere, and is retried
    /// when it failed with a retryable error. A chat naming a waiting `run_id` is a
    /// person's answer to its approval.
    async fn chat_journaled(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        rt: &Runtime,
        request: ChatRequest,
        event_id: &str,
        events: Option<EventSink<'_>>,
    ) -> Result<ChatReply, AgentError> {
        let invalid = |e: weft_bus::subject::SubjectError| AgentError::InvalidInput(e.to_string());
        if let Some(id) = &request.run_id {
            let run = RunRef::new(RunKind::Agent, &self.name, id).map_err(invalid)?;
            let by = request
                .parent
                .as_ref()
                .and_then(|p| p.user_id.clone())
                .unwrap_or_else(|| "chat".into());
            let deny = (!durable::is_yes(&request.message)).then_some(request.message.as_str());
            durable::decide(rt, &run, &by, deny).await?;
            return self.settle(rt, &run).await;
        }
        let run = RunRef::new(
            RunKind::Agent,
            &self.name,
            &durable::run_id(&self.name, event_id),
        )
        .map_err(invalid)?;
        if let Some(state) = rt.state(&run).await? {
            return self.rejoin(bus, buckets, rt, state, events).await;
        }
        let history = self.recall(bus, buckets, &request).await?;
        let input = RunInput {
            message: request.message,
            session_id: request.session_id.map(|s| s.to_string()),
            history,
            parent: request.parent,
        };
        let lease = rt.hold(&run).await?;
        match RunLog::begin(rt, &run, &input, self.definition()).await? {
            Ok(log) => self.drive(bus, buckets, rt, log, lease, events).await,
            Err(state) => {
                drop(lease);
                self.rejoin(bus, buckets, rt, state, events).await
            }
        }
    }

    /// What the definition of a run records: model, prompt, limits.
    fn definition(&self) -> Value {
        json!({
            "version": self.version,
            "model": self.model.as_ref().map(|m| m.name()),
            "model_id": self.model.as_ref().and_then(|m| m.model_id()),
            "system_prompt": self.system_prompt,
            "manages": self.manages,
            "max_steps": self.max_steps,
        })
    }

    /// A caller of run `state`, which exists: its stored outcome, or its retry.
    async fn rejoin(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        rt: &Runtime,
        state: RunState,
        events: Option<EventSink<'_>>,
    ) -> Result<ChatReply, AgentError> {
        let run = state.run.clone();
        match durable::outcome(rt, &self.name, &state).await? {
            Outcome::Failed(error) if error.retryable => {
                let lease = rt.hold(&run).await?;
                let mut log = RunLog::resume(rt, state);
                let attempt = log.state.retries + 1;
                log.run_event(attempt, EntryEvent::RetryRequested { by: rt.by.clone() })
                    .await?;
                tracing::info!(agent = %self.name, run = %run.id, "the same request came again for a run that failed with a retryable error; retrying it");
                self.drive(bus, buckets, rt, log, lease, events).await
            }
            Outcome::Running => self.settle(rt, &run).await,
            other => other.into_reply(&run),
        }
    }

    /// Waits for run `run` (driven elsewhere) to end or to wait for a person.
    async fn settle(&self, rt: &Runtime, run: &RunRef) -> Result<ChatReply, AgentError> {
        let state = durable::follow(rt, run, self.run_timeout).await?;
        let Some(state) = state else {
            return Err(AgentError::Journal(format!("run {run} has no entries")));
        };
        durable::outcome(rt, &self.name, &state)
            .await?
            .into_reply(run)
    }

    /// Drives run `log` (whose lease is held) to its end or its next pause, and
    /// journals that: a completed run's memory and reply, a failed run's error; then
    /// announces it ([`durable::RUN_COMPLETED`]). When another instance took the run
    /// over meanwhile, waits for it instead.
    async fn drive(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        rt: &Runtime,
        mut log: RunLog,
        lease: Lease,
        events: Option<EventSink<'_>>,
    ) -> Result<ChatReply, AgentError> {
        let run = log.state.run.clone();
        let attempt = log.state.retries + 1;
        let ended = self.drive_steps(bus, buckets, &mut log, events).await;
        let ended = match ended {
            Err(AgentError::Moved { .. }) => {
                drop(lease);
                tracing::info!(agent = %self.name, run = %run.id, "another instance took the run over; following it");
                return self.settle(rt, &run).await;
            }
            other => other,
        };
        let result = match ended {
            Ok(Ended::Paused(pending)) => {
                lease.release().await;
                return Ok(durable::input_required(&self.name, &run.id, pending));
            }
            Ok(Ended::Done(run)) => {
                let reply = run.reply();
                let output = serde_json::to_value(&reply).unwrap_or(Value::Null);
                log.run_event(attempt, EntryEvent::RunCompleted { output })
                    .await
                    .map(|()| reply)
            }
            Err(e) => {
                let error = e.to_error_payload();
                if let Err(j) = log
                    .run_event(attempt, EntryEvent::RunFailed { error })
                    .await
                {
                    tracing::warn!(agent = %self.name, run = %run.id, error = %j, "cannot journal the run's failure");
                }
                Err(e)
            }
        };
        if let Err(AgentError::Moved { .. }) = &result {
            drop(lease);
            return self.settle(rt, &run).await;
        }
        // Announced before the lease is let go: a driver that dies in between leaves
        // the lease to run out, and the wake then announces the run (`on_wake`).
        let wire = result
            .as_ref()
            .map_err(AgentError::to_error_payload)
            .cloned();
        durable::announce(bus, &self.name, &run.id, &wire).await;
        lease.release().await;
        result
    }

    /// The steps of run `log` from its input: tools, the loop, memory.
    async fn drive_steps(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        log: &mut RunLog,
        events: Option<EventSink<'_>>,
    ) -> Result<Ended, AgentError> {
        let input = log.input()?;
        let session = input
            .session_id
            .as_deref()
            .map(str::parse::<SessionId>)
            .transpose()
            .map_err(|e| AgentError::InvalidInput(e.to_string()))?;
        let (tools, history) = self
            .prepare(bus, buckets, session.as_ref(), input.parent, input.history)
            .await?;
        let run_id = log.id().to_owned();
        let ended = self
            .run_in(
                tools,
                history,
                &input.message,
                input.session_id.as_deref(),
                events,
                run_id,
                Some(&mut *log),
            )
            .await?;
        let Ended::Done(run) = ended else {
            return Ok(ended);
        };
        if let Some(session) = &session
            && log.output::<Value>(durable::MEMORY_STEP)?.is_none()
        {
            log.start(durable::MEMORY_STEP, Value::Null).await?;
            let started = Instant::now();
            let saved = self.remember(bus, buckets, session, &run).await;
            log.complete(
                durable::MEMORY_STEP,
                &json!({"saved": saved}),
                started.elapsed(),
            )
            .await?;
        }
        Ok(Ended::Done(run))
    }

    /// A wake of one of this agent's runs ([`crate::durable`]): a run whose lease ran
    /// out is taken over (or, when it ended meanwhile, announced), an approved one
    /// resumed; anything else (a run that ended, waits, or whose lease someone holds)
    /// is left alone.
    async fn on_wake(
        &self,
        bus: &Bus,
        buckets: &Buckets,
        rt: &Runtime,
        d: Delivery,
    ) -> Result<(), DeliveryError> {
        let Some(id) = d.envelope.payload.as_ref().and_then(|p| p["run"].as_str()) else {
            return Err(DeliveryError::Permanent(
                "a run-queue wake without {\"run\": id}".into(),
            ));
        };
        let run = RunRef::new(RunKind::Agent, &self.name, id)
            .map_err(|e| DeliveryError::Permanent(e.to_string()))?;
        let retry = |e: AgentError| DeliveryError::Retry(e.to_string());
        let Some(state) = rt.state(&run).await.map_err(retry)? else {
            return Ok(());
        };
        let lease_ran_out = d
            .envelope
            .payload
            .as_ref()
            .and_then(|p| p["cause"].as_str())
            .is_some_and(|c| c.starts_with("lease_"));
        if lease_ran_out && matches!(state.status, RunStatus::Completed | RunStatus::Failed) {
            // Its driver journaled the end and died before announcing it (it lets go of
            // the lease only after): announce it now (stored once, by its event id).
            let ended = match durable::outcome(rt, &self.name, &state)
                .await
                .map_err(retry)?
            {
                Outcome::Completed(reply) => Ok(reply),
                Outcome::Failed(e) => Err(e),
                _ => return Ok(()),
            };
            durable::announce(bus, &self.name, &run.id, &ended).await;
            return Ok(());
        }
        if state.status != RunStatus::Running {
            return Ok(());
        }
        let held = rt
            .queue
            .lease(&run)
            .await
            .map_err(|e| DeliveryError::Retry(e.to_string()))?;
        if durable::holds(held.as_deref()) {
            return Ok(());
        }
        tracing::info!(agent = %self.name, run = %run.id, "taking the run over");
        let lease = rt.hold(&run).await.map_err(retry)?;
        let log = RunLog::resume(rt, state);
        let result = self.drive(bus, buckets, rt, log, lease, None).await;
        record_run(&self.name, &result);
        Ok(())
    }
}

/// How a run's loop ended: done, or paused for a person.
enum Ended {
    Done(Run),
    Paused(Pending),
}

/// What the approval check says about one tool call.
enum Gate {
    /// Call it; `true` when a person approved it.
    Go(bool),
    /// A person denied it: this record goes back to the model.
    Denied(ToolCallRecord),
    /// Wait for a person.
    Pause(Pending),
}

/// A tool step's journaled input.
fn tool_input(call: &ToolCall) -> Value {
    json!({"name": call.name, "arguments": call.arguments, "id": call.id})
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
    /// A run waiting for a person's approval that this message answers (payload field
    /// `run_id`): `yes`, `y`, `ok`, `approve` or `approved` approve the pending tool
    /// call, anything else denies it with the message as the reason. Served agents
    /// only ([`crate::durable`]).
    pub run_id: Option<String>,
}

impl ChatRequest {
    /// A message without a session.
    pub fn new(message: impl Into<String>) -> Self {
        ChatRequest {
            message: message.into(),
            session_id: None,
            parent: None,
            run_id: None,
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
        let (message, session, run_id) = match payload {
            Value::String(s) => (s.clone(), None, None),
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
                let run_id = match o.get("run_id") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(invalid(format!(
                            "chat input field `run_id` must be a string, not {}",
                            json_type(other)
                        )));
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
                (message, session, run_id)
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
            run_id,
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
    /// The run's id (a UUIDv5 of agent and request for a served agent, see
    /// [`durable::run_id`]; a UUIDv7 otherwise), also in the agent's logs.
    pub run_id: String,
    /// `completed`, or `input_required` when the run waits for a person to approve a
    /// tool call (then `reply` says how, and `pending` names the call).
    #[serde(default)]
    pub status: ReplyStatus,
    /// The tool call the run waits on, when `status` is `input_required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// Where the run of a [`ChatReply`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// It answered.
    #[default]
    Completed,
    /// It waits for a person ([`crate::durable`]).
    InputRequired,
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
    /// The run's id.
    pub run_id: String,
    /// The agent's name.
    pub agent: String,
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

impl Run {
    /// The run as a chat's reply.
    pub fn reply(&self) -> ChatReply {
        ChatReply {
            reply: self.reply.clone(),
            agent: self.agent.clone(),
            tool_calls: self.tool_calls.clone(),
            run_id: self.run_id.clone(),
            status: ReplyStatus::Completed,
            pending: None,
        }
    }
}

impl ToolCallRecord {
    /// The tool message content the model reads: the result as JSON text, or
    /// `{"error": {…}}` ([`error_content`]).
    pub fn content(&self) -> String {
        match (&self.result, &self.error) {
            (_, Some(e)) => error_content(e).to_string(),
            (Some(v), None) => v.to_string(),
            (None, None) => Value::Null.to_string(),
        }
    }
}

impl Outcome {
    /// A stored outcome as a chat's answer.
    fn into_reply(self, run: &RunRef) -> Result<ChatReply, AgentError> {
        match self {
            Outcome::Completed(reply) | Outcome::InputRequired(reply) => Ok(reply),
            Outcome::Failed(error) => Err(AgentError::Stored {
                run: run.id.clone(),
                error: Box::new(error),
            }),
            Outcome::Cancelled(why) => Err(AgentError::Stored {
                run: run.id.clone(),
                error: Box::new(ErrorPayload::new(ErrorCode::Other("CANCELLED".into()), why)),
            }),
            Outcome::Running => Err(AgentError::Stored {
                run: run.id.clone(),
                error: Box::new(
                    ErrorPayload::new(
                        ErrorCode::AgentTimeout,
                        format!("run {} is still running; ask again for its reply", run.id),
                    )
                    .retryable(),
                ),
            }),
        }
    }
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
    /// The run's journal (stream `<PREFIX>_RUNS`) or run queue cannot be used.
    #[error("the run journal failed: {0}")]
    Journal(String),
    /// Another instance drives the run now (its lease ran out here).
    #[error("run {run} is driven by another instance now")]
    Moved {
        /// The run.
        run: String,
    },
    /// The run's journal holds this outcome already: the same request came again.
    #[error("run {run}: {}", error.message)]
    Stored {
        /// The run.
        run: String,
        /// What it ended with.
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
            AgentError::Journal(_) => "journal_error",
            AgentError::Moved { .. } => "moved",
            AgentError::Stored { .. } => "stored",
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
            AgentError::Journal(_) | AgentError::Moved { .. } => {
                ErrorPayload::new(ErrorCode::TransportFailure, self.to_string()).retryable()
            }
            AgentError::Stored { error, .. } => (**error).clone(),
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
