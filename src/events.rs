//! Splice events: what the application hears about splices and batches.
//!
//! Each event is written to the store in the same write as the record
//! change it reports (one store entry holds both), so an event is never lost
//! and never reports a change that was not written.

use bitcoin::secp256k1::PublicKey;
use bitcoin::Txid;
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
            SpliceEvent::StateChanged { id, .. } => Some(*id),
            SpliceEvent::BatchStateChanged { .. } => None,
        }
    }
}

/// Called with each event right after the write that holds it, before the
/// change it reports is acted on.
pub type EventNotifier = Box<dyn Fn(&SpliceEvent) + Send + Sync>;
