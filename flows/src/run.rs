//! A flow run as an explicit state machine.
//!
//! ```text
//! run:   running ──▶ completed
//!           │  ▲
//!           ▼  │ (resume: `weft flow retry`, or its trigger replayed)
//!         failed
//! step:  pending ──▶ running ──▶ completed
//!                       │  ▲
//!                       ▼  │ (retry: attempt < max_attempts, or the run resumed)
//!                     failed
//! ```
//!
//! Every transition is checkpointed to KV before the engine moves on (see
//! [`crate::checkpoint`]), so a run resumes after a crash at the first step that is not
//! `completed`. A step found `running` on resume was interrupted: it runs again
//! (at-least-once for the interrupted step; finished steps never re-run).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_bus::Envelope;
use weft_bus::envelope::now_rfc3339;

use crate::definition::Flow;

/// Status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Steps remain.
    Running,
    /// Every step completed.
    Completed,
    /// A step failed for good.
    Failed,
}

impl RunStatus {
    /// `running`, `completed` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
        }
    }
}

/// Status of a step within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// An attempt is in progress (or was interrupted).
    Running,
    /// Finished with an output.
    Completed,
    /// The last attempt failed (the run may retry it).
    Failed,
}

/// The checkpointed state of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Step name.
    pub name: String,
    /// Status.
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// RFC 3339 start of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339 end of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Output, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Error of the latest failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A run of a flow, as stored in KV `<prefix>_flows` under `<flow>.<run id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Run id: a UUIDv5 of (flow, trigger event id), so a redelivered trigger finds
    /// its run.
    pub id: String,
    /// Flow name.
    pub flow: String,
    /// The trigger's `event_id`.
    pub trigger_event_id: String,
    /// Status.
    pub status: RunStatus,
    /// One state per step, in order.
    pub steps: Vec<StepState>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last transition.
    pub updated_at: String,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many times the run was resumed after failing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed: u32,
    /// The trigger envelope, for templates.
    pub trigger: Envelope,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

const RUN_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5eb1_7a2c_0f1e_4d3b_9a8c_77e5_1d2f_0b3a);

/// The run id for `flow` triggered by `event_id`.
pub fn run_id(flow: &str, event_id: &str) -> String {
    uuid::Uuid::new_v5(&RUN_NAMESPACE, format!("{flow}:{event_id}").as_bytes()).to_string()
}

impl Run {
    /// A new run of `flow` for `trigger`, every step pending.
    pub fn new(flow: &Flow, trigger: Envelope) -> Run {
        let now = now_rfc3339();
        Run {
            id: run_id(&flow.name, &trigger.event_id),
            flow: flow.name.clone(),
            trigger_event_id: trigger.event_id.clone(),
            status: RunStatus::Running,
            steps: flow
                .steps
                .iter()
                .map(|s| StepState {
                    name: s.name.clone(),
                    status: StepStatus::Pending,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    output: None,
                    error: None,
                })
                .collect(),
            created_at: now.clone(),
            updated_at: now,
            error: None,
            resumed: 0,
            trigger,
        }
    }

    /// The index of the first step that is not completed, if the run is running.
    pub fn next_step(&self) -> Option<usize> {
        if self.status != RunStatus::Running {
            return None;
        }
        self.steps
            .iter()
            .position(|s| s.status != StepStatus::Completed)
    }

    /// `pending | failed | running → running`: a new attempt of step `i` starts.
    pub fn start_step(&mut self, i: usize) {
        let now = now_rfc3339();
        let s = &mut self.steps[i];
        s.status = StepStatus::Running;
        s.attempts += 1;
        s.started_at = Some(now.clone());
        s.finished_at = None;
        s.error = None;
        self.updated_at = now;
    }

    /// `running → completed` with `output`; the run completes after its last step.
    pub fn complete_step(&mut self, i: usize, output: Value) {
        let now = now_rfc3339();
        let s = &mut self.steps[i];
        s.status = StepStatus::Completed;
        s.finished_at = Some(now.clone());
        s.output = Some(output);
        self.updated_at = now;
        if self.steps.iter().all(|s| s.status == StepStatus::Completed) {
            self.status = RunStatus::Completed;
        }
    }

    /// `running → failed`; when `give_up`, the run fails too.
    pub fn fail_step(&mut self, i: usize, error: String, give_up: bool) {
        let now = now_rfc3339();
        let s = &mut self.steps[i];
        s.status = StepStatus::Failed;
        s.finished_at = Some(now.clone());
        s.error = Some(error.clone());
        self.updated_at = now;
        if give_up {
            self.status = RunStatus::Failed;
            self.error = Some(format!("step {} failed: {error}", s.name));
        }
    }

