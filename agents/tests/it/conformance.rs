//! One scenario set, run against every model provider.
//!
//! Each provider is driven by a local axum fixture speaking that provider's documented
//! wire format ([`Fixture`]): the fixture **checks** every request it gets (headers,
//! where the system prompt goes, how tool calls and results are laid out, thought
//! signatures echoed, …), decodes it into a provider-neutral [`Seen`], and answers with
//! the replies a scenario scripts, as a whole JSON body or as the provider's stream
//! (SSE or NDJSON, each event split across two body chunks).
//!
//! The scenarios ([`SCENARIOS`]) drive the real tool loop (`Agent::run`) with
//! in-process tools, once through `Model::complete` and once through `Model::stream`
//! (a wrapper whose `complete` calls the adapter's `stream`), so tool calls are also
//! assembled from stream events. The error table ([`ERRORS`]) checks retries,
//! `Retry-After`, error kinds and cancellation for every provider.
//!
//! Adding a provider is one more [`Fixture`] and one line in `providers!`.
//!
//! Live runs (`live_*`) call the real APIs when their key variable is set and print
//! `skipped: set X` otherwise. They take the model from `WEFT_MODEL` like
//! `weft_agents::model::from_provider`, so set it per run, or leave it unset for each
//! provider's default.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use weft_agents::agent::AgentError;
use weft_agents::builtin::Builtin;
use weft_agents::model::anthropic::AnthropicModel;
use weft_agents::model::gemini::GeminiModel;
use weft_agents::model::http::RetryPolicy;
use weft_agents::model::ollama::OllamaModel;
use weft_agents::model::{
    Message, Model, ModelError, ModelErrorKind, ModelRequest, ModelTurn, TextSink, ToolSpec,
};
use weft_agents::tool::{ToolOutcome, Tools};
use weft_agents::{Agent, OpenAiModel, Run};
use weft_bus::envelope::{ErrorCode, ErrorPayload};

// ---------------------------------------------------------------------------------
// Provider-neutral views: what a scenario scripts and what a fixture saw.

/// One scripted model answer: text, tool calls, or both.
#[derive(Debug, Clone, Default)]
struct Reply {
    text: Option<String>,
    calls: Vec<(String, Value)>,
}

fn text(t: &str) -> Reply {
    Reply {
        text: Some(t.into()),
        calls: Vec::new(),
    }
}

fn calls(calls: &[(&str, Value)]) -> Reply {
    Reply {
        text: None,
        calls: calls
            .iter()
            .map(|(n, a)| ((*n).into(), a.clone()))
            .collect(),
    }
}

/// A request as a fixture decoded it, after checking it against the provider's rules.
#[derive(Debug, Clone, Default)]
struct Seen {
    system: Option<String>,
    turns: Vec<Turn>,
    tools: Vec<String>,
    stream: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Turn {
    User(String),
    Assistant {
        text: String,
        calls: Vec<(String, Value)>,
    },
    /// The results of one assistant turn's calls, in order.
    Results(Vec<ToolResult>),
}

#[derive(Debug, Clone, PartialEq)]
struct ToolResult {
    name: String,
    /// The tool loop's content: the result, or `{"error": {…}}`.
    content: Value,
    is_error: bool,
}

/// Whether a tool loop content is its error shape.
fn is_error_content(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get("error").is_some_and(Value::is_object))
}

fn parse_content(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

/// The text pieces a stream hands on for `text`: split after each space.
fn pieces(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// A string cut in two near its middle (at a char boundary).
fn halves(s: &str) -> (String, String) {
    let mut at = s.len() / 2;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    (s[..at].to_owned(), s[at..].to_owned())
}

// ---------------------------------------------------------------------------------
// The fixture interface and the server that runs a fixture.

/// One HTTP request as the fixture got it.
struct Req {
    /// Path and query.
    path: String,
    headers: HeaderMap,
    body: Value,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a fixture answers a reply.
enum Answer {
    Json(Value),
    Stream {
        content_type: &'static str,
        /// Serialized events (SSE events or NDJSON lines), in order.
        units: Vec<String>,
        /// The unit carrying the first text piece, if any.
        first_text: Option<usize>,
    },
}

/// A provider's wire format, as a local server speaks it.
trait Fixture: Send + Sync + 'static {
    /// The provider name ([`Model::name`]).
    fn name(&self) -> &'static str;
    /// The adapter under test, pointed at the fixture at `base` (`http://127.0.0.1:N`).
    fn model(&self, base: &str, retry: RetryPolicy, timeout: Duration) -> Arc<dyn Model>;
    /// A stream that hands on `text` and then fails with the provider's mid-stream
    /// error (`message`, meaning "overloaded"), when the provider has one.
    fn mid_stream_error(&self, text: &str, message: &str) -> Option<Answer>;
    /// Checks a request against the provider's documented format and decodes it.
    fn decode(&self, req: &Req) -> Result<Seen, String>;
    /// `reply` as the provider's answer to the `step`-th request (1-based).
    fn answer(&self, reply: &Reply, step: usize, stream: bool) -> Answer;
    /// The provider's error body for `message`.
    fn error_body(&self, status: u16, message: &str) -> Value;
    /// Requests the adapter makes in all before reporting a 5xx.
    fn attempts_on_5xx(&self) -> usize {
        3
    }
}

/// What the server does for one request.
#[derive(Clone)]
enum Step {
    /// Check and decode the request, then answer this reply.
    Reply(Reply),
    /// Answer this HTTP failure with the provider's error body.
    Fail {
        status: u16,
        retry_after: Option<&'static str>,
        message: &'static str,
    },
    /// Answer HTTP 200 with this body as it is.
    Raw(&'static str),
    /// Answer HTTP 200 and a body that never ends (a newline every 50 ms).
    Hang,
    /// Answer HTTP 200 and then send nothing at all.
    Stall,
    /// Answer the fixture's [`Fixture::mid_stream_error`] stream.
    MidStreamError,
}

/// A running fixture server. Steps are taken in order; the last one repeats.
struct Server {
    fixture: Arc<dyn Fixture>,
    steps: Mutex<VecDeque<Step>>,
    last: Mutex<Option<Step>>,
    seen: Mutex<Vec<Seen>>,
    violations: Mutex<Vec<String>>,
    requests: AtomicUsize,
    /// Notified when a `Hang` answer begins, and when its body is dropped (the
    /// client closed the connection).
    hung: Notify,
    dropped: Notify,
    /// When set, a stream's body waits after its first text piece until this is
    /// notified (the client handed the piece on), proving real streaming.
    gate: Option<Arc<Notify>>,
    base: Mutex<String>,
}

impl Server {
    async fn start(
        fixture: Arc<dyn Fixture>,
        steps: Vec<Step>,
        gate: Option<Arc<Notify>>,
    ) -> Arc<Server> {
        let server = Arc::new(Server {
            fixture,
            steps: Mutex::new(steps.into()),
            last: Mutex::new(None),
            seen: Mutex::default(),
            violations: Mutex::default(),
            requests: AtomicUsize::new(0),
            hung: Notify::new(),
            dropped: Notify::new(),
            gate,
            base: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *server.base.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    fn base(&self) -> String {
        self.base.lock().unwrap().clone()
    }

    fn model(&self, retry: RetryPolicy) -> Arc<dyn Model> {
        self.fixture
            .model(&self.base(), retry, Duration::from_secs(5))
    }

    fn model_with_timeout(&self, timeout: Duration) -> Arc<dyn Model> {
        self.fixture.model(&self.base(), quick(), timeout)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn next_step(&self) -> Step {
        let mut steps = self.steps.lock().unwrap();
        let mut last = self.last.lock().unwrap();
        if let Some(s) = steps.pop_front() {
            *last = Some(s.clone());
            s
        } else {
            last.clone().expect("a server has at least one step")
        }
    }
}

/// Sets `dropped` when the body holding it is dropped.
struct DropGuard(Arc<Server>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.dropped.notify_one();
    }
}

async fn handle(
    State(s): State<Arc<Server>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let req = Req {
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    match s.next_step() {
        Step::Fail {
            status,
            retry_after,
            message,
        } => {
            let mut r = Response::builder()
                .status(status)
                .header("content-type", "application/json");
            if let Some(ra) = retry_after {
                r = r.header("retry-after", ra);
            }
            r.body(Body::from(
                s.fixture.error_body(status, message).to_string(),
            ))
            .unwrap()
        }
        Step::Raw(text) => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(text))
            .unwrap(),
        Step::Stall => {
            let body = futures::stream::pending::<Result<Bytes, std::io::Error>>();
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(body))
                .unwrap()
        }
        Step::MidStreamError => {
            let answer = s
                .fixture
                .mid_stream_error("Partial ", "overloaded")
                .expect("the provider has mid-stream errors");
            render(&s, answer)
        }
        Step::Hang => {
            s.hung.notify_one();
            let guard = DropGuard(s.clone());
            let body = futures::stream::unfold(guard, |guard| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"\n")), guard))
            });
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(body))
                .unwrap()
        }
        Step::Reply(reply) => {
            let seen = match s.fixture.decode(&req) {
                Ok(seen) => seen,
                Err(v) => {
                    let v = format!("{} request {n} ({}): {v}", s.fixture.name(), req.path);
                    s.violations.lock().unwrap().push(v.clone());
                    return Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .header("content-type", "application/json")
                        .body(Body::from(s.fixture.error_body(400, &v).to_string()))
                        .unwrap();
                }
            };
            let stream = seen.stream;
            let step = {
                let mut all = s.seen.lock().unwrap();
                all.push(seen);
                all.len()
            };
            render(&s, s.fixture.answer(&reply, step, stream))
        }
    }
}

