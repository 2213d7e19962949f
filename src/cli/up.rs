//! `weft up`: a local mesh in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tracing::Level;
use weft::telemetry::say;
use weft_bus::server::{LocalServer, LocalServerConfig};
use weft_gateway::{Gateway, GatewayConfig, TlsConfig};

use super::Global;

/// `weft up [--demo]`
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Also run the support desk demo: service `tickets`, agent `support` (scripted
    /// model unless WEFT_MODEL_PROVIDER is openai, anthropic, gemini or ollama), flow
    /// `triage`.
    #[arg(long)]
    pub demo: bool,
    /// Address of the HTTP gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Client port of the local nats-server.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// Data directory: JetStream store and server log.
    #[arg(long, default_value = ".weft")]
    pub data: PathBuf,
    /// The nats-server binary (default: $NATS_SERVER_BIN, PATH, .tools/).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Bearer token the gateway requires (needed to bind a non-loopback address).
    #[arg(long, env = "WEFT_GATEWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Allow a non-loopback gateway address without a token.
    #[arg(long)]
    pub insecure: bool,
    /// Serve the gateway over HTTPS with this certificate chain (PEM, the gateway's
    /// certificate first); needs --tls-key.
    #[arg(long, env = "WEFT_GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "WEFT_GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Only these services and agents are tools on the gateway's /mcp
    /// (comma-separated); default all.
    #[arg(long, value_delimiter = ',', env = "WEFT_MCP_SERVICES")]
    pub mcp_services: Option<Vec<String>>,
    /// Attach a stdio MCP server as service NAME: 'NAME=COMMAND ARGS…' (split on
    /// spaces; repeatable), e.g. --mcp-attach 'files=npx -y @modelcontextprotocol/server-filesystem /tmp'.
    #[arg(long = "mcp-attach", value_name = "NAME=COMMAND")]
    pub mcp_attach: Vec<String>,
    /// With --demo: the model provider of the `support` agent, openai, anthropic,
    /// gemini, ollama or scripted (default: the demo's script). Configured by WEFT_MODEL, the provider's
    /// key and base URL variables (docs/agents.md).
    #[arg(long, env = "WEFT_MODEL_PROVIDER")]
    pub provider: Option<String>,
    /// The agent whose card `/.well-known/agent-card.json` serves (default: the only
    /// registered agent).
    #[arg(long, value_name = "AGENT", env = "WEFT_A2A_DEFAULT")]
    pub a2a_default: Option<String>,
    #[command(flatten)]
    pub resources: super::resources::ResourceArgs,
}

