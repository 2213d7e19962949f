//! Served agents' runs in the journal (weft_agents::durable) against a real
//! nats-server: approvals that pause a run without a process waiting, the same
//! request answered from the journal, and a run taken over by another instance when
//! its instance stops renewing the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde_json::json;
use weft_agents::durable;
use weft_agents::model::{Model, ModelError, ModelRequest, ModelTurn};
use weft_agents::{Agent, ChatReply, ReplyStatus, ScriptedModel};
use weft_bus::runs::{Journal, RunKind, RunRef, RunStatus, StepStatus};
use weft_bus::testing::TestServer;
use weft_bus::{Bus, Envelope, Target};

use crate::support::tickets_service;

const SCRIPT: &str = r#"{"rules": [
  {"match": "(?i)first open ticket", "turns": [
     {"tool_calls": [{"name": "tickets_list", "arguments": {"status": "open"}}]},
     {"tool_calls": [{"name": "tickets_get", "arguments": {"id": "{{result.0./tickets/0/id}}"}}]},
     {"content": "First: {{result.1./title}}{{result.1./error/code}}"}
  ]}
]}"#;

/// The scripted model, counting its calls; with `stall_from`, every call from that
/// one on never answers (an instance stuck, then stopped, mid-run).
struct Counting {
    inner: ScriptedModel,
    calls: AtomicUsize,
    stall_from: Option<usize>,
}

#[async_trait]
impl Model for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn complete(&self, request: &ModelRequest) -> Result<ModelTurn, ModelError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.stall_from.is_some_and(|s| n >= s) {
            std::future::pending::<()>().await;
        }
        self.inner.complete(request).await
    }
}

fn counting(stall_from: Option<usize>) -> Arc<Counting> {
    Arc::new(Counting {
        inner: ScriptedModel::from_json(SCRIPT).unwrap(),
        calls: AtomicUsize::new(0),
        stall_from,
    })
}

fn agent(model: Arc<dyn Model>) -> Agent {
    Agent::new("support")
        .manages(["tickets"])
        .model(model)
        .max_steps(4)
        .lease(Duration::from_millis(600))
        .tool_timeout(Duration::from_secs(5))
}

async fn chat(bus: &Bus, event_id: &str) -> ChatReply {
    let mut env = Envelope::request(
        "support",
        json!({"message": "What is the first open ticket?"}),
    );
    env.event_id = event_id.to_owned();
    let target: Target = "support".parse().unwrap();
    let reply = bus
        .request(&target, env, Duration::from_secs(10))
        .await
        .expect("chat");
    serde_json::from_value(reply.payload.unwrap()).unwrap()
}

