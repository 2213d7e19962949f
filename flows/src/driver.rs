//! The run driver: folds a run's journal, decides what comes next, does it, and
//! journals it, until the run ends or waits (DESIGN §15).
//!
//! [`decide`] is the whole policy, a pure function of the definition, the run and the
//! clock; the worker's engine carries its decisions out. Every entry is appended with the
//! sequence of the last entry folded as the expected last subject sequence, so of two
//! deliveries driving one run only one writes each next entry; the other gets a
//! conflict, reads the journal again and decides again.
//!
//! # Leases
//!
//! A run is driven inside a delivery (its trigger, or a wake from the run queue), and
//! that delivery is its lease: the consumer sends in-progress acks while it runs, and
//! when the worker dies the server delivers it again after the lease time
//! ([`crate::worker::WorkerConfig::lease`], default 10 s) to another worker. A
//! delivery seen for the first time that finds a step attempt in flight leaves it to
//! the delivery that started it (a wake is a hint); a redelivery takes the attempt
//! over and runs it again, with the same idempotency key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::Instrument as _;
use weft_bus::consumer::DeliveryError;
use weft_bus::envelope::{ErrorCode, ErrorPayload, rfc3339};
use weft_bus::invoke::{BoxInvoker, InvokeRequest};
use weft_bus::middleware::{CircuitBreakerLayer, ServiceExt};
use weft_bus::runs::entry::RUN_STEP;
use weft_bus::runs::{
    AppendError, Entry, EntryEvent, Journal, RunQueue, RunRef, RunStatus, StepStatus,
};
use weft_bus::{Bus, Envelope, ErrorKind, Target};

use crate::definition::{A2A_SEND, Decision, Flow, Join, OnFailure, Parallel, Step, StepKind};
use crate::metrics;
use crate::run::{Run, StepRun};
use crate::template;

/// What a run needs next ([`decide`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// It ended: nothing to do.
    Done,
    /// Append this entry (a bookkeeping step: the run completes, fails, is cancelled,
    /// a wait ends, a step is skipped, a parallel step joins).
    Append(Box<Entry>),
    /// Start an attempt of each of these steps, side by side (one, or the members of
    /// a parallel step): its first, a retry, or a takeover.
    Attempt(Vec<usize>),
    /// Another delivery runs an attempt: leave the run to it.
    Busy,
    /// Wait for a wake; with a timer, set it for `(step, until)` first.
    Park(Option<(String, OffsetDateTime)>),
}

fn parse_time(at: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
}

/// What one step needs, seen alone.
enum Own {
    /// Done with (completed, skipped, failed and continued): its output for the run.
    Done(Value),
    /// Failed for good: the run (or its parallel step) fails with this error.
    Failed(ErrorPayload),
    /// Start an attempt.
    Attempt,
    /// An attempt is in flight elsewhere.
    Busy,
    /// Wait until then.
    Until(OffsetDateTime),
    /// Its wait is over: append this.
    WaitOver(Box<Entry>),
}

fn own(step: &Step, s: Option<&StepRun>, r: &RunRef, now: OffsetDateTime, takeover: bool) -> Own {
    let Some(s) = s else { return Own::Attempt };
    match s.status {
        StepStatus::Completed => Own::Done(s.output.clone().unwrap_or(Value::Null)),
        StepStatus::Skipped | StepStatus::Cancelled => Own::Done(Value::Null),
        StepStatus::Failed { .. } if step.on_failure == OnFailure::Continue => {
            Own::Done(Value::Null)
        }
        StepStatus::Failed { .. } if s.round_attempts() == 0 => Own::Attempt,
        StepStatus::Failed { .. } => {
            let error = s.error.clone().unwrap_or_else(|| {
                ErrorPayload::new(ErrorCode::Other("STEP_FAILED".into()), "the step failed")
            });
            Own::Failed(ErrorPayload {
                message: format!("step {}: {}", step.name, error.message),
                ..error
            })
        }
        StepStatus::Pending => Own::Attempt,
        StepStatus::Running { .. } if takeover => Own::Attempt,
        StepStatus::Running { .. } => Own::Busy,
        StepStatus::Backoff { .. } => match s.until.as_deref().and_then(parse_time) {
            Some(due) if due > now => Own::Until(due),
            _ => Own::Attempt,
        },
        StepStatus::Waiting { attempt } => match s.until.as_deref().and_then(parse_time) {
            Some(due) if due > now => Own::Until(due),
            _ => Own::WaitOver(Box::new(wait_over(r, step, s, attempt))),
        },
    }
}

