//! [`TimeoutLayer`]: a time budget per call.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::LayerError;

/// Fails a call that takes longer than the budget with [`LayerError::timed_out`]; the
/// handler's future is dropped (cancelled) at that point.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    budget: Duration,
}

impl TimeoutLayer {
    /// A budget of `budget` per call.
    pub fn new(budget: Duration) -> Self {
        TimeoutLayer { budget }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            budget: self.budget,
        }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    budget: Duration,
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
    S::Error: LayerError,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let budget = self.budget;
        let future = self.inner.call(request);
        Box::pin(async move {
            tokio::time::timeout(budget, future)
                .await
                .unwrap_or_else(|_| Err(S::Error::timed_out(budget)))
        })
    }
}
