//! The flow worker: runs flows from their triggers, step by step, checkpointing each.
//!
//! Each flow consumes its trigger through the durable pull consumer `flow_<name>` on
//! `<PREFIX>_EVENTS`, shared by every worker running that flow, so runs spread over
//! workers. While a step runs, the consumer sends in-progress acks; if the worker dies,
//! the trigger is redelivered after the ack wait and another worker resumes the run
//! from its checkpoint.
//!
//! Delivery guarantees: a completed step never runs again. The step that was in
//! progress when a worker died runs again (at-least-once); every attempt of a step
//! carries the same `event_id` (a UUIDv5 of run and step), so services can
//! de-duplicate and a republished event is dropped by JetStream de-duplication.
//!
//! # Failing, and coming back
//!
//! - A retryable step failure is tried again after the step's [retry
//!   policy](crate::definition::Step::retry) (default exponential, 1 s up to 5 min, 10
//!   attempts), through JetStream redelivery.
//! - A call refused by the worker's open circuit breaker is not an attempt: the step
//!   waits until the circuit lets a trial through and calls again.
//! - A step that fails for good (a non-retryable error, or its attempts spent) fails
//!   the run, and the trigger is dead-lettered with the run's error (reason
//!   `permanent`), so `weft dlq ls` shows it and alerting sees it.
//! - A failed run resumes from its failed step, its attempts starting over, when its
//!   trigger comes again as a replay: [`resume`] (`weft flow retry`), `weft dlq replay`
//!   of its dead letter, or `weft replay --to-consumer flow_<name>`. Any other
//!   delivery of a failed run's trigger is dead-lettered again (once: dead letters are
//!   de-duplicated).
//!
//! # Spans
//!
//! Each delivery of a trigger runs in a `flow.run` span (kind INTERNAL, a child of the
//! consumer's `process` span) with `weft.flow.name`, `weft.flow.run_id`,
//! `weft.flow.trigger.event_id`, `weft.delivery.attempt` and, when the delivery is
//! done, `weft.flow.status`; each step attempt in a `flow.step` span under it with
//! `weft.flow.step`, `weft.flow.step.kind` and `weft.flow.step.attempt` (integers as
//! integers). Names stay constant: flows, steps, attempts and run ids are attributes.
//! A failed step or run has status ERROR and `error.type` (`retryable`, `permanent`;
//! for a run, how its delivery ended: `retry`, `permanent`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use serde::Serialize;
use serde_json::{Value, json};
use weft_bus::consumer::{self, ConsumerHandle, Delivery, DeliveryError, DurableConfig};
use weft_bus::invoke::{BoxInvoker, InvokeRequest, Invoker};
use weft_bus::middleware::{BreakerConfig, CircuitBreakerLayer, ServiceExt};
use weft_bus::registry::{Kind, Registered, Registration, Registry};
use weft_bus::retry::RetryPolicy;
use weft_bus::{Bus, Envelope, ErrorKind, Target};

use crate::checkpoint::RunStore;
use crate::definition::{A2A_SEND, Flow, Step, StepKind};
use crate::error::FlowError;
use crate::metrics;
use crate::run::{Run, RunStatus};
use crate::template;

/// Settings of a worker. Every field states its default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Ack wait of the trigger consumers: how long after a worker dies its runs are
    /// picked up elsewhere. In-progress acks go out every third of it. Default 30 s.
    pub ack_wait: Duration,
    /// Delay before a trigger is delivered again when the run store (KV) failed, not a
    /// step (steps follow their own retry policy). Default [`RetryPolicy::default`]
    /// (exponential from 1 s up to 60 s).
    pub store_retry: RetryPolicy,
    /// Runs handled at once per flow in this worker. Default 8.
    pub concurrency: usize,
    /// Circuit breaker on the worker's invokes: a failing target is not called for a
    /// while; steps wait for it instead of spending attempts. Default
    /// [`BreakerConfig::default`] (5 failures, 10 s).
    pub breaker: BreakerConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            ack_wait: Duration::from_secs(30),
            store_retry: RetryPolicy::default(),
            concurrency: 8,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Running flows; [`WorkerHandle::stop`] stops them cleanly.
pub struct WorkerHandle {
    consumers: Vec<ConsumerHandle>,
    registrations: Vec<Registered>,
}

