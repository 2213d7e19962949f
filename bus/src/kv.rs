//! JetStream KV helpers shared by the registry, flow checkpoints, agent memory and
//! applications.

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// Every live value of `store` whose key starts with `key_prefix` (`""` for all),
/// decoded from JSON, as `(key, value)` pairs in key order. Values that do not decode
/// as `T` are skipped with a warning; a key that expires between listing and reading
/// is skipped.
///
/// Reads each key separately: fine for buckets of thousands of keys, not millions.
///
/// # Errors
/// [`ErrorKind::Kv`] naming the bucket when listing or reading fails.
pub async fn read_all<T: DeserializeOwned>(
    store: &kv::Store,
    key_prefix: &str,
) -> Result<Vec<(String, T)>> {
    let err = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Kv,
            format!("cannot read KV bucket {}: {e}", store.name),
        )
    };
    let mut keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| err(&e))?
        .try_filter(|k| futures::future::ready(k.starts_with(key_prefix)))
        .try_collect()
        .await
        .map_err(|e| err(&e))?;
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(bytes) = store.get(&key).await.map_err(|e| err(&e))? else {
            continue;
        };
        match serde_json::from_slice::<T>(&bytes) {
            Ok(v) => out.push((key, v)),
            Err(e) => {
                tracing::warn!(bucket = %store.name, %key, error = %e, "skipping an unreadable value")
            }
        }
    }
    Ok(out)
}
