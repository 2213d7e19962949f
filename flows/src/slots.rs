//! Concurrency limits of flows (`"concurrency": {"key": "${trigger.payload.customer_id}",
//! "limit": 1}`): at most `limit` runs of one key hold a slot at a time; the others wait
//! without a worker, in arrival order, and are woken as slots free up.
//!
//! The slots of one key are one value in KV `<prefix>_flows`, under
//! `slots.<flow>.<uuidv5 of the key>`: `{key, limit, holders, waiters}` (run ids),
//! changed by compare-and-set only, so acquiring, waiting and releasing from many
//! workers never lose an update. A run takes its slot before its first step and gives
//! it back when it ends (completed, failed or cancelled); the first waiters that fit
//! are woken. A worker that dies between a run's end and the release releases it when
//! the run's delivery comes back; a run retried after failing takes a slot again.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use weft_bus::{Error, ErrorKind};

/// A flow's limit: runs of one key at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// The key, a template over the run context (e.g. `${trigger.payload.customer_id}`);
    /// default: one key for the whole flow.
    #[serde(default)]
    pub key: serde_json::Value,
    /// Runs of one key at a time (at least 1).
    pub limit: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Slot {
    key: String,
    limit: u32,
    holders: Vec<String>,
    waiters: Vec<String>,
}

/// The slots of a mesh.
#[derive(Clone)]
pub(crate) struct Slots {
    kv: kv::Store,
}

fn kv_key(flow: &str, key: &str) -> String {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes());
    format!("slots.{flow}.{}", id.simple())
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Kv, format!("flow slots: {e}"))
}

impl Slots {
    /// The slots in `kv`, the flows bucket.
    pub(crate) fn new(kv: kv::Store) -> Slots {
        Slots { kv }
    }

    /// Applies `change` to the slot of `key` ([`weft_bus::kv::update`]).
    async fn update<T>(
        &self,
        flow: &str,
        key: &str,
        limit: u32,
        change: impl Fn(&mut Slot) -> (bool, T),
    ) -> Result<T, Error> {
        weft_bus::kv::update(&self.kv, &kv_key(flow, key), |slot: &mut Slot| {
            slot.key = key.to_owned();
            slot.limit = limit;
            change(slot)
        })
        .await
    }

    /// Takes a slot of `key` for `run`, or queues it as a waiter. `true` when it holds
    /// one (also when it held one already).
    pub(crate) async fn acquire(
        &self,
        flow: &str,
        key: &str,
        limit: u32,
        run: &str,
    ) -> Result<bool, Error> {
        self.update(flow, key, limit, |s| {
            if s.holders.iter().any(|h| h == run) {
                return (false, true);
            }
            if (s.holders.len() as u32) < s.limit {
                s.waiters.retain(|w| w != run);
                s.holders.push(run.to_owned());
                return (true, true);
            }
            if s.waiters.iter().any(|w| w == run) {
                return (false, false);
            }
            s.waiters.push(run.to_owned());
            (true, false)
        })
        .await
    }

    /// Gives back `run`'s slot of `key` (or its place among the waiters); returns the
    /// waiters to wake: as many as there are free slots, oldest first.
    pub(crate) async fn release(
        &self,
        flow: &str,
        key: &str,
        limit: u32,
        run: &str,
    ) -> Result<Vec<String>, Error> {
        self.update(flow, key, limit, |s| {
            let before = s.holders.len() + s.waiters.len();
            s.holders.retain(|h| h != run);
            s.waiters.retain(|w| w != run);
            let free = (s.limit as usize).saturating_sub(s.holders.len());
            let wake: Vec<String> = s.waiters.iter().take(free).cloned().collect();
            (s.holders.len() + s.waiters.len() != before, wake)
        })
        .await
    }

    /// Whether `run` holds a slot of `key`.
    pub(crate) async fn holds(&self, flow: &str, key: &str, run: &str) -> Result<bool, Error> {
        let Some(e) = self.kv.entry(kv_key(flow, key)).await.map_err(failed)? else {
            return Ok(false);
        };
        if e.operation != kv::Operation::Put {
            return Ok(false);
        }
        let slot: Slot = serde_json::from_slice(&e.value).map_err(failed)?;
        Ok(slot.holders.iter().any(|h| h == run))
    }
}
