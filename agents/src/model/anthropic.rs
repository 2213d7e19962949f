//! The `anthropic` provider: Claude models through Anthropic's native Messages API
//! (`POST {base}/v1/messages`), whole answers and server-sent event streams, on the
//! shared [HTTP plumbing](super::http) (timeouts, retries, error kinds).
//!
//! | setting | environment ([`AnthropicModel::from_env`]) | default |
//! |---|---|---|
//! | base URL | `ANTHROPIC_BASE_URL` | `https://api.anthropic.com` |
//! | API key | `ANTHROPIC_API_KEY` | required |
//! | model | `WEFT_MODEL` | `claude-haiku-4-5` |
//! | `max_tokens` | — | 4096 |
//! | timeout, retries | — | 60 s per attempt, 3 attempts ([`super::http`]) |
//!
//! The wire rules this adapter follows, from Anthropic's documentation (Messages API
//! reference, `platform.claude.com/docs/en/api/messages`; "Handle tool calls" and
//! "Parallel tool use" under `agents-and-tools/tool-use/`; "Streaming messages" under
//! `build-with-claude/streaming`) and the official Python SDK (`anthropics/
//! anthropic-sdk-python`, `src/anthropic/types/`):
//!
//! - **Headers**: `x-api-key`, `anthropic-version: 2023-06-01`, `content-type:
//!   application/json` (API reference, "Versions" and "Authentication").
//! - **System prompt**: the top-level `system` field; the API has no `system` role in
//!   `messages`. Several system messages are joined with a blank line.
//! - **`max_tokens`** is required.
//! - **Tools**: `{name, description, input_schema}` with the JSON Schema as it is.
//! - **Tool calls** are `tool_use` content blocks `{id, name, input}` of the assistant
//!   message, after its text block (an empty text block is an error, so none is sent).
//! - **Tool results** are `tool_result` blocks `{tool_use_id, content, is_error?}` in
//!   the *next* user message: every result of one assistant turn in **one** user
//!   message, in the order of the calls, and before any text ("Parallel tool use":
//!   sending them as separate user messages teaches the model to stop calling tools in
//!   parallel; "Handle tool calls": tool results must come first in the content). A
//!   failed call (the tool loop's `{"error": …}` content) sets `is_error: true`.
//!   Consecutive messages of one role are merged into one message.
//! - **Answer**: `content` blocks (`text`, `tool_use`; `thinking` blocks are skipped),
//!   `stop_reason` (`end_turn`, `tool_use`, `max_tokens`, …, kept as the turn's
//!   finish reason), `usage` (`input_tokens` plus the cache's `cache_creation_` and
//!   `cache_read_input_tokens` as input, `output_tokens` as output), `model`.
//! - **Streaming** (`"stream": true`): events `message_start` (model, input usage),
//!   `content_block_start` (a `text` or `tool_use` block at an `index`),
//!   `content_block_delta` (`text_delta` text, handed on as it comes;
//!   `input_json_delta` partial JSON, joined per block and parsed at its end),
//!   `content_block_stop`, `message_delta` (`stop_reason`, cumulative `usage`),
//!   `message_stop`; `ping` is ignored, and an `error` event (e.g. `overloaded_error`
//!   after the HTTP 200) ends the call with the matching error kind.
//! - **Errors**: `{"type": "error", "error": {"type", "message"}}`; HTTP 529
//!   (`overloaded_error`) is a 5xx and retried like one.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, ErrorBody, Http, RetryPolicy, Settings};
use super::wire::{self, ToolContent};
use super::{
    Message, Model, ModelError, ModelErrorKind, ModelRequest, ModelTurn, Role, TextSink, ToolCall,
    Usage,
};

/// Default base URL: Anthropic's API.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Default model id.
pub const DEFAULT_MODEL: &str = "claude-haiku-4-5";
/// Default `max_tokens` (the API requires one): 4096.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The `anthropic-version` header sent.
pub const API_VERSION: &str = "2023-06-01";

/// A Claude model behind the Anthropic Messages API ([module docs](self)).
///
/// # Examples
/// ```no_run
/// use weft_agents::model::anthropic::AnthropicModel;
/// let model = AnthropicModel::builder()
///     .api_key("sk-ant-…")
///     .model("claude-sonnet-4-5")
///     .max_tokens(2048)
///     .build()?;
/// # Ok::<(), weft_agents::model::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AnthropicModel {
    http: Http,
    url: String,
    headers: HeaderMap,
    model: String,
    max_tokens: u32,
}

