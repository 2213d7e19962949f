//! `weft bench`: Weft's figures beside two twins doing the same work without Weft.
//!
//! Every scenario of the bus runs three times in each round, taking turns: through
//! Weft's API, through the hand-written twin ([`hand`]), and through the raw twin.
//!
//! - **hand** is what a Rust developer writes without Weft: `async-nats` plus
//!   `serde_json`, building the same envelope-shaped JSON object per message (fresh id
//!   and time), encoding it, and decoding what arrives into a `serde_json::Value`.
//!   `weft / hand` (`ratio_hand`) is the price of Weft's envelope validation, tracing,
//!   metrics, middleware and task handling over code a user would write anyway.
//! - **raw** sends the very envelope bytes and headers Weft sends and never reads
//!   them: a [`Wire`] template is an envelope encoded once by Weft, whose `event_id`
//!   the raw twin rewrites in place per message (so JetStream de-duplication treats
//!   every message as new). `weft / raw` (`ratio_raw`) is against the physical limit
//!   of the client and server on this machine.
//!
//! Every figure is measured over a bounded time (`--duration-ms`, after a short
//! warm-up) and the run always ends: subscribers that fall behind lose messages inside
//! the client (slow consumer), which are counted and reported as drops.
//!
//! The bench runs under its own prefix `<prefix>_bench_<random>` with its own streams
//! and buckets, so it never touches a mesh's events; on an existing server they are
//! deleted at the end.

mod a2a;
mod agent;
mod durable_consume;
mod durable_publish;
mod flow;
pub mod hand;
mod invoke;
mod mcp;
mod pubsub;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use weft_bus::publish::MSG_ID_HEADER;
use weft_bus::resources::{self, ResourceConfig};
use weft_bus::server::{LocalServer, LocalServerConfig};
use weft_bus::{Bus, ConnectOptions, Envelope, Prefix};

use super::{Global, print_json};

/// Size of the envelope's `payload` field in every scenario, in bytes of compact JSON.
pub const PAYLOAD_BYTES: usize = 128;

/// `weft bench [--duration-ms MS] [--quick] [--only SCENARIO,…]`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How long each side (weft, hand, raw) of each scenario is measured, in ms.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub duration_ms: u64,
    /// A short run (300 ms per side): checks that everything works, figures are rough.
    #[arg(long, conflicts_with = "duration_ms")]
    pub quick: bool,
    /// Run every scenario this many times, the sides taking turns, and report the
    /// median round of each figure (by weft/hand, or weft/raw where there is no hand
    /// twin) and the range of that ratio: steadier
    /// figures on a machine whose load changes. An odd count has a true median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// The nats-server binary for the local server (default: $NATS_SERVER_BIN, PATH,
    /// .tools/). Ignored with --server.
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
}

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Scenario {
    /// Fire-and-forget publish → core subscription, msgs/s.
    Pubsub,
    /// Publish with JetStream acks, 256 in flight, msgs/s.
    DurablePublish,
    /// Sequential request-reply, p50 and p99 µs.
    InvokeLatency,
    /// Request-reply with 64 in flight, req/s.
    InvokeThroughput,
    /// Durable pull consumer handling and acking stored events, msgs/s.
    DurableConsume,
    /// A 3-step flow of no-op invokes, journaled, runs/s and steps/s.
    Flow,
    /// Agent chats on the scripted model with one tool call each, 16 in flight,
    /// chats/s.
    AgentChat,
    /// One agent chat at a time with a zero-latency model and two tool calls, beside
    /// its three raw request-replies: p50 and p99 µs.
    AgentLoop,
    /// MCP `tools/call` over Streamable HTTP to a no-op endpoint, beside a direct bus
    /// invoke of it: calls/s (16 in flight) and p50 µs.
    McpCall,
    /// A2A `SendMessage` through the gateway to a no-op agent, beside a direct bus
    /// invoke of its `chat`: sends/s (16 in flight) and p50 µs.
    A2aSend,
}

const ALL: [Scenario; 10] = [
    Scenario::Pubsub,
    Scenario::DurablePublish,
    Scenario::InvokeLatency,
    Scenario::InvokeThroughput,
    Scenario::DurableConsume,
    Scenario::Flow,
    Scenario::AgentChat,
    Scenario::AgentLoop,
    Scenario::McpCall,
    Scenario::A2aSend,
];

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Rates: more is better.
    Higher,
    /// Latencies: less is better.
    Lower,
}

