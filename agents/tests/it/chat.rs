//! An agent with the scripted model, managing a real `tickets` service, invoked over
//! the bus: tool calls, memory, input shapes, errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use weft_agents::model::{Model, ModelError, ModelRequest, ModelTurn, Role};
use weft_agents::{Agent, ChatReply, Message, ScriptedModel};
use weft_bus::testing::TestServer;
use weft_bus::{Bus, Envelope, ErrorCode, ErrorKind, Target};

use crate::support::tickets_service;

const SCRIPT: &str = r#"{"rules": [
  {"match": "(?i)how many tickets are open", "turns": [
     {"tool_calls": [{"name": "tickets_list", "arguments": {"status": "open"}}]},
     {"content": "There are {{result.0./count}} open tickets."}
  ]},
  {"match": "(?i)what is the first open ticket", "turns": [
     {"tool_calls": [{"name": "tickets_list", "arguments": {"status": "open"}}]},
     {"tool_calls": [{"name": "tickets_get", "arguments": {"id": "{{result.0./tickets/0/id}}"}}]},
     {"content": "Of {{result.0./count}} open tickets, the first is {{result.1./id}}: \"{{result.1./title}}\"."}
  ]},
  {"match": "(?i)look up ticket (?P<id>[A-Za-z0-9-]+)", "turns": [
     {"tool_calls": [{"name": "tickets_get", "arguments": {"id": "{{match.id}}"}}]},
     {"content": "{{result.0./title}}{{result.0./error/code}}"}
  ]},
  {"match": "(?i)loop", "turns": [
     {"tool_calls": [{"name": "tickets_list", "arguments": {}}]}
  ]},
  {"match": ".*", "turns": [{"content": "I can count and look up tickets."}]}
]}"#;

/// The scripted model, recording every request it gets.
struct Recording {
    inner: ScriptedModel,
    seen: Mutex<Vec<ModelRequest>>,
}

#[async_trait]
impl Model for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        self.seen.lock().unwrap().push(request.clone());
        self.inner.complete(request).await
    }
}

fn recording() -> Arc<Recording> {
    Arc::new(Recording {
        inner: ScriptedModel::from_json(SCRIPT).unwrap(),
        seen: Mutex::new(Vec::new()),
    })
}

fn support() -> Target {
    "support".parse().unwrap()
}

async fn serve_support(bus: &Bus, model: Arc<dyn Model>) -> weft_bus::service::ServiceHandle {
    Agent::new("support")
        .version("1.2.0")
        .description("Answers questions about tickets")
        .manages(["tickets"])
        .model(model)
        .system_prompt("You are the support agent.")
        .max_steps(4)
        .tool_timeout(Duration::from_secs(5))
        .serve(bus)
        .await
        .expect("serve agent")
}