/// An answer as an HTTP response; a stream's events go out as separate body chunks,
/// each cut in two so parsers must join events across chunks.
fn render(s: &Arc<Server>, answer: Answer) -> Response {
    match answer {
        Answer::Json(v) => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        Answer::Stream {
            content_type,
            units,
            first_text,
        } => {
            // Each unit goes out in two chunks; the chunk after the first text piece's
            // unit waits until the client handed that piece on.
            let mut chunks: Vec<(String, bool)> = Vec::new();
            for (i, u) in units.into_iter().enumerate() {
                let (a, b) = halves(&u);
                chunks.push((a, first_text.is_some_and(|t| i == t + 1)));
                chunks.push((b, false));
            }
            let gate = s.gate.clone();
            let server = s.clone();
            let body = futures::stream::iter(chunks).then(move |(chunk, wait)| {
                let gate = gate.clone();
                let server = server.clone();
                async move {
                    if let (true, Some(gate)) = (wait, gate)
                        && tokio::time::timeout(Duration::from_secs(5), gate.notified())
                            .await
                            .is_err()
                    {
                        server.violations.lock().unwrap().push(
                            "the first text piece was not handed on before the rest of the stream came (no real streaming)".into(),
                        );
                    }
                    Ok::<_, std::io::Error>(Bytes::from(chunk))
                }
            });
            Response::builder()
                .status(200)
                .header("content-type", content_type)
                .body(Body::from_stream(body))
                .unwrap()
        }
    }
}

// ---------------------------------------------------------------------------------
// Tools and the streaming wrapper.

/// In-process tools: `add {a, b}` → `{sum}`, `lookup {key}` → `{value}`, `fail` always
/// fails with `BROKEN`. Records the calls.
#[derive(Default)]
struct Calc {
    log: Mutex<Vec<(String, Value)>>,
}

#[async_trait::async_trait]
impl Tools for Calc {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "add".into(),
                description: "Adds two integers".into(),
                parameters: json!({"type": "object", "properties": {
                    "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}),
            },
            ToolSpec {
                name: "lookup".into(),
                description: "Looks a key up".into(),
                parameters: json!({"type": "object", "properties": {"key": {"type": "string"}}}),
            },
            ToolSpec {
                name: "fail".into(),
                description: "Always fails".into(),
                parameters: json!({"type": "object"}),
            },
        ]
    }

    async fn call(&self, name: &str, arguments: &Value) -> ToolOutcome {
        self.log
            .lock()
            .unwrap()
            .push((name.to_owned(), arguments.clone()));
        match name {
            "add" => Ok(
                json!({"sum": arguments["a"].as_i64().unwrap_or(0) + arguments["b"].as_i64().unwrap_or(0)}),
            ),
            "lookup" => {
                Ok(json!({"value": format!("v-{}", arguments["key"].as_str().unwrap_or(""))}))
            }
            _ => Err(ErrorPayload::new(
                ErrorCode::Other("BROKEN".into()),
                "the tool broke",
            )),
        }
    }
}

/// A model whose `complete` is the inner model's `stream`: the tool loop then runs on
/// streamed turns. Checks that the pieces join into the turn's content.
struct Streamed {
    inner: Arc<dyn Model>,
    pieces: Mutex<Vec<Vec<String>>>,
    gate: Option<Arc<Notify>>,
}

#[async_trait::async_trait]
impl Model for Streamed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        let got = Mutex::new(Vec::<String>::new());
        let sink = |t: &str| {
            got.lock().unwrap().push(t.to_owned());
            if let Some(g) = &self.gate {
                g.notify_one();
            }
        };
        let turn = self.inner.stream(request, &sink).await?;
        let got = got.into_inner().unwrap();
        assert_eq!(
            got.concat(),
            turn.content.clone().unwrap_or_default(),
            "the streamed pieces join into the turn's content"
        );
        self.pieces.lock().unwrap().push(got);
        Ok(turn)
    }
    async fn stream(
        &self,
        request: &ModelRequest,
        on_text: TextSink<'_>,
    ) -> Result<ModelTurn, ModelError> {
        self.inner.stream(request, on_text).await
    }
}

// ---------------------------------------------------------------------------------
// Scenarios.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Complete,
    Stream,
}

/// What a scenario run produced.
struct Outcome {
    mode: Mode,
    run: Result<Run, AgentError>,
    seen: Vec<Seen>,
    calls: Vec<(String, Value)>,
    pieces: Vec<Vec<String>>,
}

impl Outcome {
    fn run(&self) -> &Run {
        match &self.run {
            Ok(r) => r,
            Err(e) => panic!("the run failed: {e}"),
        }
    }
    fn request(&self, i: usize) -> &Seen {
        self.seen
            .get(i)
            .unwrap_or_else(|| panic!("no request {i}; the fixture saw {}", self.seen.len()))
    }
}

