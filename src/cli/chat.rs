//! `weft chat`: an interactive terminal chat with an agent of the mesh (line editing
//! and history by `rustyline`), the agent's text streamed as it comes and its tool
//! calls shown as they happen.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;
use futures::StreamExt as _;
use serde_json::json;
use weft_agents::RunEvent;
use weft_bus::stream::StreamOptions;
use weft_bus::{Bus, Envelope, FrameType, Target};

use super::Global;

/// Longest shown tool argument or result, in characters.
const SHOWN_CHARS: usize = 200;

/// `weft chat [AGENT] [--session ID] [-m MESSAGE]`
#[derive(Debug, Args)]
#[command(
    after_help = "In the chat: /new starts a new session, /agent NAME talks to another agent, /exit (or Ctrl-D) leaves.\nTool calls show as `→ tickets_list({\"status\":\"open\"})` and their results as `← {…}`."
)]
pub struct ChatArgs {
    /// The agent to talk to; default the only agent registered.
    pub agent: Option<String>,
    /// Continue this session (the agent remembers it); default a new one.
    #[arg(long)]
    pub session: Option<String>,
    /// Send this one message, print the answer and exit (for scripts).
    #[arg(short, long)]
    pub message: Option<String>,
    /// The model that routes (several agents, none named) or answers (no agent):
    /// openai, anthropic, gemini, ollama or scripted (docs/agents.md).
    #[arg(long, env = "WEFT_MODEL_PROVIDER")]
    pub provider: Option<String>,
    /// Longest wait for one answer (the whole stream), e.g. 2m.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Who answers: one agent, a router over several, or the model itself with every
/// service's tools.
enum Talk {
    Agent(String),
    Routed(Vec<weft_agents::AgentInfo>, weft_agents::router::Router),
    Direct(Box<weft_agents::Agent>),
}

impl Talk {
    fn describe(&self) -> String {
        match self {
            Talk::Agent(a) => a.clone(),
            Talk::Routed(agents, _) => format!(
                "the router over {}",
                agents
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Talk::Direct(_) => "the model with every service's tools".into(),
        }
    }
}

pub async fn run(g: &Global, args: ChatArgs) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let mut talk = match args.agent.clone() {
        Some(a) => Talk::Agent(a),
        None => choose(&bus, args.provider.as_deref()).await?,
    };
    let mut session = args.session.clone().unwrap_or_else(new_session);
    if let Some(message) = &args.message {
        return say(&bus, &talk, &session, message, args.timeout).await;
    }
    println!(
        "chatting with {} (session {session}); /exit leaves, /help helps",
        talk.describe()
    );
    let mut editor = rustyline::DefaultEditor::new().context("cannot open the terminal")?;
    let history = history_file();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    loop {
        let prompt = match &talk {
            Talk::Agent(a) => format!("{a}> "),
            _ => "> ".to_owned(),
        };
        // rustyline blocks: read on a blocking thread, keep the runtime free.
        let (back, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline(&prompt);
            (editor, line)
        })
        .await?;
        editor = back;
        let line = match line {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(anyhow!("cannot read the terminal: {e}")),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        match line.split_once(' ').unwrap_or((line, "")) {
            ("/exit" | "/quit", _) => break,
            ("/help", _) => {
                println!("/new: a new session · /agent NAME: talk to another agent · /exit: leave")
            }
            ("/new", _) => {
                session = new_session();
                println!("new session {session}");
            }
            ("/agent", name) if !name.trim().is_empty() => {
                talk = Talk::Agent(name.trim().to_owned());
                println!("chatting with {} (session {session})", talk.describe());
            }
            (cmd, _) if cmd.starts_with('/') => {
                println!("unknown command {cmd}; /help lists them")
            }
            _ => {
                if let Err(e) = say(&bus, &talk, &session, line, args.timeout).await {
                    println!();
                    weft::telemetry::say_error(&super::one_line(&e), super::hint(&e));
                }
            }
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// One message, to whoever answers.
async fn say(
    bus: &Bus,
    talk: &Talk,
    session: &str,
    message: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    match talk {
        Talk::Agent(agent) => turn(bus, agent, session, message, timeout).await,
        Talk::Routed(agents, router) => match router.route(agents, message).await? {
            weft_agents::router::Route::Agent(agent) => {
                println!("(→ {agent})");
                turn(bus, &agent, session, message, timeout).await
            }
            weft_agents::router::Route::Answer(text) => {
                println!("{text}");
                Ok(())
            }
        },
        Talk::Direct(agent) => {
            let out = std::sync::Mutex::new(Printer::default());
            let sink = |e: RunEvent| out.lock().unwrap_or_else(|p| p.into_inner()).event(&e);
            let request = weft_agents::ChatRequest::new(message).session(session.parse()?);
            let reply = tokio::time::timeout(timeout, agent.chat_streaming(bus, request, &sink))
                .await
                .map_err(|_| {
                    anyhow!("no answer within {}", humantime::format_duration(timeout))
                })??;
            let mut out = out.into_inner().unwrap_or_else(|p| p.into_inner());
            if !out.wrote_text {
                out.text(&reply.reply);
            }
            out.end_line();
            Ok(())
        }
    }
}

/// One message to `agent`, its events printed as they come.
async fn turn(
    bus: &Bus,
    agent: &str,
    session: &str,
    message: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let target: Target = agent
        .parse()
        .with_context(|| format!("{agent:?} is not an agent name"))?;
    let mut env = Envelope::request(agent, json!({"message": message, "session_id": session}));
    env.from = Some("cli".into());
    env.channel = Some("cli".into());
    env.session_id = Some(session.to_owned());
    let options = StreamOptions::default().timeout(timeout);
    let mut frames = bus.invoke_stream(&target, env, options).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut out = Printer::default();
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = &mut ctrl_c => {
                frames.cancel().await;
                out.end_line();
                return Err(anyhow!("cancelled by Ctrl-C"));
            }
        };
        let frame = frame.ok_or_else(|| anyhow!("the answer ended without a reply"))??;
        match frame.frame_type() {
            // A delta that is no run event (another kind of streaming endpoint) is
            // not shown.
            FrameType::Delta => {
                if let Ok(event) = serde_json::from_value::<RunEvent>(frame.payload().clone()) {
                    out.event(&event);
                }
            }
            FrameType::Final => {
                if !out.wrote_text {
                    // A model that does not stream, or an old agent: the reply whole.
                    out.text(frame.payload()["reply"].as_str().unwrap_or_default());
                }
                out.end_line();
                return Ok(());
            }
            FrameType::Error => {
                out.end_line();
                let error = frame.error().unwrap_or_else(|| {
                    weft_bus::ErrorPayload::new(weft_bus::ErrorCode::CodecFailure, "error frame")
                });
                return Err(weft_bus::Error::from_remote(agent, error).into());
            }
            FrameType::Started | FrameType::Request => {}
        }
    }
}

/// Prints a run's events: text inline, tool calls and results on lines of their own.
#[derive(Default)]
struct Printer {
    /// Whether the cursor is mid-line after text.
    mid_line: bool,
    /// Whether any text of the reply was printed.
    wrote_text: bool,
}

impl Printer {
    fn event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Text { text } => self.text(text),
            RunEvent::ToolCall {
                name, arguments, ..
            } => {
                self.end_line();
                println!("→ {name}({})", shorten(&arguments.to_string()));
            }
            RunEvent::ToolResult { result, error, .. } => {
                self.end_line();
                let shown = match (result, error) {
                    (_, Some(e)) => format!("error {}: {}", e.code, e.message),
                    (Some(r), None) => r.to_string(),
                    (None, None) => "null".into(),
                };
                println!("← {}", shorten(&shown));
            }
        }
    }

    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        print!("{text}");
        let _ = std::io::stdout().flush();
        self.mid_line = !text.ends_with('\n');
        self.wrote_text = true;
    }

    fn end_line(&mut self) {
        if self.mid_line {
            println!();
            self.mid_line = false;
        }
    }
}

