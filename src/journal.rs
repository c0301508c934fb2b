//! Splice records, written to the node's `KVStore` (namespace `ldk_splice`,
//! sub-namespace `splices`) before each change is acted on.
//!
//! A batch changes many records at once: those changes are staged and
//! written together as one group entry (sub-namespace `splice_groups`), so a
//! batch of N legs costs one write instead of N. On load the newest revision
//! of each record wins and the groups are folded back into the per-splice
//! entries.

use std::collections::{BTreeMap, BTreeSet};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, TxOut, Txid};
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

use crate::error::SpliceError;
use crate::wallet::{SharedStore, PERSISTENCE_NAMESPACE};

const SPLICES_NAMESPACE: &str = "splices";
const GROUPS_NAMESPACE: &str = "splice_groups";

/// Identifies one splice request for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SpliceId(pub u64);

impl std::fmt::Display for SpliceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "splice-{}", self.0)
    }
}

impl std::str::FromStr for SpliceId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("splice-").unwrap_or(s).parse().map(SpliceId)
    }
}

/// Where a splice stands.
///
/// `Requested -> Negotiating -> AwaitingSignatures -> Broadcast ->
/// Confirmed { depth } -> Locked`; any stage before `Broadcast` can end in
/// `Failed` or `Cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SpliceState {
    /// Accepted and journaled; about to be handed to LDK.
    Requested,
    /// Handed to LDK: waiting for quiescence and building the transaction with the peer.
    Negotiating,
    /// The transaction is built; we are checking and signing our inputs.
    AwaitingSignatures,
    /// Both sides signed; the transaction is broadcast.
    Broadcast,
    /// The transaction is in a block, `depth` deep.
    Confirmed {
        /// Confirmations so far.
        depth: u32,
    },
    /// Both sides exchanged `splice_locked`: the channel runs on the new funding output.
    Locked,
    /// The splice did not happen.
    Failed {
        /// Why.
        reason: String,
    },
    /// Cancelled by the user before signing.
    Cancelled,
}

impl SpliceState {
    /// Whether the splice has ended (locked, failed or cancelled).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            SpliceState::Locked | SpliceState::Failed { .. } | SpliceState::Cancelled
        )
    }

    /// Whether the transaction is signed and out (so it can no longer be cancelled).
    pub fn is_broadcast(&self) -> bool {
        matches!(
            self,
            SpliceState::Broadcast | SpliceState::Confirmed { .. } | SpliceState::Locked
        )
    }
}

impl std::fmt::Display for SpliceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpliceState::Requested => write!(f, "requested"),
            SpliceState::Negotiating => write!(f, "negotiating"),
            SpliceState::AwaitingSignatures => write!(f, "awaiting signatures"),
            SpliceState::Broadcast => write!(f, "broadcast"),
            SpliceState::Confirmed { depth } => write!(f, "confirmed ({depth} deep)"),
            SpliceState::Locked => write!(f, "locked"),
            SpliceState::Failed { reason } => write!(f, "failed: {reason}"),
            SpliceState::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// One output a splice pays from the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpliceOutput {
    /// The script paid.
    pub script_pubkey: ScriptBuf,
    /// The amount paid.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub value: Amount,
}

impl From<&SpliceOutput> for TxOut {
    fn from(output: &SpliceOutput) -> TxOut {
        TxOut {
            value: output.value,
            script_pubkey: output.script_pubkey.clone(),
        }
    }
}

/// Everything known about one splice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpliceRecord {
    /// Its id.
    pub id: SpliceId,
    /// The channel.
    #[serde(with = "channel_id_hex")]
    pub channel_id: ChannelId,
    /// The channel's counterparty.
    pub counterparty: PublicKey,
    /// Where it stands.
    #[serde(flatten)]
    pub state: SpliceState,
    /// What the wallet adds to the channel (before fees).
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub add: Amount,
    /// What the channel pays out.
    pub outputs: Vec<SpliceOutput>,
    /// The feerate the contribution was built at.
    pub feerate_sat_per_kwu: u64,
    /// Our share of the fee, as LDK estimated it for the contribution.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fee: Amount,
    /// Wallet coins the splice spends (reserved for it until it ends).
    pub inputs: Vec<OutPoint>,
    /// Change back to the wallet, if any.
    pub change: Option<SpliceOutput>,
    /// The channel's capacity before the splice.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub capacity_before: Amount,
    /// Our balance change in the channel: what we add minus what we take out
    /// minus our fee (negative for a splice-out).
    pub net_value_sat: i64,
    /// The splice transaction, once known.
    pub txid: Option<Txid>,
    /// Height of the block that confirmed it, while it is confirmed.
    pub confirmation_height: Option<u32>,
    /// The batch this splice is a leg of, if any.
    #[serde(default)]
    pub batch: Option<crate::batch::BatchId>,
    /// Unix time of the request.
    pub created_at: u64,
    /// Unix time of the last change.
    pub updated_at: u64,
    /// Counts the record's writes: on load the highest revision wins.
    #[serde(default)]
    pub revision: u64,
}

