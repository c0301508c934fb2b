//! Splice events: what the application hears about splices and batches.
//!
//! Each event is written to the store in the same write as the record
//! change it reports (one store entry holds both), so an event is never lost
//! and never reports a change that was not written.

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, Txid};
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

use crate::ids::{BatchId, SpliceId};
use crate::record::{BatchState, SpliceState};

/// Something that happened to a splice or a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SpliceEvent {
    /// A splice reached a new state. A confirmation depth that falls back
    /// (a reorganisation) is reported too, as `Confirmed` with the lower
    /// depth or as `Broadcast`.
    StateChanged {
        /// The splice.
        id: SpliceId,
        /// Its channel.
        #[serde(with = "crate::ids::channel_id_hex")]
        channel_id: ChannelId,
        /// The channel's counterparty.
        counterparty: PublicKey,
        /// The state it reached.
        state: SpliceState,
        /// The splice transaction, once known.
        txid: Option<Txid>,
    },
    /// A fee bump of ours was negotiated: the splice has a new candidate
    /// paying more (the earlier ones stay valid until one confirms).
    FeeBumped {
        /// The splice.
        id: SpliceId,
        /// The new candidate.
        txid: Txid,
        /// Its feerate.
        #[serde(rename = "feerate_sat_per_kwu", with = "feerate_kwu")]
        feerate: FeeRate,
        /// Our share of its fee.
        #[serde(rename = "fee_sat", with = "bitcoin::amount::serde::as_sat")]
        fee: Amount,
    },
    /// A fee bump of ours did not happen (its round failed, or a restart
    /// lost it before it was signed); the earlier candidates stand.
    FeeBumpDropped {
        /// The splice.
        id: SpliceId,
        /// Why.
        reason: String,
    },
    /// The automatic fee bumping of a splice stopped without a confirmation:
    /// the next bump would go beyond its budget.
    AutoBumpStopped {
        /// The splice.
        id: SpliceId,
        /// Why.
        reason: String,
    },
    /// A batch reached a new state.
    BatchStateChanged {
        /// The batch.
        batch: BatchId,
        /// The state it reached.
        state: BatchState,
    },
}

impl SpliceEvent {
    /// The splice the event is about, if it is about one.
    pub fn splice_id(&self) -> Option<SpliceId> {
        match self {
            SpliceEvent::StateChanged { id, .. }
            | SpliceEvent::FeeBumped { id, .. }
            | SpliceEvent::FeeBumpDropped { id, .. }
            | SpliceEvent::AutoBumpStopped { id, .. } => Some(*id),
            SpliceEvent::BatchStateChanged { .. } => None,
        }
    }
}

/// Called with each event right after the write that holds it, before the
/// change it reports is acted on.
pub type EventNotifier = Box<dyn Fn(&SpliceEvent) + Send + Sync>;

mod feerate_kwu {
    use bitcoin::FeeRate;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rate: &FeeRate, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(rate.to_sat_per_kwu())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FeeRate, D::Error> {
        Ok(FeeRate::from_sat_per_kwu(u64::deserialize(d)?))
    }
}
