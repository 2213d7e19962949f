//! The mesh's JetStream resources (DESIGN §6): names derived from the prefix;
//! [`ensure`], which creates them or accepts what exists; [`update`], which changes
//! them in place; [`list`], which shows them.
//!
//! | resource | what |
//! |---|---|
//! | stream `<PREFIX>_EVENTS` | `P.events.>` and `P.replay.>` (replays to one consumer), file storage, limits retention, max age (default 7 days), duplicate window 2 min |
//! | stream `<PREFIX>_DLQ` | `P.dlq.>`, kept 30 days |
//! | KV `<prefix>_failures` | first failure of a message per durable consumer, for dead letters; max age = events max age |
//! | KV `<prefix>_registry` | registry entries, file storage, max age = registry TTL (default 15 s), expiry markers on (a watch sees an entry expire) |
//! | KV `<prefix>_memory` | agent memory by agent and session |
//! | KV `<prefix>_flows` | flow waits, concurrency slots and rate windows; runs of earlier releases (read once, migrated into the journal) |
//!
//! Every stream and bucket has [`ResourceConfig::replicas`] replicas: 1 on a single
//! server, 3 on a cluster, so losing one node loses nothing and stops nothing.
//!
//! # What exists already
//!
//! [`ensure`] never refuses a difference it can live with:
//!
//! | difference | what `ensure` does |
//! |---|---|
//! | replicas, when [`ResourceConfig::replicas`] is set | scales the resource in place |
//! | replicas, when it is not set | keeps them |
//! | a subject this version adds (`P.replay.>`), expiry markers on the registry | adds it in place |
//! | max age, history, duplicate window | keeps them, with a note naming `weft resources update` |
//! | the registry on memory storage (older versions) | re-creates it on file storage (its entries come back within one heartbeat) |
//! | other subjects (not this mesh's), another retention or storage | [`ErrorKind::Conflict`] naming the resource |

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::TryStreamExt;
use serde::Serialize;

use crate::connect::Bus;
use crate::error::{Error, ErrorKind, Result};

/// Stream and bucket names of one mesh (defined with the subjects, as the other names
/// the prefix makes).
pub use crate::subject::Names;

/// Settings of the mesh's resources. Every field states its default.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceConfig {
    /// How long events are kept. Default 7 days.
    pub events_max_age: Duration,
    /// How long dead letters are kept. Default 30 days.
    pub dlq_max_age: Duration,
    /// JetStream de-duplication window on `Nats-Msg-Id`. Default 2 min.
    pub duplicate_window: Duration,
    /// Replicas of every stream and bucket (1 to 5; 3 on a cluster). `Some(n)`:
    /// resources are created with `n` and existing ones are scaled to `n` in place.
    /// Default `None`: new resources get 1, existing ones keep theirs.
    pub replicas: Option<usize>,
    /// Time to live of a registry entry: an instance that stops heartbeating is gone
    /// after this long. Instances heartbeat every quarter of it, so it must outlast a
    /// heartbeat plus a leader election on a cluster (up to 9 s). Default 15 s.
    pub registry_ttl: Duration,
    /// How long A2A tasks are kept in `<prefix>_tasks` after their last update.
    /// Default 7 days.
    pub tasks_max_age: Duration,
    /// How long the journal of durable runs (`<PREFIX>_RUNS`) keeps entries. Default
    /// 30 days.
    pub runs_max_age: Duration,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            replicas: None,
            registry_ttl: Duration::from_secs(15),
            tasks_max_age: Duration::from_secs(7 * 24 * 3600),
            runs_max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl ResourceConfig {
    fn create_replicas(&self) -> usize {
        self.replicas.unwrap_or(1)
    }
}

/// What [`ensure`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// Streams, by name.
    pub streams: Vec<String>,
    /// KV buckets, by name.
    pub buckets: Vec<String>,
    /// What it did or left alone, one line each (created, scaled, upgraded, kept with
    /// another max age…), for a person to read. Also logged.
    pub notes: Vec<String>,
}

