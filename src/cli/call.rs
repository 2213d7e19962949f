//! `weft call`.

use std::time::Duration;

use clap::Args;
use weft_bus::{Envelope, Target};

use super::{Global, parse_json_arg, print_json};

/// `weft call TARGET [PAYLOAD]`
#[derive(Debug, Args)]
pub struct CallArgs {
    /// `service` (its default endpoint) or `service.endpoint`, e.g. `support` or
    /// `tickets.list`.
    pub target: Target,
    /// Payload as JSON (default `{}`), e.g. '{"message":"How many tickets are open?"}'.
    pub payload: Option<String>,
    /// How long to wait for the reply, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Session id (agents keep memory per session).
    #[arg(long)]
    pub session: Option<String>,
}

pub async fn run(g: &Global, args: CallArgs) -> anyhow::Result<()> {
    let payload = match &args.payload {
        Some(p) => parse_json_arg("payload", p)?,
        None => serde_json::json!({}),
    };
    let bus = g.connect().await?;
    let mut env = Envelope::request(args.target.to_string(), payload);
    env.from = Some("cli".into());
    env.channel = Some("cli".into());
    env.session_id = args.session;
    let reply = bus
        .request(&args.target, env, Duration::from_millis(args.timeout_ms))
        .await?;
    let payload = reply.payload.unwrap_or(serde_json::Value::Null);
    if g.json {
        print_json(&payload)?;
    } else {
        println!("{}", serde_json::to_string_pretty(&payload)?);
    }
    Ok(())
}
