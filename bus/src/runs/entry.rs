//! One journal entry (DESIGN §15): a step event of one run, as JSON on
//! `P.runs.<kind>.<name>.<run_id>` with `Nats-Msg-Id: <run_id>:<step>:<attempt>:<event>`.
//!
//! ```json
//! {"v": 1, "run": {"kind": "flow", "name": "triage", "id": "9f1c…"}, "step": "classify",
//!  "attempt": 2, "event": "step.completed", "data": {"output": {…}, "duration_ms": 41},
//!  "at": "2026-12-02T10:00:00.123Z", "by": "worker-7c1e"}
//! ```
//!
//! Run-level entries have the step [`RUN_STEP`] (`_run`). Unknown fields are kept out
//! of the way (ignored), so a newer writer's extra data does not break an older reader;
//! an unknown `event` does not decode ([`Entry::from_slice`] says which).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::ErrorPayload;

use super::RunRef;

/// The schema version of entries this crate writes.
pub const ENTRY_VERSION: u32 = 1;

/// The step name of run-level entries.
pub const RUN_STEP: &str = "_run";

/// What happened ([module docs](self)): the `event` tag and its `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data")]
pub enum EntryEvent {
    /// The run started (always the first entry, appended with expected subject
    /// sequence 0, so a run id starts once).
    #[serde(rename = "run.started")]
    RunStarted {
        /// What started it: `event`, `cron`, `manual`, `sub_flow`, `migration`, `chat`.
        cause: String,
        /// Its input (a flow's trigger envelope, an agent's message).
        #[serde(default)]
        input: Value,
        /// The definition it runs (kept with the run, so a new version does not change
        /// it).
        #[serde(default)]
        definition: Value,
    },
    /// An attempt of a step started.
    #[serde(rename = "step.started")]
    StepStarted {
        /// The step's input.
        #[serde(default)]
        input: Value,
        /// The callee's idempotency key: the same for every attempt.
        idempotency_key: String,
    },
    /// The attempt finished; `output` is the step's output.
    #[serde(rename = "step.completed")]
    StepCompleted {
        /// The output.
        #[serde(default)]
        output: Value,
        /// How long the attempt took, in ms.
        #[serde(default)]
        duration_ms: u64,
    },
    /// The attempt failed; with `retry_at` another follows then (RFC 3339).
    #[serde(rename = "step.failed")]
    StepFailed {
        /// Why.
        error: ErrorPayload,
        /// When the next attempt is due; absent when the step gave up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<String>,
    },
    /// The attempt waits without a worker: `reason` is `sleep`, `event`, `approval`,
    /// `child` or `slot`; `until` the timeout (RFC 3339), if any.
    #[serde(rename = "step.waiting")]
    StepWaiting {
        /// What for.
        reason: String,
        /// Until when at the latest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    /// The step does not run: a branch took other steps, or a parallel step that joins
    /// on the first result got it from another step.
    #[serde(rename = "step.skipped")]
    StepSkipped {
        /// Why, e.g. `branch route took else`.
        #[serde(default)]
        reason: String,
    },
    /// Someone asked to cancel the run.
    #[serde(rename = "run.cancel_requested")]
    CancelRequested {
        /// Who.
        by: String,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// The run was cancelled.
    #[serde(rename = "run.cancelled")]
    RunCancelled {
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Someone asked to resume the failed run from its failed step (the entry's
    /// attempt counts the retries).
    #[serde(rename = "run.retry_requested")]
    RetryRequested {
        /// Who.
        by: String,
    },
    /// The run completed.
    #[serde(rename = "run.completed")]
    RunCompleted {
        /// Its output.
        #[serde(default)]
        output: Value,
    },
    /// The run failed.
    #[serde(rename = "run.failed")]
    RunFailed {
        /// Why.
        error: ErrorPayload,
    },
    /// A step failed for good and the run undoes what it did: its compensation steps
    /// run, then it fails with `error`.
    #[serde(rename = "run.compensating")]
    RunCompensating {
        /// Why the run fails.
        error: ErrorPayload,
    },
}

impl EntryEvent {
    /// The `event` tag, e.g. `step.completed`.
    pub fn name(&self) -> &'static str {
        match self {
            EntryEvent::RunStarted { .. } => "run.started",
            EntryEvent::StepStarted { .. } => "step.started",
            EntryEvent::StepCompleted { .. } => "step.completed",
            EntryEvent::StepFailed { .. } => "step.failed",
            EntryEvent::StepWaiting { .. } => "step.waiting",
            EntryEvent::StepSkipped { .. } => "step.skipped",
            EntryEvent::CancelRequested { .. } => "run.cancel_requested",
            EntryEvent::RunCancelled { .. } => "run.cancelled",
            EntryEvent::RetryRequested { .. } => "run.retry_requested",
            EntryEvent::RunCompleted { .. } => "run.completed",
            EntryEvent::RunFailed { .. } => "run.failed",
            EntryEvent::RunCompensating { .. } => "run.compensating",
        }
    }
}

/// One journal entry ([module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The schema version ([`ENTRY_VERSION`]).
    pub v: u32,
    /// The run.
    pub run: RunRef,
    /// The step (one token), or [`RUN_STEP`].
    pub step: String,
    /// The attempt (from 1); for `run.retry_requested`, the retry's number.
    pub attempt: u32,
    /// What happened.
    #[serde(flatten)]
    pub event: EntryEvent,
    /// When (RFC 3339).
    pub at: String,
    /// Who wrote it: a worker or gateway instance, a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Entry {
    /// An entry of `step` (attempt `attempt`) of `run`, written now.
    pub fn new(run: &RunRef, step: &str, attempt: u32, event: EntryEvent) -> Entry {
        Entry {
            v: ENTRY_VERSION,
            run: run.clone(),
            step: step.to_owned(),
            attempt,
            event,
            at: crate::envelope::now_rfc3339(),
            by: None,
        }
    }

    /// A run-level entry of `run`.
    pub fn of_run(run: &RunRef, attempt: u32, event: EntryEvent) -> Entry {
        Entry::new(run, RUN_STEP, attempt, event)
    }

    /// Its `Nats-Msg-Id`: `<run_id>:<step>:<attempt>:<event>`, so the same entry
    /// appended twice is stored once.
    pub fn msg_id(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.run.id,
            self.step,
            self.attempt,
            self.event.name()
        )
    }

    /// Decodes an entry.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Envelope`] saying what does not decode (bad JSON, an unknown
    /// event, a newer schema version).
    pub fn from_slice(bytes: &[u8]) -> crate::Result<Entry> {
        let entry: Entry = serde_json::from_slice(bytes).map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::Envelope,
                format!("not a journal entry: {e}"),
            )
        })?;
        if entry.v > ENTRY_VERSION {
            return Err(crate::Error::new(
                crate::ErrorKind::Envelope,
                format!(
                    "journal entry version {} is newer than this build reads ({ENTRY_VERSION})",
                    entry.v
                ),
            ));
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ErrorCode;
    use crate::runs::RunKind;
    use serde_json::json;

    fn run() -> RunRef {
        RunRef::new(RunKind::Flow, "triage", "9f1c").unwrap()
    }

    #[test]
    fn entries_have_the_documented_shape_and_msg_id() {
        let e = Entry::new(
            &run(),
            "classify",
            2,
            EntryEvent::StepCompleted {
                output: json!({"label": "billing"}),
                duration_ms: 41,
            },
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "step.completed");
        assert_eq!(v["data"]["output"]["label"], "billing");
        assert_eq!(
            v["run"],
            json!({"kind": "flow", "name": "triage", "id": "9f1c"})
        );
        assert_eq!(e.msg_id(), "9f1c:classify:2:step.completed");
        let back = Entry::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn bad_entries_say_why() {
        let mut v = serde_json::to_value(Entry::of_run(
            &run(),
            1,
            EntryEvent::RunFailed {
                error: ErrorPayload::new(ErrorCode::AgentTimeout, "slow"),
            },
        ))
        .unwrap();
        v["v"] = json!(9);
        let e = Entry::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
        v["v"] = json!(1);
        v["event"] = json!("run.exploded");
        let e = Entry::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.to_string().contains("run.exploded"), "{e}");
    }
}
