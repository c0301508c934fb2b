//! Fee bumps (RBF) of our broadcast splices: the same amount and
//! destinations, a higher fee, paid the way the splice pays (the wallet for
//! a splice-in or resize, the channel for a splice-out).
//!
//! LDK builds the replacement from the splice's prior contribution
//! (`FundingTemplate::rbf_prior_contribution_sync`) and enforces the rules:
//! a feerate at least 25/24 of the previous and 25 sat/kwu more, after ten
//! candidates at least the current estimate, never on a zero-conf channel,
//! never once a candidate has confirmed. We check them first, so each comes
//! back as its own error with the number the caller needs.
//!
//! The bump is written into the record ([`FeeBump`]) before LDK is asked;
//! its transaction, once negotiated, becomes a new candidate of the same
//! splice (signed through the same check as any candidate), and the record
//! locks on whichever candidate confirms.

use std::ops::Deref;
use std::sync::Arc;

use bitcoin::{Amount, FeeRate, OutPoint, TxOut};
use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::funding::{FundingContribution, FundingContributionError};

use super::{SpliceCoordinator, State, Update};
use crate::error::SpliceError;
use crate::fees::FeePolicy;
use crate::ids::{BatchId, SpliceId};
use crate::record::{AutoBump, AutoBumpState, FeeBump, SpliceRecord, SpliceState};
use crate::wallet::{CoinPool, SpliceCoinSource};

/// LDK's limit: after this many candidates a bump must pay at least the
/// current estimate.
pub const MAX_LOW_FEERATE_CANDIDATES: usize = 10;

/// What a fee bump of a splice would do, from
/// [`SpliceCoordinator::quote_bump_fee`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BumpQuote {
    /// The splice.
    pub id: SpliceId,
    /// The feerate the bump would pay.
    pub feerate: FeeRate,
    /// The least feerate a bump may pay now.
    pub min_feerate: FeeRate,
    /// Our share of the replacement's fee.
    pub fee: Amount,
    /// Our share of the fee of the newest candidate now.
    pub previous_fee: Amount,
    /// What the bump costs on top of the newest candidate.
    pub extra_fee: Amount,
    /// The weight our share of the replacement has (with the shared parts
    /// we pay for as its initiator).
    pub weight: bitcoin::Weight,
    /// Whether the wallet must add a coin to pay for it.
    pub adds_inputs: bool,
    /// The candidates the splice has now.
    pub candidates: usize,
}

/// A bump built but not yet handed to LDK.
struct Prepared {
    record: SpliceRecord,
    contribution: FundingContribution,
    quote: BumpQuote,
    new_inputs: Vec<OutPoint>,
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// What [`SpliceCoordinator::bump_fee`] would do, without locking or
    /// sending anything.
    pub fn quote_bump_fee(&self, id: SpliceId, fee: FeePolicy) -> Result<BumpQuote, SpliceError> {
        let pool = Arc::new(CoinPool::default());
        let state = self.lock();
        let source = SpliceCoinSource::with_pool(&*self.wallet, false, &pool);
        self.prepare_bump(&state, id, &fee, &source, false)
            .map(|prepared| prepared.quote)
    }

    /// Replaces broadcast splice `id` with a transaction paying a higher
    /// fee (`fee` gives the feerate and the caps), keeping its amount and
    /// destinations. Returns the same id: the splice gains a candidate, and
    /// locks on whichever of its candidates confirms. Its coins stay locked
    /// until then.
    pub fn bump_fee(&self, id: SpliceId, fee: FeePolicy) -> Result<SpliceId, SpliceError> {
        let result = {
            let mut state = self.lock();
            self.bump_locked(&mut state, id, &fee)
        };
        self.deliver();
        result.map(|()| id)
    }

    pub(crate) fn bump_locked(
        &self,
        state: &mut State,
        id: SpliceId,
        fee: &FeePolicy,
    ) -> Result<(), SpliceError> {
        self.start_bumps(state, &[(0, id)], fee, None)
            .map_err(|(_, e)| e)
    }

