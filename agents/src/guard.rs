//! Guardrails and tool middleware (DESIGN §16): every tool call of a run goes through
//! one [tower] stack, built per run by the agent:
//!
//! ```text
//! LoopLimitLayer → ApprovalLayer → the agent's tool layers (Agent::tool_layer) → the tools
//! ```
//!
//! - [`LoopLimitLayer`]: the same tool with the same arguments runs at most
//!   [`DEFAULT_LOOP_LIMIT`] (3) times in one run; a further identical call is refused
//!   with [`LOOP_LIMIT`] and a message telling the model to use what it has.
//! - [`ApprovalLayer`]: a policy ([`Approval`]) per call, as a Rust callback
//!   ([`Agent::approval`](crate::Agent::approval)) or as a list of tool-name patterns
//!   that need approval ([`Agent::approve`](crate::Agent::approve), e.g.
//!   `["tickets_*"]`, which asks a person: [`Approval::Ask`]). A served agent's run is
//!   journaled, so it pauses for the person ([`crate::durable`]: `weft agent approve
//!   RUN`) and the call goes through once approved ([`ToolRequest::approved`]); a run
//!   that cannot pause (one without the bus, [`Agent::run`](crate::Agent::run)) gets
//!   [`APPROVAL_REQUIRED`] and a reason the model reads.
//! - Tool layers: any tower [`Layer`] over [`ToolService`] (logging,
//!   retry, metrics of your own), the same shape the bus uses for handlers.
//!
//! A refused or failed call is not a failed run: its error goes back to the model as
//! the tool result, as for any tool error. Max steps ([`Agent::max_steps`](crate::Agent::max_steps))
//! is the loop's own limit on model calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};
use weft_bus::envelope::{ErrorCode, ErrorPayload};

use crate::model::ToolCall;

/// Default most runs of one tool with the same arguments in one run: 3.
pub const DEFAULT_LOOP_LIMIT: usize = 3;

/// The error code of a call refused by the loop limit.
pub const LOOP_LIMIT: &str = "LOOP_LIMIT";

/// The error code of a call refused by the approval policy.
pub const APPROVAL_REQUIRED: &str = "APPROVAL_REQUIRED";

/// The error code of a call a person denied ([`Approval::Ask`]).
pub const APPROVAL_DENIED: &str = "APPROVAL_DENIED";

/// One tool call as the middleware sees it.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    /// The agent making the call.
    pub agent: Arc<str>,
    /// The run it belongs to (UUIDv7).
    pub run_id: Arc<str>,
    /// The call: id, tool name, arguments.
    pub call: ToolCall,
    /// What the run has called so far (for the loop limit).
    pub history: Arc<CallHistory>,
    /// The callee's idempotency key (a journaled run's UUIDv5 of run and step, the
    /// same on every attempt), sent as the tool request's `event_id`; `None` outside a
    /// journaled run.
    pub idempotency_key: Option<Arc<str>>,
    /// A person approved this call ([`Approval::Ask`] lets it through).
    pub approved: bool,
}

/// The tool calls of one run, counted by tool and arguments.
#[derive(Debug, Default)]
pub struct CallHistory {
    counts: Mutex<HashMap<(String, String), usize>>,
}

impl CallHistory {
    /// Counts one more call of `call`'s tool with its arguments; returns how many such
    /// calls the run has made, this one included.
    pub fn record(&self, call: &ToolCall) -> usize {
        // serde_json keeps object keys in insertion order here (preserve_order), so
        // the text is canonical only for arguments written the same way; a model that
        // reorders keys gets through, which is the lenient side.
        let key = (call.name.clone(), call.arguments.to_string());
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_default();
        *n += 1;
        *n
    }
}

/// The tower service a tool call goes through: a [`ToolRequest`] in, the tool's result
/// payload or error payload out.
pub type ToolService = BoxCloneSyncService<ToolRequest, Value, ErrorPayload>;

/// A stored tool layer: wraps the stack below it.
pub(crate) type ToolLayerFn = Arc<dyn Fn(ToolService) -> ToolService + Send + Sync>;

