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

/// The step kinds, as their JSON fields.
pub const STEP_KINDS: [&str; 11] = [
    "invoke",
    "agent",
    "publish",
    "a2a",
    "transform",
    "sleep",
    "wait_for_event",
    "approval",
    "branch",
    "parallel",
    "sub_flow",
];

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
    /// Wait this long on a durable timer (`"1h"`, `"90s"`, or ms), holding no worker;
    /// the timer survives restarts of every process. The output is `{"until"}`.
    Sleep(#[serde(with = "duration_text")] Duration),
    /// Wait for an event ([`WaitForEvent`]); the output is the event's envelope.
    WaitForEvent(WaitForEvent),
    /// Wait for a person's decision ([`Approval`]); the output is `{approved, by,
    /// reason}`. A denial fails the step (not retried), and its `on_failure` decides.
    Approval(Approval),
    /// Choose the next steps with a condition ([`Branch`]); the output is `{"taken":
    /// "then" | "else"}`.
    Branch(Branch),
    /// Run later steps side by side and join them ([`Parallel`]).
    Parallel(Parallel),
    /// Start a run of another flow with the step's input and wait for it ([`SubFlow`]);
    /// the output is the child run's output.
    SubFlow(SubFlow),
}

/// A `branch` step: `{"if": ".steps.classify.output.urgent", "then": ["page"], "else":
/// ["queue"]}`. `if` is a jq expression over the run context; `true` takes `then`,
/// anything else `else`. The steps of the arm not taken are skipped; steps named in
/// neither arm run as usual. Both arms name later steps of the flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// The condition.
    #[serde(rename = "if")]
    pub condition: crate::expr::Expr,
    /// The steps taken when it is `true`.
    #[serde(default)]
    pub then: Vec<String>,
    /// The steps taken otherwise.
    #[serde(default, rename = "else")]
    pub otherwise: Vec<String>,
}

/// A `parallel` step: `{"steps": ["price", "stock"], "join": "all"}` runs the named
/// later steps (invoke, agent, publish, a2a or transform steps) side by side, each
/// with its own attempts and retry policy. With `join: all` (the default) it completes
/// when all did, its output `{<step>: output}`, and fails when one fails for good
/// (unless that step's `on_failure` is `continue`); with `join: first` it completes
/// with the first result, `{"step", "output"}`, skipping the others, and fails when all
/// fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parallel {
    /// The steps run side by side.
    pub steps: Vec<String>,
    /// How they join. Default `all`.
    #[serde(default)]
    pub join: Join,
}

/// How a [`Parallel`] step joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Join {
    /// Every step.
    #[default]
    All,
    /// The first result.
    First,
}

/// A `sub_flow` step: `{"flow": "billing", "timeout": "1h"}` starts a run of flow
/// `billing` (a worker of it takes the start) with the step's input as its trigger
/// payload, and waits without a worker until it ends: its output is the child's
/// output; a child that fails or is cancelled fails the step (`CHILD_FAILED`), and no
/// end within `timeout` (default 24 h) fails it with `TIMEOUT`. Every attempt starts
/// the same child run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubFlow {
    /// The child flow.
    pub flow: String,
    /// How long to wait for it. Default 24 h.
    #[serde(default = "default_wait", with = "duration_text")]
    pub timeout: Duration,
}

/// A `wait_for_event` step:
/// `{"event": "payment.settled", "match": ".event.payload.order == .trigger.payload.order", "timeout": "1h"}`.
///
/// The wait starts when the step does: events published before are not seen. When no
/// event matches within `timeout`, the step fails with code `TIMEOUT` (not retried).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitForEvent {
    /// The event type waited for (no wildcards).
    pub event: EventType,
    /// A jq expression over `{event, trigger, steps, run}` (`event` being the
    /// candidate envelope) that must give `true`. Default: any event of the type.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<crate::expr::Expr>,
    /// How long to wait (`"1h"`, or ms). Default 24 h.
    #[serde(default = "default_wait", with = "duration_text")]
    pub timeout: Duration,
}

