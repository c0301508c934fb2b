//! The one error type of the splice API.

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, Network};
use lightning::ln::types::ChannelId;

use crate::ids::{BatchId, SpliceId};
use crate::record::SpliceState;
use crate::wallet::WalletError;

/// Why a splice request was refused or could not go on. Every variant that
/// comes from checking a request is returned before anything is reserved in
/// the wallet or sent to the peer.
#[derive(Debug)]
#[non_exhaustive]
pub enum SpliceError {
    /// The amount is zero.
    ZeroAmount,
    /// The amount is below the dust limit of the output that would carry it.
    DustAmount {
        /// What was asked for.
        amount: Amount,
        /// The smallest amount the output can carry.
        dust_limit: Amount,
    },
    /// A splice-out larger than the channel lets us take out now.
    ExceedsSpliceOutMaximum {
        /// What was asked for, fees included.
        requested: Amount,
        /// `ChannelDetails::next_splice_out_maximum_sat`.
        maximum: Amount,
    },
    /// The wallet's confirmed, unreserved coins do not cover the request.
    InsufficientFunds {
        /// What is needed, fees included where known.
        needed: Amount,
        /// What the wallet can spend.
        available: Amount,
    },
    /// The destination address is for another network.
    WrongNetwork {
        /// The address as given.
        address: String,
        /// The network the node runs on.
        expected: Network,
    },
    /// We have no channel with this id and counterparty.
    UnknownChannel(ChannelId),
    /// The channel is not open yet, or is closing.
    ChannelNotReady(ChannelId),
    /// The counterparty is not connected.
    PeerDisconnected(PublicKey),
    /// The counterparty does not support splicing (or quiescence).
    PeerWithoutSpliceSupport(PublicKey),
    /// A splice is already under way on this channel.
    SpliceInFlight {
        /// The channel.
        channel_id: ChannelId,
        /// Our splice on it, if the one in flight is ours.
        existing: Option<SpliceId>,
    },
    /// The feerate the fee policy gives is above its cap.
    FeeRateTooHigh {
        /// The feerate the policy came to.
        feerate: FeeRate,
        /// The cap.
        max_feerate: FeeRate,
    },
    /// The fee the splice would pay is above the policy's cap.
    FeeTooHigh {
        /// Our share of the fee.
        fee: Amount,
        /// The cap.
        max_fee: Amount,
    },
    /// The request itself is malformed (no outputs, a value overflow, ...).
    InvalidRequest(String),
    /// No splice with this id.
    UnknownSplice(SpliceId),
    /// The splice is past the point where it can be cancelled.
    NotCancellable {
        /// The splice.
        id: SpliceId,
        /// Where it stands.
        state: SpliceState,
    },
    /// One leg of a batch is wrong; nothing of the batch was started.
    BatchLeg {
        /// The leg's position in the plan.
        leg: usize,
        /// What is wrong with it.
        error: Box<SpliceError>,
    },
    /// No batch with this id.
    UnknownBatch(BatchId),
    /// LDK refused the splice.
    Lightning(String),
    /// The wallet failed.
    Wallet(WalletError),
    /// The journal (or the wallet's state) could not be written; what the
    /// write was for was not done.
    Persistence(String),
    /// A fee bump's feerate is below the least LDK accepts for it now: 25/24
    /// of the previous candidate's and at least 25 sat/kwu more.
    BumpFeeRateTooLow {
        /// The feerate asked for.
        feerate: FeeRate,
        /// The least a bump may pay now.
        min_feerate: FeeRate,
    },
    /// The splice has had many candidates: a further bump must pay at least
    /// the current fee estimate.
    TooManyCandidates {
        /// Its candidates so far.
        candidates: usize,
        /// The least a bump may pay now.
        min_feerate: FeeRate,
    },
    /// The channel is zero-conf: its splices cannot be replaced.
    ZeroConfChannel(ChannelId),
    /// A batch has more legs that add wallet funds than the wallet has
    /// confirmed, unreserved coins: LDK funds each splice from confirmed
    /// coins of its own, so each such leg needs at least one.
    TooFewCoins {
        /// The legs adding wallet funds.
        legs: usize,
        /// The wallet's confirmed, unreserved coins.
        coins: usize,
    },
    /// The splice cannot be bumped.
    NothingToBump {
        /// The splice.
        id: SpliceId,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for SpliceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpliceError::ZeroAmount => write!(f, "the amount must be greater than zero"),
            SpliceError::DustAmount { amount, dust_limit } => write!(
                f,
                "{} sat is below the dust limit of {} sat",
                amount.to_sat(),
                dust_limit.to_sat()
            ),
            SpliceError::ExceedsSpliceOutMaximum { requested, maximum } => write!(
                f,
                "cannot take {} sat out of the channel: at most {} sat can be spliced out now",
                requested.to_sat(),
                maximum.to_sat()
            ),
            SpliceError::InsufficientFunds { needed, available } => write!(
                f,
                "the wallet has {} sat confirmed and unreserved, the splice needs {} sat",
                available.to_sat(),
                needed.to_sat()
            ),
            SpliceError::WrongNetwork { address, expected } => {
                write!(f, "address {address} is not a {expected} address")
            }
            SpliceError::UnknownChannel(id) => write!(f, "no channel {id} with that peer"),
            SpliceError::ChannelNotReady(id) => {
                write!(f, "channel {id} is not ready (still opening, or closing)")
            }
            SpliceError::PeerDisconnected(peer) => write!(f, "peer {peer} is not connected"),
            SpliceError::PeerWithoutSpliceSupport(peer) => {
                write!(f, "peer {peer} does not support splicing")
            }
            SpliceError::SpliceInFlight {
                channel_id,
                existing: Some(id),
            } => write!(f, "channel {channel_id} already has splice {id} in flight"),
            SpliceError::SpliceInFlight { channel_id, .. } => {
                write!(f, "channel {channel_id} already has a splice in flight")
            }
            SpliceError::FeeRateTooHigh {
                feerate,
                max_feerate,
            } => write!(
                f,
                "feerate {} sat/kwu is above the cap of {} sat/kwu",
                feerate.to_sat_per_kwu(),
                max_feerate.to_sat_per_kwu()
            ),
            SpliceError::FeeTooHigh { fee, max_fee } => write!(
                f,
                "the splice would pay {} sat in fees, above the cap of {} sat",
                fee.to_sat(),
                max_fee.to_sat()
            ),
            SpliceError::InvalidRequest(why) => write!(f, "invalid splice request: {why}"),
            SpliceError::UnknownSplice(id) => write!(f, "no splice {id}"),
            SpliceError::NotCancellable { id, state } => {
                write!(f, "splice {id} is {state} and can no longer be cancelled")
            }
            SpliceError::BatchLeg { leg, error } => write!(f, "batch leg {leg}: {error}"),
            SpliceError::UnknownBatch(id) => write!(f, "no batch {id}"),
            SpliceError::Lightning(why) => write!(f, "LDK refused the splice: {why}"),
            SpliceError::Wallet(e) => write!(f, "{e}"),
            SpliceError::Persistence(e) => write!(f, "could not write the splice journal: {e}"),
            SpliceError::BumpFeeRateTooLow {
                feerate,
                min_feerate,
            } => write!(
                f,
                "a fee bump must pay at least {} sat/kwu ({:.2} sat/vB); {} sat/kwu asked",
                min_feerate.to_sat_per_kwu(),
                min_feerate.to_sat_per_kwu() as f64 / 250.0,
                feerate.to_sat_per_kwu()
            ),
            SpliceError::TooManyCandidates {
                candidates,
                min_feerate,
            } => write!(
                f,
                "the splice has {candidates} candidates already: a further bump must pay at \
                 least the current estimate of {} sat/kwu",
                min_feerate.to_sat_per_kwu()
            ),
            SpliceError::ZeroConfChannel(id) => write!(
                f,
                "channel {id} is zero-conf: its splices cannot be replaced by fee bumps"
            ),
            SpliceError::TooFewCoins { legs, coins } => write!(
                f,
                "the batch has {legs} legs that add wallet funds, and LDK funds each from \
                 confirmed coins of its own, but the wallet has {coins} confirmed, unreserved \
                 coin{}: split a coin first (Node::prepare_coins_for_batch), or splice into \
                 fewer channels at once",
                if *coins == 1 { "" } else { "s" }
            ),
            SpliceError::NothingToBump { id, reason } => {
                write!(f, "splice {id} cannot be bumped: {reason}")
            }
        }
    }
}

impl std::error::Error for SpliceError {}

impl From<WalletError> for SpliceError {
    fn from(e: WalletError) -> Self {
        match e {
            WalletError::InsufficientFunds { needed, available } => {
                SpliceError::InsufficientFunds { needed, available }
            }
            e => SpliceError::Wallet(e),
        }
    }
}
