//! The registry (DESIGN §5): KV bucket `<prefix>_registry`, key
//! `<kind>.<name>.<instance>`, value a JSON [`Registration`].
//!
//! Each instance refreshes its entry on a heartbeat (every quarter of the bucket's max
//! age, [`HEARTBEATS_PER_TTL`]; a failed heartbeat is tried again after
//! [`HEARTBEAT_RETRY`]); an entry expires when its instance dies (the bucket's max age
//! is the TTL) and is deleted when it stops cleanly. The TTL must outlast a heartbeat
//! interval plus a leader election of the bucket on a cluster (up to 9 s): the default
//! 15 s does.
//!
//! # Reading it
//!
//! - [`RegistryWatch`]: a live view kept current by one KV watch, for long-running
//!   processes (agents' tool discovery, gateways, bridges). A process shares one:
//!   [`Bus::registry_watch`]. Reads are in memory and create nothing on the server.
//! - [`Registry::list`] and friends: one-shot reads (`weft ls`), one stream-info
//!   request plus a direct get per entry, no consumer ([`kv::read_all`]).
//!
//! # Around it
//!
//! - [`kv`]: the KV helpers the registry (and agents, flows, the gateway) read and
//!   update buckets with.
//! - [`tool`]: registered endpoints as tools for agents and MCP hosts.

pub mod kv;
pub mod tool;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::connect::Bus;
use crate::error::{Error, ErrorKind, Result};
use crate::observe::metrics;

/// Heartbeats per registry TTL: an instance rewrites its entry every quarter of the
/// TTL, so with the default 15 s an entry survives one failed heartbeat plus a leader
/// election of the bucket (up to 9 s after a node is killed).
pub const HEARTBEATS_PER_TTL: u32 = 4;

/// How soon a failed heartbeat is tried again: 500 ms.
pub const HEARTBEAT_RETRY: Duration = Duration::from_millis(500);

/// What a registry entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A service with endpoints.
    Service,
    /// An agent (a service whose default endpoint is `chat`).
    Agent,
    /// A flow worker.
    Flow,
    /// A gateway.
    Gateway,
}

impl Kind {
    /// The key token: `service`, `agent`, `flow` or `gateway`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Agent => "agent",
            Kind::Flow => "flow",
            Kind::Gateway => "gateway",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint of a registered service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Endpoint name (one token).
    pub name: String,
    /// The subject it is served on, `P.invoke.<service>.<endpoint>`.
    pub subject: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// JSON Schema of its input payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// JSON Schema of its output payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// True for the endpoint also served on `P.invoke.<service>`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// True when the endpoint answers a streaming caller with `delta` frames
    /// ([`Endpoint::streaming`](crate::service::Endpoint::streaming)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
    /// Free-form endpoint metadata. The MCP hints `readOnlyHint`, `destructiveHint`,
    /// `idempotentHint` and `openWorldHint` (booleans) and `title` (a string) become
    /// the tool's annotations ([`crate::registry::tool`]).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// A registry entry's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// What it is.
    pub kind: Kind,
    /// Its name (one token).
    pub name: String,
    /// Semver version.
    pub version: String,
    /// This instance's id (one token).
    pub instance: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Endpoints with their schemas (services and agents).
    #[serde(default)]
    pub endpoints: Vec<EndpointInfo>,
    /// Anything else: an agent's managed services, a flow's trigger, a gateway's address…
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// RFC 3339 time the instance started.
    pub started_at: String,
}

impl Registration {
    /// A registration of a new instance (fresh instance id, started now).
    pub fn new(kind: Kind, name: impl Into<String>, version: impl Into<String>) -> Self {
        Registration {
            kind,
            name: name.into(),
            version: version.into(),
            instance: new_instance_id(),
            description: String::new(),
            endpoints: Vec::new(),
            metadata: Map::new(),
            started_at: crate::envelope::now_rfc3339(),
        }
    }

    /// The KV key `<kind>.<name>.<instance>`.
    pub fn key(&self) -> String {
        format!("{}.{}.{}", self.kind, self.name, self.instance)
    }
}

/// The most recently started instance of each (kind, name) among `registrations`,
/// sorted by (kind, name).
pub fn newest_each(registrations: impl IntoIterator<Item = Registration>) -> Vec<Registration> {
    let mut newest: BTreeMap<(Kind, String), Registration> = BTreeMap::new();
    for r in registrations {
        match newest.get(&(r.kind, r.name.clone())) {
            Some(seen) if seen.started_at >= r.started_at => {}
            _ => {
                newest.insert((r.kind, r.name.clone()), r);
            }
        }
    }
    newest.into_values().collect()
}

