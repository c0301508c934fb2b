//! What the crate knows of each splice and batch: states and records.

use bitcoin::secp256k1::PublicKey;
use std::time::SystemTime;

use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, SignedAmount, TxOut, Txid};
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

use crate::ids::{BatchId, SpliceId};

/// Where a splice stands.
///
/// `Requested -> Negotiating -> AwaitingSignatures -> Signed -> Broadcast ->
/// Confirmed { depth } -> Locked`. Before `Signed` a splice can end in
/// `Failed` or `Cancelled`. `Signed` is written before our signatures go to
/// LDK; from then on neither a cancel, a batch failure, a deadline nor a
/// restart ends the splice. Only LDK can: when it refuses our signatures
/// (nothing was sent) or discards the funding because the channel closed
/// and its transaction can no longer confirm, the splice ends `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SpliceState {
    /// Accepted and checked. Reported (as a passed state) in the same
    /// write as `Negotiating`; only journals of older versions hold it.
    Requested,
    /// Being handed to LDK (written just before, under the same lock; if
    /// LDK refuses, it ends `Failed`): waiting for quiescence and building
    /// the transaction with the peer.
    Negotiating,
    /// The transaction is built; we are checking it before signing our inputs.
    AwaitingSignatures,
    /// We signed (or are about to hand our signatures to LDK); waiting for the peer's.
    Signed,
    /// Both sides signed; the transaction is broadcast.
    Broadcast,
    /// The transaction is in a block, `depth` deep (as LDK counts it).
    Confirmed {
        /// Confirmations so far.
        depth: u32,
    },
    /// Both sides exchanged `splice_locked`: the channel runs on the new funding output.
    Locked,
    /// The transaction confirmed, but the channel closed before the splice
    /// locked: the channel's close settled what the splice moved (a
    /// splice-in's funds come back with what the channel owes us).
    Closed,
    /// The splice did not happen.
    Failed {
        /// Why.
        reason: String,
    },
    /// Cancelled by the user before signing.
    Cancelled,
}

impl SpliceState {
    /// Whether the splice has ended (locked, closed, failed or cancelled).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            SpliceState::Locked
                | SpliceState::Closed
                | SpliceState::Failed { .. }
                | SpliceState::Cancelled
        )
    }

    /// Whether our signatures were (or are being) given: from here on the
    /// splice cannot be cancelled.
    pub fn is_signed(&self) -> bool {
        matches!(
            self,
            SpliceState::Signed
                | SpliceState::Broadcast
                | SpliceState::Confirmed { .. }
                | SpliceState::Locked
                | SpliceState::Closed
        )
    }

    /// Whether the transaction is out (broadcast, confirmed or locked).
    pub fn is_broadcast(&self) -> bool {
        matches!(
            self,
            SpliceState::Broadcast
                | SpliceState::Confirmed { .. }
                | SpliceState::Locked
                | SpliceState::Closed
        )
    }
}

impl std::fmt::Display for SpliceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpliceState::Requested => write!(f, "requested"),
            SpliceState::Negotiating => write!(f, "negotiating"),
            SpliceState::AwaitingSignatures => write!(f, "awaiting signatures"),
            SpliceState::Signed => write!(f, "signed"),
            SpliceState::Broadcast => write!(f, "broadcast"),
            SpliceState::Confirmed { depth } => write!(f, "confirmed ({depth} deep)"),
            SpliceState::Locked => write!(f, "locked"),
            SpliceState::Closed => write!(f, "confirmed, then the channel closed"),
            SpliceState::Failed { reason } => write!(f, "failed: {reason}"),
            SpliceState::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// Who started a splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpliceOrigin {
    /// We asked for it through this crate.
    #[default]
    Ours,
    /// The counterparty started it; we only follow it (read-only).
    Theirs,
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

impl From<&TxOut> for SpliceOutput {
    fn from(output: &TxOut) -> SpliceOutput {
        SpliceOutput {
            script_pubkey: output.script_pubkey.clone(),
            value: output.value,
        }
    }
}

