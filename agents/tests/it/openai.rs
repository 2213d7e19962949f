//! The `openai` provider against a local HTTP server answering in the Chat Completions
//! wire format: a tool-call round trip through a served agent, unparseable arguments,
//! and server failures.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use serde_json::{Value, json};
use weft_agents::model::{Message, Model, ModelErrorKind, ModelRequest, ToolSpec};
use weft_agents::{Agent, OpenAiModel};
use weft_bus::ErrorCode;
use weft_bus::testing::TestServer;

use crate::support::{list_schema, tickets_service};

/// A recorded request: the `Authorization` header and the JSON body.
type Recorded = (Option<String>, Value);

/// A fake Chat Completions server: records each request (authorization header and
/// body) and answers with the next canned response.
#[derive(Clone, Default)]
struct Fake {
    requests: Arc<Mutex<Vec<Recorded>>>,
    responses: Arc<Mutex<VecDeque<(u16, String)>>>,
}

impl Fake {
    /// Starts the server on 127.0.0.1:0 and returns its base URL (`…/v1`).
    async fn start(responses: Vec<(u16, String)>) -> (Fake, String) {
        let fake = Fake {
            responses: Arc::new(Mutex::new(responses.into())),
            ..Fake::default()
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (fake, format!("http://{addr}/v1"))
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(
    State(fake): State<Fake>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = serde_json::from_str(&body).expect("the client sends JSON");
    fake.requests.lock().unwrap().push((auth, body));
    let (status, text) = fake
        .responses
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((500, "no more canned responses".into()));
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        text,
    )
}

/// A Chat Completions response with `message`.
fn completion(message: Value) -> (u16, String) {
    let finish = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    (
        200,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "test-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        })
        .to_string(),
    )
}

fn tool_call(id: &str, name: &str, arguments: &str) -> Value {
    json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
    ]})
}

fn text(content: &str) -> Value {
    json!({"role": "assistant", "content": content})
}

fn model(base_url: &str) -> OpenAiModel {
    OpenAiModel::builder()
        .base_url(base_url)
        .api_key("sk-test")
        .model("test-model")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_tool_call_round_trip_through_a_served_agent() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    let (fake, url) = Fake::start(vec![
        completion(tool_call(
            "call_abc",
            "tickets_list",
            r#"{"status":"open"}"#,
        )),
        completion(text("There are 2 open tickets.")),
    ])
    .await;
    let _agent = Agent::new("support")
        .manages(["tickets"])
        .model(Arc::new(model(&url)))
        .system_prompt("Be brief.")
        .serve(&bus)
        .await
        .unwrap();

    let out = bus
        .invoke(
            &"support".parse().unwrap(),
            json!({"message": "How many tickets are open?"}),
        )
        .await
        .unwrap();
    assert_eq!(out["reply"], "There are 2 open tickets.");
    assert_eq!(out["tool_calls"][0]["name"], "tickets_list");
    assert_eq!(out["tool_calls"][0]["arguments"], json!({"status": "open"}));
    assert_eq!(out["tool_calls"][0]["result"]["count"], 2);
    assert_eq!(calls.list(), 1);

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let (auth, first) = &requests[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(first["model"], "test-model");
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["messages", "model", "tools"], "nothing else is sent");
    assert_eq!(
        first["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How many tickets are open?"}
        ])
    );
    // The tools array carries the endpoint's schema as the function's parameters.
    let tools = first["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 2);
    assert_eq!(
        tools[0],
        json!({"type": "function", "function": {
            "name": "tickets_list",
            "description": "List tickets, optionally by status",
            "parameters": list_schema()
        }})
    );
    assert_eq!(tools[1]["function"]["name"], "tickets_get");

    // The second request: the assistant's tool call, then the tool result.
    let (_, second) = &requests[1];
    assert_eq!(second["tools"], first["tools"]);
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["tool_calls"][0]["id"], "call_abc");
    assert_eq!(messages[2]["tool_calls"][0]["type"], "function");
    let sent_args: Value = serde_json::from_str(
        messages[2]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sent_args, json!({"status": "open"}));
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(messages[3]["tool_call_id"], "call_abc");
    let result: Value = serde_json::from_str(messages[3]["content"].as_str().unwrap()).unwrap();
    assert_eq!(result, out["tool_calls"][0]["result"]);
}

