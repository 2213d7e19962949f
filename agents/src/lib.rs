//! # weft-agents
//!
//! The agent runtime of Weft (DESIGN §5): an [`Agent`] is a service of kind `agent`
//! whose default endpoint `chat` takes `{message, session_id?}` and answers `{reply,
//! agent, tool_calls, run_id}`. Its tools are the endpoints of the services it manages,
//! read from the registry at chat time; its memory is kept per session in the KV bucket
//! `<prefix>_memory`.
//!
//! | module | holds |
//! |---|---|
//! | [`model`] | the [`Model`] trait and its types; providers [`openai`](model::openai) (any OpenAI-compatible Chat Completions server), [`anthropic`](model::anthropic) (Messages API), [`gemini`](model::gemini) (Gemini API), [`ollama`](model::ollama) (native `/api/chat`) and [`scripted`](model::scripted) (a deterministic script for tests and the offline demo, **not an LLM**); [`model::from_env`] picks one from `WEFT_MODEL_PROVIDER` |
//! | [`tool`] | tools from the endpoints of managed services, called over the bus |
//! | [`memory`] | conversation history per agent and session in KV |
//! | [`agent`] | the agent definition, the tool loop shared by every provider, serving |
//! | [`durable`] | served agents' runs in the journal: resume after a crash, approvals, one run per request |
//! | [`metrics`] | `weft_agent_*` and `weft_model_*` Prometheus metrics |
//!
//! # Examples
//! ```no_run
//! use weft_agents::Agent;
//! # async fn run(bus: weft_bus::Bus) -> Result<(), Box<dyn std::error::Error>> {
//! // WEFT_MODEL_PROVIDER=anthropic, ANTHROPIC_API_KEY=…, WEFT_MODEL=…
//! let handle = Agent::new("support")
//!     .manages(["tickets"])
//!     .model(weft_agents::model::from_env()?)
//!     .system_prompt("You answer questions about support tickets.")
//!     .serve(&bus)
//!     .await?;
//! # handle.stop().await?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod builtin;
pub mod definition;
pub mod durable;
pub mod guard;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod router;
pub mod tool;

pub use agent::{
    Agent, AgentError, AgentInfo, ChatReply, ChatRequest, EventSink, ReplyStatus, Run, RunEvent,
    ToolCallRecord,
};
pub use memory::{Memory, SessionId};
pub use model::anthropic::AnthropicModel;
pub use model::gemini::GeminiModel;
pub use model::ollama::OllamaModel;
pub use model::openai::OpenAiModel;
pub use model::scripted::ScriptedModel;
pub use model::{
    Message, Model, ModelError, ModelErrorKind, ModelRequest, ModelTurn, Role, ToolCall, ToolSpec,
    Usage,
};
pub use tool::{ServiceTools, Tools};
