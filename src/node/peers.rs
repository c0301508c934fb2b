//! Peer addresses we connected to, persisted so the node reconnects to its
//! channel peers after a restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use bitcoin::secp256k1::PublicKey;

use crate::store::{SharedStore, PERSISTENCE_NAMESPACE};

const PEERS_NAMESPACE: &str = "peers";

/// Known peer addresses, written through to the store.
pub struct PeerStore {
    peers: Mutex<HashMap<PublicKey, SocketAddr>>,
    store: SharedStore,
}

impl PeerStore {
    /// Reads every stored peer.
    pub fn load(store: SharedStore) -> Self {
        let mut peers = HashMap::new();
        for key in store
            .list(PERSISTENCE_NAMESPACE, PEERS_NAMESPACE)
            .unwrap_or_default()
        {
            let node_id = key.parse::<PublicKey>();
            let addr = store
                .read(PERSISTENCE_NAMESPACE, PEERS_NAMESPACE, &key)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|s| s.parse::<SocketAddr>().ok());
            match (node_id, addr) {
                (Ok(node_id), Some(addr)) => {
                    peers.insert(node_id, addr);
                }
                _ => log::warn!("skipping unreadable peer record {key}"),
            }
        }
        Self {
            peers: Mutex::new(peers),
            store,
        }
    }

    /// Remembers `addr` for `node_id`.
    pub fn insert(&self, node_id: PublicKey, addr: SocketAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(&node_id) == Some(&addr) {
            return;
        }
        peers.insert(node_id, addr);
        if let Err(e) = self.store.write(
            PERSISTENCE_NAMESPACE,
            PEERS_NAMESPACE,
            &node_id.to_string(),
            addr.to_string().into_bytes(),
        ) {
            log::error!("failed to persist peer {node_id}: {e}");
        }
    }

    /// The address we know for `node_id`.
    pub fn get(&self, node_id: &PublicKey) -> Option<SocketAddr> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
    }
}