/// Boxes a tower layer as a [`ToolLayerFn`].
pub(crate) fn layer_fn<L>(layer: L) -> ToolLayerFn
where
    L: Layer<ToolService> + Send + Sync + 'static,
    L::Service: Service<ToolRequest, Response = Value, Error = ErrorPayload>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as Service<ToolRequest>>::Future: Send + 'static,
{
    Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner)))
}

/// Refuses a call whose tool and arguments the run already ran `limit` times.
#[derive(Debug, Clone, Copy)]
pub struct LoopLimitLayer {
    limit: usize,
}

impl LoopLimitLayer {
    /// At most `limit` identical calls per run (at least 1).
    pub fn new(limit: usize) -> Self {
        LoopLimitLayer {
            limit: limit.max(1),
        }
    }
}

impl<S> Layer<S> for LoopLimitLayer {
    type Service = Guarded<S, LoopLimit>;
    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            check: LoopLimit(self.limit),
        }
    }
}

/// The loop limit's check.
#[derive(Debug, Clone, Copy)]
pub struct LoopLimit(usize);

/// What an approval policy decides for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// The call runs.
    Allow,
    /// The call is refused; the reason goes back to the model.
    Deny(String),
    /// A person decides: a journaled run pauses with this prompt until someone
    /// approves or denies ([`crate::durable`]); a run that cannot pause treats it as
    /// [`Approval::Deny`].
    Ask(String),
}

/// A policy deciding each call ([`Agent::approval`](crate::Agent::approval)).
pub type ApprovalPolicy = Arc<dyn Fn(&ToolRequest) -> Approval + Send + Sync>;

/// Runs calls its policy allows; refuses the others with [`APPROVAL_REQUIRED`].
#[derive(Clone)]
pub struct ApprovalLayer {
    policy: ApprovalPolicy,
}

impl std::fmt::Debug for ApprovalLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalLayer").finish_non_exhaustive()
    }
}

impl ApprovalLayer {
    /// A layer deciding with `policy`.
    pub fn new(policy: ApprovalPolicy) -> Self {
        ApprovalLayer { policy }
    }
}

impl<S> Layer<S> for ApprovalLayer {
    type Service = Guarded<S, ApprovalPolicy>;
    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            check: self.policy.clone(),
        }
    }
}

/// The policy of [`Agent::approve`](crate::Agent::approve): tools whose names match one
/// of `patterns` (`*` matches any run of characters: `tickets_*`, `*_delete`, `*`)
/// need a person's approval ([`Approval::Ask`]); other tools run.
pub fn needs_approval(patterns: Vec<String>) -> ApprovalPolicy {
    Arc::new(move |req: &ToolRequest| {
        match patterns.iter().find(|p| glob_match(p, &req.call.name)) {
            Some(p) => Approval::Ask(format!(
                "tool {} needs a person's approval (agent {} lists {p:?} under approve)",
                req.call.name, req.agent
            )),
            None => Approval::Allow,
        }
    })
}

/// `*`-globs: `*` matches any run of characters, everything else itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if name.len() < first.len() + last.len() || !name.starts_with(first) || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A check run before the inner service: `Err` refuses the call.
pub trait Check: Clone + Send + Sync + 'static {
    /// `Ok` to run the call, or the error payload that refuses it.
    fn check(&self, request: &ToolRequest) -> Result<(), ErrorPayload>;
}

impl Check for LoopLimit {
    fn check(&self, request: &ToolRequest) -> Result<(), ErrorPayload> {
        let n = request.history.record(&request.call);
        if n > self.0 {
            return Err(ErrorPayload::new(
                ErrorCode::Other(LOOP_LIMIT.into()),
                format!(
                    "{} was already called {} times with these arguments in this run; do not call it again like this: use the results you have, or try something else",
                    request.call.name, self.0
                ),
            ));
        }
        Ok(())
    }
}

