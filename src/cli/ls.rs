//! `weft ls`.

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
