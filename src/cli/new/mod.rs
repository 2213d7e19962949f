//! `weft new service|agent|flow NAME`: scaffolds a ready-to-run project in `./NAME`.
//!
//! - **service**: a Cargo project on `weft-bus` with one endpoint, `greet`
//!   (`{name}` → `{greeting}`), its `Cargo.lock` pinned to the versions this Weft was
//!   built with;
//! - **agent**: a YAML definition (`weft agent run`) managing the services named by
//!   `--manages`, on a scripted model until a real one is configured; when the mesh is
//!   reachable, the script has a rule for each tool the managed services offer now;
//! - **flow**: a JSON definition (`weft flow worker`) triggered by `--on EVENT`: a
//!   durable sleep, an approval, then a publish.
//!
//! Each gets a README giving the next three commands. Text files are rendered from the
//! templates beside this module with `minijinja`; JSON files are built with
//! `serde_json`. Nothing is overwritten: an existing target directory is an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use minijinja::{Environment, context};
use serde_json::{Value, json};
use weft_bus::ServiceName;
use weft_bus::registry::{Kind, Registry, newest_each};
use weft_bus::tool::ToolSet;

use super::Global;

/// `weft new …`
#[derive(Debug, Subcommand)]
pub enum NewCommand {
    /// A Cargo project serving service NAME with one endpoint, `greet`. Next: `cd NAME
    /// && cargo run`, then `weft call NAME.greet '{"name":"Ada"}'`.
    Service(ServiceArgs),
    /// An agent definition (YAML) managing the services given by --manages, on a
    /// scripted model until you set a real one. Next: `weft agent run NAME/NAME.yaml`.
    Agent(AgentArgs),
    /// A flow definition (JSON) run on every --on event: a durable sleep, an approval,
    /// a publish. Next: `weft flow worker NAME/NAME.json`.
    Flow(FlowArgs),
}

/// What every kind takes.
#[derive(Debug, Args)]
pub struct Target {
    /// The name: one token, `[A-Za-z0-9_-]+`, starting with a letter.
    pub name: String,
    /// Where to write it (default `./NAME`); must not exist yet.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `weft new service NAME`
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    target: Target,
    /// The Weft checkout whose `bus/` crate the project depends on. Default: the one
    /// this `weft` was built from, when it still exists; without one, the project
    /// depends on the published `weft-bus` by version.
    #[arg(long, value_name = "DIR", env = "WEFT_SOURCE")]
    weft_source: Option<PathBuf>,
}

/// `weft new agent NAME --manages A,B`
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    target: Target,
    /// The services whose endpoints are its tools (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "SERVICE,…")]
    manages: Vec<String>,
}

/// `weft new flow NAME --on EVENT`
#[derive(Debug, Args)]
pub struct FlowArgs {
    #[command(flatten)]
    target: Target,
    /// The event type (or pattern, e.g. `order.*`) that starts a run.
    #[arg(long, value_name = "EVENT")]
    on: String,
}

/// Runs `weft new`.
///
/// # Errors
/// A bad name, an existing target directory, or a file that cannot be written.
pub async fn run(g: &Global, cmd: NewCommand) -> anyhow::Result<()> {
    let (dir, files, next) = match cmd {
        NewCommand::Service(a) => service(a)?,
        NewCommand::Agent(a) => agent(g, a).await?,
        NewCommand::Flow(a) => flow(a)?,
    };
    write_all(&dir, &files)?;
    if g.json {
        let files: Vec<_> = files.iter().map(|(p, _)| dir.join(p)).collect();
        return super::print_json(&json!({"dir": dir, "files": files, "next": next}));
    }
    println!("created {}:", dir.display());
    for (path, _) in &files {
        println!("  {}", dir.join(path).display());
    }
    println!("next:");
    for step in &next {
        println!("  {step}");
    }
    Ok(())
}

/// A file to write: its path inside the project, and its text.
type File = (PathBuf, String);

/// The project's directory, its files, and the next commands.
type Scaffold = (PathBuf, Vec<File>, Vec<String>);

/// The templates, by name.
fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_keep_trailing_newline(true);
    // Not HTML: values are tokens, or quoted on purpose with `tojson`.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    for (name, text) in [
        ("service/Cargo.toml", include_str!("service/Cargo.toml.j2")),
        ("service/main.rs", include_str!("service/main.rs.j2")),
        ("service/README.md", include_str!("service/README.md.j2")),
        ("service/gitignore", include_str!("service/gitignore.j2")),
        ("agent/agent.yaml", include_str!("agent/agent.yaml.j2")),
        ("agent/README.md", include_str!("agent/README.md.j2")),
        ("flow/README.md", include_str!("flow/README.md.j2")),
    ] {
        env.add_template(name, text)
            .expect("the shipped templates parse");
    }
    env
}

fn render(env: &Environment<'_>, name: &str, ctx: minijinja::Value) -> anyhow::Result<String> {
    env.get_template(name)?
        .render(ctx)
        .with_context(|| format!("cannot render template {name}"))
}

