//! The `openai` provider: any server speaking the OpenAI Chat Completions API with
//! tool calling — OpenAI itself, or a local Ollama, vLLM or llama.cpp server.
//!
//! Built on the [`async_openai`] crate (its request and response types and its
//! client, which retries HTTP 429 and 5xx answers and connection failures up to 3
//! times with exponential back-off from 100 ms, honouring `Retry-After`).
//!
//! | setting | environment ([`OpenAiModel::from_env`]) | default |
//! |---|---|---|
//! | base URL | `OPENAI_BASE_URL` | `https://api.openai.com/v1` |
//! | API key | `OPENAI_API_KEY` | none (local servers need none) |
//! | model | `WEFT_MODEL` | `gpt-4o-mini` |
//! | request timeout | — | 60 s per HTTP attempt (streams: 60 s for the response head, then between two chunks) |
//!
//! Tool call arguments arrive as JSON text; text that does not parse is kept raw in
//! [`ToolCall::arguments`] with [`ToolCall::arguments_error`] set, and the tool loop
//! sends the parse error back to the model instead of calling the tool.
//!
//! [`Model::stream`] sends `"stream": true` with `stream_options: {"include_usage":
//! true}` (OpenAI API reference, "Create chat completion" and "The chat completion
//! chunk object"): text deltas (`choices[0].delta.content`) are handed on as they
//! come; tool calls arrive as `delta.tool_calls[]` fragments keyed by `index` (the
//! first fragment of a call has its `id` and `function.name`, later ones append to
//! `function.arguments`) and are assembled per index; the last chunk has the `usage`
//! and no choices. A server that ignores `stream_options` (some OpenAI-compatible
//! ones) just gives no usage.
//!
//! TLS uses rustls with the `ring` crypto provider, installed as the process default
//! the first time a model is built (unless the process installed another one before).

use std::collections::BTreeMap;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::{OpenAIError, StreamError};
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionTools, CreateChatCompletionRequest, FunctionCall, FunctionObject,
};
use futures::StreamExt;
use serde_json::Value;

use super::http::install_crypto_provider;
use super::wire::{excerpt, parse_arguments};
use super::{
    Message, Model, ModelError, ModelErrorKind, ModelRequest, ModelTurn, Role, TextSink, ToolCall,
};

/// Default base URL: OpenAI's API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Default model id.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";
/// Default timeout of one HTTP attempt: 60 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A model behind an OpenAI-compatible Chat Completions endpoint.
///
/// # Examples
/// ```no_run
/// use std::time::Duration;
/// use weft_agents::model::openai::OpenAiModel;
/// // A local Ollama server:
/// let model = OpenAiModel::builder()
///     .base_url("http://127.0.0.1:11434/v1")
///     .model("llama3.1")
///     .timeout(Duration::from_secs(120))
///     .build()?;
/// # Ok::<(), weft_agents::model::ModelError>(())
/// ```
#[derive(Clone)]
pub struct OpenAiModel {
    client: Client<OpenAIConfig>,
    /// For streams: no overall timeout (a long answer keeps streaming); `stream`
    /// bounds the head and each gap between chunks.
    stream_client: Client<OpenAIConfig>,
    base_url: String,
    model: String,
    timeout: Duration,
}

impl std::fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Settings of an [`OpenAiModel`]; every setter states its default.
#[derive(Clone)]
pub struct OpenAiBuilder {
    base_url: String,
    api_key: Option<String>,
    model: String,
    timeout: Duration,
}