/// The steps a completed branch did not take, with the reason.
fn not_taken(flow: &Flow, run: &Run) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for step in &flow.steps {
        let StepKind::Branch(b) = &step.kind else {
            continue;
        };
        let Some(taken) = run
            .step(&step.name)
            .filter(|s| s.status == StepStatus::Completed)
            .and_then(|s| s.output.as_ref())
            .and_then(|o| o.get("taken"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let skipped = if taken == "then" {
            &b.otherwise
        } else {
            &b.then
        };
        for name in skipped {
            out.push((name.clone(), format!("branch {} took {taken}", step.name)));
        }
    }
    out
}

/// The decision for `run` of `flow` at `now`; `takeover` when the delivery is a
/// redelivery (its earlier holder died), so an attempt in flight is orphaned.
pub fn decide(flow: &Flow, run: &Run, now: OffsetDateTime, takeover: bool) -> Next {
    let r = run.reference();
    let append = |step: &str, attempt: u32, event| {
        Next::Append(Box::new(Entry::new(&r, step, attempt, event)))
    };
    match run.status {
        RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => return Next::Done,
        RunStatus::Cancelling => {
            let reason = run.cancel_reason.clone().unwrap_or_default();
            return append(RUN_STEP, 1, EntryEvent::RunCancelled { reason });
        }
        RunStatus::Compensating => return compensate(flow, run, now, takeover),
        RunStatus::Running | RunStatus::Waiting => {}
    }
    // Driven by their parallel step, or run only to compensate.
    let members: Vec<&str> = flow
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Parallel(p) => Some(p.steps.iter().map(String::as_str)),
            _ => None,
        })
        .flatten()
        .chain(
            flow.steps
                .iter()
                .filter(|s| s.compensates.is_some())
                .map(|s| s.name.as_str()),
        )
        .collect();
    let skip = not_taken(flow, run);
    let index = |name: &str| flow.steps.iter().position(|s| s.name == name);
    let mut output = Value::Null;
    for (i, step) in flow.steps.iter().enumerate() {
        if members.contains(&step.name.as_str()) {
            continue;
        }
        let s = run.step(&step.name);
        if let Some((_, reason)) = skip.iter().find(|(n, _)| *n == step.name)
            && s.is_none_or(|s| s.status == StepStatus::Pending)
        {
            return append(
                &step.name,
                1,
                EntryEvent::StepSkipped {
                    reason: reason.clone(),
                },
            );
        }
        if let (StepKind::Parallel(p), Some(ps)) = (&step.kind, s)
            && matches!(ps.status, StepStatus::Running { .. })
        {
            match join(flow, run, p, &r, now, takeover, &index) {
                Joined::Next(next) => return next,
                Joined::Output(o) => {
                    return append(
                        &step.name,
                        ps.status.attempt(),
                        EntryEvent::StepCompleted {
                            output: o,
                            duration_ms: 0,
                        },
                    );
                }
                Joined::Failed(error) => {
                    return append(
                        &step.name,
                        ps.status.attempt(),
                        EntryEvent::StepFailed {
                            error,
                            retry_at: None,
                        },
                    );
                }
            }
        }
        match own(step, s, &r, now, takeover) {
            Own::Done(o) => output = o,
            Own::Failed(error) => {
                let event = if step.on_failure == OnFailure::Compensate
                    && !compensations(flow, run).is_empty()
                {
                    EntryEvent::RunCompensating { error }
                } else {
                    EntryEvent::RunFailed { error }
                };
                return append(RUN_STEP, run.retries + 1, event);
            }
            Own::Attempt => return Next::Attempt(vec![i]),
            Own::Busy => return Next::Busy,
            Own::Until(due) => return Next::Park(Some((step.name.clone(), due))),
            Own::WaitOver(e) => return Next::Append(e),
        }
    }
    append(
        RUN_STEP,
        run.retries + 1,
        EntryEvent::RunCompleted { output },
    )
}

/// The compensation steps that apply to `run`: those whose step completed, the latest
/// compensated step's first (indices into `flow.steps`).
fn compensations(flow: &Flow, run: &Run) -> Vec<usize> {
    let position = |name: &str| flow.steps.iter().position(|s| s.name == name);
    let mut out: Vec<(usize, usize)> = flow
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let target = s.compensates.as_deref()?;
            let done = run
                .step(target)
                .is_some_and(|t| t.status == StepStatus::Completed);
            done.then(|| (position(target).unwrap_or(0), i))
        })
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.0));
    out.into_iter().map(|(_, i)| i).collect()
}

/// A compensating run: its next compensation step, one at a time, the latest
/// compensated step's first; when all are done (completed, or failed for good), the
/// run fails with the error that started it, naming the compensations that failed.
fn compensate(flow: &Flow, run: &Run, now: OffsetDateTime, takeover: bool) -> Next {
    let r = run.reference();
    let mut failed = Vec::new();
    for i in compensations(flow, run) {
        let step = &flow.steps[i];
        match own(step, run.step(&step.name), &r, now, takeover) {
            Own::Done(_) => {}
            Own::Failed(e) => failed.push(e.message),
            Own::Attempt => return Next::Attempt(vec![i]),
            Own::Busy => return Next::Busy,
            Own::Until(due) => return Next::Park(Some((step.name.clone(), due))),
            Own::WaitOver(e) => return Next::Append(e),
        }
    }
    let mut error = run.error.clone().unwrap_or_else(|| {
        ErrorPayload::new(ErrorCode::Other("STEP_FAILED".into()), "a step failed")
    });
    if !failed.is_empty() {
        error.message = format!(
            "{}; compensations that failed: {}",
            error.message,
            failed.join("; ")
        );
    }
    Next::Append(Box::new(Entry::of_run(
        &r,
        run.retries + 1,
        EntryEvent::RunFailed { error },
    )))
}

enum Joined {
    Next(Next),
    Output(Value),
    Failed(ErrorPayload),
}

/// Where the members of a running parallel step are.
fn join(
    flow: &Flow,
    run: &Run,
    p: &Parallel,
    r: &RunRef,
    now: OffsetDateTime,
    takeover: bool,
    index: &dyn Fn(&str) -> Option<usize>,
) -> Joined {
    let mut attempts = Vec::new();
    let mut busy = false;
    let mut until: Option<(String, OffsetDateTime)> = None;
    let mut outputs = serde_json::Map::new();
    let mut first: Option<(u64, &str, Value)> = None;
    let mut failures = Vec::new();
    for name in &p.steps {
        let Some(i) = index(name) else { continue };
        let step = &flow.steps[i];
        let s = run.step(name);
        match own(step, s, r, now, takeover) {
            Own::Done(o) => {
                let completed = s.is_some_and(|s| s.status == StepStatus::Completed);
                if completed {
                    let at = s.and_then(|s| s.finished_seq).unwrap_or(u64::MAX);
                    if first.as_ref().is_none_or(|(seq, _, _)| at < *seq) {
                        first = Some((at, name, o.clone()));
                    }
                }
                outputs.insert(name.clone(), o);
            }
            Own::Failed(e) => failures.push(e),
            Own::Attempt => attempts.push(i),
            Own::Busy => busy = true,
            Own::Until(due) => {
                if until.as_ref().is_none_or(|(_, d)| due < *d) {
                    until = Some((name.clone(), due));
                }
            }
            Own::WaitOver(e) => return Joined::Next(Next::Append(e)),
        }
    }
    match p.join {
        Join::First => {
            if let Some((_, winner, output)) = first {
                // The others are not needed any more.
                for name in &p.steps {
                    let s = run.step(name);
                    let open = s.is_none_or(|s| {
                        matches!(
                            s.status,
                            StepStatus::Pending
                                | StepStatus::Running { .. }
                                | StepStatus::Backoff { .. }
                        )
                    });
                    if open {
                        return Joined::Next(Next::Append(Box::new(Entry::new(
                            r,
                            name,
                            s.map_or(1, |s| s.status.attempt().max(1)),
                            EntryEvent::StepSkipped {
                                reason: format!("{winner} answered first"),
                            },
                        ))));
                    }
                }
                return Joined::Output(json!({"step": winner, "output": output}));
            }
            if failures.len() == p.steps.len() {
                return Joined::Failed(failures.remove(0));
            }
        }
        Join::All => {
            if let Some(e) = failures.into_iter().next() {
                if attempts.is_empty() && !busy && until.is_none() {
                    return Joined::Failed(e);
                }
                // Let the members in flight finish first.
            } else if outputs.len() == p.steps.len() {
                return Joined::Output(Value::Object(outputs));
            }
        }
    }
    if !attempts.is_empty() {
        Joined::Next(Next::Attempt(attempts))
    } else if busy {
        Joined::Next(Next::Busy)
    } else {
        Joined::Next(Next::Park(until))
    }
}

