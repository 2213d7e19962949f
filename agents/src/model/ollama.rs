//! The `ollama` provider: a local (or remote) Ollama server through its native chat
//! API (`POST {host}/api/chat`), on the shared [HTTP plumbing](super::http)
//! (timeouts, retries, error kinds). Ollama also speaks the OpenAI wire format at
//! `/v1`, usable with [`super::openai`]; the native API is the one that reports
//! `done_reason` and token counts for every model and takes tool results by name.
//!
//! | setting | environment ([`OllamaModel::from_env`]) | default |
//! |---|---|---|
//! | host | `OLLAMA_HOST` | `http://127.0.0.1:11434` |
//! | model | `WEFT_MODEL` | `llama3.2` |
//! | API key | `OLLAMA_API_KEY` (for a server behind a proxy or ollama.com) | none |
//! | timeout, retries | — | 60 s per attempt, 3 attempts ([`super::http`]) |
//!
//! `OLLAMA_HOST` is read as Ollama's own CLI reads it (`envconfig.Host` in
//! `ollama/ollama`): a missing scheme means `http://`, a missing port 11434, and the
//! bind-all addresses `0.0.0.0` and `[::]` mean this machine.
//!
//! The wire rules this adapter follows, from `docs/api.md` of `ollama/ollama`
//! ("Generate a chat completion": parameters, "Chat request (Streaming with tools)",
//! "Chat request (With history, with tools)"), `docs/capabilities/tool-calling.mdx`,
//! `docs/api/streaming.mdx`, `docs/api/errors.mdx` and the Go types in `api/types.go`
//! (`Message`, `ToolCall`, `ChatResponse`):
//!
//! - **Streaming is the default** of `/api/chat`: [`Model::complete`] sends
//!   `"stream": false` and reads one JSON object; [`Model::stream`] sends
//!   `"stream": true` and reads newline-delimited JSON objects
//!   (`application/x-ndjson`), each a partial `message`, the last one `"done": true`.
//! - **Messages**: roles `system`, `user`, `assistant`, `tool`; the system prompt is a
//!   `system` message, in place.
//! - **Tools**: `{"type": "function", "function": {name, description, parameters}}`.
//! - **Tool calls**: `message.tool_calls[].function.{name, arguments}`, the arguments
//!   a JSON **object** (not text as in OpenAI's format); newer servers add an `id`.
//!   A call without one gets an id of the adapter's (`call_…`). In a stream the calls
//!   may come in any chunk, done or not; they are collected.
//! - **Tool results**: `{"role": "tool", "tool_name": <the call's function name>,
//!   "content"}` (plus `tool_call_id` with the call's id, which newer servers use to
//!   pair results with calls and older ones ignore).
//! - **Answer**: `message.content` (the `thinking` of thinking models is not part of
//!   the reply), `done_reason` (`stop`, `length`, …) as the finish reason,
//!   `prompt_eval_count` / `eval_count` as input / output tokens, `model`.
//! - **Errors**: `{"error": "…"}` with an HTTP status; in a stream, an object with an
//!   `error` after the HTTP 200 ends the call as [`ModelErrorKind::Unavailable`].

use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, ErrorBody, Http, RetryPolicy, Settings};
use super::wire;
use super::{
    Model, ModelError, ModelErrorKind, ModelRequest, ModelTurn, Role, TextSink, ToolCall, Usage,
};

/// Default host: an Ollama server on this machine.
pub const DEFAULT_HOST: &str = "http://127.0.0.1:11434";
/// Default model id.
pub const DEFAULT_MODEL: &str = "llama3.2";

/// A model served by Ollama's native chat API ([module docs](self)).
///
/// # Examples
/// ```no_run
/// use std::time::Duration;
/// use weft_agents::model::ollama::OllamaModel;
/// let model = OllamaModel::builder()
///     .host("gpu-box:11434")
///     .model("qwen3")
///     .timeout(Duration::from_secs(300))
///     .build()?;
/// # Ok::<(), weft_agents::model::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OllamaModel {
    http: Http,
    host: String,
    headers: HeaderMap,
    model: String,
}