#[tokio::test]
async fn unparseable_arguments_go_back_to_the_model_as_an_error() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    let (fake, url) = Fake::start(vec![
        completion(tool_call("call_1", "tickets_get", "{\"id\": T-1")),
        completion(tool_call("call_2", "tickets_get", r#"{"id": "T-1"}"#)),
        completion(text("T-1 is about a printer on fire.")),
    ])
    .await;
    let _agent = Agent::new("support")
        .manages(["tickets"])
        .model(Arc::new(model(&url)))
        .serve(&bus)
        .await
        .unwrap();

    let out = bus
        .invoke(&"support".parse().unwrap(), json!("what is T-1 about?"))
        .await
        .unwrap();
    assert_eq!(out["reply"], "T-1 is about a printer on fire.");
    assert_eq!(out["tool_calls"][0]["arguments"], "{\"id\": T-1");
    assert_eq!(out["tool_calls"][0]["error"]["code"], "INVALID_REQUEST");
    assert_eq!(out["tool_calls"][1]["result"]["id"], "T-1");
    assert_eq!(calls.get(), 1, "the bad call never reached the service");

    let requests = fake.requests();
    let messages = requests[1].1["messages"].as_array().unwrap();
    // The raw text is sent back as the model wrote it, and the error as the result.
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["arguments"],
        "{\"id\": T-1"
    );
    assert_eq!(messages[2]["role"], "tool");
    let content: Value = serde_json::from_str(messages[2]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["error"]["code"], "INVALID_REQUEST");
    assert!(
        content["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{content}"
    );
}

fn hello() -> ModelRequest {
    ModelRequest {
        messages: vec![Message::user("hello")],
        tools: vec![ToolSpec {
            name: "t".into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        }],
    }
}

#[tokio::test]
async fn server_failures_are_clear_model_errors() {
    // HTTP 500 (retried by the client, then reported).
    let (fake, url) = Fake::start(vec![(500, "upstream exploded".into()); 4]).await;
    let e = model(&url).complete(&hello()).await.unwrap_err();
    assert_eq!(e.kind(), ModelErrorKind::Unavailable, "{e}");
    assert!(e.kind().is_retryable());
    let msg = e.to_string();
    assert!(
        msg.contains("HTTP 500") && msg.contains("upstream exploded"),
        "{msg}"
    );
    assert!(msg.contains(&url) && msg.contains("test-model"), "{msg}");
    assert_eq!(fake.requests().len(), 4, "1 attempt + 3 retries");

    // A garbage body with 200.
    let (_fake, url) = Fake::start(vec![(200, "<html>not json</html>".into())]).await;
    let e = model(&url).complete(&hello()).await.unwrap_err();
    assert_eq!(e.kind(), ModelErrorKind::InvalidResponse, "{e}");
    assert!(e.to_string().contains("<html>not json</html>"), "{e}");

    // JSON, but no choices.
    let (_fake, url) = Fake::start(vec![(
        200,
        json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []})
            .to_string(),
    )])
    .await;
    let e = model(&url).complete(&hello()).await.unwrap_err();
    assert_eq!(e.kind(), ModelErrorKind::InvalidResponse, "{e}");
    assert!(e.to_string().contains("no choices"), "{e}");

    // 401 with an OpenAI error body.
    let (_fake, url) = Fake::start(vec![(
        401,
        json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}).to_string(),
    )])
    .await;
    let e = model(&url).complete(&hello()).await.unwrap_err();
    assert_eq!(e.kind(), ModelErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("Incorrect API key"), "{e}");

    // Nothing listening.
    let e = model("http://127.0.0.1:9/v1")
        .complete(&hello())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ModelErrorKind::Connect, "{e}");
}

#[tokio::test]
async fn a_failing_model_is_a_retryable_error_reply() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_fake, url) = Fake::start(vec![(503, "overloaded".into()); 4]).await;
    let _agent = Agent::new("support")
        .model(Arc::new(model(&url)))
        .serve(&bus)
        .await
        .unwrap();
    let err = bus
        .invoke(&"support".parse().unwrap(), json!("hi"))
        .await
        .unwrap_err();
    let remote = err.remote().expect("an error reply");
    assert_eq!(remote.code, ErrorCode::AgentUnavailable, "{err}");
    assert!(remote.retryable);
    assert!(remote.message.contains("HTTP 503"), "{}", remote.message);

    // The agent's registry metadata names the provider and model.
    let agents = weft_agents::agent::list(&bus).await.unwrap();
    assert_eq!(agents[0].model, "openai");
    assert_eq!(agents[0].model_id.as_deref(), Some("test-model"));
}

/// The token usage, finish reason and answering model of a Chat Completions response
/// reach the turn (and from there the `chat {model}` span's `gen_ai.*` attributes).
#[tokio::test]
async fn usage_finish_reason_and_model_come_back_with_the_turn() {
    let (_fake, url) = Fake::start(vec![completion(text("hi"))]).await;
    let turn = model(&url).complete(&hello()).await.unwrap();
    assert_eq!(turn.content.as_deref(), Some("hi"));
    assert_eq!(
        turn.usage,
        Some(weft_agents::Usage {
            input_tokens: 10,
            output_tokens: 5
        })
    );
    assert_eq!(turn.finish_reason.as_deref(), Some("stop"));
    assert_eq!(turn.response_model.as_deref(), Some("test-model"));
}