    /// Bumps the unconfirmed legs among `legs` (plan position, splice) of
    /// `batch` together: all are checked and built first (coins picked
    /// jointly), then journaled in one write, then handed to LDK; none is
    /// signed until every one is ready to sign. An error names the leg, and
    /// nothing was started.
    pub(crate) fn bump_legs(
        &self,
        batch: BatchId,
        legs: &[(usize, SpliceId)],
        fee: &FeePolicy,
    ) -> Result<(), SpliceError> {
        let result = {
            let mut state = self.lock();
            let live: Vec<(usize, SpliceId)> = legs
                .iter()
                .copied()
                .filter(|(_, id)| {
                    state
                        .records
                        .get(id)
                        .is_some_and(|r| r.state == SpliceState::Broadcast)
                })
                .collect();
            match legs.first() {
                None => Err(SpliceError::InvalidRequest(format!("{batch} has no legs"))),
                Some((_, first)) if live.is_empty() => Err(SpliceError::NothingToBump {
                    id: *first,
                    reason: format!("no leg of {batch} is broadcast and unconfirmed"),
                }),
                Some(_) => self
                    .start_bumps(&mut state, &live, fee, Some(batch))
                    .map_err(|(leg, error)| SpliceError::BatchLeg {
                        leg,
                        error: Box::new(error),
                    }),
            }
        };
        self.deliver();
        result
    }

    fn start_bumps(
        &self,
        state: &mut State,
        legs: &[(usize, SpliceId)],
        fee: &FeePolicy,
        group: Option<BatchId>,
    ) -> Result<(), (usize, SpliceError)> {
        let pool = Arc::new(CoinPool::default());
        let source = SpliceCoinSource::with_pool(&*self.wallet, true, &pool);
        let unlock_picked = || {
            if let Err(e) = self
                .wallet
                .unlock_coins(&pool.picked(), crate::wallet::COORDINATOR)
            {
                log::warn!("coins freed, but the wallet could not write it: {e}");
            }
        };
        let mut built = Vec::with_capacity(legs.len());
        for (leg, id) in legs {
            match self.prepare_bump(state, *id, fee, &source, group.is_some()) {
                Ok(prepared) => built.push(prepared),
                Err(e) => {
                    unlock_picked();
                    return Err((*leg, e));
                }
            }
        }
        let first_leg = legs.first().map_or(0, |(leg, _)| *leg);
        if let Err(e) = self.wallet.save() {
            unlock_picked();
            return Err((first_leg, SpliceError::Persistence(e.to_string())));
        }
        let started_at = std::time::SystemTime::now();
        let mut updates = Vec::with_capacity(built.len());
        let mut handed = Vec::with_capacity(built.len());
        for prepared in built {
            let Prepared {
                mut record,
                contribution,
                quote,
                new_inputs,
            } = prepared;
            record.bump = Some(FeeBump {
                feerate: quote.feerate,
                fee: quote.fee,
                added_inputs: new_inputs.clone(),
                candidates_before: record.candidates.len(),
                batch: group,
                started_at,
            });
            record.inputs.extend(new_inputs);
            record.max_fee = fee.max_fee;
            record.max_feerate = fee.max_feerate.max(quote.feerate);
            let requested: Vec<TxOut> = record.outputs.iter().map(TxOut::from).collect();
            if let Some(change) = super::planning::change_of(&contribution, &requested) {
                record.change = Some(change);
            }
            handed.push((
                record.id,
                record.channel_id,
                record.counterparty,
                contribution,
                quote,
            ));
            updates.push(Update::new(record));
        }
        if let Err(e) = self.write(state, updates, Vec::new()) {
            unlock_picked();
            return Err((first_leg, e));
        }
        let mut contributed: Vec<SpliceId> = Vec::new();
        for (position, (id, channel_id, counterparty, contribution, quote)) in
            handed.into_iter().enumerate()
        {
            if let Err(e) = self.channel_manager.get_cm().funding_contributed(
                &channel_id,
                &counterparty,
                contribution,
                None,
            ) {
                log::warn!("{id}: LDK refused the fee bump: {e}");
                // Back out of every bump of the group.
                for earlier in &contributed {
                    if let Some(r) = state.records.get(earlier) {
                        let _ = self
                            .channel_manager
                            .get_cm()
                            .cancel_funding_contributed(&r.channel_id, &r.counterparty);
                    }
                }
                for (_, other) in legs {
                    self.drop_bump(state, *other, "LDK refused a bump of the group");
                }
                let leg = legs.get(position).map_or(first_leg, |(leg, _)| *leg);
                return Err((leg, SpliceError::Lightning(e.to_string())));
            }
            contributed.push(id);
            log::info!(
                "{id}: bumping the fee to {} sat/kwu: {} sat (was {} sat)",
                quote.feerate.to_sat_per_kwu(),
                quote.fee.to_sat(),
                quote.previous_fee.to_sat()
            );
        }
        Ok(())
    }