/// What one side of a scenario did: operations completed (messages received, requests
/// answered, messages acked), errors, client-side drops, and the time it took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    /// Operations completed.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Messages sent but never received (pubsub only: lost to a slow consumer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// Measured time in ms.
    pub elapsed_ms: f64,
    /// CPU time this process used while the side ran, in ms (see [`Cpu`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// CPU time the local nats-server used while the side ran, in ms (see [`Cpu`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_ms: Option<f64>,
    /// The first error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Run {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        if self.elapsed_ms <= 0.0 {
            return 0.0;
        }
        self.ops as f64 * 1000.0 / self.elapsed_ms
    }

    /// CPU µs per operation of this process and of the local nats-server.
    pub fn cpu_us_per_op(&self) -> (Option<f64>, Option<f64>) {
        let per_op = |ms: Option<f64>| {
            ms.filter(|_| self.ops > 0)
                .map(|ms| ms * 1000.0 / self.ops as f64)
        };
        (per_op(self.cpu_ms), per_op(self.server_cpu_ms))
    }

    /// Sets the CPU used since `since`.
    fn cpu_since(mut self, since: Cpu) -> Run {
        (self.cpu_ms, self.server_cpu_ms) = Cpu::now().minus(since);
        self
    }

    /// Adds another round's counts to these.
    fn add(&mut self, other: &Run) {
        self.ops += other.ops;
        let sum = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        self.cpu_ms = sum(self.cpu_ms, other.cpu_ms);
        self.server_cpu_ms = sum(self.server_cpu_ms, other.server_cpu_ms);
        self.errors += other.errors;
        self.dropped = match (self.dropped, other.dropped) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.elapsed_ms += other.elapsed_ms;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Fails when nothing completed, with the first error as the reason.
    fn require_ops(self, what: &str) -> anyhow::Result<Run> {
        if self.ops == 0 {
            anyhow::bail!(
                "{what} completed no operation: {}",
                self.first_error.as_deref().unwrap_or("nothing happened")
            );
        }
        Ok(self)
    }
}

/// CPU time used so far, in ns, by this process and by the local nats-server the
/// bench started: the sum over their threads of the first field of
/// `/proc/<pid>/task/<tid>/schedstat` (time on a CPU, ns). Linux only (`None`
/// elsewhere, or for a server the bench did not start); threads that have exited no
/// longer count, which the bench's long-lived runtime threads never do while a side runs.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    client_ns: Option<u64>,
    server_ns: Option<u64>,
}

/// The local nats-server's pid, once the bench started it.
static SERVER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

impl Cpu {
    /// Now.
    pub fn now() -> Cpu {
        Cpu {
            client_ns: threads_cpu_ns("self"),
            server_ns: SERVER_PID
                .get()
                .and_then(|pid| threads_cpu_ns(&pid.to_string())),
        }
    }

    /// The CPU used between `earlier` and `self`, in ms: this process, the server.
    fn minus(self, earlier: Cpu) -> (Option<f64>, Option<f64>) {
        let ms =
            |now: Option<u64>, then: Option<u64>| Some(now?.saturating_sub(then?) as f64 / 1e6);
        (
            ms(self.client_ns, earlier.client_ns),
            ms(self.server_ns, earlier.server_ns),
        )
    }
}

/// The CPU time of process `pid`'s threads, in ns (see [`Cpu`]).
fn threads_cpu_ns(pid: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        // A thread that ended since the listing counts no more.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// One value per side of a figure: Weft, the hand-written twin ([`hand`]) and the raw
/// twin ([`Wire`]); the twins are absent where a scenario has none.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sides<T> {
    /// The Weft side.
    pub weft: T,
    /// The hand-written twin: `async-nats` + `serde_json`, building and decoding the
    /// same envelope-shaped JSON per message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hand: Option<T>,
    /// The raw twin: `async-nats` moving Weft's bytes, never built nor read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<T>,
}

impl<T> Sides<T> {
    /// Weft alone.
    pub fn weft(weft: T) -> Sides<T> {
        Sides {
            weft,
            hand: None,
            raw: None,
        }
    }

    /// All three sides.
    pub fn all(weft: T, hand: T, raw: T) -> Sides<T> {
        Sides {
            weft,
            hand: Some(hand),
            raw: Some(raw),
        }
    }

    /// Each side mapped by `f`.
    pub fn map<U>(&mut self, mut f: impl FnMut(&mut T) -> U) -> Sides<U> {
        Sides {
            weft: f(&mut self.weft),
            hand: self.hand.as_mut().map(&mut f),
            raw: self.raw.as_mut().map(&mut f),
        }
    }
}

impl Sides<Run> {
    /// The sides there are, by name: `weft`, `hand`, `raw`.
    fn named(&self) -> impl Iterator<Item = (&'static str, &Run)> {
        [
            ("weft", Some(&self.weft)),
            ("hand", self.hand.as_ref()),
            ("raw", self.raw.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, run)| Some((name, run?)))
    }

    /// Fails when a side completed nothing; `what` names the scenario.
    fn require_ops(self, what: &str) -> anyhow::Result<Sides<Run>> {
        let twin = |run: Option<Run>, side: &str| {
            run.map(|r| r.require_ops(&format!("{side} {what}")))
                .transpose()
        };
        Ok(Sides {
            weft: self.weft.require_ops(&format!("weft {what}"))?,
            hand: twin(self.hand, "hand")?,
            raw: twin(self.raw, "raw")?,
        })
    }

    fn add(&mut self, other: &Sides<Run>) {
        self.weft.add(&other.weft);
        for (a, b) in [(&mut self.hand, &other.hand), (&mut self.raw, &other.raw)] {
            if let (Some(a), Some(b)) = (a, b) {
                a.add(b);
            }
        }
    }
}