/// The entry that ends step `s`'s wait when its time is up: a sleep completes, an
/// approval takes its default, a wait for an event times out.
fn wait_over(r: &RunRef, step: &Step, s: &StepRun, attempt: u32) -> Entry {
    let event = match &step.kind {
        StepKind::Approval(a) if a.default == Decision::Approve => EntryEvent::StepCompleted {
            output: json!({"approved": true, "by": "timeout", "reason": "no decision in time; the default is approve"}),
            duration_ms: 0,
        },
        StepKind::Approval(a) => EntryEvent::StepFailed {
            error: ErrorPayload::new(
                ErrorCode::Other("DENIED".into()),
                format!(
                    "no decision within {}; the default is deny",
                    humantime::format_duration(a.timeout)
                ),
            ),
            retry_at: None,
        },
        StepKind::WaitForEvent(w) => EntryEvent::StepFailed {
            error: ErrorPayload::new(
                ErrorCode::Other("TIMEOUT".into()),
                format!(
                    "no {} event matched within {}",
                    w.event,
                    humantime::format_duration(w.timeout)
                ),
            ),
            retry_at: None,
        },
        _ => EntryEvent::StepCompleted {
            output: json!({"until": s.until}),
            duration_ms: 0,
        },
    };
    Entry::new(r, &step.name, attempt, event)
}

/// The idempotency key of `step` in run `run_id`: the `event_id` of every envelope the
/// step sends, the same for every attempt (a UUIDv5 of run and step, DESIGN §15).
pub fn idempotency_key(run_id: &str, step: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{run_id}:{step}").as_bytes(),
    )
    .to_string()
}

/// A step attempt that did not succeed.
pub(crate) struct StepFailure(pub(crate) ErrorPayload);

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl weft_bus::trace::ErrorType for StepFailure {
    fn error_type(&self) -> std::borrow::Cow<'_, str> {
        if self.0.retryable {
            "retryable"
        } else {
            "permanent"
        }
        .into()
    }
}

impl From<weft_bus::Error> for StepFailure {
    fn from(e: weft_bus::Error) -> Self {
        let mut p = ErrorPayload::from(&e);
        p.retryable = e.is_retryable();
        StepFailure(p)
    }
}

/// The error code of an agent step whose agent run waits for a person (retryable: the
/// next attempt, with the same `event_id`, gets the run's reply once it is decided).
pub const INPUT_REQUIRED: &str = "INPUT_REQUIRED";

fn permanent(code: &str, message: impl Into<String>) -> StepFailure {
    StepFailure(ErrorPayload::new(ErrorCode::Other(code.into()), message))
}

/// Why a drive stopped early.
#[derive(Debug)]
pub(crate) enum DriveError {
    /// The journal, the queue or the bus failed: deliver again later.
    Retry(String),
    /// The journal of this run does not fold, or its definition does not load: no
    /// worker can drive it (dead-lettered with this reason).
    Broken(String),
}

impl From<DriveError> for DeliveryError {
    fn from(e: DriveError) -> Self {
        match e {
            DriveError::Retry(m) => DeliveryError::Retry(m),
            DriveError::Broken(m) => DeliveryError::Permanent(m),
        }
    }
}

impl From<weft_bus::Error> for DriveError {
    fn from(e: weft_bus::Error) -> Self {
        DriveError::Retry(e.to_string())
    }
}

fn broken(r: &RunRef, e: weft_bus::runs::fold::FoldError) -> DriveError {
    DriveError::Broken(format!("run {r} does not fold: {e}"))
}

/// What a worker shares between the runs of its flows.
#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) bus: Bus,
    pub(crate) journal: Journal,
    pub(crate) queue: RunQueue,
    pub(crate) invoker: BoxInvoker,
    pub(crate) breaker: CircuitBreakerLayer,
    /// KV `<prefix>_flows`: waits, slots and rate windows, opened once.
    pub(crate) flows_kv: async_nats::jetstream::kv::Store,
    /// Who this worker is in `by` of its entries.
    pub(crate) by: String,
    /// Waits shorter than this are slept in the delivery rather than on a timer.
    pub(crate) short_wait: Duration,
}

/// A flow this worker runs: the definition, and its JSON as runs store it.
pub(crate) struct Deployed {
    pub(crate) flow: Arc<Flow>,
    pub(crate) json: Value,
}

/// The step name under which a run waits for and holds its concurrency slot.
pub const SLOT_STEP: &str = "_slot";

/// What the concurrency gate says.
enum Gate {
    /// Go on to the steps.
    Go,
    /// Something was journaled: decide again.
    Again,
    /// Wait for a wake (no slot free).
    Stop,
}

