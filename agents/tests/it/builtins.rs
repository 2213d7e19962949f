//! The built-in tools `plan` and `delegate` in the tool loop, against a real
//! nats-server and a real `tickets` service.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::json;
use weft_agents::builtin::Builtin;
use weft_agents::memory::{Memory, StepStatus};
use weft_agents::model::{Model, ModelError, ModelRequest, ModelTurn, Role};
use weft_agents::{Agent, ScriptedModel};
use weft_bus::Target;
use weft_bus::testing::TestServer;

use crate::support::tickets_service;

const SCRIPT: &str = r#"{"rules": [
  {"match": "^make a plan$", "turns": [
     {"tool_calls": [{"name": "plan", "arguments": {"steps": [
        {"task": "look up the tickets", "status": "in_progress"},
        {"task": "answer", "status": "pending"}]}}]},
     {"content": "planned: {{result.0./steps}} steps, {{result.0./kept}}"}
  ]},
  {"match": "^bad plan$", "turns": [
     {"tool_calls": [{"name": "plan", "arguments": {"steps": [{"task": "x", "status": "someday"}]}}]},
     {"content": "{{result.0./error/code}}"}
  ]},
  {"match": "^ask support (?P<task>.+)$", "turns": [
     {"tool_calls": [{"name": "delegate", "arguments": {"agent": "support", "task": "{{match.task}}"}}]},
     {"content": "support says: {{result.0./reply}}"}
  ]},
  {"match": "^ask (?P<url>https?://\\S+)$", "turns": [
     {"tool_calls": [{"name": "delegate", "arguments": {"url": "{{match.url}}", "task": "hello"}}]},
     {"content": "{{result.0./error/code}}: {{result.0./error/message}}"}
  ]},
  {"match": "^hand off (?P<task>.+)$", "turns": [
     {"tool_calls": [{"name": "delegate", "arguments": {"task": "{{match.task}}"}}]},
     {"content": "the sub-agent says: {{result.0./reply}}"}
  ]},
  {"match": "(?i)how many tickets are open", "turns": [
     {"tool_calls": [{"name": "tickets_list", "arguments": {"status": "open"}}]},
     {"content": "There are {{result.0./count}} open tickets."}
  ]},
  {"match": ".*", "turns": [{"content": "ok"}]}
]}"#;

/// The scripted model, recording every request.
struct Recording {
    inner: ScriptedModel,
    seen: Mutex<Vec<ModelRequest>>,
}

#[async_trait]
impl Model for Recording {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        self.seen.lock().unwrap().push(request.clone());
        self.inner.complete(request).await
    }
}

#[tokio::test]
async fn plan_is_kept_per_session_and_shown_on_later_turns() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, _) = tickets_service(&bus).await;
    let model = Arc::new(Recording {
        inner: ScriptedModel::from_json(SCRIPT).unwrap(),
        seen: Mutex::new(Vec::new()),
    });
    let _boss = Agent::new("boss")
        .manages(["tickets"])
        .model(model.clone())
        .builtins([Builtin::Plan])
        .serve(&bus)
        .await
        .unwrap();
    let boss: Target = "boss".parse().unwrap();
    let out = bus
        .invoke(&boss, json!({"message": "make a plan", "session_id": "s1"}))
        .await
        .unwrap();
    assert_eq!(out["reply"], "planned: 2 steps, kept for this session");
    let names: Vec<String> = model.seen.lock().unwrap()[0]
        .tools
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert!(
        names.contains(&"plan".into()) && !names.contains(&"delegate".into()),
        "{names:?}"
    );

    let plan = Memory::open(&bus)
        .await
        .unwrap()
        .load_plan("boss", &"s1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(plan.steps[0].status, StepStatus::InProgress);

    // The next turn of the session shows the plan in the system prompt.
    bus.invoke(&boss, json!({"message": "anything", "session_id": "s1"}))
        .await
        .unwrap();
    let last = model.seen.lock().unwrap().last().cloned().unwrap();
    let system: Vec<&str> = last
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    assert!(
        system
            .iter()
            .any(|s| s.contains("1. [in progress] look up the tickets")
                && s.contains("2. [pending] answer")),
        "{system:?}"
    );
    // Another session has no plan.
    bus.invoke(&boss, json!({"message": "anything", "session_id": "s2"}))
        .await
        .unwrap();
    let last = model.seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.messages
            .iter()
            .all(|m| !m.content.contains("Your plan")),
        "{:?}",
        last.messages
    );
    // A plan that is not one goes back to the model as a tool error; the stored one stays.
    let out = bus
        .invoke(&boss, json!({"message": "bad plan", "session_id": "s1"}))
        .await
        .unwrap();
    assert_eq!(out["reply"], "INVALID_REQUEST");
    let kept = Memory::open(&bus)
        .await
        .unwrap()
        .load_plan("boss", &"s1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, plan);
}

