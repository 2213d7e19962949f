//! Retry policies of durable subscribers (DESIGN §6): how long JetStream waits before it
//! redelivers a message whose handler failed with a retryable error.
//!
//! A policy does not loop in the process: the consumer naks the message with the
//! policy's delay and JetStream redelivers it (possibly to another instance). The
//! delay depends only on the attempt that failed (JetStream's delivery count), so any
//! instance computes the same schedule.
//!
//! | policy | delay after failed attempt `n` (from 1) |
//! |---|---|
//! | [`RetryPolicy::None`] | no retry: the message is dead-lettered at once |
//! | [`RetryPolicy::Fixed`] | always the same delay |
//! | [`RetryPolicy::Exponential`] | `min(initial × base^(n-1), max)`, then jittered (never above `max`) |
//!
//! Policies are serde-able, so definitions in JSON (flows) can carry them:
//!
//! ```
//! use std::time::Duration;
//! use weft_bus::retry::{Backoff, Jitter, RetryPolicy};
//! let p: RetryPolicy = serde_json::from_str(
//!     r#"{"kind": "exponential", "initial_ms": 500, "max_ms": 30000, "jitter": "none"}"#,
//! ).unwrap();
//! assert_eq!(p.delay(1), Some(Duration::from_millis(500)));
//! assert_eq!(p.delay(3), Some(Duration::from_millis(2000)));
//! assert_eq!(p.delay(10), Some(Duration::from_secs(30)));
//! assert_eq!(serde_json::to_value(RetryPolicy::fixed(Duration::from_secs(2))).unwrap(),
//!            serde_json::json!({"kind": "fixed", "delay_ms": 2000}));
//! assert!(serde_json::from_str::<RetryPolicy>(
//!     r#"{"kind": "exponential", "initial_ms": 5000, "max_ms": 1000}"#).is_err());
//! ```
//!
//! The exponential schedule and its jitter are computed by the `retry-policies` crate.

use std::time::{Duration, SystemTime};

use retry_policies::RetryPolicy as _;
use retry_policies::policies::ExponentialBackoff;
use serde::{Deserialize, Serialize};

/// An invalid retry policy, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry policy: {0}")]
pub struct RetryPolicyError(String);

/// An [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) error.
impl From<RetryPolicyError> for crate::Error {
    fn from(e: RetryPolicyError) -> Self {
        crate::Error::new(crate::ErrorKind::InvalidConfig, e.to_string())
    }
}

/// How a randomised part is added to an exponential delay, so that many messages that
/// failed together are not all retried at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// The computed delay exactly.
    None,
    /// Uniform between 0 and the computed delay.
    Full,
    /// Uniform between half the initial delay and the computed delay (the default:
    /// spreads retries without retrying almost at once).
    #[default]
    Bounded,
}

impl From<Jitter> for retry_policies::Jitter {
    fn from(j: Jitter) -> Self {
        match j {
            Jitter::None => retry_policies::Jitter::None,
            Jitter::Full => retry_policies::Jitter::Full,
            Jitter::Bounded => retry_policies::Jitter::Bounded,
        }
    }
}

/// An exponential schedule: `initial × base^(n-1)` after failed attempt `n`, capped at
/// `max`, then jittered. Built valid ([`Backoff::new`]), so computing a delay never
/// fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: u32,
    jitter: Jitter,
}

impl Backoff {
    /// A schedule from `initial` up to `max`, base 2, [`Jitter::Bounded`].
    ///
    /// # Errors
    /// [`RetryPolicyError`] when `initial` is zero or greater than `max`.
    pub fn new(initial: Duration, max: Duration) -> Result<Self, RetryPolicyError> {
        if initial.is_zero() {
            return Err(RetryPolicyError(
                "the initial delay must be above 0 ms".into(),
            ));
        }
        if initial > max {
            return Err(RetryPolicyError(format!(
                "the initial delay ({} ms) is greater than the maximum delay ({} ms)",
                initial.as_millis(),
                max.as_millis()
            )));
        }
        Ok(Backoff {
            initial,
            max,
            base: 2,
            jitter: Jitter::default(),
        })
    }