/// An `approval` step: `{"prompt": "Refund ${trigger.payload.amount}?", "timeout": "24h",
/// "default": "deny"}`. `weft flow approve RUN STEP [--deny REASON]` (or `POST
/// /v1/runs/{id}/approve`) decides; with no decision within `timeout`, `default` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// What the approver is asked (a template over the run context). Default empty.
    #[serde(default)]
    pub prompt: Value,
    /// How long to wait for a decision (`"24h"`, or ms). Default 24 h.
    #[serde(default = "default_wait", with = "duration_text")]
    pub timeout: Duration,
    /// The decision when the timeout passes. Default `deny`.
    #[serde(default)]
    pub default: Decision,
}

/// An approval's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Go on.
    Approve,
    /// Stop (the step fails).
    #[default]
    Deny,
}

/// What a step that failed for good does to its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run fails (and `weft flow retry` resumes it from this step). The default.
    #[default]
    Fail,
    /// The run goes on with the next step; this step's output is `null`.
    Continue,
    /// The run undoes what it did: the compensation steps ([`Step::compensates`]) of
    /// its completed steps run, the latest step's first, then the run fails with this
    /// step's error. A compensated run is not retried (`weft flow retry` refuses it).
    Compensate,
}

fn default_wait() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Durations in definitions: a humantime text (`"1h 30m"`, `"250ms"`) or an integer of
/// ms; written back as text.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Ms(u64),
            Text(String),
        }
        let d = match Text::deserialize(d)? {
            Text::Ms(ms) => Duration::from_millis(ms),
            Text::Text(t) => humantime::parse_duration(&t).map_err(|e| {
                D::Error::custom(format!(
                    "{t:?} is not a duration like \"90s\" or \"1h\": {e}"
                ))
            })?,
        };
        if d.is_zero() {
            return Err(D::Error::custom("a duration must be more than 0"));
        }
        Ok(d)
    }
}

impl StepKind {
    /// The kind's field name: `invoke`, `agent`, `publish`, `a2a`, `transform`,
    /// `sleep`, `wait_for_event` or `approval`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Invoke(_) => "invoke",
            StepKind::Agent(_) => "agent",
            StepKind::Publish(_) => "publish",
            StepKind::A2a(_) => "a2a",
            StepKind::Transform(_) => "transform",
            StepKind::Sleep(_) => "sleep",
            StepKind::WaitForEvent(_) => "wait_for_event",
            StepKind::Approval(_) => "approval",
            StepKind::Branch(_) => "branch",
            StepKind::Parallel(_) => "parallel",
            StepKind::SubFlow(_) => "sub_flow",
        }
    }

    /// Whether the step waits without a worker (sleep, wait for an event, approval,
    /// child run).
    pub fn waits(&self) -> bool {
        matches!(
            self,
            StepKind::Sleep(_)
                | StepKind::WaitForEvent(_)
                | StepKind::Approval(_)
                | StepKind::SubFlow(_)
        )
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
    /// The error codes that are tried again (e.g. `["AGENT_TIMEOUT", "RATE_LIMITED"]`);
    /// other codes fail the step at once. Default: what the error itself says
    /// (timeouts, unavailable services and transport failures are retryable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
    /// What a failure for good does to the run. Default [`OnFailure::Fail`].
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_failure: OnFailure,
    /// This step undoes step `compensates` (an earlier step): it does not run in the
    /// flow's order, only when a later step fails with `on_failure: compensate` after
    /// `compensates` completed (a saga). An invoke, agent, publish, a2a or transform
    /// step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensates: Option<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
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
    #[serde(default, with = "opt_duration")]
    sleep: Option<Duration>,
    #[serde(default)]
    wait_for_event: Option<WaitForEvent>,
    #[serde(default)]
    approval: Option<Approval>,
    #[serde(default)]
    branch: Option<Branch>,
    #[serde(default)]
    parallel: Option<Parallel>,
    #[serde(default)]
    sub_flow: Option<SubFlow>,
    #[serde(default)]
    input: Value,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default = "default_step_retry")]
    retry: RetryPolicy,
    #[serde(default)]
    retry_on: Option<Vec<String>>,
    #[serde(default)]
    on_failure: OnFailure,
    #[serde(default)]
    compensates: Option<String>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::duration_text")] Duration);
        Option::<Wrap>::deserialize(d).map(|w| w.map(|Wrap(d)| d))
    }
}