    /// Clears the fee bump of `id` (its round failed or never started),
    /// freeing the coins only it had added.
    pub(crate) fn drop_bump(&self, state: &mut State, id: SpliceId, why: &str) {
        let Some(record) = state.records.get(&id).cloned() else {
            return;
        };
        let Some(bump) = &record.bump else {
            return;
        };
        // Once a transaction of the bump was signed its coins stay with the
        // splice (that transaction may still confirm); otherwise they go.
        let added = if record.candidates.len() > bump.candidates_before {
            Vec::new()
        } else {
            bump.added_inputs.clone()
        };
        let mut updated = record.clone();
        updated.bump = None;
        updated.inputs.retain(|o| !added.contains(o));
        let dropped = crate::events::SpliceEvent::FeeBumpDropped {
            id,
            reason: why.to_string(),
        };
        match self.write(
            state,
            vec![Update::new(updated).with_event(dropped)],
            Vec::new(),
        ) {
            Ok(()) => {
                log::info!("{id}: fee bump dropped: {why}");
                let free: Vec<OutPoint> = added
                    .into_iter()
                    .filter(|o| !Self::held_by_live(state, o))
                    .collect();
                if !free.is_empty() {
                    if let Err(e) = self.wallet.unlock_coins(&free, crate::wallet::COORDINATOR) {
                        log::warn!("{id}: coins freed, but the wallet could not write it: {e}");
                    }
                }
            }
            Err(e) => log::error!("{id}: could not journal the dropped fee bump: {e}"),
        }
    }