/// A request event id (a UUID) named `name`.
fn req(name: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

fn run_ref(id: &str) -> RunRef {
    RunRef::new(RunKind::Agent, "support", id).unwrap()
}

#[tokio::test]
async fn a_tool_that_needs_approval_pauses_the_run_until_a_person_approves() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    let model = counting(None);
    let handle = agent(model.clone())
        .approve(["tickets_get"])
        .serve(&bus)
        .await
        .unwrap();
    let mut completed = bus
        .subscribe_events(&"agent.run.completed".parse().unwrap(), None)
        .await
        .unwrap();

    let reply = chat(&bus, &req("req-approve-1")).await;
    assert_eq!(reply.status, ReplyStatus::InputRequired, "{reply:?}");
    let pending = reply.pending.clone().expect("the pending call");
    assert_eq!(pending.tool, "tickets_get");
    assert_eq!(pending.arguments, json!({"id": "T-1"}));
    assert_eq!(pending.step, "approval_2_0");
    assert!(
        reply
            .reply
            .contains(&format!("weft agent approve {}", reply.run_id)),
        "{}",
        reply.reply
    );
    // The list ran; the call waiting for approval did not.
    assert_eq!((calls.list(), calls.get()), (1, 0));
    let journal = Journal::open(&bus).await.unwrap();
    let state = journal
        .state(&run_ref(&reply.run_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.status, RunStatus::Waiting);
    assert_eq!(
        state.step("approval_2_0"),
        StepStatus::Waiting { attempt: 1 }
    );
    // Nobody holds the run while it waits.
    let queue = weft_bus::runs::RunQueue::new(&bus);
    assert_eq!(queue.lease(&run_ref(&reply.run_id)).await.unwrap(), None);
    // The same request again answers from the journal: still waiting.
    let again = chat(&bus, &req("req-approve-1")).await;
    assert_eq!(again.status, ReplyStatus::InputRequired);
    assert_eq!(model.calls.load(Ordering::SeqCst), 2);

    // Approving it is journaled and an instance resumes the run.
    durable::approve(&bus, &reply.run_id, "ada", None)
        .await
        .unwrap();
    let run = durable::wait(&bus, &reply.run_id, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        run.output.as_ref().unwrap()["reply"],
        "First: Printer on fire"
    );
    // Finished steps were not done again: one list, one get, three model turns.
    assert_eq!((calls.list(), calls.get()), (1, 1));
    assert_eq!(model.calls.load(Ordering::SeqCst), 3);
    let approval = run.step("approval_2_0").unwrap();
    assert_eq!(approval.output.as_ref().unwrap()["approved"], true);
    assert_eq!(approval.by.as_deref(), Some("ada"));
    // Approving twice is refused: it waits for nothing now.
    let e = durable::approve(&bus, &reply.run_id, "ada", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("waits for no approval"), "{e}");

    // The run announced its end once.
    let event = tokio::time::timeout(Duration::from_secs(5), completed.next())
        .await
        .expect("agent.run.completed")
        .unwrap()
        .envelope
        .unwrap();
    assert_eq!(
        event.payload.as_ref().unwrap()["run_id"],
        json!(reply.run_id)
    );
    assert_eq!(event.payload.as_ref().unwrap()["status"], "completed");
    // And the same request now gets the stored reply.
    let stored = chat(&bus, &req("req-approve-1")).await;
    assert_eq!(stored.status, ReplyStatus::Completed);
    assert_eq!(stored.reply, "First: Printer on fire");
    assert_eq!(model.calls.load(Ordering::SeqCst), 3);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_denied_call_goes_back_to_the_model_and_a_chat_can_answer_the_approval() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    let handle = agent(counting(None))
        .approve(["tickets_get"])
        .serve(&bus)
        .await
        .unwrap();
    let reply = chat(&bus, &req("req-deny-1")).await;
    assert_eq!(reply.status, ReplyStatus::InputRequired);

    // The next message answers it (what the A2A bridge sends): not a yes.
    let target: Target = "support".parse().unwrap();
    let answer = bus
        .invoke(
            &target,
            json!({"message": "no, not now", "run_id": reply.run_id}),
        )
        .await
        .unwrap();
    let answer: ChatReply = serde_json::from_value(answer).unwrap();
    assert_eq!(answer.status, ReplyStatus::Completed);
    assert_eq!(answer.reply, "First: APPROVAL_DENIED");
    assert_eq!(calls.get(), 0, "a denied call is not made");
    let run = durable::find(&bus, &reply.run_id).await.unwrap().unwrap();
    let denied = run.step("tool_2_0").unwrap();
    assert_eq!(
        denied.output.as_ref().unwrap()["error"]["code"],
        "APPROVAL_DENIED"
    );
    assert!(
        denied.output.as_ref().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no, not now")
    );
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_run_whose_instance_stopped_renewing_its_lease_is_taken_over_without_repeating_tools() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    // Instance A answers turn 1 (a tool call), runs the tool, then never answers turn 2.
    let stuck = counting(Some(2));
    let a = agent(stuck.clone()).serve(&bus).await.unwrap();
    let caller = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut env = Envelope::request(
                "support",
                json!({"message": "What is the first open ticket?"}),
            );
            env.event_id = req("req-takeover-1");
            bus.request(&"support".parse().unwrap(), env, Duration::from_secs(30))
                .await
        })
    };
    let run_id = durable::run_id("support", &req("req-takeover-1"));
    // Wait for A to be stuck in turn 2, after the tool ran.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stuck.calls.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never reached turn 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.list(), 1);
    // A stops: its in-flight chat is cancelled and its lease no longer renewed.
    a.stop().await.unwrap();
    caller.abort();

    // Instance B of the same agent takes the run over once the lease runs out.
    let fresh = counting(None);
    let b = agent(fresh.clone()).serve(&bus).await.unwrap();
    let run = durable::wait(&bus, &run_id, Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        run.output.as_ref().unwrap()["reply"],
        "First: Printer on fire"
    );
    // The tool A finished was not called again; turn 1 came from the journal.
    assert_eq!((calls.list(), calls.get()), (1, 1));
    assert_eq!(
        fresh.calls.load(Ordering::SeqCst),
        2,
        "B asked the model for turns 2 and 3 only"
    );
    let turn2 = run.step("turn_2").unwrap();
    assert_eq!(turn2.attempts, 2, "turn 2 was interrupted once");
    // Both tool requests carried their step's idempotency key.
    assert_eq!(
        calls.list_requests.lock().unwrap()[0].event_id,
        durable::idempotency_key(&run_id, "tool_1_0")
    );
    // A caller sending the request again gets the stored reply.
    let again = chat(&bus, &req("req-takeover-1")).await;
    assert_eq!(again.reply, "First: Printer on fire");
    assert_eq!(again.run_id, run_id);
    assert_eq!(fresh.calls.load(Ordering::SeqCst), 2);
    b.stop().await.unwrap();
}

