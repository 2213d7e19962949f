//! Rate limits and debounce of flows (see [`RateLimit`] and [`Debounce`]); concurrency
//! limits are in [`crate::slots`].
//!
//! A rate limit counts the runs of a key per window in KV `<prefix>_flows`, under
//! `rate.<flow>.<uuidv5 of the key>` (`{window, count}`, compare-and-set). A debounce
//! is one message schedule per key on the run queue
//! (`P.runq.sched.flow.<flow>.debounce_<uuidv5 of the key>`) whose body is the latest
//! trigger and whose target is `P.runq.flow.<flow>.debounced`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weft_bus::envelope::rfc3339;
use weft_bus::runs::{RunKind, RunQueue};
use weft_bus::{Envelope, Error, ErrorKind};

use crate::definition::{Debounce, RateLimit};

/// The text of a key template for `trigger` (a string as it is, another value as
/// JSON).
///
/// # Errors
/// The template's error (a path that does not resolve).
pub fn key_of(template: &Value, trigger: &Envelope) -> Result<String, String> {
    let context = json!({"trigger": trigger});
    Ok(match crate::template::render(template, &context)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        v => v.to_string(),
    })
}

fn hash(key: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes())
        .simple()
        .to_string()
}

/// Moves the debounce timer of `trigger`'s key to `period` from now, carrying
/// `trigger`.
///
/// # Errors
/// [`ErrorKind::InvalidRequest`]-like errors for a key that does not render;
/// [`ErrorKind::Publish`] when the run queue does not take the schedule.
pub(crate) async fn debounce(
    queue: &RunQueue,
    flow: &str,
    d: &Debounce,
    trigger: &Envelope,
) -> Result<(), Error> {
    let key = key_of(&d.key, trigger)
        .map_err(|e| Error::new(ErrorKind::InvalidConfig, format!("debounce key: {e}")))?;
    let at = time::OffsetDateTime::now_utc() + d.period;
    queue
        .schedule(
            RunKind::Flow,
            flow,
            &format!("debounce_{}", hash(&key)),
            &rfc3339(at),
            "debounced",
            trigger,
        )
        .await
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Window {
    key: String,
    window: u64,
    count: u32,
}

/// Counts a run of `trigger`'s key against the rate limit: `Ok(None)` when it may
/// start, `Ok(Some(why))` when the window is full.
///
/// # Errors
/// [`ErrorKind::Kv`] when the bucket fails; [`ErrorKind::InvalidConfig`] for a key that
/// does not render.
pub(crate) async fn admit(
    store: &async_nats::jetstream::kv::Store,
    flow: &str,
    limit: &RateLimit,
    trigger: &Envelope,
) -> Result<Option<String>, Error> {
    let key = key_of(&limit.key, trigger)
        .map_err(|e| Error::new(ErrorKind::InvalidConfig, format!("rate limit key: {e}")))?;
    let k = format!("rate.{flow}.{}", hash(&key));
    let period_ms = limit.period.as_millis().max(1) as u64;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let window = now_ms / period_ms;
    weft_bus::kv::update(store, &k, |w: &mut Window| {
        if w.window != window {
            *w = Window {
                key: key.clone(),
                window,
                count: 0,
            };
        }
        if w.count >= limit.limit {
            let why = format!(
                "rate limited: {} runs per {} for key {key:?}",
                limit.limit,
                humantime::format_duration(limit.period)
            );
            return (false, Some(why));
        }
        w.count += 1;
        (true, None)
    })
    .await
}
