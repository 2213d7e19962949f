//! The flow worker: starts runs from their triggers, schedules and manual starts, and
//! drives them through the journal (DESIGN §15, [`crate::driver`]).
//!
//! Per flow, every worker running it shares three durable consumers:
//!
//! | consumer | stream, subjects | what |
//! |---|---|---|
//! | `flow_<name>` | `<PREFIX>_EVENTS`, the trigger pattern | a trigger starts a run (id: UUIDv5 of flow and event id), which is driven in that delivery |
//! | `run_<name>` | `<PREFIX>_RUNQ`, `P.runq.flow.<name>.*` | wakes (timers, approvals, events, cancels, retries), manual starts, cron ticks |
//! | `wait_<name>` | `<PREFIX>_EVENTS`, the types its `wait_for_event` steps wait for | completes matching waits ([`crate::waits`]) |
//!
//! A run is driven inside one delivery at a time, which is its lease: while a step runs,
//! in-progress acks keep it; when the worker dies, the delivery comes back after
//! [`WorkerConfig::lease`] to another worker, which resumes the run from its journal.
//! A waiting run (sleep, approval, event, retry backoff) holds no delivery: a timer of
//! the run queue, or whoever ends the wait, wakes it.
//!
//! # Guarantees
//!
//! - One run per trigger `event_id`, even when the trigger is delivered or replayed
//!   again: the run's first entry expects subject sequence 0. A replayed trigger of a
//!   failed run retries it from its failed step.
//! - A step whose completion is journaled never runs again; an interrupted step runs
//!   again, and every attempt sends the same `event_id` (the step's idempotency key).
//! - A run keeps the definition it started with: an old run finishes on its own
//!   version when a new one is deployed.
//! - A retryable failure is tried again after the step's retry policy, up to
//!   `max_attempts`; `retry_on` narrows which error codes are retried. A step that
//!   fails for good fails the run (journaled with its error; `weft flow retry` resumes
//!   it from that step) unless its `on_failure` is `continue`.
//! - A call refused by the worker's open circuit breaker is not an attempt: the step
//!   waits until the circuit lets a trial through.
//!
//! # Spans
//!
//! Each delivery runs in a `flow.run` span (kind INTERNAL, child of the consumer's
//! `process` span) with `weft.flow.name`, `weft.flow.run_id`, `weft.delivery.attempt`
//! and, when the delivery is done, `weft.flow.status`; each step attempt in a
//! `flow.step` span with `weft.flow.step`, `weft.flow.step.kind` and
//! `weft.flow.step.attempt`. A failed step has status ERROR and `error.type`
//! (`retryable`, `permanent`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::Instrument as _;
use weft_bus::consumer::{self, ConsumerHandle, Delivery, DeliveryError, DurableConfig};
use weft_bus::invoke::Invoker;
use weft_bus::middleware::{BreakerConfig, CircuitBreakerLayer};
use weft_bus::registry::{Kind, Registered, Registration, Registry};
use weft_bus::retry::RetryPolicy;
use weft_bus::runs::{Journal, RunKind, RunQueue, RunRef, RunStatus};
use weft_bus::{Bus, Envelope};

use crate::definition::Flow;
pub use crate::driver::idempotency_key;
use crate::driver::{Deployed, DriveError, Engine};
use crate::error::FlowError;
use crate::run::run_id;

/// Settings of a worker. Every field states its default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How long after a worker dies its runs resume elsewhere: the ack wait of the
    /// flow's consumers (in-progress acks go out every third of it). Default 10 s.
    pub lease: Duration,
    /// Delay before a delivery is tried again when the journal or the queue failed, not
    /// a step (steps follow their own retry policy). Default [`RetryPolicy::default`]
    /// (exponential from 1 s up to 60 s).
    pub store_retry: RetryPolicy,
    /// Runs driven at once per flow in this worker (they mostly wait on the network,
    /// so many fit one worker). Default 64.
    pub concurrency: usize,
    /// Circuit breaker on the worker's invokes: a failing target is not called for a
    /// while; steps wait for it instead of spending attempts. Default
    /// [`BreakerConfig::default`] (5 failures, 10 s).
    pub breaker: BreakerConfig,
    /// Waits (sleeps, retry delays) shorter than this are slept inside the delivery
    /// instead of on a timer of the run queue (whose resolution is about a second).
    /// Default 2 s.
    pub short_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            lease: Duration::from_secs(10),
            store_retry: RetryPolicy::default(),
            concurrency: 64,
            breaker: BreakerConfig::default(),
            short_wait: Duration::from_secs(2),
        }
    }
}

