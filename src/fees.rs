//! Fee policies and quotes.

use bitcoin::{Amount, FeeRate, OutPoint, SignedAmount, Weight};
use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
use serde::{Deserialize, Serialize};

use crate::error::SpliceError;

/// Where a splice's feerate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeeRateSource {
    /// Exactly this feerate.
    Fixed(FeeRate),
    /// Whatever the node's `FeeEstimator` says for this target.
    Estimate(ConfirmationTarget),
    /// The feerate for channel funding and splices: the
    /// [`FundingFeeEstimator`] given to the coordinator
    /// ([`CoordinatorConfig::with_funding_fee_estimator`](crate::CoordinatorConfig::with_funding_fee_estimator)),
    /// or, without one, the `FeeEstimator`'s `NonAnchorChannelFee`. LDK has
    /// no confirmation target of its own for funding transactions.
    Funding,
}

/// The feerate to fund channels and splices at. LDK's `ConfirmationTarget`s
/// cover commitment, close and claim transactions but no funding one; a
/// node gives the coordinator its own estimate (the bundled node asks
/// bitcoind for confirmation within 6 blocks).
pub trait FundingFeeEstimator: Send + Sync {
    /// The feerate for a funding or splice transaction now.
    fn funding_feerate(&self) -> FeeRate;
}

/// How much a splice may pay in fees: a feerate (fixed or estimated),
/// always capped by a maximum feerate and a maximum absolute fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeePolicy {
    /// Where the feerate comes from.
    pub source: FeeRateSource,
    /// Never pay a higher feerate than this, nor accept one as the acceptor
    /// of a splice the peer starts on the same channel.
    pub max_feerate: FeeRate,
    /// Never pay more than this in fees for our share of the transaction.
    pub max_fee: Amount,
}

impl FeePolicy {
    /// Default cap on the feerate: 100 sat/vB.
    pub const DEFAULT_MAX_FEERATE: FeeRate = FeeRate::from_sat_per_kwu(25_000);
    /// Default cap on the fee: 50 000 sat.
    pub const DEFAULT_MAX_FEE: Amount = Amount::from_sat(50_000);
    /// The highest feerate LDK can express (it counts in `u32` sat/kwu);
    /// a policy asking for more is refused, whatever its caps.
    pub const LIMIT_FEERATE: FeeRate = FeeRate::from_sat_per_kwu(u32::MAX as u64);

    /// A fixed feerate with the default caps.
    pub fn fixed(feerate: FeeRate) -> Self {
        FeePolicy {
            source: FeeRateSource::Fixed(feerate),
            max_feerate: Self::DEFAULT_MAX_FEERATE,
            max_fee: Self::DEFAULT_MAX_FEE,
        }
    }

    /// The estimator's feerate for `target`, with the default caps.
    pub fn estimate(target: ConfirmationTarget) -> Self {
        FeePolicy {
            source: FeeRateSource::Estimate(target),
            max_feerate: Self::DEFAULT_MAX_FEERATE,
            max_fee: Self::DEFAULT_MAX_FEE,
        }
    }

    /// The funding feerate ([`FeeRateSource::Funding`]) with the default caps.
    pub fn funding() -> Self {
        FeePolicy {
            source: FeeRateSource::Funding,
            max_feerate: Self::DEFAULT_MAX_FEERATE,
            max_fee: Self::DEFAULT_MAX_FEE,
        }
    }

    /// Sets the feerate cap.
    pub fn with_max_feerate(mut self, max_feerate: FeeRate) -> Self {
        self.max_feerate = max_feerate;
        self
    }

    /// Sets the absolute fee cap.
    pub fn with_max_fee(mut self, max_fee: Amount) -> Self {
        self.max_fee = max_fee;
        self
    }

    /// Checks the policy itself: feerates LDK can express, a fee cap no
    /// larger than all the bitcoin there is.
    pub fn validate(&self) -> Result<(), SpliceError> {
        if let FeeRateSource::Fixed(rate) = self.source {
            if rate > Self::LIMIT_FEERATE {
                return Err(SpliceError::InvalidRequest(format!(
                    "feerate: {} sat/kwu is more than LDK can express ({} sat/kwu)",
                    rate.to_sat_per_kwu(),
                    Self::LIMIT_FEERATE.to_sat_per_kwu()
                )));
            }
        }
        if self.max_feerate > Self::LIMIT_FEERATE {
            return Err(SpliceError::InvalidRequest(format!(
                "max_feerate: {} sat/kwu is more than LDK can express ({} sat/kwu)",
                self.max_feerate.to_sat_per_kwu(),
                Self::LIMIT_FEERATE.to_sat_per_kwu()
            )));
        }
        if self.max_fee > Amount::MAX_MONEY {
            return Err(SpliceError::InvalidRequest(format!(
                "max_fee: {} sat is more than 21 million bitcoin",
                self.max_fee.to_sat()
            )));
        }
        Ok(())
    }

    /// The feerate to use now, checked against the cap. `funding` answers
    /// for [`FeeRateSource::Funding`]; without it the estimator's
    /// `NonAnchorChannelFee` does.
    pub fn feerate<F: FeeEstimator + ?Sized>(
        &self,
        estimator: &F,
        funding: Option<&dyn FundingFeeEstimator>,
    ) -> Result<FeeRate, SpliceError> {
        self.validate()?;
        let estimate = |target| {
            FeeRate::from_sat_per_kwu(u64::from(estimator.get_est_sat_per_1000_weight(target)))
        };
        let feerate = match self.source {
            FeeRateSource::Fixed(rate) => rate,
            FeeRateSource::Estimate(target) => estimate(target),
            FeeRateSource::Funding => match funding {
                Some(funding) => funding.funding_feerate(),
                None => estimate(ConfirmationTarget::NonAnchorChannelFee),
            },
        };
        if feerate > self.max_feerate {
            return Err(SpliceError::FeeRateTooHigh {
                feerate,
                max_feerate: self.max_feerate,
            });
        }
        // LDK's floor: 253 sat/kwu, just above 1 sat/vB.
        Ok(feerate.max(FeeRate::from_sat_per_kwu(253)))
    }

    /// Checks our share of the fee against the cap.
    pub fn check_fee(&self, fee: Amount) -> Result<(), SpliceError> {
        if fee > self.max_fee {
            return Err(SpliceError::FeeTooHigh {
                fee,
                max_fee: self.max_fee,
            });
        }
        Ok(())
    }
}

impl Default for FeePolicy {
    /// The funding feerate ([`FeeRateSource::Funding`]), default caps.
    fn default() -> Self {
        FeePolicy::funding()
    }
}

/// What a splice would cost and do, worked out without reserving or sending
/// anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SpliceQuote {
    /// The feerate used.
    #[serde(rename = "feerate_sat_per_kwu")]
    pub feerate: FeeRate,
    /// Our share of the fee.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fee: Amount,
    /// The weight of the splice transaction, as far as we build it (the
    /// counterparty may add inputs and outputs of its own).
    #[serde(rename = "weight_wu")]
    pub weight: Weight,
    /// Wallet coins it would spend.
    pub inputs: Vec<OutPoint>,
    /// Change back to the wallet.
    #[serde(with = "bitcoin::amount::serde::as_sat::opt")]
    pub change: Option<Amount>,
    /// Channel capacity now.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub capacity_before: Amount,
    /// Channel capacity after the splice.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub capacity_after: Amount,
    /// Our channel balance change (negative for a splice-out).
    #[serde(rename = "net_value_sat", with = "bitcoin::amount::serde::as_sat")]
    pub net_value: SignedAmount,
}
