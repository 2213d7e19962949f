//! The mesh's JetStream resources (DESIGN §6): names derived from the prefix, and
//! [`ensure`], which creates them idempotently.
//!
//! | resource | what |
//! |---|---|
//! | stream `<PREFIX>_EVENTS` | `P.events.>` and `P.replay.>` (replays to one consumer), file storage, limits retention, max age (default 7 days), duplicate window 2 min |
//! | stream `<PREFIX>_DLQ` | `P.dlq.>`, kept 30 days |
//! | KV `<prefix>_failures` | first failure of a message per durable consumer, for dead letters; max age = events max age |
//! | KV `<prefix>_registry` | registry entries; max age = registry TTL (default 15 s) |
//! | KV `<prefix>_memory` | agent memory by agent and session |
//! | KV `<prefix>_flows` | flow runs and step checkpoints |

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::connect::Bus;
use crate::error::{Error, ErrorKind, Result};
use crate::subject::Prefix;

/// Stream and bucket names of one mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `<PREFIX>_EVENTS`.
    pub events_stream: String,
    /// `<PREFIX>_DLQ`.
    pub dlq_stream: String,
    /// `<prefix>_registry`.
    pub registry_bucket: String,
    /// `<prefix>_memory`.
    pub memory_bucket: String,
    /// `<prefix>_flows`.
    pub flows_bucket: String,
    /// `<prefix>_failures`: per durable consumer and stream sequence, when a message
    /// first failed (see [`crate::consumer`]).
    pub failures_bucket: String,
    prefix: String,
}

impl Names {
    /// The names for `prefix`.
    pub fn new(prefix: &Prefix) -> Self {
        let up = prefix.as_str().to_uppercase();
        let p = prefix.as_str();
        Names {
            events_stream: format!("{up}_EVENTS"),
            dlq_stream: format!("{up}_DLQ"),
            registry_bucket: format!("{p}_registry"),
            memory_bucket: format!("{p}_memory"),
            flows_bucket: format!("{p}_flows"),
            failures_bucket: format!("{p}_failures"),
            prefix: p.to_owned(),
        }
    }

    /// `<prefix>_<name>`: the name of an application bucket of this mesh, e.g. the
    /// demo's `weft_tickets`.
    pub fn bucket(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix)
    }
}

/// Settings of the mesh's resources. Every field states its default.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceConfig {
    /// How long events are kept. Default 7 days.
    pub events_max_age: Duration,
    /// How long dead letters are kept. Default 30 days.
    pub dlq_max_age: Duration,
    /// JetStream de-duplication window on `Nats-Msg-Id`. Default 2 min.
    pub duplicate_window: Duration,
    /// Replicas of every stream and bucket: 1 locally, 3 in a cluster. Default 1.
    pub replicas: usize,
    /// Time to live of a registry entry: an instance that stops heartbeating is gone
    /// after this long. Instances heartbeat every third of it. Default 15 s.
    pub registry_ttl: Duration,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            registry_ttl: Duration::from_secs(15),
        }
    }
}

/// What [`ensure`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// Streams, by name.
    pub streams: Vec<String>,
    /// KV buckets, by name.
    pub buckets: Vec<String>,
}

