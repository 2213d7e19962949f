//! Middleware: cross-cutting behaviour as [tower] [`Layer`]s around handlers.
//!
//! Every handler in the mesh is a tower [`Service`]:
//!
//! | handler | request | response | error |
//! |---|---|---|---|
//! | invoke endpoint ([`crate::service`]) | [`crate::service::Request`] | `serde_json::Value` | [`ErrorPayload`] |
//! | durable subscriber ([`crate::durable::consumer`]) | [`crate::durable::consumer::Delivery`] | `()` | [`DeliveryError`](crate::durable::consumer::DeliveryError) |
//! | outbound invoke ([`crate::invoke::Invoker`]) | [`crate::invoke::InvokeRequest`] | [`crate::Envelope`] | [`crate::Error`] |
//!
//! The layers here work on all of them, because each error type says how to express
//! the failures a layer makes ([`LayerError`]):
//!
//! | layer | does |
//! |---|---|
//! | [`RecoverLayer`] | a panic in the handler becomes an error (retryable) instead of killing the task |
//! | [`TimeoutLayer`] | a handler that takes longer than its budget fails with a timeout |
//! | [`TraceLayer`] | runs each call inside a `tracing` span made from the request (logging and tracing) |
//! | [`ConcurrencyLimitLayer`] | at most N calls at once; callers wait (tower's own layer) |
//! | [`CircuitBreakerLayer`] | outbound invokes: stops calling a failing target for a while, then tries one call |
//!
//! Services add their own layers the same way ([`crate::service::Service::layer`]); any
//! tower layer whose service keeps the request, response and error types fits.
//!
//! # Examples
//! A layer of your own, written with [`tower::layer::layer_fn`] and
//! [`tower::service_fn`]-style code, or any published tower layer:
//! ```no_run
//! use std::time::Duration;
//! use weft_bus::middleware::TimeoutLayer;
//! use weft_bus::service::{Endpoint, Request, Service};
//! # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
//! let handle = Service::new("slowpoke", "1.0.0")
//!     .endpoint(Endpoint::new("work", |_req: Request| async { Ok(serde_json::json!(1)) }))
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)))
//!     .serve(&bus)
//!     .await?;
//! # Ok(()) }
//! ```

mod circuit_breaker;
mod recover;
mod timeout;
mod trace;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use circuit_breaker::{
    BreakerConfig, BreakerState, CircuitBreaker, CircuitBreakerLayer, CircuitKey,
};
pub use recover::{Recover, RecoverLayer};
pub use timeout::{Timeout, TimeoutLayer};
pub use tower::limit::ConcurrencyLimitLayer;
pub use tower::{Layer, Service, ServiceBuilder, ServiceExt};
pub use trace::{Trace, TraceLayer};

use crate::envelope::{ErrorCode, ErrorPayload};
use crate::error::{Error, ErrorKind};

/// A boxed, sendable future: what the crate's handlers ([`crate::service::Handler`],
/// [`crate::durable::consumer::DeliveryHandler`]) return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How an error type expresses the failures the standard layers produce.
pub trait LayerError: Send + 'static {
    /// The call took longer than `after`.
    fn timed_out(after: Duration) -> Self;
    /// The handler panicked with `message`.
    fn panicked(message: String) -> Self;
    /// The call was not made: `reason` (e.g. a circuit is open).
    fn rejected(reason: String) -> Self;
}

/// Invoke handlers answer with an error envelope.
impl LayerError for ErrorPayload {
    /// `AGENT_TIMEOUT`, retryable.
    fn timed_out(after: Duration) -> Self {
        ErrorPayload::new(
            ErrorCode::AgentTimeout,
            format!("the handler did not finish within {} ms", after.as_millis()),
        )
        .retryable()
    }
    /// `AGENT_UNAVAILABLE`, retryable, with the panic message as the cause.
    fn panicked(message: String) -> Self {
        ErrorPayload::new(
            ErrorCode::AgentUnavailable,
            "the handler failed unexpectedly",
        )
        .retryable()
        .with_cause(format!("panic: {message}"))
    }
    /// `BACKPRESSURE_DROP`, retryable.
    fn rejected(reason: String) -> Self {
        ErrorPayload::new(ErrorCode::BackpressureDrop, reason).retryable()
    }
}

/// Outbound invokes.
impl LayerError for Error {
    /// [`ErrorKind::Timeout`].
    fn timed_out(after: Duration) -> Self {
        Error::new(
            ErrorKind::Timeout,
            format!("no answer within {} ms", after.as_millis()),
        )
    }
    /// [`ErrorKind::Other`].
    fn panicked(message: String) -> Self {
        Error::new(ErrorKind::Other, format!("panicked: {message}"))
    }
    /// [`ErrorKind::Rejected`].
    fn rejected(reason: String) -> Self {
        Error::new(ErrorKind::Rejected, reason)
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