/// The measurements behind a figure.
pub type Counts = Sides<Run>;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// e.g. `pubsub`, `invoke_latency_p50`.
    pub name: &'static str,
    /// e.g. `msgs/s`, `µs`.
    pub unit: &'static str,
    /// The Weft figure.
    pub weft: f64,
    /// The hand-written twin's figure (none where there is no twin).
    pub hand: Option<f64>,
    /// The raw `async-nats` figure (none where there is no twin).
    pub raw: Option<f64>,
    /// `weft / hand`.
    pub ratio_hand: Option<f64>,
    /// `weft / raw`.
    pub ratio_raw: Option<f64>,
    /// Which way is better.
    pub better: Better,
    /// With `--rounds` of 2 or more, the lowest and highest of the ratio that picks the
    /// median round: `ratio_hand`, or `ratio_raw` where there is no hand twin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_range: Option<(f64, f64)>,
    /// An upper bound the figure cannot exceed (`flow_runs`), in the figure's unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<f64>,
    /// Bytes of one message on the wire (envelope + NATS headers), where one kind of
    /// message dominates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_bytes: Option<usize>,
    /// What was counted.
    pub counts: Counts,
    /// How to read the figure.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Figure {
    /// A figure comparing the sides' `values`.
    fn compare(
        name: &'static str,
        unit: &'static str,
        better: Better,
        values: Sides<f64>,
        counts: Counts,
    ) -> Figure {
        let ratio = |twin: Option<f64>| twin.filter(|t| *t > 0.0).map(|t| values.weft / t);
        Figure {
            name,
            unit,
            weft: values.weft,
            hand: values.hand,
            raw: values.raw,
            ratio_hand: ratio(values.hand),
            ratio_raw: ratio(values.raw),
            ratio_range: None,
            better,
            ceiling: None,
            message_bytes: None,
            counts,
            note: String::new(),
        }
    }

    /// A rate figure (higher is better) from the sides' runs.
    fn rate(name: &'static str, unit: &'static str, mut counts: Counts) -> Figure {
        let values = counts.map(|r| r.rate());
        Figure::compare(name, unit, Better::Higher, values, counts)
    }

    /// A rate figure of Weft alone (higher is better): scenarios with no twin.
    fn weft_only(name: &'static str, unit: &'static str, run: Run) -> Figure {
        Figure::rate(name, unit, Sides::weft(run))
    }

    /// The ratio that ranks rounds: against the hand twin where there is one.
    fn key_ratio(&self) -> Option<f64> {
        self.ratio_hand.or(self.ratio_raw)
    }

    /// Merges the figures of several rounds of one scenario (each round yields the same
    /// figures in the same order). For each figure it takes the median round: the
    /// rounds sorted by [`Figure::key_ratio`] (by the Weft figure where there is no
    /// twin), the middle one, or for an even count the worse of the two middle ones for
    /// Weft. A round measures the sides minutes apart at most, so its ratio compares
    /// like with like; the median keeps one round under a load spike from moving the
    /// figure, as a mean would. The values, ratios and `ceiling` come from that round
    /// (so each ratio is still its round's quotient), `ratio_range` spans every round's
    /// key ratio, and the counts are summed over all rounds (drops anywhere stay
    /// visible).
    fn median_of(rounds: Vec<Vec<Figure>>) -> Vec<Figure> {
        let Some(width) = rounds.first().map(Vec::len) else {
            return Vec::new();
        };
        let mut columns: Vec<Vec<Figure>> = (0..width).map(|_| Vec::new()).collect();
        for round in rounds {
            for (column, figure) in columns.iter_mut().zip(round) {
                column.push(figure);
            }
        }
        columns
            .into_iter()
            .filter_map(|mut column| {
                let key = |f: &Figure| f.key_ratio().unwrap_or(f.weft);
                column.sort_by(|a, b| key(a).total_cmp(&key(b)));
                let ratios: Vec<f64> = column.iter().filter_map(Figure::key_ratio).collect();
                let range = (ratios.len() > 1).then(|| (ratios[0], ratios[ratios.len() - 1]));
                let mut counts = column.iter().map(|f| f.counts.clone());
                let mut total = counts.next()?;
                for c in counts {
                    total.add(&c);
                }
                // For an even count, the middle round that is worse for Weft.
                let middle = match column[0].better {
                    Better::Higher => (column.len() - 1) / 2,
                    Better::Lower => column.len() / 2,
                };
                let mut median = column.swap_remove(middle);
                median.counts = total;
                median.ratio_range = range;
                Some(median)
            })
            .collect()
    }

    fn message_bytes(mut self, bytes: usize) -> Figure {
        self.message_bytes = Some(bytes);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// One entry per figure.
    pub figures: Vec<Figure>,
    /// The nats-server's version.
    pub server_version: String,
    /// Size of the envelope's `payload` field ([`PAYLOAD_BYTES`]).
    pub payload_bytes: usize,
    /// Measured time per side, scenario and round, in ms.
    pub duration_ms: u64,
    /// Rounds per scenario; each figure is the median round's.
    pub rounds: u32,
    /// Whether `weft bench` started its own local nats-server.
    pub local_server: bool,
}

