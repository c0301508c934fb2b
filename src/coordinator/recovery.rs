//! Reading LDK's view, at start-up and on every tick: confirmation depth
//! (from `ChannelDetails::splice_details`, not a tracker of our own), locks
//! and broadcasts whose events we missed, splices LDK dropped, and splices
//! the counterparty started. No record contradicts LDK for longer than a
//! tick, and none is ended while LDK may still complete it.

use std::collections::BTreeSet;
use std::ops::Deref;

use bitcoin::{Amount, OutPoint, Txid};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channel_state::{
    ChannelDetails, ConfirmedSpliceCandidate, SpliceCandidateDetails, SpliceCandidateStatus,
    SpliceDetails,
};
use lightning::ln::channelmanager::AChannelManager;

use super::{SpliceCoordinator, State, Update};
use crate::error::SpliceError;
use crate::ids::SpliceId;
use crate::record::{SpliceOrigin, SpliceRecord, SpliceState};

/// The candidate of `record` LDK counts as confirmed, if any.
fn confirmed_for<'a>(
    details: &'a SpliceDetails,
    record: &SpliceRecord,
) -> Option<&'a ConfirmedSpliceCandidate> {
    details
        .confirmed_candidate
        .as_ref()
        .filter(|c| c.confirmations > 0 && record.has_candidate(&c.txid))
}

