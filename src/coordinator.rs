//! `SpliceCoordinator`: the one-call splice API, driving LDK's splice
//! primitives and following each splice to lock.

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bitcoin::address::NetworkUnchecked;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, ScriptBuf, Transaction, TxOut};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::events::{Event, FundingInfo, ReplayEvent};
use lightning::ln::channel_state::{ChannelDetails, ChannelShutdownState, SpliceCandidateStatus};
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::funding::{FundingContribution, FundingContributionError};
use lightning::ln::types::ChannelId;

use crate::batch::{BatchBook, BatchId, ChannelRef};
use crate::error::SpliceError;
use crate::events::{EventQueue, SpliceEvent};
use crate::fees::{weights, FeePolicy, SpliceQuote};
use crate::journal::{unix_now, Journal, SpliceId, SpliceOutput, SpliceRecord, SpliceState};
use crate::tracker::ConfirmationTracker;
use crate::wallet::{CoinPool, SharedStore, SpliceWallet};

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

/// Settings of a [`SpliceCoordinator`].
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The network addresses must belong to.
    pub network: Network,
}

/// The splice API of an LDK node. Build it next to the `ChannelManager`,
/// pass every LDK event to [`SpliceCoordinator::handle_event`], and add it to
/// the chain listeners (it implements `chain::Listen`).
pub struct SpliceCoordinator<CM: Deref, F: Deref>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    pub(crate) channel_manager: CM,
    pub(crate) wallet: Arc<SpliceWallet>,
    pub(crate) fee_estimator: F,
    pub(crate) config: CoordinatorConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) events: EventQueue,
}

