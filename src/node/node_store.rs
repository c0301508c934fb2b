//! The node's `KVStore`: LDK's `FilesystemStore`, which reports each write
//! of the `ChannelManager` (so the splice coordinator gives LDK our splice
//! signatures only once the negotiation they are for is on disk), and
//! counts the writes made through it, split into LDK's (channel manager,
//! monitors, sweeper, graph, scorer) and this crate's (journal, wallet,
//! payments, orders), for benchmarks and monitoring.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use lightning::io;
use lightning::util::persist::{
    KVStoreSync, CHANNEL_MANAGER_PERSISTENCE_KEY, CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
    CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
};
use lightning_persister::fs_store::v1::FilesystemStore;

use crate::store::PERSISTENCE_NAMESPACE;

/// Writes and removals made through a [`NodeStore`] since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreWrites {
    /// Writes of LDK's state.
    pub ldk: u64,
    /// Writes of this crate's state (namespace [`PERSISTENCE_NAMESPACE`]).
    pub ours: u64,
    /// Removals, of either.
    pub removals: u64,
}

impl StoreWrites {
    /// The fsyncs those writes cost: `FilesystemStore` syncs the new file
    /// and then its directory on each write, and the directory on each
    /// removal.
    pub fn fsyncs(&self) -> u64 {
        (self.ldk + self.ours) * 2 + self.removals
    }
}

/// The node's store (see the module documentation).
pub struct NodeStore {
    inner: FilesystemStore,
    ldk: AtomicU64,
    ours: AtomicU64,
    removals: AtomicU64,
    on_manager_write: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl NodeStore {
    /// A store in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        NodeStore {
            inner: FilesystemStore::new(dir),
            ldk: AtomicU64::new(0),
            ours: AtomicU64::new(0),
            removals: AtomicU64::new(0),
            on_manager_write: OnceLock::new(),
        }
    }

    /// Calls `f` after every successful write of the `ChannelManager`.
    pub(crate) fn on_manager_write(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_manager_write.set(f);
    }

    /// The writes made so far.
    pub fn writes(&self) -> StoreWrites {
        StoreWrites {
            ldk: self.ldk.load(Ordering::Relaxed),
            ours: self.ours.load(Ordering::Relaxed),
            removals: self.removals.load(Ordering::Relaxed),
        }
    }
}

impl KVStoreSync for NodeStore {
    fn read(&self, primary: &str, secondary: &str, key: &str) -> Result<Vec<u8>, io::Error> {
        self.inner.read(primary, secondary, key)
    }

    fn write(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        buf: Vec<u8>,
    ) -> Result<(), io::Error> {
        self.inner.write(primary, secondary, key, buf)?;
        let counter = if primary == PERSISTENCE_NAMESPACE {
            &self.ours
        } else {
            &self.ldk
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let is_manager = primary == CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE
            && secondary == CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE
            && key == CHANNEL_MANAGER_PERSISTENCE_KEY;
        if is_manager {
            if let Some(f) = self.on_manager_write.get() {
                f();
            }
        }
        Ok(())
    }

    fn remove(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        lazy: bool,
    ) -> Result<(), io::Error> {
        self.inner.remove(primary, secondary, key, lazy)?;
        self.removals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn list(&self, primary: &str, secondary: &str) -> Result<Vec<String>, io::Error> {
        self.inner.list(primary, secondary)
    }
}
