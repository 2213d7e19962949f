//! Built-in tools (DESIGN §16): `plan` and `delegate`, plain tools in the one tool
//! loop beside the managed services' endpoints, through the same guardrails and tool
//! layers. An agent offers them when asked to ([`Agent::builtins`](crate::Agent::builtins)).
//!
//! | tool | arguments | does |
//! |---|---|---|
//! | `plan` | `{"steps": [{"task", "status": "pending" \| "in_progress" \| "done"}]}` | replaces the session's plan; stored in KV (`<agent>.<session>.plan` in the memory bucket, [`Plan`]) and shown back in the system prompt on the session's later turns. Without a session it holds for the run only. |
//! | `delegate` | `{"agent"?, "url"?, "task"}` | `agent` a registered agent: invokes its `chat` with the task; `url` (`http(s)://…`): the A2A bridge service `a2a` (endpoint `send`, DESIGN §14), `NO_HANDLER` while it is not running; neither: an ephemeral sub-agent with the same model and the same service tools, no memory and no built-ins, so delegation never recurses |
//!
//! The names have no `_`, so they never clash with a service's tools (`<service>_<endpoint>`).
//!
//! In a run without the bus ([`Agent::run`](crate::Agent::run)), `plan` holds for the
//! run and `delegate` reaches sub-agents only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use weft_bus::envelope::{ErrorCode, ErrorPayload};
use weft_bus::registry::Kind;
use weft_bus::{Bus, Envelope, Target};

use crate::memory::{Memory, Plan, SessionId};
use crate::model::{Model, ToolSpec};
use crate::tool::{ToolOutcome, Tools};

/// The `plan` tool's name.
pub const PLAN: &str = "plan";

/// The `delegate` tool's name.
pub const DELEGATE: &str = "delegate";

/// The A2A bridge endpoint `delegate` sends URLs to (DESIGN §14).
pub const A2A_SEND: &str = "a2a.send";

/// A built-in tool an agent may offer; `plan` or `delegate` in definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// `plan`: keep a plan of steps per session.
    Plan,
    /// `delegate`: hand a task to another agent, a remote A2A agent or a sub-agent.
    Delegate,
}

/// Where `plan` keeps the plan.
pub(crate) struct PlanSlot {
    /// The bucket and key, when the chat has a session.
    pub(crate) stored: Option<(Memory, String, SessionId)>,
    /// The plan now (what was loaded, then what the model set).
    pub(crate) current: Mutex<Option<Plan>>,
}

/// What `delegate` needs.
pub(crate) struct DelegateCtx {
    /// None in a run without the bus ([`Agent::run`](crate::Agent::run)): then only
    /// the sub-agent form works.
    pub(crate) bus: Option<Bus>,
    /// The delegating agent (it may not delegate to itself).
    pub(crate) agent: String,
    pub(crate) model: Arc<dyn Model>,
    pub(crate) max_steps: usize,
    pub(crate) timeout: Duration,
}

/// The service tools plus the agent's built-ins.
pub(crate) struct WithBuiltins {
    pub(crate) inner: Arc<dyn Tools>,
    pub(crate) plan: Option<PlanSlot>,
    pub(crate) delegate: Option<DelegateCtx>,
}

/// The JSON Schema of `plan`'s arguments.
pub fn plan_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"steps": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "task": {"type": "string", "description": "What to do"},
                "status": {"type": "string", "enum": ["pending", "in_progress", "done"]}
            },
            "required": ["task", "status"]
        }}},
        "required": ["steps"]
    })
}

/// The JSON Schema of `delegate`'s arguments.
pub fn delegate_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "agent": {"type": "string", "description": "A registered agent to hand the task to"},
            "url": {"type": "string", "description": "A remote A2A agent's URL (http or https)"},
            "task": {"type": "string", "description": "The task, as a message"}
        },
        "required": ["task"]
    })
}

#[async_trait::async_trait]
impl Tools for WithBuiltins {
    fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = self.inner.specs();
        if self.plan.is_some() {
            specs.push(ToolSpec {
                name: PLAN.into(),
                description: "Write down or update your plan for this conversation: the whole list of steps with their status. You see it again on later turns.".into(),
                parameters: plan_schema(),
            });
        }
        if self.delegate.is_some() {
            specs.push(ToolSpec {
                name: DELEGATE.into(),
                description: "Hand a task to another agent (by name), to a remote A2A agent (by url), or, with neither, to a sub-agent with your tools; returns its answer.".into(),
                parameters: delegate_schema(),
            });
        }
        specs
    }

    async fn call(&self, name: &str, arguments: &Value) -> ToolOutcome {
        self.call_keyed(name, arguments, None).await
    }

    async fn call_keyed(&self, name: &str, arguments: &Value, key: Option<&str>) -> ToolOutcome {
        match (name, &self.plan, &self.delegate) {
            (PLAN, Some(slot), _) => plan(slot, arguments).await,
            (DELEGATE, _, Some(ctx)) => delegate(ctx, self.inner.clone(), arguments, key).await,
            _ => self.inner.call_keyed(name, arguments, key).await,
        }
    }
}

