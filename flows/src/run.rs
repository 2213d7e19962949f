//! A flow run as its journal tells it (DESIGN §15).
//!
//! A run's truth is its entries on `P.runs.flow.<flow>.<run_id>`
//! ([`weft_bus::runs::journal`]); [`Run::from_entries`] folds them through the run and
//! step state machines of [`weft_bus::runs::machine`] (an entry they refuse is an
//! error, never skipped) and gathers what listings and the worker need: each step's
//! input, output, attempts, timings, errors, what it waits for and until when.
//!
//! The definition the run started with is part of its first entry, so a run keeps its
//! steps when a new version of the flow is deployed.

use serde::{Deserialize as _, Serialize};
use serde_json::{Value, json};
use weft_bus::Envelope;
use weft_bus::envelope::ErrorPayload;
use weft_bus::runs::fold::FoldError;
use weft_bus::runs::{Entry, EntryEvent, RunRef, RunState, RunStatus, StepStatus};

const RUN_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5eb1_7a2c_0f1e_4d3b_9a8c_77e5_1d2f_0b3a);

/// The run id for `flow` started by the envelope `event_id` (a trigger, a manual start,
/// a cron tick): a UUIDv5, so a trigger delivered or replayed again finds its run.
pub fn run_id(flow: &str, event_id: &str) -> String {
    uuid::Uuid::new_v5(&RUN_NAMESPACE, format!("{flow}:{event_id}").as_bytes()).to_string()
}

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
    /// The attempt number the current round of attempts started after (a `weft flow
    /// retry` starts a new round, with the step's whole `max_attempts`).
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
    fn pending(name: &str) -> StepRun {
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

/// A flow run: the fold of its journal entries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Flow name.
    pub flow: String,
    /// Where it is.
    pub status: RunStatus,
    /// What started it: `event`, `manual`, `cron`, `migration`.
    pub cause: String,
    /// The envelope that started it (the trigger event, the manual start, the tick).
    pub trigger: Envelope,
    /// The flow definition it runs (as it was when the run started).
    #[serde(skip)]
    pub definition: Value,
    /// The definition's version.
    pub version: String,
    /// Every step of the definition, in order.
    pub steps: Vec<StepRun>,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When its last entry was written (RFC 3339).
    pub updated_at: String,
    /// Its output (the last step's output), once completed.
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
    /// The stream sequence of its last entry: the expected last sequence of the next
    /// append.
    #[serde(skip)]
    pub last_seq: u64,
    /// The state machines' view, folded entry by entry.
    #[serde(skip)]
    state: RunState,
}

impl Run {
    /// The run of `entries` (stream sequence, entry), in journal order; `Ok(None)` for
    /// none.
    ///
    /// # Errors
    /// [`FoldError`] for the first entry the state machines refuse.
    pub fn from_entries(entries: &[(u64, Entry)]) -> Result<Option<Run>, FoldError> {
        let Some(((seq, first), rest)) = entries.split_first() else {
            return Ok(None);
        };
        let mut run = Run::start(*seq, first)?;
        for (seq, e) in rest {
            run.push(*seq, e)?;
        }
        Ok(Some(run))
    }