/// A fresh instance id: 32 hex digits.
pub fn new_instance_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Instances of one (kind, name), as `weft ls` shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listing {
    /// What it is.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Number of live instances.
    pub instances: usize,
    /// Versions the instances run, sorted.
    pub versions: Vec<String>,
    /// Description (from one instance).
    pub description: String,
    /// Endpoint names (from one instance).
    pub endpoints: Vec<String>,
    /// Free-form metadata (from one instance), e.g. an agent's `model`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// Groups registrations by (kind, name), sorted so.
fn group(registrations: Vec<Registration>) -> Vec<Listing> {
    let mut groups: BTreeMap<(Kind, String), Listing> = BTreeMap::new();
    for r in registrations {
        let l = groups
            .entry((r.kind, r.name.clone()))
            .or_insert_with(|| Listing {
                kind: r.kind,
                name: r.name.clone(),
                instances: 0,
                versions: Vec::new(),
                description: r.description.clone(),
                endpoints: r.endpoints.iter().map(|e| e.name.clone()).collect(),
                metadata: r.metadata.clone(),
            });
        l.instances += 1;
        if !l.versions.contains(&r.version) {
            l.versions.push(r.version.clone());
            l.versions.sort();
        }
    }
    groups.into_values().collect()
}

/// The registry bucket of one mesh.
#[derive(Clone)]
pub struct Registry {
    store: jetstream::kv::Store,
}

impl Registry {
    /// Opens the mesh's registry bucket.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when it does not exist (`weft up` creates it).
    pub async fn open(bus: &Bus) -> Result<Registry> {
        Ok(Registry {
            store: bus.kv(&bus.names().registry_bucket).await?,
        })
    }

    /// Every live registration.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket cannot be read.
    pub async fn list(&self) -> Result<Vec<Registration>> {
        let mut out: Vec<Registration> = kv::read_all(&self.store, "")
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        out.sort_by(|a, b| (a.kind, &a.name, &a.instance).cmp(&(b.kind, &b.name, &b.instance)));
        Ok(out)
    }

    /// Live registrations of one kind, optionally of one name.
    ///
    /// # Errors
    /// As [`Registry::list`].
    pub async fn list_kind(&self, kind: Kind, name: Option<&str>) -> Result<Vec<Registration>> {
        // Keys are `<kind>.<name>.<instance>`: read only the matching ones.
        let prefix = match name {
            Some(n) => format!("{kind}.{n}."),
            None => format!("{kind}."),
        };
        Ok(kv::read_all(&self.store, &prefix)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r: &Registration| r.kind == kind && name.is_none_or(|n| r.name == n))
            .collect())
    }

    /// Registrations grouped by (kind, name) with instance counts.
    ///
    /// # Errors
    /// As [`Registry::list`].
    pub async fn listing(&self) -> Result<Vec<Listing>> {
        Ok(group(self.list().await?))
    }

    /// Registrations of one kind grouped by name with instance counts, by name.
    ///
    /// # Errors
    /// As [`Registry::list`].
    pub async fn listing_kind(&self, kind: Kind) -> Result<Vec<Listing>> {
        Ok(group(self.list_kind(kind, None).await?))
    }

    /// Writes `registration` now and keeps it alive on a heartbeat until the returned
    /// [`Registered`] is deregistered (entry deleted) or dropped (entry left to expire).
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the first write fails.
    pub async fn register(&self, registration: Registration) -> Result<Registered> {
        let key = registration.key();
        let value: bytes::Bytes = serde_json::to_vec(&registration)
            .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?
            .into();
        self.store.put(&key, value.clone()).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Kv,
                format!("cannot write registry entry {key}"),
                e,
            )
        })?;
        let ttl = self
            .store
            .status()
            .await
            .map(|s| s.max_age())
            .unwrap_or_default();
        let every = if ttl.is_zero() {
            Duration::from_secs(5)
        } else {
            ttl / HEARTBEATS_PER_TTL
        };
        let cancel = CancellationToken::new();
        let (store, k, c) = (self.store.clone(), key.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let mut wait = every;
            loop {
                tokio::select! {
                    _ = c.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = match store.put(&k, value.clone()).await {
                    Ok(_) => every,
                    Err(e) => {
                        // E.g. the bucket electing a leader: try again soon, so the
                        // entry is rewritten as soon as it can be, well within its TTL.
                        tracing::warn!(key = %k, error = %e, "registry heartbeat failed; trying again");
                        HEARTBEAT_RETRY.min(every)
                    }
                };
            }
        });
        metrics::bus()
            .registered
            .with_label_values(&[registration.kind.as_str()])
            .inc();
        Ok(Registered {
            key,
            kind: registration.kind,
            store: self.store.clone(),
            cancel,
            task: Some(task),
        })
    }
}

