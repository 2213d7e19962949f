//! `weft ls` and `weft agent list`.

use clap::Subcommand;
use weft_bus::registry::{Kind, Registry, newest_each};
use weft_bus::tool::ToolSet;

use super::{Global, print_json};

pub async fn ls(g: &Global) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let registry = Registry::open(&bus).await?;
    let registrations = registry.list().await?;
    let listing = registry.listing().await?;
    if g.json {
        return print_json(&listing);
    }
    if listing.is_empty() {
        println!(
            "nothing registered on {} (prefix {})",
            bus.server_url(),
            bus.prefix()
        );
        return Ok(());
    }
    println!(
        "{:<8} {:<16} {:>9}  {:<10} ENDPOINTS",
        "KIND", "NAME", "INSTANCES", "VERSION"
    );
    for l in listing {
        println!(
            "{:<8} {:<16} {:>9}  {:<10} {}",
            l.kind.as_str(),
            l.name,
            l.instances,
            l.versions.join(","),
            l.endpoints.join(", ")
        );
    }
    // Endpoints that cannot be tools (DESIGN §12): agents and MCP hosts do not see them.
    let tooled = newest_each(
        registrations
            .into_iter()
            .filter(|r| matches!(r.kind, Kind::Service | Kind::Agent)),
    );
    let tools = ToolSet::from_registrations(&tooled);
    if !tools.problems().is_empty() {
        println!();
        println!("endpoints left out of the tools (agents and MCP do not see them):");
        for p in tools.problems() {
            println!("  {} (tool {}): {}", p.endpoint, p.tool, p.reason);
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List registered agents with their instances, model and managed services.
    List,
}

pub async fn agent(g: &Global, cmd: AgentCommand) -> anyhow::Result<()> {
    let AgentCommand::List = cmd;
    let bus = g.connect().await?;
    let agents = weft_agents::agent::list(&bus).await?;
    if g.json {
        return print_json(&agents);
    }
    if agents.is_empty() {
        println!("no agents registered on {}", bus.server_url());
        return Ok(());
    }
    println!(
        "{:<16} {:>9}  {:<10} {:<20} {:<20} DESCRIPTION",
        "NAME", "INSTANCES", "VERSION", "MODEL", "MANAGES"
    );
    for a in agents {
        let model = match &a.model_id {
            Some(id) => format!("{} ({id})", a.model),
            None => a.model.clone(),
        };
        println!(
            "{:<16} {:>9}  {:<10} {:<20} {:<20} {}",
            a.name,
            a.instances,
            a.versions.join(","),
            model,
            a.manages.join(","),
            a.description
        );
    }
    Ok(())
}