/// How a scenario is driven.
enum Drive {
    /// `Agent::run` with [`Calc`], in both modes.
    Agent {
        message: &'static str,
        max_steps: usize,
        /// The agent's built-in tools (none for most scenarios).
        builtins: &'static [Builtin],
        replies: fn() -> Vec<Reply>,
        check: fn(&Outcome),
    },
    /// `Model::stream` directly with one request; the fixture streams `reply`.
    Stream { reply: &'static str },
}

struct Scenario {
    name: &'static str,
    drive: Drive,
}

const PROMPT: &str = "Be brief.";

fn user(t: &str) -> Turn {
    Turn::User(t.into())
}

fn assistant(calls: &[(&str, Value)]) -> Turn {
    Turn::Assistant {
        text: String::new(),
        calls: calls
            .iter()
            .map(|(n, a)| ((*n).into(), a.clone()))
            .collect(),
    }
}

fn results(items: &[(&str, Value)]) -> Turn {
    Turn::Results(
        items
            .iter()
            .map(|(n, c)| ToolResult {
                name: (*n).into(),
                is_error: is_error_content(c),
                content: c.clone(),
            })
            .collect(),
    )
}

/// Checks shared by every tool-loop scenario: the system prompt and tools on every
/// request, the stream flag matching the mode, the final assistant text.
fn common(o: &Outcome) {
    for (i, s) in o.seen.iter().enumerate() {
        assert_eq!(
            s.system.as_deref(),
            Some(PROMPT),
            "request {i}: system prompt"
        );
        assert_eq!(s.tools, ["add", "lookup", "fail"], "request {i}: tools");
        assert_eq!(s.stream, o.mode == Mode::Stream, "request {i}: stream flag");
    }
    if o.mode == Mode::Stream {
        assert_eq!(o.pieces.len(), o.seen.len(), "every model call streamed");
    }
}

static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "single tool call",
        drive: Drive::Agent {
            message: "What is 2 + 3?",
            max_steps: 8,
            builtins: &[],
            replies: || vec![calls(&[("add", json!({"a": 2, "b": 3}))]), text("It is 5.")],
            check: |o| {
                common(o);
                assert_eq!(o.run().reply, "It is 5.");
                assert_eq!(o.run().steps, 2);
                assert_eq!(o.calls, [("add".to_owned(), json!({"a": 2, "b": 3}))]);
                assert_eq!(o.seen.len(), 2);
                assert_eq!(o.request(0).turns, [user("What is 2 + 3?")]);
                assert_eq!(
                    o.request(1).turns,
                    [
                        user("What is 2 + 3?"),
                        assistant(&[("add", json!({"a": 2, "b": 3}))]),
                        results(&[("add", json!({"sum": 5}))]),
                    ]
                );
                if o.mode == Mode::Stream {
                    assert_eq!(o.pieces[1], pieces("It is 5."));
                }
            },
        },
    },
    Scenario {
        name: "two tools over two steps",
        drive: Drive::Agent {
            message: "Look up x, then add 1 and 2.",
            max_steps: 8,
            builtins: &[],
            replies: || {
                vec![
                    calls(&[("lookup", json!({"key": "x"}))]),
                    calls(&[("add", json!({"a": 1, "b": 2}))]),
                    text("x is v-x and the sum is 3."),
                ]
            },
            check: |o| {
                common(o);
                assert_eq!(o.run().reply, "x is v-x and the sum is 3.");
                assert_eq!(o.calls.len(), 2);
                assert_eq!(o.seen.len(), 3);
                assert_eq!(
                    o.request(2).turns,
                    [
                        user("Look up x, then add 1 and 2."),
                        assistant(&[("lookup", json!({"key": "x"}))]),
                        results(&[("lookup", json!({"value": "v-x"}))]),
                        assistant(&[("add", json!({"a": 1, "b": 2}))]),
                        results(&[("add", json!({"sum": 3}))]),
                    ]
                );
            },
        },
    },
    Scenario {
        name: "two tool calls in one turn",
        drive: Drive::Agent {
            message: "Add 1 and 2, and 3 and 4.",
            max_steps: 8,
            builtins: &[],
            replies: || {
                vec![
                    calls(&[
                        ("add", json!({"a": 1, "b": 2})),
                        ("add", json!({"a": 3, "b": 4})),
                    ]),
                    text("3 and 7."),
                ]
            },
            check: |o| {
                common(o);
                assert_eq!(o.run().reply, "3 and 7.");
                assert_eq!(o.calls.len(), 2);
                assert_eq!(
                    o.request(1).turns,
                    [
                        user("Add 1 and 2, and 3 and 4."),
                        assistant(&[
                            ("add", json!({"a": 1, "b": 2})),
                            ("add", json!({"a": 3, "b": 4}))
                        ]),
                        results(&[("add", json!({"sum": 3})), ("add", json!({"sum": 7}))]),
                    ]
                );
            },
        },
    },
    Scenario {
        name: "tool error fed back",
        drive: Drive::Agent {
            message: "Try the failing tool.",
            max_steps: 8,
            builtins: &[],
            replies: || vec![calls(&[("fail", json!({}))]), text("The tool broke.")],
            check: |o| {
                common(o);
                assert_eq!(o.run().reply, "The tool broke.");
                assert!(o.run().tool_calls[0].error.is_some());
                let Turn::Results(r) = &o.request(1).turns[2] else {
                    panic!("no results: {:?}", o.request(1).turns)
                };
                assert_eq!(r.len(), 1);
                assert_eq!(r[0].name, "fail");
                assert!(r[0].is_error, "the provider is told the call failed: {r:?}");
                assert_eq!(r[0].content["error"]["code"], "BROKEN");
                assert_eq!(r[0].content["error"]["message"], "the tool broke");
            },
        },
    },
    Scenario {
        name: "max steps reached",
        drive: Drive::Agent {
            message: "Loop forever.",
            max_steps: 2,
            builtins: &[],
            replies: || vec![calls(&[("add", json!({"a": 1, "b": 1}))])],
            check: |o| {
                common(o);
                match &o.run {
                    Err(AgentError::MaxSteps { max_steps: 2, .. }) => {}
                    Err(e) => panic!("expected MaxSteps, got {e}"),
                    Ok(r) => panic!("expected MaxSteps, got a reply {:?}", r.reply),
                }
                assert_eq!(o.seen.len(), 2, "two model calls");
                assert_eq!(o.calls.len(), 1, "the last turn's tools are not called");
            },
        },
    },
    Scenario {
        name: "loop limit reached",
        drive: Drive::Agent {
            message: "Add 1 and 1, again and again.",
            max_steps: 8,
            builtins: &[],
            replies: || {
                let again = || calls(&[("add", json!({"a": 1, "b": 1}))]);
                vec![again(), again(), again(), again(), text("I will stop.")]
            },
            check: |o| {
                common(o);
                assert_eq!(o.run().reply, "I will stop.");
                assert_eq!(o.calls.len(), 3, "the fourth identical call is refused");
                // The refusal reached the model as a tool error, in the provider's format.
                let Some(Turn::Results(last)) = o.request(4).turns.last() else {
                    panic!(
                        "the last request ends with tool results: {:?}",
                        o.request(4).turns
                    );
                };
                assert!(last[0].is_error, "{last:?}");
                assert_eq!(last[0].content["error"]["code"], "LOOP_LIMIT", "{last:?}");
            },
        },
    },
    Scenario {
        name: "plan",
        drive: Drive::Agent {
            message: "Plan it, then answer.",
            max_steps: 8,
            builtins: &[Builtin::Plan],
            replies: || {
                vec![
                    calls(&[(
                        "plan",
                        json!({"steps": [{"task": "add", "status": "in_progress"}]}),
                    )]),
                    text("Planned."),
                ]
            },
            check: |o| {
                assert_eq!(o.run().reply, "Planned.");
                assert_eq!(o.request(0).tools, ["add", "lookup", "fail", "plan"]);
                assert!(o.calls.is_empty(), "plan is not a service tool");
                let Some(Turn::Results(r)) = o.request(1).turns.last() else {
                    panic!("{:?}", o.request(1).turns);
                };
                assert_eq!(r[0].name, "plan");
                assert_eq!(
                    r[0].content,
                    json!({"steps": 1, "kept": "kept for this run only (no session)"})
                );
            },
        },
    },
    Scenario {
        name: "delegate",
        drive: Drive::Agent {
            message: "Have a sub-agent add 2 and 3.",
            max_steps: 8,
            builtins: &[Builtin::Delegate],
            replies: || {
                vec![
                    calls(&[("delegate", json!({"task": "What is 2 + 3?"}))]),
                    // The sub-agent's own two model calls, on the same model.
                    calls(&[("add", json!({"a": 2, "b": 3}))]),
                    text("5"),
                    text("The sub-agent says 5."),
                ]
            },
            check: |o| {
                assert_eq!(o.run().reply, "The sub-agent says 5.");
                assert_eq!(o.seen.len(), 4);
                assert_eq!(o.request(0).tools, ["add", "lookup", "fail", "delegate"]);
                // The sub-agent: its own prompt, the service tools only, the task.
                let sub = o.request(1);
                assert!(
                    sub.system
                        .as_deref()
                        .is_some_and(|p| p.contains("sub-agent of conformance")),
                    "{:?}",
                    sub.system
                );
                assert_eq!(sub.tools, ["add", "lookup", "fail"]);
                assert_eq!(sub.turns[0], user("What is 2 + 3?"));
                assert_eq!(o.calls, [("add".to_owned(), json!({"a": 2, "b": 3}))]);
                let Some(Turn::Results(r)) = o.request(3).turns.last() else {
                    panic!("{:?}", o.request(3).turns);
                };
                assert_eq!(r[0].name, "delegate");
                assert_eq!(r[0].content["reply"], "5");
            },
        },
    },
    Scenario {
        name: "streamed text",
        drive: Drive::Stream {
            reply: "Hello there, streaming world!",
        },
    },
];

