//! [`ChatExecutor`]: runs an A2A task as a streaming invoke of the agent's `chat` on
//! the bus, and maps the frames onto A2A events (DESIGN §14, §16).
//!
//! | `chat` frame | A2A event |
//! |---|---|
//! | (before the invoke) | `task` in `TASK_STATE_WORKING` |
//! | `delta` `{"type": "text", "text"}` | `artifactUpdate` of the artifact `reply` (the first replaces, later ones `append`) |
//! | `delta` `tool_call` / `tool_result` | `statusUpdate` `TASK_STATE_WORKING` whose message has one `data` part (the frame) and metadata `weft.event` |
//! | `final` `{reply, agent, tool_calls, run_id}` | `artifactUpdate` replacing `reply` with the whole text (`lastChunk: true`, metadata `weft.run_id`), then `statusUpdate` `TASK_STATE_COMPLETED` with the reply as its message |
//! | `final` with `status: "input_required"` (the run waits for a person to approve a tool call) | `statusUpdate` `TASK_STATE_INPUT_REQUIRED` whose message says what waits and how to answer (metadata `weft.run_id`, `weft.pending`) |
//! | `error` `{code, message}` | `statusUpdate` `TASK_STATE_FAILED`, message `CODE: message` |
//! | the stream failed (timeout, nobody serves the agent) | `statusUpdate` `TASK_STATE_FAILED` saying why |
//! | the task was canceled (on any gateway) | the invoke is cancelled on the bus, then `statusUpdate` `TASK_STATE_CANCELED` |
//!
//! The next message of a task in `TASK_STATE_INPUT_REQUIRED` answers the approval: the
//! chat carries the waiting run's `run_id`, and `yes`, `y`, `ok`, `approve` or
//! `approved` approve the call, anything else denies it with the text as the reason
//! (`weft_agents::durable`); the task then goes on to the run's outcome.
//!
//! The A2A `contextId` is the agent's `session_id`, so a context keeps its memory. A
//! `contextId` that is not a session token (`[A-Za-z0-9_-]{1,128}`) maps to
//! `a2a-<UUIDv5 of it>` ([`session_for`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use a2a::{A2AError, Artifact, Message, Part, PartContent, Role, StreamResponse, Task};
use a2a::{TaskArtifactUpdateEvent, TaskState, TaskStatus, TaskStatusUpdateEvent};
use a2a_server::{AgentExecutor, ExecutorContext};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use weft_bus::stream::{Frame, StreamOptions};
use weft_bus::{Bus, Envelope, ErrorCode, ErrorPayload, FrameType, Target};

use super::store::{STATE_HEADER, Tasks, state_name};

/// The envelope `channel` of chats that come in over A2A.
pub const A2A_CHANNEL: &str = "a2a";

/// The artifact name of an agent's reply.
pub const REPLY_ARTIFACT: &str = "reply";

/// Runs one agent's tasks (see the [module docs](self)).
pub struct ChatExecutor {
    bus: Bus,
    agent: String,
    tasks: Tasks,
    options: StreamOptions,
}

impl ChatExecutor {
    /// The executor of `agent`'s tasks: each frame may take up to `idle`, the whole
    /// chat up to `total`.
    pub fn new(bus: Bus, agent: &str, tasks: Tasks, idle: Duration, total: Duration) -> Self {
        ChatExecutor {
            bus,
            agent: agent.to_owned(),
            tasks,
            options: StreamOptions::default().idle_timeout(idle).timeout(total),
        }
    }
}

/// The agent session of A2A context `context_id`: itself when it is a session token,
/// else `a2a-<UUIDv5>` of it (deterministic, so a context keeps one session).
pub fn session_for(context_id: &str) -> String {
    let token = !context_id.is_empty()
        && context_id.len() <= 128
        && context_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if token {
        context_id.to_owned()
    } else {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, context_id.as_bytes());
        format!("a2a-{id}")
    }
}