/// Checks the name and picks the directory.
fn target(kind: &str, t: &Target) -> anyhow::Result<PathBuf> {
    let name: ServiceName = t
        .name
        .parse()
        .with_context(|| format!("bad {kind} name {:?}", t.name))?;
    if !name.as_str().starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!(
            "bad {kind} name {:?}: it must start with a letter (it is also a Cargo package and file name)",
            t.name
        );
    }
    let dir = t.dir.clone().unwrap_or_else(|| PathBuf::from(&t.name));
    if dir.exists() {
        bail!(
            "{} exists already; choose another name or --dir (nothing was written)",
            dir.display()
        );
    }
    Ok(dir)
}

fn service(a: ServiceArgs) -> anyhow::Result<Scaffold> {
    let dir = target("service", &a.target)?;
    let name = &a.target.name;
    let source = match a.weft_source {
        Some(dir) => Some(dir),
        None => {
            let built_from = Path::new(env!("CARGO_MANIFEST_DIR"));
            built_from
                .join("bus/Cargo.toml")
                .exists()
                .then(|| built_from.to_owned())
        }
    };
    let version = env!("CARGO_PKG_VERSION");
    let weft_bus = match &source {
        Some(src) => {
            let bus = src.join("bus");
            if !bus.join("Cargo.toml").exists() {
                bail!(
                    "{} is not a Weft checkout (no bus/Cargo.toml)",
                    src.display()
                );
            }
            let bus = bus
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", bus.display()))?;
            format!(
                "weft-bus = {{ version = {}, path = {} }}",
                json!(version),
                json!(bus.to_string_lossy())
            )
        }
        None => format!("weft-bus = {}", json!(version)),
    };
    let env = templates();
    let ctx = context! { name, weft_bus };
    let mut files = vec![
        (
            "Cargo.toml".into(),
            render(&env, "service/Cargo.toml", ctx.clone())?,
        ),
        (
            "src/main.rs".into(),
            render(&env, "service/main.rs", ctx.clone())?,
        ),
        (
            "README.md".into(),
            render(&env, "service/README.md", ctx.clone())?,
        ),
        (".gitignore".into(), render(&env, "service/gitignore", ctx)?),
    ];
    if source.is_some() {
        // The versions this Weft was built and tested with; Cargo drops what the
        // project does not use on its first build.
        files.push((
            "Cargo.lock".into(),
            include_str!("../../../Cargo.lock").into(),
        ));
    }
    let next = vec![
        format!("cd {} && cargo run", dir.display()),
        format!("weft call {name}.greet '{{\"name\":\"Ada\"}}'"),
        "weft ls".into(),
    ];
    Ok((dir, files, next))
}

async fn agent(g: &Global, a: AgentArgs) -> anyhow::Result<Scaffold> {
    let dir = target("agent", &a.target)?;
    let name = &a.target.name;
    for s in &a.manages {
        s.parse::<ServiceName>()
            .with_context(|| format!("bad service name {s:?} in --manages"))?;
    }
    let tools = managed_tools(g, &a.manages).await;
    let tool_names: Vec<&str> = tools.iter().map(|(t, _)| t.as_str()).collect();
    let description = if a.manages.is_empty() {
        format!("Agent {name}")
    } else {
        format!("Agent {name}: uses the tools of {}", a.manages.join(", "))
    };
    let prompt = if a.manages.is_empty() {
        format!("You are {name}. Answer briefly.")
    } else {
        format!(
            "You are {name}. Use the tools of {} to answer; say which tool you used.",
            a.manages.join(", ")
        )
    };
    let env = templates();
    let ctx = context! {
        name, description, prompt,
        manages => a.manages,
        tools => tool_names,
    };
    let files = vec![
        (
            format!("{name}.yaml").into(),
            render(&env, "agent/agent.yaml", ctx.clone())?,
        ),
        (format!("{name}.script.json").into(), script(name, &tools)?),
        ("README.md".into(), render(&env, "agent/README.md", ctx)?),
    ];
    let definition = dir.join(format!("{name}.yaml"));
    let next = vec![
        format!("weft agent run {}", definition.display()),
        format!("weft chat {name} -m 'hello'"),
        format!("weft agent runs {name}"),
    ];
    Ok((dir, files, next))
}

/// The tools the managed services offer now, each with the argument a message's text
/// fills (its first required string property, else `text`). Empty when the mesh is
/// not reachable within a second or nothing is registered yet.
async fn managed_tools(g: &Global, manages: &[String]) -> Vec<(String, String)> {
    if manages.is_empty() {
        return Vec::new();
    }
    let listed = async {
        let bus = g.connect().await?;
        let registry = Registry::open(&bus).await?;
        let services: Vec<_> = registry
            .list_kind(Kind::Service, None)
            .await?
            .into_iter()
            .filter(|r| manages.contains(&r.name))
            .collect();
        anyhow::Ok(ToolSet::from_registrations(&newest_each(services)))
    };
    let Ok(Ok(tools)) = tokio::time::timeout(Duration::from_secs(1), listed).await else {
        return Vec::new();
    };
    tools
        .tools()
        .iter()
        .map(|t| (t.name.clone(), text_argument(&t.input_schema)))
        .collect()
}