/// Runs `scenario` in `mode` against `fixture`.
async fn run_scenario(fixture: Arc<dyn Fixture>, scenario: &Scenario, mode: Mode) {
    let gate = (mode == Mode::Stream).then(|| Arc::new(Notify::new()));
    match &scenario.drive {
        Drive::Agent {
            message,
            max_steps,
            builtins,
            replies,
            check,
        } => {
            let server = Server::start(
                fixture,
                replies().into_iter().map(Step::Reply).collect(),
                gate.clone(),
            )
            .await;
            let inner = server.model(RetryPolicy::none());
            let streamed = Arc::new(Streamed {
                inner: inner.clone(),
                pieces: Mutex::default(),
                gate,
            });
            let model: Arc<dyn Model> = match mode {
                Mode::Complete => inner,
                Mode::Stream => streamed.clone(),
            };
            let tools = Arc::new(Calc::default());
            let run = Agent::new("conformance")
                .model(model)
                .system_prompt(PROMPT)
                .max_steps(*max_steps)
                .builtins(builtins.iter().copied())
                .run(tools.clone(), Vec::new(), message)
                .await;
            assert_eq!(
                server.violations(),
                Vec::<String>::new(),
                "wire rules broken"
            );
            let outcome = Outcome {
                mode,
                run,
                seen: server.seen(),
                calls: tools.log.lock().unwrap().clone(),
                pieces: streamed.pieces.lock().unwrap().clone(),
            };
            check(&outcome);
        }
        Drive::Stream { reply } => {
            let server = Server::start(fixture, vec![Step::Reply(text(reply))], gate.clone()).await;
            let model = server.model(RetryPolicy::none());
            let got = Mutex::new(Vec::<String>::new());
            let sink = |t: &str| {
                got.lock().unwrap().push(t.to_owned());
                if let Some(g) = &gate {
                    g.notify_one();
                }
            };
            let request = ModelRequest {
                messages: vec![Message::system(PROMPT), Message::user("Greet me.")],
                tools: Vec::new(),
            };
            let turn = model
                .stream(&request, &sink)
                .await
                .expect("the stream succeeds");
            assert_eq!(
                server.violations(),
                Vec::<String>::new(),
                "wire rules broken"
            );
            let got = got.into_inner().unwrap();
            assert_eq!(got, pieces(reply), "pieces arrive one by one, in order");
            assert_eq!(turn.content.as_deref(), Some(*reply));
            assert!(turn.tool_calls.is_empty());
            assert_eq!(
                turn.usage,
                Some(weft_agents::Usage {
                    input_tokens: 10,
                    output_tokens: 5
                }),
                "usage comes with the streamed turn"
            );
            assert!(turn.finish_reason.is_some(), "a finish reason");
            assert!(turn.response_model.is_some(), "the answering model");
            let seen = server.seen();
            assert_eq!(seen.len(), 1);
            assert!(seen[0].stream);
            assert_eq!(seen[0].system.as_deref(), Some(PROMPT));
            assert_eq!(seen[0].turns, [user("Greet me.")]);
        }
    }
}

/// Runs every scenario (both modes where they apply) and every error case against
/// `fixture`, prints its row of the table and fails listing what failed.
async fn conformance(fixture: Arc<dyn Fixture>) {
    let mut failures = Vec::new();
    let mut row = Vec::new();
    for scenario in SCENARIOS {
        let modes: &[Mode] = match scenario.drive {
            Drive::Agent { .. } => &[Mode::Complete, Mode::Stream],
            Drive::Stream { .. } => &[Mode::Stream],
        };
        for &mode in modes {
            let label = format!("{} ({mode:?})", scenario.name);
            let result = AssertUnwindSafe(run_scenario(fixture.clone(), scenario, mode))
                .catch_unwind()
                .await;
            row.push((label.clone(), result.is_ok()));
            if let Err(panic) = result {
                failures.push(format!("{label}: {}", panic_message(&panic)));
            }
        }
    }
    for case in ERRORS {
        let result = AssertUnwindSafe((case.run)(fixture.clone()))
            .catch_unwind()
            .await;
        row.push((case.name.to_owned(), result.is_ok()));
        if let Err(panic) = result {
            failures.push(format!("{}: {}", case.name, panic_message(&panic)));
        }
    }
    println!("conformance {}:", fixture.name());
    for (label, ok) in &row {
        println!("  {:<40} {}", label, if *ok { "pass" } else { "FAIL" });
    }
    assert!(
        failures.is_empty(),
        "{} failed {} of {}:\n{}",
        fixture.name(),
        failures.len(),
        row.len(),
        failures.join("\n")
    );
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".into())
}

// ---------------------------------------------------------------------------------
// Error cases (retries, Retry-After, kinds, cancellation), one table for all.

struct ErrorCase {
    name: &'static str,
    run: fn(Arc<dyn Fixture>) -> futures::future::BoxFuture<'static, ()>,
}

/// Fast retries for the tests: 50 ms back-off, 3 attempts.
fn quick() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        ..RetryPolicy::default()
    }
}

fn hello() -> ModelRequest {
    ModelRequest {
        messages: vec![Message::user("hello")],
        tools: Vec::new(),
    }
}

static ERRORS: &[ErrorCase] = &[
    ErrorCase {
        name: "429 Retry-After honoured",
        run: |f| {
            async move {
                let server = Server::start(
                    f,
                    vec![
                        Step::Fail {
                            status: 429,
                            retry_after: Some("1"),
                            message: "slow down",
                        },
                        Step::Reply(text("ok")),
                    ],
                    None,
                )
                .await;
                let started = Instant::now();
                let turn = server
                    .model(quick())
                    .complete(&hello())
                    .await
                    .expect("retried");
                let waited = started.elapsed();
                assert_eq!(turn.content.as_deref(), Some("ok"));
                assert_eq!(server.requests(), 2);
                assert!(
                    waited >= Duration::from_millis(950),
                    "waited {waited:?}, Retry-After said 1 s"
                );
                assert!(waited < Duration::from_secs(4), "waited {waited:?}");
            }
            .boxed()
        },
    },
    ErrorCase {
        name: "5xx retried, then Unavailable",
        run: |f| {
            async move {
                let attempts = f.attempts_on_5xx();
                let server = Server::start(
                    f,
                    vec![Step::Fail {
                        status: 503,
                        retry_after: None,
                        message: "upstream exploded",
                    }],
                    None,
                )
                .await;
                let e = server.model(quick()).complete(&hello()).await.unwrap_err();
                assert_eq!(e.kind(), ModelErrorKind::Unavailable, "{e}");
                assert!(e.to_string().contains("upstream exploded"), "{e}");
                assert!(e.to_string().contains("503"), "{e}");
                assert_eq!(server.requests(), attempts);
            }
            .boxed()
        },
    },
    ErrorCase {
        name: "401 is Auth",
        run: |f| {
            async move {
                let server = Server::start(
                    f,
                    vec![Step::Fail {
                        status: 401,
                        retry_after: None,
                        message: "invalid x-api-key",
                    }],
                    None,
                )
                .await;
                let e = server.model(quick()).complete(&hello()).await.unwrap_err();
                assert_eq!(e.kind(), ModelErrorKind::Auth, "{e}");
                assert!(e.to_string().contains("invalid x-api-key"), "{e}");
                assert_eq!(server.requests(), 1, "not retried");
            }
            .boxed()
        },
    },
    ErrorCase {
        name: "malformed body is InvalidResponse",
        run: |f| {
            async move {
                let server = Server::start(f, vec![Step::Raw("<html>not json</html>")], None).await;
                let e = server.model(quick()).complete(&hello()).await.unwrap_err();
                assert_eq!(e.kind(), ModelErrorKind::InvalidResponse, "{e}");
                assert!(e.to_string().contains("<html>not json</html>"), "{e}");
            }
            .boxed()
        },
    },
    ErrorCase {
        name: "slow answer is Timeout, not retried",
        run: |f| {
            async move {
                let server = Server::start(f, vec![Step::Stall], None).await;
                let model = server.model_with_timeout(Duration::from_millis(300));
                for stream in [false, true] {
                    let started = Instant::now();
                    let e = if stream {
                        model.stream(&hello(), &|_| {}).await.unwrap_err()
                    } else {
                        model.complete(&hello()).await.unwrap_err()
                    };
                    assert_eq!(e.kind(), ModelErrorKind::Timeout, "stream {stream}: {e}");
                    assert!(
                        started.elapsed() < Duration::from_secs(3),
                        "{:?}",
                        started.elapsed()
                    );
                }
                assert_eq!(server.requests(), 2, "one attempt each");
            }
            .boxed()
        },
    },
    ErrorCase {
        name: "mid-stream error ends the stream",
        run: |f| {
            async move {
                if f.mid_stream_error("", "").is_none() {
                    return;
                }
                let server = Server::start(f, vec![Step::MidStreamError], None).await;
                let got = Mutex::new(String::new());
                let e = server
                    .model(quick())
                    .stream(&hello(), &|t| got.lock().unwrap().push_str(t))
                    .await
                    .unwrap_err();
                assert_eq!(e.kind(), ModelErrorKind::Unavailable, "{e}");
                assert!(e.to_string().contains("overloaded"), "{e}");
                assert_eq!(
                    *got.lock().unwrap(),
                    "Partial ",
                    "text before the error was handed on"
                );
                assert_eq!(server.requests(), 1, "a started stream is not retried");
            }
            .boxed()
        },
    },
    ErrorCase {
        name: "dropped complete closes the request",
        run: |f| async move { dropped(f, Mode::Complete).await }.boxed(),
    },
    ErrorCase {
        name: "dropped stream closes the request",
        run: |f| async move { dropped(f, Mode::Stream).await }.boxed(),
    },
    ErrorCase {
        name: "dropped during back-off: no retry",
        run: |f| {
            async move {
                let server = Server::start(
                    f,
                    vec![
                        Step::Fail {
                            status: 429,
                            retry_after: Some("1"),
                            message: "slow down",
                        },
                        Step::Reply(text("too late")),
                    ],
                    None,
                )
                .await;
                let model = server.model(quick());
                let call = tokio::spawn(async move { model.complete(&hello()).await });
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(server.requests(), 1);
                call.abort();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                assert_eq!(server.requests(), 1, "a dropped call made no retry");
            }
            .boxed()
        },
    },
];