/// A run as journaled so far while a delivery drives it (`None` before its first
/// entry), folded entry by entry as the delivery appends, and shared by the attempts it
/// runs side by side (appends are one at a time).
type Entries = tokio::sync::Mutex<Option<Run>>;

impl Engine {
    /// Appends `entry` after the last entry; folds it in on success. `Ok(false)` on a
    /// conflict: the run is read again.
    async fn append(
        &self,
        r: &RunRef,
        entries: &Entries,
        mut entry: Entry,
    ) -> Result<bool, DriveError> {
        entry.by = Some(self.by.clone());
        let mut run = entries.lock().await;
        let expected = run.as_ref().map_or(0, |run| run.last_seq);
        match self.journal.append(&entry, Some(expected)).await {
            Ok(a) if !a.duplicate => {
                match run.as_mut() {
                    Some(run) => run.push(a.seq, &entry).map_err(|e| broken(r, e))?,
                    None => *run = Some(Run::start(a.seq, &entry).map_err(|e| broken(r, e))?),
                }
                Ok(true)
            }
            Ok(_) => {
                *run = self.read(r).await?;
                Ok(true)
            }
            Err(AppendError::Conflict { .. }) => {
                *run = self.read(r).await?;
                Ok(false)
            }
            Err(AppendError::Bus(e)) => Err(e.into()),
        }
    }

    /// Run `r` as the journal has it now (`None`: no entries).
    ///
    /// # Errors
    /// As the journal's read; [`DriveError::Broken`] when its entries do not fold.
    pub(crate) async fn read(&self, r: &RunRef) -> Result<Option<Run>, DriveError> {
        Run::from_entries(&self.journal.read(r).await?).map_err(|e| broken(r, e))
    }

    /// Appends the outcome of attempt `attempt` of `step`; after a conflict, again,
    /// as long as the journal still has that attempt running (a cancel came in
    /// between, say); otherwise the outcome is dropped (another delivery took the
    /// attempt over).
    async fn append_outcome(
        &self,
        r: &RunRef,
        entries: &Entries,
        step: &str,
        attempt: u32,
        event: EntryEvent,
    ) -> Result<(), DriveError> {
        loop {
            let entry = Entry::new(r, step, attempt, event.clone());
            if self.append(r, entries, entry).await? {
                return Ok(());
            }
            let still = entries
                .lock()
                .await
                .as_ref()
                .and_then(|run| run.step(step).map(|s| s.status))
                == Some(StepStatus::Running { attempt });
            if !still {
                return Ok(());
            }
        }
    }

    /// Starts run `r` of `deployed` with `cause` and `input` (its first entry, expected
    /// sequence 0), unless it exists; returns it and whether it is new.
    pub(crate) async fn start(
        &self,
        deployed: &Deployed,
        r: &RunRef,
        cause: &str,
        input: &Envelope,
    ) -> Result<(Option<Run>, bool), DriveError> {
        let mut first = Entry::of_run(
            r,
            1,
            EntryEvent::RunStarted {
                cause: cause.to_owned(),
                input: serde_json::to_value(input).unwrap_or_default(),
                definition: deployed.json.clone(),
            },
        );
        first.by = Some(self.by.clone());
        match self.journal.append(&first, Some(0)).await {
            Ok(a) if !a.duplicate => {
                metrics::flows()
                    .runs
                    .with_label_values(&[&deployed.flow.name, "started"])
                    .inc();
                let run = Run::start(a.seq, &first).map_err(|e| broken(r, e))?;
                Ok((Some(run), true))
            }
            Ok(_) | Err(AppendError::Conflict { .. }) => Ok((self.read(r).await?, false)),
            Err(AppendError::Bus(e)) => Err(e.into()),
        }
    }

    /// Asks to cancel new run `r` at once with `why` (a trigger over the rate limit);
    /// returns the run after it.
    pub(crate) async fn refuse(&self, r: &RunRef, why: &str) -> Result<Option<Run>, DriveError> {
        let entries = Entries::new(self.read(r).await?);
        let mut cancel = Entry::of_run(
            r,
            1,
            EntryEvent::CancelRequested {
                by: "rate_limit".into(),
                reason: why.to_owned(),
            },
        );
        cancel.by = Some(self.by.clone());
        self.append(r, &entries, cancel).await?;
        Ok(entries.into_inner())
    }

    /// The definition run `run` started with: the deployed one, or its own.
    fn definition(&self, deployed: &Deployed, run: &Run) -> Result<Arc<Flow>, DriveError> {
        if *run.definition() == deployed.json {
            return Ok(deployed.flow.clone());
        }
        Flow::from_value(run.definition().clone())
            .map(Arc::new)
            .map_err(|e| {
                DriveError::Broken(format!(
                    "run {} started on a definition this worker cannot load: {e}",
                    run.id
                ))
            })
    }

