//! Checkpoints: runs stored in the KV bucket `<prefix>_flows` under `<flow>.<run id>`.
//!
//! Writes use the KV revision (compare-and-set), so two workers never overwrite each
//! other's progress: the loser gets [`FlowError::Conflict`] and backs off.

use async_nats::jetstream::kv;
use weft_bus::Bus;

use crate::error::FlowError;
use crate::run::Run;

/// A run with the KV revision it was read or written at.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The run.
    pub run: Run,
    /// Its KV revision.
    pub revision: u64,
}

/// The run store of one mesh.
#[derive(Clone)]
pub struct RunStore {
    kv: kv::Store,
}

fn key(flow: &str, run_id: &str) -> String {
    format!("{flow}.{run_id}")
}

fn store_err(e: impl std::fmt::Display) -> FlowError {
    FlowError::Store(e.to_string())
}

impl RunStore {
    /// Opens the mesh's flows bucket.
    ///
    /// # Errors
    /// [`FlowError::Bus`] when the bucket is missing (`weft up` creates it).
    pub async fn open(bus: &Bus) -> Result<RunStore, FlowError> {
        Ok(RunStore {
            kv: bus.kv(&bus.names().flows_bucket).await?,
        })
    }

    /// Reads a run.
    ///
    /// # Errors
    /// [`FlowError::Store`] when KV fails or the value is unreadable.
    pub async fn load(&self, flow: &str, run_id: &str) -> Result<Option<Stored>, FlowError> {
        let Some(entry) = self.kv.entry(key(flow, run_id)).await.map_err(store_err)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let run: Run = serde_json::from_slice(&entry.value).map_err(store_err)?;
        Ok(Some(Stored {
            run,
            revision: entry.revision,
        }))
    }

    /// Creates a run; if it already exists (a redelivered trigger), returns the stored
    /// one instead.
    ///
    /// # Errors
    /// [`FlowError::Store`] when KV fails.
    pub async fn create_or_load(&self, run: Run) -> Result<Stored, FlowError> {
        let k = key(&run.flow, &run.id);
        let bytes = serde_json::to_vec(&run).map_err(store_err)?;
        match self.kv.create(&k, bytes.into()).await {
            Ok(revision) => Ok(Stored { run, revision }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .load(&run.flow, &run.id)
                .await?
                .ok_or_else(|| FlowError::Store(format!("run {k} vanished"))),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Writes `stored.run` if nobody wrote it since `stored.revision`, and advances the
    /// revision.
    ///
    /// # Errors
    /// [`FlowError::Conflict`] when another worker wrote first; [`FlowError::Store`]
    /// when KV fails.
    pub async fn save(&self, stored: &mut Stored) -> Result<(), FlowError> {
        let k = key(&stored.run.flow, &stored.run.id);
        let bytes = serde_json::to_vec(&stored.run).map_err(store_err)?;
        match self.kv.update(&k, bytes.into(), stored.revision).await {
            Ok(rev) => {
                stored.revision = rev;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(FlowError::Conflict {
                    flow: stored.run.flow.clone(),
                    run: stored.run.id.clone(),
                })
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// Every run, of one flow or all, oldest first.
    ///
    /// # Errors
    /// [`FlowError::Store`] when KV fails.
    pub async fn list(&self, flow: Option<&str>) -> Result<Vec<Run>, FlowError> {
        let prefix = flow.map(|f| format!("{f}.")).unwrap_or_default();
        let mut runs: Vec<Run> = weft_bus::kv::read_all(&self.kv, &prefix)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        runs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(runs)
    }
}
