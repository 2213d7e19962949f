//! `weft flow`: list flows, start, inspect, cancel, retry and approve runs, run a
//! worker. Runs are read from the journal (`<PREFIX>_RUNS`, DESIGN §15).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use weft_bus::registry::{Kind, Registry};
use weft_flows::worker::{self, WorkerConfig};
use weft_flows::{Flow, Run, RunFilter, RunStatus, Runs};

use super::journal::{actor, parse_status, print_steps, since};
use super::{Global, print_json};

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// List the flows the mesh's workers run: version, trigger, schedule, steps,
    /// workers.
    Ls,
    /// List runs of a flow (or all), oldest first, with each step's status. Examples:
    ///
    ///   weft flow runs triage
    ///   weft flow runs triage --status failed --since 2h --json
    #[command(verbatim_doc_comment)]
    Runs(RunsArgs),
    /// Show one run: every step with its input, output, attempts, timings and errors.
    Show(ShowArgs),
    /// Start a run by hand, its input as the trigger payload; prints the run id. A
    /// worker of the flow takes it (one that starts later, if none runs now).
    /// Example: weft flow start triage '{"title": "printer on fire"}' --wait
    Start(StartArgs),
    /// Cancel a run: no further step starts; a waiting run ends at once.
    Cancel(CancelArgs),
    /// Resume failed runs from their failed step (completed steps do not run again;
    /// the failed step gets its attempts anew). Examples:
    ///
    ///   weft flow retry 0b6c…-run-id
    ///   weft flow retry --all --flow triage --since 1h
    #[command(verbatim_doc_comment)]
    Retry(RetryArgs),
    /// Decide a run's approval step: approve it, or deny it with --deny REASON (the
    /// step fails, and its on_failure decides what the run does).
    Approve(ApproveArgs),
    /// Run flows from JSON definition files until Ctrl-C or SIGTERM. Workers of the
    /// same flow share its consumers, so runs spread over them.
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this flow.
    pub flow: Option<String>,
    /// Only runs in this status: running, waiting, cancelling, completed, failed,
    /// cancelled.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<RunStatus>,
    /// Only runs started within this long, e.g. `30m`, `2h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Show at most the newest N runs.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print only the run ids, one per line (nothing when none match), for scripts:
    /// `weft flow approve $(weft flow runs greeted --status waiting --limit 1 -q) approve`.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run id (from `weft flow runs` or `weft flow start`).
    pub run: String,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The flow.
    pub flow: String,
    /// The input (JSON): `${trigger.payload}` in the flow's templates. Default `{}`.
    pub input: Option<String>,
    /// Wait until the run ends and print it (exit code 1 when it did not complete).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: how long at most, e.g. `30s`, `5m`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run id.
    pub run: String,
    /// Why (kept in the journal).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["run", "all"])))]
pub struct RetryArgs {
    /// The run to resume (its id, from `weft flow runs`).
    pub run: Option<String>,
    /// Every failed run that matches --flow and --since.
    #[arg(long)]
    pub all: bool,
    /// With --all: only runs of this flow.
    #[arg(long, requires = "all")]
    pub flow: Option<String>,
    /// With --all: only runs started within this long, e.g. `30m`, `2h`.
    #[arg(long, requires = "all", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The run id.
    pub run: String,
    /// The approval step's name.
    pub step: String,
    /// Deny instead, for this reason.
    #[arg(long, value_name = "REASON")]
    pub deny: Option<String>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Flow definition files (JSON), e.g. examples/support-desk/flows/triage.json.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Lease of a run in ms: how soon another worker resumes the runs of a worker that
    /// died.
    #[arg(long, default_value_t = 10_000)]
    pub lease_ms: u64,
    /// Serve Prometheus metrics (GET /metrics) on this address; port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics: std::net::SocketAddr,
    #[command(flatten)]
    pub resources: super::resources::ResourceArgs,
}