/// Everything known about one splice. It serializes (for display, e.g. as
/// JSON) with amounts in sat, feerates in sat/kwu and times in Unix
/// seconds; the journal stores it in a private, versioned form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SpliceRecord {
    /// Its id.
    pub id: SpliceId,
    /// The channel.
    #[serde(with = "crate::ids::channel_id_hex")]
    pub channel_id: ChannelId,
    /// The channel's counterparty.
    pub counterparty: PublicKey,
    /// Who started it.
    #[serde(default)]
    pub origin: SpliceOrigin,
    /// Where it stands.
    #[serde(flatten)]
    pub state: SpliceState,
    /// What the wallet adds to the channel (before fees).
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub add: Amount,
    /// What the channel pays out.
    pub outputs: Vec<SpliceOutput>,
    /// The feerate the contribution was built at.
    #[serde(rename = "feerate_sat_per_kwu")]
    pub feerate: FeeRate,
    /// Our share of the fee, as LDK estimated it for the contribution.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fee: Amount,
    /// The most we agreed to pay in fees (the fee policy's cap); a
    /// counterparty's fee bump of this splice is signed only within it.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub max_fee: Amount,
    /// The highest feerate we agreed to.
    #[serde(rename = "max_feerate_sat_per_kwu")]
    pub max_feerate: FeeRate,
    /// Wallet coins the splice spends; they stay locked in the wallet until
    /// the splice ends.
    pub inputs: Vec<OutPoint>,
    /// Change back to the wallet, if any.
    pub change: Option<SpliceOutput>,
    /// The channel's capacity before the splice.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub capacity_before: Amount,
    /// Our balance change in the channel: what we add minus what we take out
    /// minus our fee (negative for a splice-out).
    #[serde(rename = "net_value_sat", with = "bitcoin::amount::serde::as_sat")]
    pub net_value: SignedAmount,
    /// The newest negotiated transaction.
    pub txid: Option<Txid>,
    /// Every transaction negotiated for this splice, oldest first (a fee
    /// bump adds one); whichever confirms is the one that locks, and the
    /// record then reports its fee and change.
    #[serde(default)]
    pub candidates: Vec<SpliceCandidate>,
    /// Height of the block that confirmed it, while it is confirmed.
    pub confirmation_height: Option<u32>,
    /// The batch this splice is a leg of, if any.
    #[serde(default)]
    pub batch: Option<BatchId>,
    /// Whether it is signed together with the other legs of its batch (a
    /// queued move starting after its batch was signed is signed alone).
    #[serde(default)]
    pub sign_with_batch: bool,
    /// A fee bump of ours under way: written before LDK is asked for it,
    /// cleared when its transaction is negotiated (a new candidate) or the
    /// round fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bump: Option<FeeBump>,
    /// Automatic fee bumping, when it is on for this splice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_bump: Option<AutoBumpState>,
    /// When it was requested.
    #[serde(with = "crate::ids::unix_seconds")]
    pub created_at: SystemTime,
    /// When it last changed.
    #[serde(with = "crate::ids::unix_seconds")]
    pub updated_at: SystemTime,
}

/// A fee bump (RBF) of a broadcast splice, from its request until LDK has
/// negotiated its transaction or dropped the round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FeeBump {
    /// The feerate it asks for.
    #[serde(rename = "feerate_sat_per_kwu")]
    pub feerate: FeeRate,
    /// Our share of its fee, as LDK estimated it.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fee: Amount,
    /// Wallet coins it adds to the splice's (locked with them).
    pub added_inputs: Vec<OutPoint>,
    /// How many candidates the splice had when the bump was asked for: a
    /// later one is the bump's.
    pub candidates_before: usize,
    /// The batch whose legs are bumped together with this one: none is
    /// signed until every one is ready to sign.
    pub batch: Option<BatchId>,
    /// When it was asked for.
    #[serde(with = "crate::ids::unix_seconds")]
    pub started_at: SystemTime,
}

/// Automatic fee bumping of a splice of ours: while it stays unconfirmed,
/// after each block it is bumped toward `max_feerate`, reached
/// `target_blocks` blocks after its broadcast, never beyond the budget
/// (`max_feerate`, `max_fee`), and never once a candidate has confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AutoBump {
    /// The blocks after the broadcast by which the feerate reaches
    /// `max_feerate` (the schedule rises evenly until then).
    pub target_blocks: u32,
    /// The highest feerate a bump may pay.
    #[serde(rename = "max_feerate_sat_per_kwu")]
    pub max_feerate: FeeRate,
    /// The most our share of a candidate's fee may be.
    #[serde(rename = "max_fee_sat", with = "bitcoin::amount::serde::as_sat")]
    pub max_fee: Amount,
}

impl AutoBump {
    /// Reach `max_feerate` `target_blocks` after the broadcast (at least
    /// one), paying at most `max_fee`.
    pub fn new(target_blocks: u32, max_feerate: FeeRate, max_fee: Amount) -> Self {
        AutoBump {
            target_blocks: target_blocks.max(1),
            max_feerate,
            max_fee,
        }
    }

