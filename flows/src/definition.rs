//! Flow definitions: a trigger and ordered steps, written in Rust or loaded from JSON.
//!
//! ```json
//! {
//!   "name": "triage",
//!   "description": "Classify a new ticket, draft a reply, announce it",
//!   "trigger": "ticket.created",
//!   "steps": [
//!     { "name": "classify", "invoke": "tickets.classify", "input": "${trigger.payload}" },
//!     { "name": "draft", "agent": "support",
//!       "input": { "message": "Draft a first reply to ticket ${trigger.event_id}" } },
//!     { "name": "announce", "publish": "ticket.triaged",
//!       "input": { "classification": "${steps.classify.output}" } }
//!   ]
//! }
//! ```
//!
//! Step kinds: `invoke` (a service endpoint, `service` or `service.endpoint`), `agent`
//! (an agent's `chat`), `publish` (a durable event), `a2a` (a remote A2A agent at an
//! `http(s)://` URL, through the bridge service `a2a`, DESIGN §14: the input is the
//! message text, or `{"message", "context_id"?}`; the output `{reply, task_id,
//! context_id, state}`), `transform` (a jq expression over the run context `{run,
//! trigger, steps, input}`, checked when the flow is loaded: see [`crate::expr`]); a
//! step names exactly one. A step's
//! `input` is a JSON template (see [`crate::template`]). Unknown fields, in the flow or
//! in a step, are refused rather than ignored.
//!
//! Each step has `timeout_ms` (one attempt, default 30 000), `max_attempts` (default
//! 10), both at least 1, and `retry`, the delay before the next attempt after a
//! retryable failure (default exponential from 1 s up to 5 min with bounded jitter, so
//! 10 attempts span about 13 minutes: a few seconds or minutes of trouble do not fail a
//! run). `retry` takes the forms of [`RetryPolicy`], e.g.
//! `{"kind": "exponential", "initial_ms": 500, "max_ms": 60000}` or
//! `{"kind": "fixed", "delay_ms": 2000}`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_bus::retry::RetryPolicy;
use weft_bus::subject::{EventPattern, EventType, ServiceName, Target, validate_token};

use crate::error::FlowError;

/// The bridge endpoint `a2a` steps invoke (DESIGN §14).
pub const A2A_SEND: &str = "a2a.send";

/// What a step does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Invoke a service endpoint and keep its result as the step output.
    Invoke(Target),
    /// Ask an agent (its default `chat` endpoint); the output is the agent's reply
    /// object `{reply, agent, tool_calls, run_id}`.
    Agent(ServiceName),
    /// Publish a durable event whose payload is the step input; the output is
    /// `{event_id, sequence}`.
    Publish(EventType),
    /// Send the input to the remote A2A agent at this URL (`http(s)://…`) through the
    /// bridge endpoint `a2a.send`; the output is `{reply, task_id, context_id, state}`.
    A2a(String),
    /// Compute the output with a jq expression over the run context (`{run, trigger,
    /// steps, input}`, `input` being the step's rendered input), e.g.
    /// `[.steps.lines.output[] | .price * .qty] | add` ([`crate::expr`]).
    Transform(crate::expr::Expr),
}

impl StepKind {
    /// `invoke`, `agent`, `publish` or `a2a`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Invoke(_) => "invoke",
            StepKind::Agent(_) => "agent",
            StepKind::Publish(_) => "publish",
            StepKind::A2a(_) => "a2a",
            StepKind::Transform(_) => "transform",
        }
    }
}