/// A call dropped while the server is sending the body: the server sees the
/// connection close.
async fn dropped(f: Arc<dyn Fixture>, mode: Mode) {
    let server = Server::start(f, vec![Step::Hang], None).await;
    let model = server.model(quick());
    let call = tokio::spawn(async move {
        match mode {
            Mode::Complete => model.complete(&hello()).await,
            Mode::Stream => model.stream(&hello(), &|_| {}).await,
        }
    });
    tokio::time::timeout(Duration::from_secs(5), server.hung.notified())
        .await
        .expect("the request reached the server");
    tokio::time::sleep(Duration::from_millis(150)).await;
    call.abort();
    tokio::time::timeout(Duration::from_secs(5), server.dropped.notified())
        .await
        .expect("the server saw the connection close after the call was dropped");
}

// ---------------------------------------------------------------------------------
// Shared decoding helpers.

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

fn array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what} is not an array: {v}"))
}

/// An array that may be left out (`null` counts as empty).
fn opt_array<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], String> {
    if v.is_null() {
        Ok(&[])
    } else {
        array(v, what).map(Vec::as_slice)
    }
}

fn string<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what} is not a string: {v}"))
}

/// Appends results to the last turn when it is a results turn, else starts one.
fn push_result(turns: &mut Vec<Turn>, r: ToolResult) {
    match turns.last_mut() {
        Some(Turn::Results(rs)) => rs.push(r),
        _ => turns.push(Turn::Results(vec![r])),
    }
}

// ---------------------------------------------------------------------------------
// OpenAI Chat Completions.

struct OpenAi;

impl Fixture for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn model(&self, base: &str, _retry: RetryPolicy, timeout: Duration) -> Arc<dyn Model> {
        // async-openai retries on its own (3 retries from 100 ms).
        Arc::new(
            OpenAiModel::builder()
                .base_url(format!("{base}/v1"))
                .api_key("sk-test")
                .model("gpt-test")
                .timeout(timeout)
                .build()
                .unwrap(),
        )
    }

    fn attempts_on_5xx(&self) -> usize {
        4
    }

    fn decode(&self, req: &Req) -> Result<Seen, String> {
        check(req.path == "/v1/chat/completions", || {
            format!("path {}", req.path)
        })?;
        check(
            req.header("authorization") == Some("Bearer sk-test"),
            || format!("authorization {:?}", req.header("authorization")),
        )?;
        let b = &req.body;
        check(b["model"] == "gpt-test", || format!("model {}", b["model"]))?;
        let stream = b["stream"] == true;
        if stream {
            check(b["stream_options"]["include_usage"] == true, || {
                "a stream asks for usage (stream_options.include_usage)".into()
            })?;
        }
        let mut seen = Seen {
            stream,
            ..Seen::default()
        };
        for t in opt_array(&b["tools"], "tools")? {
            check(t["type"] == "function", || format!("tool type {t}"))?;
            check(t["function"]["parameters"].is_object(), || {
                format!("tool parameters {t}")
            })?;
            seen.tools
                .push(string(&t["function"]["name"], "tool name")?.to_owned());
        }
        let mut pending: Vec<(String, String)> = Vec::new();
        for (i, m) in array(&b["messages"], "messages")?.iter().enumerate() {
            match string(&m["role"], "role")? {
                "system" => {
                    check(i == 0, || "the system message comes first".into())?;
                    seen.system = Some(string(&m["content"], "system content")?.to_owned());
                }
                "user" => seen.turns.push(Turn::User(
                    string(&m["content"], "user content")?.to_owned(),
                )),
                "assistant" => {
                    check(pending.is_empty(), || {
                        format!("calls {pending:?} got no results")
                    })?;
                    let mut calls = Vec::new();
                    for c in m["tool_calls"].as_array().into_iter().flatten() {
                        check(c["type"] == "function", || format!("call type {c}"))?;
                        let id = string(&c["id"], "call id")?.to_owned();
                        let name = string(&c["function"]["name"], "call name")?.to_owned();
                        let args = string(&c["function"]["arguments"], "arguments (JSON text)")?;
                        let args: Value =
                            serde_json::from_str(args).map_err(|e| format!("arguments: {e}"))?;
                        pending.push((id, name.clone()));
                        calls.push((name, args));
                    }
                    seen.turns.push(Turn::Assistant {
                        text: m["content"].as_str().unwrap_or_default().to_owned(),
                        calls,
                    });
                }
                "tool" => {
                    let id = string(&m["tool_call_id"], "tool_call_id")?;
                    check(!pending.is_empty() && pending[0].0 == id, || {
                        format!("tool result {id} out of order; expected {pending:?}")
                    })?;
                    let (_, name) = pending.remove(0);
                    let content = parse_content(string(&m["content"], "tool content")?);
                    push_result(
                        &mut seen.turns,
                        ToolResult {
                            name,
                            is_error: is_error_content(&content),
                            content,
                        },
                    );
                }
                other => return Err(format!("role {other}")),
            }
        }
        Ok(seen)
    }

    fn answer(&self, reply: &Reply, step: usize, stream: bool) -> Answer {
        let ids: Vec<String> = (0..reply.calls.len())
            .map(|i| format!("call_{step}_{i}"))
            .collect();
        let finish = if reply.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
        if !stream {
            let mut message = json!({"role": "assistant", "content": reply.text});
            if !reply.calls.is_empty() {
                message["tool_calls"] = reply
                    .calls
                    .iter()
                    .zip(&ids)
                    .map(|((n, a), id)| json!({"id": id, "type": "function", "function": {"name": n, "arguments": a.to_string()}}))
                    .collect();
            }
            return Answer::Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
                "model": "gpt-test-2026", "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            }));
        }
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": "gpt-test-2026",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut units = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        let mut first_text = None;
        for p in reply.text.as_deref().map(pieces).unwrap_or_default() {
            first_text.get_or_insert(units.len());
            units.push(chunk(json!({"content": p}), None));
        }
        for (i, ((n, a), id)) in reply.calls.iter().zip(&ids).enumerate() {
            let (x, y) = halves(&a.to_string());
            units.push(chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                "function": {"name": n, "arguments": ""}}]}),
                None,
            ));
            units.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": x}}]}),
                None,
            ));
            units.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": y}}]}),
                None,
            ));
        }
        units.push(chunk(json!({}), Some(finish)));
        let mut units: Vec<String> = units.iter().map(|u| format!("data: {u}\n\n")).collect();
        units.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": "gpt-test-2026", "choices": [], "usage": usage})
        ));
        units.push("data: [DONE]\n\n".into());
        Answer::Stream {
            content_type: "text/event-stream",
            units,
            first_text,
        }
    }

    fn mid_stream_error(&self, _text: &str, _message: &str) -> Option<Answer> {
        // Chat Completions documents no error event inside a stream.
        None
    }

    fn error_body(&self, _status: u16, message: &str) -> Value {
        json!({"error": {"message": message, "type": "invalid_request_error", "code": null}})
    }
}

