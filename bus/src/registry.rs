//! The registry (DESIGN §5): KV bucket `<prefix>_registry`, key
//! `<kind>.<name>.<instance>`, value a JSON [`Registration`].
//!
//! Each instance refreshes its entry on a heartbeat (every third of the bucket's max
//! age); an entry expires when its instance dies (the bucket's max age is the TTL) and
//! is deleted when it stops cleanly. Gateways and `weft ls` read the bucket.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::connect::Bus;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics;

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
    store: kv::Store,
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
        let mut out: Vec<Registration> = crate::kv::read_all(&self.store, "")
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
        Ok(crate::kv::read_all(&self.store, &prefix)
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
            ttl / 3
        };
        let cancel = CancellationToken::new();
        let (store, k, c) = (self.store.clone(), key.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = c.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = store.put(&k, value.clone()).await {
                            tracing::warn!(key = %k, error = %e, "registry heartbeat failed");
                        }
                    }
                }
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
    store: kv::Store,
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