/// What every scenario shares: how to connect, how long to measure, the payload.
pub struct Bench {
    options: ConnectOptions,
    prefix: Prefix,
    duration: Duration,
    warmup: Duration,
    payload: Value,
}

impl Bench {
    /// A new connection for one role of a scenario (`weft-bench-<role>`).
    async fn connect(&self, role: &str) -> anyhow::Result<Bus> {
        Ok(self
            .options
            .clone()
            .name(format!("weft-bench-{role}"))
            .connect()
            .await?)
    }

    /// `P.bench.<name>`: a core NATS subject outside every stream.
    fn subject(&self, name: &str) -> String {
        format!("{}.bench.{name}", self.prefix)
    }

    /// A progress line on stderr.
    fn progress(&self, line: impl AsRef<str>) {
        weft::telemetry::say(tracing::Level::INFO, "bench", line.as_ref());
    }
}

/// The envelope payload of every scenario: a JSON object whose compact encoding is
/// exactly [`PAYLOAD_BYTES`] bytes.
pub fn payload() -> Value {
    let empty = json!({ "text": "" }).to_string().len();
    let text: String = "weft bench payload "
        .chars()
        .cycle()
        .take(PAYLOAD_BYTES - empty)
        .collect();
    json!({ "text": text })
}

/// Runs the bench and prints the report (text, or JSON with `--json`).
///
/// # Errors
/// When the local server cannot start, the server cannot be reached or lacks
/// JetStream, or a scenario completes no operation at all.
pub async fn run(g: &Global, args: BenchArgs) -> anyhow::Result<()> {
    let duration = Duration::from_millis(if args.quick { 300 } else { args.duration_ms });
    let scenarios: Vec<Scenario> = ALL
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.contains(s))
        .collect();

    let store = tempfile::tempdir().context("cannot create a temporary directory")?;
    let local = match &g.server {
        Some(_) => None,
        None => {
            let mut config = LocalServerConfig::new(store.path());
            config.binary = args.nats_server.clone();
            Some(
                LocalServer::start(config)
                    .await
                    .context("cannot start a local nats-server for the bench")?,
            )
        }
    };
    let prefix: Prefix = format!(
        "{}_bench_{}",
        g.prefix,
        &weft_bus::envelope::new_event_id()[30..]
    )
    .parse()?;
    let mut options = g.connect_options()?.prefix(prefix.clone());
    if let Some(server) = &local {
        options = options.url(server.url());
    }
    if let Some(pid) = local.as_ref().and_then(LocalServer::pid) {
        let _ = SERVER_PID.set(pid);
    }
    let admin = options.clone().name("weft-bench-admin").connect().await?;
    let server_version = admin.client().server_info().version;
    let bench = Bench {
        options,
        prefix,
        duration,
        warmup: (duration / 5).min(Duration::from_millis(500)),
        payload: payload(),
    };
    bench.progress(format!(
        "nats-server {server_version} at {}{}, {} ms per side, prefix {}",
        admin.server_url(),
        if local.is_some() { " (local)" } else { "" },
        duration.as_millis(),
        bench.prefix,
    ));
    let figures = match resources::ensure(&admin, &ResourceConfig::default()).await {
        // Ctrl-C still removes the bench's streams and stops the local server.
        Ok(_) => tokio::select! {
            r = run_scenarios(&bench, &scenarios, args.rounds) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        },
        Err(e) => Err(anyhow::Error::new(e).context("cannot create the bench's streams")),
    };
    if local.is_none() {
        remove_resources(&admin).await;
    }
    admin.drain().await.ok();
    if let Some(server) = local {
        server.stop(Duration::from_secs(10)).await;
    }
    let report = Report {
        figures: figures?,
        server_version,
        payload_bytes: PAYLOAD_BYTES,
        duration_ms: duration.as_millis() as u64,
        rounds: args.rounds,
        local_server: g.server.is_none(),
    };
    if g.json {
        print_json(&report)
    } else {
        print_text(&report);
        Ok(())
    }
}

async fn run_scenarios(
    b: &Bench,
    scenarios: &[Scenario],
    rounds: u32,
) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for &s in scenarios {
        let name = s.to_possible_value().map(|v| v.get_name().to_owned());
        let name = name.unwrap_or_default();
        let mut per_round: Vec<Vec<Figure>> = Vec::new();
        for round in 1..=rounds {
            b.progress(format!("{name}: running (round {round} of {rounds})"));
            let got = match s {
                Scenario::Pubsub => pubsub::run(b).await.map(|f| vec![f]),
                Scenario::DurablePublish => durable_publish::run(b).await.map(|f| vec![f]),
                Scenario::InvokeLatency => invoke::latency(b).await,
                Scenario::InvokeThroughput => invoke::throughput(b).await.map(|f| vec![f]),
                Scenario::DurableConsume => durable_consume::run(b).await.map(|f| vec![f]),
                Scenario::Flow => flow::run(b).await,
                Scenario::AgentChat => agent::run(b).await.map(|f| vec![f]),
                Scenario::AgentLoop => agent::loop_latency(b).await,
                Scenario::McpCall => mcp::run(b).await,
                Scenario::A2aSend => a2a::run(b).await,
            };
            let got = got.with_context(|| format!("bench scenario {name}"))?;
            if rounds > 1 {
                for f in &got {
                    b.progress(format!("{}: round {round}: {}", f.name, summary(f)));
                }
            }
            per_round.push(got);
        }
        for f in Figure::median_of(per_round) {
            b.progress(format!("{}: {}", f.name, summary(&f)));
            figures.push(f);
        }
    }
    Ok(figures)
}

