//! Durable agent runs (DESIGN §15, §16): a served agent journals every chat as a run
//! of kind `agent` on `P.runs.agent.<agent>.<run_id>`, in the journal flows use
//! ([`weft_bus::runs`]), so a run survives its process.
//!
//! # The steps of a run
//!
//! | step | input | output |
//! |---|---|---|
//! | `turn_<n>` | — | the model's turn `n` ([`ModelTurn`](crate::ModelTurn): text, tool calls, usage) |
//! | `tool_<n>_<i>` | `{name, arguments, id}` | the call's [`ToolCallRecord`](crate::ToolCallRecord) |
//! | `approval_<n>_<i>` | `{tool, arguments, prompt}` | `{approved, by, reason}` |
//! | `memory` | — | `{saved}`: the exchange was appended to the session's memory |
//!
//! `run.started` carries the message, the session, the history the run started from
//! and the request envelope; `run.completed` the reply ([`ChatReply`]);
//! `run.failed` the error.
//!
//! # What survives what
//!
//! - **A journaled step never runs again.** A resumed run replays completed turns
//!   and tool results from the journal and goes on from the first step without a
//!   completion. A tool call interrupted by a crash runs again with the same
//!   idempotency key ([`idempotency_key`]: a UUIDv5 of run and step), which a tool
//!   over the bus receives as its request's `event_id`.
//! - **One run per request.** The run id is a UUIDv5 of the agent and the request's
//!   `event_id` ([`run_id`]): a caller (or a flow step) that sends the same request
//!   again gets the run's stored reply, waits for the run still going, or, for a run
//!   that failed with a retryable error, retries it from its failed step.
//! - **Leases.** The instance driving a run holds its lease ([`RunQueue::hold`]): a
//!   message schedule on the run queue that wakes the agent's workers when the lease
//!   runs out ([`DEFAULT_LEASE`], 10 s), moved on every third of it while the instance
//!   lives. When the instance dies the wake arrives, and an instance of the agent takes
//!   the run over (consumer `agent_<agent>` on `P.runq.agent.<agent>.wake`).
//! - **Approvals.** A tool whose [approval policy](crate::guard) asks a person pauses
//!   the run: step `approval_<n>_<i>` waits, the lease is let go, and the caller gets
//!   a reply with `status: "input_required"` and the pending call. [`approve`]
//!   (`weft agent approve RUN [--deny REASON]`, `POST /v1/runs/{id}/approve`) journals
//!   the decision and wakes the agent, which resumes the run; a chat with `{run_id,
//!   message}` does the same and waits for the outcome (the A2A bridge's next message
//!   in the task's context).
//! - **Memory** is appended once: step `memory` appends the exchange to what the
//!   session holds then, and skips it when the session already ends with it (an
//!   attempt that stored it and died before journaling that).
//! - **Announcement.** Each run that ends publishes `agent.run.completed`
//!   ([`RUN_COMPLETED`]: `{agent, run_id, status, reply?, error?}`) with an event id
//!   derived from the run, so it is stored once.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weft_bus::envelope::{ErrorCode, ErrorPayload};
use weft_bus::runs::{
    AppendError, Entry, EntryEvent, Journal, RunKind, RunQueue, RunRef, RunState, RunStatus,
    RunView, StepStatus,
};
use weft_bus::{Bus, Envelope};

use crate::agent::{AgentError, ChatReply};
use crate::model::Message;

/// Default lease of a run: 10 s ([module docs](self)).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The event type each ended run publishes: `{agent, run_id, status, reply?, error?}`.
pub const RUN_COMPLETED: &str = "agent.run.completed";

/// The step name of memory's append.
pub const MEMORY_STEP: &str = "memory";

const RUN_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7a11_3c5e_2b9d_4e61_8f07_c4d2_9e1a_5b36);

/// The run id of `agent`'s chat request `event_id`: a UUIDv5, so the same request sent
/// again finds its run.
pub fn run_id(agent: &str, event_id: &str) -> String {
    uuid::Uuid::new_v5(&RUN_NAMESPACE, format!("{agent}:{event_id}").as_bytes()).to_string()
}

/// The idempotency key of `step` of run `run_id`: a UUIDv5, the same for every attempt.
pub fn idempotency_key(run_id: &str, step: &str) -> String {
    uuid::Uuid::new_v5(&RUN_NAMESPACE, format!("{run_id}:{step}").as_bytes()).to_string()
}