impl WorkerHandle {
    /// Stops pulling triggers, lets running steps finish (their runs are checkpointed),
    /// and deletes the registry entries.
    pub async fn stop(self) {
        for c in self.consumers {
            c.stop().await;
        }
        for r in self.registrations {
            if let Err(e) = r.deregister().await {
                tracing::warn!(error = %e, "cannot delete flow registry entry");
            }
        }
    }
}

/// What a worker shares between the runs of its flows.
#[derive(Clone)]
struct Engine {
    bus: Bus,
    store: RunStore,
    invoker: BoxInvoker,
    breaker: CircuitBreakerLayer,
}

/// Starts a worker for `flows`.
///
/// # Errors
/// [`FlowError::Definition`] for an invalid flow; [`FlowError::Bus`] when the
/// stream, the flows bucket or the registry is missing (`weft up` creates them).
pub async fn start(
    bus: &Bus,
    flows: Vec<Flow>,
    config: WorkerConfig,
) -> Result<WorkerHandle, FlowError> {
    let registry = Registry::open(bus).await?;
    let breaker = CircuitBreakerLayer::new(config.breaker);
    let engine = Engine {
        bus: bus.clone(),
        store: RunStore::open(bus).await?,
        invoker: Invoker::guarded(bus, &breaker),
        breaker,
    };
    let mut consumers = Vec::new();
    let mut registrations = Vec::new();
    for flow in flows {
        flow.validate()?;
        let mut durable = DurableConfig::new(flow.consumer_name(), vec![flow.trigger.clone()]);
        durable.ack_wait = config.ack_wait;
        durable.retry = config.store_retry;
        durable.concurrency = config.concurrency;
        // Steps decide when a run fails; deliveries only run out if workers keep
        // dying or the store is down for long.
        durable.max_deliver = flow
            .steps
            .iter()
            .map(|s| i64::from(s.max_attempts))
            .sum::<i64>()
            + 10;
        let flow = Arc::new(flow);
        let (e, f) = (engine.clone(), flow.clone());
        let handle = consumer::start(bus, durable, move |d: Delivery| {
            let (e, f) = (e.clone(), f.clone());
            async move { e.execute_run(&f, d).await }
        })
        .await?;
        consumers.push(handle);

        let mut reg = Registration::new(Kind::Flow, flow.name.clone(), flow.version.clone());
        reg.description = flow.description.clone();
        reg.metadata.insert("trigger".into(), json!(flow.trigger));
        reg.metadata.insert(
            "steps".into(),
            json!(
                flow.steps
                    .iter()
                    .map(|s| json!({"name": s.name, "kind": s.kind.as_str()}))
                    .collect::<Vec<_>>()
            ),
        );
        registrations.push(registry.register(reg).await?);
        tracing::info!(flow = %flow.name, trigger = %flow.trigger, "flow worker started");
    }
    Ok(WorkerHandle {
        consumers,
        registrations,
    })
}

fn retry(e: FlowError) -> DeliveryError {
    DeliveryError::Retry(e.to_string())
}