impl SpliceRecord {
    /// The feerate the contribution was built at.
    pub fn feerate(&self) -> FeeRate {
        FeeRate::from_sat_per_kwu(self.feerate_sat_per_kwu)
    }
}

pub(crate) mod channel_id_hex {
    use bitcoin::hex::{DisplayHex, FromHex};
    use lightning::ln::types::ChannelId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ChannelId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.0.to_lower_hex_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChannelId, D::Error> {
        let hex = String::deserialize(d)?;
        <[u8; 32]>::from_hex(&hex)
            .map(ChannelId)
            .map_err(serde::de::Error::custom)
    }
}

/// The splice records, in memory and in the store.
pub struct Journal {
    store: SharedStore,
    records: BTreeMap<SpliceId, SpliceRecord>,
    /// Changed in memory, not yet written (see [`Journal::stage`]).
    staged: BTreeSet<SpliceId>,
    revision: u64,
    next_group: u64,
}

impl Journal {
    /// Reads every record from `store`, folding group entries in.
    pub fn load(store: SharedStore) -> Result<Self, SpliceError> {
        let persistence = |e: lightning::io::Error| SpliceError::Persistence(e.to_string());
        let mut records = BTreeMap::new();
        for key in store
            .list(PERSISTENCE_NAMESPACE, SPLICES_NAMESPACE)
            .map_err(persistence)?
        {
            let bytes = store
                .read(PERSISTENCE_NAMESPACE, SPLICES_NAMESPACE, &key)
                .map_err(persistence)?;
            let record: SpliceRecord = serde_json::from_slice(&bytes).map_err(|e| {
                SpliceError::Persistence(format!("unreadable splice record {key}: {e}"))
            })?;
            records.insert(record.id, record);
        }
        let mut groups = store
            .list(PERSISTENCE_NAMESPACE, GROUPS_NAMESPACE)
            .map_err(persistence)?;
        groups.sort();
        let mut newer = BTreeSet::new();
        for key in &groups {
            let bytes = store
                .read(PERSISTENCE_NAMESPACE, GROUPS_NAMESPACE, key)
                .map_err(persistence)?;
            let group: Vec<SpliceRecord> = serde_json::from_slice(&bytes).map_err(|e| {
                SpliceError::Persistence(format!("unreadable splice group {key}: {e}"))
            })?;
            for record in group {
                if records
                    .get(&record.id)
                    .is_none_or(|r: &SpliceRecord| r.revision < record.revision)
                {
                    newer.insert(record.id);
                    records.insert(record.id, record);
                }
            }
        }
        let revision = records.values().map(|r| r.revision).max().unwrap_or(0);
        let journal = Journal {
            store,
            records,
            staged: BTreeSet::new(),
            revision,
            next_group: 0,
        };
        // Fold the groups back into one entry per splice.
        for id in newer {
            if let Some(record) = journal.records.get(&id) {
                journal.write_record(record)?;
            }
        }
        for key in groups {
            journal
                .store
                .remove(PERSISTENCE_NAMESPACE, GROUPS_NAMESPACE, &key, false)
                .map_err(persistence)?;
        }
        Ok(journal)
    }

    /// The id the next record gets.
    pub fn next_id(&self) -> SpliceId {
        SpliceId(self.records.keys().next_back().map_or(1, |id| id.0 + 1))
    }

    /// Writes `record` to the store, then keeps it.
    pub fn put(&mut self, record: SpliceRecord) -> Result<(), SpliceError> {
        let record = self.next_revision(record);
        self.write_record(&record)?;
        self.staged.remove(&record.id);
        self.records.insert(record.id, record);
        Ok(())
    }

    /// Keeps `record` in memory only; [`Journal::commit_staged`] writes it
    /// with every other staged record in one store write.
    pub fn stage(&mut self, record: SpliceRecord) {
        let record = self.next_revision(record);
        self.staged.insert(record.id);
        self.records.insert(record.id, record);
    }

    /// Whether `id` has changes not written yet.
    pub fn is_staged(&self, id: SpliceId) -> bool {
        self.staged.contains(&id)
    }

    /// Whether anything is staged.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Writes every staged record in one store write.
    pub fn commit_staged(&mut self) -> Result<(), SpliceError> {
        let records: Vec<&SpliceRecord> = self
            .staged
            .iter()
            .filter_map(|id| self.records.get(id))
            .collect();
        match records.as_slice() {
            [] => {}
            [record] => self.write_record(record)?,
            records => {
                let bytes = serde_json::to_vec(records)
                    .map_err(|e| SpliceError::Persistence(e.to_string()))?;
                self.store
                    .write(
                        PERSISTENCE_NAMESPACE,
                        GROUPS_NAMESPACE,
                        &format!("{:020}", self.next_group),
                        bytes,
                    )
                    .map_err(|e| SpliceError::Persistence(e.to_string()))?;
                self.next_group += 1;
            }
        }
        self.staged.clear();
        Ok(())
    }