/// Settings of an [`AnthropicModel`]; every setter states its default. `Debug` prints
/// the key as `***`.
#[derive(Clone, Debug)]
pub struct AnthropicBuilder {
    settings: Settings,
    max_tokens: u32,
}

impl Default for AnthropicBuilder {
    fn default() -> Self {
        AnthropicBuilder {
            settings: Settings::new(DEFAULT_BASE_URL, DEFAULT_MODEL),
            max_tokens: DEFAULT_MAX_TOKENS,
        }
    }
}

impl AnthropicBuilder {
    /// The API base URL, ending before `/v1/messages`. Default [`DEFAULT_BASE_URL`].
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.settings.url = url.into();
        self
    }

    /// The API key, sent as `x-api-key`. Required.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.settings.api_key = Some(key.into());
        self
    }

    /// The model id, e.g. `claude-sonnet-4-5`. Default [`DEFAULT_MODEL`].
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.settings.model = model.into();
        self
    }

    /// Most tokens one answer may have (`max_tokens`). Default [`DEFAULT_MAX_TOKENS`].
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.max_tokens = tokens.max(1);
        self
    }

    /// Timeout of one HTTP attempt ([`super::http`]). Default 60 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How failed requests are retried. Default [`RetryPolicy::default`] (3 attempts).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// Builds the model.
    ///
    /// # Errors
    /// [`ModelErrorKind::Config`] when no API key is set, the key is not a valid
    /// header value, the base URL is not an `http(s)://` URL or the HTTP client cannot
    /// be built.
    pub fn build(self) -> Result<AnthropicModel, ModelError> {
        let s = self.settings;
        let base = http::base_url(&s.url)?;
        let Some(key) = s.key_header("Anthropic", "")? else {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                "the anthropic provider needs an API key: set ANTHROPIC_API_KEY",
            ));
        };
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-api-key"), key);
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        let http = Http::new(
            format!("anthropic model {} at {base}", s.model),
            s.timeout,
            s.retry,
            Some("ANTHROPIC_API_KEY"),
            read_error,
        )?;
        Ok(AnthropicModel {
            http,
            url: format!("{base}/v1/messages"),
            headers,
            model: s.model,
            max_tokens: self.max_tokens,
        })
    }
}

impl AnthropicModel {
    /// Settings with every default ([`AnthropicBuilder`]).
    pub fn builder() -> AnthropicBuilder {
        AnthropicBuilder::default()
    }

    /// A model configured from the environment: `ANTHROPIC_API_KEY` (required),
    /// `ANTHROPIC_BASE_URL` and `WEFT_MODEL` (table in the [module docs](self)); empty
    /// variables count as unset.
    ///
    /// # Errors
    /// As [`AnthropicBuilder::build`]; the message of a missing key names
    /// `ANTHROPIC_API_KEY`.
    pub fn from_env() -> Result<AnthropicModel, ModelError> {
        AnthropicModel::from_vars(&super::env_var)
    }

    /// As [`AnthropicModel::from_env`], reading variables with `var`.
    pub(crate) fn from_vars(
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AnthropicModel, ModelError> {
        let b = AnthropicModel::builder();
        AnthropicBuilder {
            settings: b
                .settings
                .read(var, "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
            ..b
        }
        .build()
    }

    /// The URL requests go to (`{base}/v1/messages`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request body for `request` ([module docs](self)).
    fn body(&self, request: &ModelRequest, stream: bool) -> Value {
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System && !m.content.is_empty())
            .map(|m| m.content.as_str())
            .collect();
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": messages(&request.messages),
        });
        if !system.is_empty() {
            body["system"] = Value::String(system.join("\n\n"));
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    let mut tool = json!({"name": t.name, "input_schema": t.parameters});
                    if !t.description.is_empty() {
                        tool["description"] = Value::String(t.description.clone());
                    }
                    tool
                })
                .collect();
        }
        if stream {
            body["stream"] = Value::Bool(true);
        }
        body
    }
}

/// The conversation as Anthropic `messages`: system messages left out (they go to
/// `system`), tool results as `tool_result` blocks of a user message, consecutive
/// messages of one role merged.
fn messages(history: &[Message]) -> Value {
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in history {
        let (role, blocks) = match m.role {
            Role::System => continue,
            Role::User => (
                "user",
                if m.content.is_empty() {
                    Vec::new()
                } else {
                    vec![json!({"type": "text", "text": m.content})]
                },
            ),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for c in &m.tool_calls {
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": c.id,
                        "name": c.name,
                        "input": wire::arguments_object(c),
                    }));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let mut block = json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": m.content,
                });
                if ToolContent::parse(&m.content).is_error() {
                    block["is_error"] = Value::Bool(true);
                }
                ("user", vec![block])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((last, existing)) if *last == role => {
                // Tool results first, then text (Handle tool calls): a user text
                // merged after results stays after them, and results merged after
                // text go before it.
                if role == "user" && blocks[0]["type"] == "tool_result" {
                    let at = existing
                        .iter()
                        .position(|b| b["type"] != "tool_result")
                        .unwrap_or(existing.len());
                    existing.splice(at..at, blocks);
                } else {
                    existing.extend(blocks);
                }
            }
            _ => out.push((role, blocks)),
        }
    }
    out.into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect()
}