#[tokio::test]
async fn a_chat_calls_two_tools_and_answers_from_their_results() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (tickets, calls) = tickets_service(&bus).await;
    let model = recording();
    let agent = serve_support(&bus, model.clone()).await;

    let out = bus
        .invoke(
            &support(),
            json!({"message": "What is the first open ticket?"}),
        )
        .await
        .expect("chat");
    let reply: ChatReply = serde_json::from_value(out.clone()).unwrap();
    assert_eq!(
        reply.reply,
        "Of 2 open tickets, the first is T-1: \"Printer on fire\"."
    );
    assert_eq!(reply.agent, "support");
    // A served chat is a journaled run whose id comes from the request.
    let run_id = uuid::Uuid::parse_str(&reply.run_id).unwrap();
    assert_eq!(run_id.get_version_num(), 5);
    let journal = weft_bus::runs::Journal::open(&bus).await.unwrap();
    let run = weft_bus::runs::RunRef::new(weft_bus::runs::RunKind::Agent, "support", &reply.run_id)
        .unwrap();
    let state = journal
        .state(&run)
        .await
        .unwrap()
        .expect("the run is journaled");
    assert_eq!(state.status, weft_bus::runs::RunStatus::Completed);
    let steps: Vec<&str> = state.steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        steps,
        ["turn_1", "tool_1_0", "turn_2", "tool_2_0", "turn_3"]
    );
    assert_eq!(state.output.as_ref().unwrap()["reply"], json!(reply.reply));
    // The tool request carried the step's idempotency key as its event_id.
    assert_eq!(
        calls.list_requests.lock().unwrap()[0].event_id,
        weft_agents::durable::idempotency_key(&reply.run_id, "tool_1_0")
    );

    // Both tool calls are recorded with their arguments and results…
    assert_eq!(reply.tool_calls.len(), 2, "{out}");
    assert_eq!(reply.tool_calls[0].name, "tickets_list");
    assert_eq!(reply.tool_calls[0].arguments, json!({"status": "open"}));
    assert_eq!(reply.tool_calls[0].result.as_ref().unwrap()["count"], 2);
    assert!(reply.tool_calls[0].error.is_none());
    assert_eq!(reply.tool_calls[1].name, "tickets_get");
    assert_eq!(reply.tool_calls[1].arguments, json!({"id": "T-1"}));
    assert_eq!(
        reply.tool_calls[1].result.as_ref().unwrap()["title"],
        "Printer on fire"
    );
    // … and really went over the bus, once each.
    assert_eq!((calls.list(), calls.get()), (1, 1));

    // The model saw the tools from the registry and the system prompt.
    let seen = model.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let names: Vec<&str> = seen[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["tickets_list", "tickets_get"]);
    assert_eq!(seen[0].tools[1].description, "Get one ticket by id");
    assert_eq!(seen[0].tools[1].parameters, crate::support::get_schema());
    assert_eq!(
        seen[0].messages[0],
        Message::system("You are the support agent.")
    );
    // The last request carries both tool results.
    let tool_msgs: Vec<&Message> = seen[2]
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .collect();
    assert_eq!(tool_msgs.len(), 2);
    assert_eq!(tool_msgs[1].tool_call_id.as_deref(), Some("call_1_0"));

    // A tool error goes back to the model, and is recorded as an error.
    let out = bus
        .invoke(&support(), json!({"message": "look up ticket T-99"}))
        .await
        .unwrap();
    assert_eq!(out["reply"], "NOT_FOUND");
    assert_eq!(out["tool_calls"][0]["error"]["code"], "NOT_FOUND");
    assert!(out["tool_calls"][0].get("result").is_none(), "{out}");

    // Registered as an agent with its metadata.
    let agents = weft_agents::agent::list(&bus).await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].name, "support");
    assert_eq!(agents[0].versions, ["1.2.0"]);
    assert_eq!(agents[0].manages, ["tickets"]);
    assert_eq!(agents[0].model, "scripted");
    let reg = agent.registration();
    assert_eq!(reg.kind, weft_bus::registry::Kind::Agent);
    assert!(reg.endpoints[0].default && reg.endpoints[0].name == "chat");

    // Metrics were counted.
    let text = weft_bus::metrics::render();
    assert!(
        text.contains(r#"weft_agent_runs_total{agent="support",outcome="ok"}"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"weft_agent_tool_calls_total{agent="support",outcome="ok",tool="tickets_get"}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"weft_model_requests_total{outcome="ok",provider="scripted"}"#));

    agent.stop().await.unwrap();
    tickets.stop().await.unwrap();
}

#[tokio::test]
async fn memory_persists_across_chats_of_one_session() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    let model = recording();
    let _agent = serve_support(&bus, model.clone()).await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = Envelope::request(
        "support",
        json!({"message": "How many tickets are open?", "session_id": "s-1"}),
    );
    req.traceparent = Some(traceparent.into());
    req.tenant_id = Some("acme".into());
    let first = bus
        .request(&support(), req, Duration::from_secs(10))
        .await
        .unwrap()
        .payload
        .unwrap();
    assert_eq!(first["reply"], "There are 2 open tickets.");
    // The tool request carried the trace, tenant and session, from the agent.
    let seen_by_tool = calls.list_requests.lock().unwrap()[0].clone();
    assert_eq!(seen_by_tool.traceparent.as_deref(), Some(traceparent));
    assert_eq!(seen_by_tool.tenant_id.as_deref(), Some("acme"));
    assert_eq!(seen_by_tool.session_id.as_deref(), Some("s-1"));
    assert_eq!(seen_by_tool.from.as_deref(), Some("support"));

    // Second chat: the session comes from the envelope, the input is a bare string.
    let mut req = Envelope::request("support", json!("thanks!"));
    req.session_id = Some("s-1".into());
    let second = bus
        .request(&support(), req, Duration::from_secs(10))
        .await
        .unwrap();
    let second = second.payload.unwrap();
    assert_eq!(second["reply"], "I can count and look up tickets.");
    assert_ne!(first["run_id"], second["run_id"]);

    // The model saw the first exchange before the new message.
    let seen = model.seen.lock().unwrap().clone();
    let last = seen.last().unwrap();
    let roles: Vec<Role> = last.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::Tool,
            Role::Assistant,
            Role::User
        ]
    );

    // The stored history: both exchanges, without the system prompt, and the two
    // runs that appended them.
    let kv = bus.kv(&bus.names().memory_bucket).await.unwrap();
    let value: Value =
        serde_json::from_slice(&kv.get("support.s-1").await.unwrap().unwrap()).unwrap();
    assert_eq!(value["runs"].as_array().unwrap().len(), 2, "{value}");
    let stored: Vec<Message> = serde_json::from_value(value["messages"].clone()).unwrap();
    let roles: Vec<Role> = stored.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::User,
            Role::Assistant,
            Role::Tool,
            Role::Assistant,
            Role::User,
            Role::Assistant
        ]
    );
    assert_eq!(stored[0].content, "How many tickets are open?");
    assert_eq!(stored[1].tool_calls[0].name, "tickets_list");
    let result: Value = serde_json::from_str(&stored[2].content).unwrap();
    assert_eq!(result["count"], 2);
    assert_eq!(stored[3].content, "There are 2 open tickets.");
    assert_eq!(stored[4].content, "thanks!");
    assert_eq!(stored[5].content, "I can count and look up tickets.");

    // Without a session nothing is remembered or stored.
    let before = seen.len();
    bus.invoke(&support(), json!("hello")).await.unwrap();
    let seen = model.seen.lock().unwrap().clone();
    assert_eq!(
        seen[before].messages.len(),
        2,
        "system prompt + message only"
    );
    let keys: Vec<String> = futures::TryStreamExt::try_collect(kv.keys().await.unwrap())
        .await
        .unwrap();
    assert_eq!(keys, ["support.s-1"]);
}

