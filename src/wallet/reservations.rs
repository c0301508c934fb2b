//! Wallet coins promised to splices, persisted so a restart does not hand
//! them out twice.

use std::collections::BTreeMap;

use bitcoin::OutPoint;

use super::{SharedStore, WalletError, PERSISTENCE_NAMESPACE};
use crate::journal::SpliceId;

const RESERVATIONS_SECONDARY_NAMESPACE: &str = "wallet";
const RESERVATIONS_KEY: &str = "reservations";

/// Which splice holds which coin.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reservations {
    by_outpoint: BTreeMap<OutPoint, SpliceId>,
}

impl Reservations {
    pub(super) fn load(store: &SharedStore) -> Result<Self, WalletError> {
        match store.read(
            PERSISTENCE_NAMESPACE,
            RESERVATIONS_SECONDARY_NAMESPACE,
            RESERVATIONS_KEY,
        ) {
            Ok(bytes) => {
                let entries: Vec<(OutPoint, SpliceId)> = serde_json::from_slice(&bytes)
                    .map_err(|e| WalletError::Persistence(format!("corrupt reservations: {e}")))?;
                Ok(Reservations {
                    by_outpoint: entries.into_iter().collect(),
                })
            }
            Err(e) if e.kind() == lightning::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(WalletError::Persistence(e.to_string())),
        }
    }

    pub(super) fn save(&self, store: &SharedStore) -> Result<(), WalletError> {
        let entries: Vec<(&OutPoint, &SpliceId)> = self.by_outpoint.iter().collect();
        let bytes =
            serde_json::to_vec(&entries).map_err(|e| WalletError::Persistence(e.to_string()))?;
        store
            .write(
                PERSISTENCE_NAMESPACE,
                RESERVATIONS_SECONDARY_NAMESPACE,
                RESERVATIONS_KEY,
                bytes,
            )
            .map_err(|e| WalletError::Persistence(e.to_string()))
    }

    /// The splice holding `outpoint`.
    pub fn holder(&self, outpoint: &OutPoint) -> Option<SpliceId> {
        self.by_outpoint.get(outpoint).copied()
    }

    /// Whether `outpoint` may be spent for `id` (free, or already held by it).
    pub fn available_to(&self, outpoint: &OutPoint, id: Option<SpliceId>) -> bool {
        match self.holder(outpoint) {
            None => true,
            Some(holder) => Some(holder) == id,
        }
    }

    pub(super) fn reserve(&mut self, id: SpliceId, outpoints: &[OutPoint]) {
        for outpoint in outpoints {
            self.by_outpoint.insert(*outpoint, id);
        }
    }

    pub(super) fn release(&mut self, id: SpliceId) -> Vec<OutPoint> {
        let released: Vec<OutPoint> = self
            .by_outpoint
            .iter()
            .filter(|(_, holder)| **holder == id)
            .map(|(outpoint, _)| *outpoint)
            .collect();
        for outpoint in &released {
            self.by_outpoint.remove(outpoint);
        }
        released
    }

    pub(super) fn release_outpoints(&mut self, outpoints: &[OutPoint]) {
        for outpoint in outpoints {
            self.by_outpoint.remove(outpoint);
        }
    }

    /// The coins `id` holds.
    pub fn held_by(&self, id: SpliceId) -> Vec<OutPoint> {
        self.by_outpoint
            .iter()
            .filter(|(_, holder)| **holder == id)
            .map(|(outpoint, _)| *outpoint)
            .collect()
    }

    /// Every reservation.
    pub fn iter(&self) -> impl Iterator<Item = (&OutPoint, &SpliceId)> {
        self.by_outpoint.iter()
    }
}
