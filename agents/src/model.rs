//! Models: the [`Model`] trait every provider implements, and the types it speaks.
//!
//! A model takes a [`ModelRequest`] (the conversation so far and the tools it may call)
//! and answers one [`ModelTurn`]: text, tool calls, or both. The tool loop in
//! [`crate::agent`] is the only caller and is shared by every provider, so a provider
//! only translates these types to and from its wire format.
//!
//! Providers:
//! - [`openai::OpenAiModel`]: any OpenAI-compatible Chat Completions server (OpenAI,
//!   Ollama, vLLM, llama.cpp, …);
//! - [`scripted::ScriptedModel`]: a deterministic script of turns for tests and the
//!   offline demo. **Not an LLM.**

pub mod openai;
pub mod scripted;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the agent's author (the system prompt).
    System,
    /// The person (or program) chatting with the agent.
    User,
    /// The model.
    Assistant,
    /// A tool result, answering one [`ToolCall`] of the previous assistant message.
    Tool,
}

/// One message of a conversation. Serialized as
/// `{"role", "content", "tool_calls"?, "tool_call_id"?}` (empty fields omitted); this is
/// also the shape agent memory stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text. For a tool message: the tool result as JSON text. May be empty for an
    /// assistant message that only calls tools.
    #[serde(default)]
    pub content: String,
    /// On assistant messages: the tools the model called, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// On tool messages: the [`ToolCall::id`] this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new(Role::User, content)
    }

    /// An assistant message with `content` (may be empty) and `tool_calls` (may be
    /// empty).
    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Message {
            tool_calls,
            ..Message::new(Role::Assistant, content)
        }
    }

    /// A tool message answering the call `tool_call_id` with `content` (JSON text).
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            tool_call_id: Some(tool_call_id.into()),
            ..Message::new(Role::Tool, content)
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool name, `[a-zA-Z0-9_-]{1,64}` (OpenAI's rule), e.g. `tickets_list`.
    pub name: String,
    /// What the tool does; the model reads it to decide when to call the tool.
    pub description: String,
    /// JSON Schema of the arguments (an object schema; `{"type": "object"}` when the
    /// endpoint has none).
    pub parameters: Value,
}

/// One tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call; the tool message answering it carries the same
    /// id in [`Message::tool_call_id`].
    pub id: String,
    /// The tool's name ([`ToolSpec::name`]).
    pub name: String,
    /// The arguments, parsed JSON. When the model's text was not valid JSON this holds
    /// the raw text as a JSON string and [`ToolCall::arguments_error`] says why.
    pub arguments: Value,
    /// Set by a provider when the model's arguments could not be parsed. The tool loop
    /// then does not call the tool; it sends this error back to the model as the tool
    /// result so the model can correct itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_error: Option<String>,
    /// Opaque data the provider needs back with this call on the next request, kept
    /// in memory with the message (e.g. Gemini's `thoughtSignature`). Only the provider
    /// that set it reads it. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_data: Option<Value>,
}

impl ToolCall {
    /// A call of `name` with parsed `arguments`.
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: Value) -> Self {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments,
            arguments_error: None,
            provider_data: None,
        }
    }
}

/// What the tool loop sends to a model: the conversation and the available tools.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelRequest {
    /// The conversation, oldest first (system prompt, memory, the new user message,
    /// then this run's assistant and tool messages).
    pub messages: Vec<Message>,
    /// The tools the model may call; empty for none.
    pub tools: Vec<ToolSpec>,
}

/// One answer of a model: text, tool calls, or both. No tool calls means the model is
/// done and `content` is the reply.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelTurn {
    /// The text, if any.
    pub content: Option<String>,
    /// Tools to call, in order; empty when the model is done.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens the call used, when the provider says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Why the model stopped (the provider's word, e.g. `stop`, `tool_calls`,
    /// `length`), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The model that answered, when the provider says (it may differ from the one
    /// asked for, e.g. a dated version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_model: Option<String>,
}

/// A failed model call's span says why: `error.type` is the error's kind
/// (`timeout`, `rate_limited`…).
impl weft_bus::trace::ErrorType for ModelError {
    fn error_type(&self) -> std::borrow::Cow<'_, str> {
        self.kind().as_str().into()
    }
}

/// Tokens one model call used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt (every message and tool sent).
    pub input_tokens: u64,
    /// Tokens of the answer.
    pub output_tokens: u64,
}

