//! Requests: splice-in, splice-out, resize, quotes and cancel; and starting
//! the legs of a batch, for the batch layer.
//!
//! The order of every start is the same: check everything, build the
//! contribution (its coins locked in the wallet in memory), write the
//! wallet's locks, write the record (as `Negotiating`), and only then hand the
//! contribution to LDK. A failure before LDK leaves nothing behind.

use std::ops::Deref;
use std::sync::Arc;

use bitcoin::address::NetworkUnchecked;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, Amount, OutPoint};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::funding::FundingContribution;
use lightning::ln::types::ChannelId;

use super::{SpliceCoordinator, State, Update};
use crate::error::SpliceError;
use crate::fees::{FeePolicy, SpliceQuote};
use crate::ids::{BatchId, ChannelRef, SpliceId};
use crate::journal::Change;
use crate::record::SpliceState;
use crate::wallet::{CoinPool, SpliceCoinSource};

pub(crate) use super::planning::{Plan, PlanMode};

/// Where a splice-out sends its funds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An address; checked against the node's network.
    Address(Address<NetworkUnchecked>),
    /// A fresh address of our own wallet.
    Wallet,
}

/// One payment out of the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    /// Where it goes.
    pub to: Destination,
    /// How much.
    pub amount: Amount,
}

/// A splice that adds wallet funds and pays channel funds out, in one
/// transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResizeRequest {
    /// Wallet funds to add to the channel.
    pub add: Amount,
    /// Channel funds to pay out.
    pub outputs: Vec<Payout>,
}

impl ResizeRequest {
    /// Adds `amount` from the wallet.
    pub fn splice_in(amount: Amount) -> Self {
        ResizeRequest {
            add: amount,
            outputs: Vec::new(),
        }
    }

    /// Pays `amount` out of the channel to `to`.
    pub fn splice_out(amount: Amount, to: Destination) -> Self {
        ResizeRequest {
            add: Amount::ZERO,
            outputs: vec![Payout { to, amount }],
        }
    }
}

/// One leg of a batch to start: a checked plan and its fee policy.
pub(crate) struct LegStart {
    pub(crate) plan: Plan,
    pub(crate) fee: FeePolicy,
    /// When the wallet cannot fund it now, leave it out (a move's
    /// splice-in, which waits for its splice-out) instead of failing.
    pub(crate) may_wait: bool,
}

