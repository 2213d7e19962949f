//! Models: the [`Model`] trait every provider implements, and the types it speaks.
//!
//! A model takes a [`ModelRequest`] (the conversation so far and the tools it may call)
//! and answers one [`ModelTurn`]: text, tool calls, or both. The tool loop in
//! [`crate::agent`] is the only caller and is shared by every provider, so a provider
//! only translates these types to and from its wire format (DESIGN §16). Every
//! provider implements both [`Model::complete`] (one whole answer) and
//! [`Model::stream`] (text handed on as the provider streams it, then the same whole
//! turn).
//!
//! # Providers
//!
//! | provider ([`Model::name`]) | type | API | key | base URL | default model |
//! |---|---|---|---|---|---|
//! | `openai` | [`openai::OpenAiModel`] | Chat Completions (`/chat/completions`), any OpenAI-compatible server | `OPENAI_API_KEY` (optional for a local server) | `OPENAI_BASE_URL`, default `https://api.openai.com/v1` | `gpt-4o-mini` |
//! | `anthropic` | [`anthropic::AnthropicModel`] | Anthropic Messages (`/v1/messages`) | `ANTHROPIC_API_KEY` (required) | `ANTHROPIC_BASE_URL`, default `https://api.anthropic.com` | `claude-haiku-4-5` |
//! | `gemini` | [`gemini::GeminiModel`] | Gemini `generateContent` / `streamGenerateContent` (`/v1beta/models/…`) | `GEMINI_API_KEY` (required) | `GEMINI_BASE_URL`, default `https://generativelanguage.googleapis.com` | `gemini-2.5-flash` |
//! | `ollama` | [`ollama::OllamaModel`] | Ollama native chat (`/api/chat`) | `OLLAMA_API_KEY` (optional) | `OLLAMA_HOST`, default `http://127.0.0.1:11434` | `llama3.2` |
//! | `scripted` | [`scripted::ScriptedModel`] | none: a deterministic script, **not an LLM** | — | — (`WEFT_MODEL_SCRIPT`: the script file) | — |
//!
//! `WEFT_MODEL` sets the model id of every provider but `scripted`. [`from_env`]
//! picks the provider from `WEFT_MODEL_PROVIDER`; [`from_provider`] takes its name
//! from the caller (a CLI `--provider` flag) and the rest from the environment.
//!
//! Timeouts and retries: the native adapters (`anthropic`, `gemini`, `ollama`) share
//! [`http`]: 60 s per attempt (for streams: until the response head, then between
//! chunks), 3 attempts on HTTP 429, 5xx and connection failures with exponential
//! back-off that honours `Retry-After`, and one mapping of HTTP failures onto
//! [`ModelErrorKind`]. `openai` uses async-openai's client: 60 s per attempt, which
//! retries 429, 5xx and connection failures 3 times (4 attempts) honouring
//! `Retry-After` in seconds.
//!
//! ## `openai`
//! Chat Completions with tool calling; [module docs](openai). Streams with
//! `stream: true` and `stream_options.include_usage`, assembling tool call deltas by
//! their `index`.
//!
//! ## `anthropic`
//! Messages API, `anthropic-version: 2023-06-01`, `max_tokens` 4096 by default, the
//! system prompt as top-level `system`, tool results of one turn as `tool_result`
//! blocks of one user message; SSE streaming of `text_delta` and `input_json_delta`;
//! [module docs](anthropic).
//!
//! ## `gemini`
//! `systemInstruction`, roles `user`/`model`, `functionDeclarations` with
//! `parametersJsonSchema`, `functionCall`/`functionResponse` parts, thought
//! signatures kept in [`ToolCall::provider_data`] and sent back on their part; SSE
//! streaming (`alt=sse`); [module docs](gemini).
//!
//! ## `ollama`
//! Native `/api/chat`: `"stream": false` for whole answers, NDJSON lines for streams,
//! tool call arguments as objects, tool results as `tool` messages with `tool_name`,
//! `prompt_eval_count`/`eval_count` usage and `done_reason`; [module docs](ollama).
//!
//! ## `scripted`
//! A deterministic script of turns for tests and the offline demo; [module
//! docs](scripted). **Not an LLM.**

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod ollama;
pub mod openai;
pub mod scripted;
mod wire;

use std::sync::Arc;

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

/// The providers [`from_provider`] knows, in the order its errors list them.
pub const PROVIDERS: [&str; 5] = ["openai", "anthropic", "gemini", "ollama", "scripted"];

/// An environment variable's value, `None` when unset or blank.
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The model named by `WEFT_MODEL_PROVIDER` (one of [`PROVIDERS`]), configured from
/// the environment as [`from_provider`] does.
///
/// # Examples
/// ```no_run
/// // WEFT_MODEL_PROVIDER=anthropic ANTHROPIC_API_KEY=… WEFT_MODEL=claude-sonnet-4-5
/// let model = weft_agents::model::from_env()?;
/// println!("{} {:?}", model.name(), model.model_id());
/// # Ok::<(), weft_agents::model::ModelError>(())
/// ```
///
/// # Errors
/// [`ModelErrorKind::Config`] when `WEFT_MODEL_PROVIDER` is unset (the message lists
/// the providers) or as [`from_provider`].
pub fn from_env() -> Result<Arc<dyn Model>, ModelError> {
    match env_var("WEFT_MODEL_PROVIDER") {
        Some(p) => from_provider_with(&p, &env_var),
        None => Err(ModelError::new(
            ModelErrorKind::Config,
            format!(
                "WEFT_MODEL_PROVIDER is not set: set it to one of {}",
                PROVIDERS.join(", ")
            ),
        )),
    }
}

