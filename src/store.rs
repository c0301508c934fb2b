//! Where this crate keeps its state: the node's `KVStoreSync`, under the
//! primary namespace `ldk_splice`, as JSON.

use std::sync::Arc;

use lightning::util::persist::KVStoreSync;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// KVStore primary namespace for everything this crate persists.
pub const PERSISTENCE_NAMESPACE: &str = "ldk_splice";

/// A `KVStoreSync` shared between threads, as the wallet and journal use it.
pub type SharedStore = Arc<dyn KVStoreSync + Send + Sync>;

/// A store operation that failed, with what was being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

fn failed(what: &str, key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what} {PERSISTENCE_NAMESPACE}/{key}: {e}"))
}

/// Encodes `value` and writes it at `secondary/key`.
pub(crate) fn write_json<T: Serialize + ?Sized>(
    store: &SharedStore,
    secondary: &str,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let path = format!("{secondary}/{key}");
    let bytes = serde_json::to_vec(value).map_err(|e| failed("encoding", &path, e))?;
    store
        .write(PERSISTENCE_NAMESPACE, secondary, key, bytes)
        .map_err(|e| failed("writing", &path, e))
}

/// Reads and decodes `secondary/key`; `None` when there is no such key.
pub(crate) fn read_json<T: DeserializeOwned>(
    store: &SharedStore,
    secondary: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let path = format!("{secondary}/{key}");
    match store.read(PERSISTENCE_NAMESPACE, secondary, key) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| failed("decoding", &path, e)),
        Err(e) if e.kind() == lightning::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failed("reading", &path, e)),
    }
}

/// Every key under `secondary`.
pub(crate) fn list(store: &SharedStore, secondary: &str) -> Result<Vec<String>, StoreError> {
    store
        .list(PERSISTENCE_NAMESPACE, secondary)
        .map_err(|e| failed("listing", secondary, e))
}

/// Removes `secondary/key`.
pub(crate) fn remove(store: &SharedStore, secondary: &str, key: &str) -> Result<(), StoreError> {
    store
        .remove(PERSISTENCE_NAMESPACE, secondary, key, false)
        .map_err(|e| failed("removing", &format!("{secondary}/{key}"), e))
}

/// A `KVStoreSync` in memory, for unit tests that need no disk.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemoryStore {
    entries: std::sync::Mutex<std::collections::BTreeMap<(String, String, String), Vec<u8>>>,
}

#[cfg(test)]
impl KVStoreSync for MemoryStore {
    fn read(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
    ) -> Result<Vec<u8>, lightning::io::Error> {
        self.entries
            .lock()
            .unwrap()
            .get(&(primary.into(), secondary.into(), key.into()))
            .cloned()
            .ok_or_else(|| {
                lightning::io::Error::new(lightning::io::ErrorKind::NotFound, key.to_string())
            })
    }

    fn write(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        buf: Vec<u8>,
    ) -> Result<(), lightning::io::Error> {
        self.entries
            .lock()
            .unwrap()
            .insert((primary.into(), secondary.into(), key.into()), buf);
        Ok(())
    }

    fn remove(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        _lazy: bool,
    ) -> Result<(), lightning::io::Error> {
        self.entries
            .lock()
            .unwrap()
            .remove(&(primary.into(), secondary.into(), key.into()));
        Ok(())
    }

    fn list(&self, primary: &str, secondary: &str) -> Result<Vec<String>, lightning::io::Error> {
        Ok(self
            .entries
            .lock()
            .unwrap()
            .keys()
            .filter(|(p, s, _)| p == primary && s == secondary)
            .map(|(_, _, k)| k.clone())
            .collect())
    }
}
