//! `weft dlq ls|show|replay`: dead letters (see `weft_bus::dlq`).

use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;
use weft_bus::EventPattern;
use weft_bus::dlq::{self, DlqEntry, Replayed};

use super::{Global, print_json};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first. ID is the dead letter's sequence in the DLQ
    /// stream (`<PREFIX>_DLQ`).
    Ls(LsArgs),
    /// Show one dead letter: why it died and its whole envelope.
    Show {
        /// Dead letter id, as `weft dlq ls` prints it.
        id: u64,
    },
    /// Republish dead letters under a fresh message id, then remove them. By default
    /// each goes back to the durable consumer that gave up on it (and to no other
    /// consumer); --to sends it to any subject instead.
    Replay(ReplayArgs),
}

/// `weft dlq ls`
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only dead letters whose event type matches, e.g. 'ticket.>'.
    #[arg(long)]
    pub event_type: Option<EventPattern>,
}

/// `weft dlq replay (ID | --all [--event-type T]) [--to SUBJECT]`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct ReplayArgs {
    /// Dead letter id, as `weft dlq ls` prints it.
    pub id: Option<u64>,
    /// Replay every dead letter (oldest first), or those of --event-type.
    #[arg(long)]
    pub all: bool,
    /// With --all: only dead letters whose event type matches, e.g. 'ticket.>'.
    #[arg(long, requires = "all")]
    pub event_type: Option<EventPattern>,
    /// Publish to this subject instead of the consumer's replay subject, e.g.
    /// `weft.events.ticket.created` to deliver to every consumer of that event type.
    #[arg(long, value_name = "SUBJECT")]
    pub to: Option<String>,
}

pub async fn run(g: &Global, cmd: DlqCommand) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    match cmd {
        DlqCommand::Ls(args) => {
            let entries = dlq::list(&bus, args.event_type.as_ref()).await?;
            if g.json {
                return print_json(&entries);
            }
            if entries.is_empty() {
                println!("no dead letters in {}", bus.names().dlq_stream);
                return Ok(());
            }
            println!(
                "{:>6}  {:<24} {:<24} {:<16} {:>8}  {:<16} LAST ERROR",
                "ID", "LAST FAILED", "EVENT TYPE", "CONSUMER", "ATTEMPTS", "REASON"
            );
            for e in &entries {
                print_row(e);
            }
        }
        DlqCommand::Show { id } => {
            let entry = dlq::get(&bus, id).await?;
            if g.json {
                return print_json(&entry);
            }
            print_entry(&entry)?;
        }
        DlqCommand::Replay(args) => {
            let to = args.to.as_deref();
            let done = match args.id {
                Some(id) => vec![dlq::replay(&bus, id, to).await?],
                None => dlq::replay_all(&bus, args.event_type.as_ref(), to).await?,
            };
            if g.json {
                return print_json(&json!({ "replayed": done }));
            }
            for r in &done {
                print_replayed(r);
            }
            if args.all {
                println!("replayed {} dead letters", done.len());
            }
        }
    }
    bus.drain().await.ok();
    Ok(())
}

fn print_row(e: &DlqEntry) {
    let event_type = e
        .envelope
        .as_ref()
        .map(|env| env.event_type.as_str())
        .unwrap_or("-");
    match &e.letter {
        Some(l) => println!(
            "{:>6}  {:<24} {:<24} {:<16} {:>8}  {:<16} {}",
            e.id,
            l.last_failed_at,
            event_type,
            l.consumer,
            l.attempts,
            l.reason.as_str(),
            one_line(&l.last_error, 80)
        ),
        None => println!(
            "{:>6}  {:<24} {:<24} {:<16} {:>8}  {:<16} (no weft.dlq metadata)",
            e.id, e.stored_at, event_type, "-", "-", "-"
        ),
    }
}

fn print_entry(e: &DlqEntry) -> anyhow::Result<()> {
    println!(
        "dead letter {} on {} (stored {})",
        e.id, e.subject, e.stored_at
    );
    if let Some(l) = &e.letter {
        println!("  consumer:         {}", l.consumer);
        println!("  reason:           {}", l.reason.as_str());
        println!("  attempts:         {}", l.attempts);
        println!("  last error:       {}", l.last_error);
        println!(
            "  first failed at:  {}",
            l.first_failed_at.as_deref().unwrap_or("unknown")
        );
        println!("  last failed at:   {}", l.last_failed_at);
        println!(
            "  original:         {} (stream {} seq {})",
            l.original_subject, l.stream, l.stream_sequence
        );
    }
    if e.wrapped {
        println!("  the original bytes were not an envelope; the payload holds them as text");
    }
    match &e.envelope {
        Some(env) => println!("envelope:\n{}", serde_json::to_string_pretty(env)?),
        None => println!("(the stored bytes are not an envelope)"),
    }
    Ok(())
}

fn print_replayed(r: &Replayed) {
    println!(
        "replayed dead letter {} (event {}) to {}: stored as {} seq {}; dead letter removed",
        r.id, r.event_id, r.to_subject, r.stream, r.sequence
    );
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.replace(['\n', '\r'], " ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
