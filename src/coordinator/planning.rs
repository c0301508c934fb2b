//! Checking a request and building LDK's contribution for it: the
//! channel, the amounts, the destinations, the fee policy, the coins.

use std::ops::Deref;

use bitcoin::{Amount, FeeRate, ScriptBuf, TxOut};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channel_state::{ChannelDetails, ChannelShutdownState};
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::funding::{FundingContribution, FundingContributionError};

use super::request::{Destination, ResizeRequest};
use super::{SpliceCoordinator, State};
use crate::error::SpliceError;
use crate::fees::{FeePolicy, SpliceQuote};
use crate::ids::{ChannelRef, SpliceId};
use crate::record::{SpliceOrigin, SpliceOutput, SpliceRecord, SpliceState};
use crate::wallet::{CoinPool, SpliceCoinSource};
use crate::weights;

/// What a request is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlanMode {
    /// To run it now: everything, and wallet addresses are handed out.
    Execute,
    /// To quote it: everything, but no address is used up.
    Quote,
    /// A splice-in funded later (a queued move): everything but the funds.
    Unfunded,
}

/// A checked request, ready to be built into an LDK contribution.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) channel: ChannelDetails,
    pub(crate) add: Amount,
    pub(crate) outputs: Vec<TxOut>,
    pub(crate) feerate: FeeRate,
}