pub async fn run(g: &Global, cmd: FlowCommand) -> anyhow::Result<()> {
    match cmd {
        FlowCommand::Ls => ls(g).await,
        FlowCommand::Runs(args) => runs(g, args).await,
        FlowCommand::Show(args) => show(g, args).await,
        FlowCommand::Start(args) => start(g, args).await,
        FlowCommand::Cancel(args) => {
            let who = actor();
            act(g, |r| async move {
                r.cancel(&args.run, &who, &args.reason).await
            })
            .await
        }
        FlowCommand::Retry(args) => retry(g, args).await,
        FlowCommand::Approve(args) => {
            let who = actor();
            act(g, |r| async move {
                r.approve(&args.run, &args.step, &who, args.deny.as_deref())
                    .await
            })
            .await
        }
        FlowCommand::Worker(args) => run_worker(g, args).await,
    }
}

fn status(s: RunStatus) -> &'static str {
    s.as_str()
}

async fn ls(g: &Global) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let flows = Registry::open(&bus).await?.listing_kind(Kind::Flow).await?;
    if g.json {
        return print_json(&flows);
    }
    if flows.is_empty() {
        println!("no flow workers running (start one with `weft flow worker FILE.json`)");
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:<22} {:<16} {:>7}  STEPS",
        "FLOW", "VERSION", "TRIGGER", "SCHEDULE", "WORKERS"
    );
    for f in flows {
        let text = |k: &str| {
            f.metadata
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned()
        };
        let steps: Vec<String> = f
            .metadata
            .get("steps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{}:{}",
                    s["name"].as_str().unwrap_or("?"),
                    s["kind"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "{:<16} {:<8} {:<22} {:<16} {:>7}  {}",
            f.name,
            f.versions.join(","),
            text("trigger"),
            text("schedule"),
            f.instances,
            steps.join(" ")
        );
    }
    Ok(())
}

async fn runs(g: &Global, args: RunsArgs) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let filter = RunFilter {
        flow: args.flow,
        status: args.status,
        since: since(args.since),
    };
    let mut runs = Runs::open(&bus).await?.list(&filter).await?;
    let skip = runs.len().saturating_sub(args.limit);
    runs.drain(..skip);
    if g.json {
        let out: Vec<_> = runs.iter().map(Run::summary).collect();
        return print_json(&out);
    }
    if args.quiet {
        for r in &runs {
            println!("{}", r.id);
        }
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs match");
        return Ok(());
    }
    println!(
        "{:<36}  {:<12} {:<10} {:<24} STEPS",
        "RUN", "FLOW", "STATUS", "CREATED"
    );
    for r in runs {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| {
                let st = json!(s.status.state());
                format!("{}:{}({})", s.name, st.as_str().unwrap_or("?"), s.attempts)
            })
            .collect();
        println!(
            "{:<36}  {:<12} {:<10} {:<24} {}",
            r.id,
            r.flow,
            status(r.status),
            r.created_at,
            steps.join(" ")
        );
        if let Some(e) = &r.error {
            println!("    error: {e}");
            if r.status == RunStatus::Failed {
                println!("    (resume it with `weft flow retry {}`)", r.id);
            }
        }
    }
    Ok(())
}

/// The shape of `weft flow show --json` and `GET /v1/runs/{id}`.
fn detail(run: &Run) -> Value {
    let mut v = serde_json::to_value(run).unwrap_or_default();
    v["definition"] = run.definition().clone();
    v
}

async fn show(g: &Global, args: ShowArgs) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let run = Runs::open(&bus)
        .await?
        .find(&args.run)
        .await?
        .with_context(|| format!("no run {} (see `weft flow runs`)", args.run))?;
    print_run(g, &run)
}

