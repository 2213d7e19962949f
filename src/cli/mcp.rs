//! `weft mcp`: the mesh as an MCP server over stdio, the tools it shows, and
//! external MCP servers attached as services (docs/mcp.md).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tracing::Level;
use weft::telemetry::say;
use weft_bus::ServiceName;
use weft_gateway::mcp::server::{self, McpOptions, McpServer};
use weft_gateway::mcp::{AttachOptions, Bridge, McpSource};

use super::Global;

/// `weft mcp [--mcp-services a,b] [tools | attach …]`
#[derive(Debug, Args)]
#[command(
    after_help = "An MCP host launches the stdio server with, e.g. in its JSON config:\n  {\"command\": \"weft\", \"args\": [\"mcp\", \"--server\", \"nats://127.0.0.1:4222\"]}\nThe gateway serves the same tools over Streamable HTTP at /mcp."
)]
pub struct McpArgs {
    #[command(subcommand)]
    pub command: Option<McpCommand>,
    #[command(flatten)]
    pub expose: ExposeArgs,
}

/// Which tools the server shows.
#[derive(Debug, Args, Clone)]
pub struct ExposeArgs {
    /// Only the tools of these services and agents (comma-separated); default all.
    #[arg(long, value_delimiter = ',', env = "WEFT_MCP_SERVICES")]
    pub mcp_services: Option<Vec<String>>,
    /// Longest wait for one tool call, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
}

impl ExposeArgs {
    /// The server options.
    pub fn options(&self) -> McpOptions {
        McpOptions {
            services: self.services(),
            call_timeout: self.call_timeout,
        }
    }

    /// The `--mcp-services` set.
    pub fn services(&self) -> Option<BTreeSet<String>> {
        self.mcp_services
            .as_ref()
            .map(|s| s.iter().map(|n| n.trim().to_owned()).collect())
    }
}

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// List the tools an MCP client sees (name, description; --json: the tools/list
    /// result).
    Tools,
    /// Attach an external MCP server: register service NAME whose endpoints are the
    /// server's tools, until Ctrl-C.
    ///
    ///   weft mcp attach files -- npx -y @modelcontextprotocol/server-filesystem /tmp
    ///   weft mcp attach docs --url https://example.com/mcp --header 'Authorization: Bearer …'
    #[command(verbatim_doc_comment)]
    Attach(AttachArgs),
}

/// `weft mcp attach NAME (--url URL [--header 'K: V']… | -- CMD ARGS…)`
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The service name the tools are registered under (one subject token).
    pub name: ServiceName,
    /// A Streamable HTTP MCP server instead of a command.
    #[arg(long, conflicts_with = "command")]
    pub url: Option<String>,
    /// A header sent to the --url server, 'Name: value' (repeatable).
    #[arg(long = "header", requires = "url")]
    pub headers: Vec<String>,
    /// Longest wait for one tool call, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
    /// The stdio MCP server to run: the command and its arguments, after `--`.
    #[arg(last = true, required_unless_present = "url")]
    pub command: Vec<String>,
}

impl AttachArgs {
    /// The bridge options.
    pub fn options(&self) -> anyhow::Result<AttachOptions> {
        let source = match &self.url {
            Some(url) => McpSource::Http {
                url: url.clone(),
                headers: self
                    .headers
                    .iter()
                    .map(|h| parse_header(h))
                    .collect::<anyhow::Result<_>>()?,
            },
            None => {
                let (command, args) = self
                    .command
                    .split_first()
                    .context("give the MCP server's command after `--`, or --url")?;
                McpSource::Stdio {
                    command: command.clone(),
                    args: args.to_vec(),
                }
            }
        };
        let mut options = AttachOptions::new(self.name.clone(), source);
        options.call_timeout = self.call_timeout;
        Ok(options)
    }
}

/// `Name: value` → (name, value).
fn parse_header(text: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = text
        .split_once(':')
        .with_context(|| format!("header {text:?} is not 'Name: value'"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// `NAME=CMD ARGS…` of `weft up --mcp-attach` → attach options (the command split on
/// whitespace).
pub fn parse_attach_spec(spec: &str) -> anyhow::Result<AttachOptions> {
    let (name, command) = spec
        .split_once('=')
        .with_context(|| format!("--mcp-attach {spec:?} is not NAME=COMMAND ARGS…"))?;
    let name: ServiceName = name
        .trim()
        .parse()
        .with_context(|| format!("--mcp-attach {spec:?}: bad service name"))?;
    let mut words = command.split_whitespace().map(str::to_owned);
    let command = words
        .next()
        .with_context(|| format!("--mcp-attach {spec:?} has no command"))?;
    Ok(AttachOptions::new(
        name,
        McpSource::Stdio {
            command,
            args: words.collect(),
        },
    ))
}

pub async fn run(g: &Global, args: McpArgs) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    match args.command {
        None => {
            let server = McpServer::new(&bus, args.expose.options()).await?;
            let stop = super::up::shutdown_signal();
            say(
                Level::INFO,
                "",
                &format!(
                    "serving the mesh's tools over stdio (prefix {})",
                    bus.prefix()
                ),
            );
            server::serve_stdio(server, stop)
                .await
                .map_err(|e| anyhow::anyhow!("MCP over stdio failed: {e}"))?;
        }
        Some(McpCommand::Tools) => {
            let server = McpServer::new(&bus, args.expose.options()).await?;
            let tools = server.tools();
            if g.json {
                super::print_json(&serde_json::json!({ "tools": tools }))?;
            } else if tools.is_empty() {
                println!("no tools: no service or agent is registered (weft ls)");
            } else {
                for t in &tools {
                    println!(
                        "{:<32} {}",
                        t.name,
                        t.description.as_deref().unwrap_or_default()
                    );
                }
            }
        }
        Some(McpCommand::Attach(attach)) => {
            let options = attach.options()?;
            let bridge = Bridge::new(options.clone())?;
            let stop = super::up::shutdown_signal();
            say(
                Level::INFO,
                "",
                &format!(
                    "attaching {} as service {} (Ctrl-C stops)",
                    options.source, options.name
                ),
            );
            bridge.run(&bus, stop).await;
        }
    }
    bus.drain().await.ok();
    Ok(())
}
