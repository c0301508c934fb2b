//! What each LDK event means for our splices. Every change is written
//! before it is acted on; when it cannot be written the event is handed
//! back to LDK (`ReplayEvent`) and nothing was done.

use std::ops::Deref;

use bitcoin::{OutPoint, Txid};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::events::{Event, FundingInfo, ReplayEvent};
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::types::ChannelId;

use super::{unmanaged, SpliceCoordinator, State};
use crate::error::SpliceError;
use crate::record::SpliceState;

fn replay(e: SpliceError) -> ReplayEvent {
    log::error!("could not journal what an LDK event means, so LDK will hand it over again: {e}");
    ReplayEvent()
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Handles the LDK events that concern splices; ignores the rest.
    /// Returns `ReplayEvent` when it could not write what the event means;
    /// it acted on nothing then, and LDK hands the event over again.
    pub fn handle_event(&self, event: &Event) -> Result<(), ReplayEvent> {
        let result = {
            let mut state = self.lock();
            self.apply_event(&mut state, event).map_err(replay)
        };
        self.deliver();
        result
    }

    fn apply_event(&self, state: &mut State, event: &Event) -> Result<(), SpliceError> {
        if let Some(channel_id) = unmanaged::splice_event_channel(event) {
            if state.unmanaged.contains(channel_id) {
                log::debug!("{channel_id}: left to the application: {event:?}");
                return Ok(());
            }
        }
        match event {
            Event::FundingTransactionReadyForSigning {
                channel_id,
                counterparty_node_id,
                unsigned_transaction,
                ..
            } => self.on_ready_to_sign(
                state,
                channel_id,
                counterparty_node_id,
                unsigned_transaction,
            ),
            Event::SpliceNegotiated {
                channel_id,
                new_funding_txo,
                ..
            } => self.on_negotiated(state, channel_id, new_funding_txo.txid),
            Event::SpliceNegotiationFailed {
                channel_id, reason, ..
            } => self.on_negotiation_failed(state, channel_id, &reason.to_string()),
            Event::DiscardFunding {
                channel_id,
                funding_info,
            } => self.on_discard(state, channel_id, funding_info),
            Event::ChannelReady {
                channel_id,
                funding_txo: Some(funding_txo),
                ..
            } => self.on_locked(state, channel_id, funding_txo.txid),
            Event::ChannelClosed {
                channel_id, reason, ..
            } => self.on_closed(state, channel_id, &reason.to_string()),
            _ => Ok(()),
        }
    }

    /// Both sides signed `txid`; LDK broadcasts it.
    fn on_negotiated(
        &self,
        state: &mut State,
        channel_id: &ChannelId,
        txid: Txid,
    ) -> Result<(), SpliceError> {
        let Some(record) = Self::active_on(state, channel_id) else {
            log::debug!("{txid} negotiated on {channel_id}, which has no splice of ours");
            return Ok(());
        };
        if !record.state.is_signed() {
            log::error!(
                "{}: LDK says {txid} is negotiated, but we never signed it ({})",
                record.id,
                record.state
            );
            return Ok(());
        }
        let new_state = match record.state {
            SpliceState::Signed => SpliceState::Broadcast,
            ref other => other.clone(),
        };
        let height = self.channel_manager.get_cm().current_best_block().height;
        self.step(state, record.id, new_state, |r| {
            if !r.has_candidate(&txid) {
                r.add_candidate(txid);
            }
            // A newer transaction than the last negotiated one: our fee
            // bump, if one is under way (or the counterparty's round that
            // took our contribution in).
            r.settle_bump(txid, height);
            r.txid = Some(txid);
        })?;
        if let Some(tx) = state.signed.remove(&txid) {
            self.wallet.transaction_broadcast(&tx);
        }
        Ok(())
    }

    /// LDK dropped a negotiation (the peer left or aborted, we cancelled,
    /// the channel is closing). A splice not signed yet ends here. A signed
    /// one goes on: a failed fee-bump round leaves the earlier transaction,
    /// and LDK resets a negotiation without closing the channel only while
    /// it does not hold our signatures (after that, an abort closes the
    /// channel, and the splice ends when LDK discards its funding).
    fn on_negotiation_failed(
        &self,
        state: &mut State,
        channel_id: &ChannelId,
        reason: &str,
    ) -> Result<(), SpliceError> {
        let Some(record) = Self::active_on(state, channel_id) else {
            return Ok(());
        };
        if record.is_theirs() {
            return Ok(());
        }
        if record.state.is_broadcast() {
            log::info!("{}: a fee bump round failed: {reason}", record.id);
            match record.bump.as_ref().and_then(|b| b.batch) {
                Some(batch) => self.abandon_bump_group(
                    state,
                    batch,
                    &format!("a leg's bump round failed: {reason}"),
                ),
                None => self.drop_bump(state, record.id, reason),
            }
            return Ok(());
        }
        let ended = if record.state.is_signed() {
            self.end_signed(state, record.id, reason.to_string())?
        } else {
            let failed = SpliceState::Failed {
                reason: reason.to_string(),
            };
            self.step(state, record.id, failed, |_| {})?
        };
        if ended {
            self.release_coins(state, record.id);
        }
        Ok(())
    }

    /// LDK no longer needs these coins (or this candidate). Coins a live
    /// splice holds stay locked; a signed splice whose channel closed ends
    /// when LDK discards its funding, since its transaction can no longer
    /// confirm.
    fn on_discard(
        &self,
        state: &mut State,
        channel_id: &ChannelId,
        funding_info: &FundingInfo,
    ) -> Result<(), SpliceError> {
        let (outpoints, txid): (Vec<OutPoint>, Option<Txid>) = match funding_info {
            FundingInfo::Tx { transaction } => (
                transaction
                    .input
                    .iter()
                    .map(|i| i.previous_output)
                    .collect(),
                Some(transaction.compute_txid()),
            ),
            FundingInfo::Contribution { inputs, .. } => (inputs.clone(), None),
            FundingInfo::OutPoint { outpoint } => (Vec::new(), Some(outpoint.txid)),
        };
        if !self.channel_is_open(channel_id) {
            let dead = state.live_records().find(|r| {
                r.channel_id == *channel_id
                    && r.state.is_signed()
                    && !r.state.is_final()
                    && (txid.is_some_and(|t| r.has_candidate(&t))
                        || outpoints.iter().any(|o| r.inputs.contains(o)))
            });
            if let Some(record) = dead.cloned() {
                let reason =
                    "the channel closed before the splice locked; LDK discarded its funding"
                        .to_string();
                if self.end_signed(state, record.id, reason)? {
                    for candidate in &record.candidates {
                        self.wallet.transaction_abandoned(candidate.txid);
                    }
                    self.release_coins(state, record.id);
                }
            }
        }
        let free: Vec<OutPoint> = outpoints
            .into_iter()
            .filter(|o| !Self::held_by_live(state, o))
            .filter(|o| self.wallet.is_locked(o))
            .collect();
        if !free.is_empty() {
            self.wallet
                .unlock_coins(&free, crate::wallet::COORDINATOR)
                .map_err(|e| SpliceError::Persistence(e.to_string()))?;
        }
        Ok(())
    }

    /// `splice_locked` went both ways for `txid`: whichever of the splice's
    /// candidates it is, the splice is locked.
    fn on_locked(
        &self,
        state: &mut State,
        channel_id: &ChannelId,
        txid: Txid,
    ) -> Result<(), SpliceError> {
        let record = state
            .live_records()
            .find(|r| r.channel_id == *channel_id && r.has_candidate(&txid))
            .cloned();
        let Some(record) = record else {
            return Ok(());
        };
        if self.step(state, record.id, SpliceState::Locked, |r| r.settle_on(txid))? {
            state.depths.remove(&record.id);
            // Spent by the locked transaction, or (unique to a candidate
            // that lost) free again.
            self.release_coins(state, record.id);
        }
        Ok(())
    }

    /// Whether LDK still has `channel_id` open.
    fn channel_is_open(&self, channel_id: &ChannelId) -> bool {
        self.channel_manager
            .get_cm()
            .list_channels()
            .iter()
            .any(|c| c.channel_id == *channel_id)
    }

    /// `txid` confirmed `confirmations` deep on `channel_id`, which has
    /// closed: a signed splice of ours with that candidate ends `Closed`
    /// once no reorganisation LDK guards against can undo it; its coins
    /// are spent by `txid`, and the other candidates can never confirm.
    pub(crate) fn on_closed_channel_confirmed(
        &self,
        state: &mut State,
        channel_id: &ChannelId,
        txid: Txid,
        confirmations: u32,
    ) -> Result<(), SpliceError> {
        if confirmations < lightning::chain::channelmonitor::ANTI_REORG_DELAY {
            return Ok(());
        }
        if self.channel_is_open(channel_id) {
            return Ok(());
        }
        let record = state
            .live_records()
            .find(|r| {
                r.channel_id == *channel_id
                    && r.state.is_signed()
                    && !r.state.is_final()
                    && r.has_candidate(&txid)
            })
            .cloned();
        let Some(record) = record else {
            return Ok(());
        };
        log::info!(
            "{}: {txid} confirmed {confirmations} deep after the channel closed",
            record.id
        );
        if self.step(state, record.id, SpliceState::Closed, |r| r.settle_on(txid))? {
            state.depths.remove(&record.id);
            for candidate in record.candidates.iter().filter(|c| c.txid != txid) {
                self.wallet.transaction_abandoned(candidate.txid);
            }
            self.release_coins(state, record.id);
        }
        Ok(())
    }

    /// The channel closed. A splice not signed yet ends now; a signed one
    /// keeps its coins until LDK discards its funding (its transaction may
    /// still confirm until the closing one does).
    fn on_closed(
        &self,
        state: &mut State,
        channel_id: &ChannelId,
        reason: &str,
    ) -> Result<(), SpliceError> {
        state.held.retain(|id, _| {
            state
                .records
                .get(id)
                .is_none_or(|r| r.channel_id != *channel_id)
        });
        let open: Vec<_> = state
            .live_records()
            .filter(|r| r.channel_id == *channel_id)
            .cloned()
            .collect();
        for record in open {
            if record.is_theirs() {
                // Nothing of ours in it: it simply will not lock now.
                self.end_signed(state, record.id, format!("channel closed: {reason}"))?;
                continue;
            }
            if record.state.is_signed() {
                log::warn!(
                    "{}: channel closed ({reason}) while the splice was {}",
                    record.id,
                    record.state
                );
                continue;
            }
            let failed = SpliceState::Failed {
                reason: format!("channel closed: {reason}"),
            };
            if self.step(state, record.id, failed, |_| {})? {
                self.release_coins(state, record.id);
            }
        }
        Ok(())
    }
}
