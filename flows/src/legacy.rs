//! Runs of earlier releases, kept in the KV bucket `<prefix>_flows` under
//! `<flow>.<run id>` (one checkpoint per run), and their migration into the journal.
//!
//! A worker migrates the bucket's runs of each flow it starts, once: every run that
//! has no journal entries gets its history written as entries (`run.started` with
//! cause `migration`, then per step `step.started` and `step.completed` or
//! `step.failed`, then `run.completed` or `run.failed`). The first entry expects
//! subject sequence 0 and every entry has its message id, so two workers migrating at
//! once write each run once. A run that was running resumes from the journal when its
//! trigger is delivered again, at its first unfinished step. The bucket is left as it
//! was (read only), for a downgrade; `weft flow runs` reads only the journal.

use serde::Deserialize;
use serde_json::Value;
use weft_bus::Envelope;
use weft_bus::envelope::{ErrorCode, ErrorPayload};
use weft_bus::runs::{Entry, EntryEvent, Journal, RunKind, RunRef};

use crate::definition::Flow;
use crate::error::FlowError;

/// A run as the KV checkpoints of earlier releases held it.
#[derive(Debug, Clone, Deserialize)]
struct LegacyRun {
    id: String,
    flow: String,
    status: String,
    steps: Vec<LegacyStep>,
    #[serde(default)]
    error: Option<String>,
    trigger: Envelope,
}

#[derive(Debug, Clone, Deserialize)]
struct LegacyStep {
    name: String,
    status: String,
    attempts: u32,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

/// Writes the journal entries of `flow`'s runs in the KV bucket that have none; returns
/// how many runs it migrated.
///
/// # Errors
/// [`FlowError::Store`] when the bucket cannot be read; [`FlowError::Bus`] when an
/// append fails.
pub async fn migrate(
    store: &async_nats::jetstream::kv::Store,
    journal: &Journal,
    flow: &Flow,
) -> Result<usize, FlowError> {
    let runs: Vec<(String, LegacyRun)> =
        weft_bus::kv::read_all(store, &format!("{}.", flow.name)).await?;
    let mut migrated = 0;
    for (_, run) in runs {
        let r = RunRef::new(RunKind::Flow, &run.flow, &run.id)?;
        if !journal.read(&r).await?.is_empty() {
            continue;
        }
        let mut last = 0;
        for (i, entry) in entries(&r, &run, flow).into_iter().enumerate() {
            let expected = if i == 0 { Some(0) } else { Some(last) };
            match journal.append(&entry, expected).await {
                Ok(a) => last = a.seq,
                // Another worker migrates it.
                Err(weft_bus::runs::AppendError::Conflict { .. }) => break,
                Err(weft_bus::runs::AppendError::Bus(e)) => return Err(e.into()),
            }
        }
        migrated += 1;
    }
    if migrated > 0 {
        tracing::info!(flow = %flow.name, runs = migrated, bucket = %store.name, "migrated runs from KV into the journal");
    }
    Ok(migrated)
}

/// The entries telling `run`'s history, in order.
fn entries(r: &RunRef, run: &LegacyRun, flow: &Flow) -> Vec<Entry> {
    let mut out = vec![Entry::of_run(
        r,
        1,
        EntryEvent::RunStarted {
            cause: "migration".into(),
            input: serde_json::to_value(&run.trigger).unwrap_or_default(),
            definition: serde_json::to_value(flow).unwrap_or_default(),
        },
    )];
    for step in &run.steps {
        if step.attempts == 0 || step.status == "pending" {
            break;
        }
        let key = crate::worker::idempotency_key(&run.id, &step.name);
        out.push(Entry::new(
            r,
            &step.name,
            1,
            EntryEvent::StepStarted {
                input: Value::Null,
                idempotency_key: key,
            },
        ));
        match step.status.as_str() {
            "completed" => out.push(Entry::new(
                r,
                &step.name,
                1,
                EntryEvent::StepCompleted {
                    output: step.output.clone().unwrap_or(Value::Null),
                    duration_ms: 0,
                },
            )),
            "failed" if run.status == "failed" => out.push(Entry::new(
                r,
                &step.name,
                1,
                EntryEvent::StepFailed {
                    error: ErrorPayload::new(
                        ErrorCode::Other("STEP_FAILED".into()),
                        step.error.clone().unwrap_or_default(),
                    ),
                    retry_at: None,
                },
            )),
            // Running, or failed with attempts left: the next delivery runs it again.
            _ => {}
        }
    }
    match run.status.as_str() {
        "completed" => out.push(Entry::of_run(
            r,
            1,
            EntryEvent::RunCompleted {
                output: run
                    .steps
                    .last()
                    .and_then(|s| s.output.clone())
                    .unwrap_or(Value::Null),
            },
        )),
        "failed" => out.push(Entry::of_run(
            r,
            1,
            EntryEvent::RunFailed {
                error: ErrorPayload::new(
                    ErrorCode::Other("STEP_FAILED".into()),
                    run.error.clone().unwrap_or_default(),
                ),
            },
        )),
        _ => {}
    }
    out
}
