//! A run as people and drivers read it (DESIGN §15): the fold of its journal entries
//! ([`RunState`]) with what listings and `show` need on top: each step's input,
//! output, attempts, timings, errors, what it waits for and until when, the run's
//! times, retries and cancel reason. Flow runs (`weft-flows`) and agent runs
//! (`weft-agents`) are both read through [`RunView`].

use serde::Serialize;
use serde_json::Value;

use super::entry::{Entry, EntryEvent, RUN_STEP};
use super::fold::{FoldError, RunState};
use super::machine::{RunStatus, StepStatus};
use super::{RunKind, RunRef};
use crate::envelope::{ErrorCode, ErrorPayload};

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRun {
    /// Step name.
    pub name: String,
    /// Where it is.
    #[serde(flatten)]
    pub status: StepStatus,
    /// Attempts started, over all retries of the run.
    pub attempts: u32,
    /// The attempt number the current round of attempts started after (a retry of the
    /// run starts a new round, with the step's whole `max_attempts`).
    #[serde(skip)]
    pub round_base: u32,
    /// The latest attempt's input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Its output, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The latest failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorPayload>,
    /// When the latest attempt started (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it completed or failed for good (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The journal sequence of its completion.
    #[serde(skip)]
    pub finished_seq: Option<u64>,
    /// How long the completed attempt took, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What it waits for (`sleep`, `event`, `approval`), while waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Until when it waits, or when its next attempt is due (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Who wrote its latest entry (a worker, or who approved it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl StepRun {
    /// A step with no entry yet.
    pub fn pending(name: &str) -> StepRun {
        StepRun {
            name: name.to_owned(),
            status: StepStatus::Pending,
            attempts: 0,
            round_base: 0,
            input: None,
            output: None,
            error: None,
            started_at: None,
            finished_at: None,
            finished_seq: None,
            duration_ms: None,
            waiting_for: None,
            until: None,
            by: None,
        }
    }

    /// Attempts started in the current round (since the last `weft flow retry`).
    pub fn round_attempts(&self) -> u32 {
        self.attempts.saturating_sub(self.round_base)
    }
}

/// A run: the fold of its journal entries, with every step's story.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    /// Run id.
    pub id: String,
    /// Flow or agent.
    pub kind: RunKind,
    /// The flow's or agent's name.
    pub name: String,
    /// Where it is.
    pub status: RunStatus,
    /// What started it: `event`, `manual`, `cron`, `migration`, `chat`, …
    pub cause: String,
    /// Its steps: those named when it started ([`RunView::start`]), then the others
    /// in the order they first appeared.
    pub steps: Vec<StepRun>,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When its last entry was written (RFC 3339).
    pub updated_at: String,
    /// Its output, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorPayload>,
    /// How many times it was retried after failing.
    pub retries: u32,
    /// Why a cancel was asked for, once it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// A step failed for good and the run undid what it did (`run.compensating`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub compensated: bool,
    /// The stream sequence of its last entry: the expected last sequence of the next
    /// append.
    #[serde(skip)]
    pub last_seq: u64,
    /// The state machines' view, folded entry by entry.
    #[serde(skip)]
    state: RunState,
}

impl RunView {
    /// The run of `entries` (stream sequence, entry), in journal order; `Ok(None)` for
    /// none.
    ///
    /// # Errors
    /// [`FoldError`] for the first entry the state machines refuse.
    pub fn from_entries(entries: &[(u64, Entry)]) -> Result<Option<RunView>, FoldError> {
        let Some(((seq, first), rest)) = entries.split_first() else {
            return Ok(None);
        };
        let mut run = RunView::start(*seq, first, Vec::new())?;
        for (seq, e) in rest {
            run.push(*seq, e)?;
        }
        Ok(Some(run))
    }

    /// The run after its first entry (`run.started`), listing `steps` (pending) first.
    ///
    /// # Errors
    /// [`FoldError::OutOfOrder`] for another event.
    pub fn start(seq: u64, entry: &Entry, steps: Vec<StepRun>) -> Result<RunView, FoldError> {
        let state = RunState::start(seq, entry)?;
        Ok(RunView {
            id: state.run.id.clone(),
            kind: state.run.kind,
            name: state.run.name.clone(),
            status: state.status,
            cause: state.cause.clone(),
            steps,
            created_at: entry.at.clone(),
            updated_at: entry.at.clone(),
            output: None,
            error: None,
            retries: 0,
            cancel_reason: None,
            compensated: false,
            last_seq: seq,
            state,
        })
    }