/// The next signal of `s`; never, when its handler could not be installed.
#[cfg(unix)]
async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// A future that resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled, so call it before
/// telling the user the process runs: a Ctrl-C right after the banner then stops it
/// cleanly instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut terminate = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                _ = recv(interrupt.as_mut()) => {},
                _ = recv(terminate.as_mut()) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn run(g: &Global, args: UpArgs) -> anyhow::Result<()> {
    let attach = args
        .mcp_attach
        .iter()
        .map(|spec| super::mcp::parse_attach_spec(spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // 1. NATS: an existing server, or a local one.
    let local = match &g.server {
        Some(_) => None,
        None => {
            let mut config = LocalServerConfig::new(args.data.join("nats"));
            config.port = Some(args.nats_port);
            config.binary = args.nats_server.clone();
            let server = LocalServer::start(config).await.with_context(|| {
                format!(
                    "cannot start a local nats-server on port {}",
                    args.nats_port
                )
            })?;
            Some(server)
        }
    };
    let mut options = g.connect_options()?;
    if let Some(server) = &local {
        options = options.url(server.url());
    }
    let bus = options.name("weft-up").connect().await?;

    // 2. Streams and buckets.
    let made = super::resources::ensure(&bus, &args.resources).await?;

    // 3. Gateway.
    let gateway = Gateway::bind(
        bus.clone(),
        GatewayConfig {
            addr: args.http,
            auth_token: args.token.clone(),
            allow_insecure: args.insecure,
            tls: args
                .tls_cert
                .clone()
                .zip(args.tls_key.clone())
                .map(|(cert, key)| TlsConfig::new(cert, key)),
            mcp_services: args
                .mcp_services
                .as_ref()
                .map(|s| s.iter().map(|n| n.trim().to_owned()).collect()),
            a2a_default: args.a2a_default.clone(),
            ..GatewayConfig::default()
        },
    )
    .await
    .with_context(|| format!("cannot start the gateway on {}", args.http))?;
    let http = gateway.url();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway_join = tokio::spawn(gateway.serve(async move {
        let _ = stop_rx.await;
    }));

    // 4. The A2A bridge: remote agents for flows and agents, `weft a2a add` entries.
    let a2a_bridge = weft_gateway::a2a::bridge::serve(&bus)
        .await
        .context("cannot start the A2A bridge service `a2a`")?;

    // 5. The demo.
    let demo = if args.demo {
        let attached: Vec<String> = attach.iter().map(|a| a.name.to_string()).collect();
        let model = weft_example_support_desk::model_for(args.provider.as_deref())?;
        Some(weft_example_support_desk::start_with(&bus, &attached, model).await?)
    } else {
        None
    };

    // 6. Attached MCP servers, each a service of its tools.
    let bridges_stop = tokio_util::sync::CancellationToken::new();
    let mut bridges = Vec::new();
    for options in attach {
        let described = format!("{} ({})", options.name, options.source);
        let bridge = weft_gateway::mcp::Bridge::new(options)?;
        let bus = bus.clone();
        let stop = bridges_stop.clone();
        bridges.push((
            described,
            tokio::spawn(async move { bridge.run(&bus, stop.cancelled_owned()).await }),
        ));
    }

    // 7. Tell the user what runs and what to try (Ctrl-C works from here on).
    let stop = shutdown_signal();
    println!("weft is up (prefix {})", bus.prefix());
    match &local {
        Some(s) => println!(
            "  nats-server  {} (JetStream store in {}, log {})",
            s.url(),
            args.data.join("nats").display(),
            s.log_path().display()
        ),
        None => println!("  nats         {} (existing server)", bus.server_url()),
    }
    println!("  streams      {}", made.streams.join(", "));
    println!("  kv buckets   {}", made.buckets.join(", "));
    println!("  gateway      {http}  (/v1/events, /v1/invoke, /mcp, /a2a, /metrics, /healthz)");
    for (described, _) in &bridges {
        println!("  mcp attach   {described}");
    }
    if let Some(d) = &demo {
        println!("  demo         {}", d.describe());
    }
    println!();
    let env_hint = match &local {
        Some(s) if s.url() != "nats://127.0.0.1:4222" => format!("NATS_URL={} ", s.url()),
        _ => String::new(),
    };
    println!("try, from another terminal:");
    println!(
        "  curl -X POST {http}/v1/events/ticket.created -H 'content-type: application/json' -d '{{\"title\":\"Cannot log in\",\"body\":\"The reset link fails\"}}'"
    );
    println!("  {env_hint}weft flow runs triage");
    println!("  {env_hint}weft call support '{{\"message\":\"How many tickets are open?\"}}'");
    if demo.is_some() {
        println!("  weft a2a call {http}/a2a/support \"How many tickets are open?\" --stream");
    }
    println!("(also: weft sub 'ticket.>', weft ls, curl {http}/metrics; Ctrl-C stops)");

    // 8. Wait, then stop in order: MCP bridges, demo, A2A bridge, gateway, connection,
    //    server.
    stop.await;
    say(
        Level::INFO,
        "",
        "stopping: MCP bridges, demo, A2A bridge, gateway, then nats-server",
    );
    bridges_stop.cancel();
    for (described, join) in bridges {
        if tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .is_err()
        {
            say(
                Level::WARN,
                "warning",
                &format!("MCP bridge {described} did not stop within 10 s"),
            );
        }
    }
    if let Some(d) = demo
        && let Err(e) = d.stop().await
    {
        say(
            Level::WARN,
            "warning",
            &format!("demo did not stop cleanly: {e}"),
        );
    }
    if let Err(e) = a2a_bridge.stop().await {
        say(
            Level::WARN,
            "warning",
            &format!("A2A bridge did not stop cleanly: {e}"),
        );
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), gateway_join).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => say(
            Level::WARN,
            "warning",
            &format!("gateway stopped with an error: {e}"),
        ),
        Ok(Err(e)) => say(Level::WARN, "warning", &format!("gateway task failed: {e}")),
        Err(_) => say(Level::WARN, "warning", "gateway did not stop within 10 s"),
    }
    bus.drain().await.ok();
    if let Some(s) = local {
        s.stop(Duration::from_secs(10)).await;
    }
    say(Level::INFO, "", "stopped");
    Ok(())
}