/// Amounts a request may name: at most all the bitcoin there is, and sums
/// that do not overflow.
pub(crate) fn check_amounts(request: &ResizeRequest) -> Result<(), SpliceError> {
    let too_much = |field: &str, amount: Amount| {
        SpliceError::InvalidRequest(format!(
            "{field}: {} sat is more than 21 million bitcoin",
            amount.to_sat()
        ))
    };
    if request.add > Amount::MAX_MONEY {
        return Err(too_much("add", request.add));
    }
    let mut total = request.add;
    for (i, payout) in request.outputs.iter().enumerate() {
        if payout.amount > Amount::MAX_MONEY {
            return Err(too_much(&format!("outputs[{i}].amount"), payout.amount));
        }
        total = total
            .checked_add(payout.amount)
            .filter(|t| *t <= Amount::MAX_MONEY)
            .ok_or_else(|| {
                SpliceError::InvalidRequest(
                    "outputs: the amounts add up to more than 21 million bitcoin".into(),
                )
            })?;
    }
    Ok(())
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Checks a request against the channel, the wallet and the fee policy.
    pub(crate) fn plan(
        &self,
        state: &State,
        channel: ChannelRef,
        request: &ResizeRequest,
        fee: &FeePolicy,
        mode: PlanMode,
        pool: &CoinPool,
    ) -> Result<Plan, SpliceError> {
        let (channel_id, counterparty) = (&channel.channel_id, &channel.counterparty);
        fee.validate()?;
        check_amounts(request)?;
        if request.add == Amount::ZERO && request.outputs.is_empty() {
            return Err(SpliceError::ZeroAmount);
        }
        let funding_dust = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
            bitcoin::hashes::Hash::all_zeros(),
        ))
        .minimal_non_dust();
        if request.add > Amount::ZERO && request.add < funding_dust {
            return Err(SpliceError::DustAmount {
                amount: request.add,
                dust_limit: funding_dust,
            });
        }
        let mut outputs = Vec::with_capacity(request.outputs.len());
        for payout in &request.outputs {
            if payout.amount == Amount::ZERO {
                return Err(SpliceError::ZeroAmount);
            }
            let script = self.destination_script(&payout.to, mode != PlanMode::Execute)?;
            let dust_limit = script.minimal_non_dust();
            if payout.amount < dust_limit {
                return Err(SpliceError::DustAmount {
                    amount: payout.amount,
                    dust_limit,
                });
            }
            outputs.push(TxOut {
                value: payout.amount,
                script_pubkey: script,
            });
        }

        let channel = self
            .channel_manager
            .get_cm()
            .list_channels_with_counterparty(counterparty)
            .into_iter()
            .find(|c| c.channel_id == *channel_id)
            .ok_or(SpliceError::UnknownChannel(*channel_id))?;
        let shutting_down = channel
            .channel_shutdown_state
            .is_some_and(|s| s != ChannelShutdownState::NotShuttingDown);
        if !channel.is_channel_ready || shutting_down {
            return Err(SpliceError::ChannelNotReady(*channel_id));
        }
        if !channel.is_usable {
            return Err(SpliceError::PeerDisconnected(*counterparty));
        }
        let features = &channel.counterparty.features;
        if !features.supports_splicing() || !features.supports_quiescence() {
            return Err(SpliceError::PeerWithoutSpliceSupport(*counterparty));
        }
        if let Some(existing) = Self::active_on(state, channel_id) {
            return Err(SpliceError::SpliceInFlight {
                channel_id: *channel_id,
                existing: Some(existing.id),
            });
        }
        if channel
            .splice_details
            .as_ref()
            .is_some_and(|d| !d.candidates.is_empty())
        {
            return Err(SpliceError::SpliceInFlight {
                channel_id: *channel_id,
                existing: None,
            });
        }

        let paid_out: Amount = outputs.iter().map(|o| o.value).sum();
        let maximum = Amount::from_sat(channel.next_splice_out_maximum_sat);
        if paid_out > maximum {
            return Err(SpliceError::ExceedsSpliceOutMaximum {
                requested: paid_out,
                maximum,
            });
        }
        let feerate = self.feerate(fee)?;
        if request.add > Amount::ZERO && mode != PlanMode::Unfunded {
            let available = pool.available(&*self.wallet);
            if request.add > available {
                return Err(SpliceError::InsufficientFunds {
                    needed: request.add,
                    available,
                });
            }
        }
        Ok(Plan {
            channel,
            add: request.add,
            outputs,
            feerate,
        })
    }

    fn destination_script(
        &self,
        to: &Destination,
        quote_only: bool,
    ) -> Result<ScriptBuf, SpliceError> {
        match to {
            Destination::Address(address) => {
                let text = address.assume_checked_ref().to_string();
                let checked = address
                    .clone()
                    .require_network(self.config.network)
                    .map_err(|_| SpliceError::WrongNetwork {
                        address: text,
                        expected: self.config.network,
                    })?;
                Ok(checked.script_pubkey())
            }
            // A quote only needs the script's size: do not use up an address.
            Destination::Wallet if quote_only => Ok(ScriptBuf::new_p2wpkh(
                &bitcoin::WPubkeyHash::from_raw_hash(bitcoin::hashes::Hash::all_zeros()),
            )),
            Destination::Wallet => Ok(self.wallet.payout_script()?),
        }
    }

    /// Builds LDK's contribution with coins from `source` (which locks
    /// what it picks when it is a locking source).
    pub(crate) fn build(
        &self,
        template: lightning::ln::funding::FundingTemplate,
        plan: &Plan,
        fee: &FeePolicy,
        source: &SpliceCoinSource<'_>,
    ) -> Result<FundingContribution, SpliceError> {
        let paid_out: Amount = plan.outputs.iter().map(|o| o.value).sum();
        let result = if plan.add == Amount::ZERO {
            // Fees come out of the channel.
            template.splice_out(plan.outputs.clone(), plan.feerate, fee.max_feerate)
        } else if plan.outputs.is_empty() {
            template.splice_in_sync(plan.add, plan.feerate, fee.max_feerate, source)
        } else if plan.add > paid_out {
            // The wallet adds `add` and pays the fee; part of what it adds
            // funds the outputs directly, the rest grows the channel.
            template
                .without_prior_contribution(plan.feerate, fee.max_feerate)
                .with_coin_selection_source_sync(source)
                .add_value(plan.add - paid_out)
                .map(|builder| builder.add_outputs(plan.outputs.clone()))
                .and_then(|builder| builder.build())
        } else {
            // The channel shrinks: LDK cannot add a negative value, so pick
            // the wallet's coins here and hand them over with an explicit
            // change output that leaves exactly `add` plus the fee in.
            self.select_for_shrinking_resize(plan, source)
                .and_then(|(inputs, change)| {
                    let mut outputs = plan.outputs.clone();
                    outputs.extend(change);
                    template
                        .without_prior_contribution(plan.feerate, fee.max_feerate)
                        .add_inputs(inputs)
                        .map(|builder| builder.add_outputs(outputs))
                        .and_then(|builder| builder.build())
                })
        };
        let contribution = result.map_err(|e| match source.take_failure() {
            Some(failure) => SpliceError::Persistence(failure.to_string()),
            None => self.contribution_error(e, plan),
        })?;
        fee.check_fee(contribution.estimated_fee())?;
        if contribution.net_value().is_negative() {
            let taken = contribution.net_value().unsigned_abs();
            let maximum = Amount::from_sat(plan.channel.next_splice_out_maximum_sat);
            if taken > maximum {
                return Err(SpliceError::ExceedsSpliceOutMaximum {
                    requested: taken,
                    maximum,
                });
            }
        }
        Ok(contribution)
    }

    /// Coins covering `plan.add` and our whole fee for a resize whose
    /// outputs exceed what it adds, with the change that makes the
    /// contribution come out at exactly `add - outputs`. The selection is
    /// asked for the transaction as LDK will count it: the old funding input,
    /// the new funding output, our outputs.
    fn select_for_shrinking_resize(
        &self,
        plan: &Plan,
        source: &SpliceCoinSource<'_>,
    ) -> Result<
        (
            Vec<lightning::util::wallet_utils::ConfirmedUtxo>,
            Option<TxOut>,
        ),
        FundingContributionError,
    > {
        use lightning::util::wallet_utils::{CoinSelectionSourceSync, Input};
        let funding_script = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
            bitcoin::hashes::Hash::all_zeros(),
        ));
        let capacity = Amount::from_sat(plan.channel.channel_value_satoshis);
        let funding_outpoint = plan
            .channel
            .funding_txo
            .map(|o| o.into_bitcoin_outpoint())
            .ok_or(FundingContributionError::InvalidSpliceValue)?;
        let old_funding = Input {
            outpoint: funding_outpoint,
            previous_utxo: TxOut {
                value: capacity,
                script_pubkey: funding_script.clone(),
            },
            satisfaction_weight: (weights::EMPTY_SCRIPT_SIG + weights::FUNDING_WITNESS).to_wu(),
        };
        let paid_out: Amount = plan.outputs.iter().map(|o| o.value).sum();
        // Values only need to make the target come out at `add`.
        let new_funding_value = (capacity + plan.add)
            .checked_sub(paid_out)
            .ok_or(FundingContributionError::InvalidSpliceValue)?;
        let mut must_pay_to = vec![TxOut {
            value: new_funding_value,
            script_pubkey: funding_script,
        }];
        must_pay_to.extend(plan.outputs.iter().cloned());
        let selection = source
            .select_confirmed_utxos(
                None,
                vec![old_funding],
                &must_pay_to,
                u32::try_from(plan.feerate.to_sat_per_kwu())
                    .map_err(|_| FundingContributionError::InvalidSpliceValue)?,
                u64::MAX,
            )
            .map_err(|()| FundingContributionError::CoinSelectionFailed)?;
        Ok((selection.confirmed_utxos, selection.change_output))
    }

    fn contribution_error(&self, e: FundingContributionError, plan: &Plan) -> SpliceError {
        match e {
            FundingContributionError::CoinSelectionFailed => SpliceError::InsufficientFunds {
                needed: plan.add + estimated_fee(plan, 1),
                available: crate::wallet::available_balance(&*self.wallet),
            },
            FundingContributionError::FeeRateExceedsMaximum {
                feerate,
                max_feerate,
            } => SpliceError::FeeRateTooHigh {
                feerate,
                max_feerate,
            },
            FundingContributionError::InvalidSpliceValue => {
                let paid_out: Amount = plan.outputs.iter().map(|o| o.value).sum();
                SpliceError::ExceedsSpliceOutMaximum {
                    requested: paid_out + estimated_fee(plan, 0),
                    maximum: Amount::from_sat(plan.channel.next_splice_out_maximum_sat),
                }
            }
            // Only a pending splice makes LDK ask for an RBF feerate: the
            // counterparty's got there between our check and the template.
            FundingContributionError::FeeRateBelowRbfMinimum { .. } => {
                SpliceError::SpliceInFlight {
                    channel_id: plan.channel.channel_id,
                    existing: None,
                }
            }
            e => SpliceError::Lightning(e.to_string()),
        }
    }

    /// A new record for splice `id` of `plan`, as `contribution` builds it.
    pub(crate) fn new_record(
        &self,
        id: SpliceId,
        plan: &Plan,
        fee: &FeePolicy,
        contribution: &FundingContribution,
    ) -> SpliceRecord {
        let now = crate::ids::now_in_seconds();
        SpliceRecord {
            id,
            channel_id: plan.channel.channel_id,
            counterparty: plan.channel.counterparty.node_id,
            origin: SpliceOrigin::Ours,
            state: SpliceState::Requested,
            add: plan.add,
            outputs: plan.outputs.iter().map(SpliceOutput::from).collect(),
            feerate: plan.feerate,
            fee: contribution.estimated_fee(),
            max_fee: fee.max_fee,
            max_feerate: fee.max_feerate,
            inputs: contribution.inputs().iter().map(|i| i.outpoint()).collect(),
            change: change_of(contribution, &plan.outputs),
            capacity_before: Amount::from_sat(plan.channel.channel_value_satoshis),
            net_value: contribution.net_value(),
            txid: None,
            candidates: Vec::new(),
            confirmation_height: None,
            batch: None,
            sign_with_batch: false,
            bump: None,
            auto_bump: self
                .config
                .auto_bump
                .map(|policy| crate::record::AutoBumpState {
                    policy,
                    start_feerate: plan.feerate,
                    start_height: None,
                    last_bump_height: None,
                    stopped: None,
                }),
            created_at: now,
            updated_at: now,
        }
    }

    /// Quotes a checked plan with coins from `source`.
    pub(crate) fn quote_plan(
        &self,
        plan: &Plan,
        fee: &FeePolicy,
        source: &SpliceCoinSource<'_>,
    ) -> Result<SpliceQuote, SpliceError> {
        let template = self
            .channel_manager
            .get_cm()
            .splice_channel(&plan.channel.channel_id, &plan.channel.counterparty.node_id)
            .map_err(|e| SpliceError::Lightning(format!("{e:?}")))?;
        let contribution = self.build(template, plan, fee, source)?;
        let net_value = contribution.net_value();
        let capacity_before = Amount::from_sat(plan.channel.channel_value_satoshis);
        let capacity_after = capacity_before
            .to_signed()
            .ok()
            .and_then(|c| c.checked_add(net_value))
            .and_then(|c| c.to_unsigned().ok())
            .ok_or_else(|| SpliceError::InvalidRequest("capacity out of range".into()))?;
        Ok(SpliceQuote {
            feerate: plan.feerate,
            fee: contribution.estimated_fee(),
            weight: contribution_weight(&contribution),
            inputs: contribution.inputs().iter().map(|i| i.outpoint()).collect(),
            change: contribution.change_output().map(|c| c.value),
            capacity_before,
            capacity_after,
            net_value,
        })
    }
}

