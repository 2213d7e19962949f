//! `weft ls` and `weft agent list`.

use clap::Subcommand;
use serde_json::json;
use weft_bus::registry::{Kind, Registry};

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
    let registry = Registry::open(&bus).await?;
    let agents = registry.list_kind(Kind::Agent, None).await?;
    let listing: Vec<_> = registry
        .listing()
        .await?
        .into_iter()
        .filter(|l| l.kind == Kind::Agent)
        .map(|l| {
            let one = agents.iter().find(|a| a.name == l.name);
            json!({
                "name": l.name,
                "instances": l.instances,
                "versions": l.versions,
                "description": l.description,
                "model": one.and_then(|a| a.metadata.get("model")).cloned(),
                "manages": one.and_then(|a| a.metadata.get("manages")).cloned(),
            })
        })
        .collect();
    if g.json {
        return print_json(&listing);
    }
    if listing.is_empty() {
        println!("no agents registered on {}", bus.server_url());
        return Ok(());
    }
    println!(
        "{:<16} {:>9}  {:<12} {:<20} DESCRIPTION",
        "NAME", "INSTANCES", "MODEL", "MANAGES"
    );
    for a in listing {
        let manages = a["manages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        println!(
            "{:<16} {:>9}  {:<12} {:<20} {}",
            a["name"].as_str().unwrap_or_default(),
            a["instances"].as_u64().unwrap_or(0),
            a["model"].as_str().unwrap_or("-"),
            manages,
            a["description"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
