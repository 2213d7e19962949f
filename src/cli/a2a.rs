//! `weft a2a`: call a remote A2A agent, add remote agents to the mesh, list agents
//! with their card URLs (docs/a2a.md).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;
use weft_bus::ServiceName;
use weft_bus::registry::{Kind, Registry, newest_each};
use weft_gateway::a2a::bridge::{A2aClient, RemoteAgent, RemoteAgents, SendRequest};

use super::Global;

#[derive(Debug, Subcommand)]
pub enum A2aCommand {
    /// Send one message to the A2A agent at URL and print its reply (--stream: as it
    /// comes). Needs no mesh.
    ///
    ///   weft a2a call http://127.0.0.1:8080/a2a/support "How many tickets are open?"
    ///   weft a2a call URL "and closed ones?" --context <context_id from before>
    #[command(verbatim_doc_comment)]
    Call {
        /// The agent's base URL (or its card's URL).
        url: String,
        /// The text to send.
        message: String,
        /// Print the reply's text as it streams.
        #[arg(long)]
        stream: bool,
        /// Continue this A2A context (a previous reply's context_id).
        #[arg(long)]
        context: Option<String>,
        /// Longest wait for the whole reply, e.g. 30s, 5m.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Register the A2A agent at URL as agent NAME of the mesh: the bridge in `weft up`
    /// serves it (kind agent, metadata a2a_url), so `weft chat`, `delegate`, flows and
    /// MCP reach it like a local agent. Its card is fetched first.
    Add {
        /// Its name in the mesh (one subject token).
        name: ServiceName,
        /// Its A2A base URL.
        url: String,
    },
    /// Remove a remote agent added with `add`.
    Rm {
        /// Its name.
        name: ServiceName,
    },
    /// List local and remote agents with their card URLs (--json: one object).
    Ls,
}

pub async fn run(g: &Global, cmd: A2aCommand) -> anyhow::Result<()> {
    match cmd {
        A2aCommand::Call {
            url,
            message,
            stream,
            context,
            timeout,
        } => call(g, url, message, stream, context, timeout).await,
        A2aCommand::Add { name, url } => add(g, name, url).await,
        A2aCommand::Rm { name } => {
            let bus = g.connect().await?;
            let removed = RemoteAgents::open(&bus)
                .await?
                .remove(name.as_str())
                .await?;
            if g.json {
                super::print_json(&json!({"name": name.as_str(), "removed": removed}))?;
            } else if removed {
                println!("removed remote agent {name}");
            } else {
                anyhow::bail!("no remote agent named {name} (`weft a2a ls` lists them)");
            }
            Ok(())
        }
        A2aCommand::Ls => ls(g).await,
    }
}

fn client(timeout: Duration) -> anyhow::Result<A2aClient> {
    A2aClient::new(timeout).map_err(|e| anyhow::anyhow!("{}", e.message))
}

async fn call(
    g: &Global,
    url: String,
    message: String,
    stream: bool,
    context: Option<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = client(timeout)?;
    let request = SendRequest {
        url,
        message,
        context_id: context,
    };
    let print = |t: &str| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
    };
    let quiet = |_: &str| {};
    let on_text: &(dyn Fn(&str) + Send + Sync) = if stream && !g.json { &print } else { &quiet };
    let reply = client
        .send(&request, on_text)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code.as_str(), e.message))?;
    if g.json {
        super::print_json(&reply)?;
    } else {
        if stream {
            println!();
        } else {
            println!("{}", reply.reply);
        }
        eprintln!(
            "(task {} in context {}: {})",
            reply.task_id, reply.context_id, reply.state
        );
    }
    Ok(())
}

async fn add(g: &Global, name: ServiceName, url: String) -> anyhow::Result<()> {
    let card = client(Duration::from_secs(30))?
        .card(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code.as_str(), e.message))
        .with_context(|| format!("cannot add {name}: its Agent Card is not readable"))?;
    let bus = g.connect().await?;
    let agent = RemoteAgent {
        name: name.to_string(),
        url: url.trim_end_matches('/').to_owned(),
        description: card.description.clone(),
        version: card.version.clone(),
    };
    RemoteAgents::open(&bus).await?.put(&agent).await?;
    if g.json {
        super::print_json(&agent)?;
    } else {
        println!(
            "added remote agent {name} ({}, {}): the A2A bridge of `weft up` serves it within 2 s",
            card.name, agent.url
        );
    }
    Ok(())
}

async fn ls(g: &Global) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let registry = Registry::open(&bus).await?;
    let gateway = newest_each(registry.list_kind(Kind::Gateway, None).await?)
        .into_iter()
        .find_map(|r| {
            r.metadata
                .get("url")
                .and_then(|u| u.as_str())
                .map(str::to_owned)
        });
    let agents = newest_each(registry.list_kind(Kind::Agent, None).await?);
    let remote = RemoteAgents::open(&bus).await?.list().await?;
    let mut rows = Vec::new();
    for r in agents {
        let a2a_url = r
            .metadata
            .get("a2a_url")
            .and_then(|u| u.as_str())
            .map(str::to_owned);
        let served = gateway
            .as_ref()
            .map(|base| format!("{base}/a2a/{}/.well-known/agent-card.json", r.name));
        rows.push(json!({
            "name": r.name,
            "kind": if a2a_url.is_some() { "remote" } else { "local" },
            "description": r.description,
            "card_url": served,
            "a2a_url": a2a_url,
            "registered": true,
        }));
    }
    for a in remote {
        if !rows.iter().any(|r| r["name"] == a.name) {
            rows.push(json!({
                "name": a.name, "kind": "remote", "description": a.description,
                "card_url": null, "a2a_url": a.url, "registered": false,
            }));
        }
    }
    if g.json {
        return super::print_json(&json!({ "agents": rows }));
    }
    if rows.is_empty() {
        println!(
            "no agents (start the demo with `weft up --demo`, or add one with `weft a2a add NAME URL`)"
        );
        return Ok(());
    }
    println!("{:<16} {:<7} CARD", "AGENT", "KIND");
    for r in &rows {
        let card = r["card_url"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "-".into());
        let mut line = format!(
            "{:<16} {:<7} {card}",
            r["name"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or("")
        );
        if let Some(u) = r["a2a_url"].as_str() {
            line.push_str(&format!("  (remote at {u}"));
            if r["registered"] != true {
                line.push_str(", not served: is `weft up` running?");
            }
            line.push(')');
        }
        println!("{line}");
    }
    Ok(())
}