/// Settings of an [`OllamaModel`]; every setter states its default. `Debug` prints the
/// key as `***`.
#[derive(Clone, Debug)]
pub struct OllamaBuilder {
    /// `url` is the host as `OLLAMA_HOST` takes it.
    settings: Settings,
}

impl Default for OllamaBuilder {
    fn default() -> Self {
        OllamaBuilder {
            settings: Settings::new(DEFAULT_HOST, DEFAULT_MODEL),
        }
    }
}

impl OllamaBuilder {
    /// The server, as `OLLAMA_HOST` takes it: `http://host:port`, `host:port` or
    /// `host` ([module docs](self)). Default [`DEFAULT_HOST`].
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.settings.url = host.into();
        self
    }

    /// An API key, sent as `Authorization: Bearer <key>`. Default none (a local
    /// server needs none).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.settings.api_key = Some(key.into());
        self
    }

    /// The model name, e.g. `llama3.2` or `qwen3:8b`. Default [`DEFAULT_MODEL`].
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.settings.model = model.into();
        self
    }

    /// Timeout of one HTTP attempt ([`super::http`]); a cold model's first answer
    /// includes loading it. Default 60 s.
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
    /// [`ModelErrorKind::Config`] when the host is not a URL of scheme `http` or
    /// `https`, the key is not a valid header value or the HTTP client cannot be
    /// built.
    pub fn build(self) -> Result<OllamaModel, ModelError> {
        let s = self.settings;
        let host = http::base_url(&host_url(&s.url))?;
        let mut headers = HeaderMap::new();
        if let Some(key) = s.key_header("Ollama", "Bearer ")? {
            headers.insert(AUTHORIZATION, key);
        }
        let http = Http::new(
            format!("ollama model {} at {host}", s.model),
            s.timeout,
            s.retry,
            Some("OLLAMA_API_KEY"),
            read_error,
        )?;
        Ok(OllamaModel {
            http,
            host,
            headers,
            model: s.model,
        })
    }
}

/// `OLLAMA_HOST` as a URL, the way Ollama reads it: default scheme `http`, default
/// port 11434 (80/443 with an explicit `http://`/`https://`), bind-all addresses
/// mean loopback.
fn host_url(host: &str) -> String {
    let host = host.trim();
    let (scheme, rest, default_port) = match host.split_once("://") {
        None => ("http", host, "11434"),
        Some(("https", rest)) => ("https", rest, "443"),
        Some((scheme, rest)) => (scheme, rest, if scheme == "http" { "80" } else { "" }),
    };
    let (hostport, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, String::new()),
    };
    let has_port = match hostport.rfind(':') {
        Some(i) => !hostport.starts_with('[') || hostport[..i].ends_with(']'),
        None => false,
    };
    let hostport = if hostport.is_empty() {
        format!("127.0.0.1:{default_port}")
    } else if has_port || default_port.is_empty() {
        hostport.to_owned()
    } else {
        format!("{hostport}:{default_port}")
    };
    let hostport = hostport
        .replacen("0.0.0.0:", "127.0.0.1:", 1)
        .replacen("[::]:", "[::1]:", 1);
    format!("{scheme}://{hostport}{path}")
}

impl OllamaModel {
    /// Settings with every default ([`OllamaBuilder`]).
    pub fn builder() -> OllamaBuilder {
        OllamaBuilder::default()
    }

    /// A model configured from the environment: `OLLAMA_HOST`, `WEFT_MODEL` and
    /// `OLLAMA_API_KEY` (table in the [module docs](self)); empty variables count as
    /// unset.
    ///
    /// # Errors
    /// As [`OllamaBuilder::build`].
    pub fn from_env() -> Result<OllamaModel, ModelError> {
        OllamaModel::from_vars(&super::env_var)
    }

