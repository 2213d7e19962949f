//! # weft-flows
//!
//! The durable workflow engine. A [`Flow`] is triggered by events on
//! `P.events.<pattern>` and runs ordered [steps](Step) (invoke a service, ask an agent,
//! publish an event). Each step's result is [checkpointed](checkpoint) in the KV bucket
//! `<prefix>_flows` before the next step starts, so a [run] resumes after a crash
//! without re-running finished steps.
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

pub mod checkpoint;
pub mod definition;
pub mod error;
pub mod expr;
pub mod metrics;
pub mod run;
pub mod template;
pub mod worker;

pub use checkpoint::RunStore;
pub use definition::{Flow, Step, StepKind};
pub use error::FlowError;
pub use run::{Run, RunStatus, StepStatus};

impl From<weft_bus::subject::SubjectError> for FlowError {
    fn from(e: weft_bus::subject::SubjectError) -> Self {
        FlowError::Definition(e.to_string())
    }
}
