//! The `gemini` provider: Google's Gemini models through the native Gemini API
//! (`POST {base}/v1beta/models/{model}:generateContent`, and
//! `:streamGenerateContent?alt=sse` for streams), on the shared
//! [HTTP plumbing](super::http) (timeouts, retries, error kinds).
//!
//! | setting | environment ([`GeminiModel::from_env`]) | default |
//! |---|---|---|
//! | base URL | `GEMINI_BASE_URL` | `https://generativelanguage.googleapis.com` |
//! | API key | `GEMINI_API_KEY` | required |
//! | model | `WEFT_MODEL` | `gemini-2.5-flash` |
//! | timeout, retries | — | 60 s per attempt, 3 attempts ([`super::http`]) |
//!
//! The wire rules this adapter follows, from the Gemini API documentation
//! (`ai.google.dev/gemini-api/docs`: "Function calling", "Thought signatures",
//! API reference "Generating content" and "Caching"… `api/generate-content`) and the
//! official Python SDK (`googleapis/python-genai`, `google/genai/types.py`: `Part`,
//! `FunctionCall`, `FunctionResponse`, `FunctionDeclaration`,
//! `GenerateContentResponseUsageMetadata`):
//!
//! - **Authentication**: the `x-goog-api-key` header (never the URL, so keys stay out
//!   of logs and error messages).
//! - **System prompt**: `systemInstruction: {parts: [{text}]}`, not a content.
//! - **Contents**: roles `user` and `model`; consecutive messages of one role are
//!   merged into one content.
//! - **Tools**: `tools: [{functionDeclarations: [{name, description,
//!   parametersJsonSchema}]}]`. `parametersJsonSchema` takes the endpoint's JSON
//!   Schema as it is; the older `parameters` field takes only an OpenAPI 3.0 subset
//!   (no `$ref`, `oneOf`, `additionalProperties`, …) and the two are mutually
//!   exclusive (`FunctionDeclaration` docs), so this adapter sends only
//!   `parametersJsonSchema`.
//! - **Tool calls** are `functionCall: {name, args, id?}` parts of a `model` content;
//!   **tool results** go back as `functionResponse: {name, response, id?}` parts of
//!   one `user` content, all results of a turn together, in the order of the calls.
//!   `response` must be an object: a result is sent as `{"output": value}`, a failed
//!   call as `{"error": {…}}` (the keys the `FunctionResponse` docs name). When the
//!   server gave the call an `id`, the same `id` goes back on the call and its result;
//!   otherwise the adapter makes its own id (`call_…`) and sends none.
//! - **Thought signatures** ("Thought signatures"): a `thoughtSignature` on a
//!   `functionCall` part must be sent back on that same part in later requests
//!   (Gemini 3 rejects a step's first call without it with HTTP 400; with parallel
//!   calls only the first part carries one). The adapter keeps it, and the server's
//!   call `id`, in [`ToolCall::provider_data`] as `{"gemini": {"thoughtSignature",
//!   "id"}}`, so it survives agent memory. In a stream a signature can arrive on a
//!   later part without a function call (an empty text part): it is given to the
//!   turn's first call if that call has none. Signatures on text-only answers are
//!   optional to return and are not kept.
//! - **Answer**: `candidates[0].content.parts` (`text` parts, except `thought: true`
//!   summaries, and `functionCall` parts), `candidates[0].finishReason` (`STOP`,
//!   `MAX_TOKENS`, `SAFETY`, …, kept as the finish reason), `usageMetadata`
//!   (`promptTokenCount` as input; `candidatesTokenCount` plus `thoughtsTokenCount`
//!   as output), `modelVersion`. No candidate and a `promptFeedback.blockReason` is
//!   [`ModelErrorKind::Rejected`].
//! - **Streaming** (`alt=sse`): each event's data is a whole `GenerateContentResponse`
//!   chunk; text parts are handed on as they come, function calls arrive whole.
//! - **Errors**: `{"error": {code, message, status, details}}`; a
//!   `google.rpc.RetryInfo` detail's `retryDelay` (e.g. `"37s"`) is honoured like
//!   `Retry-After`.

use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, ErrorBody, Http, RetryPolicy, Settings};
use super::wire::{self, ToolContent};
use super::{
    Model, ModelError, ModelErrorKind, ModelRequest, ModelTurn, Role, TextSink, ToolCall, Usage,
};

/// Default base URL: Google's Generative Language API.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// Default model id.
pub const DEFAULT_MODEL: &str = "gemini-2.5-flash";

