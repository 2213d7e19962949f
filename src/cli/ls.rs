//! `weft ls` and `weft agent list`.

use clap::Subcommand;
use weft_bus::registry::{Kind, Registry, newest_each};
use weft_bus::tool::ToolSet;

use anyhow::Context as _;

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
    /// One agent: its registry entry, its tools now, and the sessions it remembers.
    Describe {
        /// The agent.
        name: String,
    },
    /// The sessions an agent remembers, or with --session one conversation.
    History {
        /// The agent.
        name: String,
        /// The session whose messages to print.
        #[arg(long)]
        session: Option<String>,
    },
    /// Run an agent from a JSON or YAML definition until Ctrl-C (docs/agents.md).
    Run {
        /// The definition file (`.json`, `.yaml` or `.yml`).
        file: std::path::PathBuf,
        /// The model provider, over the file's `provider` and WEFT_MODEL_PROVIDER.
        #[arg(long)]
        provider: Option<String>,
    },
    /// The plan an agent keeps for a session (its `plan` tool).
    Plan {
        /// The agent.
        name: String,
        /// The session.
        #[arg(long)]
        session: String,
    },
}

pub async fn agent(g: &Global, cmd: AgentCommand) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    match cmd {
        AgentCommand::List => list(g, &bus).await,
        AgentCommand::Describe { name } => describe(g, &bus, &name).await,
        AgentCommand::History { name, session } => history(g, &bus, &name, session).await,
        AgentCommand::Plan { name, session } => plan(g, &bus, &name, &session).await,
        AgentCommand::Run { file, provider } => run(&bus, &file, provider).await,
    }
}

async fn run(
    bus: &weft_bus::Bus,
    file: &std::path::Path,
    provider: Option<String>,
) -> anyhow::Result<()> {
    let definition = weft_agents::definition::AgentDefinition::from_file(file)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let provider = provider
        .or_else(|| definition.provider.clone())
        .or_else(|| env("WEFT_MODEL_PROVIDER"))
        .with_context(|| {
            format!(
                "{}: no model provider: set `provider` in the file, --provider or WEFT_MODEL_PROVIDER ({})",
                file.display(),
                weft_agents::model::PROVIDERS.join(", ")
            )
        })?;
    let (model_id, script) = (definition.model.clone(), definition.script.clone());
    let var = |k: &str| match k {
        "WEFT_MODEL" => model_id.clone().or_else(|| env(k)),
        "WEFT_MODEL_SCRIPT" => script
            .as_ref()
            .map(|p| p.display().to_string())
            .or_else(|| env(k)),
        _ => env(k),
    };
    let model = weft_agents::model::from_provider_with(&provider, &var)
        .with_context(|| format!("{}: the model", file.display()))?;
    let model_name = model.model_id().unwrap_or(model.name()).to_owned();
    let agent = definition.into_agent(model);
    let name = agent.name().to_owned();
    let manages = agent.managed_services().join(", ");
    let stop = super::up::shutdown_signal();
    let handle = agent.serve(bus).await?;
    println!(
        "agent {name} runs (model {provider}: {model_name}; manages {}); Ctrl-C stops it",
        if manages.is_empty() {
            "nothing"
        } else {
            &manages
        }
    );
    stop.await;
    handle.stop().await?;
    bus.drain().await.ok();
    Ok(())
}

async fn list(g: &Global, bus: &weft_bus::Bus) -> anyhow::Result<()> {
    let agents = weft_agents::agent::list(bus).await?;
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
        println!(
            "{:<16} {:>9}  {:<10} {:<20} {:<20} {}",
            a.name,
            a.instances,
            a.versions.join(","),
            model_of(&a),
            a.manages.join(","),
            a.description
        );
    }
    Ok(())
}

fn model_of(a: &weft_agents::AgentInfo) -> String {
    match &a.model_id {
        Some(id) => format!("{} ({id})", a.model),
        None => a.model.clone(),
    }
}

