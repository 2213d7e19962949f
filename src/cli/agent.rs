//! `weft agent`: list and describe agents, run one from a definition, and inspect and
//! approve its runs (journaled in `<PREFIX>_RUNS`, DESIGN §15).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use weft_bus::registry::{Kind, Registry, newest_each};
use weft_bus::runs::{RunStatus, RunView};
use weft_bus::tool::ToolSet;

use super::journal::{actor, parse_status, print_steps, since};
use super::{Global, print_json};

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
    /// Its chats are journaled runs: another instance of the agent resumes a run whose
    /// instance died, within --lease-ms.
    Run {
        /// The definition file (`.json`, `.yaml` or `.yml`).
        file: std::path::PathBuf,
        /// The model provider, over the file's `provider` and WEFT_MODEL_PROVIDER.
        #[arg(long)]
        provider: Option<String>,
        /// Lease of a run in ms: how soon another instance takes over the runs of an
        /// instance that died.
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
    },
    /// List agent runs (or one agent's), oldest first, with each step's status.
    /// Examples:
    ///
    ///   weft agent runs support
    ///   weft agent runs --status waiting --since 2h --json
    #[command(verbatim_doc_comment)]
    Runs(RunsArgs),
    /// Show one agent run: every model turn and tool call with its input, output,
    /// attempts, timings and errors.
    Show {
        /// The run id (a chat reply's `run_id`, or from `weft agent runs`).
        run: String,
    },
    /// Decide the tool call an agent run waits on: approve it, or deny it with --deny
    /// REASON (the model is told). An instance of the agent resumes the run.
    /// Example: weft agent approve 0b6c…-run-id --wait
    Approve {
        /// The run id.
        run: String,
        /// Deny with this reason instead of approving.
        #[arg(long, value_name = "REASON")]
        deny: Option<String>,
        /// Wait for the run to end (or to wait again) and print it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        timeout: std::time::Duration,
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
        AgentCommand::Run {
            file,
            provider,
            lease_ms,
        } => run(&bus, &file, provider, lease_ms).await,
        AgentCommand::Runs(args) => runs(g, &bus, args).await,
        AgentCommand::Show { run } => show(g, &bus, &run).await,
        AgentCommand::Approve {
            run,
            deny,
            wait,
            timeout,
        } => approve(g, &bus, &run, deny, wait, timeout).await,
    }
}

async fn run(
    bus: &weft_bus::Bus,
    file: &std::path::Path,
    provider: Option<String>,
    lease_ms: u64,
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
    let agent = definition
        .into_agent(model)
        .lease(std::time::Duration::from_millis(lease_ms));
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

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this agent.
    pub agent: Option<String>,
    /// Only runs in this status: running, waiting, cancelling, completed, failed,
    /// cancelled.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<RunStatus>,
    /// Only runs started within this long, e.g. `30m`, `2h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Show at most the newest N runs.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

async fn runs(g: &Global, bus: &weft_bus::Bus, args: RunsArgs) -> anyhow::Result<()> {
    let since = since(args.since);
    let mut runs =
        weft_agents::durable::runs(bus, args.agent.as_deref(), args.status, since.as_deref())
            .await?;
    let skip = runs.len().saturating_sub(args.limit);
    runs.drain(..skip);
    if g.json {
        let out: Vec<_> = runs.iter().map(RunView::summary).collect();
        return print_json(&out);
    }
    if runs.is_empty() {
        println!("no agent runs match");
        return Ok(());
    }
    println!(
        "{:<36}  {:<12} {:<10} {:<24} {:>5} {:>5}  MESSAGE",
        "RUN", "AGENT", "STATUS", "CREATED", "TURNS", "TOOLS"
    );
    for r in runs {
        let count = |p: &str| r.steps.iter().filter(|s| s.name.starts_with(p)).count();
        let mut message = r.input()["message"].as_str().unwrap_or_default().to_owned();
        if message.chars().count() > 40 {
            message = message.chars().take(39).collect::<String>() + "…";
        }
        println!(
            "{:<36}  {:<12} {:<10} {:<24} {:>5} {:>5}  {}",
            r.id,
            r.name,
            r.status.as_str(),
            r.created_at,
            count("turn_"),
            count("tool_"),
            message
        );
        if let Some(e) = &r.error {
            println!("    error: {e}");
        }
        if r.status == RunStatus::Waiting {
            println!(
                "    (waits for approval: `weft agent show {}`, `weft agent approve {}`)",
                r.id, r.id
            );
        }
    }
    Ok(())
}

/// The shape of `weft agent show --json`: the run, its input and definition.
fn detail(run: &RunView) -> serde_json::Value {
    let mut v = serde_json::to_value(run).unwrap_or_default();
    v["input"] = run.input().clone();
    v["definition"] = run.definition().clone();
    v
}

async fn show(g: &Global, bus: &weft_bus::Bus, run: &str) -> anyhow::Result<()> {
    let run = weft_agents::durable::find(bus, run)
        .await?
        .with_context(|| format!("no agent run {run} (see `weft agent runs`)"))?;
    print_run(g, &run)
}

fn print_run(g: &Global, run: &RunView) -> anyhow::Result<()> {
    if g.json {
        return print_json(&detail(run));
    }
    println!("run      {}", run.id);
    println!("agent    {}", run.name);
    println!("status   {}", run.status.as_str());
    if let Some(m) = run.input()["message"].as_str() {
        println!("message  {m}");
    }
    if let Some(s) = run.input()["session_id"].as_str() {
        println!("session  {s}");
    }
    println!("started  {}", run.created_at);
    println!("updated  {}", run.updated_at);
    if run.retries > 0 {
        println!("retries  {}", run.retries);
    }
    if let Some(e) = &run.error {
        println!("error    {e}");
    }
    if let Some(reply) = run.output.as_ref().and_then(|o| o["reply"].as_str()) {
        println!("reply    {reply}");
    }
    print_steps(&run.steps);
    Ok(())
}

async fn approve(
    g: &Global,
    bus: &weft_bus::Bus,
    run: &str,
    deny: Option<String>,
    wait: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    weft_agents::durable::approve(bus, run, &actor(), deny.as_deref()).await?;
    if !wait {
        if g.json {
            return print_json(&serde_json::json!({"run_id": run, "approved": deny.is_none()}));
        }
        println!(
            "{} run {run}; an instance of its agent resumes it (`weft agent show {run}`)",
            if deny.is_some() {
                "denied the call of"
            } else {
                "approved the call of"
            }
        );
        return Ok(());
    }
    let view = weft_agents::durable::wait(bus, run, timeout)
        .await?
        .with_context(|| format!("no agent run {run}"))?;
    print_run(g, &view)
}
