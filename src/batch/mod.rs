//! Multi-channel batches: validate every leg, negotiate all at once, sign
//! all or none.
//!
//! LDK negotiates one funding transaction per channel, so a batch over N
//! channels is N transactions, signed together: no leg is signed until every
//! leg is ready to sign, and if any leg fails first, every other leg is
//! cancelled and every coin released. After signing each transaction
//! confirms on its own.
//!
//! Batches sit above the coordinator and drive it through its narrow
//! batch interface (plan a leg, start legs, sign legs, abort legs); the
//! coordinator tells them about their legs through notices.

mod driver;
mod execute;

pub use execute::BatchCoordinator;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, Weight};
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

use crate::coordinator::{Destination, ResizeRequest};
use crate::error::SpliceError;
use crate::fees::FeePolicy;
use crate::ids::SpliceId;
pub use crate::ids::{BatchId, ChannelRef};
pub use crate::record::BatchState;

/// One step of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leg {
    /// Add wallet funds to a channel.
    SpliceIn {
        /// The channel.
        channel: ChannelRef,
        /// How much.
        amount: Amount,
    },
    /// Pay channel funds out.
    SpliceOut {
        /// The channel.
        channel: ChannelRef,
        /// How much.
        amount: Amount,
        /// Where to.
        to: Destination,
    },
    /// Move liquidity: splice `amount` out of `from` to our wallet and into
    /// `to`. When the wallet's confirmed, unreserved coins cover the
    /// splice-in, both run in the batch; otherwise the splice-in waits and
    /// starts by itself once the splice-out's output confirms.
    Move {
        /// The channel giving.
        from: ChannelRef,
        /// The channel receiving.
        to: ChannelRef,
        /// How much.
        amount: Amount,
    },
}

/// A batch of splices over several channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// The legs, each channel in at most one.
    pub legs: Vec<Leg>,
    /// The fee policy for every leg.
    pub fee: FeePolicy,
    /// How long the legs may take to all be ready to sign before the batch
    /// is cancelled.
    pub deadline: Duration,
}

impl BatchPlan {
    /// The default time for every leg to be ready to sign: 60 s.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
    /// The longest deadline a plan may set: a day. (LDK disconnects a peer
    /// that keeps a channel quiescent for long; a batch that cannot get
    /// ready in a day will not.)
    pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

    /// An empty plan with `fee` and the default deadline.
    pub fn new(fee: FeePolicy) -> Self {
        BatchPlan {
            legs: Vec::new(),
            fee,
            deadline: Self::DEFAULT_DEADLINE,
        }
    }

    /// Adds a leg.
    pub fn leg(mut self, leg: Leg) -> Self {
        self.legs.push(leg);
        self
    }

    /// Sets the deadline for reaching signatures.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

/// What one splice of a batch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegRole {
    /// A splice-in leg.
    SpliceIn,
    /// A splice-out leg.
    SpliceOut,
    /// The splice-out half of a move.
    MoveOut,
    /// The splice-in half of a move.
    MoveIn,
}

/// One splice of a batch (a move has two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchPart {
    /// The plan leg it comes from.
    pub leg: usize,
    /// What it does.
    pub role: LegRole,
    /// Its channel.
    #[serde(with = "crate::ids::channel_id_hex")]
    pub channel_id: ChannelId,
    /// The channel's counterparty.
    pub counterparty: PublicKey,
    /// How much it moves.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub amount: Amount,
    /// Its splice, once started.
    pub splice: Option<SpliceId>,
    /// A move's splice-in waiting for the splice-out's output to confirm.
    pub queued: bool,
}

/// A batch and its legs. It serializes (for display) with amounts in sat,
/// feerates in sat/kwu and times in Unix seconds; the journal stores it in
/// a private, versioned form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BatchRecord {
    /// Its id.
    pub id: BatchId,
    /// Where it stands.
    #[serde(flatten)]
    pub state: BatchState,
    /// Its splices.
    pub parts: Vec<BatchPart>,
    /// The fee policy's feerate cap (queued legs use it).
    #[serde(rename = "max_feerate_sat_per_kwu")]
    pub max_feerate: FeeRate,
    /// The fee policy's fee cap (queued legs use it).
    #[serde(rename = "max_fee_sat", with = "bitcoin::amount::serde::as_sat")]
    pub max_fee: Amount,
    /// The feerate every leg uses.
    #[serde(rename = "feerate_sat_per_kwu")]
    pub feerate: FeeRate,
    /// When every leg must be ready to sign by.
    #[serde(with = "crate::ids::unix_seconds")]
    pub deadline: SystemTime,
    /// When it was requested.
    #[serde(with = "crate::ids::unix_seconds")]
    pub created_at: SystemTime,
}