/// What one resource should look like, for comparing with what exists.
struct Wanted {
    /// `stream WEFT_EVENTS` or `KV bucket weft_registry`, for messages.
    what: String,
    /// The JetStream stream name.
    stream: String,
    /// Subjects: the first one says whose the stream is; the others are added when
    /// missing.
    subjects: Vec<String>,
    retention: stream::RetentionPolicy,
    storage: stream::StorageType,
    max_age: Duration,
    /// Messages kept per subject (a bucket's history); `None` for streams.
    history: Option<i64>,
    /// Duplicate window; `None` for buckets.
    duplicate_window: Option<Duration>,
    /// Expiry markers (subject delete marker TTL); `None` when not wanted.
    markers: Option<Duration>,
    /// May be deleted and made again when its storage differs (soft state).
    recreatable: bool,
    create: Create,
}

enum Create {
    Stream(Box<stream::Config>),
    Bucket(Box<kv::Config>),
}

/// Creates the mesh's streams and buckets, or accepts and upgrades those that exist
/// (see the module docs for what differences are accepted).
///
/// # Errors
/// [`ErrorKind::Conflict`] naming the resource when it exists with a conflicting
/// configuration (other subjects, retention or storage); [`ErrorKind::JetStream`] when
/// JetStream is not enabled on the server, a request fails, or the server refuses
/// the replicas (e.g. more than the cluster has nodes).
pub async fn ensure(bus: &Bus, config: &ResourceConfig) -> Result<Ensured> {
    let n = bus.names();
    let s = bus.subjects();
    let replicas = config.create_replicas();
    let stream = |name: &str, description: &str, subjects: Vec<String>, max_age| {
        let config = stream::Config {
            name: name.to_owned(),
            description: Some(description.into()),
            subjects: subjects.clone(),
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age,
            duplicate_window: config.duplicate_window,
            num_replicas: replicas,
            ..Default::default()
        };
        Wanted {
            what: format!("stream {name}"),
            stream: name.to_owned(),
            subjects,
            retention: config.retention,
            storage: config.storage,
            max_age,
            history: None,
            duplicate_window: Some(config.duplicate_window),
            markers: None,
            recreatable: false,
            create: Create::Stream(Box::new(config)),
        }
    };
    let wanted = vec![
        stream(
            &n.events_stream,
            "Weft events",
            vec![s.all_events(), s.all_replay()],
            config.events_max_age,
        ),
        stream(
            &n.dlq_stream,
            "Weft dead letters",
            vec![s.all_dlq()],
            config.dlq_max_age,
        ),
        runs_stream(&n.runs_stream, s.all_runs(), config, replicas),
        runs_stream(&n.runq_stream, s.all_runq(), config, replicas),
        bucket_wanted(
            kv::Config {
                bucket: n.registry_bucket.clone(),
                description: "Weft registry: services, agents, flows and gateways".into(),
                history: 1,
                max_age: config.registry_ttl,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                limit_markers: Some(config.registry_ttl),
                ..Default::default()
            },
            true,
        ),
        bucket_wanted(
            bucket_config(
                &n.memory_bucket,
                "Weft agent memory by agent and session",
                replicas,
            ),
            false,
        ),
        bucket_wanted(
            bucket_config(
                &n.flows_bucket,
                "Weft flows: waits, slots, rate windows (runs are in the journal)",
                replicas,
            ),
            false,
        ),
        bucket_wanted(
            kv::Config {
                max_age: config.events_max_age,
                ..bucket_config(
                    &n.failures_bucket,
                    "Weft: when a message first failed, per durable consumer",
                    replicas,
                )
            },
            false,
        ),
        bucket_wanted(
            kv::Config {
                max_age: config.tasks_max_age,
                // Purge markers expire (the gateway's index of running tasks).
                limit_markers: Some(Duration::from_secs(60)),
                ..bucket_config(&n.tasks_bucket, "Weft A2A tasks by task id", replicas)
            },
            false,
        ),
        bucket_wanted(
            bucket_config(
                &n.a2a_agents_bucket,
                "Weft remote A2A agents by name",
                replicas,
            ),
            false,
        ),
    ];
    let mut notes = Vec::new();
    for w in &wanted {
        notes.extend(ensure_one(bus.jetstream(), w, config.replicas).await?);
    }
    for note in &notes {
        tracing::info!("{note}");
    }
    Ok(Ensured {
        streams: vec![
            n.events_stream.clone(),
            n.dlq_stream.clone(),
            n.runs_stream.clone(),
            n.runq_stream.clone(),
        ],
        buckets: vec![
            n.registry_bucket.clone(),
            n.memory_bucket.clone(),
            n.flows_bucket.clone(),
            n.failures_bucket.clone(),
            n.tasks_bucket.clone(),
            n.a2a_agents_bucket.clone(),
        ],
        notes,
    })
}