/// Step `turn_<n>`: the model's turn `n` (from 1).
pub fn turn_step(n: usize) -> String {
    format!("turn_{n}")
}

/// Step `tool_<n>_<i>`: tool call `i` (from 0) of turn `n`.
pub fn tool_step(n: usize, i: usize) -> String {
    format!("tool_{n}_{i}")
}

/// Step `approval_<n>_<i>`: a person's decision on tool call `i` of turn `n`.
pub fn approval_step(n: usize, i: usize) -> String {
    format!("approval_{n}_{i}")
}

/// `run.started`'s input of an agent run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInput {
    /// What the user said.
    pub message: String,
    /// The session, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The session's history the run started from (oldest first).
    #[serde(default)]
    pub history: Vec<Message>,
    /// The request envelope, if any (tool requests inherit its context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Envelope>,
}

/// A person's decision on a paused tool call: step `approval_<n>_<i>`'s output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the call may run.
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// Why (a denial's reason goes back to the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A tool call waiting for a person: the `pending` field of an `input_required` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The waiting step (`approval_<n>_<i>`).
    pub step: String,
    /// The tool.
    pub tool: String,
    /// Its arguments.
    pub arguments: Value,
    /// What the policy says about it.
    pub prompt: String,
}

/// What a served agent needs to journal its runs: the journal, the run queue, its
/// instance name and its lease. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    pub(crate) journal: Journal,
    pub(crate) queue: RunQueue,
    pub(crate) by: String,
    pub(crate) lease: Duration,
}

impl Runtime {
    /// Opens the journal of `bus`'s mesh.
    pub(crate) async fn open(bus: &Bus, agent: &str, lease: Duration) -> weft_bus::Result<Runtime> {
        Ok(Runtime {
            journal: Journal::open(bus).await?,
            queue: RunQueue::new(bus),
            by: format!(
                "agent-{agent}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            lease,
        })
    }

    /// The run `id` of `agent`, as its journal says; `None` before it started.
    pub(crate) async fn state(&self, run: &RunRef) -> Result<Option<RunState>, AgentError> {
        patiently("read a run", any_bus_error, || self.journal.state(run))
            .await
            .map_err(journal_error)
    }

    /// Takes `run`'s lease and keeps it until the returned guard is released or dropped.
    pub(crate) async fn hold(&self, run: &RunRef) -> Result<Lease, AgentError> {
        let until = at_after(self.lease);
        patiently("take a lease", any_bus_error, || {
            self.queue.hold(run, &until)
        })
        .await
        .map_err(journal_error)?;
        let (queue, r, lease) = (self.queue.clone(), run.clone(), self.lease);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Err(e) = queue.hold(&r, &at_after(lease)).await {
                    tracing::warn!(run = %r, error = %e, "cannot renew the run's lease; another instance may take it over");
                }
            }
        });
        Ok(Lease {
            task,
            queue: self.queue.clone(),
            run: run.clone(),
        })
    }
}

/// How long a driver keeps trying a journal or run-queue operation that fails on the
/// bus (a stream leader being elected after its node died takes seconds): 20 s.
pub const JOURNAL_PATIENCE: Duration = Duration::from_secs(20);

