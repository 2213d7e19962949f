//! JetStream KV helpers shared by the registry, flow slots and waits, agent memory and
//! applications.

use async_nats::jetstream::kv;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// Direct gets [`read_all`] has in flight at once.
const GETS_IN_FLIGHT: usize = 64;

/// A consistent listing of a bucket: its live values and the stream sequence they were
/// read at or after (watch from `last_sequence + 1` to follow every later change).
#[derive(Debug, Clone)]
pub struct Snapshot<T> {
    /// `(key, value)` pairs in key order.
    pub entries: Vec<(String, T)>,
    /// The bucket stream's last sequence when the listing started.
    pub last_sequence: u64,
}

/// Every live value of `store` whose key starts with `key_prefix` (`""` for all),
/// decoded from JSON, as `(key, value)` pairs in key order. Values that do not decode
/// as `T` are skipped with a warning; a key deleted or expired between listing and
/// reading is skipped.
///
/// Creates no consumer: the keys come from one stream-info request with a subject
/// filter, and each value from a direct get. (`kv::Store::keys` creates a consumer per
/// call that the server keeps for a while; a process listing often would pile them
/// up until the server refuses more.) The gets are pipelined, 64 in flight. Fine for
/// buckets of thousands of keys, not millions; a process that reads a bucket often
/// should keep a watch on it instead, as [`crate::registry::RegistryWatch`] does.
///
/// # Errors
/// [`ErrorKind::Kv`] naming the bucket when listing or reading fails.
pub async fn read_all<T: DeserializeOwned>(
    store: &kv::Store,
    key_prefix: &str,
) -> Result<Vec<(String, T)>> {
    Ok(snapshot(store, key_prefix).await?.entries)
}

/// As [`read_all`], with the stream sequence the listing started at.
///
/// # Errors
/// As [`read_all`].
pub async fn snapshot<T: DeserializeOwned>(
    store: &kv::Store,
    key_prefix: &str,
) -> Result<Snapshot<T>> {
    let err = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Kv,
            format!("cannot read KV bucket {}: {e}", store.name),
        )
    };
    // A filter on whole tokens when the prefix ends at a token boundary; otherwise
    // every key, narrowed below.
    let filter = if key_prefix.is_empty() || key_prefix.ends_with('.') {
        format!("{}{key_prefix}>", store.prefix)
    } else {
        format!("{}>", store.prefix)
    };
    let mut subjects = store
        .stream
        .info_with_subjects(filter)
        .await
        .map_err(|e| err(&e))?;
    let last_sequence = subjects.info.state.last_sequence;
    let mut keys = Vec::new();
    while let Some((subject, _count)) = subjects.try_next().await.map_err(|e| err(&e))? {
        if let Some(key) = subject.strip_prefix(store.prefix.as_str())
            && key.starts_with(key_prefix)
        {
            keys.push(key.to_owned());
        }
    }
    keys.sort();
    // The gets go out GETS_IN_FLIGHT at a time on the one connection, answers taken in
    // key order: the listing costs about keys / GETS_IN_FLIGHT round trips, not keys.
    let mut values = futures::stream::iter(keys)
        .map(|key| async move {
            let value = store.get(&key).await;
            (key, value)
        })
        .buffered(GETS_IN_FLIGHT);
    let mut entries = Vec::new();
    while let Some((key, value)) = values.next().await {
        let Some(bytes) = value.map_err(|e| err(&e))? else {
            continue;
        };
        match serde_json::from_slice::<T>(&bytes) {
            Ok(v) => entries.push((key, v)),
            Err(e) => {
                tracing::warn!(bucket = %store.name, %key, error = %e, "skipping an unreadable value")
            }
        }
    }
    Ok(Snapshot {
        entries,
        last_sequence,
    })
}

/// Reads the JSON value under `key` (`T::default()` when there is none, it was
/// deleted, or it does not decode), lets `change` edit it, and writes it back with
/// compare-and-set on the revision read, again from a fresh read after a conflict, so
/// concurrent writers never lose an update. `change` returns whether to write and what
/// to return; it may run more than once.
///
/// # Errors
/// [`ErrorKind::Kv`] naming the bucket and key when a read or a write fails otherwise.
pub async fn update<T, R>(
    store: &kv::Store,
    key: &str,
    mut change: impl FnMut(&mut T) -> (bool, R),
) -> Result<R>
where
    T: DeserializeOwned + serde::Serialize + Default,
{
    let failed = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Kv,
            format!("cannot update {key} in KV bucket {}: {e}", store.name),
        )
    };
    loop {
        let entry = store.entry(key).await.map_err(|e| failed(&e))?;
        let (mut value, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => (
                serde_json::from_slice(&e.value).unwrap_or_default(),
                Some(e.revision),
            ),
            Some(e) => (T::default(), Some(e.revision)),
            None => (T::default(), None),
        };
        let (write, out) = change(&mut value);
        if !write {
            return Ok(out);
        }
        let bytes = serde_json::to_vec(&value).map_err(|e| failed(&e))?.into();
        let conflict = match revision {
            Some(rev) => match store.update(key, bytes, rev).await {
                Ok(_) => return Ok(out),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => true,
                Err(e) => return Err(failed(&e)),
            },
            None => match store.create(key, bytes).await {
                Ok(_) => return Ok(out),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => true,
                Err(e) => return Err(failed(&e)),
            },
        };
        debug_assert!(conflict);
    }
}