/// A live registry entry. [`Registered::deregister`] deletes it; dropping it only
/// stops the heartbeat, so the entry expires after the TTL.
pub struct Registered {
    key: String,
    kind: Kind,
    store: jetstream::kv::Store,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Registered {
    /// The entry's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Stops the heartbeat and deletes the entry.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the delete fails (the entry then expires after the TTL).
    pub async fn deregister(mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        metrics::bus()
            .registered
            .with_label_values(&[self.kind.as_str()])
            .dec();
        self.store.delete(&self.key).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Kv,
                format!("cannot delete registry entry {}", self.key),
                e,
            )
        })
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One registry entry as a [`RegistryWatch`] holds it.
#[derive(Debug, Clone)]
struct Seen {
    registration: Registration,
    /// When the watch last saw the entry written (by its instance's heartbeat).
    at: Instant,
}

struct WatchState {
    entries: RwLock<BTreeMap<String, Seen>>,
    /// Bumped on every change of the set of live registrations.
    generation: tokio::sync::watch::Sender<u64>,
    /// An entry the watch has not seen written for this long is treated as expired,
    /// even if no expiry marker came (a bucket made by an older Weft, or a marker lost
    /// while the watch restarted): twice the registry TTL.
    stale_after: Duration,
    /// The bucket stream's sequence of the last change applied: a broken watch starts
    /// again after it.
    last_revision: std::sync::atomic::AtomicU64,
    /// When the bucket's stream was created: another time means it was deleted and
    /// made again, and sequences started over.
    created: std::sync::Mutex<Option<time::OffsetDateTime>>,
}

impl WatchState {
    fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Applies one put; true when it changed what the view shows.
    fn put(&self, key: String, registration: Registration) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let at = Instant::now();
        match entries.get_mut(&key) {
            Some(seen) if seen.registration == registration => {
                seen.at = at;
                false
            }
            _ => {
                entries.insert(key, Seen { registration, at });
                true
            }
        }
    }

    fn remove(&self, key: &str) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(key).is_some()
    }

    /// Drops entries not written for `stale_after`; true when any went.
    fn prune(&self) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let before = entries.len();
        entries.retain(|_, s| s.at.elapsed() < self.stale_after);
        entries.len() != before
    }

    /// Replaces the whole view with a fresh listing (after a (re)start of the watch).
    fn reset(&self, fresh: Vec<(String, Registration)>) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let keys: HashSet<&String> = fresh.iter().map(|(k, _)| k).collect();
        let mut changed = entries.keys().any(|k| !keys.contains(k));
        entries.retain(|k, _| keys.contains(k));
        let at = Instant::now();
        for (key, registration) in fresh {
            match entries.get_mut(&key) {
                Some(seen) if seen.registration == registration => seen.at = at,
                _ => {
                    entries.insert(key, Seen { registration, at });
                    changed = true;
                }
            }
        }
        changed
    }
}

/// A live view of the registry, kept current by one KV watch on the registry bucket.
///
/// Start one per process and share it ([`Bus::registry_watch`] does): every read
/// ([`RegistryWatch::list`], [`RegistryWatch::list_kind`], [`RegistryWatch::listing`]…)
/// is answered from memory, so reading the registry on every agent chat or MCP
/// `tools/list` costs nothing on the server. The watch holds one ordered consumer on
/// the bucket's stream for as long as it runs.
///
/// Changes arrive as they are written: a registration when its instance starts, a
/// delete when it stops cleanly, an expiry marker when its TTL passes (buckets made by
/// [`crate::durable::resources::ensure`] have limit markers on). An entry whose instance has not
/// written it for twice the TTL is dropped as well, marker or not.
///
/// When the watch breaks (its node restarts, the bucket is re-created), it starts
/// again with back-off (100 ms doubling to 5 s) right after the last change it
/// applied (from a fresh listing when the bucket was re-created), and the view keeps
/// its last known entries meanwhile, so a registry hiccup does not look like an empty
/// mesh.
///
/// Cheap to clone; the watch stops when the last clone is dropped.
///
/// # Examples
/// ```no_run
/// use weft_bus::registry::Kind;
/// # async fn run(bus: weft_bus::Bus) -> Result<(), weft_bus::Error> {
/// let registry = bus.registry_watch().await?;
/// for r in registry.list_kind(Kind::Service, None) {
///     println!("{} {} ({})", r.name, r.version, r.instance);
/// }
/// let mut changes = registry.changes();
/// changes.changed().await.ok(); // a service registered, stopped or expired
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RegistryWatch {
    state: Arc<WatchState>,
    cancel: CancellationToken,
    _stop: Arc<DropGuard>,
}