    /// Drives run `r` from `run` (as journaled) until it ends, waits, or is left to another
    /// delivery; returns its status then.
    pub(crate) async fn drive(
        &self,
        deployed: &Deployed,
        r: &RunRef,
        run: Run,
        takeover: bool,
    ) -> Result<RunStatus, DriveError> {
        let entries = Entries::new(Some(run));
        let mut pinned: Option<Arc<Flow>> = None;
        loop {
            let run = entries
                .lock()
                .await
                .clone()
                .ok_or_else(|| DriveError::Retry(format!("run {r} has no entries")))?;
            let flow = match &pinned {
                Some(f) => f.clone(),
                None => pinned.insert(self.definition(deployed, &run)?).clone(),
            };
            if let Some(c) = &flow.concurrency {
                match self.gate(&flow, c, &run, r, &entries).await? {
                    Gate::Go => {}
                    Gate::Again => continue,
                    Gate::Stop => return Ok(run.status),
                }
            }
            if let Some(child_end) = self.child_ended(&flow, &run).await? {
                self.append(r, &entries, child_end).await?;
                continue;
            }
            let now = OffsetDateTime::now_utc();
            match decide(&flow, &run, now, takeover) {
                Next::Done => {
                    // Again on a delivery that comes back after the run ended (the
                    // worker died before the first wake went out); a wake of one cause
                    // is queued once.
                    if run.status.is_terminal() {
                        self.wake_parent(&run).await?;
                    }
                    return Ok(run.status);
                }
                Next::Busy => return Ok(run.status),
                Next::Append(entry) => {
                    let ended = match &entry.event {
                        EntryEvent::RunCompleted { .. } => Some("completed"),
                        EntryEvent::RunFailed { .. } => Some("failed"),
                        EntryEvent::RunCancelled { .. } => Some("cancelled"),
                        _ => None,
                    };
                    // A wait for an event that ends otherwise (timeout, cancel) forgets
                    // its registration.
                    let waits: Vec<String> = flow
                        .steps
                        .iter()
                        .filter(|s| matches!(s.kind, StepKind::WaitForEvent(_)))
                        .filter(|s| {
                            let waiting = run
                                .step(&s.name)
                                .is_some_and(|s| matches!(s.status, StepStatus::Waiting { .. }));
                            waiting && (entry.step == s.name || ended == Some("cancelled"))
                        })
                        .map(|s| s.name.clone())
                        .collect();
                    let appended = self.append(r, &entries, *entry).await?;
                    if appended {
                        for step in waits {
                            crate::waits::forget(&self.flows_kv, r, &step).await;
                        }
                    }
                    if appended && let Some(outcome) = ended {
                        metrics::flows()
                            .runs
                            .with_label_values(&[&flow.name, outcome])
                            .inc();
                        tracing::info!(flow = %flow.name, run = %r.id, outcome, "run ended");
                    }
                }
                Next::Park(timer) => {
                    let Some((step, due)) = timer else {
                        return Ok(run.status);
                    };
                    let left = (due - now).unsigned_abs();
                    if left < self.short_wait {
                        tokio::time::sleep(left).await;
                        continue;
                    }
                    self.queue.set_timer(r, &step, &rfc3339(due)).await?;
                    return Ok(run.status);
                }
                Next::Attempt(steps) => {
                    use futures::StreamExt as _;
                    let mut attempts: futures::stream::FuturesUnordered<_> = steps
                        .into_iter()
                        .map(|i| self.attempt(&flow, &run, r, &entries, i))
                        .collect();
                    while let Some(result) = attempts.next().await {
                        result?;
                        if attempts.is_empty() {
                            break;
                        }
                        // Side by side: once the others are not needed (a parallel step
                        // that joins on the first result got it), stop waiting for them.
                        // `try_lock`: an attempt waiting for the entries holds the next
                        // turn of the (fair) lock, and it only runs when polled here.
                        let Ok(now) = entries.try_lock() else {
                            continue;
                        };
                        let next = now
                            .as_ref()
                            .map(|run| decide(&flow, run, OffsetDateTime::now_utc(), false));
                        drop(now);
                        if let Some(Next::Append(e)) = next
                            && matches!(e.event, EntryEvent::StepSkipped { .. })
                        {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// The concurrency gate ([`crate::slots`]): a run takes its slot before its first
    /// step (waiting as step `_slot` when none is free) and gives it back when it
    /// ends, waking the waiters that fit.
    async fn gate(
        &self,
        flow: &Flow,
        c: &crate::slots::Concurrency,
        run: &Run,
        r: &RunRef,
        entries: &Entries,
    ) -> Result<Gate, DriveError> {
        let key = match template::render(&c.key, run) {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(e) => {
                let error = ErrorPayload::invalid_request(format!("concurrency key: {e}"));
                self.append(
                    r,
                    entries,
                    Entry::of_run(r, run.retries + 1, EntryEvent::RunFailed { error }),
                )
                .await?;
                return Ok(Gate::Again);
            }
        };
        let slots = crate::slots::Slots::new(self.flows_kv.clone());
        if run.status.is_terminal() {
            for waiter in slots.release(&flow.name, &key, c.limit, &run.id).await? {
                if let Ok(w) = RunRef::new(weft_bus::runs::RunKind::Flow, &flow.name, &waiter) {
                    self.queue.wake(&w, &format!("slot_{}", run.id)).await?;
                }
            }
            return Ok(Gate::Go);
        }
        if run.status == RunStatus::Cancelling {
            return Ok(Gate::Go);
        }
        let slot = run.step(SLOT_STEP).map(|s| s.status);
        match slot {
            Some(StepStatus::Completed) if run.retries == 0 => Ok(Gate::Go),
            Some(StepStatus::Completed) => {
                // A retried run gave its slot back when it failed.
                if slots.holds(&flow.name, &key, &run.id).await?
                    || slots.acquire(&flow.name, &key, c.limit, &run.id).await?
                {
                    Ok(Gate::Go)
                } else {
                    Ok(Gate::Stop)
                }
            }
            _ => {
                let held = slots.acquire(&flow.name, &key, c.limit, &run.id).await?;
                let attempt = slot.map_or(1, StepStatus::attempt).max(1);
                if slot.is_none() || slot == Some(StepStatus::Pending) {
                    let started = EntryEvent::StepStarted {
                        input: json!({"key": key, "limit": c.limit}),
                        idempotency_key: idempotency_key(&run.id, SLOT_STEP),
                    };
                    if !self
                        .append(r, entries, Entry::new(r, SLOT_STEP, attempt, started))
                        .await?
                    {
                        return Ok(Gate::Again);
                    }
                }
                let event = if held {
                    EntryEvent::StepCompleted {
                        output: json!({"key": key}),
                        duration_ms: 0,
                    }
                } else if matches!(slot, Some(StepStatus::Waiting { .. })) {
                    return Ok(Gate::Stop);
                } else {
                    EntryEvent::StepWaiting {
                        reason: "slot".into(),
                        until: None,
                    }
                };
                self.append(r, entries, Entry::new(r, SLOT_STEP, attempt, event))
                    .await?;
                Ok(if held { Gate::Again } else { Gate::Stop })
            }
        }
    }

    /// For a step waiting for a child run that ended: the entry ending the wait.
    async fn child_ended(&self, flow: &Flow, run: &Run) -> Result<Option<Entry>, DriveError> {
        for step in &flow.steps {
            let StepKind::SubFlow(c) = &step.kind else {
                continue;
            };
            let Some(s) = run.step(&step.name) else {
                continue;
            };
            let StepStatus::Waiting { attempt } = s.status else {
                continue;
            };
            let key = idempotency_key(&run.id, &step.name);
            let child = RunRef::new(
                weft_bus::runs::RunKind::Flow,
                &c.flow,
                &crate::run::run_id(&c.flow, &key),
            )
            .map_err(|e| DriveError::Broken(e.to_string()))?;
            let Ok(Some(child_run)) = Run::from_entries(&self.journal.read(&child).await?) else {
                continue;
            };
            let event = match child_run.status {
                RunStatus::Completed => EntryEvent::StepCompleted {
                    output: child_run.output.clone().unwrap_or(Value::Null),
                    duration_ms: 0,
                },
                RunStatus::Failed | RunStatus::Cancelled => EntryEvent::StepFailed {
                    error: ErrorPayload::new(
                        ErrorCode::Other("CHILD_FAILED".into()),
                        format!(
                            "run {} of flow {} {}: {}",
                            child.id,
                            c.flow,
                            child_run.status.as_str(),
                            child_run
                                .error
                                .as_ref()
                                .map(|e| e.message.clone())
                                .unwrap_or_default()
                        ),
                    ),
                    retry_at: None,
                },
                _ => continue,
            };
            return Ok(Some(Entry::new(
                &run.reference(),
                &step.name,
                attempt,
                event,
            )));
        }
        Ok(None)
    }

    /// A child run that ended wakes the run that started it (named in its trigger's
    /// metadata `weft.flow.parent`).
    async fn wake_parent(&self, run: &Run) -> Result<(), DriveError> {
        let Some(parent) = run.trigger.metadata.get("weft.flow.parent") else {
            return Ok(());
        };
        let (Some(flow), Some(id)) = (parent["flow"].as_str(), parent["run"].as_str()) else {
            return Ok(());
        };
        if let Ok(p) = RunRef::new(weft_bus::runs::RunKind::Flow, flow, id) {
            self.queue.wake(&p, &format!("child_{}", run.id)).await?;
        }
        Ok(())
    }

    /// Runs one attempt of step `i` and journals how it went.
    async fn attempt(
        &self,
        flow: &Flow,
        run: &Run,
        r: &RunRef,
        entries: &Entries,
        i: usize,
    ) -> Result<(), DriveError> {
        let step = &flow.steps[i];
        let s = run.step(&step.name);
        let attempt = s.map_or(1, |s| s.status.attempt() + 1);
        let round = s.map_or(0, StepRun::round_attempts);
        if round >= step.max_attempts {
            // Attempts spent by deliveries that died mid-step.
            let error = ErrorPayload::new(
                ErrorCode::Other("ATTEMPTS_SPENT".into()),
                format!("{} attempts started and none finished", step.max_attempts),
            );
            let failed = EntryEvent::StepFailed {
                error,
                retry_at: None,
            };
            let a = s.map_or(1, |s| s.status.attempt());
            self.append(r, entries, Entry::new(r, &step.name, a, failed))
                .await?;
            return Ok(());
        }
        let key = idempotency_key(&run.id, &step.name);
        let template = match &step.kind {
            StepKind::Approval(a) => &a.prompt,
            _ => &step.input,
        };
        let input = template::render(template, run);
        let started = EntryEvent::StepStarted {
            input: input.clone().unwrap_or(Value::Null),
            idempotency_key: key.clone(),
        };
        if !self
            .append(r, entries, Entry::new(r, &step.name, attempt, started))
            .await?
        {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let wait = |reason: &str, d: Duration| EntryEvent::StepWaiting {
            reason: reason.into(),
            until: Some(rfc3339(now + d)),
        };
        let event = match (&step.kind, input) {
            (_, Err(e)) => EntryEvent::StepFailed {
                error: ErrorPayload::invalid_request(format!("input template: {e}")),
                retry_at: None,
            },
            // Its members run next; it joins them.
            (StepKind::Parallel(_), _) => return Ok(()),
            (StepKind::Branch(b), _) => match b.condition.run(&run.context()) {
                Ok(v) => EntryEvent::StepCompleted {
                    output: json!({"taken": if v == json!(true) { "then" } else { "else" }}),
                    duration_ms: 0,
                },
                Err(e) => EntryEvent::StepFailed {
                    error: ErrorPayload::new(ErrorCode::Other("BRANCH_FAILED".into()), e),
                    retry_at: None,
                },
            },
            (StepKind::Sleep(d), _) => wait("sleep", *d),
            (StepKind::Approval(a), _) => wait("approval", a.timeout),
            (StepKind::WaitForEvent(w), _) => {
                crate::waits::register(&self.flows_kv, r, &step.name, &w.event).await?;
                wait("event", w.timeout)
            }
            (StepKind::SubFlow(c), Ok(input)) => {
                let mut env = crate::worker::start_envelope(&c.flow, input);
                env.event_id = key.clone();
                env.inherit_context(&run.trigger);
                env.metadata.insert(
                    "weft.flow.parent".into(),
                    json!({"flow": flow.name, "run": run.id, "step": step.name}),
                );
                self.queue
                    .submit(weft_bus::runs::RunKind::Flow, &c.flow, "start", &env)
                    .await?;
                wait("child", c.timeout)
            }
            (_, Ok(input)) => {
                let clock = Instant::now();
                let span = tracing::info_span!(
                    "flow.step",
                    otel.kind = "internal",
                    weft.flow.name = %flow.name,
                    weft.flow.run_id = %run.id,
                    weft.flow.step = %step.name,
                    weft.flow.step.kind = step.kind.as_str(),
                    weft.flow.step.attempt = i64::from(attempt),
                );
                let result = self
                    .execute(flow, run, step, input, key, attempt)
                    .instrument(span.clone())
                    .await;
                let m = metrics::flows();
                m.step_duration
                    .with_label_values(&[&flow.name, &step.name])
                    .observe(clock.elapsed().as_secs_f64());
                match result {
                    Ok(output) => {
                        m.steps
                            .with_label_values(&[&flow.name, &step.name, "ok"])
                            .inc();
                        EntryEvent::StepCompleted {
                            output,
                            duration_ms: clock.elapsed().as_millis() as u64,
                        }
                    }
                    Err(failure) => {
                        weft_bus::trace::record_error(&span, &failure);
                        let mut error = failure.0;
                        if let Some(codes) = &step.retry_on {
                            error.retryable = codes.iter().any(|c| c == error.code.as_str());
                        }
                        let give_up = !error.retryable || round + 1 >= step.max_attempts;
                        let delay = step.retry.delay(i64::from(round + 1));
                        let retry_at = match delay {
                            Some(d) if !give_up => Some(rfc3339(OffsetDateTime::now_utc() + d)),
                            _ => None,
                        };
                        let outcome = if retry_at.is_some() {
                            "retry"
                        } else {
                            "failed"
                        };
                        m.steps
                            .with_label_values(&[&flow.name, &step.name, outcome])
                            .inc();
                        tracing::warn!(flow = %flow.name, run = %run.id, step = %step.name, attempt, error = %error, retry_at = ?retry_at, "step failed");
                        EntryEvent::StepFailed { error, retry_at }
                    }
                }
            }
        };
        self.append_outcome(r, entries, &step.name, attempt, event)
            .await
    }

    /// Carries out a step that does not wait.
    async fn execute(
        &self,
        flow: &Flow,
        run: &Run,
        step: &Step,
        input: Value,
        key: String,
        attempt: u32,
    ) -> Result<Value, StepFailure> {
        let trigger = &run.trigger;
        let inherit = |env: &mut Envelope| {
            env.event_id = key.clone();
            env.metadata
                .insert("weft.flow.step.attempt".into(), json!(attempt));
            env.inherit_context(trigger);
            env.from = Some(format!("flow.{}", flow.name));
            env.metadata
                .insert("weft.flow.run_id".into(), json!(run.id));
            env.metadata
                .insert("weft.flow.step".into(), json!(step.name));
        };
        match &step.kind {
            StepKind::Invoke(target) => self.invoke(target, input, step, inherit).await,
            StepKind::Agent(agent) => {
                let reply = self
                    .invoke(&Target::service(agent.clone()), input, step, inherit)
                    .await?;
                if reply["status"] == "input_required" {
                    // The agent's run waits for a person. The step's next attempt sends
                    // the same event_id, so it gets that run's reply once it is decided.
                    let run_id = reply["run_id"].as_str().unwrap_or("?");
                    let mut e = ErrorPayload::new(
                        ErrorCode::Other(INPUT_REQUIRED.into()),
                        format!(
                            "agent {agent}'s run {run_id} waits for a person to approve a tool call (`weft agent approve {run_id}`)"
                        ),
                    );
                    e.retryable = true;
                    return Err(StepFailure(e));
                }
                Ok(reply)
            }
            StepKind::A2a(url) => {
                let request = match input {
                    Value::String(message) => json!({"url": url, "message": message}),
                    Value::Object(mut o) => {
                        o.insert("url".into(), json!(url));
                        Value::Object(o)
                    }
                    other => json!({"url": url, "message": other.to_string()}),
                };
                let target: Target = A2A_SEND.parse().expect("a valid target");
                self.invoke(&target, request, step, inherit).await
            }
            StepKind::Transform(expr) => {
                let mut context = run.context();
                context["input"] = input;
                let expr = expr.clone();
                // Off the async threads: jq may compute for a while.
                let evaluation = tokio::task::spawn_blocking(move || expr.run(&context));
                match tokio::time::timeout(step.timeout_duration(), evaluation).await {
                    Ok(Ok(result)) => result.map_err(|m| permanent("TRANSFORM_FAILED", m)),
                    Ok(Err(e)) => Err(permanent(
                        "TRANSFORM_FAILED",
                        format!("the jq evaluation failed: {e}"),
                    )),
                    Err(_) => Err(permanent(
                        "TRANSFORM_FAILED",
                        format!(
                            "the jq expression took longer than the step's {} ms",
                            step.timeout_ms
                        ),
                    )),
                }
            }
            StepKind::Publish(event_type) => {
                let mut env = Envelope::event(event_type, input);
                inherit(&mut env);
                let published = self.bus.publish_envelope(&env).await?;
                Ok(json!({ "event_id": published.event_id, "sequence": published.sequence }))
            }
            StepKind::Sleep(_)
            | StepKind::WaitForEvent(_)
            | StepKind::Approval(_)
            | StepKind::Branch(_)
            | StepKind::Parallel(_)
            | StepKind::SubFlow(_) => unreachable!("handled by Engine::attempt"),
        }
    }

    /// Invokes `target`; a call the open circuit breaker refuses is made again once
    /// the circuit lets a trial through, without counting an attempt.
    async fn invoke(
        &self,
        target: &Target,
        input: Value,
        step: &Step,
        inherit: impl Fn(&mut Envelope),
    ) -> Result<Value, StepFailure> {
        let mut env = Envelope::request(target.to_string(), input);
        inherit(&mut env);
        let request = InvokeRequest::new(target.clone(), env, step.timeout_duration());
        let label = target.to_string();
        loop {
            match self.invoker.clone().oneshot(request.clone()).await {
                Ok(reply) => return Ok(reply.payload.unwrap_or(Value::Null)),
                Err(e) if e.kind() == ErrorKind::Rejected => {
                    // Another run may hold the trial; look again shortly after.
                    let wait = self
                        .breaker
                        .reopens_in(&label)
                        .unwrap_or_default()
                        .max(Duration::from_millis(100));
                    tracing::debug!(target = %label, wait_ms = wait.as_millis() as u64, "circuit open; waiting for it");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Step;
    use weft_bus::runs::RunKind;

    fn flow() -> Flow {
        Flow::manual("f")
            .step(Step::publish("one", "x.y".parse().unwrap(), json!(1)).max_attempts(2))
            .step(Step::sleep("nap", Duration::from_secs(3600)))
            .step(
                Step::approval("ok", json!("go?"), Duration::from_secs(60), Decision::Deny)
                    .on_failure(OnFailure::Continue),
            )
    }

    fn run_of(events: Vec<(&str, u32, EntryEvent)>) -> Run {
        let r = RunRef::new(RunKind::Flow, "f", "r1").unwrap();
        let mut all = vec![(
            "_run",
            1,
            EntryEvent::RunStarted {
                cause: "manual".into(),
                input: serde_json::to_value(Envelope::new("a.b")).unwrap(),
                definition: serde_json::to_value(flow()).unwrap(),
            },
        )];
        all.extend(events);
        let entries: Vec<(u64, Entry)> = all
            .into_iter()
            .enumerate()
            .map(|(i, (s, a, e))| (i as u64 + 1, Entry::new(&r, s, a, e)))
            .collect();
        Run::from_entries(&entries).unwrap().unwrap()
    }

    fn started() -> EntryEvent {
        EntryEvent::StepStarted {
            input: Value::Null,
            idempotency_key: "k".into(),
        }
    }

    fn at(s: &str) -> OffsetDateTime {
        parse_time(s).unwrap()
    }

    #[test]
    fn a_new_run_starts_its_first_step_and_an_attempt_in_flight_is_left_alone() {
        let now = at("2026-12-02T10:00:00Z");
        assert_eq!(
            decide(&flow(), &run_of(vec![]), now, false),
            Next::Attempt(vec![0])
        );
        let running = run_of(vec![("one", 1, started())]);
        assert_eq!(decide(&flow(), &running, now, false), Next::Busy);
        assert_eq!(
            decide(&flow(), &running, now, true),
            Next::Attempt(vec![0]),
            "a redelivery takes an orphaned attempt over"
        );
    }

    #[test]
    fn a_sleeping_step_parks_until_its_timer_and_then_completes() {
        let events = || {
            vec![
                ("one", 1, started()),
                (
                    "one",
                    1,
                    EntryEvent::StepCompleted {
                        output: json!(1),
                        duration_ms: 1,
                    },
                ),
                ("nap", 1, started()),
                (
                    "nap",
                    1,
                    EntryEvent::StepWaiting {
                        reason: "sleep".into(),
                        until: Some("2026-12-02T11:00:00.000Z".into()),
                    },
                ),
            ]
        };
        let run = run_of(events());
        assert_eq!(run.status, RunStatus::Waiting);
        assert_eq!(
            decide(&flow(), &run, at("2026-12-02T10:00:00Z"), false),
            Next::Park(Some(("nap".into(), at("2026-12-02T11:00:00Z"))))
        );
        match decide(&flow(), &run, at("2026-12-02T11:00:01Z"), false) {
            Next::Append(e) => assert_eq!(e.event.name(), "step.completed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failure_for_good_fails_the_run_unless_the_step_continues() {
        let failed = |retry_at: Option<&str>| EntryEvent::StepFailed {
            error: ErrorPayload::new(ErrorCode::AgentUnavailable, "down"),
            retry_at: retry_at.map(str::to_owned),
        };
        let now = at("2026-12-02T10:00:00Z");
        let backoff = run_of(vec![
            ("one", 1, started()),
            ("one", 1, failed(Some("2026-12-02T10:00:30Z"))),
        ]);
        assert_eq!(
            decide(&flow(), &backoff, now, false),
            Next::Park(Some(("one".into(), at("2026-12-02T10:00:30Z"))))
        );
        assert_eq!(
            decide(&flow(), &backoff, at("2026-12-02T10:00:31Z"), false),
            Next::Attempt(vec![0])
        );
        let gone = run_of(vec![("one", 1, started()), ("one", 1, failed(None))]);
        match decide(&flow(), &gone, now, false) {
            Next::Append(e) => {
                assert_eq!(e.event.name(), "run.failed");
                let EntryEvent::RunFailed { error } = e.event else {
                    unreachable!()
                };
                assert!(error.message.contains("step one"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // A denied approval with on_failure: continue lets the run complete.
        let denied = run_of(vec![
            ("one", 1, started()),
            (
                "one",
                1,
                EntryEvent::StepCompleted {
                    output: json!(1),
                    duration_ms: 1,
                },
            ),
            ("nap", 1, started()),
            (
                "nap",
                1,
                EntryEvent::StepCompleted {
                    output: json!({}),
                    duration_ms: 0,
                },
            ),
            ("ok", 1, started()),
            ("ok", 1, failed(None)),
        ]);
        match decide(&flow(), &denied, now, false) {
            Next::Append(e) => assert_eq!(e.event.name(), "run.completed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_approval_past_its_timeout_takes_its_default() {
        let run = run_of(vec![
            ("one", 1, started()),
            (
                "one",
                1,
                EntryEvent::StepCompleted {
                    output: json!(1),
                    duration_ms: 1,
                },
            ),
            ("nap", 1, started()),
            (
                "nap",
                1,
                EntryEvent::StepCompleted {
                    output: json!({}),
                    duration_ms: 0,
                },
            ),
            ("ok", 1, started()),
            (
                "ok",
                1,
                EntryEvent::StepWaiting {
                    reason: "approval".into(),
                    until: Some("2026-12-02T10:01:00.000Z".into()),
                },
            ),
        ]);
        match decide(&flow(), &run, at("2026-12-02T10:02:00Z"), false) {
            Next::Append(e) => {
                let EntryEvent::StepFailed { error, retry_at } = e.event else {
                    panic!("{e:?}")
                };
                assert_eq!(error.code.as_str(), "DENIED");
                assert_eq!(retry_at, None);
            }
            other => panic!("{other:?}"),
        }
    }
}
