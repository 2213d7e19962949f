//! Waits for events (`wait_for_event` steps).
//!
//! Before a step journals that it waits, it writes its wait into the KV bucket
//! `<prefix>_flows` under `wait.<flow>.<run_id>.<step>` (`{"event": type}`), so no event
//! published after the wait began is missed. Each worker of a flow with such steps
//! consumes the events of their types through the durable consumer `wait_<flow>`; for
//! each event it reads the flow's waits of that type, and for each run whose step
//! still waits and whose `match` expression gives `true` over `{event, trigger, steps,
//! run}`, journals the step's completion with the event as its output (expected last
//! sequence: a timeout or a cancel that came first wins) and wakes the run. A wait that
//! ends by a timeout or a cancel is deleted by the worker that journals it (and, should
//! that fail, when the next event of its type comes).

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use serde_json::json;
use weft_bus::Error;
use weft_bus::consumer::{Delivery, DeliveryError};
use weft_bus::runs::{Entry, EntryEvent, Journal, RunKind, RunQueue, RunRef, StepStatus};
use weft_bus::subject::EventType;

use crate::definition::{Flow, StepKind};
use crate::run::Run;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wait {
    event: String,
}

fn key(r: &RunRef, step: &str) -> String {
    format!("wait.{}.{}.{step}", r.name, r.id)
}

/// Writes the wait of `step` of run `r` for events of type `event`.
///
/// # Errors
/// [`weft_bus::ErrorKind::JetStream`] when the bucket cannot be written.
pub async fn register(
    kv: &kv::Store,
    r: &RunRef,
    step: &str,
    event: &EventType,
) -> Result<(), Error> {
    let value = serde_json::to_vec(&Wait {
        event: event.to_string(),
    })
    .expect("a wait encodes");
    kv.put(key(r, step), value.into())
        .await
        .map(drop)
        .map_err(|e| {
            Error::with_source(
                weft_bus::ErrorKind::JetStream,
                format!("cannot write the wait of run {r}"),
                e,
            )
        })
}

/// Deletes the wait of `step` of run `r` (its wait ended by a timeout or a cancel); a
/// failure is only logged: a stale wait is deleted when the next event of its type
/// comes.
pub async fn forget(kv: &kv::Store, r: &RunRef, step: &str) {
    if let Err(e) = kv.purge(key(r, step)).await {
        tracing::debug!(run = %r, step, error = %e, "cannot delete a wait");
    }
}

/// The event types `flow`'s steps wait for.
pub fn event_types(flow: &Flow) -> Vec<EventType> {
    let mut types: Vec<EventType> = Vec::new();
    for s in &flow.steps {
        if let StepKind::WaitForEvent(w) = &s.kind
            && !types.contains(&w.event)
        {
            types.push(w.event.clone());
        }
    }
    types
}

/// Handles one event for the waits of `flow`: completes every matching wait.
pub(crate) async fn on_event(
    kv: &kv::Store,
    journal: &Journal,
    queue: &RunQueue,
    flow: &Flow,
    delivery: Delivery,
) -> Result<(), DeliveryError> {
    let retry = |e: &dyn std::fmt::Display| DeliveryError::Retry(e.to_string());
    let event = &delivery.envelope;
    let waits: Vec<(String, Wait)> = weft_bus::kv::read_all(kv, &format!("wait.{}.", flow.name))
        .await
        .map_err(|e| retry(&e))?;
    for (k, wait) in waits {
        if wait.event != event.event_type {
            continue;
        }
        let mut parts = k.splitn(4, '.').skip(2);
        let (Some(run_id), Some(step)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(r) = RunRef::new(RunKind::Flow, &flow.name, run_id) else {
            continue;
        };
        match complete_if_matching(journal, queue, &r, step, event).await {
            Ok(Outcome::Waiting) => {}
            Ok(Outcome::Done) => {
                if let Err(e) = kv.purge(&k).await {
                    tracing::debug!(wait = %k, error = %e, "cannot delete a wait; the next event of its type tries again");
                }
            }
            // The step is about to journal its wait: look at this event again shortly.
            Ok(Outcome::NotYet) => {
                return Err(DeliveryError::RetryAfter(
                    std::time::Duration::from_millis(200),
                    format!("run {r} is starting its wait"),
                ));
            }
            Err(e) => return Err(retry(&e)),
        }
    }
    Ok(())
}

enum Outcome {
    /// Still waiting (the event did not match).
    Waiting,
    /// The wait is over (this event, or something before it).
    Done,
    /// The step registered its wait but has not journaled it yet.
    NotYet,
}

async fn complete_if_matching(
    journal: &Journal,
    queue: &RunQueue,
    r: &RunRef,
    step: &str,
    event: &weft_bus::Envelope,
) -> Result<Outcome, Error> {
    for _ in 0..5 {
        let Some(run) = Run::from_entries(&journal.read(r).await?)
            .map_err(|e| Error::new(weft_bus::ErrorKind::Envelope, e.to_string()))?
        else {
            return Ok(Outcome::NotYet);
        };
        let Some(s) = run.step(step) else {
            return Ok(Outcome::Done);
        };
        let attempt = match s.status {
            StepStatus::Waiting { attempt } if s.waiting_for.as_deref() == Some("event") => attempt,
            StepStatus::Running { .. } => return Ok(Outcome::NotYet),
            _ => return Ok(Outcome::Done),
        };
        let flow = Flow::from_value(run.definition().clone())
            .map_err(|e| Error::new(weft_bus::ErrorKind::Envelope, e.to_string()))?;
        let Some(StepKind::WaitForEvent(w)) = flow.find_step(step).map(|s| &s.kind) else {
            return Ok(Outcome::Done);
        };
        if let Some(expr) = &w.matches {
            let mut context = run.context();
            context["event"] = json!(event);
            if expr.run(&context) != Ok(json!(true)) {
                return Ok(Outcome::Waiting);
            }
        }
        let entry = Entry::new(
            r,
            step,
            attempt,
            EntryEvent::StepCompleted {
                output: json!(event),
                duration_ms: 0,
            },
        );
        match journal.append(&entry, Some(run.last_seq)).await {
            Ok(a) => {
                queue.wake(r, &format!("s{}", a.seq)).await?;
                return Ok(Outcome::Done);
            }
            Err(weft_bus::runs::AppendError::Conflict { .. }) => continue,
            Err(weft_bus::runs::AppendError::Bus(e)) => return Err(e),
        }
    }
    Ok(Outcome::Waiting)
}