/// The transactions LDK negotiated (both sides signed), oldest first.
fn negotiated(candidates: &[SpliceCandidateDetails]) -> Vec<Txid> {
    candidates
        .iter()
        .filter_map(|c| match c.status {
            SpliceCandidateStatus::Negotiated { txid, .. } => Some(txid),
            _ => None,
        })
        .collect()
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Brings every live record in line with LDK, and records splices the
    /// counterparty started.
    pub(crate) fn refresh(&self, state: &mut State) {
        let cm = self.channel_manager.get_cm();
        let live: Vec<SpliceRecord> = state.live_records().cloned().collect();
        let channels = cm.list_channels();
        let tip = cm.current_best_block().height;
        let live_ids: Vec<SpliceId> = live.iter().map(|r| r.id).collect();
        for record in live {
            let channel = channels.iter().find(|c| c.channel_id == record.channel_id);
            if let Err(e) = self.refresh_one(state, &record, channel, tip) {
                log::warn!("{}: could not journal what LDK reports: {e}", record.id);
            }
        }
        for channel in &channels {
            if state.unmanaged.contains(&channel.channel_id) {
                continue;
            }
            if let Err(e) = self.follow_theirs(state, channel) {
                log::warn!("could not journal a splice the counterparty started: {e}");
            }
        }
        self.run_auto_bumps(state, tip, &live_ids);
    }

    fn refresh_one(
        &self,
        state: &mut State,
        record: &SpliceRecord,
        channel: Option<&ChannelDetails>,
        tip: u32,
    ) -> Result<(), SpliceError> {
        let id = record.id;
        let Some(channel) = channel else {
            // The channel is gone (a missed ChannelClosed ends it the same way).
            if record.is_theirs() {
                self.end_signed(state, id, "the channel closed".into())?;
            } else if !record.state.is_signed() {
                let failed = SpliceState::Failed {
                    reason: "the channel closed".into(),
                };
                if self.step(state, id, failed, |_| {})? {
                    self.release_coins(state, id);
                }
            }
            return Ok(());
        };
        let details = channel.splice_details.as_ref();
        let candidates = details.map(|d| d.candidates.as_slice()).unwrap_or(&[]);
        let ours_in_ldk = candidates.iter().any(|c| c.contribution.is_some());

        // Locked while we did not look (LDK replays ChannelReady too).
        let funding = channel.funding_txo.map(|o| o.txid);
        if let Some(txid) = funding.filter(|t| record.state.is_signed() && record.has_candidate(t))
        {
            if self.step(state, id, SpliceState::Locked, |r| r.settle_on(txid))? {
                state.depths.remove(&id);
                self.release_coins(state, id);
            }
            return Ok(());
        }
        if record.is_theirs() {
            let txids = negotiated(candidates);
            if txids.iter().any(|t| !record.has_candidate(t)) {
                self.step(state, id, record.state.clone(), |r| {
                    for txid in &txids {
                        if !r.has_candidate(txid) {
                            r.add_candidate(*txid);
                        }
                    }
                    r.txid = txids.last().copied();
                })?;
            }
        } else if !record.state.is_signed() {
            if !ours_in_ldk {
                // LDK keeps a negotiation that has not reached signing in
                // memory only: after a restart (or a failure whose event we
                // have not seen yet) it is gone, and so are its coins' uses.
                let failed = SpliceState::Failed {
                    reason: "LDK dropped the splice before it was signed (the node restarted, or the negotiation failed)".into(),
                };
                if self.step(state, id, failed, |_| {})? {
                    self.release_coins(state, id);
                }
            }
            return Ok(());
        } else if record.state == SpliceState::Signed {
            let txids = negotiated(candidates);
            if let Some(txid) = txids.iter().rev().find(|t| record.has_candidate(t)) {
                let txid = *txid;
                self.step(state, id, SpliceState::Broadcast, |r| r.txid = Some(txid))?;
                if let Some(tx) = state.signed.remove(&txid) {
                    self.wallet.transaction_broadcast(&tx);
                }
            } else if !ours_in_ldk {
                // Neither negotiated, nor locked, nor in LDK at all: LDK
                // writes its state before our signatures can leave (the
                // monitor update comes first), so they never did, and the
                // transaction cannot complete.
                let reason = "LDK dropped the splice before our signatures went out".to_string();
                if self.end_signed(state, id, reason)? {
                    self.release_coins(state, id);
                }
                return Ok(());
            }
        }
        if record.bump.is_some() && !record.is_theirs() {
            self.refresh_bump(state, record, candidates)?;
        }
        self.refresh_depth(state, id, details, tip)
    }

    /// A fee bump of ours: LDK negotiated it while we did not look (the
    /// candidate is adopted), or has no round for it any more (a restart
    /// drops a round not yet signed; the bump is cleared and may be asked
    /// for again).
    fn refresh_bump(
        &self,
        state: &mut State,
        record: &SpliceRecord,
        candidates: &[SpliceCandidateDetails],
    ) -> Result<(), SpliceError> {
        let Some(bump) = &record.bump else {
            return Ok(());
        };
        let negotiated = negotiated(candidates);
        // The newest candidate is the bump's once it was signed; LDK lists
        // it negotiated once both sides signed.
        let bumped = record
            .candidates
            .get(bump.candidates_before..)
            .and_then(|new| new.last())
            .map(|c| c.txid)
            .filter(|txid| negotiated.contains(txid));
        if let Some(txid) = bumped {
            let height = self.channel_manager.get_cm().current_best_block().height;
            self.step(state, record.id, record.state.clone(), |r| {
                r.settle_bump(txid, height);
                r.txid = Some(txid);
            })?;
            return Ok(());
        }
        if record.candidates.len() != bump.candidates_before {
            return Ok(());
        }
        let in_progress = candidates
            .iter()
            .any(|c| !matches!(c.status, SpliceCandidateStatus::Negotiated { .. }));
        let lost = "LDK has no round of it (the node restarted, or the round failed)";
        match bump.batch {
            Some(batch) if !in_progress => self.abandon_bump_group(state, batch, lost),
            Some(batch)
                if bump.started_at.elapsed().unwrap_or_default()
                    > crate::batch::BatchPlan::DEFAULT_DEADLINE =>
            {
                self.abandon_bump_group(
                    state,
                    batch,
                    "not every leg's bump was ready to sign within 60 s",
                )
            }
            Some(_) => {}
            None if !in_progress => self.drop_bump(state, record.id, lost),
            None => {}
        }
        Ok(())
    }

    /// The splice's confirmation depth, as LDK counts it: the first
    /// confirmation is written, and so is a depth that falls back (a
    /// reorganisation); growth is not (read it from `status`).
    fn refresh_depth(
        &self,
        state: &mut State,
        id: SpliceId,
        details: Option<&SpliceDetails>,
        tip: u32,
    ) -> Result<(), SpliceError> {
        let Some(record) = state.records.get(&id).cloned() else {
            return Ok(());
        };
        if !matches!(
            record.state,
            SpliceState::Broadcast | SpliceState::Confirmed { .. }
        ) {
            return Ok(());
        }
        match details.and_then(|d| confirmed_for(d, &record)) {
            Some(confirmed) => {
                let depth = confirmed.confirmations;
                let height = tip.saturating_sub(depth) + 1;
                let last = state.depths.insert(id, depth);
                let fell_back = last.is_some_and(|last| depth < last);
                if record.state == SpliceState::Broadcast || fell_back {
                    let txid = confirmed.txid;
                    self.step(state, id, SpliceState::Confirmed { depth }, |r| {
                        r.confirmation_height = Some(height);
                        r.txid = Some(txid);
                    })?;
                }
            }
            None if details.is_some() && matches!(record.state, SpliceState::Confirmed { .. }) => {
                state.depths.remove(&id);
                self.step(state, id, SpliceState::Broadcast, |r| {
                    r.confirmation_height = None
                })?;
            }
            None => {}
        }
        Ok(())
    }

    /// Records a splice the counterparty negotiated on `channel` with no
    /// contribution of ours, so that `list` shows every splice that changed
    /// a channel. LDK signs such splices itself; we only follow them.
    fn follow_theirs(
        &self,
        state: &mut State,
        channel: &ChannelDetails,
    ) -> Result<(), SpliceError> {
        let Some(details) = &channel.splice_details else {
            return Ok(());
        };
        if details.candidates.iter().any(|c| c.contribution.is_some()) {
            return Ok(());
        }
        let txids = negotiated(&details.candidates);
        if txids.is_empty() {
            return Ok(());
        }
        let known = state
            .channel_records(&channel.channel_id)
            .any(|r| !r.state.is_final() || txids.iter().any(|t| r.has_candidate(t)));
        if known {
            return Ok(());
        }
        let now = crate::ids::now_in_seconds();
        let record = SpliceRecord {
            id: SpliceId(state.next_id),
            channel_id: channel.channel_id,
            counterparty: channel.counterparty.node_id,
            origin: SpliceOrigin::Theirs,
            state: SpliceState::Broadcast,
            add: Amount::ZERO,
            outputs: Vec::new(),
            feerate: bitcoin::FeeRate::ZERO,
            fee: Amount::ZERO,
            max_fee: Amount::ZERO,
            max_feerate: bitcoin::FeeRate::ZERO,
            inputs: Vec::new(),
            change: None,
            capacity_before: Amount::from_sat(channel.channel_value_satoshis),
            net_value: bitcoin::SignedAmount::ZERO,
            txid: txids.last().copied(),
            candidates: Vec::new(),
            confirmation_height: None,
            batch: None,
            sign_with_batch: false,
            bump: None,
            auto_bump: None,
            created_at: now,
            updated_at: now,
        };
        let mut record = record;
        for txid in txids {
            record.add_candidate(txid);
        }
        log::info!(
            "{}: {} started a splice of channel {}",
            record.id,
            record.counterparty,
            record.channel_id
        );
        self.write(state, vec![Update::new(record)], Vec::new())
    }

    /// At start-up: coins locked in the wallet that no live splice holds
    /// (a crash between locking them and writing the splice, or a payment
    /// built and never broadcast) are freed. Nothing can spend them: a
    /// splice reaches LDK only after its record is written.
    pub(crate) fn free_orphan_locks(&self, state: &State) -> Result<(), SpliceError> {
        let held: BTreeSet<OutPoint> = state
            .live_records()
            .filter(|r| r.holds_coins())
            .flat_map(|r| r.inputs.iter().copied())
            .collect();
        let orphans: Vec<OutPoint> = self
            .wallet
            .locked_coins()
            .into_iter()
            .filter(|o| !held.contains(o))
            .collect();
        if orphans.is_empty() {
            return Ok(());
        }
        log::info!("freeing {} coins no splice holds", orphans.len());
        self.wallet
            .unlock_coins(&orphans, crate::wallet::COORDINATOR)
            .map_err(|e| SpliceError::Persistence(e.to_string()))
    }

    /// `record` with its depth as LDK counts it now.
    pub(crate) fn live_view(&self, mut record: SpliceRecord) -> SpliceRecord {
        if !matches!(
            record.state,
            SpliceState::Broadcast | SpliceState::Confirmed { .. }
        ) {
            return record;
        }
        let cm = self.channel_manager.get_cm();
        let Some(details) = cm
            .list_channels_with_counterparty(&record.counterparty)
            .into_iter()
            .find(|c| c.channel_id == record.channel_id)
            .and_then(|c| c.splice_details)
        else {
            return record;
        };
        match confirmed_for(&details, &record).cloned() {
            Some(c) => {
                let tip = cm.current_best_block().height;
                record.state = SpliceState::Confirmed {
                    depth: c.confirmations,
                };
                record.confirmation_height = Some(tip.saturating_sub(c.confirmations) + 1);
                record.txid = Some(c.txid);
            }
            None => {
                record.state = SpliceState::Broadcast;
                record.confirmation_height = None;
            }
        }
        record
    }
}