/// The text an agent reads from `message`: its text parts, and its data parts as JSON,
/// one per line. `None` when it has neither.
pub fn message_text(message: &Message) -> Option<String> {
    let pieces: Vec<String> = message
        .parts
        .iter()
        .filter_map(|p| match &p.content {
            PartContent::Text(t) => Some(t.clone()),
            PartContent::Data(v) => Some(v.to_string()),
            _ => None,
        })
        .collect();
    (!pieces.is_empty()).then(|| pieces.join("\n"))
}

/// What one run emits, with the ids every event carries.
struct Events {
    task_id: String,
    context_id: String,
    artifact_id: String,
    chunks: usize,
    /// The text streamed so far.
    streamed: String,
}

impl Events {
    fn status(&self, state: TaskState, message: Option<Message>) -> StreamResponse {
        StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
            task_id: self.task_id.clone(),
            context_id: self.context_id.clone(),
            status: TaskStatus {
                state,
                message,
                timestamp: Some(chrono::Utc::now()),
            },
            metadata: None,
        })
    }

    fn agent_message(&self, parts: Vec<Part>) -> Message {
        let mut m = Message::new(Role::Agent, parts);
        m.task_id = Some(self.task_id.clone());
        m.context_id = Some(self.context_id.clone());
        m
    }

    /// `TASK_STATE_FAILED` with the message `CODE: message`.
    fn failed(&self, e: &ErrorPayload) -> StreamResponse {
        self.text_status(
            TaskState::Failed,
            &format!("{}: {}", e.code.as_str(), e.message),
        )
    }

    fn text_status(&self, state: TaskState, text: &str) -> StreamResponse {
        self.status(state, Some(self.agent_message(vec![Part::text(text)])))
    }

    fn artifact(
        &mut self,
        text: &str,
        append: bool,
        last: bool,
        metadata: Option<HashMap<String, Value>>,
    ) -> StreamResponse {
        self.chunks += 1;
        StreamResponse::ArtifactUpdate(TaskArtifactUpdateEvent {
            task_id: self.task_id.clone(),
            context_id: self.context_id.clone(),
            artifact: Artifact {
                artifact_id: self.artifact_id.clone(),
                name: Some(REPLY_ARTIFACT.to_owned()),
                description: None,
                parts: vec![Part::text(text)],
                metadata,
                extensions: None,
            },
            append: Some(append),
            last_chunk: Some(last),
            metadata: None,
        })
    }

    /// The events of one frame; `true` in the second place when it ended the run.
    fn of_frame(&mut self, frame: &Frame) -> (Vec<StreamResponse>, bool) {
        match frame.frame_type() {
            FrameType::Delta => {
                let p = frame.payload();
                match p["type"].as_str() {
                    Some("text") => {
                        let text = p["text"].as_str().unwrap_or_default();
                        self.streamed.push_str(text);
                        let append = self.chunks > 0;
                        (vec![self.artifact(text, append, false, None)], false)
                    }
                    Some(kind @ ("tool_call" | "tool_result")) => {
                        let mut m = self.agent_message(vec![Part::data(p.clone())]);
                        m.metadata = Some(HashMap::from([("weft.event".to_owned(), json!(kind))]));
                        (vec![self.status(TaskState::Working, Some(m))], false)
                    }
                    _ => (Vec::new(), false),
                }
            }
            FrameType::Final => {
                let p = frame.payload();
                let reply = p["reply"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| p.to_string());
                let mut meta = HashMap::new();
                if let Some(run) = p.get("run_id") {
                    meta.insert("weft.run_id".to_owned(), run.clone());
                }
                if let Some(calls) = p.get("tool_calls") {
                    meta.insert("weft.tool_calls".to_owned(), calls.clone());
                }
                if p["status"] == "input_required" {
                    if let Some(pending) = p.get("pending") {
                        meta.insert("weft.pending".to_owned(), pending.clone());
                    }
                    let mut ask = self.agent_message(vec![Part::text(reply)]);
                    ask.metadata = Some(meta);
                    return (vec![self.status(TaskState::InputRequired, Some(ask))], true);
                }
                let mut done = self.agent_message(vec![Part::text(reply.clone())]);
                done.metadata = Some(meta.clone());
                let done = self.status(TaskState::Completed, Some(done));
                if self.chunks > 0 && self.streamed == reply {
                    // The artifact already holds the reply: one write less.
                    return (vec![done], true);
                }
                let artifact = self.artifact(&reply, false, true, Some(meta));
                (vec![artifact, done], true)
            }
            FrameType::Error => {
                let e = frame.error().unwrap_or_else(|| {
                    ErrorPayload::new(ErrorCode::AgentUnavailable, "the agent failed")
                });
                (vec![self.failed(&e)], true)
            }
            _ => (Vec::new(), false),
        }
    }
}

