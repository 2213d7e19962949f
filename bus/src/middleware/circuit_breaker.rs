//! [`CircuitBreakerLayer`]: stop calling a failing target for a while.
//!
//! One state machine per target:
//!
//! ```text
//!            failure_threshold consecutive failures
//!  closed ───────────────────────────────────────▶ open ──(open_for elapsed)──▶ half-open
//!    ▲                                              ▲                              │
//!    │                 trial call succeeds          │      trial call fails        │
//!    └──────────────────────────────────────────────┼──────────────────────────────┤
//!                                                   └──────────────────────────────┘
//! ```
//!
//! While open, calls fail at once with [`ErrorKind::Rejected`]; half-open lets one trial
//! call through and rejects the others until it ends. Failures are what says the target
//! is unhealthy: timeouts, no responders, transport errors, and error replies marked
//! retryable. A non-retryable error reply (e.g. `INVALID_REQUEST`) is a healthy target
//! saying no, and counts as a success.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus::IntCounterVec;
use tower::{Layer, Service};

use crate::error::{Error, ErrorKind};

/// A request a [`CircuitBreaker`] can guard: it names the target whose circuit it goes
/// through. Implemented by [`InvokeRequest`](crate::invoke::InvokeRequest) (its target).
pub trait CircuitKey {
    /// The target's name, e.g. `tickets.list`: one circuit per name.
    fn circuit_key(&self) -> String;
}

/// Settings of a [`CircuitBreakerLayer`]. Every field states its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit. Default 5.
    pub failure_threshold: u32,
    /// How long it stays open before a trial call. Default 10 s.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// The state of one target's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are rejected until `open_for` has passed.
    Open,
    /// One trial call is in flight (or allowed); others are rejected.
    HalfOpen,
}

impl BreakerState {
    fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Circuit {
    state: BreakerState,
    failures: u32,
    opened_at: Instant,
    trial_in_flight: bool,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            state: BreakerState::Closed,
            failures: 0,
            opened_at: Instant::now(),
            trial_in_flight: false,
        }
    }
}

type Circuits = Arc<Mutex<HashMap<String, Circuit>>>;

fn transitions() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        crate::observe::metrics::counter(
            "weft_circuit_transitions_total",
            "Circuit breaker state changes on outbound invokes, by target and new state",
            &["target", "state"],
        )
    })
}

/// A circuit breaker per invoke target. Clones of the layer, and every service it
/// makes, share the circuits, so one layer guards one caller's view of the mesh.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakerLayer {
    config: BreakerConfig,
    circuits: Circuits,
}

impl CircuitBreakerLayer {
    /// A breaker with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreakerLayer {
            config,
            circuits: Arc::default(),
        }
    }

    /// The current state of `target`'s circuit (closed if never called). An open
    /// circuit whose `open_for` has passed reads as half-open.
    pub fn state(&self, target: &str) -> BreakerState {
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        match circuits.get(target) {
            None => BreakerState::Closed,
            Some(c)
                if c.state == BreakerState::Open
                    && c.opened_at.elapsed() >= self.config.open_for =>
            {
                BreakerState::HalfOpen
            }
            Some(c) => c.state,
        }
    }
}

impl CircuitBreakerLayer {
    /// How long until `target`'s open circuit lets a trial call through: `None` when
    /// it is closed, `Some(ZERO)` when a trial may go now (or one is in flight). A
    /// caller refused with [`ErrorKind::Rejected`] waits this long instead of counting
    /// the refusal as a failed attempt (flow steps do).
    pub fn reopens_in(&self, target: &str) -> Option<Duration> {
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let c = circuits.get(target)?;
        match c.state {
            BreakerState::Closed => None,
            BreakerState::Open => Some(self.config.open_for.saturating_sub(c.opened_at.elapsed())),
            BreakerState::HalfOpen => Some(Duration::ZERO),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;
    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            config: self.config,
            circuits: self.circuits.clone(),
        }
    }
}

/// The service made by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    config: BreakerConfig,
    circuits: Circuits,
}

/// Whether an invoke error says the target is unhealthy.
fn is_failure(e: &Error) -> bool {
    e.is_retryable() && e.kind() != ErrorKind::Rejected
}

fn set(target: &str, c: &mut Circuit, state: BreakerState) {
    if c.state != state {
        c.state = state;
        transitions()
            .with_label_values(&[target, state.as_str()])
            .inc();
        tracing::info!(%target, state = state.as_str(), "circuit breaker");
    }
}

impl<S, R> Service<R> for CircuitBreaker<S>
where
    R: CircuitKey,
    S: Service<R, Error = Error>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let target = request.circuit_key();
        let trial = {
            let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
            let c = circuits.entry(target.clone()).or_default();
            match c.state {
                BreakerState::Closed => false,
                BreakerState::Open if c.opened_at.elapsed() >= self.config.open_for => {
                    set(&target, c, BreakerState::HalfOpen);
                    c.trial_in_flight = true;
                    true
                }
                BreakerState::HalfOpen if !c.trial_in_flight => {
                    c.trial_in_flight = true;
                    true
                }
                BreakerState::Open | BreakerState::HalfOpen => {
                    let wait = self.config.open_for.saturating_sub(c.opened_at.elapsed());
                    return Box::pin(std::future::ready(Err(Error::rejected(format!(
                        "circuit open for {target} after {} consecutive failures; next trial in {} ms",
                        c.failures,
                        wait.as_millis()
                    )))));
                }
            }
        };
        let future = self.inner.call(request);
        let (circuits, config) = (self.circuits.clone(), self.config);
        Box::pin(async move {
            let result = future.await;
            let mut circuits = circuits.lock().unwrap_or_else(|e| e.into_inner());
            let c = circuits.entry(target.clone()).or_default();
            if trial {
                c.trial_in_flight = false;
            }
            match &result {
                Err(e) if is_failure(e) => {
                    c.failures += 1;
                    if trial || c.failures >= config.failure_threshold {
                        c.opened_at = Instant::now();
                        set(&target, c, BreakerState::Open);
                    }
                }
                _ => {
                    c.failures = 0;
                    set(&target, c, BreakerState::Closed);
                }
            }
            result
        })
    }
}