    /// Folds one more entry in (what the worker does after each append). An entry
    /// folded already (the same message id) changes nothing.
    ///
    /// # Errors
    /// [`FoldError`] when the state machines refuse it.
    pub fn push(&mut self, seq: u64, e: &Entry) -> Result<(), FoldError> {
        if !self.state.push(seq, e)? {
            return Ok(());
        }
        self.status = self.state.status;
        self.last_seq = seq;
        self.updated_at.clone_from(&e.at);
        if e.step == RUN_STEP {
            match &e.event {
                EntryEvent::RetryRequested { .. } => {
                    self.retries += 1;
                    // A retried run's earlier failure is history, in its steps.
                    self.error = None;
                    for s in &mut self.steps {
                        s.round_base = s.attempts;
                    }
                }
                EntryEvent::CancelRequested { reason, by } => {
                    self.cancel_reason = Some(if reason.is_empty() {
                        format!("cancelled by {by}")
                    } else {
                        format!("cancelled by {by}: {reason}")
                    });
                }
                EntryEvent::RunCancelled { reason } => {
                    self.error = Some(ErrorPayload::new(
                        ErrorCode::Other("CANCELLED".into()),
                        reason.clone(),
                    ));
                    for s in &mut self.steps {
                        s.status = self.state.step(&s.name);
                    }
                }
                EntryEvent::RunCompleted { output } => self.output = Some(output.clone()),
                EntryEvent::RunFailed { error } => self.error = Some(error.clone()),
                EntryEvent::RunCompensating { error } => {
                    self.error = Some(error.clone());
                    self.compensated = true;
                }
                _ => {}
            }
            return Ok(());
        }
        let i = match self.steps.iter().position(|s| s.name == e.step) {
            Some(i) => i,
            None => {
                self.steps.push(StepRun::pending(&e.step));
                self.steps.len() - 1
            }
        };
        let s = &mut self.steps[i];
        s.status = self.state.step(&s.name);
        s.by.clone_from(&e.by);
        match &e.event {
            EntryEvent::StepStarted { input, .. } => {
                s.attempts += 1;
                s.input = Some(input.clone());
                s.started_at = Some(e.at.clone());
                s.finished_at = None;
                s.until = None;
                s.waiting_for = None;
            }
            EntryEvent::StepCompleted {
                output,
                duration_ms,
            } => {
                s.output = Some(output.clone());
                s.finished_seq = Some(seq);
                s.duration_ms = Some(*duration_ms);
                s.finished_at = Some(e.at.clone());
                s.waiting_for = None;
                s.until = None;
            }
            EntryEvent::StepFailed { error, retry_at } => {
                s.error = Some(error.clone());
                s.waiting_for = None;
                s.until.clone_from(retry_at);
                if retry_at.is_none() {
                    s.finished_at = Some(e.at.clone());
                }
            }
            EntryEvent::StepWaiting { reason, until } => {
                s.waiting_for = Some(reason.clone());
                s.until.clone_from(until);
            }
            EntryEvent::StepSkipped { .. } => {
                s.finished_at = Some(e.at.clone());
                s.waiting_for = None;
                s.until = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepRun> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// `run.started`'s input (a flow's trigger envelope, an agent's message).
    pub fn input(&self) -> &Value {
        &self.state.input
    }

    /// The definition it runs (as it was when the run started).
    pub fn definition(&self) -> &Value {
        &self.state.definition
    }

    /// The state machines' view of it.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Its journal reference.
    pub fn reference(&self) -> RunRef {
        self.state.run.clone()
    }

    /// The listing shape (`weft flow runs --json`, `weft agent runs --json`): `{id,
    /// kind, name, status, cause, created_at, updated_at, retries, error?, steps:
    /// [{name, status, attempts, started_at?, finished_at?, until?, error?}]}`.
    pub fn summary(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "status": self.status,
            "cause": self.cause,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "retries": self.retries,
            "error": self.error,
            "steps": self.steps.iter().map(|s| {
                let mut v = serde_json::json!({
                    "name": s.name,
                    "status": s.status.state(),
                    "attempts": s.attempts,
                });
                for (k, val) in [
                    ("started_at", s.started_at.as_ref()),
                    ("finished_at", s.finished_at.as_ref()),
                    ("until", s.until.as_ref()),
                ] {
                    if let Some(val) = val {
                        v[k] = serde_json::json!(val);
                    }
                }
                if let Some(e) = &s.error {
                    v["error"] = serde_json::json!(e);
                }
                v
            }).collect::<Vec<_>>(),
        })
    }
}
