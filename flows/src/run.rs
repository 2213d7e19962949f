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
use weft_bus::runs::fold::FoldError;
pub use weft_bus::runs::view::{RunView, StepRun};
use weft_bus::runs::{Entry, EntryEvent};

use crate::template;

const RUN_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5eb1_7a2c_0f1e_4d3b_9a8c_77e5_1d2f_0b3a);

/// The run id for `flow` started by the envelope `event_id` (a trigger, a manual start,
/// a cron tick): a UUIDv5, so a trigger delivered or replayed again finds its run.
pub fn run_id(flow: &str, event_id: &str) -> String {
    uuid::Uuid::new_v5(&RUN_NAMESPACE, format!("{flow}:{event_id}").as_bytes()).to_string()
}

/// A flow run: the fold of its journal entries ([`RunView`], which it derefs to),
/// with its trigger and the version of its definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// The run as every run reads: id, status, steps, times, output, error.
    #[serde(flatten)]
    view: RunView,
    /// Flow name.
    pub flow: String,
    /// The envelope that started it (the trigger event, the manual start, the tick);
    /// shared, as a run is cloned at every decision.
    pub trigger: std::sync::Arc<Envelope>,
    /// The definition's version.
    pub version: String,
}

impl std::ops::Deref for Run {
    type Target = RunView;
    fn deref(&self) -> &RunView {
        &self.view
    }
}

impl std::ops::DerefMut for Run {
    fn deref_mut(&mut self) -> &mut RunView {
        &mut self.view
    }
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

    /// The run after its first entry (`run.started`): every step of its definition,
    /// pending.
    ///
    /// # Errors
    /// [`FoldError::OutOfOrder`] for another event.
    pub fn start(seq: u64, entry: &Entry) -> Result<Run, FoldError> {
        let (definition, trigger) = match &entry.event {
            EntryEvent::RunStarted {
                definition, input, ..
            } => (Some(definition), Envelope::deserialize(input).ok()),
            _ => (None, None),
        };
        let steps: Vec<StepRun> = definition
            .and_then(|d| d.get("steps"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .map(StepRun::pending)
            .collect();
        let version = definition
            .and_then(|d| d.get("version"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let view = RunView::start(seq, entry, steps)?;
        Ok(Run {
            flow: view.name.clone(),
            view,
            trigger: std::sync::Arc::new(trigger.unwrap_or_else(|| Envelope::new("weft.unknown"))),
            version,
        })
    }

    /// Folds one more entry in (what the worker does after each append). An entry
    /// folded already (the same message id) changes nothing.
    ///
    /// # Errors
    /// [`FoldError`] when the state machines refuse it.
    pub fn push(&mut self, seq: u64, e: &Entry) -> Result<(), FoldError> {
        self.view.push(seq, e)
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
            "trigger": *self.trigger,
            "steps": steps,
            "run": { "id": self.id },
            "flow": { "name": self.flow },
        })
    }

    /// The value at `path` in [`Run::context`], found in place for the trigger's payload
    /// and finished steps' outputs (what step inputs name), so rendering a step's input
    /// does not copy the trigger and every output into a context first.
    fn find(&self, path: &str) -> Option<Result<&Value, String>> {
        let (head, rest) = path.split_once('.')?;
        let (name, rest) = rest
            .split_once('.')
            .map_or((rest, None), |(n, r)| (n, Some(r)));
        match head {
            "trigger" if name == "payload" => {
                let payload = self.trigger.payload.as_ref()?;
                Some(template::descend(payload, path, rest))
            }
            "steps" => {
                let (field, rest) = rest?
                    .split_once('.')
                    .map_or((rest?, None), |(f, r)| (f, Some(r)));
                let output = self
                    .steps
                    .iter()
                    .find(|s| s.name == name)?
                    .output
                    .as_ref()?;
                (field == "output").then(|| template::descend(output, path, rest))
            }
            _ => None,
        }
    }

    /// The listing shape of `weft flow runs --json`: [`RunView::summary`] with `flow`,
    /// `version` and `trigger_event_id`.
    pub fn summary(&self) -> Value {
        let mut v = self.view.summary();
        v["flow"] = json!(self.flow);
        v["version"] = json!(self.version);
        v["trigger_event_id"] = json!(self.trigger.event_id);
        v
    }
}

impl template::Context for Run {
    fn lookup(&self, path: &str) -> Result<std::borrow::Cow<'_, Value>, String> {
        match self.find(path) {
            Some(found) => found.map(std::borrow::Cow::Borrowed),
            None => template::Context::lookup(&self.context(), path)
                .map(|v| std::borrow::Cow::Owned(v.into_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_bus::envelope::{ErrorCode, ErrorPayload};
    use weft_bus::runs::{RunKind, RunRef, RunStatus, StepStatus};

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

    #[test]
    fn templates_find_payloads_and_outputs_in_place_and_resolve_like_the_context() {
        use std::borrow::Cow;
        use template::Context as _;
        let trigger = Envelope::new("a.b").with_payload(json!({"title": "Hi", "n": [1, 2]}));
        let run = Run::from_entries(&entries(vec![
            (
                "_run",
                EntryEvent::RunStarted {
                    cause: "event".into(),
                    input: serde_json::to_value(&trigger).unwrap(),
                    definition: json!({"version": "1", "steps": [{"name": "one"}, {"name": "two"}]}),
                },
            ),
            ("one", step_started()),
            (
                "one",
                EntryEvent::StepCompleted {
                    output: json!({"x": {"y": 3}}),
                    duration_ms: 1,
                },
            ),
        ]))
        .unwrap()
        .unwrap();
        let context = run.context();
        for path in [
            "trigger",
            "trigger.payload",
            "trigger.payload.title",
            "trigger.payload.n.1",
            "trigger.payload.nope",
            "trigger.event_id",
            "steps",
            "steps.one",
            "steps.one.output",
            "steps.one.output.x.y",
            "steps.one.output.z",
            "steps.one.outputx",
            "steps.two.output",
            "run.id",
            "flow.name",
            "nope",
        ] {
            let (fast, full) = (run.lookup(path), context.lookup(path));
            assert_eq!(
                fast.as_deref().map_err(String::as_str),
                full.as_deref().map_err(String::as_str),
                "{path}"
            );
        }
        // No copy of the trigger or the outputs for the paths inputs name.
        for path in ["trigger.payload.title", "steps.one.output.x"] {
            assert!(matches!(run.lookup(path), Ok(Cow::Borrowed(_))), "{path}");
        }
        assert_eq!(
            template::render(
                &json!("${trigger.payload.n.0}: ${steps.one.output.x.y}"),
                &run
            ),
            Ok(json!("1: 3"))
        );
    }
}