/// Deletes the bench's streams and buckets (every stream named after its prefix: the
/// mesh's streams `<PREFIX>_*` and KV buckets `KV_<prefix>_*`) from a server the bench
/// did not start.
async fn remove_resources(bus: &Bus) {
    use futures::TryStreamExt as _;
    let prefix = bus.prefix().as_str();
    let ours = |name: &str| {
        name.starts_with(&format!("{}_", prefix.to_uppercase()))
            || name.starts_with(&format!("KV_{prefix}_"))
    };
    let js = bus.jetstream();
    let names: Vec<String> = match js.stream_names().try_collect().await {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list streams; the bench's streams stay");
            return;
        }
    };
    for stream in names.into_iter().filter(|n| ours(n)) {
        if let Err(e) = js.delete_stream(&stream).await {
            tracing::warn!(%stream, error = %e, "cannot delete the bench's stream");
        }
    }
}

/// `weft 1,234 msgs/s, hand 1,400 (0.88), raw 2,345 (0.53)` for progress lines.
fn summary(f: &Figure) -> String {
    let twin = |value: Option<f64>, ratio: Option<f64>| match (value, ratio) {
        (Some(v), Some(r)) => format!("{} ({r:.2})", number(v)),
        (Some(v), None) => number(v),
        _ => "-".into(),
    };
    format!(
        "weft {} {}, hand {}, raw {}",
        number(f.weft),
        f.unit,
        twin(f.hand, f.ratio_hand),
        twin(f.raw, f.ratio_raw),
    )
}

/// A ratio with two decimals, `-` when absent.
fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}"))
}