/// Running flows; [`WorkerHandle::stop`] stops them cleanly.
pub struct WorkerHandle {
    consumers: Vec<ConsumerHandle>,
    registrations: Vec<Registered>,
}

impl WorkerHandle {
    /// Stops pulling deliveries, lets the steps in flight finish and journal, and
    /// deletes the registry entries.
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

/// Where a delivery came from.
#[derive(Clone, Copy)]
enum Source {
    Trigger,
    Queue,
}

/// Starts a worker for `flows`: migrates their runs from the KV bucket of earlier
/// releases ([`crate::legacy`]), sets their cron schedules, and starts their consumers.
///
/// # Errors
/// [`FlowError::Definition`] for an invalid flow; [`FlowError::Bus`] when a stream,
/// the flows bucket, the registry or a schedule is missing or refused (`weft up` creates the streams; cron
/// schedules need nats-server 2.14).
pub async fn start(
    bus: &Bus,
    flows: Vec<Flow>,
    config: WorkerConfig,
) -> Result<WorkerHandle, FlowError> {
    let registry = Registry::open(bus).await?;
    let breaker = CircuitBreakerLayer::new(config.breaker);
    let journal = Journal::open(bus).await?;
    let engine = Arc::new(Engine {
        bus: bus.clone(),
        journal: journal.clone(),
        queue: RunQueue::new(bus),
        flows_kv: bus.kv(&bus.names().flows_bucket).await?,
        invoker: Invoker::guarded(bus, &breaker),
        breaker,
        by: format!("worker-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        short_wait: config.short_wait,
    });
    let mut consumers = Vec::new();
    let mut registrations = Vec::new();
    for flow in flows {
        flow.validate()?;
        crate::legacy::migrate(&engine.flows_kv, &journal, &flow).await?;
        let json = serde_json::to_value(&flow)
            .map_err(|e| FlowError::Definition(format!("flow {}: {e}", flow.name)))?;
        let deployed = Arc::new(Deployed {
            flow: Arc::new(flow.clone()),
            json,
        });
        let durable = |mut d: DurableConfig| {
            d.ack_wait = config.lease;
            d.retry = config.store_retry;
            d.concurrency = config.concurrency;
            // Deliveries run out only if workers keep dying or the journal is down for
            // long; steps decide when a run fails.
            d.max_deliver = 1000;
            d
        };
        if let Some(trigger) = &flow.trigger {
            let d = durable(DurableConfig::new(
                flow.consumer_name(),
                vec![trigger.clone()],
            ));
            let (e, f) = (engine.clone(), deployed.clone());
            consumers.push(
                consumer::start(bus, d, move |d: Delivery| {
                    let (e, f) = (e.clone(), f.clone());
                    async move { on_delivery(&e, &f, Source::Trigger, d).await }
                })
                .await?,
            );
        }
        let d = durable(DurableConfig::on_stream(
            format!("run_{}", flow.name),
            bus.names().runq_stream.clone(),
            vec![bus.subjects().runq(RunKind::Flow, &flow.name, "*")],
        ));
        let (e, f) = (engine.clone(), deployed.clone());
        consumers.push(
            consumer::start(bus, d, move |d: Delivery| {
                let (e, f) = (e.clone(), f.clone());
                async move { on_delivery(&e, &f, Source::Queue, d).await }
            })
            .await?,
        );
        let wait_types = crate::waits::event_types(&flow);
        if !wait_types.is_empty() {
            let patterns = wait_types
                .iter()
                .map(|t| t.to_string().parse())
                .collect::<Result<Vec<_>, _>>()?;
            let d = durable(DurableConfig::new(format!("wait_{}", flow.name), patterns));
            let (e, f) = (engine.clone(), deployed.clone());
            consumers.push(
                consumer::start(bus, d, move |d: Delivery| {
                    let (e, f) = (e.clone(), f.clone());
                    async move {
                        crate::waits::on_event(&e.flows_kv, &e.journal, &e.queue, &f.flow, d).await
                    }
                })
                .await?,
            );
        }
        match &flow.schedule {
            Some(s) => engine.queue.set_cron(&flow.name, &s.server_form()).await?,
            None => engine.queue.clear_cron(&flow.name).await?,
        }

        let mut reg = Registration::new(Kind::Flow, flow.name.clone(), flow.version.clone());
        reg.description = flow.description.clone();
        reg.metadata.insert("trigger".into(), json!(flow.trigger));
        if let Some(s) = &flow.schedule {
            reg.metadata.insert("schedule".into(), json!(s.as_str()));
        }
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
        tracing::info!(flow = %flow.name, trigger = ?flow.trigger, schedule = ?flow.schedule, "flow worker started");
    }
    Ok(WorkerHandle {
        consumers,
        registrations,
    })
}

/// One delivery: starts the run it names (a trigger, a manual start, a cron tick) or
/// wakes it, then drives it, in a `flow.run` span.
async fn on_delivery(
    engine: &Engine,
    deployed: &Deployed,
    source: Source,
    d: Delivery,
) -> Result<(), DeliveryError> {
    let name = &deployed.flow.name;
    let what = d.subject.rsplit('.').next().unwrap_or_default();
    if let (Source::Trigger, Some(debounce), false) = (source, &deployed.flow.debounce, d.replayed)
    {
        return crate::control::debounce(&engine.queue, name, debounce, &d.envelope)
            .await
            .map_err(|e| DeliveryError::Retry(e.to_string()));
    }
    let (id, cause) = match (source, what) {
        (Source::Trigger, _) => (run_id(name, &d.envelope.event_id), Some("event")),
        (Source::Queue, "debounced") => (run_id(name, &d.envelope.event_id), Some("debounce")),
        (Source::Queue, "start") => (run_id(name, &d.envelope.event_id), Some("manual")),
        (Source::Queue, "cron") => (
            run_id(name, &format!("cron:{}", d.stream_sequence)),
            Some("cron"),
        ),
        (Source::Queue, _) => {
            let id = d
                .envelope
                .payload_or_null()
                .get("run")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            (id, None)
        }
    };
    let r = RunRef::new(RunKind::Flow, name, &id)
        .map_err(|e| DeliveryError::Permanent(format!("a wake without a run id: {e}")))?;
    let span = tracing::info_span!(
        "flow.run",
        otel.kind = "internal",
        weft.flow.name = %name,
        weft.flow.run_id = %r.id,
        weft.delivery.attempt = d.attempt,
        weft.flow.status = tracing::field::Empty,
    );
    let takeover = d.attempt > 1;
    let result = async {
        let run = match cause {
            Some(cause) => {
                let (run, fresh) = engine.start(deployed, &r, cause, &d.envelope).await?;
                if !fresh && d.replayed {
                    return retry_failed(engine, deployed, &r, "replay").await;
                }
                match (&deployed.flow.rate_limit, fresh && cause != "manual") {
                    (Some(limit), true) => {
                        let refused =
                            crate::control::admit(&engine.flows_kv, name, limit, &d.envelope)
                                .await
                                .map_err(|e| DriveError::Retry(e.to_string()))?;
                        match refused {
                            Some(why) => engine.refuse(&r, &why).await?,
                            None => run,
                        }
                    }
                    _ => run,
                }
            }
            None => engine.read(&r).await?,
        };
        let Some(run) = run else {
            // A wake for a run that has not started (or was deleted): nothing to do.
            return Ok(RunStatus::Cancelled);
        };
        engine.drive(deployed, &r, run, takeover).await
    }
    .instrument(span.clone())
    .await;
    match &result {
        Ok(status) => {
            span.record("weft.flow.status", status.as_str());
        }
        Err(DriveError::Retry(m) | DriveError::Broken(m)) => {
            tracing::warn!(parent: &span, flow = %name, run = %r.id, error = %m, "cannot drive the run");
        }
    }
    result.map(drop).map_err(DeliveryError::from)
}

/// A replayed trigger of a failed run retries it from its failed step.
async fn retry_failed(
    engine: &Engine,
    deployed: &Deployed,
    r: &RunRef,
    by: &str,
) -> Result<RunStatus, DriveError> {
    match crate::actions::request_retry(&engine.journal, r, by).await {
        Ok(()) | Err(FlowError::NotFailed { .. }) => match engine.read(r).await? {
            Some(run) => engine.drive(deployed, r, run, false).await,
            None => Ok(RunStatus::Cancelled),
        },
        Err(e) => Err(DriveError::Retry(e.to_string())),
    }
}

/// The envelope of a manual start of flow `flow` with `input` as its payload (what
/// `${trigger.payload}` renders to).
pub fn start_envelope(flow: &str, input: serde_json::Value) -> Envelope {
    let mut env = Envelope::event(
        &"weft.flow.start".parse().expect("a valid event type"),
        input,
    );
    env.to = Some(format!("flow.{flow}"));
    env
}