/// Creates the mesh's streams and buckets, or checks that they exist with the same
/// configuration (then it is a no-op).
///
/// # Errors
/// [`ErrorKind::Conflict`] naming the resource when it exists with a different
/// configuration (e.g. another max age); [`ErrorKind::JetStream`] when JetStream is
/// not enabled on the server or the request fails.
pub async fn ensure(bus: &Bus, config: &ResourceConfig) -> Result<Ensured> {
    let n = bus.names();
    let s = bus.subjects();
    let js = bus.jetstream();
    add_replay_subject(bus).await?;
    create_stream(
        js,
        stream::Config {
            name: n.events_stream.clone(),
            description: Some("Weft events".into()),
            subjects: vec![s.all_events(), s.all_replay()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: config.events_max_age,
            duplicate_window: config.duplicate_window,
            num_replicas: config.replicas,
            ..Default::default()
        },
    )
    .await?;
    create_stream(
        js,
        stream::Config {
            name: n.dlq_stream.clone(),
            description: Some("Weft dead letters".into()),
            subjects: vec![s.all_dlq()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: config.dlq_max_age,
            duplicate_window: config.duplicate_window,
            num_replicas: config.replicas,
            ..Default::default()
        },
    )
    .await?;
    create_bucket(
        js,
        kv::Config {
            bucket: n.registry_bucket.clone(),
            description: "Weft registry: services, agents, flows and gateways".into(),
            history: 1,
            max_age: config.registry_ttl,
            storage: stream::StorageType::Memory,
            num_replicas: config.replicas,
            ..Default::default()
        },
    )
    .await?;
    for (bucket, description) in [
        (&n.memory_bucket, "Weft agent memory by agent and session"),
        (&n.flows_bucket, "Weft flow runs and step checkpoints"),
    ] {
        create_bucket(js, bucket_config(bucket, description, config.replicas)).await?;
    }
    create_bucket(
        js,
        kv::Config {
            max_age: config.events_max_age,
            ..bucket_config(
                &n.failures_bucket,
                "Weft: when a message first failed, per durable consumer",
                config.replicas,
            )
        },
    )
    .await?;
    Ok(Ensured {
        streams: vec![n.events_stream.clone(), n.dlq_stream.clone()],
        buckets: vec![
            n.registry_bucket.clone(),
            n.memory_bucket.clone(),
            n.flows_bucket.clone(),
            n.failures_bucket.clone(),
        ],
    })
}

/// Upgrades an events stream made before replays existed: adds `P.replay.>` to its
/// subjects and changes nothing else (so [`ensure`] still compares the rest strictly).
async fn add_replay_subject(bus: &Bus) -> Result<()> {
    let (n, s) = (bus.names(), bus.subjects());
    let Ok(stream) = bus.jetstream().get_stream(&n.events_stream).await else {
        return Ok(());
    };
    let mut config = stream.cached_info().config.clone();
    if config.subjects.contains(&s.all_replay()) {
        return Ok(());
    }
    config.subjects.push(s.all_replay());
    bus.jetstream()
        .update_stream(config)
        .await
        .map_err(|e| classify(&format!("stream {}", n.events_stream), e))?;
    tracing::info!(stream = %n.events_stream, subject = %s.all_replay(), "added the replay subject to the events stream");
    Ok(())
}

/// The configuration of a plain application bucket (file storage, history 1, no TTL).
pub fn bucket_config(bucket: &str, description: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: bucket.to_owned(),
        description: description.to_owned(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

async fn create_stream(js: &jetstream::Context, config: stream::Config) -> Result<()> {
    let name = config.name.clone();
    js.create_stream(config)
        .await
        .map(drop)
        .map_err(|e| classify(&format!("stream {name}"), e))
}

/// Creates a KV bucket, or checks that it exists with the same configuration.
///
/// # Errors
/// As [`ensure`].
pub async fn create_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store> {
    let name = config.bucket.clone();
    js.create_key_value(config)
        .await
        .map_err(|e| classify(&format!("KV bucket {name}"), e))
}

fn classify(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    let text = e.to_string();
    if text.contains("already in use") || text.contains("10058") {
        Error::with_source(
            ErrorKind::Conflict,
            format!(
                "{what} exists with a different configuration; delete it or start with the same settings"
            ),
            e,
        )
    } else if text.contains("not enabled") || text.contains("no responders") {
        Error::with_source(
            ErrorKind::JetStream,
            format!("cannot create {what}: is JetStream enabled on the server (nats-server -js)?"),
            e,
        )
    } else {
        Error::with_source(ErrorKind::JetStream, format!("cannot create {what}"), e)
    }
}

/// Creates whichever of the mesh's resources are missing, with `config`, and leaves
/// existing ones as they are (except that an events stream made before replays
/// existed gains the `P.replay.>` subject). For components that need the resources but do not own
/// their settings (flow workers, services); `weft up` uses the strict [`ensure`].
///
/// # Errors
/// As [`ensure`], except that a differing configuration is not an error.
pub async fn ensure_exists(bus: &Bus, config: &ResourceConfig) -> Result<()> {
    let n = bus.names();
    let js = bus.jetstream();
    let streams_present =
        js.get_stream(&n.events_stream).await.is_ok() && js.get_stream(&n.dlq_stream).await.is_ok();
    let buckets_present = js.get_key_value(&n.registry_bucket).await.is_ok()
        && js.get_key_value(&n.memory_bucket).await.is_ok()
        && js.get_key_value(&n.flows_bucket).await.is_ok()
        && js.get_key_value(&n.failures_bucket).await.is_ok();
    if streams_present && buckets_present {
        return add_replay_subject(bus).await;
    }
    ensure(bus, config).await.map(drop)
}