/// `1234567.8` → `1,234,568`; small values keep one decimal (`85.3`).
fn number(v: f64) -> String {
    if v.abs() < 1000.0 {
        return format!("{v:.1}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn print_text(r: &Report) {
    println!(
        "weft bench: nats-server {}{}, {} ms per side{}, envelope payload {} bytes",
        r.server_version,
        if r.local_server { " (local)" } else { "" },
        r.duration_ms,
        if r.rounds > 1 {
            format!(
                " in each of {} rounds (median round by weft/hand)",
                r.rounds
            )
        } else {
            String::new()
        },
        r.payload_bytes
    );
    println!(
        "{:<20} {:>8} {:>12} {:>12} {:>12} {:>6} {:>6}  {:<6}  NOTES",
        "FIGURE", "UNIT", "WEFT", "HAND", "RAW", "W/HAND", "W/RAW", "BETTER"
    );
    for f in &r.figures {
        let mut notes = Vec::new();
        if f.better == Better::Lower {
            for (twin, value) in [("hand", f.hand), ("raw", f.raw)] {
                if let Some(v) = value {
                    notes.push(format!("weft {:+.1} {} vs {twin}", f.weft - v, f.unit));
                }
            }
        }
        if let Some(bytes) = f.message_bytes {
            notes.push(format!("{bytes}-byte messages"));
        }
        let dropped = f
            .counts
            .named()
            .filter_map(|(side, run)| Some(format!("{side} {}", run.dropped?)))
            .collect::<Vec<_>>();
        if dropped.len() > 1 {
            notes.push(format!("dropped: {}", dropped.join(", ")));
        }
        let errors: u64 = f.counts.named().map(|(_, run)| run.errors).sum();
        if errors > 0 {
            notes.push(format!("{errors} errors"));
        }
        if let Some((low, high)) = f.ratio_range {
            let which = if f.ratio_hand.is_some() {
                "w/hand"
            } else {
                "w/raw"
            };
            notes.push(format!(
                "{which} {low:.2}-{high:.2} over {} rounds",
                r.rounds
            ));
        }
        if let Some(c) = f.ceiling {
            notes.push(format!("ceiling {} {}", number(c), f.unit));
        }
        if !f.note.is_empty() {
            notes.push(f.note.clone());
        }
        println!(
            "{:<20} {:>8} {:>12} {:>12} {:>12} {:>6} {:>6}  {:<6}  {}",
            f.name,
            f.unit,
            number(f.weft),
            f.hand.map_or("-".into(), number),
            f.raw.map_or("-".into(), number),
            ratio(f.ratio_hand),
            ratio(f.ratio_raw),
            match f.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
            },
            notes.join("; ")
        );
    }
    print_cpu(r);
}

/// The CPU each side used per operation, over every round: this process (client and
/// responder alike) and the local nats-server.
fn print_cpu(r: &Report) {
    let cell = |run: Option<&Run>| {
        let (client, server) = run.map(Run::cpu_us_per_op).unwrap_or_default();
        match (client, server) {
            (Some(c), Some(s)) => format!("{c:.1} + {s:.1}"),
            (Some(c), None) => format!("{c:.1}"),
            _ => "-".into(),
        }
    };
    let rows: Vec<_> = r
        .figures
        .iter()
        .filter(|f| f.better == Better::Higher && f.counts.weft.cpu_ms.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "CPU per operation, µs: this process{} (all rounds)",
        if r.local_server { " + nats-server" } else { "" }
    );
    println!(
        "{:<20} {:>16} {:>16} {:>16}",
        "FIGURE", "WEFT", "HAND", "RAW"
    );
    for f in rows {
        let c = &f.counts;
        println!(
            "{:<20} {:>16} {:>16} {:>16}",
            f.name,
            cell(Some(&c.weft)),
            cell(c.hand.as_ref()),
            cell(c.raw.as_ref())
        );
    }
}

/// An envelope encoded once by Weft, for the raw twins: [`Wire::next`] returns the
/// same bytes with a unique `event_id` and the matching `Nats-Msg-Id` header, exactly
/// what Weft would put on the wire for a new envelope of the same shape.
pub struct Wire {
    bytes: Vec<u8>,
    id_at: usize,
    sent: AtomicU64,
}

/// Length of a UUID in text form.
const UUID_LEN: usize = 36;

impl Wire {
    /// The template of `env` as Weft encodes it.
    ///
    /// # Errors
    /// When the envelope cannot be encoded or its `event_id` is not a UUID.
    pub fn new(env: &Envelope) -> anyhow::Result<Wire> {
        let bytes = env.to_bytes()?;
        let needle = format!("\"event_id\":\"{}\"", env.event_id);
        anyhow::ensure!(env.event_id.len() == UUID_LEN, "event_id is not a UUID");
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .context("encoded envelope has no event_id")?;
        Ok(Wire {
            bytes,
            id_at: at + "\"event_id\":\"".len(),
            sent: AtomicU64::new(0),
        })
    }

    /// Envelope bytes plus NATS header bytes of one message.
    pub fn message_bytes(&self) -> usize {
        let (_, headers) = self.message(0);
        let header_bytes = "NATS/1.0\r\n\r\n".len()
            + headers
                .iter()
                .map(|(name, values)| {
                    let name: &str = name.as_ref();
                    values
                        .iter()
                        .map(|v| name.len() + ": \r\n".len() + v.as_str().len())
                        .sum::<usize>()
                })
                .sum::<usize>();
        self.bytes.len() + header_bytes
    }

    /// The next message (see [`Wire::message`]); ids repeat only after 2^48 messages.
    pub fn next(&self) -> (Vec<u8>, HeaderMap) {
        self.message(self.sent.fetch_add(1, Ordering::Relaxed))
    }

    /// Message `n`: the envelope with `n` in the last 12 hex digits of its `event_id`,
    /// and headers `Nats-Msg-Id: <that id>`.
    pub fn message(&self, n: u64) -> (Vec<u8>, HeaderMap) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = self.bytes.clone();
        let id = &mut bytes[self.id_at..self.id_at + UUID_LEN];
        for (i, b) in id[UUID_LEN - 12..].iter_mut().enumerate() {
            *b = HEX[((n >> (4 * (11 - i))) & 0xf) as usize];
        }
        let mut headers = HeaderMap::new();
        // The template's id is ASCII, and so are the hex digits written into it.
        let id = String::from_utf8_lossy(id);
        headers.insert(MSG_ID_HEADER, id.as_ref());
        (bytes, headers)
    }
}

/// One operation of a measured loop: a future saying whether it succeeded (the error
/// as text).
pub type OpFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Time allowed for operations still running when a measurement ends.
const STRAGGLERS: Duration = Duration::from_secs(10);

/// A task gives up after this many failures in a row (e.g. nobody answers).
const MAX_ERRORS_IN_A_ROW: u32 = 100;

/// Runs `op` from `in_flight` tasks, each starting its next operation as soon as its
/// last one ends, until `duration` has passed. Operations still running at the end get [`STRAGGLERS`] more, then
/// are cancelled; the elapsed time includes them.
pub async fn closed_loop<F>(in_flight: usize, duration: Duration, op: F) -> Run
where
    F: Fn() -> OpFuture + Clone + Send + Sync + 'static,
{
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let cpu = Cpu::now();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight.max(1) {
        let (op, ok, errors, first_error) =
            (op.clone(), ok.clone(), errors.clone(), first_error.clone());
        tasks.spawn(async move {
            let mut in_a_row = 0;
            while Instant::now() < deadline && in_a_row < MAX_ERRORS_IN_A_ROW {
                match op().await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        in_a_row = 0;
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        in_a_row += 1;
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                }
            }
        });
    }
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(duration + STRAGGLERS, all)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    let first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    Run {
        ops: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        dropped: None,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        first_error,
        ..Run::default()
    }
    .cpu_since(cpu)
}

