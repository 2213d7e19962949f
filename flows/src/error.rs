//! The flow error type.

/// What can go wrong in the flow engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// A flow definition is invalid.
    #[error("{0}")]
    Definition(String),
    /// A run's journal or the waits bucket could not be read as expected (entries that
    /// do not fold, a run that kept moving under an action).
    #[error("flow store: {0}")]
    Store(String),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] weft_bus::Error),
    /// No run has this id.
    #[error("no run {0}")]
    NotFound(String),
    /// A run asked to retry has not failed.
    #[error("run {run} is {status}, not failed: only failed runs are retried")]
    NotFailed {
        /// Run id.
        run: String,
        /// Its status.
        status: String,
    },
    /// A failed run whose compensations ran is not retried: what it did was undone.
    #[error(
        "run {0} failed and its compensation steps undid what it did: start a new run instead of retrying it"
    )]
    Compensated(String),
    /// The run ended (or is being cancelled): the action does not apply.
    #[error("run {run} is {status}: it cannot be {action}")]
    NotActive {
        /// Run id.
        run: String,
        /// Its status.
        status: String,
        /// What was asked, e.g. `cancelled`.
        action: String,
    },
    /// The step does not wait for an approval.
    #[error("step {step} of run {run} does not wait for an approval: {why}")]
    NotWaiting {
        /// Run id.
        run: String,
        /// Step name.
        step: String,
        /// Why not.
        why: String,
    },
}