/// A Gemini model behind the Gemini API ([module docs](self)).
///
/// # Examples
/// ```no_run
/// use weft_agents::model::gemini::GeminiModel;
/// let model = GeminiModel::builder()
///     .api_key("AIza…")
///     .model("gemini-2.5-pro")
///     .build()?;
/// # Ok::<(), weft_agents::model::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct GeminiModel {
    http: Http,
    base_url: String,
    headers: HeaderMap,
    model: String,
}

/// Settings of a [`GeminiModel`]; every setter states its default. `Debug` prints the
/// key as `***`.
#[derive(Clone, Debug)]
pub struct GeminiBuilder {
    settings: Settings,
}

impl Default for GeminiBuilder {
    fn default() -> Self {
        GeminiBuilder {
            settings: Settings::new(DEFAULT_BASE_URL, DEFAULT_MODEL),
        }
    }
}

impl GeminiBuilder {
    /// The API base URL, ending before `/v1beta`. Default [`DEFAULT_BASE_URL`].
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.settings.url = url.into();
        self
    }

    /// The API key, sent as `x-goog-api-key`. Required.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.settings.api_key = Some(key.into());
        self
    }

    /// The model id, e.g. `gemini-2.5-pro` (a `models/` prefix is dropped). Default
    /// [`DEFAULT_MODEL`].
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.settings.model = model.into();
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
    /// header value, the model id is empty or has a `/` or `:`, the base URL is not an
    /// `http(s)://` URL or the HTTP client cannot be built.
    pub fn build(self) -> Result<GeminiModel, ModelError> {
        let s = self.settings;
        let base = http::base_url(&s.url)?;
        let model = s.model.trim().trim_start_matches("models/").to_owned();
        if model.is_empty() || model.contains(['/', ':', '?', '#']) {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                format!(
                    "Gemini model id {:?} is not a model name such as {DEFAULT_MODEL}",
                    s.model
                ),
            ));
        }
        let Some(key) = s.key_header("Gemini", "")? else {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                "the gemini provider needs an API key: set GEMINI_API_KEY",
            ));
        };
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-goog-api-key"), key);
        let http = Http::new(
            format!("gemini model {model} at {base}"),
            s.timeout,
            s.retry,
            Some("GEMINI_API_KEY"),
            read_error,
        )?;
        Ok(GeminiModel {
            http,
            base_url: base,
            headers,
            model,
        })
    }
}

impl GeminiModel {
    /// Settings with every default ([`GeminiBuilder`]).
    pub fn builder() -> GeminiBuilder {
        GeminiBuilder::default()
    }

    /// A model configured from the environment: `GEMINI_API_KEY` (required),
    /// `GEMINI_BASE_URL` and `WEFT_MODEL` (table in the [module docs](self)); empty
    /// variables count as unset.
    ///
    /// # Errors
    /// As [`GeminiBuilder::build`]; the message of a missing key names
    /// `GEMINI_API_KEY`.
    pub fn from_env() -> Result<GeminiModel, ModelError> {
        GeminiModel::from_vars(&super::env_var)
    }

    /// As [`GeminiModel::from_env`], reading variables with `var`.
    pub(crate) fn from_vars(
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GeminiModel, ModelError> {
        let defaults = GeminiModel::builder().settings;
        GeminiBuilder {
            settings: defaults.read(var, "GEMINI_BASE_URL", "GEMINI_API_KEY"),
        }
        .build()
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, stream: bool) -> String {
        if stream {
            format!(
                "{}/v1beta/models/{}:streamGenerateContent?alt=sse",
                self.base_url, self.model
            )
        } else {
            format!(
                "{}/v1beta/models/{}:generateContent",
                self.base_url, self.model
            )
        }
    }
}

/// What this adapter keeps in [`ToolCall::provider_data`]: `{"gemini":
/// {"thoughtSignature"?, "id"?}}`.
fn provider_data(signature: Option<&str>, id: Option<&str>) -> Option<Value> {
    if signature.is_none() && id.is_none() {
        return None;
    }
    let mut inner = serde_json::Map::new();
    if let Some(s) = signature {
        inner.insert("thoughtSignature".into(), Value::String(s.to_owned()));
    }
    if let Some(id) = id {
        inner.insert("id".into(), Value::String(id.to_owned()));
    }
    Some(json!({ "gemini": inner }))
}

fn kept<'a>(call: &'a ToolCall, key: &str) -> Option<&'a str> {
    call.provider_data
        .as_ref()?
        .get("gemini")?
        .get(key)?
        .as_str()
}