/// Runs `op` for the warm-up, then measures it, from `in_flight` tasks (see
/// [`closed_loop`]).
pub async fn warm_and_measure<F>(b: &Bench, in_flight: usize, op: F) -> Run
where
    F: Fn() -> OpFuture + Clone + Send + Sync + 'static,
{
    closed_loop(in_flight, b.warmup, op.clone()).await;
    closed_loop(in_flight, b.duration, op).await
}

/// An in-process gateway on a free port, serving until [`BenchGateway::stop`]: the
/// bridges' benches (`mcp_call`, `a2a_send`) measure through it.
pub struct BenchGateway {
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), weft_gateway::Error>>,
}

impl BenchGateway {
    /// Binds and serves a gateway over a connection of its own.
    ///
    /// # Errors
    /// When connecting or binding fails.
    pub async fn start(b: &Bench) -> anyhow::Result<BenchGateway> {
        let gateway = weft_gateway::Gateway::bind(
            b.connect("gateway").await?,
            weft_gateway::GatewayConfig {
                addr: "127.0.0.1:0".parse()?,
                ..weft_gateway::GatewayConfig::default()
            },
        )
        .await?;
        let url = gateway.url();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        Ok(BenchGateway { url, stop, served })
    }

    /// Stops it and waits until it stopped.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.served.await;
    }
}

/// A bridge beside its twin on the bus, as `mcp_call` and `a2a_send` measure it: the
/// rate `names.0` with `in_flight` operations in flight, then `names.1`, the p50 of one
/// operation at a time; `what` names the operations of each side in errors.
///
/// # Errors
/// When a side completes no operation.
pub async fn bridge_beside_twin<F, G>(
    b: &Bench,
    names: (&'static str, &'static str),
    unit: &'static str,
    in_flight: usize,
    (what, bridge): (&str, F),
    (twin_what, twin): (&str, G),
    note: &str,
) -> anyhow::Result<Vec<Figure>>
where
    F: Fn() -> OpFuture + Clone + Send + Sync + 'static,
    G: Fn() -> OpFuture + Clone + Send + Sync + 'static,
{
    let rate = warm_and_measure(b, in_flight, bridge.clone())
        .await
        .require_ops(what)?;
    let twin_rate = warm_and_measure(b, in_flight, twin.clone())
        .await
        .require_ops(twin_what)?;
    let (seq, times) = one_at_a_time(b.duration, async || bridge().await).await;
    let (twin_seq, twin_times) = one_at_a_time(b.duration, async || twin().await).await;
    let rate = Figure::rate(
        names.0,
        unit,
        Sides {
            raw: Some(twin_rate),
            ..Sides::weft(rate)
        },
    )
    .note(format!("{note}; {in_flight} in flight"));
    let timed = Sides {
        raw: Some((twin_seq.require_ops(twin_what)?, twin_times)),
        ..Sides::weft((seq.require_ops(what)?, times))
    };
    let mut figures = vec![rate];
    figures.extend(
        latency_figures(&[(names.1, 0.5)], timed, what)?
            .into_iter()
            .map(|f| f.note(format!("{note}; one at a time"))),
    );
    Ok(figures)
}