    /// Forgets a record that never reached LDK.
    pub fn remove(&mut self, id: SpliceId) -> Result<(), SpliceError> {
        self.store
            .remove(
                PERSISTENCE_NAMESPACE,
                SPLICES_NAMESPACE,
                &id.0.to_string(),
                false,
            )
            .map_err(|e| SpliceError::Persistence(e.to_string()))?;
        self.staged.remove(&id);
        self.records.remove(&id);
        Ok(())
    }

    /// The record with `id`.
    pub fn get(&self, id: SpliceId) -> Option<&SpliceRecord> {
        self.records.get(&id)
    }

    /// Every record, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &SpliceRecord> {
        self.records.values()
    }

    /// The record of the splice still running on `channel_id`, if any.
    pub fn active_on(&self, channel_id: &ChannelId) -> Option<&SpliceRecord> {
        self.records
            .values()
            .rev()
            .find(|r| r.channel_id == *channel_id && !r.state.is_final())
    }

    fn next_revision(&mut self, mut record: SpliceRecord) -> SpliceRecord {
        self.revision += 1;
        record.revision = self.revision;
        record.updated_at = unix_now();
        record
    }

    fn write_record(&self, record: &SpliceRecord) -> Result<(), SpliceError> {
        let bytes =
            serde_json::to_vec(record).map_err(|e| SpliceError::Persistence(e.to_string()))?;
        self.store
            .write(
                PERSISTENCE_NAMESPACE,
                SPLICES_NAMESPACE,
                &record.id.0.to_string(),
                bytes,
            )
            .map_err(|e| SpliceError::Persistence(e.to_string()))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use lightning_persister::fs_store::v1::FilesystemStore;

    use super::*;

    fn store(dir: &std::path::Path) -> SharedStore {
        Arc::new(FilesystemStore::new(dir.to_path_buf()))
    }

    fn record(id: u64) -> SpliceRecord {
        let key = SecretKey::from_slice(&[1; 32]).expect("valid key");
        SpliceRecord {
            id: SpliceId(id),
            channel_id: ChannelId([id as u8; 32]),
            counterparty: key.public_key(&Secp256k1::new()),
            state: SpliceState::Requested,
            add: Amount::from_sat(1_000),
            outputs: Vec::new(),
            feerate_sat_per_kwu: 253,
            fee: Amount::from_sat(200),
            inputs: Vec::new(),
            change: None,
            capacity_before: Amount::from_sat(100_000),
            net_value_sat: 800,
            txid: None,
            confirmation_height: None,
            batch: None,
            created_at: 0,
            updated_at: 0,
            revision: 0,
        }
    }

    fn states(journal: &Journal) -> Vec<(u64, SpliceState)> {
        journal.all().map(|r| (r.id.0, r.state.clone())).collect()
    }

    #[test]
    fn staged_records_are_written_together_and_the_newest_revision_wins() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut journal = Journal::load(store(dir.path())).expect("empty journal");
        journal.put(record(1)).expect("put");
        for id in 2..=4 {
            journal.stage(record(id));
        }
        assert!(journal.is_staged(SpliceId(3)));
        // Staged records are visible at once but not yet in the store.
        assert_eq!(journal.all().count(), 4);
        assert_eq!(
            Journal::load(store(dir.path()))
                .expect("load")
                .all()
                .count(),
            1
        );
        journal.commit_staged().expect("commit");
        assert!(!journal.has_staged());

        // A later single write supersedes the group's copy of splice 3...
        let mut negotiating = journal.get(SpliceId(3)).expect("kept").clone();
        negotiating.state = SpliceState::Negotiating;
        journal.put(negotiating).expect("put");
        // ...and a later group supersedes splice 1's single write.
        let mut cancelled = journal.get(SpliceId(1)).expect("kept").clone();
        cancelled.state = SpliceState::Cancelled;
        journal.stage(cancelled);
        let mut failed = journal.get(SpliceId(4)).expect("kept").clone();
        failed.state = SpliceState::Failed {
            reason: "test".into(),
        };
        journal.stage(failed);
        journal.commit_staged().expect("commit");
        let expected = states(&journal);

        let reloaded = Journal::load(store(dir.path())).expect("load");
        assert_eq!(states(&reloaded), expected);
        assert_eq!(expected[0].1, SpliceState::Cancelled);
        assert_eq!(expected[2].1, SpliceState::Negotiating);
        // Loading folded the groups into per-splice entries.
        let groups = store(dir.path())
            .list(PERSISTENCE_NAMESPACE, GROUPS_NAMESPACE)
            .expect("list");
        assert!(groups.is_empty(), "groups left: {groups:?}");
        assert_eq!(
            states(&Journal::load(store(dir.path())).expect("load again")),
            expected
        );
    }

    #[test]
    fn a_staged_record_is_lost_if_never_committed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut journal = Journal::load(store(dir.path())).expect("empty journal");
        journal.put(record(1)).expect("put");
        let mut negotiating = record(1);
        negotiating.state = SpliceState::Negotiating;
        journal.stage(negotiating);
        drop(journal);
        let reloaded = Journal::load(store(dir.path())).expect("load");
        assert_eq!(states(&reloaded), vec![(1, SpliceState::Requested)]);
        assert_eq!(reloaded.next_id(), SpliceId(2));
    }
}