impl Engine {
    /// Runs (or resumes) the run of `flow` for one trigger delivery, in a `flow.run`
    /// span (see the module docs).
    async fn execute_run(&self, flow: &Flow, delivery: Delivery) -> Result<(), DeliveryError> {
        let span = tracing::info_span!(
            "flow.run",
            otel.kind = "internal",
            weft.flow.name = %flow.name,
            weft.flow.run_id = %crate::run::run_id(&flow.name, &delivery.envelope.event_id),
            weft.flow.trigger.event_id = %delivery.envelope.event_id,
            weft.delivery.attempt = delivery.attempt,
            weft.flow.status = tracing::field::Empty,
        );
        let result = self
            .run_steps(flow, delivery)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(status) => {
                span.record("weft.flow.status", status.as_str());
            }
            Err(e) => weft_bus::trace::record_error(&span, e),
        }
        result.map(drop)
    }

    /// The body of [`Engine::execute_run`]; returns the run's status when the delivery
    /// is done with.
    async fn run_steps(&self, flow: &Flow, delivery: Delivery) -> Result<RunStatus, DeliveryError> {
        let m = metrics::flows();
        let store = &self.store;
        let replayed = delivery.replayed;
        let fresh = Run::new(flow, delivery.envelope);
        let mut stored = store.create_or_load(fresh).await.map_err(retry)?;
        match stored.run.status {
            RunStatus::Completed => return Ok(RunStatus::Completed),
            RunStatus::Failed if replayed => {
                stored.run.resume();
                store.save(&mut stored).await.map_err(retry)?;
                m.runs.with_label_values(&[&flow.name, "resumed"]).inc();
                tracing::info!(flow = %flow.name, run = %stored.run.id, "resuming a failed run");
            }
            RunStatus::Failed => return Err(failed(&stored.run)),
            RunStatus::Running => {}
        }
        if stored.run.steps.iter().all(|s| s.attempts == 0) && delivery.attempt == 1 {
            m.runs.with_label_values(&[&flow.name, "started"]).inc();
        }
        let mut finished_here = false;
        while let Some(i) = stored.run.next_step() {
            let step = &flow.steps[i];
            if stored.run.steps[i].attempts >= step.max_attempts {
                // Attempts spent by earlier deliveries (e.g. workers dying mid-step).
                let msg = format!("{} attempts spent", step.max_attempts);
                stored.run.fail_step(i, msg, true);
                store.save(&mut stored).await.map_err(retry)?;
                m.runs.with_label_values(&[&flow.name, "failed"]).inc();
                return Err(failed(&stored.run));
            }
            stored.run.start_step(i);
            let event_id = step_event_id(&stored.run, i);
            store.save(&mut stored).await.map_err(retry)?;

            let started = Instant::now();
            let step_span = tracing::info_span!(
                "flow.step",
                otel.kind = "internal",
                weft.flow.name = %flow.name,
                weft.flow.run_id = %stored.run.id,
                weft.flow.step = %step.name,
                weft.flow.step.kind = step.kind.as_str(),
                weft.flow.step.attempt = i64::from(stored.run.steps[i].attempts),
            );
            let result = match template::render(&step.input, &stored.run.context()) {
                Ok(input) => {
                    self.execute_step(&stored.run, step, input, event_id)
                        .instrument(step_span.clone())
                        .await
                }
                Err(e) => Err(StepFailure {
                    message: format!("input template: {e}"),
                    retryable: false,
                }),
            };
            if let Err(failure) = &result {
                weft_bus::trace::record_error(&step_span, failure);
            }
            drop(step_span);
            m.step_duration
                .with_label_values(&[&flow.name, &step.name])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(output) => {
                    m.steps
                        .with_label_values(&[&flow.name, &step.name, "ok"])
                        .inc();
                    stored.run.complete_step(i, output);
                    store.save(&mut stored).await.map_err(retry)?;
                    finished_here = stored.run.status == RunStatus::Completed;
                }
                Err(failure) => {
                    let attempts = stored.run.steps[i].attempts;
                    let give_up = !failure.retryable || attempts >= step.max_attempts;
                    let outcome = if give_up { "failed" } else { "retry" };
                    m.steps
                        .with_label_values(&[&flow.name, &step.name, outcome])
                        .inc();
                    tracing::warn!(flow = %flow.name, run = %stored.run.id, step = %step.name, attempt = attempts, error = %failure.message, give_up, "step failed");
                    stored.run.fail_step(i, failure.message.clone(), give_up);
                    store.save(&mut stored).await.map_err(retry)?;
                    if give_up {
                        m.runs.with_label_values(&[&flow.name, "failed"]).inc();
                        return Err(failed(&stored.run));
                    }
                    let delay = step
                        .retry
                        .delay(i64::from(attempts))
                        .unwrap_or(Duration::ZERO);
                    return Err(DeliveryError::RetryAfter(delay, failure.message));
                }
            }
        }
        if finished_here {
            m.runs.with_label_values(&[&flow.name, "completed"]).inc();
            tracing::info!(flow = %flow.name, run = %stored.run.id, "run completed");
        }
        Ok(stored.run.status)
    }

    async fn execute_step(
        &self,
        run: &Run,
        step: &Step,
        input: Value,
        event_id: String,
    ) -> Result<Value, StepFailure> {
        let trigger = &run.trigger;
        let inherit = |env: &mut Envelope| {
            env.event_id = event_id.clone();
            env.inherit_context(trigger);
            env.from = Some(format!("flow.{}", run.flow));
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
                    Ok(Ok(result)) => result.map_err(|message| StepFailure {
                        message,
                        retryable: false,
                    }),
                    Ok(Err(e)) => Err(StepFailure {
                        message: format!("the jq evaluation failed: {e}"),
                        retryable: false,
                    }),
                    Err(_) => Err(StepFailure {
                        message: format!(
                            "the jq expression took longer than the step's {} ms",
                            step.timeout_ms
                        ),
                        retryable: false,
                    }),
                }
            }
            StepKind::Publish(event_type) => {
                let mut env = Envelope::event(event_type, input);
                inherit(&mut env);
                let published = self.bus.publish_envelope(&env).await?;
                Ok(json!({ "event_id": published.event_id, "sequence": published.sequence }))
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

/// The dead-letter outcome of a run that failed for good: its error as the reason.
fn failed(run: &Run) -> DeliveryError {
    DeliveryError::Permanent(format!(
        "run {} of flow {} failed: {}",
        run.id,
        run.flow,
        run.error.as_deref().unwrap_or("unknown error")
    ))
}

/// The `event_id` every attempt of step `i` uses: a UUIDv5 of (run, step), so retries
/// and resumed runs send the same id and receivers can de-duplicate.
fn step_event_id(run: &Run, i: usize) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{}:{}", run.id, run.steps[i].name).as_bytes(),
    )
    .to_string()
}

