//! # weft-flows
//!
//! The durable workflow engine (DESIGN §15). A [`Flow`] is started by events on
//! `P.events.<pattern>`, a cron schedule, or by hand, and runs ordered [steps](Step):
//! invoke a service, ask an agent or a remote A2A agent, publish an event, compute with
//! jq, sleep on a durable timer, wait for an event, wait for an approval. Every step
//! event is appended to the run's journal ([`weft_bus::runs`]) before the next one, so
//! a [run] resumes on any worker after a crash without running finished steps again.
//!
//! - [`definition`]: flows and steps, in Rust or JSON;
//! - [`worker`]: the consumers that start and drive runs;
//! - [`driver`]: what a run does next ([`driver::decide`]) and doing it;
//! - [`run`]: a run as its journal tells it;
//! - [`actions`]: reading, starting, cancelling, retrying and approving runs;
//! - [`waits`]: waits for events; [`slots`]: concurrency limits; [`control`]: rate
//!   limits and debounce; [`legacy`]: runs of earlier releases.
//!
//! Flows meet services and agents on the bus only: a step reaches an agent by
//! invoking its subject, never by linking its crate.
//!
//! # Examples
//! ```no_run
//! use serde_json::json;
//! use weft_flows::{Flow, Step, worker};
//! # async fn run(bus: weft_bus::Bus) -> Result<(), weft_flows::FlowError> {
//! let triage = Flow::new("triage", "ticket.created".parse()?)
//!     .step(Step::invoke("classify", "tickets.classify".parse()?, json!("${trigger.payload}")))
//!     .step(Step::publish("announce", "ticket.triaged".parse()?, json!({
//!         "classification": "${steps.classify.output}"
//!     })));
//! let handle = worker::start(&bus, vec![triage], worker::WorkerConfig::default()).await?;
//! // … on shutdown:
//! handle.stop().await;
//! # Ok(()) }
//! ```

pub mod actions;
pub mod control;
pub mod definition;
pub mod driver;
pub mod error;
pub mod expr;
pub mod legacy;
pub mod metrics;
pub mod run;
pub mod slots;
pub mod template;
pub mod waits;
pub mod worker;

pub use actions::{RunFilter, Runs, Started};
pub use definition::{Decision, Flow, OnFailure, Schedule, Step, StepKind};
pub use error::FlowError;
pub use run::{Run, StepRun};
pub use weft_bus::runs::{RunStatus, StepStatus};

impl From<weft_bus::subject::SubjectError> for FlowError {
    fn from(e: weft_bus::subject::SubjectError) -> Self {
        FlowError::Definition(e.to_string())
    }
}