fn print_run(g: &Global, run: &Run) -> anyhow::Result<()> {
    if g.json {
        return print_json(&detail(run));
    }
    println!("run      {}", run.id);
    println!("flow     {} {}", run.flow, run.version);
    println!("status   {}", status(run.status));
    println!("cause    {} (event {})", run.cause, run.trigger.event_id);
    println!("started  {}", run.created_at);
    println!("updated  {}", run.updated_at);
    if run.retries > 0 {
        println!("retries  {}", run.retries);
    }
    if let Some(e) = &run.error {
        println!("error    {e}");
    }
    if let Some(o) = &run.output {
        println!("output   {o}");
    }
    print_steps(&run.steps);
    Ok(())
}

async fn start(g: &Global, args: StartArgs) -> anyhow::Result<()> {
    let input: Value = match &args.input {
        Some(text) => serde_json::from_str(text).context("the input is not JSON")?,
        None => json!({}),
    };
    let bus = g.connect().await?;
    let workers = Registry::open(&bus)
        .await?
        .list_kind(Kind::Flow, Some(&args.flow))
        .await?;
    if workers.is_empty() {
        weft::telemetry::say(
            tracing::Level::WARN,
            "warning",
            &format!(
                "no worker runs flow {} now: the run starts when one does",
                args.flow
            ),
        );
    }
    let runs = Runs::open(&bus).await?;
    let started = runs.start(&args.flow, input).await?;
    if !args.wait {
        if g.json {
            return print_json(&started);
        }
        println!("{}", started.run_id);
        return Ok(());
    }
    let run = runs.wait(&started.run_id, args.timeout).await?;
    let Some(run) = run.filter(|r| r.status.is_terminal()) else {
        anyhow::bail!(
            "run {} did not end within {} (see `weft flow show {}`)",
            started.run_id,
            humantime::format_duration(args.timeout),
            started.run_id
        );
    };
    print_run(g, &run)?;
    anyhow::ensure!(
        run.status == RunStatus::Completed,
        "run {} {}",
        run.id,
        status(run.status)
    );
    Ok(())
}

async fn act<F, Fut>(g: &Global, action: F) -> anyhow::Result<()>
where
    F: FnOnce(Runs) -> Fut,
    Fut: std::future::Future<Output = Result<Run, weft_flows::FlowError>>,
{
    let bus = g.connect().await?;
    let run = action(Runs::open(&bus).await?).await?;
    if g.json {
        return print_json(&run.summary());
    }
    println!("run {} of {} is {}", run.id, run.flow, status(run.status));
    Ok(())
}

async fn retry(g: &Global, args: RetryArgs) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let runs = Runs::open(&bus).await?;
    let ids: Vec<String> = match args.run {
        Some(id) => vec![id],
        None => runs
            .list(&RunFilter {
                flow: args.flow,
                status: Some(RunStatus::Failed),
                since: since(args.since),
            })
            .await?
            .into_iter()
            // What a compensated run did was undone: it is not resumed.
            .filter(|r| !r.compensated)
            .map(|r| r.id.clone())
            .collect(),
    };
    let who = actor();
    let mut failures = 0;
    let mut out = Vec::new();
    for id in &ids {
        match runs.retry(id, &who).await {
            Ok(run) => {
                if !g.json {
                    println!(
                        "retrying run {} of {} from its failed step",
                        run.id, run.flow
                    );
                }
                out.push(json!({"run": run.id, "flow": run.flow, "retries": run.retries}));
            }
            Err(e) => {
                failures += 1;
                if !g.json {
                    weft::telemetry::say(tracing::Level::ERROR, "error", &format!("run {id}: {e}"));
                }
                out.push(json!({"run": id, "error": e.to_string()}));
            }
        }
    }
    if g.json {
        print_json(&out)?;
    } else if ids.is_empty() {
        println!("no failed runs match");
    } else {
        println!("(`weft flow runs` shows them continue)");
    }
    anyhow::ensure!(
        failures == 0,
        "{failures} of {} runs could not be retried",
        ids.len()
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
        lease: Duration::from_millis(args.lease_ms),
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
