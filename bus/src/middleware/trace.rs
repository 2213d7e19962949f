//! [`TraceLayer`]: each call inside a `tracing` span.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

/// Runs each call inside the span `make_span(&request)` returns, and logs its end
/// (debug on success, info on failure) with the elapsed time in ms. A failed call
/// marks the span failed (status ERROR, `error.type`; see
/// [`crate::observe::trace::record_error`]). Logging and
/// tracing in one layer: spans are exported when an OpenTelemetry subscriber is
/// installed.
pub struct TraceLayer<R> {
    make_span: Arc<dyn Fn(&R) -> tracing::Span + Send + Sync>,
}

impl<R> Clone for TraceLayer<R> {
    fn clone(&self) -> Self {
        TraceLayer {
            make_span: self.make_span.clone(),
        }
    }
}

impl<R> TraceLayer<R> {
    /// Spans made by `make_span`, e.g.
    /// `|req: &Request| tracing::info_span!("handle", endpoint = %req.endpoint)`.
    pub fn new(make_span: impl Fn(&R) -> tracing::Span + Send + Sync + 'static) -> Self {
        TraceLayer {
            make_span: Arc::new(make_span),
        }
    }
}

impl<S, R> Layer<S> for TraceLayer<R> {
    type Service = Trace<S, R>;
    fn layer(&self, inner: S) -> Trace<S, R> {
        Trace {
            inner,
            make_span: self.make_span.clone(),
        }
    }
}

/// The service made by [`TraceLayer`].
pub struct Trace<S, R> {
    inner: S,
    make_span: Arc<dyn Fn(&R) -> tracing::Span + Send + Sync>,
}

impl<S: Clone, R> Clone for Trace<S, R> {
    fn clone(&self) -> Self {
        Trace {
            inner: self.inner.clone(),
            make_span: self.make_span.clone(),
        }
    }
}

impl<S, R> Service<R> for Trace<S, R>
where
    S: Service<R>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Debug + std::fmt::Display + crate::observe::trace::ErrorType,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let span = (self.make_span)(&request);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let this = span.clone();
        Box::pin(
            async move {
                let started = Instant::now();
                let result = future.await;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                match &result {
                    Ok(_) => tracing::debug!(elapsed_ms = ms, "done"),
                    Err(e) => {
                        crate::observe::trace::record_error(&this, e);
                        tracing::info!(elapsed_ms = ms, error = ?e, "failed")
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}