// ---------------------------------------------------------------------------------
// Anthropic Messages.

struct Anthropic;

impl Fixture for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn model(&self, base: &str, retry: RetryPolicy, timeout: Duration) -> Arc<dyn Model> {
        Arc::new(
            AnthropicModel::builder()
                .base_url(base)
                .api_key("sk-ant-test")
                .model("claude-test")
                .timeout(timeout)
                .retry(retry)
                .build()
                .unwrap(),
        )
    }

    fn decode(&self, req: &Req) -> Result<Seen, String> {
        check(req.path == "/v1/messages", || format!("path {}", req.path))?;
        check(req.header("x-api-key") == Some("sk-ant-test"), || {
            format!("x-api-key {:?}", req.header("x-api-key"))
        })?;
        check(
            req.header("anthropic-version") == Some("2023-06-01"),
            || format!("anthropic-version {:?}", req.header("anthropic-version")),
        )?;
        check(
            req.header("content-type") == Some("application/json"),
            || format!("content-type {:?}", req.header("content-type")),
        )?;
        let b = &req.body;
        check(b["model"] == "claude-test", || {
            format!("model {}", b["model"])
        })?;
        check(b["max_tokens"].as_u64().is_some_and(|n| n > 0), || {
            format!("max_tokens is required: {}", b["max_tokens"])
        })?;
        let mut seen = Seen {
            stream: b["stream"] == true,
            system: b["system"].as_str().map(str::to_owned),
            ..Seen::default()
        };
        for t in opt_array(&b["tools"], "tools")? {
            check(t["input_schema"]["type"] == "object", || {
                format!("tool input_schema {t}")
            })?;
            check(
                t.get("parameters").is_none() && t.get("type").is_none(),
                || format!("a custom tool is {{name, description, input_schema}}: {t}"),
            )?;
            seen.tools.push(string(&t["name"], "tool name")?.to_owned());
        }
        let messages = array(&b["messages"], "messages")?;
        let mut expected: Vec<(String, String)> = Vec::new();
        let mut last_role = "";
        for (i, m) in messages.iter().enumerate() {
            let role = string(&m["role"], "role")?;
            check(role == "user" || role == "assistant", || {
                format!("role {role}: the system prompt is the top-level `system`")
            })?;
            check(role != last_role, || {
                format!("messages {i}: two {role} messages in a row")
            })?;
            check(i > 0 || role == "user", || {
                "the first message is the user's".into()
            })?;
            last_role = role;
            let blocks = array(&m["content"], "content")?;
            check(!blocks.is_empty(), || format!("message {i} has no content"))?;
            if role == "assistant" {
                let mut text = String::new();
                let mut calls = Vec::new();
                for block in blocks {
                    match string(&block["type"], "block type")? {
                        "text" => {
                            let t = string(&block["text"], "text")?;
                            check(!t.is_empty(), || "an empty text block".into())?;
                            text.push_str(t);
                        }
                        "tool_use" => {
                            let id = string(&block["id"], "tool_use id")?.to_owned();
                            let name = string(&block["name"], "tool_use name")?.to_owned();
                            check(block["input"].is_object(), || {
                                format!("tool_use input {block}")
                            })?;
                            expected.push((id, name.clone()));
                            calls.push((name, block["input"].clone()));
                        }
                        other => return Err(format!("assistant block {other}")),
                    }
                }
                seen.turns.push(Turn::Assistant { text, calls });
                continue;
            }
            // A user message: the results of the previous turn's calls, all here, in
            // order, before any text.
            let mut results = Vec::new();
            let mut texts = Vec::new();
            for block in blocks {
                match string(&block["type"], "block type")? {
                    "tool_result" => {
                        check(texts.is_empty(), || {
                            "tool_result blocks come before text".into()
                        })?;
                        results.push(block);
                    }
                    "text" => texts.push(string(&block["text"], "text")?.to_owned()),
                    other => return Err(format!("user block {other}")),
                }
            }
            check(results.len() == expected.len(), || {
                format!(
                    "message {i}: {} tool_result blocks for the {} tool_use blocks before it (all results of a turn go in one user message)",
                    results.len(),
                    expected.len()
                )
            })?;
            if !results.is_empty() {
                let mut rs = Vec::new();
                for (block, (id, name)) in results.iter().zip(expected.drain(..)) {
                    check(block["tool_use_id"] == id.as_str(), || {
                        format!(
                            "tool_result for {} where {id} was expected (order)",
                            block["tool_use_id"]
                        )
                    })?;
                    let content = parse_content(string(&block["content"], "tool_result content")?);
                    let is_error = block["is_error"] == true;
                    check(is_error == is_error_content(&content), || {
                        format!("is_error is {is_error} for {content}")
                    })?;
                    rs.push(ToolResult {
                        name,
                        content,
                        is_error,
                    });
                }
                seen.turns.push(Turn::Results(rs));
            }
            for t in texts {
                seen.turns.push(Turn::User(t));
            }
        }
        check(expected.is_empty(), || {
            format!("tool_use {expected:?} without results")
        })?;
        Ok(seen)
    }

    fn answer(&self, reply: &Reply, step: usize, stream: bool) -> Answer {
        let ids: Vec<String> = (0..reply.calls.len())
            .map(|i| format!("toolu_{step}_{i}"))
            .collect();
        let stop = if reply.calls.is_empty() {
            "end_turn"
        } else {
            "tool_use"
        };
        if !stream {
            let mut content = Vec::new();
            if let Some(t) = &reply.text {
                content.push(json!({"type": "text", "text": t}));
            }
            for ((n, a), id) in reply.calls.iter().zip(&ids) {
                content.push(json!({"type": "tool_use", "id": id, "name": n, "input": a}));
            }
            return Answer::Json(json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-20260101",
                "content": content, "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 5},
            }));
        }
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut units = vec![
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                    "role": "assistant", "model": "claude-test-20260101", "content": [],
                    "stop_reason": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
            ),
            ev("ping", json!({"type": "ping"})),
        ];
        let mut first_text = None;
        let mut index = 0;
        if let Some(t) = &reply.text {
            units.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for p in pieces(t) {
                first_text.get_or_insert(units.len());
                units.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": p}}),
                ));
            }
            units.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        }
        for ((n, a), id) in reply.calls.iter().zip(&ids) {
            units.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": id, "name": n, "input": {}}}),
            ));
            let (x, y) = halves(&a.to_string());
            for part in [x, y] {
                units.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
            units.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        }
        units.push(ev(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ));
        units.push(ev("message_stop", json!({"type": "message_stop"})));
        Answer::Stream {
            content_type: "text/event-stream",
            units,
            first_text,
        }
    }

    fn mid_stream_error(&self, text: &str, message: &str) -> Option<Answer> {
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        Some(Answer::Stream {
            content_type: "text/event-stream",
            units: vec![
                ev(
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_1",
                    "type": "message", "role": "assistant", "model": "claude-test", "content": [],
                    "usage": {"input_tokens": 1, "output_tokens": 1}}}),
                ),
                ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ),
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}}),
                ),
                ev(
                    "error",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": message}}),
                ),
            ],
            first_text: None,
        })
    }

    fn error_body(&self, status: u16, message: &str) -> Value {
        let kind = match status {
            401 => "authentication_error",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }
}

// ---------------------------------------------------------------------------------
// Gemini generateContent.

struct Gemini;

/// The thought signature the Gemini fixture gives the first call of step `step`.
fn signature(step: usize) -> String {
    format!("c2lnLXN0ZXAt{step}")
}

