//! A run's state as the fold of its journal entries (DESIGN §15): each entry is an
//! input of the run's or a step's state machine ([`super::machine`]); an entry the
//! machines refuse is an error naming its sequence, never skipped silently. An entry
//! whose `Nats-Msg-Id` was seen already (a duplicate stored after the stream's
//! duplicate window) counts once.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::RunRef;
use super::entry::{Entry, EntryEvent};
use super::machine::{InvalidTransition, RunInput, RunStatus, StepInput, StepStatus};
use crate::envelope::ErrorPayload;

/// A run as its entries left it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunState {
    /// The run.
    pub run: RunRef,
    /// Its status.
    pub status: RunStatus,
    /// Its steps in the order they first appeared, with their status.
    pub steps: Vec<(String, StepStatus)>,
    /// What started it (`run.started`'s cause).
    pub cause: String,
    /// Its input (`run.started`'s input), shared: a state is cloned at every decision.
    pub input: Arc<Value>,
    /// The definition it runs, shared likewise.
    pub definition: Arc<Value>,
    /// Its output, once completed.
    pub output: Option<Value>,
    /// Each completed step's output (the last attempt's), in step order.
    pub outputs: Vec<(String, Value)>,
    /// Why it failed, when it did.
    pub error: Option<ErrorPayload>,
    /// How many times it was retried after failing (`run.retry_requested` entries).
    pub retries: u32,
    /// The stream sequence of the last entry folded (the expected last subject
    /// sequence of the next append).
    pub last_seq: u64,
    /// The message ids folded (an entry stored twice counts once).
    #[serde(skip)]
    seen: HashSet<String>,
}

/// An entry that does not fit the run so far.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FoldError {
    /// The first entry is not `run.started`, or a second `run.started` came.
    #[error("entry {seq}: {event} where the run {what}")]
    OutOfOrder {
        /// Its sequence.
        seq: u64,
        /// Its event.
        event: String,
        /// What was expected.
        what: &'static str,
    },
    /// A state machine refused it.
    #[error("entry {seq} ({event} of step {step}): {source}")]
    Invalid {
        /// Its sequence.
        seq: u64,
        /// Its event.
        event: String,
        /// Its step.
        step: String,
        /// The refused transition.
        #[source]
        source: InvalidTransition,
    },
}

impl RunState {
    /// The status of `step` (`Pending` when it has no entry yet).
    pub fn step(&self, step: &str) -> StepStatus {
        self.steps
            .iter()
            .find(|(s, _)| s == step)
            .map_or(StepStatus::Pending, |(_, st)| *st)
    }

    fn set_step(&mut self, step: &str, status: StepStatus) {
        match self.steps.iter_mut().find(|(s, _)| s == step) {
            Some((_, st)) => *st = status,
            None => self.steps.push((step.to_owned(), status)),
        }
    }

    /// Folds `entries` (stream sequence, entry), in order. `Ok(None)` when there are
    /// none.
    ///
    /// # Errors
    /// [`FoldError`] for the first entry that does not fit.
    pub fn fold<E: std::borrow::Borrow<(u64, Entry)>>(
        entries: impl IntoIterator<Item = E>,
    ) -> Result<Option<RunState>, FoldError> {
        let mut state: Option<RunState> = None;
        for item in entries {
            let (seq, entry) = item.borrow();
            match &mut state {
                None => state = Some(RunState::start(*seq, entry)?),
                Some(s) => {
                    s.push(*seq, entry)?;
                }
            }
        }
        Ok(state)
    }

    /// The state after a run's first entry (`run.started`).
    ///
    /// # Errors
    /// [`FoldError::OutOfOrder`] for another event.
    pub fn start(seq: u64, entry: &Entry) -> Result<RunState, FoldError> {
        let EntryEvent::RunStarted {
            cause,
            input,
            definition,
        } = &entry.event
        else {
            return Err(FoldError::OutOfOrder {
                seq,
                event: entry.event.name().to_owned(),
                what: "has not started",
            });
        };
        Ok(RunState {
            run: entry.run.clone(),
            status: RunStatus::Running,
            steps: Vec::new(),
            cause: cause.clone(),
            input: Arc::new(input.clone()),
            definition: Arc::new(definition.clone()),
            output: None,
            outputs: Vec::new(),
            error: None,
            retries: 0,
            last_seq: seq,
            seen: HashSet::from([entry.msg_id()]),
        })
    }

    /// Folds one more entry in: what a run's driver does after each append, instead
    /// of folding every entry again. An entry whose message id was folded already
    /// counts once (`Ok(false)`).
    ///
    /// # Errors
    /// [`FoldError`] when the entry does not fit the run.
    pub fn push(&mut self, seq: u64, entry: &Entry) -> Result<bool, FoldError> {
        if !self.seen.insert(entry.msg_id()) {
            return Ok(false);
        }
        let event = entry.event.name();
        if let EntryEvent::RunStarted { .. } = entry.event {
            return Err(FoldError::OutOfOrder {
                seq,
                event: event.to_owned(),
                what: "started already",
            });
        }
        self.apply(&entry.step, &entry.event)
            .map_err(|source| FoldError::Invalid {
                seq,
                event: event.to_owned(),
                step: entry.step.clone(),
                source,
            })?;
        self.last_seq = seq;
        Ok(true)
    }