impl ChatExecutor {
    /// The run of one task, sending its events to `tx` until it ends or `tx` closes.
    async fn run(
        bus: Bus,
        agent: String,
        tasks: Tasks,
        options: StreamOptions,
        ctx: ExecutorContext,
        tx: tokio::sync::mpsc::Sender<StreamResponse>,
    ) {
        let mut ev = Events {
            task_id: ctx.task_id.clone(),
            context_id: ctx.context_id.clone(),
            artifact_id: a2a::new_artifact_id(),
            chunks: 0,
            streamed: String::new(),
        };
        // The task as the handler stored it (history included), now working: a
        // continued task is read (a stream's context holds the task before this
        // message), a new one is the blocking send's snapshot or the message alone.
        let continued = ctx.message.as_ref().is_some_and(|m| m.task_id.is_some());
        let stored = if continued {
            tasks
                .record(&ctx.task_id)
                .await
                .ok()
                .flatten()
                .map(|(r, _)| r.task)
        } else {
            ctx.stored_task.clone()
        };
        // A task waiting for a person: this message answers the run it waits on.
        let waiting_run = stored
            .as_ref()
            .filter(|t| t.status.state == TaskState::InputRequired)
            .and_then(|t| t.status.message.as_ref())
            .and_then(|m| m.metadata.as_ref())
            .and_then(|m| m.get("weft.run_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut task = stored.unwrap_or_else(|| Task {
            id: ctx.task_id.clone(),
            context_id: ctx.context_id.clone(),
            status: TaskStatus {
                state: TaskState::Submitted,
                message: None,
                timestamp: None,
            },
            artifacts: None,
            history: ctx.message.clone().map(|m| vec![m]),
            metadata: None,
        });
        task.status = TaskStatus {
            state: TaskState::Working,
            message: None,
            timestamp: Some(chrono::Utc::now()),
        };
        if tx.send(StreamResponse::Task(task)).await.is_err() {
            return;
        }
        let text = ctx
            .message
            .as_ref()
            .and_then(message_text)
            .unwrap_or_default();
        let opened = open_chat(&bus, &agent, &ctx, text, waiting_run, options).await;
        let (mut updates, mut frames) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let _ = tx.send(ev.failed(&e)).await;
                return;
            }
        };
        let canceled = state_name(&TaskState::Canceled);
        loop {
            tokio::select! {
                frame = frames.next() => {
                    let events = match frame {
                        Some(Ok(frame)) => ev.of_frame(&frame),
                        Some(Err(e)) => (vec![ev.failed(&ErrorPayload::from(&e))], true),
                        None => (vec![ev.text_status(TaskState::Failed, "CODEC_FAILURE: the agent's stream ended without a reply")], true),
                    };
                    let (events, done) = events;
                    for e in events {
                        if tx.send(e).await.is_err() {
                            frames.cancel().await;
                            return;
                        }
                    }
                    if done {
                        return;
                    }
                }
                Some(m) = updates.next() => {
                    let state = m.headers.as_ref().and_then(|h| h.get(STATE_HEADER));
                    if state.is_some_and(|v| v.as_str() == canceled) {
                        frames.cancel().await;
                        let _ = tx.send(ev.text_status(TaskState::Canceled, "canceled by the client")).await;
                        return;
                    }
                }
                () = tx.closed() => {
                    frames.cancel().await;
                    return;
                }
            }
        }
    }
}