impl Fixture for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn model(&self, base: &str, retry: RetryPolicy, timeout: Duration) -> Arc<dyn Model> {
        Arc::new(
            GeminiModel::builder()
                .base_url(base)
                .api_key("gm-test")
                .model("gemini-test")
                .timeout(timeout)
                .retry(retry)
                .build()
                .unwrap(),
        )
    }

    fn decode(&self, req: &Req) -> Result<Seen, String> {
        let stream = match req.path.as_str() {
            "/v1beta/models/gemini-test:generateContent" => false,
            "/v1beta/models/gemini-test:streamGenerateContent?alt=sse" => true,
            other => return Err(format!("path {other}")),
        };
        check(req.header("x-goog-api-key") == Some("gm-test"), || {
            format!("x-goog-api-key {:?}", req.header("x-goog-api-key"))
        })?;
        let b = &req.body;
        let mut seen = Seen {
            stream,
            ..Seen::default()
        };
        if let Some(si) = b.get("systemInstruction") {
            seen.system =
                Some(string(&si["parts"][0]["text"], "systemInstruction text")?.to_owned());
        }
        let decls = opt_array(
            &b["tools"][0]["functionDeclarations"],
            "functionDeclarations",
        )?;
        for d in decls {
            check(d["parametersJsonSchema"].is_object(), || {
                format!("parametersJsonSchema in {d}")
            })?;
            check(d.get("parameters").is_none(), || {
                "parameters and parametersJsonSchema are mutually exclusive".into()
            })?;
            seen.tools
                .push(string(&d["name"], "declaration name")?.to_owned());
        }
        let mut expected: Vec<(Option<String>, String)> = Vec::new();
        let mut model_turns = 0;
        for (i, c) in array(&b["contents"], "contents")?.iter().enumerate() {
            let role = string(&c["role"], "role")?;
            let parts = array(&c["parts"], "parts")?;
            check(!parts.is_empty(), || format!("content {i} has no parts"))?;
            match role {
                "model" => {
                    check(expected.is_empty(), || {
                        format!("calls {expected:?} got no results")
                    })?;
                    let mut text = String::new();
                    let mut calls = Vec::new();
                    let mut first_call = true;
                    for p in parts {
                        if let Some(t) = p.get("text") {
                            text.push_str(string(t, "text")?);
                            continue;
                        }
                        let fc = p
                            .get("functionCall")
                            .ok_or_else(|| format!("model part {p}"))?;
                        let name = string(&fc["name"], "functionCall name")?.to_owned();
                        check(fc["args"].is_object(), || format!("functionCall args {fc}"))?;
                        let sig = p.get("thoughtSignature").and_then(Value::as_str);
                        if first_call {
                            model_turns += 1;
                            // The call's id (`fc_<step>_<i>`) names the answer that gave
                            // it, and with it the signature: a sub-agent's turns on the
                            // same fixture come between a conversation's own.
                            let step = fc["id"]
                                .as_str()
                                .and_then(|id| {
                                    id.strip_prefix("fc_")?.split('_').next()?.parse().ok()
                                })
                                .unwrap_or(model_turns);
                            let want = signature(step);
                            check(sig == Some(want.as_str()), || {
                                format!(
                                    "the first functionCall part of model turn {model_turns} (from answer {step}) must carry its thoughtSignature {want:?} back, got {sig:?}"
                                )
                            })?;
                        } else {
                            check(sig.is_none(), || {
                                format!("a signature on a part that had none: {p}")
                            })?;
                        }
                        first_call = false;
                        check(fc.get("thoughtSignature").is_none(), || {
                            "thoughtSignature belongs on the part, beside functionCall".into()
                        })?;
                        expected.push((fc["id"].as_str().map(str::to_owned), name.clone()));
                        calls.push((name, fc["args"].clone()));
                    }
                    seen.turns.push(Turn::Assistant { text, calls });
                }
                "user" => {
                    let mut rs = Vec::new();
                    for p in parts {
                        if let Some(t) = p.get("text") {
                            check(rs.is_empty() && expected.is_empty(), || {
                                "text after unanswered calls".into()
                            })?;
                            seen.turns.push(Turn::User(string(t, "text")?.to_owned()));
                            continue;
                        }
                        let fr = p
                            .get("functionResponse")
                            .ok_or_else(|| format!("user part {p}"))?;
                        check(!expected.is_empty(), || {
                            format!("a functionResponse without a call: {fr}")
                        })?;
                        let (id, name) = expected.remove(0);
                        check(fr["name"] == name.as_str(), || {
                            format!(
                                "functionResponse {} where {name} was expected (order)",
                                fr["name"]
                            )
                        })?;
                        check(fr["id"].as_str().map(str::to_owned) == id, || {
                            format!("functionResponse id {} for call id {id:?}", fr["id"])
                        })?;
                        let response = &fr["response"];
                        let (content, is_error) = if let Some(e) = response.get("error") {
                            (json!({"error": e}), true)
                        } else if let Some(o) = response.get("output") {
                            (o.clone(), false)
                        } else {
                            return Err(format!(
                                "functionResponse.response has neither output nor error: {response}"
                            ));
                        };
                        rs.push(ToolResult {
                            name,
                            content,
                            is_error,
                        });
                    }
                    if !rs.is_empty() {
                        check(expected.is_empty(), || {
                            format!(
                                "calls {expected:?} answered in another content: all responses of a turn go together"
                            )
                        })?;
                        seen.turns.push(Turn::Results(rs));
                    }
                }
                other => return Err(format!("role {other} (Gemini has user and model)")),
            }
        }
        Ok(seen)
    }

    fn answer(&self, reply: &Reply, step: usize, stream: bool) -> Answer {
        let finish = json!({"finishReason": "STOP", "index": 0});
        let usage =
            json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15});
        let call_part = |i: usize, n: &str, a: &Value, signed: bool| {
            let mut p =
                json!({"functionCall": {"id": format!("fc_{step}_{i}"), "name": n, "args": a}});
            if signed {
                p["thoughtSignature"] = Value::String(signature(step));
            }
            p
        };
        let chunk = |parts: Vec<Value>, last: bool| {
            let mut c = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
                               "modelVersion": "gemini-test-001", "responseId": "r1"});
            if last {
                c["candidates"][0]["finishReason"] = finish["finishReason"].clone();
                c["usageMetadata"] = usage.clone();
            }
            c
        };
        if !stream {
            let mut parts = Vec::new();
            if let Some(t) = &reply.text {
                parts.push(json!({"text": t}));
            }
            for (i, (n, a)) in reply.calls.iter().enumerate() {
                parts.push(call_part(i, n, a, i == 0));
            }
            return Answer::Json(chunk(parts, true));
        }
        let mut units = Vec::new();
        let mut first_text = None;
        for p in reply.text.as_deref().map(pieces).unwrap_or_default() {
            first_text.get_or_insert(units.len());
            units.push(chunk(vec![json!({"text": p})], false));
        }
        if !reply.calls.is_empty() {
            // Calls arrive whole; the first call's signature comes later, on an empty
            // text part (as streams may send it).
            units.push(chunk(
                reply
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(i, (n, a))| call_part(i, n, a, false))
                    .collect(),
                false,
            ));
            units.push(chunk(
                vec![json!({"text": "", "thoughtSignature": signature(step)})],
                false,
            ));
        }
        units.push(chunk(vec![json!({"text": ""})], true));
        Answer::Stream {
            content_type: "text/event-stream",
            units: units.iter().map(|u| format!("data: {u}\r\n\r\n")).collect(),
            first_text,
        }
    }

    fn mid_stream_error(&self, text: &str, message: &str) -> Option<Answer> {
        let units = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}]}),
            json!({"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}),
        ];
        Some(Answer::Stream {
            content_type: "text/event-stream",
            units: units.iter().map(|u| format!("data: {u}\r\n\r\n")).collect(),
            first_text: None,
        })
    }

    fn error_body(&self, status: u16, message: &str) -> Value {
        let s = match status {
            401 => "UNAUTHENTICATED",
            429 => "RESOURCE_EXHAUSTED",
            500..=599 => "UNAVAILABLE",
            _ => "INVALID_ARGUMENT",
        };
        json!({"error": {"code": status, "message": message, "status": s}})
    }
}