    /// The growth factor per attempt. Default 2.
    ///
    /// # Errors
    /// [`RetryPolicyError`] when `base` is 0.
    pub fn base(mut self, base: u32) -> Result<Self, RetryPolicyError> {
        if base == 0 {
            return Err(RetryPolicyError("the base must be at least 1".into()));
        }
        self.base = base;
        Ok(self)
    }

    /// The jitter. Default [`Jitter::Bounded`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay after the first failure (before jitter).
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The growth factor.
    pub fn growth(&self) -> u32 {
        self.base
    }

    /// The jitter.
    pub fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    fn delay(&self, attempt: u32) -> Duration {
        let policy = ExponentialBackoff::builder()
            .retry_bounds(self.initial, self.max)
            .base(self.base)
            .jitter(self.jitter.into())
            .build_with_max_retries(u32::MAX);
        // The crate answers with a wall-clock instant; the delay is that minus the time
        // just before the call, a few µs long, hence the floor to whole milliseconds.
        let now = SystemTime::now();
        match policy.should_retry(now, attempt.saturating_sub(1)) {
            retry_policies::RetryDecision::Retry { execute_after } => {
                let d = execute_after.duration_since(now).unwrap_or_default();
                Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .min(self.max)
            }
            // Not reached with u32::MAX retries allowed; the cap is the safe answer.
            retry_policies::RetryDecision::DoNotRetry => self.max,
        }
    }
}

/// When a message whose handler failed with a retryable error is delivered again.
/// Serialised as `{"kind": "none"}`, `{"kind": "fixed", "delay_ms": N}` or
/// `{"kind": "exponential", "initial_ms": N, "max_ms": N, "base": 2, "jitter":
/// "bounded"}` (`base` and `jitter` optional; jitter `none`, `full` or `bounded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Repr", into = "Repr")]
pub enum RetryPolicy {
    /// No retry: a retryable failure is dead-lettered at once, like a permanent one.
    None,
    /// The same delay after every failure.
    Fixed(Duration),
    /// Growing delays ([`Backoff`]).
    Exponential(Backoff),
}

impl RetryPolicy {
    /// [`RetryPolicy::Fixed`] with `delay`.
    pub fn fixed(delay: Duration) -> Self {
        RetryPolicy::Fixed(delay)
    }

    /// [`RetryPolicy::Exponential`] from `initial` up to `max`, base 2, bounded jitter.
    ///
    /// # Errors
    /// As [`Backoff::new`].
    pub fn exponential(initial: Duration, max: Duration) -> Result<Self, RetryPolicyError> {
        Backoff::new(initial, max).map(RetryPolicy::Exponential)
    }

    /// The delay before the next delivery after attempt `attempt` (from 1) failed, or
    /// `None` when the policy does not retry. Attempts below 1 count as 1. Exponential
    /// delays have millisecond resolution.
    pub fn delay(&self, attempt: i64) -> Option<Duration> {
        let attempt = u32::try_from(attempt.max(1)).unwrap_or(u32::MAX);
        match self {
            RetryPolicy::None => None,
            RetryPolicy::Fixed(d) => Some(*d),
            RetryPolicy::Exponential(b) => Some(b.delay(attempt)),
        }
    }
}

/// The default: exponential from 1 s up to 60 s, base 2, bounded jitter.
impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::Exponential(Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            base: 2,
            jitter: Jitter::Bounded,
        })
    }
}

/// The wire form of a [`RetryPolicy`] (milliseconds as integers).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Repr {
    None,
    Fixed {
        delay_ms: u64,
    },
    Exponential {
        initial_ms: u64,
        max_ms: u64,
        #[serde(default = "two")]
        base: u32,
        #[serde(default)]
        jitter: Jitter,
    },
}

fn two() -> u32 {
    2
}

impl TryFrom<Repr> for RetryPolicy {
    type Error = RetryPolicyError;
    fn try_from(r: Repr) -> Result<Self, RetryPolicyError> {
        Ok(match r {
            Repr::None => RetryPolicy::None,
            Repr::Fixed { delay_ms } => RetryPolicy::Fixed(Duration::from_millis(delay_ms)),
            Repr::Exponential {
                initial_ms,
                max_ms,
                base,
                jitter,
            } => RetryPolicy::Exponential(
                Backoff::new(
                    Duration::from_millis(initial_ms),
                    Duration::from_millis(max_ms),
                )?
                .base(base)?
                .jitter(jitter),
            ),
        })
    }
}

