//! `weft pub` and `weft sub`.

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use weft_bus::{Envelope, EventPattern, EventType};

use super::{Global, parse_json_arg, print_json};

/// `weft pub EVENT_TYPE [PAYLOAD]`
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Event type, dot-separated tokens: `ticket.created`.
    pub event_type: EventType,
    /// Payload as JSON (default `null`), e.g. '{"title":"Cannot log in"}'.
    pub payload: Option<String>,
    /// Session id to put in the envelope.
    #[arg(long)]
    pub session: Option<String>,
    /// Tenant id to put in the envelope.
    #[arg(long)]
    pub tenant: Option<String>,
}

pub async fn publish(g: &Global, args: PubArgs) -> anyhow::Result<()> {
    let payload = match &args.payload {
        Some(p) => parse_json_arg("payload", p)?,
        None => serde_json::Value::Null,
    };
    let bus = g.connect().await?;
    let mut env = Envelope::event(&args.event_type, payload);
    env.session_id = args.session;
    env.tenant_id = args.tenant;
    env.channel = Some("cli".into());
    let p = bus.publish_envelope(&env).await?;
    if g.json {
        print_json(&json!({
            "event_id": p.event_id, "stream": p.stream, "sequence": p.sequence, "duplicate": p.duplicate
        }))?;
    } else {
        println!(
            "published {} event_id={} (stream {} seq {}{})",
            args.event_type,
            p.event_id,
            p.stream,
            p.sequence,
            if p.duplicate { ", duplicate" } else { "" }
        );
    }
    bus.drain().await.ok();
    Ok(())
}

/// `weft sub PATTERN`
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Event pattern: tokens, `*` for one token, `>` (last) for the rest, e.g. 'ticket.>'.
    pub pattern: EventPattern,
    /// Join this queue group (each event goes to one member).
    #[arg(long)]
    pub queue: Option<String>,
    /// Exit after this many events.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
}

pub async fn subscribe(g: &Global, args: SubArgs) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    let mut sub = bus
        .subscribe_events(&args.pattern, args.queue.as_deref())
        .await?;
    if !g.json {
        weft::telemetry::say(
            tracing::Level::INFO,
            "",
            &format!(
                "listening on {} (Ctrl-C to stop)",
                bus.subjects().events_matching(&args.pattern)
            ),
        );
    }
    let mut seen = 0u64;
    // One Ctrl-C listener for the whole loop, so a signal between events is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let received = tokio::select! {
            r = sub.next() => r.context("subscription closed by the server")?,
            _ = &mut ctrl_c => break,
        };
        match received.envelope {
            Ok(env) if g.json => print_json(&env)?,
            Ok(env) => println!(
                "{} {} {} {}",
                env.occurred_at,
                env.event_type,
                env.event_id,
                env.payload_or_null()
            ),
            Err(e) if g.json => print_json(&json!({
                "subject": received.subject, "error": e.to_string()
            }))?,
            Err(e) => weft::telemetry::say(
                tracing::Level::WARN,
                "",
                &format!("invalid envelope on {}: {e}", received.subject),
            ),
        }
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}