impl std::fmt::Debug for RegistryWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryWatch")
            .field("entries", &self.len())
            .field("generation", &*self.state.generation.borrow())
            .finish()
    }
}

impl RegistryWatch {
    /// Lists the registry bucket of `bus`'s mesh and starts watching it; returns once
    /// the view holds every live entry.
    ///
    /// Prefer [`Bus::registry_watch`], which shares one watch per connection.
    ///
    /// # Errors
    /// [`ErrorKind::Kv`] when the bucket does not exist or cannot be read or watched.
    pub async fn start(bus: &Bus) -> Result<RegistryWatch> {
        let store = bus.kv(&bus.names().registry_bucket).await?;
        let ttl = store
            .status()
            .await
            .map(|s| s.max_age())
            .unwrap_or_default();
        let ttl = if ttl.is_zero() {
            Duration::from_secs(15)
        } else {
            ttl
        };
        let (generation, _) = tokio::sync::watch::channel(0);
        let state = Arc::new(WatchState {
            entries: RwLock::new(BTreeMap::new()),
            generation,
            stale_after: ttl * 2,
            last_revision: Default::default(),
            created: Default::default(),
        });
        let from = resume_from(&store, &state).await?;
        let watch = watch_from(&store, from).await?;
        let cancel = CancellationToken::new();
        tokio::spawn(follow(
            bus.jetstream().clone(),
            store,
            watch,
            state.clone(),
            cancel.clone(),
        ));
        Ok(RegistryWatch {
            state,
            cancel: cancel.clone(),
            _stop: Arc::new(cancel.drop_guard()),
        })
    }

    /// Stops following the registry, for every clone; the view keeps its last entries.
    /// [`Bus::drain`] calls it first, so a connection that drains does not report its
    /// watch as broken and try to start it again.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Number of live registrations.
    pub fn len(&self) -> usize {
        self.live().len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn live(&self) -> Vec<Registration> {
        let entries = self.state.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .values()
            .filter(|s| s.at.elapsed() < self.state.stale_after)
            .map(|s| s.registration.clone())
            .collect()
    }

    /// Every live registration, sorted by (kind, name, instance).
    pub fn list(&self) -> Vec<Registration> {
        let mut out = self.live();
        out.sort_by(|a, b| (a.kind, &a.name, &a.instance).cmp(&(b.kind, &b.name, &b.instance)));
        out
    }

    /// Live registrations of one kind, optionally of one name, sorted by (name,
    /// instance).
    pub fn list_kind(&self, kind: Kind, name: Option<&str>) -> Vec<Registration> {
        let mut out = self.list();
        out.retain(|r| r.kind == kind && name.is_none_or(|n| r.name == n));
        out
    }

    /// The most recently started live instance of (kind, name).
    pub fn newest(&self, kind: Kind, name: &str) -> Option<Registration> {
        self.list_kind(kind, Some(name))
            .into_iter()
            .max_by(|a, b| a.started_at.cmp(&b.started_at))
    }

    /// The most recently started live instance of every name of `kind`, sorted by
    /// name: what [`crate::registry::tool::ToolSet`] reads for the mesh's tools.
    pub fn newest_each(&self, kind: Kind) -> Vec<Registration> {
        newest_each(self.list_kind(kind, None))
    }

    /// Registrations grouped by (kind, name) with instance counts.
    pub fn listing(&self) -> Vec<Listing> {
        group(self.list())
    }

    /// Registrations of one kind grouped by name with instance counts.
    pub fn listing_kind(&self, kind: Kind) -> Vec<Listing> {
        group(self.list_kind(kind, None))
    }

    /// A receiver whose value (a generation counter) changes whenever a registration
    /// appears, changes, is deleted or expires. Heartbeats that rewrite the same value
    /// do not count.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.generation.subscribe()
    }
}