impl TryFrom<StepDefinition> for Step {
    type Error = String;

    fn try_from(d: StepDefinition) -> Result<Self, String> {
        let mut kinds: Vec<StepKind> = [
            d.invoke.map(StepKind::Invoke),
            d.agent.map(StepKind::Agent),
            d.publish.map(StepKind::Publish),
            d.a2a.map(StepKind::A2a),
            d.transform.map(StepKind::Transform),
            d.sleep.map(StepKind::Sleep),
            d.wait_for_event.map(StepKind::WaitForEvent),
            d.approval.map(StepKind::Approval),
            d.branch.map(StepKind::Branch),
            d.parallel.map(StepKind::Parallel),
            d.sub_flow.map(StepKind::SubFlow),
        ]
        .into_iter()
        .flatten()
        .collect();
        if kinds.len() != 1 {
            let what = if kinds.is_empty() {
                "names none of them".to_owned()
            } else {
                let given: Vec<&str> = kinds.iter().map(StepKind::as_str).collect();
                format!("names {}", given.join(" and "))
            };
            return Err(format!(
                "step {:?} {what}: a step does exactly one of {}",
                d.name,
                STEP_KINDS.join(", ")
            ));
        }
        let kind = kinds.remove(0);
        if let StepKind::A2a(url) = &kind
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "step {:?}: `a2a` is the URL of an A2A agent, http(s)://…, not {url:?}",
                d.name
            ));
        }
        Ok(Step {
            name: d.name,
            kind,
            input: d.input,
            timeout_ms: d.timeout_ms,
            max_attempts: d.max_attempts,
            retry: d.retry,
            retry_on: d.retry_on,
            on_failure: d.on_failure,
            compensates: d.compensates,
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
            retry_on: None,
            on_failure: OnFailure::Fail,
            compensates: None,
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

    /// A step sleeping `duration` on a durable timer.
    pub fn sleep(name: impl Into<String>, duration: Duration) -> Self {
        Step::new(name, StepKind::Sleep(duration), Value::Null)
    }

    /// A step waiting up to `timeout` for an event of type `event` (whose `matches`
    /// expression, if any, gives `true`).
    pub fn wait_for_event(
        name: impl Into<String>,
        event: EventType,
        matches: Option<crate::expr::Expr>,
        timeout: Duration,
    ) -> Self {
        let wait = WaitForEvent {
            event,
            matches,
            timeout,
        };
        Step::new(name, StepKind::WaitForEvent(wait), Value::Null)
    }

    /// A step waiting up to `timeout` for an approval, `default` deciding after it.
    pub fn approval(
        name: impl Into<String>,
        prompt: Value,
        timeout: Duration,
        default: Decision,
    ) -> Self {
        let approval = Approval {
            prompt,
            timeout,
            default,
        };
        Step::new(name, StepKind::Approval(approval), Value::Null)
    }

    /// Sets the retryable error codes ([`Step::retry_on`]).
    pub fn retry_on(mut self, codes: &[&str]) -> Self {
        self.retry_on = Some(codes.iter().map(|c| (*c).to_owned()).collect());
        self
    }

    /// Makes this step the compensation of step `step` ([`Step::compensates`]).
    /// Sets what a failure for good does to the run.
    pub fn compensates(mut self, step: impl Into<String>) -> Self {
        self.compensates = Some(step.into());
        self
    }

    /// Sets [`Step::on_failure`].
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
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
    /// Events that start a run, e.g. `ticket.created` or `ticket.>`. Default none: the
    /// flow starts on its `schedule` or by hand (`weft flow start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<EventPattern>,
    /// A cron schedule (five fields, or six with seconds first; UTC; e.g. `"*/5 * * *
    /// *"`) starting one run per tick across all workers of the flow. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// At most `limit` runs of one `key` at a time ([`crate::slots`]); default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::slots::Concurrency>,
    /// At most `limit` runs of one `key` start per `period`; triggers over it start a
    /// run that is cancelled at once ([`RateLimit`]). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Triggers of one `key` start one run, with the last of them, once `period` passed
    /// without another ([`Debounce`]). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<Debounce>,
    /// Ordered steps (at least one).
    pub steps: Vec<Step>,
}

/// `"rate_limit": {"key": "${trigger.payload.customer_id}", "limit": 10, "period": "1m"}`:
/// at most `limit` runs of one key start per fixed window of `period` (windows start at
/// multiples of `period` since the Unix epoch). A trigger over the limit still gets its
/// run, journaled and cancelled at once by `rate_limit` with the reason, so `weft flow
/// runs --status cancelled` shows what was refused. Manual starts are not limited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The key, a template over the trigger; default one key for the flow.
    #[serde(default)]
    pub key: Value,
    /// Runs per period (at least 1).
    pub limit: u32,
    /// The window (`"1m"`, or ms).
    #[serde(with = "duration_text")]
    pub period: Duration,
}