/// Subscribes to the task's updates (a cancel may come from any gateway, as an update
/// on the task's subject), then starts the streaming `chat` of `agent` with `text`
/// (the answer to the approval run `waiting_run` waits for, when there is one).
async fn open_chat(
    bus: &Bus,
    agent: &str,
    ctx: &ExecutorContext,
    text: String,
    waiting_run: Option<String>,
    options: StreamOptions,
) -> Result<(async_nats::Subscriber, weft_bus::stream::FrameStream), ErrorPayload> {
    let updates = bus
        .client()
        .subscribe(bus.subjects().a2a_task(&ctx.task_id))
        .await
        .map_err(|e| ErrorPayload::new(ErrorCode::TransportFailure, e.to_string()))?;
    let target: Target = agent
        .parse()
        .map_err(|e: weft_bus::subject::SubjectError| {
            ErrorPayload::invalid_request(e.to_string())
        })?;
    let session = session_for(&ctx.context_id);
    let mut payload = json!({"message": text, "session_id": session});
    if let Some(run) = waiting_run {
        payload["run_id"] = json!(run);
    }
    let mut request = Envelope::request(target.to_string(), payload);
    request.session_id = Some(session);
    request.channel = Some(A2A_CHANNEL.to_owned());
    request.from = Some(A2A_CHANNEL.to_owned());
    request
        .metadata
        .insert("weft.a2a.task_id".into(), json!(ctx.task_id));
    let frames = bus
        .invoke_stream(&target, request, options)
        .await
        .map_err(|e| ErrorPayload::from(&e))?;
    Ok((updates, frames))
}

impl AgentExecutor for ChatExecutor {
    fn execute(
        &self,
        ctx: ExecutorContext,
    ) -> BoxStream<'static, Result<StreamResponse, A2AError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let relay = Arc::clone(self.tasks.relay());
        let task_id = ctx.task_id.clone();
        tokio::spawn(Self::run(
            self.bus.clone(),
            self.agent.clone(),
            self.tasks.clone(),
            self.options,
            ctx,
            tx,
        ));
        // Stashed as the handler takes each event, right before it stores it.
        Box::pin(tokio_stream_of(rx).map(move |e| {
            relay.stash(&task_id, &e);
            Ok(e)
        }))
    }

    /// Nothing to do here: `begin_cancel` already stored the cancel and published it
    /// on the task's subject, where the gateway running the task sees it and cancels
    /// the chat.
    fn cancel(
        &self,
        _ctx: ExecutorContext,
    ) -> BoxStream<'static, Result<StreamResponse, A2AError>> {
        Box::pin(futures::stream::empty())
    }
}

/// A stream over `rx`.
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_map_to_session_tokens() {
        assert_eq!(session_for("019a-ctx_1"), "019a-ctx_1");
        let mapped = session_for("urn:ctx/1");
        assert!(mapped.starts_with("a2a-"), "{mapped}");
        assert_eq!(mapped, session_for("urn:ctx/1"), "deterministic");
        assert_ne!(mapped, session_for("urn:ctx/2"));
        assert!(session_for(&"x".repeat(129)).starts_with("a2a-"));
    }

    #[test]
    fn messages_read_as_text_and_data() {
        let m = Message::new(
            Role::User,
            vec![
                Part::text("hi"),
                Part::data(json!({"a": 1})),
                Part::url("http://x"),
            ],
        );
        assert_eq!(message_text(&m).unwrap(), "hi\n{\"a\":1}");
        assert!(message_text(&Message::new(Role::User, vec![Part::url("http://x")])).is_none());
    }
}