    /// The feerate the schedule asks for `waited` blocks after a broadcast
    /// at `start`: rising evenly from `start` to `max_feerate` over
    /// `target_blocks` blocks, then staying there.
    pub fn scheduled_feerate(&self, start: FeeRate, waited: u32) -> FeeRate {
        let start = start.to_sat_per_kwu();
        let top = self.max_feerate.to_sat_per_kwu();
        if top <= start {
            return self.max_feerate;
        }
        let step = u64::from(waited.min(self.target_blocks));
        let rise = (top - start).saturating_mul(step) / u64::from(self.target_blocks.max(1));
        FeeRate::from_sat_per_kwu(start + rise)
    }
}

/// Where the automatic fee bumping of a splice stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AutoBumpState {
    /// The policy.
    pub policy: AutoBump,
    /// The feerate the splice was broadcast at (the schedule starts there).
    #[serde(rename = "start_feerate_sat_per_kwu")]
    pub start_feerate: FeeRate,
    /// The height the splice was first seen broadcast at.
    pub start_height: Option<u32>,
    /// The height of the last bump that was negotiated.
    pub last_bump_height: Option<u32>,
    /// Why it stopped before a confirmation (the budget), if it did.
    pub stopped: Option<String>,
}

/// One transaction negotiated for a splice, with what it costs us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SpliceCandidate {
    /// The transaction.
    pub txid: Txid,
    /// Our share of its fee.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fee: Amount,
    /// Our change in it.
    #[serde(with = "bitcoin::amount::serde::as_sat::opt")]
    pub change: Option<Amount>,
    /// Our balance change in the channel if it is the one that locks.
    #[serde(rename = "net_value_sat", with = "bitcoin::amount::serde::as_sat")]
    pub net_value: SignedAmount,
}

impl SpliceRecord {
    /// Our fee bump under way was negotiated (as the candidate `txid`,
    /// the newest), at block `height`.
    pub(crate) fn settle_bump(&mut self, txid: Txid, height: u32) {
        if self.txid == Some(txid) {
            return;
        }
        if let Some(bump) = self.bump.take() {
            self.feerate = bump.feerate;
            if let Some(auto) = &mut self.auto_bump {
                auto.last_bump_height = Some(height);
            }
        }
    }

    /// Whether `txid` is one of the splice's negotiated transactions.
    pub fn has_candidate(&self, txid: &Txid) -> bool {
        self.candidates.iter().any(|c| c.txid == *txid)
    }

    /// Records `txid` as a candidate costing what the record says now.
    pub(crate) fn add_candidate(&mut self, txid: Txid) {
        let candidate = SpliceCandidate {
            txid,
            fee: self.fee,
            change: self.change.as_ref().map(|c| c.value),
            net_value: self.net_value,
        };
        match self.candidates.iter_mut().find(|c| c.txid == txid) {
            Some(known) => *known = candidate,
            None => self.candidates.push(candidate),
        }
    }

    /// The splice is `txid`: the record takes that candidate's numbers.
    pub(crate) fn settle_on(&mut self, txid: Txid) {
        self.txid = Some(txid);
        if let Some(candidate) = self.candidates.iter().find(|c| c.txid == txid).cloned() {
            self.fee = candidate.fee;
            self.net_value = candidate.net_value;
            if let (Some(change), Some(value)) = (self.change.as_mut(), candidate.change) {
                change.value = value;
            }
        }
    }

    /// Whether this splice is one the counterparty started.
    pub fn is_theirs(&self) -> bool {
        self.origin == SpliceOrigin::Theirs
    }

    /// Whether the splice still holds its wallet coins.
    pub fn holds_coins(&self) -> bool {
        !self.state.is_final()
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BatchState {
    /// Legs are negotiating; none is signed.
    Negotiating,
    /// Every leg in the batch was signed; waiting for confirmations (and for
    /// any queued move to start).
    Signed,
    /// Every leg is locked.
    Locked,
    /// A leg failed before signing; every leg was cancelled.
    Failed {
        /// The leg that failed.
        leg: usize,
        /// Why.
        reason: String,
    },
    /// Cancelled by the user before signing.
    Cancelled,
}

impl BatchState {
    /// Whether the batch has ended.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            BatchState::Locked | BatchState::Failed { .. } | BatchState::Cancelled
        )
    }
}

impl std::fmt::Display for BatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchState::Negotiating => write!(f, "negotiating"),
            BatchState::Signed => write!(f, "signed"),
            BatchState::Locked => write!(f, "locked"),
            BatchState::Failed { leg, reason } => write!(f, "failed at leg {leg}: {reason}"),
            BatchState::Cancelled => write!(f, "cancelled"),
        }
    }
}