    /// `failed → running`: the run goes on from its failed step, whose attempts start
    /// again from 0 (completed steps keep their outputs and never run again). Returns
    /// false, changing nothing, when the run has not failed.
    pub fn resume(&mut self) -> bool {
        if self.status != RunStatus::Failed {
            return false;
        }
        let now = now_rfc3339();
        if let Some(s) = self
            .steps
            .iter_mut()
            .find(|s| s.status == StepStatus::Failed)
        {
            s.attempts = 0;
        }
        self.status = RunStatus::Running;
        self.error = None;
        self.resumed += 1;
        self.updated_at = now;
        true
    }

    /// The template context: `trigger`, `steps.<name>.output`, `run.id`, `flow.name`.
    pub fn context(&self) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .filter_map(|s| {
                s.output
                    .as_ref()
                    .map(|o| (s.name.clone(), serde_json::json!({ "output": o })))
            })
            .collect();
        serde_json::json!({
            "trigger": self.trigger,
            "steps": steps,
            "run": { "id": self.id },
            "flow": { "name": self.flow },
        })
    }

    /// The listing shape `weft flow runs --json` prints:
    /// `{id, flow, trigger_event_id, status, error?, resumed, created_at, updated_at,
    /// steps: [{name, status, attempts, started_at, finished_at, error?}]}`; `error` is
    /// there when the run or step failed.
    pub fn summary(&self) -> Value {
        let mut run = serde_json::json!({
            "id": self.id,
            "flow": self.flow,
            "trigger_event_id": self.trigger_event_id,
            "status": self.status,
            "resumed": self.resumed,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "steps": self.steps.iter().map(|s| {
                let mut step = serde_json::json!({
                    "name": s.name,
                    "status": s.status,
                    "attempts": s.attempts,
                    "started_at": s.started_at,
                    "finished_at": s.finished_at,
                });
                if let Some(e) = &s.error {
                    step["error"] = Value::String(e.clone());
                }
                step
            }).collect::<Vec<_>>(),
        });
        if let Some(e) = &self.error {
            run["error"] = Value::String(e.clone());
        }
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Step;
    use serde_json::json;

    fn flow() -> Flow {
        Flow::new("f", "a.b".parse().unwrap())
            .step(Step::publish("one", "x.y".parse().unwrap(), json!(1)))
            .step(Step::publish("two", "x.z".parse().unwrap(), json!(2)))
    }

    #[test]
    fn a_run_walks_its_steps_in_order() {
        let trigger = Envelope::new("a.b");
        let mut run = Run::new(&flow(), trigger.clone());
        assert_eq!(run.id, run_id("f", &trigger.event_id));
        assert_eq!(run.next_step(), Some(0));
        run.start_step(0);
        assert_eq!(run.next_step(), Some(0), "a running step is not done");
        run.complete_step(0, json!("out"));
        assert_eq!(run.next_step(), Some(1));
        run.start_step(1);
        run.fail_step(1, "nope".into(), false);
        assert_eq!(run.status, RunStatus::Running);
        run.start_step(1);
        assert_eq!(run.steps[1].attempts, 2);
        run.complete_step(1, json!(null));
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.next_step(), None);
        assert_eq!(run.context()["steps"]["one"]["output"], "out");
        assert_eq!(run.summary()["steps"][1]["attempts"], 2);
    }

    #[test]
    fn giving_up_fails_the_run() {
        let mut run = Run::new(&flow(), Envelope::new("a.b"));
        run.start_step(0);
        run.fail_step(0, "boom".into(), true);
        assert_eq!(run.status, RunStatus::Failed);
        assert!(run.error.as_deref().unwrap().contains("boom"));
        assert_eq!(run.next_step(), None);
        let summary = run.summary();
        assert_eq!(summary["status"], "failed");
        assert!(
            summary["error"].as_str().unwrap().contains("boom"),
            "{summary}"
        );
        assert_eq!(summary["steps"][0]["error"], "boom");
    }

    #[test]
    fn a_failed_run_resumes_at_its_failed_step() {
        let mut run = Run::new(&flow(), Envelope::new("a.b"));
        assert!(!run.resume(), "a running run does not resume");
        run.start_step(0);
        run.complete_step(0, json!("kept"));
        run.start_step(1);
        run.start_step(1);
        run.fail_step(1, "down".into(), true);
        assert!(run.resume());
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.error, None);
        assert_eq!(run.resumed, 1);
        assert_eq!(run.next_step(), Some(1), "completed steps do not run again");
        assert_eq!(run.steps[0].output, Some(json!("kept")));
        assert_eq!(
            run.steps[1].attempts, 0,
            "the failed step's attempts start over"
        );
        assert_eq!(run.summary()["resumed"], 1);
        assert!(!run.resume(), "resuming twice is one resume");
    }
}