impl Check for ApprovalPolicy {
    fn check(&self, request: &ToolRequest) -> Result<(), ErrorPayload> {
        match self(request) {
            Approval::Allow => Ok(()),
            Approval::Ask(_) if request.approved => Ok(()),
            Approval::Deny(reason) => Err(ErrorPayload::new(
                ErrorCode::Other(APPROVAL_REQUIRED.into()),
                reason,
            )),
            Approval::Ask(prompt) => Err(ErrorPayload::new(
                ErrorCode::Other(APPROVAL_REQUIRED.into()),
                format!(
                    "{prompt}, and this run cannot ask for it; do not call it again, answer without it or say that it needs approval"
                ),
            )),
        }
    }
}

/// A service that runs a [`Check`] before its inner service.
#[derive(Debug, Clone)]
pub struct Guarded<S, C> {
    inner: S,
    check: C,
}

impl<S, C> Service<ToolRequest> for Guarded<S, C>
where
    S: Service<ToolRequest, Response = Value, Error = ErrorPayload> + Clone + Send + 'static,
    S::Future: Send + 'static,
    C: Check,
{
    type Response = Value;
    type Error = ErrorPayload;
    type Future = futures::future::BoxFuture<'static, Result<Value, ErrorPayload>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ErrorPayload>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ToolRequest) -> Self::Future {
        match self.check.check(&request) {
            Err(refused) => Box::pin(std::future::ready(Err(refused))),
            Ok(()) => Box::pin(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tower::ServiceExt as _;

    fn request(history: &Arc<CallHistory>, name: &str, args: Value) -> ToolRequest {
        ToolRequest {
            agent: "a".into(),
            run_id: "r".into(),
            call: ToolCall::new("c", name, args),
            history: history.clone(),
            idempotency_key: None,
            approved: false,
        }
    }

    fn echo() -> ToolService {
        BoxCloneSyncService::new(tower::service_fn(|r: ToolRequest| async move {
            Ok::<_, ErrorPayload>(r.call.arguments)
        }))
    }

    #[tokio::test]
    async fn the_loop_limit_refuses_the_call_after_the_limit() {
        let stack = LoopLimitLayer::new(2).layer(echo());
        let history = Arc::new(CallHistory::default());
        for _ in 0..2 {
            assert!(
                stack
                    .clone()
                    .oneshot(request(&history, "t", json!({"a": 1})))
                    .await
                    .is_ok()
            );
        }
        let e = stack
            .clone()
            .oneshot(request(&history, "t", json!({"a": 1})))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Other(LOOP_LIMIT.into()));
        assert!(
            e.message.contains("already called 2 times"),
            "{}",
            e.message
        );
        // Other arguments, another tool, another run: counted apart.
        assert!(
            stack
                .clone()
                .oneshot(request(&history, "t", json!({"a": 2})))
                .await
                .is_ok()
        );
        assert!(
            stack
                .clone()
                .oneshot(request(&history, "u", json!({"a": 1})))
                .await
                .is_ok()
        );
        let fresh = Arc::new(CallHistory::default());
        assert!(
            stack
                .clone()
                .oneshot(request(&fresh, "t", json!({"a": 1})))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn listed_tools_are_denied_with_a_reason_and_others_run() {
        let stack = ApprovalLayer::new(needs_approval(vec!["tickets_*".into()])).layer(echo());
        let history = Arc::new(CallHistory::default());
        let e = stack
            .clone()
            .oneshot(request(&history, "tickets_close", json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Other(APPROVAL_REQUIRED.into()));
        assert!(
            e.message.contains("needs a person's approval"),
            "{}",
            e.message
        );
        assert!(
            stack
                .clone()
                .oneshot(request(&history, "kb_search", json!({})))
                .await
                .is_ok()
        );
        // Once a person approved it, the call goes through.
        let mut approved = request(&history, "tickets_close", json!({}));
        approved.approved = true;
        assert!(stack.clone().oneshot(approved).await.is_ok());
    }

    #[test]
    fn globs_match_as_documented() {
        for (p, n, ok) in [
            ("tickets_*", "tickets_list", true),
            ("tickets_*", "tickets_", true),
            ("tickets_*", "kb_list", false),
            ("*_delete", "tickets_delete", true),
            ("*", "anything", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob_match(p, n), ok, "{p} ~ {n}");
        }
    }
}
