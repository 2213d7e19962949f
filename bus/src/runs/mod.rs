//! Durable runs (DESIGN §15): the one journal flows and agent runs share, the fold of a
//! run's entries into its state, and the run and step state machines.
//!
//! - [`entry`]: one journal entry, `{v, run, step, attempt, event, data, at, by}`, and
//!   its `Nats-Msg-Id`;
//! - [`journal`]: stream `<PREFIX>_RUNS`, subjects `P.runs.<kind>.<name>.<run_id>`;
//!   appends with de-duplication and optimistic concurrency, reads;
//! - [`fold`]: a run's state from its entries;
//! - [`machine`]: the states, inputs and transition tables (with their diagrams);
//! - [`view`]: a run with every step's story, for listings and `show`;
//! - [`queue`]: stream `<PREFIX>_RUNQ`, the wakes and durable timers that bring a
//!   worker back to a run that waited.
//!
//! Flows and agents both use this module and never link each other.
//!
//! Flow runs are journaled by `weft-flows`, agent runs by `weft-agents` (`durable`).

pub mod entry;
pub mod fold;
pub mod journal;
pub mod machine;
pub mod queue;
pub mod view;

use serde::{Deserialize, Serialize};

use crate::subject::{SubjectError, Subjects, validate_token};

pub use entry::{Entry, EntryEvent};
pub use fold::RunState;
pub use journal::{AppendError, Appended, Journal};
pub use machine::{RunStatus, StepStatus};
pub use queue::RunQueue;
pub use view::{RunView, StepRun};

/// What kind of thing runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// A flow run.
    Flow,
    /// An agent run.
    Agent,
}

impl RunKind {
    /// `flow` or `agent`: the subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Flow => "flow",
            RunKind::Agent => "agent",
        }
    }
}

/// One run: its kind, the flow's or agent's name, and its id (each one subject token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunRef {
    /// Flow or agent.
    pub kind: RunKind,
    /// The flow's or agent's name.
    pub name: String,
    /// The run id (a UUID).
    pub id: String,
}

impl RunRef {
    /// The run `id` of `kind` `name`.
    ///
    /// # Errors
    /// [`SubjectError`] when the name or the id is not one subject token.
    pub fn new(kind: RunKind, name: &str, id: &str) -> Result<RunRef, SubjectError> {
        validate_token("run name", name)?;
        validate_token("run id", id)?;
        Ok(RunRef {
            kind,
            name: name.to_owned(),
            id: id.to_owned(),
        })
    }
}

impl std::fmt::Display for RunRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.kind.as_str(), self.name, self.id)
    }
}

/// The subjects of durable runs: the journal's (`P.runs.>`) and the run queue's
/// (`P.runq.>`).
impl Subjects {
    /// `P.runs.<kind>.<name>.<run_id>`: the journal entries of one durable run
    /// (DESIGN §15).
    pub fn runs(&self, run: &RunRef) -> String {
        format!("{}.runs.{run}", self.prefix())
    }

    /// `P.runs.>`: every run's entries.
    pub fn all_runs(&self) -> String {
        format!("{}.runs.>", self.prefix())
    }

    /// `P.runs.<kind>.<name>.*`: the entries of every run of one flow or agent.
    pub fn runs_of(&self, kind: RunKind, name: &str) -> String {
        format!("{}.runs.{}.{name}.*", self.prefix(), kind.as_str())
    }

    /// `P.runq.>`: the run queue ([`queue`]).
    pub fn all_runq(&self) -> String {
        format!("{}.runq.>", self.prefix())
    }

    /// `P.runq.<kind>.<name>.<what>`: the run queue of one flow or agent; `what` is
    /// `wake` or `cron`.
    pub fn runq(&self, kind: RunKind, name: &str, what: &str) -> String {
        format!("{}.runq.{}.{name}.{what}", self.prefix(), kind.as_str())
    }

    /// `P.runq.sched.<kind>.<name>.<key>`: a message schedule of the run queue (a
    /// run's timer, `<run_id>_<step>`, or a flow's cron schedule, `_cron`). One
    /// schedule per subject: publishing again replaces it.
    pub fn runq_schedule(&self, kind: RunKind, name: &str, key: &str) -> String {
        format!(
            "{}.runq.sched.{}.{name}.{key}",
            self.prefix(),
            kind.as_str()
        )
    }
}