async fn describe(g: &Global, bus: &weft_bus::Bus, name: &str) -> anyhow::Result<()> {
    let agents = weft_agents::agent::list(bus).await?;
    let info = agents
        .into_iter()
        .find(|a| a.name == name)
        .with_context(|| format!("no agent named {name:?} is registered (weft agent list)"))?;
    let registry = Registry::open(bus).await?;
    let services: Vec<_> = registry
        .list_kind(Kind::Service, None)
        .await?
        .into_iter()
        .filter(|r| info.manages.contains(&r.name))
        .collect();
    let tools = ToolSet::from_registrations(&newest_each(services));
    let sessions = weft_agents::Memory::open(bus).await?.sessions(name).await?;
    if g.json {
        let listed: Vec<_> = tools
            .tools()
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "description": t.description, "target": t.target.to_string()}))
            .collect();
        return print_json(&serde_json::json!({
            "agent": info,
            "tools": listed,
            "problems": tools.problems(),
            "sessions": sessions.iter().map(|(s, n)| serde_json::json!({"session": s, "messages": n})).collect::<Vec<_>>(),
        }));
    }
    println!(
        "agent {} ({} instance(s), version {})",
        info.name,
        info.instances,
        info.versions.join(",")
    );
    if !info.description.is_empty() {
        println!("  {}", info.description);
    }
    println!("model      {}", model_of(&info));
    println!(
        "manages    {}",
        if info.manages.is_empty() {
            "(nothing)".into()
        } else {
            info.manages.join(", ")
        }
    );
    println!("tools now  {}", tools.len());
    for t in tools.tools() {
        println!("  {:<28} {}", t.name, t.description);
    }
    let missing: Vec<&String> = info
        .manages
        .iter()
        .filter(|m| {
            !tools
                .tools()
                .iter()
                .any(|t| t.target.service.as_str() == m.as_str())
        })
        .collect();
    if !missing.is_empty() {
        println!(
            "  (not registered now: {})",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("sessions   {}", sessions.len());
    Ok(())
}

async fn history(
    g: &Global,
    bus: &weft_bus::Bus,
    name: &str,
    session: Option<String>,
) -> anyhow::Result<()> {
    let memory = weft_agents::Memory::open(bus).await?;
    let Some(session) = session else {
        let sessions = memory.sessions(name).await?;
        if g.json {
            return print_json(
                &sessions
                    .iter()
                    .map(|(s, n)| serde_json::json!({"session": s, "messages": n}))
                    .collect::<Vec<_>>(),
            );
        }
        if sessions.is_empty() {
            println!("agent {name} remembers no session");
        }
        for (s, n) in sessions {
            println!("{s:<32} {n} message(s)");
        }
        return Ok(());
    };
    let session: weft_agents::SessionId = session.parse()?;
    let messages = memory.load(name, &session).await?;
    if g.json {
        return print_json(&messages);
    }
    if messages.is_empty() {
        println!("agent {name} remembers nothing of session {session}");
    }
    for m in messages {
        let role = serde_json::to_value(m.role)?;
        let role = role.as_str().unwrap_or("?");
        if !m.content.is_empty() {
            println!("{role:>9}: {}", m.content);
        }
        for c in &m.tool_calls {
            println!("{role:>9}: → {}({})", c.name, c.arguments);
        }
    }
    Ok(())
}

async fn plan(g: &Global, bus: &weft_bus::Bus, name: &str, session: &str) -> anyhow::Result<()> {
    let session: weft_agents::SessionId = session.parse()?;
    let plan = weft_agents::Memory::open(bus)
        .await?
        .load_plan(name, &session)
        .await?;
    if g.json {
        return print_json(&plan);
    }
    match plan {
        Some(p) => print!("{}", p.to_prompt()),
        None => println!("agent {name} keeps no plan for session {session}"),
    }
    Ok(())
}