    /// As [`OllamaModel::from_env`], reading variables with `var`.
    pub(crate) fn from_vars(
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<OllamaModel, ModelError> {
        let defaults = OllamaModel::builder().settings;
        OllamaBuilder {
            settings: defaults.read(var, "OLLAMA_HOST", "OLLAMA_API_KEY"),
        }
        .build()
    }

    /// The server's URL requests go to (`{host}/api/chat`).
    pub fn host(&self) -> &str {
        &self.host
    }

    fn body(&self, request: &ModelRequest, stream: bool) -> Value {
        let calls = wire::calls_by_id(&request.messages);
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| match m.role {
                Role::System => json!({"role": "system", "content": m.content}),
                Role::User => json!({"role": "user", "content": m.content}),
                Role::Assistant => {
                    let mut msg = json!({"role": "assistant", "content": m.content});
                    if !m.tool_calls.is_empty() {
                        msg["tool_calls"] = m
                            .tool_calls
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                json!({"id": c.id, "function": {
                                    "index": i,
                                    "name": c.name,
                                    "arguments": wire::arguments_object(c),
                                }})
                            })
                            .collect();
                    }
                    msg
                }
                Role::Tool => {
                    let id = m.tool_call_id.as_deref().unwrap_or_default();
                    json!({
                        "role": "tool",
                        "content": m.content,
                        "tool_name": calls.get(id).map(|c| c.name.as_str()).unwrap_or_default(),
                        "tool_call_id": id,
                    })
                }
            })
            .collect();
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": stream,
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    }})
                })
                .collect();
        }
        body
    }

    fn url(&self) -> String {
        format!("{}/api/chat", self.host)
    }
}