/// One leg's share of a batch quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LegQuote {
    /// The plan leg.
    pub leg: usize,
    /// What this splice does.
    pub role: LegRole,
    /// Its fee.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fee: Amount,
    /// Its transaction's weight.
    #[serde(rename = "weight_wu")]
    pub weight: Weight,
    /// Wallet coins it would spend.
    pub inputs: Vec<bitcoin::OutPoint>,
    /// Whether it would wait for a splice-out to confirm first.
    pub queued: bool,
}

/// What a batch would cost, worked out without reserving or sending
/// anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchQuote {
    /// Every splice of the batch.
    pub legs: Vec<LegQuote>,
    /// All fees.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub total_fee: Amount,
    /// The weight of all the batch's transactions (one per channel).
    #[serde(rename = "total_weight_wu")]
    pub total_weight: Weight,
    /// What one transaction carrying the whole batch would weigh, for
    /// comparison: LDK negotiates one transaction per channel, so the batch
    /// pays for the common fields (and a change output) once per channel.
    #[serde(rename = "single_tx_weight_wu")]
    pub single_tx_weight: Weight,
}

/// A plan leg broken into splices, before anything is started.
pub(crate) struct Part {
    leg: usize,
    pub(crate) role: LegRole,
    channel: ChannelRef,
    amount: Amount,
    request: ResizeRequest,
}

fn expand(plan: &BatchPlan) -> Result<Vec<Part>, SpliceError> {
    if plan.legs.is_empty() {
        return Err(SpliceError::InvalidRequest("the batch has no legs".into()));
    }
    let mut parts = Vec::new();
    let mut seen: HashMap<ChannelId, usize> = HashMap::new();
    for (leg, step) in plan.legs.iter().enumerate() {
        let mut claim = |channel: &ChannelRef| match seen.insert(channel.channel_id, leg) {
            Some(other) => Err(SpliceError::BatchLeg {
                leg,
                error: Box::new(SpliceError::InvalidRequest(format!(
                    "channel {} is already in leg {other}",
                    channel.channel_id
                ))),
            }),
            None => Ok(()),
        };
        match step {
            Leg::SpliceIn { channel, amount } => {
                claim(channel)?;
                parts.push(Part {
                    leg,
                    role: LegRole::SpliceIn,
                    channel: *channel,
                    amount: *amount,
                    request: ResizeRequest::splice_in(*amount),
                });
            }
            Leg::SpliceOut {
                channel,
                amount,
                to,
            } => {
                claim(channel)?;
                parts.push(Part {
                    leg,
                    role: LegRole::SpliceOut,
                    channel: *channel,
                    amount: *amount,
                    request: ResizeRequest::splice_out(*amount, to.clone()),
                });
            }
            Leg::Move { from, to, amount } => {
                claim(from)?;
                claim(to)?;
                parts.push(Part {
                    leg,
                    role: LegRole::MoveOut,
                    channel: *from,
                    amount: *amount,
                    request: ResizeRequest::splice_out(*amount, Destination::Wallet),
                });
                parts.push(Part {
                    leg,
                    role: LegRole::MoveIn,
                    channel: *to,
                    amount: *amount,
                    request: ResizeRequest::splice_in(*amount),
                });
            }
        }
    }
    Ok(parts)
}

fn leg_error(leg: usize) -> impl Fn(SpliceError) -> SpliceError {
    move |error| SpliceError::BatchLeg {
        leg,
        error: Box::new(error),
    }
}

/// Parts in the order their coins are selected: everything but the
/// splice-ins of moves first, so a move waits rather than starving a leg
/// that has no other source of funds.
fn funding_order(parts: &[Part]) -> Vec<&Part> {
    let mut ordered: Vec<&Part> = parts.iter().filter(|p| p.role != LegRole::MoveIn).collect();
    ordered.extend(parts.iter().filter(|p| p.role == LegRole::MoveIn));
    ordered
}

/// Distinguishes the two splices of a move in a map keyed by part.
fn part_key(part: &Part) -> usize {
    part.leg * 2 + usize::from(part.role == LegRole::MoveIn)
}

fn weight_for_fee(fee: Amount, feerate: bitcoin::FeeRate) -> Weight {
    let rate = feerate.to_sat_per_kwu().max(1);
    Weight::from_wu(fee.to_sat().saturating_mul(1000) / rate)
}
