//! [`RecoverLayer`]: a panic becomes an error.

use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::{LayerError, panic_message};

/// Turns a panic inside the wrapped handler into [`LayerError::panicked`], so one bad
/// request cannot kill a serving task or go unanswered. No configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoverLayer;

impl<S> Layer<S> for RecoverLayer {
    type Service = Recover<S>;
    fn layer(&self, inner: S) -> Recover<S> {
        Recover { inner }
    }
}

/// The service made by [`RecoverLayer`].
#[derive(Debug, Clone)]
pub struct Recover<S> {
    inner: S,
}

impl<S, R> Service<R> for Recover<S>
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
        // A panic while building the future is caught as well as one while polling it.
        let future = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)));
        Box::pin(async move {
            match future {
                Ok(f) => AssertUnwindSafe(f)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|p| Err(S::Error::panicked(panic_message(p.as_ref())))),
                Err(p) => Err(S::Error::panicked(panic_message(p.as_ref()))),
            }
        })
    }
}