/// A stream of durable runs, kept as long as the runs (`runs_max_age`): the journal
/// (limits retention, direct gets: a run's entries are read by subject), or the run
/// queue (a work queue: a wake is gone once a worker acked it; it holds message
/// schedules, durable timers and cron ticks, nats-server 2.12 and later for `@at`,
/// 2.14 for cron).
fn runs_stream(name: &str, subjects: String, config: &ResourceConfig, replicas: usize) -> Wanted {
    let queue = subjects.contains(".runq.");
    let stream = stream::Config {
        name: name.to_owned(),
        description: Some(if queue {
            "Weft run queue: wakes and timers of durable runs".into()
        } else {
            "Weft journal of durable runs".into()
        }),
        subjects: vec![subjects.clone()],
        retention: if queue {
            stream::RetentionPolicy::WorkQueue
        } else {
            stream::RetentionPolicy::Limits
        },
        storage: stream::StorageType::File,
        max_age: config.runs_max_age,
        duplicate_window: config.duplicate_window,
        num_replicas: replicas,
        allow_direct: !queue,
        allow_message_schedules: queue,
        ..Default::default()
    };
    Wanted {
        what: format!("stream {name}"),
        stream: name.to_owned(),
        subjects: vec![subjects],
        retention: stream.retention,
        storage: stream.storage,
        max_age: config.runs_max_age,
        history: None,
        duplicate_window: Some(config.duplicate_window),
        markers: None,
        recreatable: false,
        create: Create::Stream(Box::new(stream)),
    }
}

fn bucket_wanted(config: kv::Config, recreatable: bool) -> Wanted {
    Wanted {
        what: format!("KV bucket {}", config.bucket),
        stream: format!("KV_{}", config.bucket),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        retention: stream::RetentionPolicy::Limits,
        storage: config.storage,
        max_age: config.max_age,
        history: Some(config.history),
        duplicate_window: None,
        markers: config.limit_markers,
        recreatable,
        create: Create::Bucket(Box::new(config)),
    }
}

/// Creates `w`, or compares it with what exists and upgrades or accepts that. Returns
/// notes for a person.
async fn ensure_one(
    js: &jetstream::Context,
    w: &Wanted,
    replicas: Option<usize>,
) -> Result<Vec<String>> {
    let existing = match js.get_stream(&w.stream).await {
        Ok(s) => s.cached_info().config.clone(),
        Err(e) if is_not_found(&e) => {
            create(js, w).await?;
            return Ok(vec![format!("created {}", w.what)]);
        }
        Err(e) => return Err(classify(&w.what, e)),
    };
    let mut notes = Vec::new();
    if !existing.subjects.contains(&w.subjects[0]) {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} exists with other subjects ({}) than this mesh's {}; it belongs to something else: delete it or use another --prefix",
                w.what,
                existing.subjects.join(", "),
                w.subjects[0]
            ),
        ));
    }
    if existing.retention != w.retention {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} exists with {:?} retention, not {:?}; delete it or use another --prefix",
                w.what, existing.retention, w.retention
            ),
        ));
    }
    if existing.storage != w.storage {
        if !w.recreatable {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{} exists on {:?} storage, not {:?}; JetStream cannot change that in place",
                    w.what, existing.storage, w.storage
                ),
            ));
        }
        js.delete_stream(&w.stream)
            .await
            .map_err(|e| classify(&w.what, e))?;
        create(js, w).await?;
        return Ok(vec![format!(
            "re-created {} on {:?} storage (was {:?}; live instances write their entries again within a heartbeat)",
            w.what, w.storage, existing.storage
        )]);
    }
    let mut updated = existing.clone();
    for subject in &w.subjects[1..] {
        if !updated.subjects.contains(subject) {
            updated.subjects.push(subject.clone());
            notes.push(format!("added subject {subject} to {}", w.what));
        }
    }
    if let Some(n) = replicas
        && existing.num_replicas != n
    {
        updated.num_replicas = n;
        notes.push(format!(
            "scaled {} from {} to {n} replicas",
            w.what, existing.num_replicas
        ));
    }
    if let Some(ttl) = w.markers
        && existing.subject_delete_marker_ttl.is_none()
    {
        updated.allow_message_ttl = true;
        updated.subject_delete_marker_ttl = Some(ttl);
        notes.push(format!("turned on expiry markers on {}", w.what));
    }
    if updated != existing {
        js.update_stream(updated).await.map_err(|e| {
            Error::with_source(
                ErrorKind::JetStream,
                format!("cannot update {} ({})", w.what, notes.join("; ")),
                e,
            )
        })?;
    }
    let keep = |what: &str, has: String, asked: String| {
        format!(
            "{} keeps its {what} {has} (this start asked for {asked}); `weft resources update` changes it",
            w.what
        )
    };
    if existing.max_age != w.max_age {
        notes.push(keep("max age", human(existing.max_age), human(w.max_age)));
    }
    if let Some(h) = w.history
        && existing.max_messages_per_subject != h
    {
        notes.push(keep(
            "history",
            existing.max_messages_per_subject.to_string(),
            h.to_string(),
        ));
    }
    if let Some(d) = w.duplicate_window
        && existing.duplicate_window != d
    {
        notes.push(keep(
            "duplicate window",
            human(existing.duplicate_window),
            human(d),
        ));
    }
    Ok(notes)
}