/// One step of a flow.
///
/// In JSON, a step names exactly one of `invoke`, `agent`, `publish`, `a2a` or
/// `transform`; any other
/// field than those below is refused (a misspelt `inputs` is an error, not a step
/// without input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StepDefinition")]
pub struct Step {
    /// Step name (one token, unique in the flow); outputs are addressed as
    /// `${steps.<name>.output}`.
    pub name: String,
    /// What it does.
    #[serde(flatten)]
    pub kind: StepKind,
    /// The input template. Default `null`.
    #[serde(default)]
    pub input: Value,
    /// How long one attempt may take, in ms. Default 30 000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts before the step (and the run) fails. Default 10.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Delay before the next attempt after a retryable failure. Default
    /// [`default_step_retry`]: exponential from 1 s up to 5 min, bounded jitter.
    #[serde(default = "default_step_retry")]
    pub retry: RetryPolicy,
}

/// A step as written in JSON, checked into a [`Step`]: the derived decoding of the
/// flattened [`StepKind`] would take the first of two kinds and ignore unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDefinition {
    name: String,
    #[serde(default)]
    invoke: Option<Target>,
    #[serde(default)]
    agent: Option<ServiceName>,
    #[serde(default)]
    publish: Option<EventType>,
    #[serde(default)]
    a2a: Option<String>,
    #[serde(default)]
    transform: Option<crate::expr::Expr>,
    #[serde(default)]
    input: Value,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default = "default_step_retry")]
    retry: RetryPolicy,
}

impl TryFrom<StepDefinition> for Step {
    type Error = String;

    fn try_from(d: StepDefinition) -> Result<Self, String> {
        let kind = match (d.invoke, d.agent, d.publish, d.a2a, d.transform) {
            (Some(t), None, None, None, None) => StepKind::Invoke(t),
            (None, Some(a), None, None, None) => StepKind::Agent(a),
            (None, None, Some(e), None, None) => StepKind::Publish(e),
            (None, None, None, None, Some(x)) => StepKind::Transform(x),
            (None, None, None, Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "step {:?}: `a2a` is the URL of an A2A agent, http(s)://…, not {url:?}",
                        d.name
                    ));
                }
                StepKind::A2a(url)
            }
            (i, a, p, r, x) => {
                let given: Vec<&str> = [
                    ("invoke", i.is_some()),
                    ("agent", a.is_some()),
                    ("publish", p.is_some()),
                    ("a2a", r.is_some()),
                    ("transform", x.is_some()),
                ]
                .into_iter()
                .filter_map(|(k, set)| set.then_some(k))
                .collect();
                let what = if given.is_empty() {
                    "names none of them".to_owned()
                } else {
                    format!("names {}", given.join(" and "))
                };
                return Err(format!(
                    "step {:?} {what}: a step does exactly one of `invoke`, `agent`, `publish`, `a2a` or `transform`",
                    d.name
                ));
            }
        };
        Ok(Step {
            name: d.name,
            kind,
            input: d.input,
            timeout_ms: d.timeout_ms,
            max_attempts: d.max_attempts,
            retry: d.retry,
        })
    }
}

fn default_timeout_ms() -> u64 {
    30_000
}
fn default_attempts() -> u32 {
    10
}

/// The default retry policy of a step: exponential from 1 s up to 5 min, base 2,
/// bounded jitter (attempts 1–10 wait about 1, 2, 4 … 256, 300 s).
pub fn default_step_retry() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(300)).expect("1 s ≤ 5 min")
}

impl Step {
    fn new(name: impl Into<String>, kind: StepKind, input: Value) -> Self {
        Step {
            name: name.into(),
            kind,
            input,
            timeout_ms: default_timeout_ms(),
            max_attempts: default_attempts(),
            retry: default_step_retry(),
        }
    }

    /// A step invoking `target` with `input`.
    pub fn invoke(name: impl Into<String>, target: Target, input: Value) -> Self {
        Step::new(name, StepKind::Invoke(target), input)
    }

    /// A step asking `agent` with `input` (e.g. `{"message": "…"}`).
    pub fn agent(name: impl Into<String>, agent: ServiceName, input: Value) -> Self {
        Step::new(name, StepKind::Agent(agent), input)
    }

    /// A step publishing `event_type` with `input` as the payload.
    pub fn publish(name: impl Into<String>, event_type: EventType, input: Value) -> Self {
        Step::new(name, StepKind::Publish(event_type), input)
    }