/// `plan`: replaces the plan.
async fn plan(slot: &PlanSlot, arguments: &Value) -> ToolOutcome {
    let plan: Plan = serde_json::from_value(arguments.clone()).map_err(|e| {
        ErrorPayload::invalid_request(format!(
            "plan takes {{\"steps\": [{{\"task\", \"status\": pending | in_progress | done}}]}}: {e}"
        ))
    })?;
    let kept = match &slot.stored {
        Some((memory, agent, session)) => {
            memory.save_plan(agent, session, &plan).await.map_err(|e| {
                ErrorPayload::new(ErrorCode::TransportFailure, e.to_string()).retryable()
            })?;
            "kept for this session"
        }
        None => "kept for this run only (no session)",
    };
    let steps = plan.steps.len();
    *slot.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan);
    Ok(json!({"steps": steps, "kept": kept}))
}

/// `delegate`: to an agent, a URL, or a sub-agent. Over the bus the request carries
/// `key` (the journaled step's idempotency key) as its `event_id`, so a delegation
/// repeated after a crash reaches the same run of the other agent.
async fn delegate(
    ctx: &DelegateCtx,
    tools: Arc<dyn Tools>,
    arguments: &Value,
    key: Option<&str>,
) -> ToolOutcome {
    let task = arguments["task"]
        .as_str()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            ErrorPayload::invalid_request("delegate needs a task (a non-empty string)")
        })?;
    let bus_or = |form: &str| {
        ctx.bus.as_ref().ok_or_else(|| {
            ErrorPayload::new(
                ErrorCode::NoHandler,
                format!("delegating to {form} needs the bus, and this run has none; delegate without `agent` and `url` to a sub-agent"),
            )
        })
    };
    if let Some(url) = arguments["url"].as_str() {
        let bus = bus_or("a URL")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ErrorPayload::invalid_request(format!(
                "delegate's url must be http(s)://…, not {url:?}"
            )));
        }
        let target: Target = A2A_SEND
            .parse()
            .map_err(|e| ErrorPayload::invalid_request(format!("{e}")))?;
        return invoke(bus, ctx, &target, json!({"url": url, "message": task}), key)
            .await
            .map_err(|e| match e.code {
                ErrorCode::NoHandler | ErrorCode::AgentUnavailable => ErrorPayload::new(
                    ErrorCode::NoHandler,
                    format!(
                        "cannot delegate to {url}: the A2A bridge service `a2a` is not running ({})",
                        e.message
                    ),
                ),
                _ => e,
            });
    }
    if let Some(agent) = arguments["agent"].as_str() {
        let bus = bus_or("an agent")?;
        if agent == ctx.agent {
            return Err(ErrorPayload::invalid_request(
                "an agent cannot delegate to itself; do the task, or delegate without `agent` to a sub-agent",
            ));
        }
        let registered = bus
            .registry_watch()
            .await
            .map(|r| r.newest(Kind::Agent, agent).is_some())
            .unwrap_or(false);
        if !registered {
            return Err(ErrorPayload::new(
                ErrorCode::NoHandler,
                format!("there is no agent named {agent:?} in the registry"),
            ));
        }
        let target: Target = agent
            .parse()
            .map_err(|e| ErrorPayload::invalid_request(format!("{e}")))?;
        let out = invoke(bus, ctx, &target, json!({"message": task}), key).await?;
        return Ok(json!({"agent": agent, "reply": out["reply"]}));
    }
    // A sub-agent: same model and service tools, no memory, no built-ins.
    let sub = crate::Agent::new(format!("{}-sub", ctx.agent))
        .model(ctx.model.clone())
        .max_steps(ctx.max_steps)
        .system_prompt(format!(
            "You are a sub-agent of {}. Do the task you are given with your tools and answer with the result only.",
            ctx.agent
        ));
    let run = sub
        .run(tools, Vec::new(), task)
        .await
        .map_err(|e| e.to_error_payload())?;
    Ok(json!({"agent": "sub-agent", "reply": run.reply, "tool_calls": run.tool_calls.len()}))
}

/// One request-reply to `target` with `payload`, as the delegating agent.
async fn invoke(
    bus: &Bus,
    ctx: &DelegateCtx,
    target: &Target,
    payload: Value,
    key: Option<&str>,
) -> ToolOutcome {
    let mut env = Envelope::request(target.to_string(), payload);
    env.from = Some(ctx.agent.clone());
    if let Some(key) = key {
        env.event_id = key.to_owned();
    }
    bus.request(target, env, ctx.timeout)
        .await
        .map(|reply| reply.payload.unwrap_or(Value::Null))
        .map_err(|e| ErrorPayload::from(&e))
}