    /// Checks that `id` can be bumped under `fee` and builds the bump.
    fn prepare_bump(
        &self,
        state: &State,
        id: SpliceId,
        fee: &FeePolicy,
        source: &SpliceCoinSource<'_>,
        in_batch: bool,
    ) -> Result<Prepared, SpliceError> {
        let record = state
            .records
            .get(&id)
            .cloned()
            .ok_or(SpliceError::UnknownSplice(id))?;
        let nothing = |reason: &str| SpliceError::NothingToBump {
            id,
            reason: reason.to_string(),
        };
        if record.is_theirs() {
            return Err(nothing(
                "the counterparty started it; only they can bump it",
            ));
        }
        if let (Some(batch), false) = (record.batch, in_batch) {
            return Err(SpliceError::InvalidRequest(format!(
                "{id} is a leg of {batch}: bump the batch"
            )));
        }
        let cm = self.channel_manager.get_cm();
        let channel = cm
            .list_channels_with_counterparty(&record.counterparty)
            .into_iter()
            .find(|c| c.channel_id == record.channel_id);
        if channel
            .as_ref()
            .is_some_and(|c| c.confirmations_required == Some(0))
        {
            return Err(SpliceError::ZeroConfChannel(record.channel_id));
        }
        match &record.state {
            SpliceState::Broadcast => {}
            SpliceState::Confirmed { .. } | SpliceState::Locked | SpliceState::Closed => {
                return Err(nothing("a transaction of it has confirmed"))
            }
            s if s.is_final() => return Err(nothing("it has ended")),
            _ => return Err(nothing("it is not broadcast yet")),
        }
        if record.bump.is_some() {
            return Err(nothing("a fee bump of it is under way"));
        }
        let channel = channel.ok_or(SpliceError::UnknownChannel(record.channel_id))?;
        if !channel.is_usable {
            return Err(SpliceError::PeerDisconnected(record.counterparty));
        }
        let template = cm
            .splice_channel(&record.channel_id, &record.counterparty)
            .map_err(|e| SpliceError::Lightning(format!("{e:?}")))?;
        let min_feerate = template
            .min_rbf_feerate()
            .ok_or_else(|| nothing("LDK has no candidate of it that can be replaced"))?;
        let feerate = self.feerate(fee)?;
        if feerate < min_feerate {
            return Err(SpliceError::BumpFeeRateTooLow {
                feerate,
                min_feerate,
            });
        }
        let candidates = record.candidates.len();
        if candidates > MAX_LOW_FEERATE_CANDIDATES {
            let estimate = FeeRate::from_sat_per_kwu(u64::from(
                self.fee_estimator
                    .get_est_sat_per_1000_weight(ConfirmationTarget::NonAnchorChannelFee),
            ));
            if feerate < estimate {
                return Err(SpliceError::TooManyCandidates {
                    candidates,
                    min_feerate: estimate,
                });
            }
        }
        let max_feerate = fee.max_feerate.max(feerate);
        let contribution = template
            .rbf_prior_contribution_sync(Some(feerate), max_feerate, source)
            .map_err(|e| match e {
                FundingContributionError::FeeRateBelowRbfMinimum { .. } => {
                    SpliceError::BumpFeeRateTooLow {
                        feerate,
                        min_feerate,
                    }
                }
                FundingContributionError::NotRbfScenario => {
                    nothing("LDK holds no contribution of ours to replace")
                }
                e => SpliceError::Lightning(e.to_string()),
            })?;
        let new_fee = contribution.estimated_fee();
        if new_fee > fee.max_fee {
            return Err(SpliceError::FeeTooHigh {
                fee: new_fee,
                max_fee: fee.max_fee,
            });
        }
        // The replacement keeps the splice's coins (so its earlier
        // candidates stay valid to sign against) and may add some.
        let inputs: Vec<OutPoint> = contribution.inputs().iter().map(|i| i.outpoint()).collect();
        if let Some(missing) = record.inputs.iter().find(|o| !inputs.contains(o)) {
            return Err(SpliceError::InvalidRequest(format!(
                "LDK would build the bump without our coin {missing}; bumping a splice onto \
                 other coins is not supported"
            )));
        }
        for wanted in &record.outputs {
            let txout = TxOut::from(wanted);
            if !contribution.outputs().contains(&txout) {
                return Err(SpliceError::InvalidRequest(format!(
                    "LDK would build the bump without the output of {} sat to {}",
                    wanted.value.to_sat(),
                    wanted.script_pubkey
                )));
            }
        }
        let new_inputs: Vec<OutPoint> = inputs
            .into_iter()
            .filter(|o| !record.inputs.contains(o))
            .collect();
        let previous_fee = record.fee;
        let quote = BumpQuote {
            id,
            feerate,
            min_feerate,
            fee: new_fee,
            previous_fee,
            extra_fee: new_fee.checked_sub(previous_fee).unwrap_or(Amount::ZERO),
            weight: super::planning::contribution_weight(&contribution),
            adds_inputs: !new_inputs.is_empty(),
            candidates,
        };
        Ok(Prepared {
            record,
            contribution,
            quote,
            new_inputs,
        })
    }
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Turns automatic fee bumping on (`Some`) or off (`None`) for splice
    /// `id` of ours (not a batch leg). The schedule starts from the
    /// splice's feerate and its broadcast.
    pub fn set_auto_bump(&self, id: SpliceId, policy: Option<AutoBump>) -> Result<(), SpliceError> {
        let result = {
            let mut state = self.lock();
            let record = state
                .records
                .get(&id)
                .cloned()
                .ok_or(SpliceError::UnknownSplice(id))?;
            if record.is_theirs() || record.state.is_final() {
                return Err(SpliceError::NothingToBump {
                    id,
                    reason: if record.is_theirs() {
                        "the counterparty started it".into()
                    } else {
                        "it has ended".into()
                    },
                });
            }
            if let Some(batch) = record.batch {
                return Err(SpliceError::InvalidRequest(format!(
                    "{id} is a leg of {batch}: bump the batch"
                )));
            }
            let mut updated = record.clone();
            updated.auto_bump = policy.map(|policy| AutoBumpState {
                policy,
                start_feerate: record.feerate,
                start_height: None,
                last_bump_height: None,
                stopped: None,
            });
            self.write(&mut state, vec![Update::new(updated)], Vec::new())
        };
        self.deliver();
        result
    }