/// `op` again after a bus failure, with back-off from 100 ms to 2 s, until it works or
/// [`JOURNAL_PATIENCE`] passed. `transient` says which errors are worth another try.
async fn patiently<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + JOURNAL_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if transient(&e) && tokio::time::Instant::now() + delay < deadline => {
                tracing::debug!(what, error = %e, "the journal is unavailable; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

fn any_bus_error<E>(_: &E) -> bool {
    true
}

fn bus_append_error(e: &AppendError) -> bool {
    matches!(e, AppendError::Bus(_))
}

/// RFC 3339 `d` from now.
fn at_after(d: Duration) -> String {
    weft_bus::envelope::rfc3339(time::OffsetDateTime::now_utc() + d)
}

/// Whether a lease ending at `until` (RFC 3339) still holds.
pub(crate) fn holds(until: Option<&str>) -> bool {
    until.is_some_and(|u| u > weft_bus::envelope::now_rfc3339().as_str())
}

/// A held lease ([`Runtime::hold`]); dropping it stops renewing it (a dead holder's
/// lease runs out and the run is taken over), [`Lease::release`] lets go at once.
pub(crate) struct Lease {
    task: tokio::task::JoinHandle<()>,
    queue: RunQueue,
    run: RunRef,
}

impl Lease {
    /// Lets go: the run ended or waits for a person.
    pub(crate) async fn release(self) {
        self.task.abort();
        if let Err(e) = self.queue.release(&self.run).await {
            tracing::warn!(run = %self.run, error = %e, "cannot let go of the run's lease; it runs out by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn journal_error(e: impl std::fmt::Display) -> AgentError {
    AgentError::Journal(e.to_string())
}

/// One run's journal as its driver writes it: appends with the run's last sequence
/// expected, so two drivers of one run cannot both append (the loser gets
/// [`AgentError::Moved`]).
pub(crate) struct RunLog {
    journal: Journal,
    pub(crate) state: RunState,
    by: String,
}

impl RunLog {
    /// Starts run `run` with `input`: `Ok(Err(state))` when it exists already.
    pub(crate) async fn begin(
        rt: &Runtime,
        run: &RunRef,
        input: &RunInput,
        definition: Value,
    ) -> Result<Result<RunLog, RunState>, AgentError> {
        let mut entry = Entry::of_run(
            run,
            1,
            EntryEvent::RunStarted {
                cause: "chat".into(),
                input: serde_json::to_value(input).map_err(journal_error)?,
                definition,
            },
        );
        entry.by = Some(rt.by.clone());
        let appended = patiently("start a run", bus_append_error, || {
            rt.journal.append(&entry, Some(0))
        })
        .await;
        match appended {
            Ok(a) if !a.duplicate => {
                let state = RunState::start(a.seq, &entry).map_err(journal_error)?;
                Ok(Ok(RunLog {
                    journal: rt.journal.clone(),
                    state,
                    by: rt.by.clone(),
                }))
            }
            Ok(_) | Err(AppendError::Conflict { .. }) => match rt.state(run).await? {
                Some(state) => Ok(Err(state)),
                None => Err(AgentError::Journal(format!(
                    "run {run} was started and has no entries"
                ))),
            },
            Err(AppendError::Bus(e)) => Err(journal_error(e)),
        }
    }

    /// Drives the existing run `state` on.
    pub(crate) fn resume(rt: &Runtime, state: RunState) -> RunLog {
        RunLog {
            journal: rt.journal.clone(),
            state,
            by: rt.by.clone(),
        }
    }

    /// The run's id.
    pub(crate) fn id(&self) -> &str {
        &self.state.run.id
    }

    /// The run's input.
    pub(crate) fn input(&self) -> Result<RunInput, AgentError> {
        serde_json::from_value((*self.state.input).clone())
            .map_err(|e| journal_error(format!("run {} has no agent input: {e}", self.id())))
    }

    /// `step`'s output, when its completion is journaled.
    pub(crate) fn output<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, AgentError> {
        if self.state.step(step) != StepStatus::Completed {
            return Ok(None);
        }
        let Some((_, output)) = self.state.outputs.iter().find(|(s, _)| s == step) else {
            return Ok(None);
        };
        serde_json::from_value(output.clone())
            .map(Some)
            .map_err(|e| journal_error(format!("step {step} of run {}: {e}", self.id())))
    }

    /// Whether `step` waits (for a person).
    pub(crate) fn waiting(&self, step: &str) -> bool {
        matches!(self.state.step(step), StepStatus::Waiting { .. })
    }

    /// Journals the start of `step`'s next attempt with `input`.
    pub(crate) async fn start(&mut self, step: &str, input: Value) -> Result<(), AgentError> {
        let attempt = self.state.step(step).attempt() + 1;
        let key = idempotency_key(self.id(), step);
        self.append(
            step,
            attempt,
            EntryEvent::StepStarted {
                input,
                idempotency_key: key,
            },
        )
        .await
    }

    /// `step`'s current attempt (1 before it started).
    fn attempt(&self, step: &str) -> u32 {
        self.state.step(step).attempt().max(1)
    }

    /// Journals `step`'s completion with `output`, `duration` after it started.
    pub(crate) async fn complete(
        &mut self,
        step: &str,
        output: &impl Serialize,
        duration: Duration,
    ) -> Result<(), AgentError> {
        let output = serde_json::to_value(output).map_err(journal_error)?;
        let attempt = self.attempt(step);
        self.append(
            step,
            attempt,
            EntryEvent::StepCompleted {
                output,
                duration_ms: duration.as_millis() as u64,
            },
        )
        .await
    }

    /// Journals that `step` failed for good with `error`.
    pub(crate) async fn fail(
        &mut self,
        step: &str,
        error: &ErrorPayload,
    ) -> Result<(), AgentError> {
        let attempt = self.attempt(step);
        self.append(
            step,
            attempt,
            EntryEvent::StepFailed {
                error: error.clone(),
                retry_at: None,
            },
        )
        .await
    }

    /// Journals that `step` waits for `reason` (the run then waits too).
    pub(crate) async fn wait(&mut self, step: &str, reason: &str) -> Result<(), AgentError> {
        let attempt = self.attempt(step);
        self.append(
            step,
            attempt,
            EntryEvent::StepWaiting {
                reason: reason.into(),
                until: None,
            },
        )
        .await
    }

    /// Journals a run-level `event` (its end, a retry).
    pub(crate) async fn run_event(
        &mut self,
        attempt: u32,
        event: EntryEvent,
    ) -> Result<(), AgentError> {
        self.append(weft_bus::runs::entry::RUN_STEP, attempt, event)
            .await
    }

    async fn append(
        &mut self,
        step: &str,
        attempt: u32,
        event: EntryEvent,
    ) -> Result<(), AgentError> {
        let mut entry = Entry::new(&self.state.run, step, attempt, event);
        entry.by = Some(self.by.clone());
        let expected = self.state.last_seq;
        let appended = patiently("append to a run", bus_append_error, || {
            self.journal.append(&entry, Some(expected))
        })
        .await;
        match appended {
            Ok(a) => {
                self.state.push(a.seq, &entry).map_err(journal_error)?;
                Ok(())
            }
            Err(AppendError::Conflict { .. }) => Err(AgentError::Moved {
                run: self.state.run.id.clone(),
            }),
            Err(AppendError::Bus(e)) => Err(journal_error(e)),
        }
    }
}

/// What a caller of a run that exists gets ([`outcome`]).
pub(crate) enum Outcome {
    /// It completed: its reply.
    Completed(ChatReply),
    /// It failed: its error.
    Failed(ErrorPayload),
    /// It was cancelled.
    Cancelled(String),
    /// It waits for a person.
    InputRequired(ChatReply),
    /// It is running (elsewhere).
    Running,
}

/// Where run `state` of `agent` is, as a caller sees it.
pub(crate) async fn outcome(
    rt: &Runtime,
    agent: &str,
    state: &RunState,
) -> Result<Outcome, AgentError> {
    Ok(match state.status {
        RunStatus::Completed => match state
            .output
            .clone()
            .map(serde_json::from_value::<ChatReply>)
        {
            Some(Ok(reply)) => Outcome::Completed(reply),
            _ => Outcome::Failed(ErrorPayload::new(
                ErrorCode::CodecFailure,
                format!("run {} completed without a reply", state.run.id),
            )),
        },
        RunStatus::Failed => {
            Outcome::Failed(state.error.clone().unwrap_or_else(|| {
                ErrorPayload::new(ErrorCode::AgentUnavailable, "the run failed")
            }))
        }
        RunStatus::Cancelled | RunStatus::Cancelling => {
            Outcome::Cancelled(format!("run {} was cancelled", state.run.id))
        }
        RunStatus::Waiting => match pending_of(&rt.journal, state).await? {
            Some(p) => Outcome::InputRequired(input_required(agent, &state.run.id, p)),
            None => Outcome::Running,
        },
        RunStatus::Running | RunStatus::Compensating => Outcome::Running,
    })
}

/// The tool call run `state` waits on, from the waiting approval step's input.
async fn pending_of(journal: &Journal, state: &RunState) -> Result<Option<Pending>, AgentError> {
    let Some((step, _)) = state
        .steps
        .iter()
        .find(|(s, st)| s.starts_with("approval_") && matches!(st, StepStatus::Waiting { .. }))
    else {
        return Ok(None);
    };
    let entries = journal.read(&state.run).await.map_err(journal_error)?;
    let input = entries.iter().rev().find_map(|(_, e)| match &e.event {
        EntryEvent::StepStarted { input, .. } if &e.step == step => Some(input.clone()),
        _ => None,
    });
    Ok(input.map(|input| Pending {
        step: step.clone(),
        tool: input["tool"].as_str().unwrap_or_default().to_owned(),
        arguments: input["arguments"].clone(),
        prompt: input["prompt"].as_str().unwrap_or_default().to_owned(),
    }))
}

/// The reply of a run that waits for a person on `pending`.
pub(crate) fn input_required(agent: &str, run_id: &str, pending: Pending) -> ChatReply {
    ChatReply {
        reply: format!(
            "{}. Waiting for a person: approve with `weft agent approve {run_id}`, or deny with `weft agent approve {run_id} --deny REASON`.",
            pending.prompt
        ),
        agent: agent.to_owned(),
        tool_calls: Vec::new(),
        run_id: run_id.to_owned(),
        status: crate::agent::ReplyStatus::InputRequired,
        pending: Some(pending),
    }
}

/// The announcement of an ended run ([`RUN_COMPLETED`]).
pub(crate) async fn announce(
    bus: &Bus,
    agent: &str,
    run_id: &str,
    result: &Result<ChatReply, ErrorPayload>,
) {
    let payload = match result {
        Ok(reply) => {
            json!({"agent": agent, "run_id": run_id, "status": "completed", "reply": reply.reply})
        }
        Err(e) => json!({"agent": agent, "run_id": run_id, "status": "failed", "error": e}),
    };
    let mut env = Envelope::event(&RUN_COMPLETED.parse().expect("a valid event type"), payload);
    env.event_id = idempotency_key(run_id, "_announce");
    env.from = Some(format!("agent.{agent}"));
    if let Err(e) = bus.publish_envelope(&env).await {
        tracing::warn!(agent, run_id, error = %e, "cannot publish agent.run.completed");
    }
}

/// Journals a person's decision on the tool call run `run_id` waits on, and wakes an
/// instance of its agent to resume it. `deny` is the reason of a denial. Returns the
/// run as it is then.
///
/// # Errors
/// [`AgentError::InvalidInput`] when there is no such run, or it waits for no
/// approval; [`AgentError::Journal`] when the journal or the run queue cannot be
/// reached.
pub async fn approve(
    bus: &Bus,
    run_id: &str,
    by: &str,
    deny: Option<&str>,
) -> Result<RunState, AgentError> {
    let journal = Journal::open(bus).await.map_err(journal_error)?;
    let runs = journal
        .runs(RunKind::Agent, None, Some(run_id))
        .await
        .map_err(journal_error)?;
    let Some(run) = runs.into_iter().next() else {
        return Err(AgentError::InvalidInput(format!(
            "there is no agent run {run_id}"
        )));
    };
    let rt = Runtime {
        journal,
        queue: RunQueue::new(bus),
        by: by.to_owned(),
        lease: DEFAULT_LEASE,
    };
    decide(&rt, &run, by, deny).await
}

/// [`approve`] of `run` through `rt`.
pub(crate) async fn decide(
    rt: &Runtime,
    run: &RunRef,
    by: &str,
    deny: Option<&str>,
) -> Result<RunState, AgentError> {
    loop {
        let Some(state) = rt.state(run).await? else {
            return Err(AgentError::InvalidInput(format!(
                "there is no agent run {}",
                run.id
            )));
        };
        let Some(pending) = pending_of(&rt.journal, &state).await? else {
            return Err(AgentError::InvalidInput(format!(
                "agent run {} waits for no approval (it is {})",
                run.id,
                state.status.as_str()
            )));
        };
        let mut log = RunLog::resume(rt, state);
        log.by = by.to_owned();
        let decision = Decision {
            approved: deny.is_none(),
            by: by.to_owned(),
            reason: deny.map(str::to_owned),
        };
        match log.complete(&pending.step, &decision, Duration::ZERO).await {
            Ok(()) => {}
            // Someone else wrote meanwhile: read again.
            Err(AgentError::Moved { .. }) => continue,
            Err(e) => return Err(e),
        }
        let cause = format!("s{}", log.state.last_seq);
        rt.queue.wake(run, &cause).await.map_err(journal_error)?;
        return Ok(log.state);
    }
}

/// Waits until run `run` ends or waits for a person (or `timeout` passes); returns its
/// state then.
pub(crate) async fn follow(
    rt: &Runtime,
    run: &RunRef,
    timeout: Duration,
) -> Result<Option<RunState>, AgentError> {
    settled(timeout, || rt.state(run), |s: &RunState| s.status).await
}

/// Reads a run with `read` every 100 ms until it is neither running nor compensating
/// (it ended, or waits for a person) or `timeout` passed; returns the last read.
async fn settled<T, F, Fut>(
    timeout: Duration,
    mut read: F,
    status: impl Fn(&T) -> RunStatus,
) -> Result<Option<T>, AgentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, AgentError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let run = read().await?;
        let done = run
            .as_ref()
            .is_some_and(|r| !matches!(status(r), RunStatus::Running | RunStatus::Compensating));
        if done || tokio::time::Instant::now() >= deadline {
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a person's answer approves: `yes`, `y`, `ok`, `approve`, `approved`
/// (any case, a trailing `.` or `!` allowed).
pub fn is_yes(answer: &str) -> bool {
    let a = answer
        .trim()
        .trim_end_matches(['.', '!'])
        .to_ascii_lowercase();
    matches!(a.as_str(), "yes" | "y" | "ok" | "approve" | "approved")
}

/// Journals that run `run` was cancelled (`reason`) and lets go of its lease, when it
/// is running or waiting; a failure is logged.
pub(crate) async fn cancel(rt: &Runtime, run: &RunRef, reason: &str) {
    let cancelled = async {
        let Some(state) = rt.state(run).await? else {
            return Ok(());
        };
        if !matches!(state.status, RunStatus::Running | RunStatus::Waiting) {
            return Ok(());
        }
        let attempt = state.retries + 1;
        let mut log = RunLog::resume(rt, state);
        log.run_event(
            attempt,
            EntryEvent::CancelRequested {
                by: rt.by.clone(),
                reason: reason.into(),
            },
        )
        .await?;
        log.run_event(
            attempt,
            EntryEvent::RunCancelled {
                reason: reason.into(),
            },
        )
        .await?;
        rt.queue.release(run).await.map_err(journal_error)
    };
    if let Err(e) = cancelled.await {
        tracing::warn!(run = %run, error = %e, "cannot journal the run's cancel; its lease runs out and another instance finishes it");
    }
}

/// The agent runs of `bus`'s mesh, oldest first: of `agent` only when given, in
/// `status` only when given, started at or after `since` (RFC 3339) when given.
///
/// # Errors
/// [`AgentError::Journal`] when the journal cannot be read or a run does not fold.
pub async fn runs(
    bus: &Bus,
    agent: Option<&str>,
    status: Option<RunStatus>,
    since: Option<&str>,
) -> Result<Vec<RunView>, AgentError> {
    let journal = Journal::open(bus).await.map_err(journal_error)?;
    let refs = journal
        .runs(RunKind::Agent, agent, None)
        .await
        .map_err(journal_error)?;
    let mut out = Vec::new();
    for (r, entries) in journal.read_many(refs).await.map_err(journal_error)? {
        let Some(run) = RunView::from_entries(&entries)
            .map_err(|e| journal_error(format!("run {r} does not fold: {e}")))?
        else {
            continue;
        };
        if status.is_some_and(|s| s != run.status)
            || since.is_some_and(|t| run.created_at.as_str() < t)
        {
            continue;
        }
        out.push(run);
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// The agent run `run_id`, whichever agent's it is; `None` when there is none.
///
/// # Errors
/// As [`runs`].
pub async fn find(bus: &Bus, run_id: &str) -> Result<Option<RunView>, AgentError> {
    let journal = Journal::open(bus).await.map_err(journal_error)?;
    weft_bus::subject::validate_token("run id", run_id)
        .map_err(|e| AgentError::InvalidInput(e.to_string()))?;
    let refs = journal
        .runs(RunKind::Agent, None, Some(run_id))
        .await
        .map_err(journal_error)?;
    let Some(r) = refs.into_iter().next() else {
        return Ok(None);
    };
    let entries = journal.read(&r).await.map_err(journal_error)?;
    RunView::from_entries(&entries)
        .map_err(|e| journal_error(format!("run {r} does not fold: {e}")))
}

/// Waits until agent run `run_id` ends or waits for a person (or `timeout` passes),
/// polling every 100 ms; returns it as it is then.
///
/// # Errors
/// As [`find`].
pub async fn wait(
    bus: &Bus,
    run_id: &str,
    timeout: Duration,
) -> Result<Option<RunView>, AgentError> {
    settled(timeout, || find(bus, run_id), |r: &RunView| r.status).await
}