/// The model of `provider` (one of [`PROVIDERS`], case-insensitive), configured from
/// the environment (the table in the [module docs](self)): `WEFT_MODEL`, the
/// provider's key variable and its base URL override. For `scripted`,
/// `WEFT_MODEL_SCRIPT` names the script file. Empty variables count as unset.
///
/// # Examples
/// ```no_run
/// // From a CLI flag: `--provider ollama`.
/// let model = weft_agents::model::from_provider("ollama")?;
/// # Ok::<(), weft_agents::model::ModelError>(())
/// ```
///
/// # Errors
/// [`ModelErrorKind::Config`] when the provider is unknown (the message lists the
/// known ones), a required variable is missing (the message names it: the key of
/// `anthropic` and `gemini`, `OPENAI_API_KEY` for `openai` at its default base URL,
/// `WEFT_MODEL_SCRIPT` for `scripted`), a base URL is not an `http(s)://` URL or a
/// script does not load.
pub fn from_provider(provider: &str) -> Result<Arc<dyn Model>, ModelError> {
    from_provider_with(provider, &env_var)
}

/// As [`from_provider`], reading the settings (`WEFT_MODEL`, the key, base URL and
/// script variables) with `var` (`None` for unset or blank) instead of the process
/// environment: an agent definition overrides `WEFT_MODEL` and `WEFT_MODEL_SCRIPT`
/// this way and leaves the rest to the environment.
///
/// # Errors
/// As [`from_provider`].
pub fn from_provider_with(
    provider: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Model>, ModelError> {
    match provider.trim().to_ascii_lowercase().as_str() {
        "openai" => {
            if var("OPENAI_BASE_URL").is_none() && var("OPENAI_API_KEY").is_none() {
                return Err(ModelError::new(
                    ModelErrorKind::Config,
                    "the openai provider needs an API key for api.openai.com: set OPENAI_API_KEY \
                     (or OPENAI_BASE_URL for a local OpenAI-compatible server)",
                ));
            }
            Ok(Arc::new(openai::OpenAiModel::from_vars(var)?))
        }
        "anthropic" => Ok(Arc::new(anthropic::AnthropicModel::from_vars(var)?)),
        "gemini" => Ok(Arc::new(gemini::GeminiModel::from_vars(var)?)),
        "ollama" => Ok(Arc::new(ollama::OllamaModel::from_vars(var)?)),
        "scripted" => match var("WEFT_MODEL_SCRIPT") {
            Some(path) => Ok(Arc::new(scripted::ScriptedModel::from_file(path)?)),
            None => Err(ModelError::new(
                ModelErrorKind::Config,
                "the scripted provider needs a script: set WEFT_MODEL_SCRIPT to a script file \
                 (format in weft_agents::model::scripted)",
            )),
        },
        other => Err(ModelError::new(
            ModelErrorKind::Config,
            format!(
                "unknown model provider {other:?}: use one of {}",
                PROVIDERS.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Environment variables of a test: `(name, value)`.
    type Env = [(&'static str, &'static str)];

    fn vars(pairs: &Env) -> impl Fn(&str) -> Option<String> {
        let pairs = pairs.to_vec();
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn config_error(provider: &str, env: &Env) -> String {
        match from_provider_with(provider, &vars(env)) {
            Ok(m) => panic!("{provider}: built {}", m.name()),
            Err(e) => {
                assert_eq!(e.kind(), ModelErrorKind::Config, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn providers_from_the_environment() {
        let e = config_error("bedrock", &[]);
        assert!(
            e.contains("\"bedrock\"") && e.contains("openai, anthropic, gemini, ollama, scripted"),
            "{e}"
        );
        assert!(config_error("anthropic", &[]).contains("ANTHROPIC_API_KEY"));
        assert!(config_error("gemini", &[]).contains("GEMINI_API_KEY"));
        assert!(config_error("openai", &[]).contains("OPENAI_API_KEY"));
        assert!(config_error("scripted", &[]).contains("WEFT_MODEL_SCRIPT"));
        assert!(
            config_error("scripted", &[("WEFT_MODEL_SCRIPT", "/nonexistent.json")])
                .contains("/nonexistent.json")
        );
        let e = config_error("ollama", &[("OLLAMA_HOST", "ftp://box")]);
        assert!(e.contains("ftp://box"), "{e}");

        let cases: [(&str, &Env, &str); 5] = [
            (
                "anthropic",
                &[("ANTHROPIC_API_KEY", "k"), ("WEFT_MODEL", "claude-x")],
                "claude-x",
            ),
            ("Gemini", &[("GEMINI_API_KEY", "k")], gemini::DEFAULT_MODEL),
            (
                "ollama",
                &[("OLLAMA_HOST", "box:1234")],
                ollama::DEFAULT_MODEL,
            ),
            (
                "openai",
                &[("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")],
                openai::DEFAULT_MODEL,
            ),
            (
                "openai",
                &[("OPENAI_API_KEY", "k"), ("WEFT_MODEL", "gpt-x")],
                "gpt-x",
            ),
        ];
        for (provider, env, model) in cases {
            let m = from_provider_with(provider, &vars(env)).unwrap();
            assert_eq!(m.name(), provider.to_ascii_lowercase());
            assert_eq!(m.model_id(), Some(model));
        }
    }

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