/// Latency figures (µs, lower is better), one per `(name, quantile)`, from each side's
/// run and the times of its operations; `what` names the operations in errors.
///
/// # Errors
/// When a side completed no operation.
pub fn latency_figures(
    quantiles: &[(&'static str, f64)],
    mut timed: Sides<(Run, Vec<Duration>)>,
    what: &str,
) -> anyhow::Result<Vec<Figure>> {
    let counts = timed.map(|(run, _)| run.clone()).require_ops(what)?;
    Ok(quantiles
        .iter()
        .map(|&(name, p)| {
            let values = timed.map(|(_, times)| quantile_us(times, p));
            Figure::compare(name, "µs", Better::Lower, values, counts.clone())
        })
        .collect())
}

/// Runs `op` one at a time until `duration` has passed; returns the run and the time
/// of every successful operation.
pub async fn one_at_a_time(
    duration: Duration,
    op: impl AsyncFn() -> Result<(), String>,
) -> (Run, Vec<Duration>) {
    let mut run = Run::default();
    let mut times = Vec::new();
    let cpu = Cpu::now();
    let started = Instant::now();
    let mut in_a_row = 0;
    while started.elapsed() < duration && in_a_row < MAX_ERRORS_IN_A_ROW {
        let t = Instant::now();
        match op().await {
            Ok(()) => {
                times.push(t.elapsed());
                run.ops += 1;
                in_a_row = 0;
            }
            Err(e) => {
                run.errors += 1;
                in_a_row += 1;
                run.first_error.get_or_insert(e);
            }
        }
    }
    run.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    (run.cpu_since(cpu), times)
}

/// The `p`-th quantile (0 < p ≤ 1, nearest rank) of `times` in µs; 0 when empty.
pub fn quantile_us(times: &mut [Duration], p: f64) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    times.sort_unstable();
    let rank = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len());
    times[rank - 1].as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_exactly_payload_bytes() {
        assert_eq!(payload().to_string().len(), PAYLOAD_BYTES);
    }

    #[test]
    fn wire_messages_differ_only_in_their_id() {
        let env = Envelope::new("bench.pubsub").with_payload(payload());
        let wire = Wire::new(&env).unwrap();
        let (a, ha) = wire.message(1);
        let (b, hb) = wire.message(0xabc);
        assert_eq!(a.len(), env.to_bytes().unwrap().len());
        assert_eq!(a.len(), b.len());
        let ea = Envelope::from_slice(&a).unwrap();
        let eb = Envelope::from_slice(&b).unwrap();
        assert!(ea.event_id.ends_with("000000000001"), "{}", ea.event_id);
        assert!(eb.event_id.ends_with("000000000abc"), "{}", eb.event_id);
        assert_eq!(ha.get(MSG_ID_HEADER).unwrap().as_str(), ea.event_id);
        assert_eq!(hb.get(MSG_ID_HEADER).unwrap().as_str(), eb.event_id);
        assert_eq!(ea.payload, eb.payload);
        // NATS/1.0\r\n + "Nats-Msg-Id: <36>\r\n" + \r\n
        assert_eq!(wire.message_bytes(), a.len() + 10 + 13 + 36 + 2 + 2);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut t: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile_us(&mut t, 0.5), 50.0);
        assert_eq!(quantile_us(&mut t, 0.99), 99.0);
        assert_eq!(quantile_us(&mut [], 0.5), 0.0);
    }

    fn round(weft: f64, raw: f64, dropped: u64) -> Vec<Figure> {
        let run = |ops: f64| Run {
            ops: ops as u64,
            errors: 0,
            dropped: Some(dropped),
            elapsed_ms: 1000.0,
            ..Run::default()
        };
        vec![Figure::rate(
            "pubsub",
            "msgs/s",
            Sides {
                raw: Some(run(raw)),
                ..Sides::weft(run(weft))
            },
        )]
    }

    #[test]
    fn rounds_merge_into_the_median_round_by_ratio() {
        // Ratios 0.5, 0.9, 0.6: the median round is the third, whatever its raw.
        let rounds = vec![
            round(100.0, 200.0, 1),
            round(270.0, 300.0, 2),
            round(60.0, 100.0, 4),
        ];
        let [f] = <[Figure; 1]>::try_from(Figure::median_of(rounds)).unwrap();
        assert_eq!((f.weft, f.raw), (60.0, Some(100.0)));
        assert_eq!(f.ratio_raw, Some(0.6));
        assert_eq!(f.ratio_range, Some((0.5, 0.9)));
        // Counts cover every round, so drops anywhere stay visible.
        assert_eq!(f.counts.weft.ops, 430);
        assert_eq!(f.counts.raw.unwrap().dropped, Some(7));

        // An even count takes the middle round worse for Weft; one round is itself.
        let two = Figure::median_of(vec![round(90.0, 100.0, 0), round(50.0, 100.0, 0)]);
        assert_eq!(two[0].ratio_raw, Some(0.5));
        let latency = |weft: f64| {
            let mut f = round(weft, 100.0, 0);
            f[0].better = Better::Lower;
            f
        };
        let two = Figure::median_of(vec![latency(120.0), latency(150.0)]);
        assert_eq!(two[0].ratio_raw, Some(1.5));
        let one = Figure::median_of(vec![round(90.0, 100.0, 0)]);
        assert_eq!((one[0].ratio_raw, one[0].ratio_range), (Some(0.9), None));
    }

    #[test]
    fn rounds_rank_by_the_hand_twin_when_there_is_one() {
        let run = |ops: u64| Run {
            ops,
            elapsed_ms: 1000.0,
            ..Run::default()
        };
        // weft/raw is 0.5, 0.8, 0.5 (its median a round of 0.5); weft/hand is 0.9,
        // 0.8, 0.7: the hand median is the second round.
        let round = |weft, hand, raw| {
            vec![Figure::rate(
                "pubsub",
                "msgs/s",
                Sides::all(run(weft), run(hand), run(raw)),
            )]
        };
        let rounds = vec![
            round(90, 100, 180),
            round(80, 100, 100),
            round(70, 100, 140),
        ];
        let [f] = <[Figure; 1]>::try_from(Figure::median_of(rounds)).unwrap();
        assert_eq!(f.ratio_hand, Some(0.8));
        assert_eq!(f.ratio_raw, Some(0.8));
        let (low, high) = f.ratio_range.unwrap();
        assert!(
            (low - 0.7).abs() < 1e-12 && (high - 0.9).abs() < 1e-12,
            "{low} {high}"
        );
        assert_eq!(f.counts.hand.unwrap().ops, 300);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(1234567.8), "1,234,568");
        assert_eq!(number(85.34), "85.3");
        assert_eq!(number(1000.0), "1,000");
    }
}