#[tokio::test]
async fn delegate_reaches_an_agent_a_sub_agent_or_says_a2a_is_missing() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    let script = || Arc::new(ScriptedModel::from_json(SCRIPT).unwrap());
    let _support = Agent::new("support")
        .manages(["tickets"])
        .model(script())
        .serve(&bus)
        .await
        .unwrap();
    let _boss = Agent::new("boss")
        .manages(["tickets"])
        .model(script())
        .builtins([Builtin::Delegate])
        .serve(&bus)
        .await
        .unwrap();
    let boss: Target = "boss".parse().unwrap();

    // To a registered agent: its chat answers.
    let out = bus
        .invoke(
            &boss,
            json!({"message": "ask support how many tickets are open?"}),
        )
        .await
        .unwrap();
    assert_eq!(
        out["reply"], "support says: There are 2 open tickets.",
        "{out}"
    );
    assert_eq!(out["tool_calls"][0]["result"]["agent"], "support");
    assert_eq!(calls.list(), 1);
    // The delegation carried its step's idempotency key: support's run is the one
    // that key names, so a repeated delegation would find it.
    let boss_run = out["run_id"].as_str().unwrap();
    let key = weft_agents::durable::idempotency_key(boss_run, "tool_1_0");
    let support_run = weft_agents::durable::run_id("support", &key);
    let found = weft_agents::durable::find(&bus, &support_run)
        .await
        .unwrap();
    assert_eq!(
        found.map(|r| r.status),
        Some(weft_bus::runs::RunStatus::Completed)
    );

    // To a sub-agent with the same model and tools.
    let out = bus
        .invoke(
            &boss,
            json!({"message": "hand off how many tickets are open?"}),
        )
        .await
        .unwrap();
    assert_eq!(
        out["reply"], "the sub-agent says: There are 2 open tickets.",
        "{out}"
    );
    assert_eq!(out["tool_calls"][0]["result"]["agent"], "sub-agent");
    assert_eq!(calls.list(), 2);

    // To a URL: the A2A bridge is not running, and the model is told so.
    let out = bus
        .invoke(
            &boss,
            json!({"message": "ask https://agents.example.com/a2a"}),
        )
        .await
        .unwrap();
    let reply = out["reply"].as_str().unwrap();
    assert!(reply.starts_with("NO_HANDLER: cannot delegate to https://agents.example.com/a2a: the A2A bridge service `a2a` is not running"), "{reply}");

    // Not to itself, nor to an agent that does not exist.
    for (agent, expected) in [
        ("boss", "cannot delegate to itself"),
        ("nobody", "no agent named \"nobody\""),
    ] {
        let a = Agent::new("boss").model(Arc::new(ScriptedModel::from_json(&format!(
            r#"{{"rules": [{{"match": ".*", "turns": [
                {{"tool_calls": [{{"name": "delegate", "arguments": {{"agent": "{agent}", "task": "x"}}}}]}},
                {{"content": "{{{{result.0./error/message}}}}"}}]}}]}}"#
        )).unwrap())).builtins([Builtin::Delegate]);
        let reply = a
            .chat(&bus, weft_agents::ChatRequest::new("go"))
            .await
            .unwrap()
            .reply;
        assert!(reply.contains(expected), "{agent}: {reply}");
    }
}