/// The property a message's text goes into: the first required string property of
/// `schema`, else its first string property, else `text`.
fn text_argument(schema: &Value) -> String {
    let props = schema["properties"].as_object();
    let is_string = |p: &str| props.is_some_and(|m| m[p]["type"] == "string");
    let required = schema["required"].as_array().into_iter().flatten();
    required
        .filter_map(Value::as_str)
        .find(|p| props.is_some_and(|m| m.contains_key(*p)) && is_string(p))
        .or_else(|| props.and_then(|m| m.keys().map(String::as_str).find(|p| is_string(p))))
        .unwrap_or("text")
        .to_owned()
}

/// The scripted model's script: `use <tool> with <text>` for each known tool (and for
/// any tool, its text as `text`), then a catch-all answer.
fn script(name: &str, tools: &[(String, String)]) -> anyhow::Result<String> {
    let mut rules: Vec<Value> = tools
        .iter()
        .map(|(tool, arg)| {
            json!({
                "match": format!("(?i)^use {tool} with (?P<text>.+)$"),
                "turns": [
                    {"tool_calls": [{"name": tool, "arguments": {arg: "{{match.text}}"}}]},
                    {"content": format!("{tool} answered: {{{{result.0}}}}")}
                ]
            })
        })
        .collect();
    rules.push(json!({
        "match": "(?i)^use (?P<tool>[A-Za-z0-9_-]+) with (?P<text>.+)$",
        "turns": [
            {"tool_calls": [{"name": "{{match.tool}}", "arguments": {"text": "{{match.text}}"}}]},
            {"content": "{{match.tool}} answered: {{result.0}}"}
        ]
    }));
    let hint = match tools.first() {
        Some((tool, _)) => format!(" Try: use {tool} with <text>."),
        None => " Try: use <tool> with <text>.".into(),
    };
    rules.push(json!({
        "match": ".*",
        "turns": [{"content": format!("I am {name}, running on a script, not a model.{hint}")}]
    }));
    let mut text = serde_json::to_string_pretty(&json!({ "rules": rules }))?;
    text.push('\n');
    Ok(text)
}

fn flow(a: FlowArgs) -> anyhow::Result<Scaffold> {
    let dir = target("flow", &a.target)?;
    let name = &a.target.name;
    let event: weft_bus::EventPattern =
        a.on.parse()
            .with_context(|| format!("bad event pattern {:?} for --on", a.on))?;
    let done = format!("{name}.done");
    let sleep = "2s";
    let definition = json!({
        "name": name,
        "version": "0.1.0",
        "description": format!("Made by `weft new flow {name} --on {event}`"),
        "trigger": event.as_str(),
        "steps": [
            {"name": "wait", "sleep": sleep},
            {"name": "approve", "approval": {
                "prompt": format!("Announce {done} for this {event} event?"),
                "timeout": "1h",
                "default": "deny"
            }},
            {"name": "announce", "publish": done, "input": "${trigger.payload}"}
        ]
    });
    let mut json_text = serde_json::to_string_pretty(&definition)?;
    json_text.push('\n');
    let env = templates();
    let readme = render(
        &env,
        "flow/README.md",
        context! { name, event => event.as_str(), example => example_event(&event), done, sleep },
    )?;
    let file = dir.join(format!("{name}.json"));
    let files = vec![
        (format!("{name}.json").into(), json_text),
        ("README.md".into(), readme),
    ];
    let next = vec![
        format!("weft flow worker {}", file.display()),
        format!(
            "weft pub {} '{{\"hello\":\"world\"}}'",
            example_event(&event)
        ),
        format!("weft flow runs {name}"),
    ];
    Ok((dir, files, next))
}

/// An event type the pattern matches, for the README's example: wildcards become
/// `example`.
fn example_event(pattern: &weft_bus::EventPattern) -> String {
    pattern
        .as_str()
        .split('.')
        .map(|t| if t == "*" || t == ">" { "example" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

/// Writes every file under `dir`, which must not exist; removes it again when a write
/// fails, so a failed run leaves nothing behind.
fn write_all(dir: &Path, files: &[File]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let written = files.iter().try_for_each(|(path, text)| {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_argument_is_the_first_required_string() {
        let greet = json!({"type": "object",
            "properties": {"count": {"type": "integer"}, "name": {"type": "string"}},
            "required": ["count", "name"]});
        assert_eq!(text_argument(&greet), "name");
        let optional = json!({"properties": {"q": {"type": "string"}}});
        assert_eq!(text_argument(&optional), "q");
        assert_eq!(text_argument(&json!({})), "text");
    }

    #[test]
    fn the_script_loads_in_the_scripted_model() {
        let tools = vec![("hello_greet".to_owned(), "name".to_owned())];
        let text = script("helper", &tools).unwrap();
        weft_agents::ScriptedModel::from_json(&text).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["rules"][0]["turns"][0]["tool_calls"][0]["arguments"],
            json!({"name": "{{match.text}}"})
        );
    }

    #[test]
    fn wildcards_become_an_example_event() {
        let p: weft_bus::EventPattern = "order.*.created".parse().unwrap();
        assert_eq!(example_event(&p), "order.example.created");
    }
}