#[tokio::test]
async fn input_shapes_and_errors() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    let _agent = serve_support(&bus, recording()).await;

    // A bare string and {text} are accepted.
    let out = bus
        .invoke(&support(), json!("how many tickets are open"))
        .await
        .unwrap();
    assert_eq!(out["reply"], "There are 2 open tickets.");
    let out = bus.invoke(&support(), json!({"text": "hi"})).await.unwrap();
    assert_eq!(out["reply"], "I can count and look up tickets.");

    // Bad input is INVALID_REQUEST with a message that says what is wrong.
    for (input, needle) in [
        (json!(42), "not a number"),
        (json!({"msg": "hi"}), "no `message`"),
        (json!({"message": ""}), "empty"),
        (json!({"message": "hi", "session_id": "a b"}), "session id"),
        (json!({"message": "hi", "session_id": "a.b"}), "session id"),
    ] {
        let err = bus.invoke(&support(), input.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Remote, "{input}: {err}");
        let remote = err.remote().unwrap();
        assert_eq!(remote.code, ErrorCode::InvalidRequest, "{input}: {err}");
        assert!(!remote.retryable);
        assert!(
            remote.message.contains(needle),
            "{input}: {}",
            remote.message
        );
    }

    // A model that keeps calling tools hits max_steps (4): AGENT_TIMEOUT, and the
    // tools of the last turn are not called.
    let before = calls.list();
    let err = bus
        .invoke(&support(), json!({"message": "loop forever"}))
        .await
        .unwrap_err();
    let remote = err.remote().expect("an error reply");
    assert_eq!(remote.code, ErrorCode::AgentTimeout, "{err}");
    assert!(
        remote.message.contains("4 model calls"),
        "{}",
        remote.message
    );
    assert_eq!(calls.list() - before, 3);
    let text = weft_bus::metrics::render();
    assert!(text.contains(r#"weft_agent_runs_total{agent="support",outcome="max_steps"}"#));
    assert!(text.contains(r#"weft_agent_runs_total{agent="support",outcome="invalid_input"}"#));
}

#[tokio::test]
async fn an_agent_needs_a_model_and_valid_names() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let Err(err) = Agent::new("lonely").serve(&bus).await else {
        panic!("served without a model")
    };
    assert!(err.to_string().contains("no model"), "{err}");
    let Err(err) = Agent::new("bad")
        .manages(["not a token"])
        .model(recording())
        .serve(&bus)
        .await
    else {
        panic!("served with a bad managed service name")
    };
    assert_eq!(err.kind(), ErrorKind::InvalidSubject, "{err}");

    // None of its managed services runs: the chat fails, retryably, instead of
    // answering without its tools.
    let model = recording();
    let _agent = serve_support(&bus, model.clone()).await;
    let err = bus
        .invoke(&support(), json!("how many tickets are open"))
        .await
        .unwrap_err();
    let remote = err.remote().expect("an error reply");
    assert_eq!(remote.code, ErrorCode::AgentUnavailable, "{err}");
    assert!(remote.retryable, "{err}");
    assert!(
        remote.message.contains("no tools") && remote.message.contains("tickets"),
        "{}",
        remote.message
    );
    assert!(
        model.seen.lock().unwrap().is_empty(),
        "the model was asked anyway"
    );
    let text = weft_bus::metrics::render();
    assert!(text.contains(r#"weft_agent_runs_total{agent="support",outcome="no_tools"}"#));
}

#[tokio::test]
async fn a_tool_that_times_out_fails_the_chat_retryably() {
    use weft_bus::service::{Endpoint, Request, Service};
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let _slow = Service::new("tickets", "0.1.0")
        .endpoint(Endpoint::new("list", |_r: Request| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(json!({"count": 0}))
        }))
        .serve(&bus)
        .await
        .unwrap();
    let _agent = Agent::new("support")
        .manages(["tickets"])
        .model(recording())
        .tool_timeout(Duration::from_millis(300))
        .serve(&bus)
        .await
        .unwrap();
    let err = bus
        .invoke(&support(), json!("how many tickets are open"))
        .await
        .unwrap_err();
    let remote = err.remote().expect("an error reply");
    assert_eq!(remote.code, ErrorCode::AgentTimeout, "{err}");
    assert!(remote.retryable, "{err}");
    assert!(
        remote.message.contains("tickets_list"),
        "{}",
        remote.message
    );
}

/// Each chat reads the agent's tools from the registry. Through the connection's one
/// registry watch that costs no server request, so many chats leave the registry's
/// stream with one consumer (the watch), not one per chat (which once piled up until
/// the server refused more, error 10026).
#[tokio::test]
async fn many_chats_keep_the_registry_consumers_bounded() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    let _agent = serve_support(&bus, recording()).await;
    let consumers = || weft_bus::testing::consumers_on(&bus, "KV_weft_registry");
    let chats: Vec<_> = (0..200)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.invoke(&support(), json!("how many tickets are open"))
                    .await
            })
        })
        .collect();
    for chat in chats {
        let out = chat.await.unwrap().expect("chat");
        assert_eq!(out["tool_calls"][0]["name"], "tickets_list");
    }
    assert_eq!(calls.list(), 200);
    assert!(
        consumers().await <= 1,
        "{} consumers on the registry after 200 chats",
        consumers().await
    );
}

