//! Command-line interface: argument definitions and dispatch.

mod a2a;
mod agent;
mod bench;
mod call;
mod chat;
mod dlq;
mod flow;
mod journal;
mod ls;
mod mcp;
mod new;
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
///   weft chat support
///   weft flow runs triage
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about, verbatim_doc_comment)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines on stderr: text, or json (one object per line, with the trace_id and
    /// span_id of the current span, so logs join traces).
    #[arg(
        long,
        global = true,
        env = "WEFT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormatArg::Text
    )]
    pub log_format: LogFormatArg,
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
    /// Chat with an agent in the terminal: its text streams as it comes, tool calls
    /// show as they happen; -m sends one message and exits.
    Chat(chat::ChatArgs),
    /// List registered services, agents, flows and gateways with instance counts.
    Ls,
    /// Scaffold a service (a Cargo project), an agent (YAML) or a flow (JSON) in
    /// ./NAME, ready to run against the mesh; its README gives the next commands.
    /// Examples: weft new service hello; weft new agent helper --manages hello;
    /// weft new flow greeted --on greeting.sent
    #[command(subcommand)]
    New(new::NewCommand),
    /// Flows: list runs, run a worker.
    #[command(subcommand)]
    Flow(flow::FlowCommand),
    /// Agents: list them.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Dead letters: list, show, replay.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// The mesh's streams and KV buckets: list them, change replicas or max ages in
    /// place.
    #[command(subcommand)]
    Resources(resources::ResourcesCommand),
    /// MCP: serve the mesh's tools over stdio (for an MCP host), list them, or attach
    /// an external MCP server's tools as a service.
    Mcp(mcp::McpArgs),
    /// A2A: call a remote A2A agent, add remote agents to the mesh, list agents with
    /// their Agent Card URLs. The gateway serves every agent at /a2a/{agent}.
    #[command(subcommand)]
    A2a(a2a::A2aCommand),
    /// Replay stored events from a sequence or a time: print them, or deliver them
    /// again to one durable consumer.
    Replay(replay::ReplayArgs),
    /// Measure Weft beside two twins doing the same work: `hand` (async-nats and
    /// serde_json, as a user writes it without Weft) and `raw` (async-nats moving the
    /// same bytes): pub/sub, durable publish, invoke latency and throughput, durable
    /// consume, agents, bridges, flows. Starts a local nats-server unless --server is
    /// given.
    Bench(bench::BenchArgs),
}

/// The values of `--log-format` (see [`weft::telemetry::LogFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for weft::telemetry::LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => weft::telemetry::LogFormat::Text,
            LogFormatArg::Json => weft::telemetry::LogFormat::Json,
        }
    }
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
        Command::Chat(args) => chat::run(g, args).await,
        Command::Ls => ls::ls(g).await,
        Command::New(cmd) => new::run(g, cmd).await,
        Command::Flow(cmd) => flow::run(g, cmd).await,
        Command::Agent(cmd) => agent::agent(g, cmd).await,
        Command::Bench(args) => bench::run(g, args).await,
        Command::Dlq(cmd) => dlq::run(g, cmd).await,
        Command::Replay(args) => replay::run(g, args).await,
        Command::Mcp(args) => mcp::run(g, args).await,
        Command::A2a(cmd) => a2a::run(g, cmd).await,
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
        weft_bus::ErrorKind::Connect => Some(connect_hint(&bus.to_string())),
        weft_bus::ErrorKind::Kv | weft_bus::ErrorKind::JetStream => {
            Some("the mesh's streams and buckets are created by `weft up`")
        }
        weft_bus::ErrorKind::NoResponders => Some("`weft ls` shows what is running"),
        weft_bus::ErrorKind::Server => Some(weft_bus::server::INSTALL_HINT),
        weft_bus::ErrorKind::Permission => Some(
            "the NATS user these credentials log in as may not use that subject; ask whoever runs the NATS server to allow it in the user's permissions, or use other credentials (--creds / NATS_CREDS, NATS_USER, NATS_NKEY)",
        ),
        weft_bus::ErrorKind::Disconnected => Some(
            "the connection to NATS dropped; the client reconnects on its own, so try again once the server is back (check it with `weft ls`)",
        ),
        _ => None,
    }
}

/// The hint for a connect error, by what its message says went wrong.
fn connect_hint(message: &str) -> &'static str {
    if message.contains("cannot read") {
        "the file named above must exist, be readable and hold what it should: a .creds file a user JWT and its seed, certificates and keys PEM"
    } else if message.contains("authorization violation") || message.contains("nkey seed") {
        "the server refused the credentials: check --creds / NATS_CREDS, NATS_USER + NATS_PASSWORD, NATS_NKEY or NATS_TOKEN"
    } else if ["certificate", "Certificate", "UnknownCA", "TLS", "tls"]
        .iter()
        .any(|w| message.contains(w))
    {
        "TLS failed: NATS_CA must name the CA that signed the server's certificate, and a server that verifies clients needs NATS_CERT + NATS_KEY"
    } else {
        "start a local mesh with `weft up` (or `scripts/demo`), or point --server / NATS_URL at a running NATS server"
    }
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint_for(kind: weft_bus::ErrorKind, message: &str) -> &'static str {
        hint(&anyhow::Error::new(weft_bus::Error::new(kind, message))).expect("a hint")
    }

    #[test]
    fn connect_errors_get_a_hint_for_what_went_wrong() {
        use weft_bus::ErrorKind::Connect;
        let auth = hint_for(
            Connect,
            "cannot connect to NATS at nats://h:4222 (user weft): authorization violation",
        );
        assert!(auth.contains("credentials"), "{auth}");
        let tls = hint_for(
            Connect,
            "cannot connect to NATS at tls://h:4222: IO error: invalid peer certificate: UnknownIssuer",
        );
        assert!(tls.contains("NATS_CA"), "{tls}");
        let file = hint_for(Connect, "cannot read TLS CA file /x/ca.pem: No such file");
        assert!(file.contains("file named above"), "{file}");
        let down = hint_for(Connect, "cannot connect to NATS at nats://h:4222: refused");
        assert!(down.contains("weft up"), "{down}");
    }

    #[test]
    fn permission_and_disconnect_errors_get_hints() {
        let denied = hint_for(
            weft_bus::ErrorKind::Permission,
            "not allowed to publish to x",
        );
        assert!(denied.contains("permissions"), "{denied}");
        let lost = hint_for(weft_bus::ErrorKind::Disconnected, "connection lost");
        assert!(lost.contains("reconnects"), "{lost}");
    }
}
