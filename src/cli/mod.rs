//! Command-line interface: argument definitions and dispatch.

mod bench;
mod call;
mod dlq;
mod flow;
mod ls;
mod pubsub;
mod replay;
mod resources;
mod up;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use weft_bus::{Bus, ConnectOptions, Prefix};

/// Weft: an event mesh for services, agents and flows over NATS.
///
/// Start a local mesh with the demo support desk, then talk to it:
///
///   weft up --demo
///   weft pub ticket.created '{"title":"Cannot log in","body":"reset fails"}'
///   weft sub 'ticket.>'
///   weft call support '{"message":"How many tickets are open?"}'
///   weft flow runs triage
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about, verbatim_doc_comment)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// NATS server URL(s), comma-separated. For `weft up`: use this server or cluster
    /// instead of starting a local one.
    #[arg(long, short = 's', global = true, env = "NATS_URL")]
    pub server: Option<String>,
    /// NATS credentials file (.creds).
    #[arg(long, global = true, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// Mesh prefix: subjects live under `<prefix>.`, streams are `<PREFIX>_*`.
    #[arg(long, global = true, env = "WEFT_PREFIX", default_value = "weft")]
    pub prefix: Prefix,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local mesh: nats-server with JetStream, streams and buckets, the HTTP
    /// gateway, and with --demo the support desk demo. Ctrl-C stops it cleanly.
    Up(up::UpArgs),
    /// Publish an event durably (returns after the JetStream ack).
    Pub(pubsub::PubArgs),
    /// Print events as they arrive.
    Sub(pubsub::SubArgs),
    /// Invoke a service or agent and print its reply.
    Call(call::CallArgs),
    /// List registered services, agents, flows and gateways with instance counts.
    Ls,
    /// Flows: list runs, run a worker.
    #[command(subcommand)]
    Flow(flow::FlowCommand),
    /// Agents: list them.
    #[command(subcommand)]
    Agent(ls::AgentCommand),
    /// Dead letters: list, show, replay.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// The mesh's streams and KV buckets: list them, change replicas or max ages in
    /// place.
    #[command(subcommand)]
    Resources(resources::ResourcesCommand),
    /// Replay stored events from a sequence or a time: print them, or deliver them
    /// again to one durable consumer.
    Replay(replay::ReplayArgs),
    /// Measure Weft beside the raw async-nats client doing the same work with the same
    /// bytes: pub/sub, durable publish, invoke latency and throughput, durable consume,
    /// flows. Starts a local nats-server unless --server is given.
    Bench(bench::BenchArgs),
}

/// The default log filter for `-v` counts: warnings, `-v` info, `-vv` debug.
pub fn log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn",
        1 => "info,async_nats=warn",
        _ => "debug,async_nats=info",
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Up(args) => up::run(g, args).await,
        Command::Pub(args) => pubsub::publish(g, args).await,
        Command::Sub(args) => pubsub::subscribe(g, args).await,
        Command::Call(args) => call::run(g, args).await,
        Command::Ls => ls::ls(g).await,
        Command::Flow(cmd) => flow::run(g, cmd).await,
        Command::Agent(cmd) => ls::agent(g, cmd).await,
        Command::Bench(args) => bench::run(g, args).await,
        Command::Dlq(cmd) => dlq::run(g, cmd).await,
        Command::Replay(args) => replay::run(g, args).await,
        Command::Resources(cmd) => resources::run(g, cmd).await,
    }
}

impl Global {
    /// Connect options from the flags and environment (`NATS_URL`, `NATS_CREDS`,
    /// `NATS_TOKEN`, `NATS_USER`/`NATS_PASSWORD`, `NATS_NKEY`, `NATS_CA`, …).
    pub fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let mut o = ConnectOptions::from_env()?.prefix(self.prefix.clone());
        if let Some(s) = &self.server {
            o = o.url(s.clone());
        }
        if let Some(c) = &self.creds {
            o = o.creds_file(c.clone());
        }
        Ok(o.name("weft-cli"))
    }

    /// Connects to the mesh.
    pub async fn connect(&self) -> anyhow::Result<Bus> {
        Ok(self.connect_options()?.connect().await?)
    }
}

/// Parses a JSON argument, with an error that shows how to quote text.
pub fn parse_json_arg(what: &str, text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| {
        format!("{what} is not valid JSON: {text:?} (text needs JSON quotes, e.g. '\"hello\"')")
    })
}

/// The error and its causes on one line, leaving out causes whose text an earlier
/// message already contains (library errors often repeat their source).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A hint for errors a person can fix, printed under the error.
pub fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let bus = e
        .chain()
        .find_map(|c| c.downcast_ref::<weft_bus::Error>())?;
    match bus.kind() {
        weft_bus::ErrorKind::Connect => Some(
            "start a local mesh with `weft up` (or `scripts/demo`), or point --server / NATS_URL at a running NATS server",
        ),
        weft_bus::ErrorKind::Kv | weft_bus::ErrorKind::JetStream => {
            Some("the mesh's streams and buckets are created by `weft up`")
        }
        weft_bus::ErrorKind::NoResponders => Some("`weft ls` shows what is running"),
        weft_bus::ErrorKind::Server => Some(weft_bus::server::INSTALL_HINT),
        _ => None,
    }
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
