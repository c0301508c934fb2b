//! The store the background processor writes through: it reports each write
//! of the `ChannelManager`, so the splice coordinator gives LDK our splice
//! signatures only once the negotiation they are for is on disk.

use std::sync::{Arc, OnceLock};

use lightning::io;
use lightning::util::persist::{
    KVStoreSync, CHANNEL_MANAGER_PERSISTENCE_KEY, CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
    CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
};

use super::types::Store;

/// The node's store, reporting each write of the `ChannelManager`.
pub struct ManagerStore {
    inner: Arc<Store>,
    on_manager_write: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl ManagerStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<Store>) -> Self {
        ManagerStore {
            inner,
            on_manager_write: OnceLock::new(),
        }
    }

    /// Calls `f` after every successful write of the `ChannelManager`.
    pub fn on_manager_write(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_manager_write.set(f);
    }
}

impl KVStoreSync for ManagerStore {
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
        self.inner.remove(primary, secondary, key, lazy)
    }

    fn list(&self, primary: &str, secondary: &str) -> Result<Vec<String>, io::Error> {
        self.inner.list(primary, secondary)
    }
}