/// The change a contribution pays back to the wallet: its change output, or
/// (for a shrinking resize) the output beyond those `requested`.
pub(crate) fn change_of(
    contribution: &FundingContribution,
    requested: &[TxOut],
) -> Option<SpliceOutput> {
    contribution
        .change_output()
        .or_else(|| {
            contribution
                .outputs()
                .iter()
                .find(|o| !requested.contains(o))
        })
        .map(|c| SpliceOutput {
            script_pubkey: c.script_pubkey.clone(),
            value: c.value,
        })
}

/// Our fee for `plan` as the splice initiator with `inputs` wallet inputs
/// and a change output when there are inputs: for error messages, where no
/// contribution exists to ask.
pub(crate) fn estimated_fee(plan: &Plan, inputs: u64) -> Amount {
    let input = weights::BASE_INPUT + weights::EMPTY_SCRIPT_SIG + weights::P2WPKH_WITNESS;
    let change = if inputs > 0 {
        bitcoin::Weight::from_wu((8 + 1 + 22) * 4)
    } else {
        bitcoin::Weight::ZERO
    };
    let outputs: bitcoin::Weight = plan.outputs.iter().map(|o| o.weight()).sum();
    let weight = weights::initiator_shared() + input * inputs + change + outputs;
    plan.feerate.fee_wu(weight).unwrap_or(Amount::MAX_MONEY)
}

/// The weight of the transaction as far as our contribution builds it:
/// our inputs and outputs, plus the shared parts when we initiate.
pub(crate) fn contribution_weight(contribution: &FundingContribution) -> bitcoin::Weight {
    let inputs: u64 = contribution
        .inputs()
        .iter()
        .map(|_| {
            // Low-R signatures: one byte under the P2WPKH witness maximum.
            (weights::BASE_INPUT + weights::EMPTY_SCRIPT_SIG + weights::P2WPKH_WITNESS).to_wu() - 1
        })
        .sum();
    let outputs: u64 = contribution
        .outputs()
        .iter()
        .chain(contribution.change_output())
        .map(|o| o.weight().to_wu())
        .sum();
    bitcoin::Weight::from_wu(inputs + outputs) + weights::initiator_shared()
}