/// `"debounce": {"key": "${trigger.payload.doc}", "period": "30s"}`: a trigger does not
/// start a run at once; it sets (or moves) the key's timer to `period` from now,
/// carrying the trigger, and when the timer fires one run starts with the last trigger
/// (cause `debounce`). The timer is a message schedule of the run queue, one per key:
/// setting it again replaces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debounce {
    /// The key, a template over the trigger; default one key for the flow.
    #[serde(default)]
    pub key: Value,
    /// How long without another trigger of the key (`"30s"`, or ms).
    #[serde(with = "duration_text")]
    pub period: Duration,
}

/// A cron schedule: five fields (minute, hour, day of month, month, day of week), or six
/// with seconds first, UTC,
/// checked with [croner](https://docs.rs/croner) when the flow loads; nats-server fires
/// its ticks ([`weft_bus::runs::queue`]).
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
}

impl Schedule {
    /// Parses a cron expression of five fields, or six with seconds first.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let fields = text.split_whitespace().count();
        if !(fields == 5 || fields == 6) {
            return Err(format!(
                "schedule {text:?}: a cron schedule has five fields (minute hour day month weekday), e.g. \"*/5 * * * *\", or six with seconds first"
            ));
        }
        // croner takes five fields, or six with seconds first (and a seventh, years,
        // which nats-server does not: refused above).
        let cron = text
            .parse::<croner::Cron>()
            .map_err(|e| format!("schedule {text:?} is not a cron expression: {e}"))?;
        Ok(Schedule {
            text: text.to_owned(),
            cron,
        })
    }

    /// Its text, e.g. `*/5 * * * *`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The six-field form nats-server schedules take (seconds first: `0 …` for five
    /// fields).
    pub fn server_form(&self) -> String {
        if self.text.split_whitespace().count() == 6 {
            self.text.clone()
        } else {
            format!("0 {}", self.text)
        }
    }

    /// The next tick after now (RFC 3339), for listings.
    pub fn next_tick(&self) -> Option<String> {
        self.cron
            .find_next_occurrence(&chrono::Utc::now(), false)
            .ok()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Schedule::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn default_version() -> String {
    "0.1.0".into()
}

impl Flow {
    /// A flow `name` triggered by `trigger`, with no steps yet.
    pub fn new(name: impl Into<String>, trigger: EventPattern) -> Self {
        Flow {
            trigger: Some(trigger),
            ..Flow::manual(name)
        }
    }

    /// A flow `name` started only by hand or by a [`Flow::schedule`], with no steps yet.
    pub fn manual(name: impl Into<String>) -> Self {
        Flow {
            name: name.into(),
            version: default_version(),
            description: String::new(),
            trigger: None,
            schedule: None,
            concurrency: None,
            rate_limit: None,
            debounce: None,
            steps: Vec::new(),
        }
    }

    /// Sets the cron schedule.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Limits the runs of one key (a template, e.g. `${trigger.payload.customer_id}`)
    /// to `limit` at a time.
    pub fn concurrency(mut self, key: Value, limit: u32) -> Self {
        self.concurrency = Some(crate::slots::Concurrency { key, limit });
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The step named `name`.
    pub fn find_step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
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

    /// Loads and validates a definition given as a JSON value (e.g. the one a run
    /// started with).
    ///
    /// # Errors
    /// As [`Flow::from_json`].
    pub fn from_value(value: Value) -> Result<Flow, FlowError> {
        let flow: Flow = serde_json::from_value(value)
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
        let keys = [
            (
                "concurrency",
                self.concurrency.as_ref().map(|c| (&c.key, c.limit)),
            ),
            (
                "rate_limit",
                self.rate_limit.as_ref().map(|r| (&r.key, r.limit)),
            ),
            ("debounce", self.debounce.as_ref().map(|d| (&d.key, 1))),
        ];
        for (what, given) in keys {
            let Some((key, limit)) = given else { continue };
            if limit == 0 {
                return Err(def(format!("{what} limit must be at least 1")));
            }
            if let Some(step) = crate::template::step_references(key).first() {
                return Err(def(format!(
                    "the {what} key refers to step {step}; it is known before any step runs, so it can use ${{trigger…}} only"
                )));
            }
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
            let later = |name: &String| {
                self.steps
                    .iter()
                    .skip_while(|s| s.name != step.name)
                    .skip(1)
                    .find(|s| &s.name == name)
            };
            let named = match &step.kind {
                StepKind::Branch(b) => b.then.iter().chain(&b.otherwise).collect(),
                StepKind::Parallel(p) => p.steps.iter().collect(),
                _ => Vec::new(),
            };
            for name in named {
                let Some(target) = later(name) else {
                    return Err(def(format!(
                        "step {} names {name}, which is not a later step",
                        step.name
                    )));
                };
                if matches!(step.kind, StepKind::Parallel(_))
                    && (target.kind.waits()
                        || matches!(target.kind, StepKind::Branch(_) | StepKind::Parallel(_)))
                {
                    return Err(def(format!(
                        "step {} runs {name} in parallel, but a {} step cannot run in parallel (invoke, agent, publish, a2a and transform steps can)",
                        step.name,
                        target.kind.as_str()
                    )));
                }
            }
            if let StepKind::Parallel(p) = &step.kind {
                if p.steps.is_empty() {
                    return Err(def(format!("parallel step {} names no steps", step.name)));
                }
                for other in &self.steps {
                    if let StepKind::Parallel(q) = &other.kind
                        && other.name != step.name
                        && let Some(both) = p.steps.iter().find(|s| q.steps.contains(s))
                    {
                        return Err(def(format!(
                            "step {both} is in two parallel steps, {} and {}",
                            step.name, other.name
                        )));
                    }
                }
            }
            if let StepKind::SubFlow(c) = &step.kind {
                validate_token("sub_flow flow name", &c.flow).map_err(|e| def(e.to_string()))?;
            }
            if let Some(target) = &step.compensates {
                let Some(undone) = self.steps.iter().find(|s| &s.name == target) else {
                    return Err(def(format!(
                        "step {} compensates {target}, which is not a step",
                        step.name
                    )));
                };
                if !seen.contains(&target.as_str()) || undone.compensates.is_some() {
                    return Err(def(format!(
                        "step {} compensates {target}, which must be an earlier step that is not itself a compensation",
                        step.name
                    )));
                }
                if step.kind.waits()
                    || matches!(
                        step.kind,
                        StepKind::Branch(_) | StepKind::Parallel(_) | StepKind::SubFlow(_)
                    )
                {
                    return Err(def(format!(
                        "step {} compensates {target}, but a {} step cannot be a compensation (invoke, agent, publish, a2a and transform steps can)",
                        step.name,
                        step.kind.as_str()
                    )));
                }
                if let Some(other) = self
                    .steps
                    .iter()
                    .find(|s| s.name != step.name && s.compensates.as_ref() == Some(target))
                {
                    return Err(def(format!(
                        "step {target} has two compensations, {} and {}",
                        step.name, other.name
                    )));
                }
                let named_elsewhere = self.steps.iter().any(|s| match &s.kind {
                    StepKind::Branch(b) => {
                        b.then.iter().chain(&b.otherwise).any(|n| n == &step.name)
                    }
                    StepKind::Parallel(p) => p.steps.contains(&step.name),
                    _ => false,
                });
                if named_elsewhere {
                    return Err(def(format!(
                        "step {} is a compensation; a branch or parallel step cannot name it",
                        step.name
                    )));
                }
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