/// The scripted model, streaming its text word by word as a provider streams tokens.
struct WordByWord(ScriptedModel);

#[async_trait]
impl Model for WordByWord {
    fn name(&self) -> &str {
        "word-by-word"
    }
    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        self.0.complete(request).await
    }
    async fn stream(
        &self,
        request: &ModelRequest,
        on_text: weft_agents::model::TextSink<'_>,
    ) -> Result<ModelTurn, ModelError> {
        let turn = self.0.complete(request).await?;
        if let Some(text) = &turn.content {
            for (i, word) in text.split(' ').enumerate() {
                on_text(&if i == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                });
            }
        }
        Ok(turn)
    }
}

#[tokio::test]
async fn a_streaming_chat_sends_text_tool_calls_and_results_as_they_happen() {
    use futures::StreamExt as _;
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, _calls) = tickets_service(&bus).await;
    let model = Arc::new(WordByWord(ScriptedModel::from_json(SCRIPT).unwrap()));
    let _agent = serve_support(&bus, model).await;

    let request = Envelope::request(
        "support",
        json!({"message": "What is the first open ticket?"}),
    );
    let mut frames = bus
        .invoke_stream(
            &support(),
            request,
            weft_bus::stream::StreamOptions::default(),
        )
        .await
        .expect("stream");
    let mut events = Vec::new();
    let mut last = None;
    while let Some(frame) = frames.next().await {
        let frame = frame.expect("frame");
        match frame.frame_type() {
            weft_bus::FrameType::Delta => events.push(frame.payload().clone()),
            weft_bus::FrameType::Final => last = Some(frame.payload().clone()),
            _ => {}
        }
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        &kinds[..4],
        ["tool_call", "tool_result", "tool_call", "tool_result"],
        "{events:#?}"
    );
    assert_eq!(events[0]["name"], "tickets_list");
    assert_eq!(events[0]["arguments"], json!({"status": "open"}));
    assert_eq!(events[1]["result"]["count"], 2);
    assert_eq!(events[1]["id"], events[0]["id"]);
    assert_eq!(events[2]["arguments"], json!({"id": "T-1"}));
    // The reply's words arrive one by one, and join into the reply.
    let text: Vec<&str> = events[4..]
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(text.len() > 5, "streamed in pieces: {text:?}");
    let reply = "Of 2 open tickets, the first is T-1: \"Printer on fire\".";
    assert_eq!(text.concat(), reply);
    let last = last.expect("a final frame");
    assert_eq!(last["reply"], reply);
    assert_eq!(last["tool_calls"].as_array().unwrap().len(), 2);

    // A plain caller of the same endpoint gets the reply only.
    let out = bus
        .invoke(
            &support(),
            json!({"message": "What is the first open ticket?"}),
        )
        .await
        .unwrap();
    assert_eq!(out["reply"], reply);
}