#[tokio::test]
async fn approve_and_find_say_what_is_wrong() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let e = durable::approve(&bus, "no-such-run", "ada", None)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("there is no agent run no-such-run"),
        "{e}"
    );
    let e = durable::find(&bus, "bad.id").await.unwrap_err();
    assert!(e.to_string().contains("run id"), "{e}");
    assert!(durable::find(&bus, "nope").await.unwrap().is_none());
}

#[tokio::test]
async fn memory_appends_each_run_once_and_reads_an_earlier_bare_list() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let memory = weft_agents::Memory::open(&bus).await.unwrap();
    let session: weft_agents::SessionId = "s-1".parse().unwrap();
    // An earlier release stored a bare list of messages.
    let kv = bus.kv(&bus.names().memory_bucket).await.unwrap();
    let old = vec![
        weft_agents::Message::user("hi"),
        weft_agents::Message::assistant("hello", Vec::new()),
    ];
    kv.put("support.s-1", serde_json::to_vec(&old).unwrap().into())
        .await
        .unwrap();
    assert_eq!(memory.load("support", &session).await.unwrap(), old);
    assert_eq!(
        memory.sessions("support").await.unwrap(),
        [("s-1".to_owned(), 2)]
    );
    // The same exchange twice, by two runs: both land; one run twice: once.
    let exchange = old.clone();
    assert!(
        memory
            .append("support", &session, "r1", &exchange)
            .await
            .unwrap()
    );
    assert!(
        !memory
            .append("support", &session, "r1", &exchange)
            .await
            .unwrap()
    );
    assert!(
        memory
            .append("support", &session, "r2", &exchange)
            .await
            .unwrap()
    );
    assert_eq!(memory.load("support", &session).await.unwrap().len(), 6);
    assert!(memory.holds_run("support", &session, "r2").await.unwrap());
    assert!(!memory.holds_run("support", &session, "r3").await.unwrap());
}

#[tokio::test]
async fn a_streaming_caller_that_goes_away_cancels_the_run_in_the_journal() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let (_tickets, calls) = tickets_service(&bus).await;
    // Turn 1 calls a tool; turn 2 never answers, so the run is in flight.
    let stuck = counting(Some(2));
    let handle = agent(stuck.clone()).serve(&bus).await.unwrap();
    let mut env = Envelope::request(
        "support",
        json!({"message": "What is the first open ticket?"}),
    );
    env.event_id = req("req-cancel-1");
    let run_id = durable::run_id("support", &env.event_id);
    let frames = bus
        .invoke_stream(
            &"support".parse().unwrap(),
            env,
            weft_bus::stream::StreamOptions::default(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stuck.calls.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached turn 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(frames.cancel().await, "the agent acknowledged the cancel");
    let run = durable::wait(&bus, &run_id, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Cancelled, "{run:?}");
    // Its lease was let go with it: nobody takes it over once the lease has passed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stuck.calls.load(Ordering::SeqCst), 2);
    assert_eq!(calls.list(), 1);
    let queue = weft_bus::runs::RunQueue::new(&bus);
    assert_eq!(queue.lease(&run_ref(&run_id)).await.unwrap(), None);
    handle.stop().await.unwrap();
}
