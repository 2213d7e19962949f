//! `weft replay`: replay stored events (see `weft_bus::replay`).

use clap::{ArgGroup, Args};
use weft_bus::replay::{self, End, Selection, Start};

use super::{Global, print_json};

/// `weft replay --subject PATTERN (--since DURATION | --from-seq N) [--until …]
/// (--to-consumer NAME | --print)`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").required(true).args(["since", "from_seq"])))]
#[command(group(ArgGroup::new("target").required(true).args(["to_consumer", "print"])))]
pub struct ReplayArgs {
    /// Event pattern, e.g. 'ticket.>' (or the full subject 'weft.events.ticket.>').
    #[arg(long, value_name = "PATTERN")]
    pub subject: String,
    /// Start this long ago (90s, 10m, 2h, 1day) or at an RFC 3339 time.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Start at this stream sequence (from 1).
    #[arg(long, value_name = "N")]
    pub from_seq: Option<u64>,
    /// End (inclusive) at a stream sequence, a duration ago or an RFC 3339 time.
    /// Default: the last event stored when the replay starts.
    #[arg(long, value_name = "SEQ|DURATION|TIME")]
    pub until: Option<String>,
    /// Deliver the selected events again to this durable consumer only, through its
    /// replay subject; other consumers see nothing.
    #[arg(long, value_name = "NAME")]
    pub to_consumer: Option<String>,
    /// Print the selected events instead of delivering them.
    #[arg(long)]
    pub print: bool,
}

pub async fn run(g: &Global, args: ReplayArgs) -> anyhow::Result<()> {
    let start = match (args.from_seq, &args.since) {
        (Some(seq), _) => Start::Sequence(seq),
        (None, Some(since)) => Start::parse(since)?,
        (None, None) => anyhow::bail!("give --since DURATION or --from-seq N"),
    };
    let end = args.until.as_deref().map(End::parse).transpose()?;
    let bus = g.connect().await?;
    let mut selection = Selection::new(replay::pattern_of(bus.subjects(), &args.subject)?, start);
    selection.end = end;
    match &args.to_consumer {
        Some(consumer) => {
            let report = replay::to_consumer(&bus, &selection, consumer).await?;
            if g.json {
                print_json(&report)?;
            } else {
                let range = match (report.first_sequence, report.last_sequence) {
                    (Some(a), Some(b)) => format!(" (stream sequences {a} to {b})"),
                    _ => String::new(),
                };
                println!(
                    "replayed {} of {} selected events to consumer {}{range}",
                    report.replayed, report.selected, report.consumer
                );
                if report.skipped > 0 {
                    println!(
                        "{} selected events were skipped: none of the consumer's patterns match them",
                        report.skipped
                    );
                }
            }
        }
        None => {
            let mut events = replay::select(&bus, &selection).await?;
            let mut count = 0u64;
            while let Some(e) = events.next().await? {
                count += 1;
                if g.json {
                    print_json(&e)?;
                    continue;
                }
                match (&e.envelope, &e.error) {
                    (Some(env), _) => println!(
                        "{} {} {} {} {}",
                        e.sequence,
                        e.stored_at,
                        env.event_type,
                        env.event_id,
                        env.payload_or_null()
                    ),
                    (None, error) => println!(
                        "{} {} {} (not an envelope: {})",
                        e.sequence,
                        e.stored_at,
                        e.subject,
                        error.as_deref().unwrap_or("?")
                    ),
                }
            }
            if !g.json {
                weft::telemetry::say(tracing::Level::INFO, "", &format!("{count} events"));
            }
        }
    }
    bus.drain().await.ok();
    Ok(())
}