    fn run_on(&mut self, input: RunInput) -> Result<(), InvalidTransition> {
        self.status = self.status.on(input)?;
        Ok(())
    }

    fn step_on(&mut self, step: &str, input: StepInput) -> Result<StepStatus, InvalidTransition> {
        let next = self.step(step).on(input)?;
        self.set_step(step, next);
        Ok(next)
    }

    fn apply(&mut self, step: &str, event: &EntryEvent) -> Result<(), InvalidTransition> {
        match event {
            EntryEvent::RunStarted { .. } => unreachable!("handled by fold"),
            EntryEvent::StepStarted { .. } => {
                let input = match self.step(step) {
                    StepStatus::Pending => StepInput::Start,
                    StepStatus::Backoff { .. } => StepInput::RetryDue,
                    StepStatus::Running { .. } => StepInput::Takeover,
                    _ => StepInput::Retry,
                };
                self.step_on(step, input)?;
            }
            EntryEvent::StepCompleted { output, .. } => {
                let was_waiting = matches!(self.step(step), StepStatus::Waiting { .. });
                self.step_on(step, StepInput::Complete)?;
                if was_waiting {
                    self.run_on(RunInput::Resume)?;
                }
                match self.outputs.iter_mut().find(|(s, _)| s == step) {
                    Some((_, o)) => o.clone_from(output),
                    None => self.outputs.push((step.to_owned(), output.clone())),
                }
            }
            EntryEvent::StepFailed { retry_at, .. } => {
                let was_waiting = matches!(self.step(step), StepStatus::Waiting { .. });
                let input = if retry_at.is_some() {
                    StepInput::FailRetrying
                } else {
                    StepInput::FailForGood
                };
                self.step_on(step, input)?;
                if was_waiting {
                    self.run_on(RunInput::Resume)?;
                }
            }
            EntryEvent::StepWaiting { .. } => {
                self.step_on(step, StepInput::Wait)?;
                self.run_on(RunInput::Wait)?;
            }
            EntryEvent::StepSkipped { .. } => {
                self.step_on(step, StepInput::Skip)?;
            }
            EntryEvent::CancelRequested { .. } => self.run_on(RunInput::CancelRequested)?,
            EntryEvent::RunCancelled { .. } => {
                for (_, st) in &mut self.steps {
                    if let Ok(next) = st.on(StepInput::Cancel) {
                        *st = next;
                    }
                }
                self.run_on(RunInput::Cancelled)?;
            }
            EntryEvent::RetryRequested { .. } => {
                self.run_on(RunInput::Retry)?;
                self.retries += 1;
            }
            EntryEvent::RunCompleted { output } => {
                self.run_on(RunInput::Complete)?;
                self.output = Some(output.clone());
            }
            EntryEvent::RunFailed { error } => {
                let input = if self.status == RunStatus::Compensating {
                    RunInput::CompensationsDone
                } else {
                    RunInput::Fail
                };
                self.run_on(input)?;
                self.error = Some(error.clone());
            }
            EntryEvent::RunCompensating { error } => {
                self.run_on(RunInput::FailCompensating)?;
                self.error = Some(error.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ErrorCode;
    use crate::runs::RunKind;
    use crate::runs::entry::RUN_STEP;
    use serde_json::json;

    fn run() -> RunRef {
        RunRef::new(RunKind::Flow, "f", "r1").unwrap()
    }

    fn entries(events: Vec<(&str, u32, EntryEvent)>) -> Vec<(u64, Entry)> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, (step, attempt, e))| (i as u64 + 1, Entry::new(&run(), step, attempt, e)))
            .collect()
    }

    fn started() -> (&'static str, u32, EntryEvent) {
        (
            RUN_STEP,
            1,
            EntryEvent::RunStarted {
                cause: "event".into(),
                input: json!({}),
                definition: json!({"steps": ["a"]}),
            },
        )
    }

    fn step_started(step: &'static str, attempt: u32) -> (&'static str, u32, EntryEvent) {
        (
            step,
            attempt,
            EntryEvent::StepStarted {
                input: json!(null),
                idempotency_key: "k".into(),
            },
        )
    }

    fn failed(step: &'static str, attempt: u32, retry: bool) -> (&'static str, u32, EntryEvent) {
        (
            step,
            attempt,
            EntryEvent::StepFailed {
                error: ErrorPayload::new(ErrorCode::AgentTimeout, "slow"),
                retry_at: retry.then(|| "2026-12-02T00:00:00Z".into()),
            },
        )
    }

    #[test]
    fn a_retried_step_and_a_completed_run_fold_to_their_states() {
        let s = RunState::fold(entries(vec![
            started(),
            step_started("a", 1),
            failed("a", 1, true),
            step_started("a", 2),
            (
                "a",
                2,
                EntryEvent::StepCompleted {
                    output: json!(7),
                    duration_ms: 3,
                },
            ),
            (RUN_STEP, 1, EntryEvent::RunCompleted { output: json!(7) }),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.status, RunStatus::Completed);
        assert_eq!(s.step("a"), StepStatus::Completed);
        assert_eq!(s.outputs, [("a".to_owned(), json!(7))]);
        assert_eq!(s.last_seq, 6);
        assert_eq!(*s.definition, json!({"steps": ["a"]}));
    }

    #[test]
    fn a_compensating_run_fails_once_its_compensations_are_done() {
        let down = ErrorPayload::new(ErrorCode::AgentUnavailable, "down");
        let mut events = vec![
            started(),
            step_started("a", 1),
            (
                "a",
                1,
                EntryEvent::StepCompleted {
                    output: json!(1),
                    duration_ms: 1,
                },
            ),
            step_started("b", 1),
            failed("b", 1, false),
            (
                RUN_STEP,
                1,
                EntryEvent::RunCompensating {
                    error: down.clone(),
                },
            ),
        ];
        let s = RunState::fold(entries(events.clone())).unwrap().unwrap();
        assert_eq!(s.status, RunStatus::Compensating);
        assert_eq!(s.error.as_ref(), Some(&down));
        events.push(step_started("undo_a", 1));
        events.push((
            "undo_a",
            1,
            EntryEvent::StepCompleted {
                output: json!(null),
                duration_ms: 1,
            },
        ));
        events.push((RUN_STEP, 1, EntryEvent::RunFailed { error: down }));
        let s = RunState::fold(entries(events)).unwrap().unwrap();
        assert_eq!(s.status, RunStatus::Failed);
        assert_eq!(s.step("undo_a"), StepStatus::Completed);
    }

    #[test]
    fn a_wait_holds_the_run_and_its_end_resumes_it() {
        let s = RunState::fold(entries(vec![
            started(),
            step_started("nap", 1),
            (
                "nap",
                1,
                EntryEvent::StepWaiting {
                    reason: "sleep".into(),
                    until: None,
                },
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.status, RunStatus::Waiting);
        assert_eq!(s.step("nap"), StepStatus::Waiting { attempt: 1 });
        let s = RunState::fold(entries(vec![
            started(),
            step_started("nap", 1),
            (
                "nap",
                1,
                EntryEvent::StepWaiting {
                    reason: "sleep".into(),
                    until: None,
                },
            ),
            (
                "nap",
                1,
                EntryEvent::StepCompleted {
                    output: json!(null),
                    duration_ms: 0,
                },
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.status, RunStatus::Running);
    }

    #[test]
    fn a_failed_run_is_retried_from_its_failed_step() {
        let s = RunState::fold(entries(vec![
            started(),
            step_started("a", 1),
            failed("a", 1, false),
            (
                RUN_STEP,
                1,
                EntryEvent::RunFailed {
                    error: ErrorPayload::new(ErrorCode::AgentTimeout, "slow"),
                },
            ),
            (RUN_STEP, 1, EntryEvent::RetryRequested { by: "ada".into() }),
            step_started("a", 2),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.status, RunStatus::Running);
        assert_eq!(s.step("a"), StepStatus::Running { attempt: 2 });
    }

    #[test]
    fn cancelling_cancels_every_unfinished_step() {
        let s = RunState::fold(entries(vec![
            started(),
            step_started("a", 1),
            (
                RUN_STEP,
                1,
                EntryEvent::CancelRequested {
                    by: "ada".into(),
                    reason: "no".into(),
                },
            ),
            (
                RUN_STEP,
                1,
                EntryEvent::RunCancelled {
                    reason: "no".into(),
                },
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.status, RunStatus::Cancelled);
        assert_eq!(s.step("a"), StepStatus::Cancelled);
    }

    #[test]
    fn duplicates_count_once_and_misfits_are_errors() {
        let mut list = entries(vec![started(), step_started("a", 1)]);
        let dup = list[1].1.clone();
        list.push((3, dup));
        let s = RunState::fold(list).unwrap().unwrap();
        assert_eq!(s.step("a"), StepStatus::Running { attempt: 1 });

        let e = RunState::fold(entries(vec![step_started("a", 1)])).unwrap_err();
        assert!(e.to_string().contains("has not started"), "{e}");
        let e = RunState::fold(entries(vec![
            started(),
            (
                "a",
                1,
                EntryEvent::StepCompleted {
                    output: json!(1),
                    duration_ms: 0,
                },
            ),
        ]))
        .unwrap_err();
        assert!(
            e.to_string().contains("entry 2")
                && e.to_string().contains("complete in state pending"),
            "{e}"
        );
        assert_eq!(RunState::fold(Vec::<(u64, Entry)>::new()).unwrap(), None);
    }
}