/// How [`resume`] sent a failed run's trigger back to its flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Resumed {
    /// Its dead letter was replayed to the flow's consumer (and removed from the DLQ).
    DeadLetter {
        /// The dead letter's id.
        id: u64,
    },
    /// The stored trigger was republished to the flow's consumer (no dead letter of it
    /// was found, e.g. a run that failed before triggers were dead-lettered).
    Trigger {
        /// The copy's stream sequence.
        sequence: u64,
    },
}

/// Resumes failed runs from their failed step: sends each one's trigger again to its
/// flow's consumer `flow_<name>` alone, replaying the trigger's dead letter when there
/// is one (which removes it from the DLQ), otherwise republishing the stored trigger.
/// A worker of the flow then resumes the run (see the module docs). The DLQ is read
/// once for all `runs`.
///
/// Returns one result per run, in order.
///
/// # Errors
/// [`FlowError::Bus`] when the DLQ cannot be read; per run, [`FlowError::NotFailed`]
/// for a run that has not failed, or [`FlowError::Bus`] when its trigger cannot be
/// sent (e.g. no consumer `flow_<name>`: no worker of that flow ever ran).
pub async fn resume(bus: &Bus, runs: &[Run]) -> Result<Vec<Result<Resumed, FlowError>>, FlowError> {
    let letters = weft_bus::dlq::list(bus, None).await?;
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        if run.status != RunStatus::Failed {
            out.push(Err(FlowError::NotFailed {
                run: run.id.clone(),
                status: run.status.as_str(),
            }));
            continue;
        }
        let consumer = format!("flow_{}", run.flow);
        let letter = letters.iter().find(|l| {
            l.letter.as_ref().is_some_and(|d| d.consumer == consumer)
                && l.envelope
                    .as_ref()
                    .is_some_and(|e| e.event_id == run.trigger_event_id)
        });
        let result = match letter {
            Some(l) => weft_bus::dlq::replay(bus, l.id, None)
                .await
                .map(|_| Resumed::DeadLetter { id: l.id }),
            None => weft_bus::replay::envelope_to_consumer(
                bus,
                &consumer,
                &run.trigger,
                &format!("resume:{}:{}", run.id, run.resumed + 1),
            )
            .await
            .map(|sequence| Resumed::Trigger { sequence }),
        };
        out.push(result.map_err(FlowError::from));
    }
    Ok(out)
}

struct StepFailure {
    message: String,
    retryable: bool,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl weft_bus::trace::ErrorType for StepFailure {
    fn error_type(&self) -> std::borrow::Cow<'_, str> {
        if self.retryable {
            "retryable"
        } else {
            "permanent"
        }
        .into()
    }
}

impl From<weft_bus::Error> for StepFailure {
    fn from(e: weft_bus::Error) -> Self {
        StepFailure {
            message: e.to_string(),
            retryable: e.is_retryable(),
        }
    }
}