impl std::fmt::Debug for OpenAiBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for OpenAiBuilder {
    fn default() -> Self {
        OpenAiBuilder {
            base_url: DEFAULT_BASE_URL.into(),
            api_key: None,
            model: DEFAULT_MODEL.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl OpenAiBuilder {
    /// The API base URL, ending before `/chat/completions`. Default
    /// [`DEFAULT_BASE_URL`].
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The API key, sent as `Authorization: Bearer <key>`. Default none.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The model id, e.g. `gpt-4o-mini` or `llama3.1`. Default [`DEFAULT_MODEL`].
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Timeout of one HTTP attempt. Default [`DEFAULT_TIMEOUT`] (60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the model.
    ///
    /// # Errors
    /// [`ModelErrorKind::Config`] when the base URL is not an `http(s)://` URL or the
    /// HTTP client cannot be built.
    pub fn build(self) -> Result<OpenAiModel, ModelError> {
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                format!("model base URL {base_url:?} is not an http:// or https:// URL"),
            ));
        }
        install_crypto_provider();
        let cannot = |e| {
            ModelError::with_source(
                ModelErrorKind::Config,
                "cannot build the HTTP client for the model",
                e,
            )
        };
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(cannot)?;
        // Streams: no overall timeout (a long answer keeps streaming); `stream` bounds
        // the head and each gap between chunks itself.
        let stream_http = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .build()
            .map_err(cannot)?;
        let mut config = OpenAIConfig::new().with_api_base(&base_url);
        config = config.with_api_key(self.api_key.unwrap_or_default());
        Ok(OpenAiModel {
            client: Client::build(http, config.clone()),
            stream_client: Client::build(stream_http, config),
            base_url,
            model: self.model,
            timeout: self.timeout,
        })
    }
}

impl OpenAiModel {
    /// Settings with every default ([`OpenAiBuilder`]).
    pub fn builder() -> OpenAiBuilder {
        OpenAiBuilder::default()
    }

    /// A model configured from the environment: `OPENAI_BASE_URL`, `OPENAI_API_KEY`
    /// and `WEFT_MODEL` (table in the [module docs](self)); empty variables count as
    /// unset.
    ///
    /// # Errors
    /// As [`OpenAiBuilder::build`].
    pub fn from_env() -> Result<OpenAiModel, ModelError> {
        OpenAiModel::from_vars(&super::env_var)
    }

    /// As [`OpenAiModel::from_env`], reading variables with `var`.
    pub(crate) fn from_vars(
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<OpenAiModel, ModelError> {
        let mut b = OpenAiModel::builder();
        if let Some(url) = var("OPENAI_BASE_URL") {
            b = b.base_url(url);
        }
        if let Some(key) = var("OPENAI_API_KEY") {
            b = b.api_key(key);
        }
        if let Some(model) = var("WEFT_MODEL") {
            b = b.model(model);
        }
        b.build()
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The Chat Completions request for `request`.
    fn wire_request(&self, request: &ModelRequest) -> CreateChatCompletionRequest {
        let tools: Vec<ChatCompletionTools> = request
            .tools
            .iter()
            .map(|t| {
                ChatCompletionTools::Function(ChatCompletionTool {
                    function: FunctionObject {
                        name: t.name.clone(),
                        description: (!t.description.is_empty()).then(|| t.description.clone()),
                        parameters: Some(t.parameters.clone()),
                        strict: None,
                    },
                })
            })
            .collect();
        CreateChatCompletionRequest {
            model: self.model.clone(),
            messages: request.messages.iter().map(to_wire).collect(),
            tools: (!tools.is_empty()).then_some(tools),
            ..Default::default()
        }
    }

    fn error(&self, e: OpenAIError) -> ModelError {
        let at = format!("model {} at {}", self.model, self.base_url);
        match e {
            OpenAIError::Reqwest(e) if e.is_timeout() => ModelError::with_source(
                ModelErrorKind::Timeout,
                format!(
                    "{at} did not answer within {} s",
                    self.timeout.as_secs_f64()
                ),
                e,
            ),
            OpenAIError::Reqwest(e) if e.is_decode() || e.is_body() => ModelError::with_source(
                ModelErrorKind::InvalidResponse,
                format!("{at}: cannot read the answer"),
                e,
            ),
            OpenAIError::Reqwest(e) => ModelError::with_source(
                ModelErrorKind::Connect,
                format!("cannot reach {at} (is the server running?)"),
                e,
            ),
            OpenAIError::ApiError(api) => {
                let status = api.status_code.as_u16();
                let kind = match status {
                    401 | 403 => ModelErrorKind::Auth,
                    408 => ModelErrorKind::Timeout,
                    429 => ModelErrorKind::RateLimited,
                    500..=599 => ModelErrorKind::Unavailable,
                    _ => ModelErrorKind::Rejected,
                };
                let hint = match kind {
                    ModelErrorKind::Auth => " (check OPENAI_API_KEY)",
                    _ => "",
                };
                ModelError::new(
                    kind,
                    format!(
                        "{at} answered HTTP {status}: {}{hint}",
                        excerpt(&api.api_error.to_string())
                    ),
                )
            }
            OpenAIError::JSONDeserialize(e, body) => ModelError::new(
                ModelErrorKind::InvalidResponse,
                format!(
                    "{at} answered something that is not a Chat Completions response ({e}): {}",
                    excerpt(&body)
                ),
            ),
            OpenAIError::StreamError(e) => match *e {
                // async-openai turns a broken body into text: "Transport error: …".
                StreamError::EventStream(m) if m.starts_with("Transport error") => ModelError::new(
                    ModelErrorKind::Connect,
                    format!("{at}: the connection broke in the middle of the answer ({m})"),
                ),
                other => ModelError::new(
                    ModelErrorKind::InvalidResponse,
                    format!("{at} sent a malformed stream: {other}"),
                ),
            },
            OpenAIError::InvalidArgument(m) => {
                ModelError::new(ModelErrorKind::Config, format!("{at}: {m}"))
            }
            other => ModelError::with_source(
                ModelErrorKind::InvalidResponse,
                format!("{at} failed"),
                other,
            ),
        }
    }
}

fn to_wire(m: &Message) -> ChatCompletionRequestMessage {
    match m.role {
        Role::System => ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
            content: ChatCompletionRequestSystemMessageContent::Text(m.content.clone()),
            name: None,
        }),
        Role::User => ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
            content: ChatCompletionRequestUserMessageContent::Text(m.content.clone()),
            name: None,
        }),
        Role::Assistant => {
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                content: (!m.content.is_empty() || m.tool_calls.is_empty())
                    .then(|| ChatCompletionRequestAssistantMessageContent::Text(m.content.clone())),
                tool_calls: (!m.tool_calls.is_empty()).then(|| {
                    m.tool_calls
                        .iter()
                        .map(|c| {
                            ChatCompletionMessageToolCalls::Function(
                                ChatCompletionMessageToolCall {
                                    id: c.id.clone(),
                                    function: FunctionCall {
                                        name: c.name.clone(),
                                        arguments: match (&c.arguments_error, &c.arguments) {
                                            // Send the model's own text back as it was.
                                            (Some(_), Value::String(raw)) => raw.clone(),
                                            (_, v) => v.to_string(),
                                        },
                                    },
                                },
                            )
                        })
                        .collect()
                }),
                ..Default::default()
            })
        }
        Role::Tool => ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
            content: ChatCompletionRequestToolMessageContent::Text(m.content.clone()),
            tool_call_id: m.tool_call_id.clone().unwrap_or_default(),
        }),
    }
}

