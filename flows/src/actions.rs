//! Reading runs and acting on them from outside a worker: what `weft flow` and the
//! gateway's `/v1/flows` and `/v1/runs` call.
//!
//! Every action reads the run, checks that the action fits its state, appends its
//! entry with the run's last sequence as the expected last subject sequence (so it
//! cannot land on a run that moved on: it reads again and decides again), then wakes
//! a worker of the flow through the run queue. Nothing waits in this process.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use weft_bus::Bus;
use weft_bus::runs::{
    AppendError, Entry, EntryEvent, Journal, RunKind, RunQueue, RunRef, RunStatus, StepStatus,
};

use crate::error::FlowError;
use crate::run::{Run, run_id};

/// The runs of a mesh: reads and actions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runs {
    journal: Journal,
    queue: RunQueue,
}

/// A run asked for by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Started {
    /// The run id.
    pub run_id: String,
    /// The start envelope's `event_id` (the run's `trigger.event_id`).
    pub event_id: String,
}

/// Which runs a listing shows.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this flow's.
    pub flow: Option<String>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only runs started at or after this time (RFC 3339).
    pub since: Option<String>,
}

fn fold(r: &RunRef, entries: Vec<(u64, Entry)>) -> Result<Option<Run>, FlowError> {
    Run::from_entries(&entries).map_err(|e| FlowError::Store(format!("run {r} does not fold: {e}")))
}

impl Runs {
    /// The runs of `bus`'s mesh.
    ///
    /// # Errors
    /// [`FlowError::Bus`] when the journal is missing (`weft up` creates it).
    pub async fn open(bus: &Bus) -> Result<Runs, FlowError> {
        Ok(Runs {
            journal: Journal::open(bus).await?,
            queue: RunQueue::new(bus),
        })
    }

    /// Run `run_id` of `flow`.
    ///
    /// # Errors
    /// [`FlowError::Bus`] when the journal cannot be read; [`FlowError::Store`] when
    /// its entries do not fold.
    pub async fn get(&self, flow: &str, run_id: &str) -> Result<Option<Run>, FlowError> {
        let r = RunRef::new(RunKind::Flow, flow, run_id)?;
        fold(&r, self.journal.read(&r).await?)
    }

    /// The raw journal entries of run `r` (stream sequence, entry), for tools and
    /// tests that look underneath [`Run`].
    ///
    /// # Errors
    /// [`FlowError::Bus`] when the journal cannot be read.
    pub async fn entries(&self, r: &RunRef) -> Result<Vec<(u64, Entry)>, FlowError> {
        Ok(self.journal.read(r).await?)
    }

    /// Run `run_id`, of whichever flow.
    ///
    /// # Errors
    /// As [`Runs::get`]; [`FlowError::Bus`] for an id that is not one token.
    pub async fn find(&self, run_id: &str) -> Result<Option<Run>, FlowError> {
        weft_bus::subject::validate_token("run id", run_id)?;
        let refs = self.journal.runs(RunKind::Flow, None, Some(run_id)).await?;
        match refs.first() {
            Some(r) => fold(r, self.journal.read(r).await?),
            None => Ok(None),
        }
    }

