//! # The support desk demo
//!
//! A small support desk, run by `weft up --demo`:
//!
//! - service **`tickets`** ([`tickets`]): `classify`, `get` and `list` over tickets kept
//!   in KV bucket `<prefix>_tickets`;
//! - agent **`support`**, managing `tickets`, answering questions by calling its
//!   endpoints as tools. It runs on the **scripted model** (`support.script.json`, a
//!   deterministic script, not an LLM) unless `WEFT_MODEL_PROVIDER` names a real
//!   provider (`openai`, `anthropic`, `gemini`, `ollama`), configured as
//!   [`weft_agents::model::from_provider`] says (`WEFT_MODEL`, the provider's key and
//!   base URL variables);
//! - flow **`triage`** (`flows/triage.json`), triggered by `ticket.created`: invoke
//!   `tickets.classify`, ask `support` for a first reply, publish `ticket.triaged`.

pub mod tickets;

use std::sync::Arc;

use weft_agents::{Agent, Model, ScriptedModel};
use weft_bus::Bus;
use weft_bus::service::ServiceHandle;
use weft_flows::worker::{self, WorkerConfig, WorkerHandle};
use weft_flows::{Flow, FlowError};

/// The flow definition of `triage`.
pub const TRIAGE_FLOW: &str = include_str!("../flows/triage.json");
/// The script of the `support` agent's scripted model.
pub const SUPPORT_SCRIPT: &str = include_str!("../support.script.json");

/// The `support` agent's system prompt (used by real models).
pub const SUPPORT_PROMPT: &str = "You are the support desk agent. Use the tickets tools to \
answer questions about tickets and to draft short, friendly first replies to customers. \
Never invent ticket data: look it up.";

/// Why the demo did not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] weft_bus::Error),
    /// The flow failed to start.
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// The model could not be configured.
    #[error("model: {0}")]
    Model(String),
}

/// The running demo.
pub struct Demo {
    tickets: tickets::Tickets,
    support: ServiceHandle,
    triage: WorkerHandle,
    model: String,
}

/// The model of the `support` agent: the demo script ([`SUPPORT_SCRIPT`]) when
/// `WEFT_MODEL_PROVIDER` is unset, or is `scripted` without `WEFT_MODEL_SCRIPT`;
/// otherwise [`weft_agents::model::from_provider`] with that provider (`openai`,
/// `anthropic`, `gemini`, `ollama`, or `scripted` with a script file).
///
/// # Errors
/// [`DemoError::Model`] when the provider is unknown (the message lists the known
/// ones) or misconfigured (e.g. a missing key: the message names the variable).
pub fn model_from_env() -> Result<Arc<dyn Model>, DemoError> {
    model_for(None)
}

/// As [`model_from_env`], with `provider` (e.g. from `--provider`) in place of
/// `WEFT_MODEL_PROVIDER` when given.
///
/// # Errors
/// As [`model_from_env`].
pub fn model_for(provider: Option<&str>) -> Result<Arc<dyn Model>, DemoError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let provider = provider
        .map(str::to_owned)
        .or_else(|| var("WEFT_MODEL_PROVIDER"));
    let demo_script = match provider.as_deref() {
        None => true,
        Some(p) => p.trim().eq_ignore_ascii_case("scripted") && var("WEFT_MODEL_SCRIPT").is_none(),
    };
    if demo_script {
        return Ok(Arc::new(
            ScriptedModel::from_json(SUPPORT_SCRIPT)
                .map_err(|e| DemoError::Model(e.to_string()))?,
        ));
    }
    weft_agents::model::from_provider(provider.as_deref().unwrap_or_default())
        .map_err(|e| DemoError::Model(e.to_string()))
}

/// Starts the demo's service, agent and flow on `bus` (whose streams and buckets must
/// exist: `weft up` creates them).
///
/// # Errors
/// [`DemoError`] when a part cannot start.
pub async fn start(bus: &Bus) -> Result<Demo, DemoError> {
    start_with(bus, &[], model_from_env()?).await
}

/// As [`start`], on `model` ([`model_for`]), with the `support` agent also managing the
/// services `also_manages`
/// (e.g. MCP servers attached with `weft up --demo --mcp-attach NAME=…`), whose tools
/// it calls when asked "use `<tool>` with `<text>`".
///
/// # Errors
/// [`DemoError`] when a part cannot start.
pub async fn start_with(
    bus: &Bus,
    also_manages: &[String],
    model: Arc<dyn Model>,
) -> Result<Demo, DemoError> {
    let model_name = model.name().to_owned();
    let tickets = tickets::start(bus).await?;
    let support = Agent::new("support")
        .version("0.1.0")
        .description("Support desk agent: answers questions about tickets and drafts replies")
        .manages(std::iter::once("tickets".to_owned()).chain(also_manages.iter().cloned()))
        .model(model)
        .system_prompt(SUPPORT_PROMPT)
        .builtins([weft_agents::builtin::Builtin::Delegate])
        .serve(bus)
        .await?;
    let triage = worker::start(
        bus,
        vec![Flow::from_json(TRIAGE_FLOW)?],
        WorkerConfig::default(),
    )
    .await?;
    Ok(Demo {
        tickets,
        support,
        triage,
        model: model_name,
    })
}

impl Demo {
    /// One line saying what runs.
    pub fn describe(&self) -> String {
        format!(
            "service tickets (classify, get, list), agent support (model: {}), flow triage (on ticket.created)",
            self.model
        )
    }

    /// Stops the flow, then the agent, then the service.
    ///
    /// # Errors
    /// When a registry entry cannot be deleted (it then expires).
    pub async fn stop(self) -> Result<(), DemoError> {
        self.triage.stop().await;
        self.support.stop().await?;
        self.tickets.stop().await?;
        Ok(())
    }
}