impl From<RetryPolicy> for Repr {
    fn from(p: RetryPolicy) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match p {
            RetryPolicy::None => Repr::None,
            RetryPolicy::Fixed(d) => Repr::Fixed { delay_ms: ms(d) },
            RetryPolicy::Exponential(b) => Repr::Exponential {
                initial_ms: ms(b.initial),
                max_ms: ms(b.max),
                base: b.base,
                jitter: b.jitter,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn none_never_retries_and_fixed_always_waits_the_same() {
        assert_eq!(RetryPolicy::None.delay(1), None);
        let f = RetryPolicy::fixed(MS(250));
        assert_eq!(f.delay(1), Some(MS(250)));
        assert_eq!(f.delay(40), Some(MS(250)));
    }

    #[test]
    fn exponential_without_jitter_doubles_up_to_the_cap() {
        let p = RetryPolicy::Exponential(
            Backoff::new(MS(100), MS(1000))
                .unwrap()
                .jitter(Jitter::None),
        );
        let delays: Vec<_> = (1..=6).map(|n| p.delay(n).unwrap()).collect();
        for (got, want) in delays.into_iter().zip([100, 200, 400, 800, 1000, 1000]) {
            assert_close(got, MS(want));
        }
        // Huge attempt numbers saturate instead of overflowing.
        assert_eq!(p.delay(i64::MAX), Some(MS(1000)));
        assert_close(p.delay(0).unwrap(), MS(100));
    }

    /// Equal up to 2 ms (the delay is read off a wall-clock instant).
    fn assert_close(got: Duration, want: Duration) {
        assert!(
            got <= want && want - got <= MS(2),
            "got {got:?}, want {want:?}"
        );
    }

    #[test]
    fn jitter_stays_inside_its_bounds_and_never_exceeds_the_cap() {
        let full = Backoff::new(MS(100), MS(1000))
            .unwrap()
            .jitter(Jitter::Full);
        let bounded = Backoff::new(MS(100), MS(1000)).unwrap();
        for n in 1..=8u32 {
            let plain = MS(100 * 2u64.pow(n - 1)).min(MS(1000));
            for _ in 0..50 {
                let f = full.delay(n);
                assert!(f <= plain, "full jitter {f:?} above {plain:?}");
                let b = bounded.delay(n);
                assert!(b >= MS(50) && b <= plain, "bounded jitter {b:?}");
            }
        }
    }

    #[test]
    fn base_three_grows_faster() {
        let p = Backoff::new(MS(10), MS(10_000))
            .unwrap()
            .base(3)
            .unwrap()
            .jitter(Jitter::None);
        assert_close(p.delay(3), MS(90));
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        assert!(
            Backoff::new(MS(0), MS(10))
                .unwrap_err()
                .to_string()
                .contains("above 0")
        );
        assert!(
            Backoff::new(MS(20), MS(10))
                .unwrap_err()
                .to_string()
                .contains("greater than the maximum")
        );
        assert!(Backoff::new(MS(1), MS(10)).unwrap().base(0).is_err());
        let e = serde_json::from_str::<RetryPolicy>(r#"{"kind":"fixed","delay":5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("delay"), "{e}");
        let e = serde_json::from_str::<RetryPolicy>(r#"{"kind":"sometimes"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn policies_round_trip_through_json() {
        for p in [
            RetryPolicy::None,
            RetryPolicy::fixed(MS(1500)),
            RetryPolicy::default(),
            RetryPolicy::Exponential(
                Backoff::new(MS(5), MS(50))
                    .unwrap()
                    .base(3)
                    .unwrap()
                    .jitter(Jitter::Full),
            ),
        ] {
            let text = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<RetryPolicy>(&text).unwrap(), p);
        }
        assert_eq!(
            serde_json::to_value(RetryPolicy::default()).unwrap(),
            serde_json::json!({"kind": "exponential", "initial_ms": 1000, "max_ms": 60000, "base": 2, "jitter": "bounded"})
        );
    }
}
