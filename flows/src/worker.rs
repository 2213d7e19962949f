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
//! carries the same `event_id` (kept in the checkpoint), so services can de-duplicate
//! and a republished event is dropped by JetStream de-duplication.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_bus::consumer::{self, ConsumerHandle, Delivery, DeliveryError, DurableConfig};
use weft_bus::invoke::{BoxInvoker, InvokeRequest, Invoker};
use weft_bus::middleware::{BreakerConfig, CircuitBreakerLayer, ServiceExt};
use weft_bus::registry::{Kind, Registered, Registration, Registry};
use weft_bus::retry::RetryPolicy;
use weft_bus::{Bus, Envelope, Target};

use crate::checkpoint::RunStore;
use crate::definition::{Flow, Step, StepKind};
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
    /// Delay before a failed step is retried. Default 1 s.
    pub retry_delay: Duration,
    /// Runs handled at once per flow in this worker. Default 8.
    pub concurrency: usize,
    /// Circuit breaker on the worker's invokes: a failing target is not called for a
    /// while, and its steps fail fast (and are retried later). Default
    /// [`BreakerConfig::default`] (5 failures, 10 s).
    pub breaker: BreakerConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
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
    let store = RunStore::open(bus).await?;
    let registry = Registry::open(bus).await?;
    let invoker = Invoker::guarded(bus, &CircuitBreakerLayer::new(config.breaker));
    let mut consumers = Vec::new();
    let mut registrations = Vec::new();
    for flow in flows {
        flow.validate()?;
        let mut durable = DurableConfig::new(flow.consumer_name(), vec![flow.trigger.clone()]);
        durable.ack_wait = config.ack_wait;
        durable.retry = RetryPolicy::fixed(config.retry_delay);
        durable.concurrency = config.concurrency;
        // Steps decide when a run fails; deliveries only run out if the store is down.
        durable.max_deliver = flow
            .steps
            .iter()
            .map(|s| i64::from(s.max_attempts))
            .sum::<i64>()
            + 10;
        let flow = Arc::new(flow);
        let (b, s, f, i) = (bus.clone(), store.clone(), flow.clone(), invoker.clone());
        let handle = consumer::start(bus, durable, move |d: Delivery| {
            let (b, s, f, i) = (b.clone(), s.clone(), f.clone(), i.clone());
            async move { execute_run(&b, &i, &s, &f, d).await }
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

/// Runs (or resumes) the run of `flow` for one trigger delivery.
async fn execute_run(
    bus: &Bus,
    invoker: &BoxInvoker,
    store: &RunStore,
    flow: &Flow,
    delivery: Delivery,
) -> Result<(), DeliveryError> {
    let m = metrics::flows();
    let fresh = Run::new(flow, delivery.envelope);
    let mut stored = store.create_or_load(fresh).await.map_err(retry)?;
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
            return Ok(());
        }
        stored.run.start_step(i);
        let event_id = step_event_id(&stored.run, i);
        store.save(&mut stored).await.map_err(retry)?;

        let started = Instant::now();
        let result = match template::render(&step.input, &stored.run.context()) {
            Ok(input) => execute_step(bus, invoker, &stored.run, step, input, event_id).await,
            Err(e) => Err(StepFailure {
                message: format!("input template: {e}"),
                retryable: false,
            }),
        };
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
                let give_up =
                    !failure.retryable || stored.run.steps[i].attempts >= step.max_attempts;
                let outcome = if give_up { "failed" } else { "retry" };
                m.steps
                    .with_label_values(&[&flow.name, &step.name, outcome])
                    .inc();
                tracing::warn!(flow = %flow.name, run = %stored.run.id, step = %step.name, error = %failure.message, give_up, "step failed");
                stored.run.fail_step(i, failure.message.clone(), give_up);
                store.save(&mut stored).await.map_err(retry)?;
                if give_up {
                    m.runs.with_label_values(&[&flow.name, "failed"]).inc();
                    return Ok(());
                }
                return Err(DeliveryError::Retry(failure.message));
            }
        }
    }
    if finished_here {
        m.runs.with_label_values(&[&flow.name, "completed"]).inc();
        tracing::info!(flow = %flow.name, run = %stored.run.id, "run completed");
    }
    Ok(())
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

struct StepFailure {
    message: String,
    retryable: bool,
}

impl From<weft_bus::Error> for StepFailure {
    fn from(e: weft_bus::Error) -> Self {
        StepFailure {
            message: e.to_string(),
            retryable: e.is_retryable(),
        }
    }
}

async fn execute_step(
    bus: &Bus,
    invoker: &BoxInvoker,
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
        StepKind::Invoke(target) => invoke(invoker, target, input, step, inherit).await,
        StepKind::Agent(agent) => {
            invoke(
                invoker,
                &Target::service(agent.clone()),
                input,
                step,
                inherit,
            )
            .await
        }
        StepKind::Publish(event_type) => {
            let mut env = Envelope::event(event_type, input);
            inherit(&mut env);
            let published = bus.publish_envelope(&env).await?;
            Ok(json!({ "event_id": published.event_id, "sequence": published.sequence }))
        }
    }
}

async fn invoke(
    invoker: &BoxInvoker,
    target: &Target,
    input: Value,
    step: &Step,
    inherit: impl Fn(&mut Envelope),
) -> Result<Value, StepFailure> {
    let mut env = Envelope::request(target.to_string(), input);
    inherit(&mut env);
    let request = InvokeRequest::new(target.clone(), env, step.timeout_duration());
    let reply = invoker.clone().oneshot(request).await?;
    Ok(reply.payload.unwrap_or(Value::Null))
}
