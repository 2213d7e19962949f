//! The run driver: folds a run's journal, decides what comes next, does it, and
//! journals it, until the run ends or waits (DESIGN §15).
//!
//! [`decide`] is the whole policy, a pure function of the definition, the run and the
//! clock; [`Engine::drive`] carries its decisions out. Every entry is appended with the
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
use weft_bus::runs::{
    AppendError, Entry, EntryEvent, Journal, RunQueue, RunRef, RunStatus, StepStatus,
};
use weft_bus::{Bus, Envelope, ErrorKind, Target};

use crate::definition::{A2A_SEND, Decision, Flow, OnFailure, Step, StepKind};
use crate::metrics;
use crate::run::{Run, StepRun};
use crate::template;

/// What a run needs next ([`decide`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// It ended: nothing to do.
    Done,
    /// Append this entry (a bookkeeping step: the run completes, fails, is cancelled,
    /// a wait ends).
    Append(Entry),
    /// Start an attempt of step `index` (its first, a retry, or a takeover).
    Attempt(usize),
    /// Another delivery runs an attempt: leave the run to it.
    Busy,
    /// Wait for a wake; with a timer, set it for `(step, until)` first.
    Park(Option<(String, OffsetDateTime)>),
}

fn parse_time(at: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
}

/// The decision for `run` of `flow` at `now`; `takeover` when the delivery is a
/// redelivery (its earlier holder died), so an attempt in flight is orphaned.
pub fn decide(flow: &Flow, run: &Run, now: OffsetDateTime, takeover: bool) -> Next {
    let r = run.reference();
    match run.status {
        RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => return Next::Done,
        RunStatus::Cancelling => {
            let reason = run.cancel_reason.clone().unwrap_or_default();
            return Next::Append(Entry::of_run(&r, 1, EntryEvent::RunCancelled { reason }));
        }
        // Compensation steps are not part of this engine yet; a run never gets here.
        RunStatus::Compensating => return Next::Done,
        RunStatus::Running | RunStatus::Waiting => {}
    }
    let mut output = Value::Null;
    for (i, step) in flow.steps.iter().enumerate() {
        let Some(s) = run.step(&step.name) else {
            return Next::Attempt(i);
        };
        match s.status {
            StepStatus::Completed => output = s.output.clone().unwrap_or(Value::Null),
            StepStatus::Skipped => {}
            StepStatus::Failed { .. } if step.on_failure == OnFailure::Continue => {
                output = Value::Null;
            }
            StepStatus::Failed { .. } if s.round_attempts() == 0 => return Next::Attempt(i),
            StepStatus::Failed { .. } => {
                let error = s.error.clone().unwrap_or_else(|| {
                    ErrorPayload::new(ErrorCode::Other("STEP_FAILED".into()), "the step failed")
                });
                let error = ErrorPayload {
                    message: format!("step {}: {}", step.name, error.message),
                    ..error
                };
                return Next::Append(Entry::of_run(
                    &r,
                    run.retries + 1,
                    EntryEvent::RunFailed { error },
                ));
            }
            StepStatus::Pending => return Next::Attempt(i),
            StepStatus::Running { .. } if takeover => return Next::Attempt(i),
            StepStatus::Running { .. } => return Next::Busy,
            StepStatus::Backoff { .. } => {
                return match s.until.as_deref().and_then(parse_time) {
                    Some(due) if due > now => Next::Park(Some((step.name.clone(), due))),
                    _ => Next::Attempt(i),
                };
            }
            StepStatus::Waiting { attempt } => {
                let due = s.until.as_deref().and_then(parse_time);
                return match due {
                    Some(due) if due > now => Next::Park(Some((step.name.clone(), due))),
                    _ => Next::Append(wait_over(&r, step, s, attempt)),
                };
            }
            StepStatus::Cancelled => return Next::Done,
        }
    }
    Next::Append(Entry::of_run(
        &r,
        run.retries + 1,
        EntryEvent::RunCompleted { output },
    ))
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

/// What a worker shares between the runs of its flows.
#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) bus: Bus,
    pub(crate) journal: Journal,
    pub(crate) queue: RunQueue,
    pub(crate) invoker: BoxInvoker,
    pub(crate) breaker: CircuitBreakerLayer,
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

impl Engine {
    /// Appends `entry` after `entries`' last one; pushes it on success. `Ok(false)`
    /// on a conflict: `entries` is read again.
    async fn append(
        &self,
        r: &RunRef,
        entries: &mut Vec<(u64, Entry)>,
        mut entry: Entry,
    ) -> Result<bool, DriveError> {
        entry.by = Some(self.by.clone());
        let expected = entries.last().map_or(0, |(seq, _)| *seq);
        match self.journal.append(&entry, Some(expected)).await {
            Ok(a) if a.duplicate => {
                *entries = self.journal.read(r).await?;
                Ok(true)
            }
            Ok(a) => {
                entries.push((a.seq, entry));
                Ok(true)
            }
            Err(AppendError::Conflict { .. }) => {
                *entries = self.journal.read(r).await?;
                Ok(false)
            }
            Err(AppendError::Bus(e)) => Err(e.into()),
        }
    }

    /// Starts run `r` of `deployed` with `cause` and `input` (its first entry, expected
    /// sequence 0), unless it exists; returns its entries.
    pub(crate) async fn start(
        &self,
        deployed: &Deployed,
        r: &RunRef,
        cause: &str,
        input: &Envelope,
    ) -> Result<(Vec<(u64, Entry)>, bool), DriveError> {
        let mut entries = Vec::new();
        let first = Entry::of_run(
            r,
            1,
            EntryEvent::RunStarted {
                cause: cause.to_owned(),
                input: serde_json::to_value(input).unwrap_or_default(),
                definition: deployed.json.clone(),
            },
        );
        let fresh = self.append(r, &mut entries, first).await? && entries.len() == 1;
        if fresh {
            metrics::flows()
                .runs
                .with_label_values(&[&deployed.flow.name, "started"])
                .inc();
        }
        Ok((entries, fresh))
    }

    /// Drives run `r` from `entries` until it ends, waits, or is left to another
    /// delivery; returns its status then.
    pub(crate) async fn drive(
        &self,
        deployed: &Deployed,
        r: &RunRef,
        mut entries: Vec<(u64, Entry)>,
        takeover: bool,
    ) -> Result<RunStatus, DriveError> {
        let mut pinned: Option<Arc<Flow>> = None;
        loop {
            let run = Run::from_entries(entries.clone())
                .map_err(|e| DriveError::Broken(format!("run {r} does not fold: {e}")))?
                .ok_or_else(|| DriveError::Retry(format!("run {r} has no entries")))?;
            let flow = match &pinned {
                Some(f) => f.clone(),
                None => {
                    let f = if run.definition == deployed.json {
                        deployed.flow.clone()
                    } else {
                        Arc::new(Flow::from_value(run.definition.clone()).map_err(|e| {
                            DriveError::Broken(format!(
                                "run {r} started on a definition this worker cannot load: {e}"
                            ))
                        })?)
                    };
                    pinned = Some(f.clone());
                    f
                }
            };
            let now = OffsetDateTime::now_utc();
            match decide(&flow, &run, now, takeover) {
                Next::Done | Next::Busy => return Ok(run.status),
                Next::Append(entry) => {
                    let ended = match &entry.event {
                        EntryEvent::RunCompleted { .. } => Some("completed"),
                        EntryEvent::RunFailed { .. } => Some("failed"),
                        EntryEvent::RunCancelled { .. } => Some("cancelled"),
                        _ => None,
                    };
                    if self.append(r, &mut entries, entry).await?
                        && let Some(outcome) = ended
                    {
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
                Next::Attempt(i) => {
                    self.attempt(&flow, &run, r, &mut entries, i).await?;
                }
            }
        }
    }

    /// Runs one attempt of step `i` and journals how it went.
    async fn attempt(
        &self,
        flow: &Flow,
        run: &Run,
        r: &RunRef,
        entries: &mut Vec<(u64, Entry)>,
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
        let input = template::render(template, &run.context());
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
            (StepKind::Sleep(d), _) => wait("sleep", *d),
            (StepKind::Approval(a), _) => wait("approval", a.timeout),
            (StepKind::WaitForEvent(w), _) => {
                crate::waits::register(&self.bus, r, &step.name, &w.event).await?;
                wait("event", w.timeout)
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
        self.append(r, entries, Entry::new(r, &step.name, attempt, event))
            .await?;
        Ok(())
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
                self.invoke(&Target::service(agent.clone()), input, step, inherit)
                    .await
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
            StepKind::Sleep(_) | StepKind::WaitForEvent(_) | StepKind::Approval(_) => {
                unreachable!("waiting steps are journaled, not executed")
            }
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
        let entries = all
            .into_iter()
            .enumerate()
            .map(|(i, (s, a, e))| (i as u64 + 1, Entry::new(&r, s, a, e)))
            .collect();
        Run::from_entries(entries).unwrap().unwrap()
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
            Next::Attempt(0)
        );
        let running = run_of(vec![("one", 1, started())]);
        assert_eq!(decide(&flow(), &running, now, false), Next::Busy);
        assert_eq!(
            decide(&flow(), &running, now, true),
            Next::Attempt(0),
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
            Next::Attempt(0)
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