/// The request body for `request` ([module docs](self)).
fn body(request: &ModelRequest) -> Value {
    let calls = wire::calls_by_id(&request.messages);
    let system: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System && !m.content.is_empty())
        .map(|m| json!({"text": m.content}))
        .collect();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &request.messages {
        let (role, parts) = match m.role {
            Role::System => continue,
            Role::User => ("user", text_part(&m.content)),
            Role::Assistant => {
                let mut parts = text_part(&m.content);
                for c in &m.tool_calls {
                    let mut call = json!({"name": c.name, "args": wire::arguments_object(c)});
                    if let Some(id) = kept(c, "id") {
                        call["id"] = Value::String(id.to_owned());
                    }
                    let mut part = json!({ "functionCall": call });
                    if let Some(sig) = kept(c, "thoughtSignature") {
                        part["thoughtSignature"] = Value::String(sig.to_owned());
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let call = calls.get(id);
                let response = match ToolContent::parse(&m.content) {
                    ToolContent::Output(v) => json!({ "output": v }),
                    ToolContent::Error(e) => json!({ "error": e }),
                };
                let mut fr = json!({
                    "name": call.map(|c| c.name.as_str()).unwrap_or_default(),
                    "response": response,
                });
                if let Some(id) = call.and_then(|c| kept(c, "id")) {
                    fr["id"] = Value::String(id.to_owned());
                }
                ("user", vec![json!({ "functionResponse": fr })])
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut body = json!({
        "contents": contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect::<Vec<_>>(),
    });
    if !system.is_empty() {
        body["systemInstruction"] = json!({ "parts": system });
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parametersJsonSchema": t.parameters});
                if !t.description.is_empty() {
                    d["description"] = Value::String(t.description.clone());
                }
                d
            })
            .collect();
        body["tools"] = json!([{ "functionDeclarations": declarations }]);
    }
    body
}

fn text_part(text: &str) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "text": text })]
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireError {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

/// Reads a Google error body `{"error": {code, message, status, details}}`.
fn read_error(body: &[u8]) -> ErrorBody {
    #[derive(Deserialize)]
    struct Wrapper {
        error: WireError,
    }
    let Ok(w) = serde_json::from_slice::<Wrapper>(body) else {
        return ErrorBody::default();
    };
    ErrorBody {
        retry_after: retry_delay(&w.error.details),
        message: Some(match &w.error.status {
            Some(s) => format!("{} ({s})", w.error.message),
            None => w.error.message,
        }),
    }
}

/// The `retryDelay` (`"37s"`, `"1.5s"`) of a `google.rpc.RetryInfo` detail.
fn retry_delay(details: &[Value]) -> Option<Duration> {
    details
        .iter()
        .find(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .and_then(|d| d["retryDelay"].as_str())
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    thought_signature: Option<String>,
    #[serde(default)]
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

/// Assembles a turn from one response or from the chunks of a stream.
#[derive(Default)]
struct Assembler {
    text: String,
    calls: Vec<ToolCall>,
    /// A signature that came on a part without a function call.
    loose_signature: Option<String>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    blocked: Option<String>,
    saw_candidate: bool,
}

impl Assembler {
    fn add(
        &mut self,
        http: &Http,
        chunk: Chunk,
        on_text: Option<TextSink<'_>>,
    ) -> Result<(), ModelError> {
        if let Some(e) = chunk.error {
            let kind = e
                .code
                .map(http::status_kind)
                .unwrap_or(ModelErrorKind::Unavailable);
            return Err(ModelError::new(
                kind,
                format!(
                    "{} failed in the middle of its answer: {}{}",
                    http.at(),
                    e.message,
                    e.status.map(|s| format!(" ({s})")).unwrap_or_default()
                ),
            ));
        }
        if let Some(m) = chunk.model_version {
            self.model = Some(m);
        }
        if let Some(u) = chunk.usage_metadata {
            self.usage = Some(Usage {
                input_tokens: u.prompt_token_count,
                output_tokens: u.candidates_token_count + u.thoughts_token_count,
            });
        }
        if let Some(r) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
            self.blocked = Some(r);
        }
        let Some(candidate) = chunk.candidates.into_iter().next() else {
            return Ok(());
        };
        self.saw_candidate = true;
        if let Some(r) = candidate.finish_reason {
            self.finish_reason = Some(r);
        }
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            match part.function_call {
                Some(fc) => {
                    let id = fc.id.clone().filter(|i| !i.is_empty());
                    let call = ToolCall {
                        provider_data: provider_data(
                            part.thought_signature.as_deref(),
                            id.as_deref(),
                        ),
                        ..ToolCall::new(
                            id.unwrap_or_else(wire::new_call_id),
                            fc.name,
                            match fc.args {
                                None | Some(Value::Null) => json!({}),
                                Some(v) => v,
                            },
                        )
                    };
                    self.calls.push(call);
                }
                None => {
                    if let Some(sig) = part.thought_signature {
                        self.loose_signature = Some(sig);
                    }
                    if part.thought == Some(true) {
                        continue;
                    }
                    if let Some(t) = part.text.filter(|t| !t.is_empty()) {
                        if let Some(sink) = on_text {
                            sink(&t);
                        }
                        self.text.push_str(&t);
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(mut self, http: &Http) -> Result<ModelTurn, ModelError> {
        if !self.saw_candidate {
            return Err(match self.blocked {
                Some(reason) => ModelError::new(
                    ModelErrorKind::Rejected,
                    format!("{} blocked the prompt ({reason})", http.at()),
                ),
                None => http.invalid("no candidates"),
            });
        }
        if let (Some(sig), Some(first)) = (self.loose_signature.take(), self.calls.first_mut())
            && kept(first, "thoughtSignature").is_none()
        {
            let id = kept(first, "id").map(str::to_owned);
            first.provider_data = provider_data(Some(&sig), id.as_deref());
        }
        Ok(ModelTurn {
            content: (!self.text.is_empty()).then_some(self.text),
            tool_calls: self.calls,
            usage: self.usage,
            finish_reason: self.finish_reason,
            response_model: self.model,
        })
    }
}

#[async_trait::async_trait]
impl Model for GeminiModel {
    fn name(&self) -> &str {
        "gemini"
    }

    fn model_id(&self) -> Option<&str> {
        Some(&self.model)
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        let bytes = self
            .http
            .post_json(&self.url(false), &self.headers, &body(request))
            .await?;
        let chunk: Chunk = serde_json::from_slice(&bytes).map_err(|e| {
            self.http.invalid(format_args!(
                "something that is not a GenerateContentResponse ({e}): {}",
                wire::excerpt(&String::from_utf8_lossy(&bytes))
            ))
        })?;
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
            .post_stream(&self.url(true), &self.headers, &body(request))
            .await?;
        let mut events = std::pin::pin!(http::events(chunks, self.http.at().to_owned()));
        let mut turn = Assembler::default();
        while let Some(event) = events.next().await {
            let event = event?;
            if event.data.trim().is_empty() {
                continue;
            }
            let chunk: Chunk = serde_json::from_str(&event.data).map_err(|e| {
                self.http.invalid(format_args!(
                    "a stream chunk that is not a GenerateContentResponse ({e}): {}",
                    wire::excerpt(&event.data)
                ))
            })?;
            turn.add(&self.http, chunk, Some(on_text))?;
        }
        turn.finish(&self.http)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Message, ToolSpec};

    #[test]
    fn signatures_and_ids_go_back_on_their_parts() {
        let mut signed = ToolCall::new("fc-1", "add", json!({"a": 1}));
        signed.provider_data = provider_data(Some("c2ln"), Some("fc-1"));
        let unsigned = ToolCall::new("call_x", "fail", json!({}));
        let request = ModelRequest {
            messages: vec![
                Message::system("Be brief."),
                Message::user("go"),
                Message::assistant("", vec![signed, unsigned]),
                Message::tool("fc-1", r#"{"sum": 1}"#),
                Message::tool("call_x", r#"{"error": {"code": "NOPE", "message": "no"}}"#),
            ],
            tools: vec![ToolSpec {
                name: "add".into(),
                description: "adds".into(),
                parameters: json!({"type": "object", "additionalProperties": false}),
            }],
        };
        let b = body(&request);
        assert_eq!(
            b["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
        assert_eq!(
            b["tools"][0]["functionDeclarations"][0],
            json!({"name": "add", "description": "adds",
                   "parametersJsonSchema": {"type": "object", "additionalProperties": false}})
        );
        let c = b["contents"].as_array().unwrap();
        assert_eq!(c.len(), 3, "{b:#}");
        assert_eq!(c[1]["role"], "model");
        assert_eq!(
            c[1]["parts"][0],
            json!({"functionCall": {"name": "add", "args": {"a": 1}, "id": "fc-1"}, "thoughtSignature": "c2ln"})
        );
        assert_eq!(
            c[1]["parts"][1],
            json!({"functionCall": {"name": "fail", "args": {}}})
        );
        assert_eq!(
            c[2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "add", "response": {"output": {"sum": 1}}, "id": "fc-1"}},
                {"functionResponse": {"name": "fail", "response": {"error": {"code": "NOPE", "message": "no"}}}}
            ]})
        );
    }

    #[test]
    fn retry_info_is_read() {
        let e = read_error(
            br#"{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}}"#,
        );
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(e.message.as_deref(), Some("quota (RESOURCE_EXHAUSTED)"));
    }
}