/// Whether a stream lookup failed because the stream does not exist (JetStream error
/// 10059), as opposed to a failed request.
fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

fn human(d: Duration) -> String {
    if d.is_zero() {
        "unlimited".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

async fn create(js: &jetstream::Context, w: &Wanted) -> Result<()> {
    match &w.create {
        Create::Stream(config) => js
            .create_stream((**config).clone())
            .await
            .map(drop)
            .map_err(|e| classify(&w.what, e)),
        Create::Bucket(config) => js
            .create_key_value((**config).clone())
            .await
            .map(drop)
            .map_err(|e| classify(&w.what, e)),
    }
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

/// Creates a KV bucket, or opens it when it exists, accepting the differences
/// [`ensure`] accepts (its replicas and max age are left as they are).
///
/// # Errors
/// As [`ensure`].
pub async fn create_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store> {
    let name = config.bucket.clone();
    for note in ensure_one(js, &bucket_wanted(config, false), None).await? {
        tracing::info!("{note}");
    }
    js.get_key_value(&name)
        .await
        .map_err(|e| classify(&format!("KV bucket {name}"), e))
}

/// The replicas of the mesh's events stream (1 when it does not exist): what an
/// application bucket of the mesh should have too.
///
/// # Errors
/// [`ErrorKind::JetStream`] when the stream cannot be read.
pub async fn mesh_replicas(bus: &Bus) -> Result<usize> {
    match bus.jetstream().get_stream(&bus.names().events_stream).await {
        Ok(s) => Ok(s.cached_info().config.num_replicas.max(1)),
        Err(e) if is_not_found(&e) => Ok(1),
        Err(e) => Err(classify(
            &format!("stream {}", bus.names().events_stream),
            e,
        )),
    }
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
    } else if text.contains("replicas") {
        Error::with_source(
            ErrorKind::JetStream,
            format!(
                "cannot create {what} with these replicas: a single server takes 1, a cluster at most its number of nodes"
            ),
            e,
        )
    } else {
        Error::with_source(ErrorKind::JetStream, format!("cannot create {what}"), e)
    }
}

/// Changes to apply to the mesh's existing resources with [`update`]. `None` leaves a
/// setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceUpdate {
    /// Replicas of every stream and bucket of the mesh, application buckets
    /// (`<prefix>_…`) included.
    pub replicas: Option<usize>,
    /// Max age of the events stream (and of the failures bucket, which follows it).
    pub events_max_age: Option<Duration>,
    /// Max age of the DLQ stream.
    pub dlq_max_age: Option<Duration>,
    /// Registry TTL (the registry bucket's max age and expiry marker TTL).
    pub registry_ttl: Option<Duration>,
}

/// Applies `changes` in place to the mesh's streams and buckets that exist; returns
/// one note per change made. Nothing is re-created, nothing stored is lost.
///
/// # Errors
/// [`ErrorKind::JetStream`] naming the resource when the server refuses a change
/// (e.g. more replicas than nodes); changes made before it stay made.
pub async fn update(bus: &Bus, changes: &ResourceUpdate) -> Result<Vec<String>> {
    let n = bus.names();
    let js = bus.jetstream();
    let mut notes = Vec::new();
    for info in list(bus).await? {
        let stream = js
            .get_stream(&info.stream)
            .await
            .map_err(|e| classify(&info.stream, e))?;
        let existing = stream.cached_info().config.clone();
        let mut updated = existing.clone();
        let mut these = Vec::new();
        if let Some(r) = changes.replicas
            && existing.num_replicas != r
        {
            updated.num_replicas = r;
            these.push(format!("replicas {} → {r}", existing.num_replicas));
        }
        let max_age = if info.stream == n.events_stream
            || info.stream == format!("KV_{}", n.failures_bucket)
        {
            changes.events_max_age
        } else if info.stream == n.dlq_stream {
            changes.dlq_max_age
        } else if info.stream == format!("KV_{}", n.registry_bucket) {
            changes.registry_ttl
        } else {
            None
        };
        if let Some(age) = max_age
            && existing.max_age != age
        {
            updated.max_age = age;
            these.push(format!(
                "max age {} → {}",
                human(existing.max_age),
                human(age)
            ));
            if existing.subject_delete_marker_ttl.is_some() {
                updated.subject_delete_marker_ttl = Some(age);
            }
        }
        if updated != existing {
            js.update_stream(updated).await.map_err(|e| {
                Error::with_source(
                    ErrorKind::JetStream,
                    format!("cannot update {} ({})", info.name(), these.join(", ")),
                    e,
                )
            })?;
            notes.push(format!("{}: {}", info.name(), these.join(", ")));
        }
    }
    Ok(notes)
}

/// One stream or bucket of the mesh as [`list`] shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceInfo {
    /// `stream` or `kv`.
    pub kind: &'static str,
    /// The JetStream stream (`KV_<bucket>` for a bucket).
    pub stream: String,
    /// The bucket name, for a bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Subjects it stores.
    pub subjects: Vec<String>,
    /// `file` or `memory`.
    pub storage: String,
    /// Configured replicas.
    pub replicas: usize,
    /// Max age in ms (0: unlimited).
    pub max_age_ms: u64,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Consumers on it.
    pub consumers: usize,
    /// The server that leads it (clustered streams only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Its other replicas: server name, whether it is current, and how many
    /// operations it lags.
    pub peers: Vec<PeerInfo>,
}

