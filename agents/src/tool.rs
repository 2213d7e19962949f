//! Tools: what a model may call during a run.
//!
//! [`Tools`] is the interface the tool loop uses: the specs to show the model and a
//! way to call one tool. [`ServiceTools`] is the implementation agents use: the
//! endpoints of the services an agent manages, read at chat time from the process's
//! live registry view ([`RegistryWatch`], no request to the server per chat), so a
//! service that starts, stops or adds an endpoint changes the agent's tools on its
//! next chat.
//!
//! The endpoints become tools by the rule every part of the mesh shares
//! ([`weft_bus::tool`], DESIGN §12): name `<service>_<endpoint>` (`tickets_list`),
//! the endpoint's description and input schema (a non-object input wrapped as
//! `{"input": …}`), a call invokes `P.invoke.<service>.<endpoint>`.
//!
//! A call's result payload, or its error payload as `{"error": {code, message,
//! retryable}}`, goes back to the model as the tool message (JSON text).

use std::time::Duration;

use serde_json::{Value, json};
use weft_bus::envelope::{Envelope, ErrorCode, ErrorPayload};
use weft_bus::invoke::{BoxInvoker, InvokeRequest, Invoker};
use weft_bus::middleware::ServiceExt;
use weft_bus::registry::{Kind, Registration, RegistryWatch};
use weft_bus::tool::{Tool, ToolSet};
use weft_bus::{Bus, Target};

use crate::model::ToolSpec;

/// What a tool call gives back: the result payload, or an error payload.
pub type ToolOutcome = Result<Value, ErrorPayload>;

/// Default timeout of one tool call: 30 s.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// A set of tools the tool loop can offer a model and call.
#[async_trait::async_trait]
pub trait Tools: Send + Sync {
    /// The tools, as the model sees them.
    fn specs(&self) -> Vec<ToolSpec>;

    /// Calls the tool `name` with `arguments`.
    ///
    /// # Errors
    /// The error payload goes back to the model; `NO_HANDLER` for an unknown name.
    async fn call(&self, name: &str, arguments: &Value) -> ToolOutcome;

    /// [`Tools::call`] with the callee's idempotency key (a journaled run's UUIDv5 of
    /// run and step, the same on every attempt), so a call repeated after a crash can
    /// be recognised: tools over the bus send it as the request's `event_id`. By
    /// default the key is dropped.
    ///
    /// # Errors
    /// As [`Tools::call`].
    async fn call_keyed(&self, name: &str, arguments: &Value, key: Option<&str>) -> ToolOutcome {
        let _ = key;
        self.call(name, arguments).await
    }
}

/// An error payload as tool message content: `{"error": {code, message, retryable,
/// cause?}}`.
pub fn error_content(error: &ErrorPayload) -> Value {
    json!({ "error": error.to_value() })
}

/// The endpoints of some services as tools, called over the bus.
///
/// # Examples
/// ```no_run
/// use weft_agents::tool::{ServiceTools, Tools};
/// # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
/// let tools = ServiceTools::discover(&bus, &["tickets".to_owned()]).await?;
/// for spec in tools.specs() {
///     println!("{}: {}", spec.name, spec.description);
/// }
/// let open = tools.call("tickets_list", &serde_json::json!({"status": "open"})).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServiceTools {
    invoker: BoxInvoker,
    tools: ToolSet,
    timeout: Duration,
    caller: Option<String>,
    session_id: Option<String>,
    parent: Option<Envelope>,
}