#[tokio::test]
async fn over_its_limits_memory_is_summarized_instead_of_dropped() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, _) = tickets_service(&bus).await;
    let script = r#"{"rules": [
      {"match": "(?s)^Conversation to summarize:", "turns": [{"content": "the user said hello {{message}}"}]},
      {"match": ".*", "turns": [{"content": "noted"}]}
    ]}"#;
    let _agent = Agent::new("summing")
        .manages(["tickets"])
        .model(Arc::new(ScriptedModel::from_json(script).unwrap()))
        .memory_limit(4)
        .summarize_memory(true)
        .serve(&bus)
        .await
        .unwrap();
    let target: Target = "summing".parse().unwrap();
    for i in 0..3 {
        bus.invoke(
            &target,
            json!({"message": format!("hello {i}"), "session_id": "m1"}),
        )
        .await
        .unwrap();
    }
    let memory = weft_agents::Memory::open(&bus).await.unwrap();
    let history = memory
        .load("summing", &"m1".parse().unwrap())
        .await
        .unwrap();
    // The summary note, then the last two exchanges.
    assert_eq!(history[0].role, Role::System, "{history:#?}");
    assert!(
        history[0]
            .content
            .starts_with(weft_agents::agent::SUMMARY_PREFIX),
        "{}",
        history[0].content
    );
    assert!(
        history[0].content.contains("user: hello 0"),
        "the oldest turn is in the summary: {}",
        history[0].content
    );
    let users: Vec<&str> = history
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(users, ["hello 1", "hello 2"]);
}

/// A model that never answers; counts how many of its calls were dropped unfinished.
struct Stuck(Arc<std::sync::atomic::AtomicUsize>);

struct OnDrop(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait]
impl Model for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }
    async fn complete(&self, _request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        let _guard = OnDrop(self.0.clone());
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(ModelTurn::default())
    }
}

#[tokio::test]
async fn the_run_timeout_bounds_the_whole_chat_and_aborts_the_model_call() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _agent = Agent::new("slow")
        .model(Arc::new(Stuck(dropped.clone())))
        .run_timeout(Duration::from_millis(300))
        .serve(&bus)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = bus
        .invoke(&"slow".parse().unwrap(), json!({"message": "hi"}))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let remote = err.remote().expect("an error reply");
    assert_eq!(remote.code, ErrorCode::AgentTimeout, "{err}");
    assert!(remote.retryable);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the model call was aborted"
    );
}