impl ResourceInfo {
    /// The bucket name for a bucket, else the stream name.
    pub fn name(&self) -> &str {
        self.bucket.as_deref().unwrap_or(&self.stream)
    }
}

/// A replica of a clustered stream, as [`ResourceInfo::peers`] lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerInfo {
    /// Server name.
    pub name: String,
    /// Whether it has caught up with the leader.
    pub current: bool,
    /// Operations it is behind.
    pub lag: u64,
    /// Whether the leader lost contact with it.
    pub offline: bool,
}

/// The mesh's streams and buckets (events, DLQ, and every `KV_<prefix>_…` bucket,
/// application buckets included), sorted by stream name. One stream-list request.
///
/// # Errors
/// [`ErrorKind::JetStream`] when the streams cannot be listed.
pub async fn list(bus: &Bus) -> Result<Vec<ResourceInfo>> {
    let n = bus.names();
    let infos: Vec<stream::Info> = bus
        .jetstream()
        .streams()
        .try_collect()
        .await
        .map_err(|e| Error::with_source(ErrorKind::JetStream, "cannot list streams", e))?;
    let mut out: Vec<ResourceInfo> = infos
        .into_iter()
        .filter(|i| n.is_mesh_stream(&i.config.name))
        .map(|i| {
            let bucket = i.config.name.strip_prefix("KV_").map(str::to_owned);
            let cluster = i.cluster.as_ref();
            ResourceInfo {
                kind: if bucket.is_some() { "kv" } else { "stream" },
                stream: i.config.name.clone(),
                bucket,
                subjects: i.config.subjects.clone(),
                storage: match i.config.storage {
                    stream::StorageType::File => "file".into(),
                    stream::StorageType::Memory => "memory".into(),
                },
                replicas: i.config.num_replicas,
                max_age_ms: i.config.max_age.as_millis() as u64,
                messages: i.state.messages,
                bytes: i.state.bytes,
                consumers: i.state.consumer_count,
                leader: cluster.and_then(|c| c.leader.clone()),
                peers: cluster
                    .map(|c| {
                        c.replicas
                            .iter()
                            .map(|p| PeerInfo {
                                name: p.name.clone(),
                                current: p.current,
                                lag: p.lag.unwrap_or(0),
                                offline: p.offline,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.stream.cmp(&b.stream));
    Ok(out)
}