#[async_trait::async_trait]
impl Model for OpenAiModel {
    fn name(&self) -> &str {
        "openai"
    }

    fn model_id(&self) -> Option<&str> {
        Some(&self.model)
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        let wire = self.wire_request(request);
        let response = self
            .client
            .chat()
            .create(wire)
            .await
            .map_err(|e| self.error(e))?;
        let usage = response.usage.as_ref().map(|u| crate::model::Usage {
            input_tokens: u64::from(u.prompt_tokens),
            output_tokens: u64::from(u.completion_tokens),
        });
        let response_model = Some(response.model.clone()).filter(|m| !m.is_empty());
        let Some(choice) = response.choices.into_iter().next() else {
            return Err(ModelError::new(
                ModelErrorKind::InvalidResponse,
                format!(
                    "model {} at {} answered with no choices",
                    self.model, self.base_url
                ),
            ));
        };
        let finish_reason = choice
            .finish_reason
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|v| v.as_str().map(str::to_owned));
        let message = choice.message;
        let tool_calls = message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| match c {
                ChatCompletionMessageToolCalls::Function(f) => {
                    parse_arguments(f.id, f.function.name, &f.function.arguments)
                }
                ChatCompletionMessageToolCalls::Custom(c) => ToolCall {
                    arguments: Value::String(c.custom_tool.input),
                    arguments_error: Some("custom (free-text) tool calls are not supported; call a function tool with JSON arguments".into()),
                    ..ToolCall::new(c.id, c.custom_tool.name, Value::Null)
                },
            })
            .collect();
        Ok(ModelTurn {
            content: message.content.or(message.refusal),
            tool_calls,
            usage,
            finish_reason,
            response_model,
        })
    }

    async fn stream(
        &self,
        request: &ModelRequest,
        on_text: TextSink<'_>,
    ) -> Result<ModelTurn, ModelError> {
        let mut wire = self.wire_request(request);
        wire.stream_options = Some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
        let timed_out = |what: &str| {
            ModelError::new(
                ModelErrorKind::Timeout,
                format!(
                    "model {} at {} {what} within {} s",
                    self.model,
                    self.base_url,
                    self.timeout.as_secs_f64()
                ),
            )
        };
        // The timeout bounds the wait for the response head, then each gap between
        // two chunks (not the whole answer).
        let mut chunks =
            tokio::time::timeout(self.timeout, self.stream_client.chat().create_stream(wire))
                .await
                .map_err(|_| timed_out("did not answer"))?
                .map_err(|e| self.error(e))?;
        let mut text = String::new();
        let mut refusal = String::new();
        // Tool calls by their `index`: id, name, argument text so far.
        let mut calls: BTreeMap<u32, (String, String, String)> = BTreeMap::new();
        let mut turn = ModelTurn::default();
        loop {
            let Some(chunk) = tokio::time::timeout(self.timeout, chunks.next())
                .await
                .map_err(|_| timed_out("sent nothing more of its answer"))?
            else {
                break;
            };
            let chunk = chunk.map_err(|e| self.error(e))?;
            if !chunk.model.is_empty() {
                turn.response_model = Some(chunk.model.clone());
            }
            if let Some(u) = &chunk.usage {
                turn.usage = Some(crate::model::Usage {
                    input_tokens: u64::from(u.prompt_tokens),
                    output_tokens: u64::from(u.completion_tokens),
                });
            }
            let Some(choice) = chunk.choices.into_iter().next() else {
                continue;
            };
            if let Some(t) = choice.delta.content.filter(|t| !t.is_empty()) {
                on_text(&t);
                text.push_str(&t);
            }
            if let Some(r) = choice.delta.refusal {
                refusal.push_str(&r);
            }
            for c in choice.delta.tool_calls.unwrap_or_default() {
                let entry = calls.entry(c.index).or_default();
                if let Some(id) = c.id.filter(|i| !i.is_empty()) {
                    entry.0 = id;
                }
                if let Some(f) = c.function {
                    if let Some(name) = f.name.filter(|n| !n.is_empty()) {
                        entry.1 = name;
                    }
                    if let Some(args) = f.arguments {
                        entry.2.push_str(&args);
                    }
                }
            }
            if let Some(r) = choice.finish_reason {
                turn.finish_reason = serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
            }
        }
        turn.tool_calls = calls
            .into_values()
            .map(|(id, name, args)| parse_arguments(id, name, &args))
            .collect();
        if text.is_empty() && !refusal.is_empty() {
            on_text(&refusal);
            text = refusal;
        }
        turn.content = (!text.is_empty()).then_some(text);
        Ok(turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unparseable_arguments_are_kept_with_an_error() {
        let c = parse_arguments("c".into(), "t".into(), r#"{"a": 1}"#);
        assert_eq!(c.arguments, json!({"a": 1}));
        assert!(c.arguments_error.is_none());
        let c = parse_arguments("c".into(), "t".into(), "");
        assert_eq!(c.arguments, json!({}));
        let c = parse_arguments("c".into(), "t".into(), "{oops");
        assert_eq!(c.arguments, json!("{oops"));
        assert!(c.arguments_error.is_some());
        // Sent back verbatim.
        let wire = serde_json::to_value(to_wire(&Message::assistant("", vec![c]))).unwrap();
        assert_eq!(wire["tool_calls"][0]["function"]["arguments"], "{oops");
        assert!(wire.get("content").is_none(), "{wire}");
    }

    #[test]
    fn bad_base_urls_are_config_errors() {
        let e = OpenAiModel::builder()
            .base_url("localhost:11434")
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ModelErrorKind::Config);
        assert!(e.to_string().contains("localhost:11434"), "{e}");
    }

    #[tokio::test]
    async fn https_works_without_a_panic() {
        // Building the client needs a rustls crypto provider; an https URL to a closed
        // port must end in a clear error, not a panic.
        let model = OpenAiModel::builder()
            .base_url("https://127.0.0.1:9/v1")
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let e = model
            .complete(&ModelRequest {
                messages: vec![Message::user("hi")],
                tools: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ModelErrorKind::Connect, "{e}");
        assert!(e.to_string().contains("https://127.0.0.1:9/v1"), "{e}");
    }
}
