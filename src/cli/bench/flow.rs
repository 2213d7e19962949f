//! `flow_runs` and `flow_steps`: a 3-step flow of no-op invokes, journaled, runs/s and
//! steps/s. There is no raw twin: flows are Weft's own.
//!
//! A flow `bench` triggered by `bench.flow` invokes the no-op endpoint `bench.noop`
//! three times. Its worker is started once and stopped (creating its durable
//! consumer), triggers are published while it is down (Weft durable publishes, 256 in
//! flight, for half the duration and at most 5 s), then the worker is started again and
//! measured until it has completed every run or the duration has passed.
//!
//! The rate at which the triggers were published is the figure's ceiling: a flow
//! cannot complete runs faster than JetStream stores their triggers (and each run also
//! appends eight journal entries: `run.started`, a `step.started` and a
//! `step.completed` per step, `run.completed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use weft_bus::EventType;
use weft_flows::worker::{self, WorkerConfig};
use weft_flows::{Flow, Step};

use super::durable_publish::{IN_FLIGHT, weft_publisher};
use super::invoke::{serve_noop, target};
use super::{Bench, Cpu, Figure, Run, closed_loop};

/// Longest time spent publishing triggers.
const MAX_LOAD: Duration = Duration::from_secs(5);
/// Name of the bench's flow.
const FLOW: &str = "bench";
/// Steps per run.
const STEPS: [&str; 3] = ["one", "two", "three"];

/// Measures `flow_runs` and `flow_steps`.
///
/// # Errors
/// When connecting fails, the service or worker cannot start, or no run completes.
pub async fn run(b: &Bench) -> anyhow::Result<Vec<Figure>> {
    let trigger: EventType = "bench.flow".parse()?;
    let mut flow =
        Flow::new(FLOW, trigger.as_str().parse()?).description("weft bench: three no-op invokes");
    for step in STEPS {
        flow = flow.step(Step::invoke(step, target()?, json!("${trigger.payload}")));
    }

    let service_bus = b.connect("service").await?;
    let steps = Arc::new(AtomicU64::new(0));
    let service = serve_noop(&service_bus, Some(steps.clone())).await?;
    let worker_bus = b.connect("flow").await?;
    let config = WorkerConfig::default();
    let concurrency = config.concurrency;
    worker::start(&worker_bus, vec![flow.clone()], config.clone())
        .await?
        .stop()
        .await;

    let publisher = b.connect("publish").await?;
    let load = closed_loop(
        IN_FLIGHT,
        (b.duration / 2).min(MAX_LOAD),
        weft_publisher(&publisher, trigger, b),
    )
    .await
    .require_ops("publishing triggers")?;
    let ceiling = load.rate();
    b.progress(format!(
        "flow: {} triggers published at {:.0} msgs/s",
        load.ops, ceiling
    ));

    let runs = weft_flows::metrics::flows().runs.clone();
    let completed = || runs.with_label_values(&[FLOW, "completed"]).get();
    let failed = || runs.with_label_values(&[FLOW, "failed"]).get();
    let (completed_before, failed_before) = (completed(), failed());
    steps.store(0, Ordering::Relaxed);
    let cpu = Cpu::now();
    let started = Instant::now();
    let handle = worker::start(&worker_bus, vec![flow], config).await?;
    let mut done_at = started.elapsed();
    let mut last = 0;
    while completed() - completed_before < load.ops && started.elapsed() < b.duration {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = completed() - completed_before;
        if now != last {
            (last, done_at) = (now, started.elapsed());
        }
    }
    let steps_done = steps.load(Ordering::Relaxed);
    let elapsed_ms = done_at.as_secs_f64() * 1000.0;
    let errors = failed() - failed_before;
    handle.stop().await;
    service.stop().await?;
    // Triggers left over are not the next round's business.
    worker_bus
        .jetstream()
        .get_stream(&worker_bus.names().events_stream)
        .await?
        .delete_consumer(&format!("flow_{FLOW}"))
        .await?;

    let runs = Run {
        ops: completed() - completed_before,
        errors,
        dropped: None,
        elapsed_ms,
        first_error: (errors > 0).then(|| format!("{errors} runs failed")),
        ..Run::default()
    }
    .cpu_since(cpu)
    .require_ops("the bench flow")?;
    let steps = Run {
        ops: steps_done,
        ..runs.clone()
    };
    let figure = Figure::weft_only;
    Ok(vec![
        Figure {
            ceiling: Some(ceiling),
            note: format!(
                "{} triggers; {concurrency} runs at once (worker default); ceiling = this run's trigger publish rate (JetStream acks, {IN_FLIGHT} in flight), and each run also appends 8 journal entries",
                load.ops
            ),
            ..figure("flow_runs", "runs/s", runs)
        },
        figure("flow_steps", "steps/s", steps).note("no-op invokes of bench.noop"),
    ])
}
