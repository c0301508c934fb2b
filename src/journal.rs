//! Splice records, written to the node's `KVStore` (namespace `ldk_splice`,
//! sub-namespace `splices`) before each change is acted on.

use std::collections::BTreeMap;

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, TxOut, Txid};
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

use crate::error::SpliceError;
use crate::wallet::{SharedStore, PERSISTENCE_NAMESPACE};

const SPLICES_NAMESPACE: &str = "splices";

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
}

impl Journal {
    /// Reads every record from `store`.
    pub fn load(store: SharedStore) -> Result<Self, SpliceError> {
        let keys = store
            .list(PERSISTENCE_NAMESPACE, SPLICES_NAMESPACE)
            .map_err(|e| SpliceError::Persistence(e.to_string()))?;
        let mut records = BTreeMap::new();
        for key in keys {
            let bytes = store
                .read(PERSISTENCE_NAMESPACE, SPLICES_NAMESPACE, &key)
                .map_err(|e| SpliceError::Persistence(e.to_string()))?;
            let record: SpliceRecord = serde_json::from_slice(&bytes).map_err(|e| {
                SpliceError::Persistence(format!("unreadable splice record {key}: {e}"))
            })?;
            records.insert(record.id, record);
        }
        Ok(Journal { store, records })
    }

    /// The id the next record gets.
    pub fn next_id(&self) -> SpliceId {
        SpliceId(self.records.keys().next_back().map_or(1, |id| id.0 + 1))
    }

    /// Writes `record` to the store, then keeps it.
    pub fn put(&mut self, mut record: SpliceRecord) -> Result<(), SpliceError> {
        record.updated_at = unix_now();
        let bytes =
            serde_json::to_vec(&record).map_err(|e| SpliceError::Persistence(e.to_string()))?;
        self.store
            .write(
                PERSISTENCE_NAMESPACE,
                SPLICES_NAMESPACE,
                &record.id.0.to_string(),
                bytes,
            )
            .map_err(|e| SpliceError::Persistence(e.to_string()))?;
        self.records.insert(record.id, record);
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
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
