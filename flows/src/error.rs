//! The flow error type.

/// What can go wrong in the flow engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// A flow definition is invalid.
    #[error("{0}")]
    Definition(String),
    /// Another worker changed the run since it was read (optimistic concurrency on the
    /// KV revision); this worker backs off.
    #[error("run {run} of flow {flow} was changed by another worker")]
    Conflict {
        /// Flow name.
        flow: String,
        /// Run id.
        run: String,
    },
    /// The run store (KV) failed.
    #[error("flow store: {0}")]
    Store(String),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] weft_bus::Error),
    /// A run asked to resume has not failed.
    #[error("run {run} is {status}, not failed: only failed runs resume")]
    NotFailed {
        /// Run id.
        run: String,
        /// Its status.
        status: &'static str,
    },
}