impl std::fmt::Debug for ServiceTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTools")
            .field(
                "tools",
                &self
                    .tools
                    .tools()
                    .iter()
                    .map(|t| &t.name)
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

impl ServiceTools {
    /// The tools of the named services, from the live registry entries of kind
    /// `service` (for each service, the most recently started instance), read from the
    /// connection's shared registry watch ([`Bus::registry_watch`]). A service that is
    /// not registered contributes no tools (logged as a warning).
    ///
    /// # Errors
    /// [`weft_bus::ErrorKind::Kv`] when the registry cannot be watched.
    pub async fn discover(bus: &Bus, services: &[String]) -> weft_bus::Result<ServiceTools> {
        let registry = bus.registry_watch().await?;
        Ok(ServiceTools::discover_in(bus, registry, services))
    }

    /// As [`ServiceTools::discover`], reading a registry view the caller holds. Reads
    /// memory only.
    pub fn discover_in(bus: &Bus, registry: &RegistryWatch, services: &[String]) -> ServiceTools {
        let mut chosen = Vec::new();
        for name in services {
            match registry.newest(Kind::Service, name) {
                Some(r) => chosen.push(r),
                None => {
                    tracing::warn!(service = %name, "managed service is not registered; it has no tools now")
                }
            }
        }
        ServiceTools::from_registrations(bus, &chosen)
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when there are no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The tools of these registrations' endpoints ([`ToolSet::from_registrations`]:
    /// an endpoint whose tool name is too long or repeats another's is left out and
    /// logged).
    pub fn from_registrations(bus: &Bus, registrations: &[Registration]) -> ServiceTools {
        let tools = ToolSet::from_registrations(registrations);
        for p in tools.problems() {
            // Once per chat: `weft ls` shows these, so no warning each time.
            tracing::debug!(tool = %p.tool, endpoint = %p.endpoint, "endpoint left out of the tools: {}", p.reason);
        }
        ServiceTools {
            invoker: tower::util::BoxCloneSyncService::new(Invoker::new(bus.clone())),
            tools,
            timeout: DEFAULT_TOOL_TIMEOUT,
            caller: None,
            session_id: None,
            parent: None,
        }
    }

    /// The invoke stack tool calls go through. Default a plain [`Invoker`]; agents pass
    /// one guarded by their circuit breaker ([`Invoker::guarded`]).
    pub fn invoker(mut self, invoker: BoxInvoker) -> Self {
        self.invoker = invoker;
        self
    }

    /// How long one call may take. Default [`DEFAULT_TOOL_TIMEOUT`] (30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The `from` of the request envelopes (the agent's name). Default none.
    pub fn caller(mut self, name: impl Into<String>) -> Self {
        self.caller = Some(name.into());
        self
    }

    /// The `session_id` of the request envelopes. Default none.
    pub fn session_id(mut self, session_id: Option<String>) -> Self {
        self.session_id = session_id;
        self
    }

    /// The envelope of the request that started the run: tool requests inherit its
    /// trace (`trace_id`, `traceparent`), `tenant_id`, `user_id`, `conversation_id`
    /// and `channel`, so one trace covers caller → agent → service. Default none.
    pub fn parent(mut self, parent: Option<Envelope>) -> Self {
        self.parent = parent;
        self
    }

    /// The invoke target of tool `name`, if there is such a tool.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.tools.get(name).map(|t| &t.target)
    }
}

#[async_trait::async_trait]
impl Tools for ServiceTools {
    fn specs(&self) -> Vec<ToolSpec> {
        self.tools.tools().iter().map(spec).collect()
    }

    async fn call(&self, name: &str, arguments: &Value) -> ToolOutcome {
        self.call_keyed(name, arguments, None).await
    }

    async fn call_keyed(&self, name: &str, arguments: &Value, key: Option<&str>) -> ToolOutcome {
        let Some(tool) = self.tools.get(name) else {
            let known: Vec<&str> = self.tools.tools().iter().map(|t| t.name.as_str()).collect();
            return Err(ErrorPayload::new(
                ErrorCode::NoHandler,
                format!(
                    "there is no tool named {name:?}; the tools are: {}",
                    known.join(", ")
                ),
            ));
        };
        let target = &tool.target;
        let mut request = Envelope::request(target.to_string(), tool.payload(arguments.clone()));
        if let Some(p) = &self.parent {
            request.inherit_context(p);
        }
        request.from = self.caller.clone();
        request.session_id = self.session_id.clone();
        if let Some(key) = key {
            // The callee sees the same event_id on every attempt of a journaled step.
            request.event_id = key.to_owned();
        }
        let call = InvokeRequest::new(target.clone(), request, self.timeout);
        match self.invoker.clone().oneshot(call).await {
            Ok(reply) => Ok(reply.payload.unwrap_or(Value::Null)),
            Err(e) => Err(ErrorPayload::from(&e)),
        }
    }
}

/// A tool as the model sees it.
fn spec(tool: &Tool) -> ToolSpec {
    ToolSpec {
        name: tool.name.clone(),
        description: tool.description.clone(),
        parameters: tool.input_schema.clone(),
    }
}
