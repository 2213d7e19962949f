//! `weft call`.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use futures::StreamExt as _;
use weft_bus::stream::{Frame, StreamOptions};
use weft_bus::{Envelope, FrameType, Target};

use super::{Global, parse_json_arg, print_json};
use std::io::Write as _;

/// Default `--timeout-ms` of a plain call: 30 s.
const CALL_TIMEOUT_MS: u64 = 30_000;
/// Default `--timeout-ms` with `--stream`: 5 min.
const STREAM_TIMEOUT_MS: u64 = 300_000;

/// `weft call [--stream] TARGET [PAYLOAD]`
#[derive(Debug, Args)]
pub struct CallArgs {
    /// `service` (its default endpoint) or `service.endpoint`, e.g. `support` or
    /// `tickets.list`.
    pub target: Target,
    /// Payload as JSON (default `{}`), e.g. '{"message":"How many tickets are open?"}'.
    pub payload: Option<String>,
    /// Ask for a streamed reply and print its frames as they arrive, one line each:
    /// `#<seq> <started|delta|final> <payload>`; with --json each frame envelope as one
    /// JSON line. An error frame ends the command with that error (exit code 1).
    /// Ctrl-C cancels the stream on the service.
    #[arg(long)]
    pub stream: bool,
    /// How long to wait for the reply (with --stream: for the whole stream), in ms.
    /// Default 30000, with --stream 300000.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// With --stream: the longest wait for the next frame, in ms.
    #[arg(long, default_value_t = 30_000, requires = "stream")]
    pub idle_timeout_ms: u64,
    /// Session id (agents keep memory per session).
    #[arg(long)]
    pub session: Option<String>,
}

pub async fn run(g: &Global, args: CallArgs) -> anyhow::Result<()> {
    let payload = match &args.payload {
        Some(p) => parse_json_arg("payload", p)?,
        None => serde_json::json!({}),
    };
    for (flag, ms) in [
        ("--timeout-ms", args.timeout_ms),
        ("--idle-timeout-ms", Some(args.idle_timeout_ms)),
    ] {
        if ms == Some(0) {
            return Err(anyhow!("{flag} must be at least 1"));
        }
    }
    let bus = g.connect().await?;
    let mut env = Envelope::request(args.target.to_string(), payload);
    env.from = Some("cli".into());
    env.channel = Some("cli".into());
    env.session_id = args.session.clone();
    if args.stream {
        return stream(g, &bus, &args, env).await;
    }
    let timeout = Duration::from_millis(args.timeout_ms.unwrap_or(CALL_TIMEOUT_MS));
    let reply = bus.request(&args.target, env, timeout).await?;
    let payload = reply.payload.unwrap_or(serde_json::Value::Null);
    if g.json {
        print_json(&payload)?;
    } else {
        println!("{}", serde_json::to_string_pretty(&payload)?);
    }
    Ok(())
}

/// `--stream`: prints frames as they arrive; Ctrl-C cancels the stream.
async fn stream(
    g: &Global,
    bus: &weft_bus::Bus,
    args: &CallArgs,
    env: Envelope,
) -> anyhow::Result<()> {
    let options = StreamOptions::default()
        .timeout(Duration::from_millis(
            args.timeout_ms.unwrap_or(STREAM_TIMEOUT_MS),
        ))
        .idle_timeout(Duration::from_millis(args.idle_timeout_ms));
    let mut frames = bus.invoke_stream(&args.target, env, options).await?;
    // One listener for the whole stream: a Ctrl-C between two frames is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let item = tokio::select! {
            item = frames.next() => item,
            _ = &mut ctrl_c => {
                let acknowledged = frames.cancel().await;
                return Err(anyhow!(
                    "cancelled by Ctrl-C{}",
                    if acknowledged { "; the service stopped the stream" } else { "" }
                ));
            }
        };
        let Some(item) = item else {
            return Err(anyhow!(
                "the stream from {} ended without a final frame",
                args.target
            ));
        };
        let frame = item?;
        if let Err(e) = print_frame(g.json, &frame) {
            // stdout closed (e.g. `| head -3`): nobody reads on, so stop the work.
            frames.cancel().await;
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(anyhow!("cannot write to stdout: {e}"));
        }
        match frame.frame_type() {
            FrameType::Final => return Ok(()),
            FrameType::Error => {
                let error = frame.error().unwrap_or_else(|| {
                    weft_bus::ErrorPayload::new(
                        weft_bus::ErrorCode::CodecFailure,
                        "error frame without a payload",
                    )
                });
                return Err(weft_bus::Error::from_remote(&args.target.to_string(), error).into());
            }
            _ => {}
        }
    }
}

/// One frame: the envelope as a JSON line with `--json`, else
/// `#<seq> <frame> <payload>` (error frames are reported on stderr instead).
fn print_frame(json: bool, frame: &Frame) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, frame.envelope())?;
        writeln!(out)?;
        return out.flush();
    }
    let kind = match frame.frame_type() {
        FrameType::Started => "started",
        FrameType::Delta => "delta",
        FrameType::Final => "final",
        FrameType::Error | FrameType::Request => return Ok(()),
    };
    let payload = frame.payload();
    if payload.is_null() {
        writeln!(out, "#{} {kind}", frame.seq())?;
    } else {
        writeln!(out, "#{} {kind} {payload}", frame.seq())?;
    }
    out.flush()
}