/// Lists the bucket into `state` and returns the revision to watch from.
async fn load(store: &jetstream::kv::Store, state: &WatchState) -> Result<u64> {
    let snapshot = kv::snapshot::<Registration>(store, "").await?;
    if state.reset(snapshot.entries) {
        state.changed();
    }
    state
        .last_revision
        .store(snapshot.last_sequence, std::sync::atomic::Ordering::Relaxed);
    Ok(snapshot.last_sequence + 1)
}

/// Where a watch starts: the first time, and when the bucket was re-created, after a
/// fresh listing; when it broke, right after the last change it applied, so it
/// replays what it missed (puts, deletes, expiry markers) in order without listing
/// the bucket again (a listing's direct gets may be answered by a replica still
/// catching up after a restart).
async fn resume_from(store: &jetstream::kv::Store, state: &WatchState) -> Result<u64> {
    let created = stream_created(store).await?;
    let known = state
        .created
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(created);
    if known != Some(created) {
        return load(store, state).await;
    }
    Ok(state
        .last_revision
        .load(std::sync::atomic::Ordering::Relaxed)
        + 1)
}

/// When `store`'s stream was created, asked of the server (`Store::status` answers
/// from the handle's cache).
async fn stream_created(store: &jetstream::kv::Store) -> Result<time::OffsetDateTime> {
    store
        .stream
        .get_info()
        .await
        .map(|i| i.created)
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Kv,
                format!("cannot read KV bucket {}", store.name),
                e,
            )
        })
}

async fn watch_from(store: &jetstream::kv::Store, revision: u64) -> Result<jetstream::kv::Watch> {
    store.watch_all_from_revision(revision).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Kv,
            format!("cannot watch KV bucket {}", store.name),
            e,
        )
    })
}

/// Applies the watch's entries to `state` until cancelled; restarts the watch (from a
/// fresh listing) with back-off when it ends or fails.
async fn follow(
    js: jetstream::Context,
    mut store: jetstream::kv::Store,
    mut watch: jetstream::kv::Watch,
    state: Arc<WatchState>,
    cancel: CancellationToken,
) {
    let bucket = store.name.clone();
    let mut backoff = Duration::from_millis(100);
    let mut sweep = tokio::time::interval(state.stale_after / 4);
    loop {
        let why = loop {
            tokio::select! {
                // A stopped watch applies nothing more, even an entry that is ready
                // in the same poll.
                biased;
                _ = cancel.cancelled() => return,
                _ = sweep.tick() => {
                    if state.prune() {
                        state.changed();
                    }
                    // A bucket deleted and made again starts its sequences over, and
                    // the watch's consumer would wait past them: start afresh. (A
                    // failed check, e.g. during an election, proves nothing.)
                    let known = *state.created.lock().unwrap_or_else(|e| e.into_inner());
                    if let Ok(created) = stream_created(&store).await
                        && Some(created) != known
                    {
                        break "the bucket was re-created".to_owned();
                    }
                }
                entry = watch.next() => match entry {
                    None => break "the watch ended".to_owned(),
                    Some(Err(e)) => break e.to_string(),
                    Some(Ok(entry)) => {
                        backoff = Duration::from_millis(100);
                        state
                            .last_revision
                            .store(entry.revision, std::sync::atomic::Ordering::Relaxed);
                        let changed = match entry.operation {
                            jetstream::kv::Operation::Put => match serde_json::from_slice(&entry.value) {
                                Ok(r) => state.put(entry.key, r),
                                Err(e) => {
                                    tracing::warn!(key = %entry.key, error = %e, "skipping an unreadable registry entry");
                                    false
                                }
                            },
                            jetstream::kv::Operation::Delete | jetstream::kv::Operation::Purge => state.remove(&entry.key),
                        };
                        if changed {
                            state.changed();
                        }
                    }
                },
            }
        };
        tracing::warn!(%bucket, reason = %why, "registry watch broke; starting it again");
        watch = loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let restarted = async {
                let store = js.get_key_value(&bucket).await.map_err(|e| {
                    Error::with_source(ErrorKind::Kv, format!("cannot open KV bucket {bucket}"), e)
                })?;
                let from = resume_from(&store, &state).await?;
                Ok::<_, Error>((watch_from(&store, from).await?, store))
            };
            match restarted.await {
                Ok((w, s)) => {
                    store = s;
                    break w;
                }
                Err(e) => tracing::warn!(%bucket, error = %e, "registry watch cannot start yet"),
            }
        };
    }
}