/// Reads an Anthropic error body `{"type": "error", "error": {"type", "message"}}`.
fn read_error(body: &[u8]) -> ErrorBody {
    #[derive(Deserialize)]
    struct Wrapper {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Wrapper>(body) {
        Ok(w) => ErrorBody {
            message: Some(if w.error.kind.is_empty() {
                w.error.message
            } else {
                format!("{} ({})", w.error.message, w.error.kind)
            }),
            retry_after: None,
        },
        Err(_) => ErrorBody::default(),
    }
}

/// The error kind of an Anthropic error `type` (for `error` stream events, which
/// arrive after HTTP 200).
fn error_type_kind(kind: &str) -> ModelErrorKind {
    match kind {
        "authentication_error" | "permission_error" => ModelErrorKind::Auth,
        "rate_limit_error" => ModelErrorKind::RateLimited,
        "overloaded_error" | "api_error" => ModelErrorKind::Unavailable,
        "timeout_error" => ModelErrorKind::Timeout,
        _ => ModelErrorKind::Rejected,
    }
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl WireUsage {
    fn input(&self) -> Option<u64> {
        let parts = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        parts
            .iter()
            .any(Option::is_some)
            .then(|| parts.iter().flatten().sum())
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    model: Option<String>,
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// One event of a Messages stream (Streaming messages, "Event types").
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: Delta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: StreamError,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// A content block being streamed.
enum Open {
    Text,
    Tool {
        id: String,
        name: String,
        json: String,
    },
    Skipped,
}

#[async_trait::async_trait]
impl Model for AnthropicModel {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn model_id(&self) -> Option<&str> {
        Some(&self.model)
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        let bytes = self
            .http
            .post_json(&self.url, &self.headers, &self.body(request, false))
            .await?;
        let response: Response = serde_json::from_slice(&bytes).map_err(|e| {
            self.http.invalid(format_args!(
                "something that is not a Messages response ({e}): {}",
                wire::excerpt(&String::from_utf8_lossy(&bytes))
            ))
        })?;
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in response.content {
            match block {
                Block::Text { text: t } => text.push_str(&t),
                Block::ToolUse { id, name, input } => tool_calls.push(ToolCall::new(
                    id,
                    name,
                    if input.is_null() { json!({}) } else { input },
                )),
                Block::Other => {}
            }
        }
        Ok(ModelTurn {
            content: (!text.is_empty()).then_some(text),
            tool_calls,
            usage: response.usage.map(|u| Usage {
                input_tokens: u.input().unwrap_or(0),
                output_tokens: u.output_tokens.unwrap_or(0),
            }),
            finish_reason: response.stop_reason,
            response_model: response.model,
        })
    }

    async fn stream(
        &self,
        request: &ModelRequest,
        on_text: TextSink<'_>,
    ) -> Result<ModelTurn, ModelError> {
        let chunks = self
            .http
            .post_stream(&self.url, &self.headers, &self.body(request, true))
            .await?;
        let mut events = std::pin::pin!(http::events(chunks, self.http.at().to_owned()));
        let mut open: BTreeMap<usize, Open> = BTreeMap::new();
        let mut text = String::new();
        let mut tool_calls: Vec<(usize, ToolCall)> = Vec::new();
        let (mut input, mut output) = (None, None);
        let mut turn = ModelTurn::default();
        let mut stopped = false;
        while let Some(event) = events.next().await {
            let event = event?;
            if event.data.trim().is_empty() {
                continue;
            }
            let parsed: Event = serde_json::from_str(&event.data).map_err(|e| {
                self.http.invalid(format_args!(
                    "a stream event that is not a Messages event ({e}): {}",
                    wire::excerpt(&event.data)
                ))
            })?;
            match parsed {
                Event::MessageStart { message } => {
                    turn.response_model = message.model;
                    if let Some(u) = message.usage {
                        input = u.input();
                        output = u.output_tokens;
                    }
                }
                Event::ContentBlockStart {
                    index,
                    content_block,
                } => {
                    let block = match content_block {
                        Block::Text { text: t } => {
                            if !t.is_empty() {
                                on_text(&t);
                                text.push_str(&t);
                            }
                            Open::Text
                        }
                        Block::ToolUse { id, name, .. } => Open::Tool {
                            id,
                            name,
                            json: String::new(),
                        },
                        Block::Other => Open::Skipped,
                    };
                    open.insert(index, block);
                }
                Event::ContentBlockDelta { index, delta } => match (open.get_mut(&index), delta) {
                    (Some(Open::Text), Delta::Text { text: t }) if !t.is_empty() => {
                        on_text(&t);
                        text.push_str(&t);
                    }
                    (Some(Open::Tool { json, .. }), Delta::InputJson { partial_json }) => {
                        json.push_str(&partial_json);
                    }
                    (None, _) => {
                        return Err(self.http.invalid(format_args!(
                            "a delta for content block {index}, which was never started"
                        )));
                    }
                    _ => {}
                },
                Event::ContentBlockStop { index } => {
                    if let Some(Open::Tool { id, name, json }) = open.remove(&index) {
                        tool_calls.push((index, wire::parse_arguments(id, name, &json)));
                    }
                }
                Event::MessageDelta { delta, usage } => {
                    if delta.stop_reason.is_some() {
                        turn.finish_reason = delta.stop_reason;
                    }
                    if let Some(u) = usage {
                        input = u.input().or(input);
                        output = u.output_tokens.or(output);
                    }
                }
                Event::MessageStop => {
                    stopped = true;
                    break;
                }
                Event::Error { error } => {
                    return Err(ModelError::new(
                        error_type_kind(&error.kind),
                        format!(
                            "{} failed in the middle of its answer: {} ({})",
                            self.http.at(),
                            error.message,
                            error.kind
                        ),
                    ));
                }
                Event::Ping | Event::Other => {}
            }
        }
        if !stopped {
            return Err(ModelError::new(
                ModelErrorKind::Connect,
                format!("{}: the stream ended before message_stop", self.http.at()),
            ));
        }
        // Blocks still open at message_stop (not seen in practice) count as ended.
        for (index, block) in std::mem::take(&mut open) {
            if let Open::Tool { id, name, json } = block {
                tool_calls.push((index, wire::parse_arguments(id, name, &json)));
            }
        }
        tool_calls.sort_by_key(|(i, _)| *i);
        turn.tool_calls = tool_calls.into_iter().map(|(_, c)| c).collect();
        turn.content = (!text.is_empty()).then_some(text);
        if input.is_some() || output.is_some() {
            turn.usage = Some(Usage {
                input_tokens: input.unwrap_or(0),
                output_tokens: output.unwrap_or(0),
            });
        }
        Ok(turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolSpec;

    fn model() -> AnthropicModel {
        AnthropicModel::builder().api_key("k").build().unwrap()
    }

    #[test]
    fn tool_results_of_one_turn_go_in_one_user_message_first() {
        let history = vec![
            Message::system("Be brief."),
            Message::user("add and fail"),
            Message::assistant(
                "Let me see.",
                vec![
                    ToolCall::new("t1", "add", json!({"a": 1})),
                    ToolCall::new("t2", "fail", json!({})),
                ],
            ),
            Message::tool("t1", r#"{"sum": 1}"#),
            Message::tool("t2", r#"{"error": {"code": "NOPE", "message": "no"}}"#),
            Message::user("and now?"),
        ];
        let body = model().body(
            &ModelRequest {
                messages: history,
                tools: vec![ToolSpec {
                    name: "add".into(),
                    description: String::new(),
                    parameters: json!({"type": "object"}),
                }],
            },
            false,
        );
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(
            body["tools"][0],
            json!({"name": "add", "input_schema": {"type": "object"}})
        );
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{body:#}");
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "text", "text": "Let me see."})
        );
        assert_eq!(m[1]["content"][1]["type"], "tool_use");
        let results = m[2]["content"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0]["tool_use_id"], "t1");
        assert!(results[0].get("is_error").is_none());
        assert_eq!(results[1]["tool_use_id"], "t2");
        assert_eq!(results[1]["is_error"], true);
        assert_eq!(results[2], json!({"type": "text", "text": "and now?"}));
    }

    #[test]
    fn a_missing_key_names_the_variable() {
        let e = AnthropicModel::builder().build().unwrap_err();
        assert_eq!(e.kind(), ModelErrorKind::Config);
        assert!(e.to_string().contains("ANTHROPIC_API_KEY"), "{e}");
    }
}