    /// A step sending `input` (the message text, or `{"message", "context_id"?}`) to
    /// the remote A2A agent at `url`.
    pub fn a2a(name: impl Into<String>, url: impl Into<String>, input: Value) -> Self {
        Step::new(name, StepKind::A2a(url.into()), input)
    }

    /// A step computing its output with `expr` over the run context.
    pub fn transform(name: impl Into<String>, expr: crate::expr::Expr) -> Self {
        Step::new(name, StepKind::Transform(expr), Value::Null)
    }

    /// Sets the per-attempt timeout. Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = timeout.as_millis() as u64;
        self
    }

    /// Sets the attempts before failing. Default 10.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the delay before the next attempt. Default [`default_step_retry`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The per-attempt timeout.
    pub fn timeout_duration(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A flow: triggered by events matching `trigger`, running `steps` in order.
///
/// In JSON, fields other than those below are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// Flow name (one token).
    pub name: String,
    /// Semver version. Default `0.1.0`.
    #[serde(default = "default_version")]
    pub version: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Events that start a run, e.g. `ticket.created` or `ticket.>`.
    pub trigger: EventPattern,
    /// Ordered steps (at least one).
    pub steps: Vec<Step>,
}

fn default_version() -> String {
    "0.1.0".into()
}

impl Flow {
    /// A flow `name` triggered by `trigger`, with no steps yet.
    pub fn new(name: impl Into<String>, trigger: EventPattern) -> Self {
        Flow {
            name: name.into(),
            version: default_version(),
            description: String::new(),
            trigger,
            steps: Vec::new(),
        }
    }

    /// Sets the description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    /// Appends a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Parses and validates a JSON definition.
    ///
    /// # Errors
    /// [`FlowError::Definition`] naming what is wrong (bad JSON, an unknown field, bad
    /// token, a step doing none or two of `invoke`/`agent`/`publish`, duplicate step
    /// name, no steps, 0 `max_attempts` or `timeout_ms`, a template that refers to an
    /// unknown or later step).
    pub fn from_json(text: &str) -> Result<Flow, FlowError> {
        let flow: Flow = serde_json::from_str(text)
            .map_err(|e| FlowError::Definition(format!("invalid flow definition: {e}")))?;
        flow.validate()?;
        Ok(flow)
    }

    /// Checks names and step references.
    ///
    /// # Errors
    /// [`FlowError::Definition`] naming what is wrong.
    pub fn validate(&self) -> Result<(), FlowError> {
        let def = |m: String| FlowError::Definition(format!("flow {}: {m}", self.name));
        validate_token("flow name", &self.name).map_err(|e| def(e.to_string()))?;
        if self.steps.is_empty() {
            return Err(def("a flow needs at least one step".into()));
        }
        let mut seen: Vec<&str> = Vec::new();
        for step in &self.steps {
            validate_token("step name", &step.name).map_err(|e| def(e.to_string()))?;
            if seen.contains(&step.name.as_str()) {
                return Err(def(format!("two steps are named {}", step.name)));
            }
            // A step with no attempt or no time could never succeed.
            if step.max_attempts == 0 {
                return Err(def(format!(
                    "step {}: max_attempts must be at least 1",
                    step.name
                )));
            }
            if step.timeout_ms == 0 {
                return Err(def(format!(
                    "step {}: timeout_ms must be at least 1",
                    step.name
                )));
            }
            for reference in crate::template::step_references(&step.input) {
                if !seen.contains(&reference.as_str()) {
                    return Err(def(format!(
                        "step {} refers to ${{steps.{reference}…}}, which is not an earlier step",
                        step.name
                    )));
                }
            }
            seen.push(&step.name);
        }
        Ok(())
    }

    /// The durable consumer name of this flow: `flow_<name>`.
    pub fn consumer_name(&self) -> String {
        format!("flow_{}", self.name)
    }
}