/// `text` cut to [`SHOWN_CHARS`] characters with `…`.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A fresh session id: `chat-` and 12 hex digits.
fn new_session() -> String {
    format!("chat-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Who answers when no agent is named: the only agent; with several, a router on the
/// model of `--provider` / `WEFT_MODEL_PROVIDER`; with none, that model with every
/// service's tools.
async fn choose(bus: &Bus, provider: Option<&str>) -> anyhow::Result<Talk> {
    let mut agents = weft_agents::agent::list(bus).await?;
    if agents.len() == 1 {
        return Ok(Talk::Agent(agents.remove(0).name));
    }
    let model = match provider {
        Some(p) => weft_agents::model::from_provider(p),
        None => weft_agents::model::from_env(),
    }
    .map_err(|e| {
        anyhow!(
            "{} agents are registered, so the chat needs a model to {}: {e} (or name an agent: weft chat AGENT)",
            agents.len(),
            if agents.is_empty() { "answer with every service's tools" } else { "route each message" }
        )
    })?;
    if !agents.is_empty() {
        return Ok(Talk::Routed(
            agents,
            weft_agents::router::Router::new(model),
        ));
    }
    let services: Vec<String> = weft_bus::registry::Registry::open(bus)
        .await?
        .listing_kind(weft_bus::registry::Kind::Service)
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect();
    if services.is_empty() {
        return Err(anyhow!(
            "nothing is registered on {} to chat with (weft ls shows what runs; weft up --demo starts the support desk)",
            bus.server_url()
        ));
    }
    Ok(Talk::Direct(Box::new(
        weft_agents::Agent::new("chat")
            .description("weft chat: the model with every service's tools")
            .manages(services)
            .model(model),
    )))
}

/// `~/.weft_chat_history`, when there is a home directory.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".weft_chat_history"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_shortened_on_a_character_boundary() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(SHOWN_CHARS + 5);
        let s = shorten(&long);
        assert_eq!(s.chars().count(), SHOWN_CHARS + 1);
        assert!(s.ends_with('…'));
    }
}