/// Reads an Ollama error body `{"error": "…"}`.
fn read_error(body: &[u8]) -> ErrorBody {
    #[derive(Deserialize)]
    struct Wrapper {
        error: Value,
    }
    match serde_json::from_slice::<Wrapper>(body) {
        Ok(w) => ErrorBody {
            message: Some(match w.error {
                Value::String(s) => s,
                other => other.to_string(),
            }),
            retry_after: None,
        },
        Err(_) => ErrorBody::default(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Chunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    message: Option<ChunkMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct ChunkMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<WireCall>,
}

#[derive(Debug, Deserialize)]
struct WireCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// Assembles a turn from one answer or the chunks of a stream.
#[derive(Default)]
struct Assembler {
    turn: ModelTurn,
    text: String,
    done: bool,
}

impl Assembler {
    fn add(
        &mut self,
        http: &Http,
        chunk: Chunk,
        on_text: Option<TextSink<'_>>,
    ) -> Result<(), ModelError> {
        if let Some(e) = chunk.error {
            let e = match e {
                Value::String(s) => s,
                other => other.to_string(),
            };
            return Err(ModelError::new(
                ModelErrorKind::Unavailable,
                format!("{} failed in the middle of its answer: {e}", http.at()),
            ));
        }
        if let Some(m) = chunk.model.filter(|m| !m.is_empty()) {
            self.turn.response_model = Some(m);
        }
        if let Some(msg) = chunk.message {
            if !msg.content.is_empty() {
                if let Some(sink) = on_text {
                    sink(&msg.content);
                }
                self.text.push_str(&msg.content);
            }
            for c in msg.tool_calls {
                let arguments = match c.function.arguments {
                    Value::Null => json!({}),
                    // Some models' templates hand back the arguments as JSON text.
                    Value::String(s) => {
                        let call = wire::parse_arguments(String::new(), String::new(), &s);
                        if call.arguments_error.is_none() {
                            call.arguments
                        } else {
                            Value::String(s)
                        }
                    }
                    v => v,
                };
                self.turn.tool_calls.push(ToolCall::new(
                    c.id.filter(|i| !i.is_empty())
                        .unwrap_or_else(wire::new_call_id),
                    c.function.name,
                    arguments,
                ));
            }
        }
        if chunk.done {
            self.done = true;
            self.turn.finish_reason = chunk.done_reason.filter(|r| !r.is_empty());
            if chunk.prompt_eval_count.is_some() || chunk.eval_count.is_some() {
                self.turn.usage = Some(Usage {
                    input_tokens: chunk.prompt_eval_count.unwrap_or(0),
                    output_tokens: chunk.eval_count.unwrap_or(0),
                });
            }
        }
        Ok(())
    }

    fn finish(mut self, http: &Http) -> Result<ModelTurn, ModelError> {
        if !self.done {
            return Err(ModelError::new(
                ModelErrorKind::Connect,
                format!("{}: the answer ended before \"done\": true", http.at()),
            ));
        }
        self.turn.content = (!self.text.is_empty()).then_some(self.text);
        Ok(self.turn)
    }
}

#[async_trait::async_trait]
impl Model for OllamaModel {
    fn name(&self) -> &str {
        "ollama"
    }

    fn model_id(&self) -> Option<&str> {
        Some(&self.model)
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        let bytes = self
            .http
            .post_json(&self.url(), &self.headers, &self.body(request, false))
            .await?;
        let chunk: Chunk = serde_json::from_slice(&bytes).map_err(|e| {
            self.http.invalid(format_args!(
                "something that is not a chat response ({e}): {}",
                wire::excerpt(&String::from_utf8_lossy(&bytes))
            ))
        })?;
        if chunk.message.is_none() && chunk.error.is_none() {
            return Err(self.http.invalid(format_args!(
                "a chat response without a message: {}",
                wire::excerpt(&String::from_utf8_lossy(&bytes))
            )));
        }
        let mut turn = Assembler::default();
        turn.add(&self.http, chunk, None)?;
        turn.finish(&self.http)
    }

    async fn stream(
        &self,
        request: &ModelRequest,
        on_text: TextSink<'_>,
    ) -> Result<ModelTurn, ModelError> {
        let chunks = self
            .http
            .post_stream(&self.url(), &self.headers, &self.body(request, true))
            .await?;
        let mut lines = std::pin::pin!(http::lines(chunks));
        let mut turn = Assembler::default();
        while let Some(line) = lines.next().await {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let chunk: Chunk = serde_json::from_str(&line).map_err(|e| {
                self.http.invalid(format_args!(
                    "a stream line that is not a chat response ({e}): {}",
                    wire::excerpt(&line)
                ))
            })?;
            turn.add(&self.http, chunk, Some(on_text))?;
            if turn.done {
                break;
            }
        }
        turn.finish(&self.http)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;

    #[test]
    fn hosts_are_read_as_ollama_reads_them() {
        assert_eq!(host_url("http://127.0.0.1:11434"), "http://127.0.0.1:11434");
        assert_eq!(host_url("gpu-box"), "http://gpu-box:11434");
        assert_eq!(host_url("gpu-box:8080"), "http://gpu-box:8080");
        assert_eq!(host_url("0.0.0.0"), "http://127.0.0.1:11434");
        assert_eq!(host_url("0.0.0.0:11434"), "http://127.0.0.1:11434");
        assert_eq!(
            host_url("https://ollama.example"),
            "https://ollama.example:443"
        );
        assert_eq!(host_url("http://box/ollama"), "http://box:80/ollama");
        assert_eq!(host_url("[::]:11434"), "http://[::1]:11434");
        assert_eq!(host_url(""), "http://127.0.0.1:11434");
    }

    #[test]
    fn tool_results_carry_the_tool_name() {
        let m = OllamaModel::builder().build().unwrap();
        let b = m.body(
            &ModelRequest {
                messages: vec![
                    Message::system("Be brief."),
                    Message::user("add"),
                    Message::assistant("", vec![ToolCall::new("c1", "add", json!({"a": 1}))]),
                    Message::tool("c1", r#"{"sum": 1}"#),
                ],
                tools: vec![],
            },
            false,
        );
        assert_eq!(b["stream"], false);
        assert!(b.get("tools").is_none());
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            json!({"a": 1})
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "content": "{\"sum\": 1}", "tool_name": "add", "tool_call_id": "c1"})
        );
    }
}