    /// The run after its first entry (`run.started`).
    ///
    /// # Errors
    /// [`FoldError::OutOfOrder`] for another event.
    pub fn start(seq: u64, entry: &Entry) -> Result<Run, FoldError> {
        let state = RunState::start(seq, entry)?;
        let steps: Vec<StepRun> = state
            .definition
            .get("steps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .map(StepRun::pending)
            .collect();
        let trigger = match &entry.event {
            EntryEvent::RunStarted { input, .. } => Envelope::deserialize(input).ok(),
            _ => None,
        };
        Ok(Run {
            id: state.run.id.clone(),
            flow: state.run.name.clone(),
            status: state.status,
            cause: state.cause.clone(),
            trigger: trigger.unwrap_or_else(|| Envelope::new("weft.unknown")),
            version: state
                .definition
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            definition: state.definition.clone(),
            steps,
            created_at: entry.at.clone(),
            updated_at: entry.at.clone(),
            output: None,
            error: None,
            retries: 0,
            cancel_reason: None,
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
        if e.step == weft_bus::runs::entry::RUN_STEP {
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
                        weft_bus::envelope::ErrorCode::Other("CANCELLED".into()),
                        reason.clone(),
                    ));
                    for s in &mut self.steps {
                        s.status = self.state.step(&s.name);
                    }
                }
                EntryEvent::RunCompleted { output } => self.output = Some(output.clone()),
                EntryEvent::RunFailed { error } => self.error = Some(error.clone()),
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

    /// Its journal reference.
    ///
    /// # Panics
    /// Never for a run read from the journal (its names are tokens).
    pub fn reference(&self) -> RunRef {
        RunRef::new(weft_bus::runs::RunKind::Flow, &self.flow, &self.id)
            .expect("a journaled run has token names")
    }

    /// The template context: `trigger`, `steps.<name>.output`, `run.id`, `flow.name`.
    pub fn context(&self) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .filter_map(|s| {
                s.output
                    .as_ref()
                    .map(|o| (s.name.clone(), json!({ "output": o })))
            })
            .collect();
        json!({
            "trigger": self.trigger,
            "steps": steps,
            "run": { "id": self.id },
            "flow": { "name": self.flow },
        })
    }

    /// The listing shape of `weft flow runs --json`: `{id, flow, version, status,
    /// cause, trigger_event_id, created_at, updated_at, retries, error?, steps: [{name,
    /// status, attempts, started_at?, finished_at?, until?, error?}]}`.
    pub fn summary(&self) -> Value {
        json!({
            "id": self.id,
            "flow": self.flow,
            "version": self.version,
            "status": self.status,
            "cause": self.cause,
            "trigger_event_id": self.trigger.event_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "retries": self.retries,
            "error": self.error,
            "steps": self.steps.iter().map(|s| {
                let mut v = json!({
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
                        v[k] = json!(val);
                    }
                }
                if let Some(e) = &s.error {
                    v["error"] = json!(e);
                }
                v
            }).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_bus::envelope::ErrorCode;
    use weft_bus::runs::RunKind;

    fn entries(events: Vec<(&str, EntryEvent)>) -> Vec<(u64, Entry)> {
        let r = RunRef::new(RunKind::Flow, "f", "r1").unwrap();
        let mut attempts: std::collections::HashMap<String, u32> = Default::default();
        events
            .into_iter()
            .enumerate()
            .map(|(i, (step, e))| {
                if matches!(e, EntryEvent::StepStarted { .. }) {
                    *attempts.entry(step.to_owned()).or_default() += 1;
                }
                let a = attempts.get(step).copied().unwrap_or(1);
                (i as u64 + 1, Entry::new(&r, step, a, e))
            })
            .collect()
    }

    fn started() -> (&'static str, EntryEvent) {
        (
            "_run",
            EntryEvent::RunStarted {
                cause: "manual".into(),
                input: serde_json::to_value(Envelope::new("a.b")).unwrap(),
                definition: json!({"version": "2.0.0", "steps": [{"name": "one"}, {"name": "two"}]}),
            },
        )
    }

    fn step_started() -> EntryEvent {
        EntryEvent::StepStarted {
            input: json!({"n": 1}),
            idempotency_key: "k".into(),
        }
    }

    #[test]
    fn a_run_lists_every_step_of_its_definition_with_what_happened() {
        let run = Run::from_entries(&entries(vec![
            started(),
            ("one", step_started()),
            (
                "one",
                EntryEvent::StepFailed {
                    error: ErrorPayload::new(ErrorCode::AgentTimeout, "slow"),
                    retry_at: Some("2026-12-02T10:00:00Z".into()),
                },
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(run.version, "2.0.0");
        assert_eq!(run.cause, "manual");
        assert_eq!(run.status, RunStatus::Running);
        let one = run.step("one").unwrap();
        assert_eq!(one.status, StepStatus::Backoff { attempt: 1 });
        assert_eq!(one.until.as_deref(), Some("2026-12-02T10:00:00Z"));
        assert_eq!(one.input, Some(json!({"n": 1})));
        assert_eq!(run.step("two").unwrap().status, StepStatus::Pending);
        let summary = run.summary();
        assert_eq!(summary["steps"][0]["status"], "backoff");
        assert_eq!(summary["steps"][0]["error"]["code"], "AGENT_TIMEOUT");
        assert_eq!(summary["steps"][1]["status"], "pending");
    }

    #[test]
    fn a_retry_starts_a_new_round_of_attempts_and_completed_outputs_feed_templates() {
        let run = Run::from_entries(&entries(vec![
            started(),
            ("one", step_started()),
            (
                "one",
                EntryEvent::StepCompleted {
                    output: json!("kept"),
                    duration_ms: 2,
                },
            ),
            ("two", step_started()),
            (
                "two",
                EntryEvent::StepFailed {
                    error: ErrorPayload::new(ErrorCode::AgentUnavailable, "down"),
                    retry_at: None,
                },
            ),
            (
                "_run",
                EntryEvent::RunFailed {
                    error: ErrorPayload::new(ErrorCode::AgentUnavailable, "down"),
                },
            ),
            ("_run", EntryEvent::RetryRequested { by: "ada".into() }),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.retries, 1);
        let two = run.step("two").unwrap();
        assert_eq!(two.status, StepStatus::Failed { attempt: 1 });
        assert_eq!(
            two.round_attempts(),
            0,
            "a retry gives the step its attempts back"
        );
        assert_eq!(run.context()["steps"]["one"]["output"], "kept");
        assert!(run.context()["steps"].get("two").is_none());
    }
}