pub(crate) struct State {
    pub(crate) journal: Journal,
    pub(crate) tracker: ConfirmationTracker,
    pub(crate) batches: BatchBook,
    /// Events of staged transitions, queued when they are written.
    pub(crate) staged_events: Vec<SpliceEvent>,
}

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
pub(crate) struct Plan {
    pub(crate) channel: ChannelDetails,
    pub(crate) add: Amount,
    pub(crate) outputs: Vec<TxOut>,
    pub(crate) feerate: FeeRate,
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Builds the coordinator, loads its journal from `store`, and settles
    /// splices that a restart interrupted: those LDK no longer knows fail
    /// and release their coins; the rest go on.
    pub fn new(
        channel_manager: CM,
        wallet: Arc<SpliceWallet>,
        fee_estimator: F,
        store: SharedStore,
        config: CoordinatorConfig,
    ) -> Result<Self, SpliceError> {
        let journal = Journal::load(store.clone())?;
        let batches = BatchBook::load(store.clone())?;
        let events = EventQueue::load(store);
        let this = SpliceCoordinator {
            channel_manager,
            wallet,
            fee_estimator,
            config,
            state: Mutex::new(State {
                journal,
                tracker: ConfirmationTracker::default(),
                staged_events: Vec::new(),
                batches,
            }),
            events,
        };
        this.reconcile()?;
        Ok(this)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- requests -------------------------------------------------------

    /// Adds `amount` from the wallet to the channel.
    pub fn splice_in(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        let request = ResizeRequest::splice_in(amount);
        self.resize(channel_id, counterparty, request, fee)
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
        let request = ResizeRequest::splice_out(amount, to);
        self.resize(channel_id, counterparty, request, fee)
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
        let mut state = self.lock();
        let pool = Arc::new(CoinPool::default());
        let plan = self.plan(
            &state,
            ChannelRef {
                channel_id: *channel_id,
                counterparty: *counterparty,
            },
            &request,
            &fee,
            PlanMode::Execute,
            &pool,
        )?;
        let id = state.journal.next_id();
        let contribution = self.prepare(&mut state, id, &plan, &fee, None, &pool)?;
        self.contribute(&mut state, id, contribution)?;
        Ok(id)
    }

    /// Builds the contribution for `plan` as splice `id` (reserving its
    /// coins) and journals it as `Requested`. On error nothing stays
    /// reserved or journaled.
    pub(crate) fn prepare(
        &self,
        state: &mut State,
        id: SpliceId,
        plan: &Plan,
        fee: &FeePolicy,
        batch: Option<BatchId>,
        pool: &Arc<CoinPool>,
    ) -> Result<FundingContribution, SpliceError> {
        let template = self
            .channel_manager
            .get_cm()
            .splice_channel(&plan.channel.channel_id, &plan.channel.counterparty.node_id)
            .map_err(|e| SpliceError::Lightning(format!("{e:?}")))?;
        let contribution = match self.build(
            template,
            plan,
            fee,
            &self.wallet.coin_source_in(Some(id), pool),
        ) {
            Ok(contribution) => contribution,
            Err(e) => {
                self.release_quietly(id);
                return Err(e);
            }
        };
        let mut record = self.new_record(id, plan, &contribution);
        record.batch = batch;
        if batch.is_some() {
            // The batch writes all its legs at once before any reaches LDK.
            state.journal.stage(record);
        } else if let Err(e) = state.journal.put(record) {
            self.release_quietly(id);
            return Err(e);
        }
        Ok(contribution)
    }

    /// Hands a prepared contribution to LDK. If LDK refuses it, nothing
    /// reached the peer: the request is forgotten and its coins released.
    pub(crate) fn contribute(
        &self,
        state: &mut State,
        id: SpliceId,
        contribution: FundingContribution,
    ) -> Result<(), SpliceError> {
        let Some(record) = state.journal.get(id).cloned() else {
            return Err(SpliceError::UnknownSplice(id));
        };
        if let Err(e) = self.channel_manager.get_cm().funding_contributed(
            &record.channel_id,
            &record.counterparty,
            contribution,
            None,
        ) {
            self.release_quietly(id);
            if record.batch.is_some() {
                // Already written with its batch: it ends instead.
                let reason = format!("LDK refused the contribution: {e}");
                self.stage_transition(state, id, SpliceState::Failed { reason }, |_| {});
            } else {
                let _ = state.journal.remove(id);
            }
            return Err(SpliceError::Lightning(e.to_string()));
        }
        self.step(state, id, SpliceState::Negotiating, |_| {});
        log::info!(
            "{id}: splicing channel {}: +{} sat, -{} sat out, fee {} sat",
            record.channel_id,
            record.add.to_sat(),
            record.outputs.iter().map(|o| o.value.to_sat()).sum::<u64>(),
            record.fee.to_sat()
        );
        Ok(())
    }

    /// What [`SpliceCoordinator::resize`] would do, without reserving or
    /// sending anything.
    pub fn quote(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        request: &ResizeRequest,
        fee: FeePolicy,
    ) -> Result<SpliceQuote, SpliceError> {
        let state = self.lock();
        let pool = Arc::new(CoinPool::default());
        let plan = self.plan(
            &state,
            ChannelRef {
                channel_id: *channel_id,
                counterparty: *counterparty,
            },
            request,
            &fee,
            PlanMode::Quote,
            &pool,
        )?;
        drop(state);
        self.quote_plan(&plan, &fee, &self.wallet.coin_source_in(None, &pool))
    }

    /// Quotes a checked plan with coins from `source`.
    pub(crate) fn quote_plan(
        &self,
        plan: &Plan,
        fee: &FeePolicy,
        source: &crate::wallet::SpliceCoinSource<'_>,
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
            feerate_sat_per_kwu: plan.feerate.to_sat_per_kwu(),
            fee: contribution.estimated_fee(),
            weight_wu: contribution_weight(&contribution).to_wu(),
            inputs: contribution.inputs().iter().map(|i| i.outpoint()).collect(),
            change: contribution.change_output().map(|c| c.value),
            capacity_before,
            capacity_after,
            net_value_sat: net_value.to_sat(),
        })
    }

    /// [`SpliceCoordinator::quote`] for a splice-in.
    pub fn quote_splice_in(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        fee: FeePolicy,
    ) -> Result<SpliceQuote, SpliceError> {
        let request = ResizeRequest::splice_in(amount);
        self.quote(channel_id, counterparty, &request, fee)
    }

    /// [`SpliceCoordinator::quote`] for a splice-out.
    pub fn quote_splice_out(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        to: Destination,
        fee: FeePolicy,
    ) -> Result<SpliceQuote, SpliceError> {
        let request = ResizeRequest::splice_out(amount, to);
        self.quote(channel_id, counterparty, &request, fee)
    }

    /// Cancels a splice that has not been signed yet and releases its coins.
    pub fn cancel(&self, id: SpliceId) -> Result<(), SpliceError> {
        let mut state = self.lock();
        let record = state
            .journal
            .get(id)
            .cloned()
            .ok_or(SpliceError::UnknownSplice(id))?;
        if record.state.is_final() || record.state.is_broadcast() {
            return Err(SpliceError::NotCancellable {
                id,
                state: record.state,
            });
        }
        if let Some(batch) = record.batch {
            // A leg cannot leave its batch alone: the whole batch goes.
            self.fail_batch(&mut state, batch, crate::batch::BatchState::Cancelled);
            return Ok(());
        }
        match self
            .channel_manager
            .get_cm()
            .cancel_funding_contributed(&record.channel_id, &record.counterparty)
        {
            Ok(()) => {}
            // Already gone on LDK's side (failed or never started): still ours to end.
            Err(e) => log::info!("{id}: LDK had nothing to cancel: {e:?}"),
        }
        self.transition(&mut state, id, SpliceState::Cancelled);
        self.release_quietly(id);
        Ok(())
    }

    // ---- reading ----------------------------------------------------------

    /// The record of splice `id`.
    pub fn status(&self, id: SpliceId) -> Option<SpliceRecord> {
        self.lock().journal.get(id).cloned()
    }

    /// Every splice, oldest first.
    pub fn list(&self) -> Vec<SpliceRecord> {
        self.lock().journal.all().cloned().collect()
    }

    /// The oldest unacknowledged event.
    pub fn next_event(&self) -> Option<SpliceEvent> {
        self.events.next()
    }

    /// Waits up to `timeout` for an event.
    pub fn wait_next_event(&self, timeout: Duration) -> Option<SpliceEvent> {
        self.events.wait_next(timeout)
    }

    /// Acknowledges the event [`SpliceCoordinator::next_event`] returned.
    pub fn event_handled(&self) {
        self.events.handled()
    }

    /// Calls `f` whenever a new event is queued.
    pub fn set_event_notifier(&self, f: Box<dyn Fn() + Send + Sync>) {
        self.events.set_notifier(f)
    }

    // ---- LDK events -------------------------------------------------------

    /// Handles the LDK events that concern splices; ignores the rest.
    /// Returns `ReplayEvent` when it could not record what happened, so LDK
    /// hands the event over again.
    pub fn handle_event(&self, event: &Event) -> Result<(), ReplayEvent> {
        match event {
            Event::FundingTransactionReadyForSigning {
                channel_id,
                unsigned_transaction,
                ..
            } => self.sign(channel_id, unsigned_transaction),
            Event::SpliceNegotiated {
                channel_id,
                new_funding_txo,
                ..
            } => {
                let mut state = self.lock();
                let Some(id) = state.journal.active_on(channel_id).map(|r| r.id) else {
                    return Ok(());
                };
                state.tracker.watch(new_funding_txo.txid);
                // LDK has its own record of the broadcast (a restart
                // recovers it), so batch legs write it together.
                let txid = Some(new_funding_txo.txid);
                self.step(&mut state, id, SpliceState::Broadcast, |r| r.txid = txid);
                let batch = state.journal.get(id).and_then(|r| r.batch);
                if batch.is_some_and(|b| self.batch_broadcast(&state, b)) {
                    self.commit_staged(&mut state);
                }
                Ok(())
            }
            Event::SpliceNegotiationFailed {
                channel_id, reason, ..
            } => {
                let mut state = self.lock();
                if let Some(id) = state.journal.active_on(channel_id).map(|r| r.id) {
                    if !state
                        .journal
                        .get(id)
                        .is_some_and(|r| r.state.is_broadcast())
                    {
                        self.transition(
                            &mut state,
                            id,
                            SpliceState::Failed {
                                reason: reason.to_string(),
                            },
                        );
                        self.release_quietly(id);
                        if let Some(batch) = state.journal.get(id).and_then(|r| r.batch) {
                            self.leg_failed(&mut state, batch, id, &reason.to_string());
                        }
                    }
                }
                Ok(())
            }
            Event::DiscardFunding { funding_info, .. } => {
                let outpoints: Vec<OutPoint> = match funding_info {
                    FundingInfo::Tx { transaction } => transaction
                        .input
                        .iter()
                        .map(|i| i.previous_output)
                        .collect(),
                    FundingInfo::Contribution { inputs, .. } => inputs.clone(),
                    FundingInfo::OutPoint { .. } => Vec::new(),
                };
                // Only coins no live splice holds: a replayed discard must
                // not take coins from a splice that reserved them since.
                let state = self.lock();
                let free: Vec<OutPoint> = outpoints
                    .into_iter()
                    .filter(|outpoint| {
                        self.wallet.holder(outpoint).is_none_or(|holder| {
                            state.journal.get(holder).is_none_or(|r| r.state.is_final())
                        })
                    })
                    .collect();
                self.wallet
                    .release_outpoints(&free)
                    .map_err(|_| ReplayEvent())
            }
            Event::ChannelReady {
                channel_id,
                funding_txo: Some(funding_txo),
                ..
            } => {
                let mut state = self.lock();
                let Some(record) = state.journal.active_on(channel_id).cloned() else {
                    return Ok(());
                };
                if record.txid == Some(funding_txo.txid) {
                    state.tracker.forget(&funding_txo.txid);
                    self.transition(&mut state, record.id, SpliceState::Locked);
                    // The coins are spent by a locked transaction: no longer ours to hold.
                    self.release_quietly(record.id);
                }
                Ok(())
            }
            Event::ChannelClosed {
                channel_id, reason, ..
            } => {
                let mut state = self.lock();
                if let Some(id) = state.journal.active_on(channel_id).map(|r| r.id) {
                    self.transition(
                        &mut state,
                        id,
                        SpliceState::Failed {
                            reason: format!("channel closed: {reason}"),
                        },
                    );
                    // Coins of a broadcast splice stay held until LDK discards them.
                    if state.journal.get(id).is_none_or(|r| r.txid.is_none()) {
                        self.release_quietly(id);
                    }
                    if let Some(batch) = state.journal.get(id).and_then(|r| r.batch) {
                        self.leg_failed(
                            &mut state,
                            batch,
                            id,
                            &format!("channel closed: {reason}"),
                        );
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn sign(&self, channel_id: &ChannelId, unsigned: &Transaction) -> Result<(), ReplayEvent> {
        let mut state = self.lock();
        let Some(record) = state.journal.active_on(channel_id).cloned() else {
            log::warn!("asked to sign a funding transaction on {channel_id} we did not ask for");
            return Ok(());
        };
        // LDK may have adjusted our contribution (acceptor fees, RBF): take its view.
        let contribution = self.current_contribution(&record, unsigned);
        let update = |r: &mut SpliceRecord| {
            if let Some(contribution) = contribution {
                r.fee = contribution.estimated_fee();
                r.inputs = contribution.inputs().iter().map(|i| i.outpoint()).collect();
                let requested: Vec<TxOut> = r.outputs.iter().map(TxOut::from).collect();
                r.change = change_of(&contribution, &requested);
                r.net_value_sat = contribution.net_value().to_sat();
            }
        };
        // A batch leg is only held until every leg is ready, and the batch
        // writes them all before it signs any.
        self.step(
            &mut state,
            record.id,
            SpliceState::AwaitingSignatures,
            update,
        );
        let record = state.journal.get(record.id).cloned().unwrap_or(record);
        if let Some(batch) = record.batch {
            // Batch legs are signed together once every leg is ready.
            self.hold_for_batch(&mut state, batch, record.id, unsigned.clone());
            return Ok(());
        }
        if let Err(why) = self.sign_now(&mut state, &record, unsigned) {
            self.refuse(&mut state, &record, &why);
        }
        Ok(())
    }

    /// Checks and signs our inputs of `unsigned` and hands them to LDK.
    pub(crate) fn sign_now(
        &self,
        _state: &mut State,
        record: &SpliceRecord,
        unsigned: &Transaction,
    ) -> Result<(), String> {
        self.check_negotiated(record, unsigned)?;
        let tx = self
            .wallet
            .sign_inputs(unsigned.clone(), &record.inputs)
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.channel_manager.get_cm().funding_transaction_signed(
            &record.channel_id,
            &record.counterparty,
            tx,
        ) {
            log::warn!("{}: LDK refused our signatures: {e:?}", record.id);
        }
        Ok(())
    }

    /// Backs out of a splice before signing: LDK drops the contribution, the
    /// record fails with `why`, the coins are freed.
    pub(crate) fn refuse(&self, state: &mut State, record: &SpliceRecord, why: &str) {
        log::error!("{}: not signing: {why}", record.id);
        let _ = self
            .channel_manager
            .get_cm()
            .cancel_funding_contributed(&record.channel_id, &record.counterparty);
        self.transition(
            state,
            record.id,
            SpliceState::Failed {
                reason: why.to_string(),
            },
        );
        self.release_quietly(record.id);
    }

    /// The negotiated transaction must spend exactly the wallet coins we
    /// contributed and pay every output we asked for.
    pub(crate) fn check_negotiated(
        &self,
        record: &SpliceRecord,
        tx: &Transaction,
    ) -> Result<(), String> {
        for input in &tx.input {
            let outpoint = input.previous_output;
            if self.wallet.owns_outpoint(&outpoint) && !record.inputs.contains(&outpoint) {
                return Err(format!(
                    "it spends wallet coin {outpoint} we did not contribute"
                ));
            }
        }
        for outpoint in &record.inputs {
            if !tx.input.iter().any(|i| i.previous_output == *outpoint) {
                return Err(format!("it leaves out our input {outpoint}"));
            }
        }
        let mut unmatched: Vec<&TxOut> = tx.output.iter().collect();
        for wanted in &record.outputs {
            let position = unmatched
                .iter()
                .position(|o| o.script_pubkey == wanted.script_pubkey && o.value == wanted.value);
            match position {
                Some(i) => {
                    unmatched.swap_remove(i);
                }
                None => {
                    return Err(format!(
                        "it does not pay {} sat to {}",
                        wanted.value.to_sat(),
                        wanted.script_pubkey
                    ))
                }
            }
        }
        Ok(())
    }

    fn current_contribution(
        &self,
        record: &SpliceRecord,
        unsigned: &Transaction,
    ) -> Option<FundingContribution> {
        let txid = unsigned.compute_txid();
        // Only this peer's channels: listing every channel for every leg of
        // a batch would cost O(N^2).
        let channel = self
            .channel_manager
            .get_cm()
            .list_channels_with_counterparty(&record.counterparty)
            .into_iter()
            .find(|c| c.channel_id == record.channel_id)?;
        channel
            .splice_details?
            .candidates
            .into_iter()
            .find(|c| matches!(c.status, SpliceCandidateStatus::AwaitingSignatures { txid: t, .. } if t == txid))
            .and_then(|c| c.contribution)
    }

    // ---- internals --------------------------------------------------------

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
        if let Some(existing) = state.journal.active_on(channel_id) {
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
        let feerate = fee.feerate(&*self.fee_estimator)?;
        if request.add > Amount::ZERO && mode != PlanMode::Unfunded {
            let available = pool.available(&self.wallet);
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
            Destination::Wallet => Ok(self.wallet.new_address()?.script_pubkey()),
        }
    }

    /// Builds LDK's contribution; with an id, the wallet coins it picks are
    /// reserved for that splice.
    pub(crate) fn build(
        &self,
        template: lightning::ln::funding::FundingTemplate,
        plan: &Plan,
        fee: &FeePolicy,
        source: &crate::wallet::SpliceCoinSource<'_>,
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
        let contribution = result.map_err(|e| self.contribution_error(e, plan))?;
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
        source: &crate::wallet::SpliceCoinSource<'_>,
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
                plan.feerate.to_sat_per_kwu() as u32,
                u64::MAX,
            )
            .map_err(|()| FundingContributionError::CoinSelectionFailed)?;
        Ok((selection.confirmed_utxos, selection.change_output))
    }

    fn contribution_error(&self, e: FundingContributionError, plan: &Plan) -> SpliceError {
        match e {
            FundingContributionError::CoinSelectionFailed => SpliceError::InsufficientFunds {
                needed: plan.add + estimated_fee(plan, 1),
                available: self.wallet.available_balance(),
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

    pub(crate) fn new_record(
        &self,
        id: SpliceId,
        plan: &Plan,
        contribution: &FundingContribution,
    ) -> SpliceRecord {
        let now = unix_now();
        SpliceRecord {
            id,
            channel_id: plan.channel.channel_id,
            counterparty: plan.channel.counterparty.node_id,
            state: SpliceState::Requested,
            add: plan.add,
            outputs: plan
                .outputs
                .iter()
                .map(|o| SpliceOutput {
                    script_pubkey: o.script_pubkey.clone(),
                    value: o.value,
                })
                .collect(),
            feerate_sat_per_kwu: plan.feerate.to_sat_per_kwu(),
            fee: contribution.estimated_fee(),
            inputs: contribution.inputs().iter().map(|i| i.outpoint()).collect(),
            change: change_of(contribution, &plan.outputs),
            capacity_before: Amount::from_sat(plan.channel.channel_value_satoshis),
            net_value_sat: contribution.net_value().to_sat(),
            txid: None,
            confirmation_height: None,
            batch: None,
            created_at: now,
            updated_at: now,
            revision: 0,
        }
    }

    pub(crate) fn release_quietly(&self, id: SpliceId) {
        if let Err(e) = self.wallet.release(id) {
            log::error!("{id}: could not release its coins: {e}");
        }
    }

    /// Moves a splice to `new_state`: journal first, then the event.
    pub(crate) fn transition(&self, state: &mut State, id: SpliceId, new_state: SpliceState) {
        self.transition_with(state, id, new_state, |_| {});
    }

    /// Moves a splice to `new_state` with `change` made to its record, in
    /// one journal write, then queues the event.
    pub(crate) fn transition_with(
        &self,
        state: &mut State,
        id: SpliceId,
        new_state: SpliceState,
        change: impl FnOnce(&mut SpliceRecord),
    ) {
        if state.journal.is_staged(id) {
            // Its earlier change must reach the store (and its event the
            // queue) first.
            self.commit_staged(state);
        }
        let Some((record, event)) = Self::changed(state, id, new_state, change) else {
            return;
        };
        if let Err(e) = state.journal.put(record.clone()) {
            log::error!("{id}: could not journal {}: {e}", record.state);
            return;
        }
        if let Some(event) = event {
            self.events.push(event);
        }
        if let Some(batch) = record.batch {
            self.batch_leg_changed(state, batch);
        }
    }

    /// Like [`Self::transition_with`], but the change stays in memory until
    /// [`Self::commit_staged`] writes every staged change at once (batch
    /// legs, which move together). Nothing may be acted on before then.
    pub(crate) fn stage_transition(
        &self,
        state: &mut State,
        id: SpliceId,
        new_state: SpliceState,
        change: impl FnOnce(&mut SpliceRecord),
    ) {
        let Some((record, event)) = Self::changed(state, id, new_state, change) else {
            return;
        };
        state.journal.stage(record);
        state.staged_events.extend(event);
    }

    /// Writes every staged change in one journal write, then queues their
    /// events in one more. Returns whether nothing is left unwritten.
    pub(crate) fn commit_staged(&self, state: &mut State) -> bool {
        if !state.journal.has_staged() {
            return true;
        }
        if let Err(e) = state.journal.commit_staged() {
            // The records stay staged, so the next commit tries again.
            log::error!("could not journal staged splice changes: {e}");
            return false;
        }
        let events = std::mem::take(&mut state.staged_events);
        let batches: std::collections::BTreeSet<BatchId> = events
            .iter()
            .filter_map(|e| e.splice_id())
            .filter_map(|id| state.journal.get(id).and_then(|r| r.batch))
            .collect();
        self.events.push_all(events);
        for batch in batches {
            self.batch_leg_changed(state, batch);
        }
        true
    }

    /// Moves splice `id` on: a batch leg's change is staged (its batch
    /// writes its legs together), any other is written at once.
    pub(crate) fn step(
        &self,
        state: &mut State,
        id: SpliceId,
        new_state: SpliceState,
        change: impl FnOnce(&mut SpliceRecord),
    ) {
        if state.journal.get(id).is_some_and(|r| r.batch.is_some()) {
            self.stage_transition(state, id, new_state, change);
        } else {
            self.transition_with(state, id, new_state, change);
        }
    }

    /// The record `id` would become in `new_state` with `change`, and the
    /// event that reports it; `None` when nothing changes or the record has
    /// already ended.
    fn changed(
        state: &State,
        id: SpliceId,
        new_state: SpliceState,
        change: impl FnOnce(&mut SpliceRecord),
    ) -> Option<(SpliceRecord, Option<SpliceEvent>)> {
        let before = state.journal.get(id)?;
        if before.state.is_final() && before.state != new_state {
            log::debug!("{id}: ignoring {new_state} after {}", before.state);
            return None;
        }
        let mut record = before.clone();
        change(&mut record);
        record.state = new_state.clone();
        if record == *before {
            return None;
        }
        let event = (before.state != new_state).then(|| {
            log::info!("{id}: {new_state}");
            SpliceEvent::StateChanged {
                id,
                channel_id: record.channel_id,
                counterparty: record.counterparty,
                state: new_state,
                txid: record.txid,
            }
        });
        Some((record, event))
    }

    /// After a restart: splices LDK no longer knows of end, the rest go on.
    fn reconcile(&self) -> Result<(), SpliceError> {
        let mut state = self.lock();
        let channels = self.channel_manager.get_cm().list_channels();
        let active: Vec<SpliceRecord> = state
            .journal
            .all()
            .filter(|r| !r.state.is_final())
            .cloned()
            .collect();
        for record in active {
            let channel = channels.iter().find(|c| c.channel_id == record.channel_id);
            let Some(channel) = channel else {
                self.transition(
                    &mut state,
                    record.id,
                    SpliceState::Failed {
                        reason: "the channel is gone".into(),
                    },
                );
                if record.txid.is_none() {
                    self.release_quietly(record.id);
                }
                continue;
            };
            let candidates = channel
                .splice_details
                .as_ref()
                .map(|d| d.candidates.clone())
                .unwrap_or_default();
            let signed_or_later = candidates.iter().any(|c| {
                matches!(
                    c.status,
                    SpliceCandidateStatus::AwaitingSignatures { .. }
                        | SpliceCandidateStatus::Negotiated { .. }
                )
            });
            match &record.state {
                SpliceState::Requested | SpliceState::Negotiating if !signed_or_later => {
                    // LDK keeps negotiation state in memory only.
                    self.transition(
                        &mut state,
                        record.id,
                        SpliceState::Failed {
                            reason: "the node restarted before the splice was negotiated".into(),
                        },
                    );
                    self.release_quietly(record.id);
                }
                _ => {
                    // Signed before the restart, but the broadcast was not
                    // written yet (batch legs write it together): LDK knows.
                    let negotiated = candidates.iter().find_map(|c| match c.status {
                        SpliceCandidateStatus::Negotiated { txid, .. } => Some(txid),
                        _ => None,
                    });
                    if let (None, Some(txid)) = (record.txid, negotiated) {
                        self.transition_with(&mut state, record.id, SpliceState::Broadcast, |r| {
                            r.txid = Some(txid)
                        });
                    }
                    if let Some(txid) = record.txid.or(negotiated) {
                        state.tracker.watch(txid);
                        let confirmed = channel
                            .splice_details
                            .as_ref()
                            .and_then(|d| d.confirmed_candidate.as_ref())
                            .filter(|c| c.txid == txid);
                        if let Some(confirmed) = confirmed {
                            let tip = self.channel_manager.get_cm().current_best_block().height;
                            state
                                .tracker
                                .watch_confirmed(txid, confirmed.confirmations, tip);
                            self.transition(
                                &mut state,
                                record.id,
                                SpliceState::Confirmed {
                                    depth: confirmed.confirmations,
                                },
                            );
                        } else if channel.funding_txo.map(|o| o.txid) == Some(txid) {
                            // Locked while we were down.
                            self.transition(&mut state, record.id, SpliceState::Locked);
                            self.release_quietly(record.id);
                        }
                    }
                }
            }
        }
        self.reconcile_batches(&mut state);
        Ok(())
    }

    /// Applies confirmation depths from the tracker to the records.
    fn apply_depths(&self, state: &mut State) {
        let tracked: Vec<(SpliceId, Option<bitcoin::Txid>, SpliceState)> = state
            .journal
            .all()
            .filter(|r| r.state.is_broadcast() && r.state != SpliceState::Locked)
            .map(|r| (r.id, r.txid, r.state.clone()))
            .collect();
        for (id, txid, current) in tracked {
            let Some(txid) = txid else { continue };
            let (height, new_state) = match state.tracker.depth(&txid) {
                Some((height, depth)) => (Some(height), SpliceState::Confirmed { depth }),
                None => (None, SpliceState::Broadcast),
            };
            if new_state != current {
                self.transition_with(state, id, new_state, |r| r.confirmation_height = height);
            }
        }
    }
}

/// The change a contribution pays back to the wallet: its change output, or
/// (for a shrinking resize) the output beyond those `requested`.
fn change_of(contribution: &FundingContribution, requested: &[TxOut]) -> Option<SpliceOutput> {
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
fn contribution_weight(contribution: &FundingContribution) -> bitcoin::Weight {
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

impl<CM: Deref, F: Deref> lightning::chain::Listen for SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    fn filtered_block_connected(
        &self,
        _header: &bitcoin::block::Header,
        txdata: &lightning::chain::transaction::TransactionData,
        height: u32,
    ) {
        let mut state = self.lock();
        state
            .tracker
            .block_connected(txdata.iter().map(|(_, tx)| tx.compute_txid()), height);
        self.apply_depths(&mut state);
        self.check_deadlines(&mut state);
        self.start_queued(&mut state);
    }

    fn blocks_disconnected(&self, fork_point: lightning::chain::BlockLocator) {
        let mut state = self.lock();
        state.tracker.blocks_disconnected(fork_point.height);
        self.apply_depths(&mut state);
    }
}
