//! `weft ls` and `weft agent list`.

use clap::Subcommand;
use weft_bus::registry::Registry;

use super::{Global, print_json};

pub async fn ls(g: &Global) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let listing = Registry::open(&bus).await?.listing().await?;
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