/// What went wrong with a model, to match on. `#[non_exhaustive]`: new kinds may
/// appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModelErrorKind {
    /// The model is misconfigured: a bad base URL, a script that does not load, no
    /// model set on the agent.
    Config,
    /// The server could not be reached or the connection broke.
    Connect,
    /// No answer within the request timeout.
    Timeout,
    /// The server refused the credentials (HTTP 401 or 403).
    Auth,
    /// The server is rate limiting or out of quota (HTTP 429).
    RateLimited,
    /// The server failed (HTTP 5xx).
    Unavailable,
    /// The server rejected the request (another HTTP 4xx, e.g. an unknown model or a
    /// context that is too long).
    Rejected,
    /// The answer is not a valid response (not JSON, no choices, …).
    InvalidResponse,
    /// A scripted model found no rule for the message or could not render a turn.
    Script,
}

impl ModelErrorKind {
    /// The kind as a metrics label: `config`, `connect`, `timeout`, `auth`,
    /// `rate_limited`, `unavailable`, `rejected`, `invalid_response`, `script`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelErrorKind::Config => "config",
            ModelErrorKind::Connect => "connect",
            ModelErrorKind::Timeout => "timeout",
            ModelErrorKind::Auth => "auth",
            ModelErrorKind::RateLimited => "rate_limited",
            ModelErrorKind::Unavailable => "unavailable",
            ModelErrorKind::Rejected => "rejected",
            ModelErrorKind::InvalidResponse => "invalid_response",
            ModelErrorKind::Script => "script",
        }
    }

    /// Whether trying again later may succeed: connect, timeout, rate limiting and
    /// server failures.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ModelErrorKind::Connect
                | ModelErrorKind::Timeout
                | ModelErrorKind::RateLimited
                | ModelErrorKind::Unavailable
        )
    }
}

impl std::fmt::Display for ModelErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model failure, with a matchable [`ModelErrorKind`], a message saying what was
/// tried (provider, URL, model) and an optional source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    kind: ModelErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ModelError {
    /// A new error of `kind`.
    pub fn new(kind: ModelErrorKind, message: impl Into<String>) -> Self {
        ModelError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A new error of `kind` caused by `source`.
    pub fn with_source(
        kind: ModelErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        ModelError {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The kind, to match on.
    pub fn kind(&self) -> ModelErrorKind {
        self.kind
    }

    /// The message without its cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A language model (or a stand-in for one). Object safe: agents hold an
/// `Arc<dyn Model>`.
///
/// # Examples
/// A model that always answers the same text:
/// ```
/// use async_trait::async_trait;
/// use weft_agents::model::{Model, ModelError, ModelRequest, ModelTurn};
///
/// struct Parrot;
///
/// #[async_trait]
/// impl Model for Parrot {
///     fn name(&self) -> &str {
///         "parrot"
///     }
///     async fn complete(&self, _request: &ModelRequest) -> Result<ModelTurn, ModelError> {
///         Ok(ModelTurn { content: Some("squawk".into()), ..Default::default() })
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Model: Send + Sync {
    /// The provider name, used as the `provider` metrics label and in the agent's
    /// registry metadata, e.g. `openai` or `scripted`. Keep it low-cardinality.
    fn name(&self) -> &str;

    /// The model id, e.g. `gpt-4o-mini`, if the provider has one. Shown in the agent's
    /// registry metadata as `model_id`. Default none.
    fn model_id(&self) -> Option<&str> {
        None
    }

    /// Answers one turn of `request`.
    ///
    /// # Errors
    /// A [`ModelError`] whose [`kind`](ModelError::kind) says whether trying again may
    /// help ([`ModelErrorKind::is_retryable`]).
    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError>;

    /// Answers one turn of `request` as [`Model::complete`] does, calling `on_text`
    /// with each piece of text as it arrives (token deltas of a streaming API), and
    /// returns the whole turn at the end. The pieces, joined, are the turn's
    /// `content`.
    ///
    /// The default calls [`Model::complete`] and gives its whole text as one piece;
    /// providers with a streaming API override it.
    ///
    /// # Errors
    /// As [`Model::complete`]; text already given to `on_text` stays given.
    async fn stream(
        &self,
        request: &ModelRequest,
        on_text: TextSink<'_>,
    ) -> Result<ModelTurn, ModelError> {
        let turn = self.complete(request).await?;
        if let Some(text) = turn.content.as_deref().filter(|t| !t.is_empty()) {
            on_text(text);
        }
        Ok(turn)
    }
}

/// Where [`Model::stream`] sends text as it arrives: called once per piece, in order.
pub type TextSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_serialize_without_empty_fields() {
        let m = Message::user("hi");
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"role": "user", "content": "hi"})
        );
        let a = Message::assistant("", vec![ToolCall::new("c1", "t", json!({"a": 1}))]);
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["tool_calls"][0]["name"], "t");
        assert!(v["tool_calls"][0].get("arguments_error").is_none());
        let back: Message = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
        let t = Message::tool("c1", "{}");
        assert_eq!(serde_json::to_value(&t).unwrap()["tool_call_id"], "c1");
    }
}
