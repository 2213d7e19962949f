//! `weft resources ls|update`, and the `--replicas` flag of commands that create
//! resources.

use std::time::Duration;

use clap::{Args, Subcommand};
use weft_bus::resources::{self, ResourceConfig, ResourceUpdate};

use super::{Global, print_json};

/// Settings of the mesh's streams and buckets, for commands that create them.
#[derive(Debug, Clone, Args)]
pub struct ResourceArgs {
    /// Replicas of every stream and bucket (1 to 5): 3 on a cluster, so a node's death
    /// loses and stops nothing. Existing resources are scaled in place. Default: new
    /// ones get 1, existing ones keep theirs.
    #[arg(long, env = "WEFT_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: Option<u8>,
}

impl ResourceArgs {
    /// The resource settings these flags ask for.
    pub fn config(&self) -> ResourceConfig {
        ResourceConfig {
            replicas: self.replicas.map(usize::from),
            ..ResourceConfig::default()
        }
    }
}

/// Ensures the mesh's resources with `args` and prints what was done or left as it is.
pub async fn ensure(
    bus: &weft_bus::Bus,
    args: &ResourceArgs,
) -> anyhow::Result<resources::Ensured> {
    let made = resources::ensure(bus, &args.config()).await?;
    for note in &made.notes {
        if !note.starts_with("created ") {
            weft::telemetry::say(tracing::Level::INFO, "note", note);
        }
    }
    Ok(made)
}

#[derive(Debug, Subcommand)]
pub enum ResourcesCommand {
    /// List the mesh's streams and KV buckets: storage, replicas and their state,
    /// max age, messages, consumers, leader.
    Ls,
    /// Change the mesh's existing streams and buckets in place (nothing stored is
    /// lost). Example: `weft resources update --replicas 3` after growing to a
    /// 3-node cluster.
    Update(UpdateArgs),
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Replicas of every stream and bucket of the mesh, application buckets included.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: Option<u8>,
    /// How long events are kept, e.g. `14d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub events_max_age: Option<Duration>,
    /// How long dead letters are kept, e.g. `90d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub dlq_max_age: Option<Duration>,
    /// Registry TTL: how soon a dead instance's entry expires, e.g. `15s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub registry_ttl: Option<Duration>,
}

pub async fn run(g: &Global, cmd: ResourcesCommand) -> anyhow::Result<()> {
    let bus = g.connect().await?;
    match cmd {
        ResourcesCommand::Ls => {
            let list = resources::list(&bus).await?;
            if g.json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!(
                    "no streams or buckets of prefix {} on {} (`weft up` creates them)",
                    bus.prefix(),
                    bus.server_url()
                );
                return Ok(());
            }
            println!(
                "{:<6} {:<22} {:<7} {:>3}  {:<10} {:>9} {:>10} {:>4}  {:<10} REPLICAS",
                "KIND", "NAME", "STORAGE", "R", "MAX AGE", "MESSAGES", "BYTES", "CONS", "LEADER"
            );
            for r in list {
                let age = if r.max_age_ms == 0 {
                    "-".to_owned()
                } else {
                    humantime::format_duration(Duration::from_secs(r.max_age_ms / 1000)).to_string()
                };
                let peers: Vec<String> = r
                    .peers
                    .iter()
                    .map(|p| {
                        let state = if p.offline {
                            "offline".to_owned()
                        } else if p.current {
                            "current".to_owned()
                        } else {
                            format!("lag {}", p.lag)
                        };
                        format!("{}:{state}", p.name)
                    })
                    .collect();
                println!(
                    "{:<6} {:<22} {:<7} {:>3}  {:<10} {:>9} {:>10} {:>4}  {:<10} {}",
                    r.kind,
                    r.name(),
                    r.storage,
                    r.replicas,
                    age,
                    r.messages,
                    r.bytes,
                    r.consumers,
                    r.leader.as_deref().unwrap_or("-"),
                    peers.join(" ")
                );
            }
            Ok(())
        }
        ResourcesCommand::Update(args) => {
            let changes = ResourceUpdate {
                replicas: args.replicas.map(usize::from),
                events_max_age: args.events_max_age,
                dlq_max_age: args.dlq_max_age,
                registry_ttl: args.registry_ttl,
            };
            if changes == ResourceUpdate::default() {
                anyhow::bail!(
                    "nothing to change: give --replicas, --events-max-age, --dlq-max-age or --registry-ttl"
                );
            }
            let notes = resources::update(&bus, &changes).await?;
            if g.json {
                return print_json(&notes);
            }
            if notes.is_empty() {
                println!("nothing changed: the resources already have these settings");
            }
            for n in notes {
                println!("updated {n}");
            }
            Ok(())
        }
    }
}