    /// Bumps the splices among `live` whose automatic policy says so at
    /// height `tip`:
    /// broadcast, unconfirmed, no bump under way, one bump per block at
    /// most, at the schedule's feerate (or the funding estimate, or LDK's
    /// minimum, if higher), never beyond the budget: a bump that would go
    /// beyond it stops the policy, with an event.
    pub(crate) fn run_auto_bumps(&self, state: &mut State, tip: u32, live: &[SpliceId]) {
        let due: Vec<SpliceRecord> = live
            .iter()
            .filter_map(|id| state.records.get(id))
            .filter(|r| {
                r.state == SpliceState::Broadcast
                    && r.bump.is_none()
                    && r.batch.is_none()
                    && !r.is_theirs()
                    && r.auto_bump.as_ref().is_some_and(|a| a.stopped.is_none())
            })
            .cloned()
            .collect();
        for record in due {
            let id = record.id;
            let Some(auto) = record.auto_bump.clone() else {
                continue;
            };
            let Some(start) = auto.start_height else {
                let mut updated = record.clone();
                if let Some(a) = &mut updated.auto_bump {
                    a.start_height = Some(tip);
                }
                if let Err(e) = self.write(state, vec![Update::new(updated)], Vec::new()) {
                    log::warn!("{id}: could not journal where automatic bumping starts: {e}");
                }
                continue;
            };
            if tip <= auto.last_bump_height.unwrap_or(start) {
                continue;
            }
            if state.auto_tried.get(&id) == Some(&tip) {
                continue;
            }
            state.auto_tried.insert(id, tip);
            let budget = auto.policy;
            let estimate = self
                .feerate(&FeePolicy::funding())
                .unwrap_or(auto.start_feerate);
            let wanted = budget
                .scheduled_feerate(auto.start_feerate, tip - start)
                .max(estimate.min(budget.max_feerate));
            let policy = |feerate: FeeRate| {
                FeePolicy::fixed(feerate)
                    .with_max_feerate(budget.max_feerate)
                    .with_max_fee(budget.max_fee)
            };
            let mut outcome = self.bump_locked(state, id, &policy(wanted));
            if let Err(SpliceError::BumpFeeRateTooLow { min_feerate, .. }) = outcome {
                outcome = if min_feerate <= budget.max_feerate {
                    self.bump_locked(state, id, &policy(min_feerate))
                } else {
                    Err(SpliceError::FeeRateTooHigh {
                        feerate: min_feerate,
                        max_feerate: budget.max_feerate,
                    })
                };
            }
            let stop = match outcome {
                Ok(()) => {
                    log::info!("{id}: automatic fee bump at height {tip}");
                    None
                }
                Err(SpliceError::FeeRateTooHigh {
                    feerate,
                    max_feerate,
                }) => Some(format!(
                    "the next bump needs {} sat/kwu, above the budget's {} sat/kwu",
                    feerate.to_sat_per_kwu(),
                    max_feerate.to_sat_per_kwu()
                )),
                Err(SpliceError::FeeTooHigh { fee, max_fee }) => Some(format!(
                    "the next bump would pay {} sat, above the budget's {} sat",
                    fee.to_sat(),
                    max_fee.to_sat()
                )),
                Err(SpliceError::TooManyCandidates { min_feerate, .. })
                    if min_feerate > budget.max_feerate =>
                {
                    Some(format!(
                        "after {} candidates a bump needs the estimate of {} sat/kwu, above the \
                         budget's {} sat/kwu",
                        record.candidates.len(),
                        min_feerate.to_sat_per_kwu(),
                        budget.max_feerate.to_sat_per_kwu()
                    ))
                }
                Err(e) => {
                    log::debug!("{id}: no automatic bump at height {tip}: {e}");
                    None
                }
            };
            if let Some(reason) = stop {
                self.stop_auto_bump(state, id, reason);
            }
        }
    }

    fn stop_auto_bump(&self, state: &mut State, id: SpliceId, reason: String) {
        let Some(record) = state.records.get(&id).cloned() else {
            return;
        };
        let mut updated = record;
        if let Some(auto) = &mut updated.auto_bump {
            auto.stopped = Some(reason.clone());
        }
        let event = crate::events::SpliceEvent::AutoBumpStopped {
            id,
            reason: reason.clone(),
        };
        match self.write(
            state,
            vec![Update::new(updated).with_event(event)],
            Vec::new(),
        ) {
            Ok(()) => log::warn!("{id}: automatic fee bumping stopped: {reason}"),
            Err(e) => log::error!("{id}: could not journal that automatic bumping stopped: {e}"),
        }
    }
}
