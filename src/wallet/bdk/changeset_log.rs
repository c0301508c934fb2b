//! The wallet's state as an append-only log of BDK change sets in the
//! `KVStore`: each change writes only itself, and loading merges them all.

use bdk_wallet::chain::Merge;
use bdk_wallet::ChangeSet;

use crate::store::{SharedStore, PERSISTENCE_NAMESPACE};
use crate::wallet::WalletError;

const SECONDARY_NAMESPACE: &str = "wallet";
const PREFIX: &str = "changeset-";
/// Past this many entries, loading folds them into one.
const COMPACT_AFTER: usize = 64;

/// Where the next change set goes.
pub(super) struct ChangeLog {
    store: SharedStore,
    next: u64,
}

fn key(sequence: u64) -> String {
    format!("{PREFIX}{sequence:020}")
}

fn entries(store: &SharedStore) -> Result<Vec<(u64, String)>, WalletError> {
    let mut entries: Vec<(u64, String)> = store
        .list(PERSISTENCE_NAMESPACE, SECONDARY_NAMESPACE)
        .map_err(|e| WalletError::Persistence(e.to_string()))?
        .into_iter()
        .filter_map(|k| {
            let sequence = k.strip_prefix(PREFIX)?.parse().ok()?;
            Some((sequence, k))
        })
        .collect();
    entries.sort();
    Ok(entries)
}

impl ChangeLog {
    /// Whether `store` holds a wallet.
    pub(super) fn exists(store: &SharedStore) -> Result<bool, WalletError> {
        Ok(!entries(store)?.is_empty())
    }

    /// Reads and merges every change set; `None` when there is no wallet.
    pub(super) fn load(store: SharedStore) -> Result<(Option<ChangeSet>, ChangeLog), WalletError> {
        let entries = entries(&store)?;
        let mut merged: Option<ChangeSet> = None;
        for (_, k) in &entries {
            let bytes = store
                .read(PERSISTENCE_NAMESPACE, SECONDARY_NAMESPACE, k)
                .map_err(|e| WalletError::Persistence(e.to_string()))?;
            let changeset: ChangeSet = serde_json::from_slice(&bytes)
                .map_err(|e| WalletError::Persistence(format!("corrupt wallet state {k}: {e}")))?;
            match &mut merged {
                Some(all) => all.merge(changeset),
                None => merged = Some(changeset),
            }
        }
        let mut log = ChangeLog {
            store,
            next: entries.last().map_or(0, |(sequence, _)| sequence + 1),
        };
        if entries.len() > COMPACT_AFTER {
            if let Some(all) = &merged {
                // Write the merged state first: a crash before the removals
                // leaves entries that merge to the same state.
                log.append(all)?;
                for (_, k) in &entries {
                    log.store
                        .remove(PERSISTENCE_NAMESPACE, SECONDARY_NAMESPACE, k, false)
                        .map_err(|e| WalletError::Persistence(e.to_string()))?;
                }
            }
        }
        Ok((merged, log))
    }

    /// Appends one change set.
    pub(super) fn append(&mut self, changeset: &ChangeSet) -> Result<(), WalletError> {
        let bytes =
            serde_json::to_vec(changeset).map_err(|e| WalletError::Persistence(e.to_string()))?;
        self.store
            .write(
                PERSISTENCE_NAMESPACE,
                SECONDARY_NAMESPACE,
                &key(self.next),
                bytes,
            )
            .map_err(|e| WalletError::Persistence(e.to_string()))?;
        self.next += 1;
        Ok(())
    }
}