// ---------------------------------------------------------------------------------
// Ollama /api/chat.

struct Ollama;

impl Fixture for Ollama {
    fn name(&self) -> &'static str {
        "ollama"
    }

    fn model(&self, base: &str, retry: RetryPolicy, timeout: Duration) -> Arc<dyn Model> {
        Arc::new(
            OllamaModel::builder()
                .host(base)
                .model("llama-test")
                .timeout(timeout)
                .retry(retry)
                .build()
                .unwrap(),
        )
    }

    fn decode(&self, req: &Req) -> Result<Seen, String> {
        check(req.path == "/api/chat", || format!("path {}", req.path))?;
        let b = &req.body;
        check(b["model"] == "llama-test", || {
            format!("model {}", b["model"])
        })?;
        // Streaming is the default: a whole answer must say "stream": false.
        let stream = match &b["stream"] {
            Value::Bool(s) => *s,
            other => {
                return Err(format!(
                    "\"stream\" must be sent (true or false), got {other}"
                ));
            }
        };
        let mut seen = Seen {
            stream,
            ..Seen::default()
        };
        for t in opt_array(&b["tools"], "tools")? {
            check(t["type"] == "function", || format!("tool type {t}"))?;
            seen.tools
                .push(string(&t["function"]["name"], "tool name")?.to_owned());
        }
        let mut pending: Vec<(String, String)> = Vec::new();
        for (i, m) in array(&b["messages"], "messages")?.iter().enumerate() {
            let content = string(&m["content"], "content")?;
            match string(&m["role"], "role")? {
                "system" => {
                    check(i == 0, || "the system message comes first".into())?;
                    seen.system = Some(content.to_owned());
                }
                "user" => seen.turns.push(Turn::User(content.to_owned())),
                "assistant" => {
                    check(pending.is_empty(), || {
                        format!("calls {pending:?} got no results")
                    })?;
                    let mut calls = Vec::new();
                    for c in m["tool_calls"].as_array().into_iter().flatten() {
                        let name = string(&c["function"]["name"], "function name")?.to_owned();
                        check(c["function"]["arguments"].is_object(), || {
                            format!("arguments are an object, not text: {c}")
                        })?;
                        pending.push((
                            c["id"].as_str().unwrap_or_default().to_owned(),
                            name.clone(),
                        ));
                        calls.push((name, c["function"]["arguments"].clone()));
                    }
                    seen.turns.push(Turn::Assistant {
                        text: content.to_owned(),
                        calls,
                    });
                }
                "tool" => {
                    check(!pending.is_empty(), || {
                        "a tool message without a call".into()
                    })?;
                    let (id, name) = pending.remove(0);
                    check(m["tool_name"] == name.as_str(), || {
                        format!(
                            "tool message tool_name {} for a call of {name}",
                            m["tool_name"]
                        )
                    })?;
                    if let Some(tid) = m["tool_call_id"].as_str() {
                        check(tid == id, || format!("tool_call_id {tid} for call id {id}"))?;
                    }
                    let content = parse_content(content);
                    push_result(
                        &mut seen.turns,
                        ToolResult {
                            name,
                            is_error: is_error_content(&content),
                            content,
                        },
                    );
                }
                other => return Err(format!("role {other}")),
            }
        }
        Ok(seen)
    }

    fn answer(&self, reply: &Reply, _step: usize, stream: bool) -> Answer {
        // Like older servers, calls carry no id.
        let tool_calls: Vec<Value> = reply
            .calls
            .iter()
            .enumerate()
            .map(|(i, (n, a))| json!({"function": {"index": i, "name": n, "arguments": a}}))
            .collect();
        let done = |content: &str, calls: &[Value]| {
            let mut m = json!({"role": "assistant", "content": content});
            if !calls.is_empty() {
                m["tool_calls"] = Value::Array(calls.to_vec());
            }
            json!({"model": "llama-test", "created_at": "2026-01-01T00:00:00Z", "message": m,
                   "done": true, "done_reason": "stop", "total_duration": 1000,
                   "prompt_eval_count": 10, "eval_count": 5})
        };
        if !stream {
            return Answer::Json(done(reply.text.as_deref().unwrap_or_default(), &tool_calls));
        }
        let partial = |m: Value| json!({"model": "llama-test", "created_at": "2026-01-01T00:00:00Z", "message": m, "done": false});
        let mut units = Vec::new();
        let mut first_text = None;
        for p in reply.text.as_deref().map(pieces).unwrap_or_default() {
            first_text.get_or_insert(units.len());
            units.push(partial(json!({"role": "assistant", "content": p})));
        }
        if !tool_calls.is_empty() {
            units.push(partial(
                json!({"role": "assistant", "content": "", "tool_calls": tool_calls}),
            ));
        }
        units.push(done("", &[]));
        Answer::Stream {
            content_type: "application/x-ndjson",
            units: units.iter().map(|u| format!("{u}\n")).collect(),
            first_text,
        }
    }

    fn mid_stream_error(&self, text: &str, message: &str) -> Option<Answer> {
        let units = [
            json!({"model": "llama-test", "created_at": "2026-01-01T00:00:00Z",
                   "message": {"role": "assistant", "content": text}, "done": false}),
            json!({"error": message}),
        ];
        Some(Answer::Stream {
            content_type: "application/x-ndjson",
            units: units.iter().map(|u| format!("{u}\n")).collect(),
            first_text: None,
        })
    }

    fn error_body(&self, _status: u16, message: &str) -> Value {
        json!({"error": message})
    }
}

// ---------------------------------------------------------------------------------
// The table: one test per provider, each running every scenario and error case.

macro_rules! providers {
    ($($test:ident => $fixture:expr),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                conformance(Arc::new($fixture)).await;
            }
        )*
    };
}

providers! {
    conformance_openai => OpenAi,
    conformance_anthropic => Anthropic,
    conformance_gemini => Gemini,
    conformance_ollama => Ollama,
}

// ---------------------------------------------------------------------------------
// Live runs against the real APIs, when their key is set.

/// One tool call through the real API, and one streamed answer.
async fn live(provider: &str, var: &str) {
    if std::env::var(var)
        .map(|v| v.trim().is_empty())
        .unwrap_or(true)
    {
        println!("skipped: set {var}");
        return;
    }
    let model = weft_agents::model::from_provider(provider).expect("the provider is configured");
    let tools = Arc::new(Calc::default());
    let run = Agent::new("live")
        .model(model.clone())
        .system_prompt("Use the add tool for arithmetic. Answer with the number only.")
        .run(tools.clone(), Vec::new(), "What is 20 + 22?")
        .await
        .unwrap_or_else(|e| panic!("{provider}: {e}"));
    assert!(
        tools.log.lock().unwrap().iter().any(|(n, _)| n == "add"),
        "{provider} called add: {run:?}"
    );
    assert!(
        run.reply.contains("42"),
        "{provider} replied {:?}",
        run.reply
    );
    let got = Mutex::new(Vec::<String>::new());
    let turn = model
        .stream(
            &ModelRequest {
                messages: vec![Message::user("Count from 1 to 5, separated by spaces.")],
                tools: Vec::new(),
            },
            &|t| got.lock().unwrap().push(t.to_owned()),
        )
        .await
        .unwrap_or_else(|e| panic!("{provider} stream: {e}"));
    let got = got.into_inner().unwrap();
    assert_eq!(got.concat(), turn.content.clone().unwrap_or_default());
    println!(
        "live {provider}: reply {:?}; streamed {} pieces; usage {:?}; finish {:?}; model {:?}",
        run.reply,
        got.len(),
        turn.usage,
        turn.finish_reason,
        turn.response_model
    );
}

#[tokio::test]
async fn live_openai() {
    live("openai", "OPENAI_API_KEY").await;
}

#[tokio::test]
async fn live_anthropic() {
    live("anthropic", "ANTHROPIC_API_KEY").await;
}

#[tokio::test]
async fn live_gemini() {
    live("gemini", "GEMINI_API_KEY").await;
}

#[tokio::test]
async fn live_ollama() {
    live("ollama", "OLLAMA_HOST").await;
}