    /// The runs `filter` selects, oldest first.
    ///
    /// # Errors
    /// As [`Runs::get`].
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<Run>, FlowError> {
        let refs = self
            .journal
            .runs(RunKind::Flow, filter.flow.as_deref(), None)
            .await?;
        let runs = self.journal.read_many(refs).await?;
        let mut out = Vec::with_capacity(runs.len());
        for (r, entries) in runs {
            let Some(run) = fold(&r, entries)? else {
                continue;
            };
            if filter.status.is_some_and(|s| s != run.status)
                || filter.since.as_ref().is_some_and(|t| run.created_at < *t)
            {
                continue;
            }
            out.push(run);
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Starts a run of `flow` with `input` as its trigger payload: queues the start for
    /// the flow's workers (a worker that starts later picks it up) and returns the run
    /// id at once.
    ///
    /// # Errors
    /// [`FlowError::Bus`] for a flow name that is not a token, or when the queue does
    /// not take the start.
    pub async fn start(&self, flow: &str, input: Value) -> Result<Started, FlowError> {
        weft_bus::subject::validate_token("flow name", flow)?;
        let env = crate::worker::start_envelope(flow, input);
        self.queue
            .submit(RunKind::Flow, flow, "start", &env)
            .await?;
        Ok(Started {
            run_id: run_id(flow, &env.event_id),
            event_id: env.event_id,
        })
    }

    /// Asks to cancel run `run_id`: a running step finishes, no further step starts,
    /// and a waiting run is cancelled without waiting.
    ///
    /// # Errors
    /// [`FlowError::NotFound`] for an unknown run; [`FlowError::NotActive`] for a run
    /// that ended.
    pub async fn cancel(&self, run_id: &str, by: &str, reason: &str) -> Result<Run, FlowError> {
        self.act(run_id, |run| {
            if run.status.is_terminal() || run.status == RunStatus::Cancelling {
                return Err(not_active(run, "cancelled"));
            }
            Ok(Entry::of_run(
                &run.reference(),
                1,
                EntryEvent::CancelRequested {
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                },
            ))
        })
        .await
    }

    /// Resumes failed run `run_id` from its failed step, which gets its attempts anew.
    ///
    /// # Errors
    /// [`FlowError::NotFound`]; [`FlowError::NotFailed`] for a run that has not failed.
    pub async fn retry(&self, run_id: &str, by: &str) -> Result<Run, FlowError> {
        self.act(run_id, |run| retry_entry(run, by)).await
    }

    /// Decides the approval step `step` of run `run_id`: approves it, or with `deny`
    /// denies it for that reason (the step fails and its `on_failure` decides).
    ///
    /// # Errors
    /// [`FlowError::NotFound`]; [`FlowError::NotWaiting`] when the step does not wait
    /// for an approval (decided already, timed out, or another kind of step).
    pub async fn approve(
        &self,
        run_id: &str,
        step: &str,
        by: &str,
        deny: Option<&str>,
    ) -> Result<Run, FlowError> {
        self.act(run_id, |run| {
            let s = run.step(step).ok_or_else(|| FlowError::NotWaiting {
                run: run.id.clone(),
                step: step.to_owned(),
                why: "the run has no such step".into(),
            })?;
            let attempt = match s.status {
                StepStatus::Waiting { attempt } if s.waiting_for.as_deref() == Some("approval") => {
                    attempt
                }
                other => {
                    return Err(FlowError::NotWaiting {
                        run: run.id.clone(),
                        step: step.to_owned(),
                        why: format!("it is {}", json!(other.state()).as_str().unwrap_or("?")),
                    });
                }
            };
            let event = match deny {
                None => EntryEvent::StepCompleted {
                    output: json!({"approved": true, "by": by, "reason": null}),
                    duration_ms: 0,
                },
                Some(reason) => EntryEvent::StepFailed {
                    error: weft_bus::envelope::ErrorPayload::new(
                        weft_bus::envelope::ErrorCode::Other("DENIED".into()),
                        format!("denied by {by}: {reason}"),
                    ),
                    retry_at: None,
                },
            };
            let mut entry = Entry::new(&run.reference(), step, attempt, event);
            entry.by = Some(by.to_owned());
            Ok(entry)
        })
        .await
    }

    /// Waits until run `run_id` ends (or `timeout` passes) and returns it as it is
    /// then, polling every 100 ms.
    ///
    /// # Errors
    /// As [`Runs::find`].
    pub async fn wait(&self, run_id: &str, timeout: Duration) -> Result<Option<Run>, FlowError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self.find(run_id).await?;
            let ended = run.as_ref().is_some_and(|r| r.status.is_terminal());
            if ended || tokio::time::Instant::now() >= deadline {
                return Ok(run);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads the run, builds the action's entry, appends it with compare-and-set,
    /// wakes a worker.
    async fn act(
        &self,
        run_id: &str,
        entry: impl Fn(&Run) -> Result<Entry, FlowError>,
    ) -> Result<Run, FlowError> {
        for _ in 0..10 {
            let run = self
                .find(run_id)
                .await?
                .ok_or_else(|| FlowError::NotFound(run_id.to_owned()))?;
            let e = entry(&run)?;
            match self.journal.append(&e, Some(run.last_seq)).await {
                Ok(a) => {
                    let r = run.reference();
                    self.queue.wake(&r, &format!("s{}", a.seq)).await?;
                    return Ok(self.get(&r.name, &r.id).await?.unwrap_or(run));
                }
                Err(AppendError::Conflict { .. }) => continue,
                Err(AppendError::Bus(e)) => return Err(e.into()),
            }
        }
        Err(FlowError::Store(format!(
            "run {run_id} kept moving; try again"
        )))
    }
}

fn not_active(run: &Run, what: &str) -> FlowError {
    FlowError::NotActive {
        run: run.id.clone(),
        status: run.status.as_str().to_owned(),
        action: what.to_owned(),
    }
}

fn retry_entry(run: &Run, by: &str) -> Result<Entry, FlowError> {
    if run.status != RunStatus::Failed {
        return Err(FlowError::NotFailed {
            run: run.id.clone(),
            status: run.status.as_str().to_owned(),
        });
    }
    if run.compensated {
        return Err(FlowError::Compensated(run.id.clone()));
    }
    Ok(Entry::of_run(
        &run.reference(),
        run.retries + 1,
        EntryEvent::RetryRequested { by: by.to_owned() },
    ))
}

/// Journals a retry of failed run `r` (for a worker that finds its trigger replayed).
pub(crate) async fn request_retry(
    journal: &Journal,
    r: &RunRef,
    by: &str,
) -> Result<(), FlowError> {
    loop {
        let entries = journal.read(r).await?;
        let run = fold(r, entries)?.ok_or_else(|| FlowError::NotFound(r.id.clone()))?;
        let e = retry_entry(&run, by)?;
        match journal.append(&e, Some(run.last_seq)).await {
            Ok(_) => return Ok(()),
            Err(AppendError::Conflict { .. }) => continue,
            Err(AppendError::Bus(e)) => return Err(e.into()),
        }
    }
}
