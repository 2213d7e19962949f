//! `weft flow runs`, `weft flow retry` and `weft flow worker`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use weft_flows::worker::{self, WorkerConfig};
use weft_flows::{Flow, RunStore};

use super::{Global, print_json};

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// List runs (of one flow, or all) with their status, per-step state and, for
    /// failed runs, why.
    Runs(RunsArgs),
    /// Resume failed runs from their failed step (completed steps do not run again).
    /// The run's trigger goes back to its flow's worker: its dead letter is replayed
    /// (and removed from the DLQ) when there is one. Examples:
    ///
    ///   weft flow retry 0b6c…-run-id
    ///   weft flow retry --all --flow triage --status failed --since 1h
    #[command(verbatim_doc_comment)]
    Retry(RetryArgs),
    /// Run flows from JSON definition files until Ctrl-C or SIGTERM. Workers of the
    /// same flow share its trigger consumer, so runs spread over them.
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this flow.
    pub flow: Option<String>,
    /// Show at most the newest N runs.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["run", "all"])))]
pub struct RetryArgs {
    /// The run to resume (its id, from `weft flow runs`).
    pub run: Option<String>,
    /// Every run that matches --flow, --status and --since.
    #[arg(long)]
    pub all: bool,
    /// With --all: only runs of this flow.
    #[arg(long, requires = "all")]
    pub flow: Option<String>,
    /// With --all: runs in this status (only failed runs resume).
    #[arg(long, requires = "all", default_value = "failed", value_parser = ["failed"])]
    pub status: String,
    /// With --all: only runs that changed within this long, e.g. `30m`, `2h`.
    #[arg(long, requires = "all", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Flow definition files (JSON), e.g. examples/support-desk/flows/triage.json.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Ack wait of the trigger consumers in ms: how soon another worker picks up the
    /// runs of a worker that died.
    #[arg(long, default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    /// Serve Prometheus metrics (GET /metrics) on this address; port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics: std::net::SocketAddr,
    #[command(flatten)]
    pub resources: super::resources::ResourceArgs,
}

pub async fn run(g: &Global, cmd: FlowCommand) -> anyhow::Result<()> {
    match cmd {
        FlowCommand::Runs(args) => runs(g, args).await,
        FlowCommand::Retry(args) => retry(g, args).await,
        FlowCommand::Worker(args) => run_worker(g, args).await,
    }
}

async fn runs(g: &Global, args: RunsArgs) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let mut runs = RunStore::open(&bus)
        .await?
        .list(args.flow.as_deref())
        .await?;
    let skip = runs.len().saturating_sub(args.limit);
    runs.drain(..skip);
    if g.json {
        let out: Vec<_> = runs.iter().map(|r| r.summary()).collect();
        return print_json(&out);
    }
    if runs.is_empty() {
        println!("no runs yet");
        return Ok(());
    }
    println!(
        "{:<36}  {:<10} {:<9}  {:<24} STEPS",
        "RUN", "FLOW", "STATUS", "CREATED"
    );
    for r in runs {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| {
                let status = serde_json::to_value(s.status).unwrap_or_default();
                format!(
                    "{}:{}({})",
                    s.name,
                    status.as_str().unwrap_or("?"),
                    s.attempts
                )
            })
            .collect();
        println!(
            "{:<36}  {:<10} {:<9}  {:<24} {}",
            r.id,
            r.flow,
            r.status.as_str(),
            r.created_at,
            steps.join(" ")
        );
        if let Some(e) = &r.error {
            println!("    error: {e}");
            println!("    (resume it with `weft flow retry {}`)", r.id);
        }
    }
    Ok(())
}

async fn retry(g: &Global, args: RetryArgs) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let all = RunStore::open(&bus)
        .await?
        .list(args.flow.as_deref())
        .await?;
    let chosen: Vec<weft_flows::Run> = match &args.run {
        Some(id) => vec![
            all.into_iter()
                .find(|r| &r.id == id)
                .with_context(|| format!("no run {id} (see `weft flow runs`)"))?,
        ],
        None => {
            let cutoff = args.since.map(|d| time::OffsetDateTime::now_utc() - d);
            all.into_iter()
                .filter(|r| r.status.as_str() == args.status)
                .filter(|r| {
                    cutoff.is_none_or(|c| {
                        time::OffsetDateTime::parse(
                            &r.updated_at,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .is_ok_and(|t| t >= c)
                    })
                })
                .collect()
        }
    };
    let results = worker::resume(&bus, &chosen).await?;
    let mut failures = 0;
    let mut out = Vec::new();
    for (run, result) in chosen.iter().zip(results) {
        match result {
            Ok(how) => {
                if !g.json {
                    let via = match &how {
                        worker::Resumed::DeadLetter { id } => format!("dead letter {id} replayed"),
                        worker::Resumed::Trigger { .. } => "trigger republished".into(),
                    };
                    println!("resuming run {} of {} ({via})", run.id, run.flow);
                }
                out.push(serde_json::json!({"run": run.id, "flow": run.flow, "resumed": how}));
            }
            Err(e) => {
                failures += 1;
                if !g.json {
                    weft::telemetry::say(
                        tracing::Level::ERROR,
                        "error",
                        &format!("run {}: {e}", run.id),
                    );
                }
                out.push(
                    serde_json::json!({"run": run.id, "flow": run.flow, "error": e.to_string()}),
                );
            }
        }
    }
    if g.json {
        print_json(&out)?;
    } else if chosen.is_empty() {
        println!("no runs match");
    } else {
        println!("(`weft flow runs` shows them continue)");
    }
    anyhow::ensure!(
        failures == 0,
        "{failures} of {} runs could not be resumed",
        chosen.len()
    );
    Ok(())
}

async fn run_worker(g: &Global, args: WorkerArgs) -> anyhow::Result<()> {
    let mut flows = Vec::new();
    for f in &args.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        flows.push(Flow::from_json(&text).with_context(|| format!("in {}", f.display()))?);
    }
    let bus = g.connect().await?;
    super::resources::ensure(&bus, &args.resources).await?;
    let config = WorkerConfig {
        ack_wait: Duration::from_millis(args.ack_wait_ms),
        ..WorkerConfig::default()
    };
    let names: Vec<String> = flows.iter().map(|f| f.name.clone()).collect();
    let metrics = weft_gateway::MetricsServer::bind(args.metrics).await?;
    let metrics_addr = metrics.local_addr();
    let (stop_metrics, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = tokio::spawn(metrics.serve(async move {
        let _ = stopped.await;
    }));
    let handle = worker::start(&bus, flows, config).await?;
    let stop = super::up::shutdown_signal();
    weft::telemetry::say(
        tracing::Level::INFO,
        "",
        &format!(
            "flow worker running {} on {}; metrics on http://{}/metrics (Ctrl-C to stop)",
            names.join(", "),
            bus.server_url(),
            metrics_addr.map_or("?".into(), |a| a.to_string())
        ),
    );
    stop.await;
    weft::telemetry::say(
        tracing::Level::INFO,
        "",
        "stopping: finishing running steps",
    );
    handle.stop().await;
    let _ = stop_metrics.send(());
    let _ = metrics_task.await;
    bus.drain().await.ok();
    Ok(())
}