/// What became of a leg [`SpliceCoordinator::start_legs`] was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegOutcome {
    /// Started as this splice.
    Started(SpliceId),
    /// Not started: the wallet cannot fund it now.
    Waiting,
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Adds `amount` from the wallet to the channel.
    pub fn splice_in(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        self.resize(
            channel_id,
            counterparty,
            ResizeRequest::splice_in(amount),
            fee,
        )
    }

    /// Pays `amount` out of the channel to `to`; the fee comes out of the
    /// channel balance too.
    pub fn splice_out(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        to: Destination,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        self.resize(
            channel_id,
            counterparty,
            ResizeRequest::splice_out(amount, to),
            fee,
        )
    }

    /// Adds wallet funds and pays channel funds out in one splice. When
    /// `add` is non-zero the wallet pays the fee; otherwise the channel does.
    pub fn resize(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        request: ResizeRequest,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        let channel = ChannelRef {
            channel_id: *channel_id,
            counterparty: *counterparty,
        };
        let result = {
            let mut state = self.lock();
            let pool = Arc::new(CoinPool::default());
            self.plan(&state, channel, &request, &fee, PlanMode::Execute, &pool)
                .and_then(|plan| {
                    let legs = vec![LegStart {
                        plan,
                        fee,
                        may_wait: false,
                    }];
                    self.start(&mut state, None, legs, |_| Ok(None), |_, _| Ok(None))
                        .map_err(|(_, e)| e)
                })
                .and_then(|outcomes| match outcomes.first() {
                    Some(LegOutcome::Started(id)) => Ok(*id),
                    _ => Err(SpliceError::InvalidRequest(
                        "the splice did not start".into(),
                    )),
                })
        };
        self.deliver();
        result
    }

    /// What [`SpliceCoordinator::resize`] would do, without locking or
    /// sending anything.
    pub fn quote_splice(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        request: &ResizeRequest,
        fee: FeePolicy,
    ) -> Result<SpliceQuote, SpliceError> {
        let pool = Arc::new(CoinPool::default());
        let plan = {
            let state = self.lock();
            self.plan(
                &state,
                ChannelRef {
                    channel_id: *channel_id,
                    counterparty: *counterparty,
                },
                request,
                &fee,
                PlanMode::Quote,
                &pool,
            )?
        };
        self.quote_plan(
            &plan,
            &fee,
            &SpliceCoinSource::with_pool(&*self.wallet, false, &pool),
        )
    }

    /// [`SpliceCoordinator::quote_splice`] for a splice-in.
    pub fn quote_splice_in(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        fee: FeePolicy,
    ) -> Result<SpliceQuote, SpliceError> {
        self.quote_splice(
            channel_id,
            counterparty,
            &ResizeRequest::splice_in(amount),
            fee,
        )
    }

    /// [`SpliceCoordinator::quote_splice`] for a splice-out.
    pub fn quote_splice_out(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        to: Destination,
        fee: FeePolicy,
    ) -> Result<SpliceQuote, SpliceError> {
        self.quote_splice(
            channel_id,
            counterparty,
            &ResizeRequest::splice_out(amount, to),
            fee,
        )
    }

    /// Cancels a splice of ours that has not been signed yet, and frees its
    /// coins. A signed splice is `NotCancellable`; so is one LDK still
    /// negotiates but refuses to cancel. A leg of a batch is cancelled with
    /// its batch.
    pub fn cancel_splice(&self, id: SpliceId) -> Result<(), SpliceError> {
        let result = {
            let mut state = self.lock();
            self.cancel_locked(&mut state, id)
        };
        self.deliver();
        result
    }

    fn cancel_locked(&self, state: &mut State, id: SpliceId) -> Result<(), SpliceError> {
        let record = state
            .records
            .get(&id)
            .cloned()
            .ok_or(SpliceError::UnknownSplice(id))?;
        if record.state.is_final() || record.state.is_signed() || record.is_theirs() {
            return Err(SpliceError::NotCancellable {
                id,
                state: record.state,
            });
        }
        if let Some(batch) = record.batch {
            return Err(SpliceError::InvalidRequest(format!(
                "{id} is a leg of {batch}: cancel the batch"
            )));
        }
        let cancelled = self
            .channel_manager
            .get_cm()
            .cancel_funding_contributed(&record.channel_id, &record.counterparty);
        if let Err(e) = cancelled {
            // An error means "not cancelled", unless LDK has no trace of
            // the splice at all (it failed, or never started).
            if self.ldk_has_our_contribution(&record.channel_id, &record.counterparty) {
                log::info!("{id}: LDK would not cancel it: {e:?}");
                return Err(SpliceError::NotCancellable {
                    id,
                    state: record.state,
                });
            }
            log::info!("{id}: LDK had nothing to cancel ({e:?}); ending it");
        }
        self.step(state, id, SpliceState::Cancelled, |_| {})?;
        self.release_coins(state, id);
        Ok(())
    }

    /// Starts `legs` together: builds every contribution with coins picked
    /// jointly (no coin twice), writes the wallet's locks, writes every
    /// record (`Negotiating`, having passed `Requested`) in one write with
    /// the document `batch_doc` gives for the outcomes, then hands each
    /// contribution to LDK. If LDK
    /// refuses one, the legs already handed over are cancelled and every
    /// leg ends `Failed`, written with `failed_doc`'s document. The error
    /// names the position of the leg at fault.
    #[allow(clippy::type_complexity)]
    pub(crate) fn start(
        &self,
        state: &mut State,
        batch: Option<(BatchId, bool)>,
        legs: Vec<LegStart>,
        batch_doc: impl Fn(&[LegOutcome]) -> Result<Option<Change>, SpliceError>,
        failed_doc: impl Fn(usize, &SpliceError) -> Result<Option<Change>, SpliceError>,
    ) -> Result<Vec<LegOutcome>, (usize, SpliceError)> {
        let pool = Arc::new(CoinPool::default());
        let source = SpliceCoinSource::with_pool(&*self.wallet, true, &pool);
        let unlock_picked = || self.unlock_written(&pool.picked());
        let mut outcomes = Vec::with_capacity(legs.len());
        let mut built: Vec<(usize, FundingContribution)> = Vec::new();
        let mut updates = Vec::new();
        let mut next_id = state.next_id;
        for (index, leg) in legs.iter().enumerate() {
            let channel_id = leg.plan.channel.channel_id;
            if state.unmanaged.contains(&channel_id) {
                unlock_picked();
                return Err((
                    index,
                    SpliceError::InvalidRequest(format!(
                        "channel {channel_id} is left to the application \
                         (manage_channel hands it back)"
                    )),
                ));
            }
            let template = match self.channel_manager.get_cm().splice_channel(
                &leg.plan.channel.channel_id,
                &leg.plan.channel.counterparty.node_id,
            ) {
                Ok(template) => template,
                Err(e) => {
                    unlock_picked();
                    return Err((index, SpliceError::Lightning(format!("{e:?}"))));
                }
            };
            match self.build(template, &leg.plan, &leg.fee, &source) {
                Ok(contribution) => {
                    let id = SpliceId(next_id);
                    next_id += 1;
                    let mut record = self.new_record(id, &leg.plan, &leg.fee, &contribution);
                    if let Some((batch, together)) = batch {
                        record.batch = Some(batch);
                        record.sign_with_batch = together;
                        record.auto_bump = None;
                    }
                    // Written as handed to LDK, which the next lines do
                    // under the same lock: if LDK refuses, the leg is
                    // written `Failed`; after a crash in between, LDK has
                    // no trace of it and recovery ends it, as it ends any
                    // negotiation LDK lost.
                    record.state = SpliceState::Negotiating;
                    updates.push(Update {
                        record,
                        passed: vec![SpliceState::Requested],
                        events: Vec::new(),
                    });
                    outcomes.push(LegOutcome::Started(id));
                    built.push((index, contribution));
                }
                Err(SpliceError::InsufficientFunds { .. }) if leg.may_wait => {
                    outcomes.push(LegOutcome::Waiting);
                }
                Err(e) => {
                    unlock_picked();
                    return Err((index, e));
                }
            }
        }
        // Ids are used up even if what follows fails: a write that errs may
        // still have landed, and an id must never name two splices.
        state.next_id = state.next_id.max(next_id);
        let picked = pool.picked();
        if let Err(e) = self.wallet.save() {
            unlock_picked();
            return Err((0, SpliceError::Persistence(e.to_string())));
        }
        let extra = match batch_doc(&outcomes) {
            Ok(doc) => doc.into_iter().collect(),
            Err(e) => {
                self.unlock_written(&picked);
                return Err((0, e));
            }
        };
        if let Err(e) = self.write(state, updates, extra) {
            self.unlock_written(&picked);
            return Err((0, e));
        }

        let mut contributed: Vec<SpliceId> = Vec::new();
        for (index, contribution) in built {
            let LegOutcome::Started(id) = outcomes[index] else {
                continue;
            };
            let Some(record) = state.records.get(&id).cloned() else {
                continue;
            };
            if let Err(e) = self.channel_manager.get_cm().funding_contributed(
                &record.channel_id,
                &record.counterparty,
                contribution,
                None,
            ) {
                let error = SpliceError::Lightning(e.to_string());
                self.abandon_started(state, &contributed, &outcomes, index, &error, &failed_doc);
                return Err((index, error));
            }
            contributed.push(id);
            log::info!(
                "{id}: splicing channel {}: +{} sat, {} outputs, fee {} sat",
                record.channel_id,
                record.add.to_sat(),
                record.outputs.len(),
                record.fee.to_sat()
            );
        }
        Ok(outcomes)
    }

    /// LDK refused leg `failed`: cancels the legs it took before, ends every
    /// started leg `Failed` in one write, then frees their coins.
    fn abandon_started(
        &self,
        state: &mut State,
        contributed: &[SpliceId],
        outcomes: &[LegOutcome],
        failed: usize,
        error: &SpliceError,
        failed_doc: &impl Fn(usize, &SpliceError) -> Result<Option<Change>, SpliceError>,
    ) {
        for id in contributed {
            if let Some(record) = state.records.get(id) {
                let _ = self
                    .channel_manager
                    .get_cm()
                    .cancel_funding_contributed(&record.channel_id, &record.counterparty);
            }
        }
        let ids: Vec<SpliceId> = outcomes
            .iter()
            .filter_map(|o| match o {
                LegOutcome::Started(id) => Some(*id),
                LegOutcome::Waiting => None,
            })
            .collect();
        let refused = match outcomes.get(failed) {
            Some(LegOutcome::Started(id)) => Some(*id),
            _ => None,
        };
        let updates: Vec<Update> = ids
            .iter()
            .filter_map(|id| state.records.get(id).cloned())
            .map(|mut record| {
                record.state = SpliceState::Failed {
                    reason: if Some(record.id) == refused {
                        format!("LDK refused the splice: {error}")
                    } else {
                        "another splice started with it was refused".to_string()
                    },
                };
                Update::new(record)
            })
            .collect();
        let extra = failed_doc(failed, error)
            .map(|d| d.into_iter().collect())
            .unwrap_or_default();
        match self.write(state, updates, extra) {
            Ok(()) => {
                for id in ids {
                    self.release_coins(state, id);
                }
            }
            // The records stay as written; the next tick finds LDK has
            // nothing for them and ends them then.
            Err(e) => log::error!("could not journal the refused splices: {e}"),
        }
    }

    /// Undoes locks that were written, when the record was not.
    fn unlock_written(&self, picked: &[OutPoint]) {
        if let Err(e) = self.wallet.unlock_coins(picked, crate::wallet::COORDINATOR) {
            log::warn!("coins freed, but the wallet could not write it: {e}");
        }
    }

    // ---- the batch layer's interface --------------------------------------

    /// Checks a leg (see [`SpliceCoordinator::plan`]).
    pub(crate) fn plan_leg(
        &self,
        channel: ChannelRef,
        request: &ResizeRequest,
        fee: &FeePolicy,
        mode: PlanMode,
        pool: &CoinPool,
    ) -> Result<Plan, SpliceError> {
        let state = self.lock();
        self.plan(&state, channel, request, fee, mode, pool)
    }

    /// Starts the legs of `batch` (see [`SpliceCoordinator::start`]);
    /// `together` says whether they are signed together.
    #[allow(clippy::type_complexity)]
    pub(crate) fn start_legs(
        &self,
        batch: BatchId,
        together: bool,
        legs: Vec<LegStart>,
        batch_doc: impl Fn(&[LegOutcome]) -> Result<Option<Change>, SpliceError>,
        failed_doc: impl Fn(usize, &SpliceError) -> Result<Option<Change>, SpliceError>,
    ) -> Result<Vec<LegOutcome>, (usize, SpliceError)> {
        let mut state = self.lock();
        self.start(
            &mut state,
            Some((batch, together)),
            legs,
            batch_doc,
            failed_doc,
        )
    }

    /// Which channels can carry a splice now (open, peer connected).
    pub(crate) fn usable_channels(&self) -> std::collections::HashMap<ChannelId, bool> {
        self.channel_manager
            .get_cm()
            .list_channels()
            .into_iter()
            .map(|c| (c.channel_id, c.is_usable))
            .collect()
    }

    /// The feerate `fee` gives now.
    pub(crate) fn feerate(&self, fee: &FeePolicy) -> Result<bitcoin::FeeRate, SpliceError> {
        fee.feerate(
            &*self.fee_estimator,
            self.config.funding_fee_estimator.as_deref(),
        )
    }

    /// Whether LDK holds a contribution of ours on the channel (queued,
    /// negotiating, or negotiated).
    pub(crate) fn ldk_has_our_contribution(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
    ) -> bool {
        self.channel_manager
            .get_cm()
            .list_channels_with_counterparty(counterparty)
            .into_iter()
            .find(|c| c.channel_id == *channel_id)
            .and_then(|c| c.splice_details)
            .is_some_and(|d| d.candidates.iter().any(|c| c.contribution.is_some()))
    }
}
