//! The one place splice records change: each change is checked against the
//! lifecycle, written together with the events that report it, and only
//! then kept in memory. A caller acts on a change only after this returned
//! `Ok`; on error nothing changed.

use std::ops::Deref;

use bitcoin::OutPoint;
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channelmanager::AChannelManager;

use super::{Notice, SpliceCoordinator, State};
use crate::error::SpliceError;
use crate::events::SpliceEvent;
use crate::ids::SpliceId;
use crate::journal::{Change, SPLICE};
use crate::record::{SpliceRecord, SpliceState};

/// A new version of a record, and the states it passed through on the way
/// (each reported by its own event, in the same write).
#[derive(Debug, Clone)]
pub(crate) struct Update {
    pub(crate) record: SpliceRecord,
    pub(crate) passed: Vec<SpliceState>,
    /// Events besides the state changes, written with them.
    pub(crate) events: Vec<SpliceEvent>,
}

impl Update {
    pub(crate) fn new(record: SpliceRecord) -> Self {
        Update {
            record,
            passed: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The update with `event` written with it.
    pub(crate) fn with_event(mut self, event: SpliceEvent) -> Self {
        self.events.push(event);
        self
    }
}

/// Whether a splice may go from `from` to `to`. Ending a signed splice is
/// only for [`SpliceCoordinator::end_signed`], which LDK's own view must
/// justify.
fn allowed(from: &SpliceState, to: &SpliceState) -> bool {
    use SpliceState::*;
    if from.is_final() {
        return false;
    }
    match to {
        Failed { .. } | Cancelled => !from.is_signed(),
        Requested => false,
        Negotiating => matches!(from, Requested | Negotiating),
        AwaitingSignatures => matches!(from, Requested | Negotiating | AwaitingSignatures),
        // A batch leg's Signed is written with its batch; a fee bump of a
        // broadcast splice keeps the splice where it is.
        Signed => matches!(from, Requested | Negotiating | AwaitingSignatures | Signed),
        Broadcast | Confirmed { .. } | Locked | Closed => from.is_signed(),
    }
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Writes `updates` and `extra` documents in one write, with an event
    /// for every state change; then keeps the records and tells the batch
    /// layer about its legs.
    pub(crate) fn write(
        &self,
        state: &mut State,
        updates: Vec<Update>,
        extra: Vec<Change>,
    ) -> Result<(), SpliceError> {
        let now = crate::ids::now_in_seconds();
        let mut changes = Vec::with_capacity(updates.len() + extra.len());
        let mut records = Vec::with_capacity(updates.len());
        for Update {
            mut record,
            passed,
            events: more,
        } in updates
        {
            let previous = state.records.get(&record.id);
            let before = previous.map(|r| r.state.clone());
            let mut events = Vec::new();
            // A fee bump of ours ends in a new negotiated candidate.
            let bumped = previous.is_some_and(|p| {
                p.bump.is_some() && record.bump.is_none() && p.txid != record.txid
            });
            let mut last = before.clone();
            for reached in passed.iter().chain(std::iter::once(&record.state)) {
                if last.as_ref() != Some(reached) {
                    events.push(SpliceEvent::StateChanged {
                        id: record.id,
                        channel_id: record.channel_id,
                        counterparty: record.counterparty,
                        state: reached.clone(),
                        txid: record.txid,
                    });
                    last = Some(reached.clone());
                }
            }
            if let (true, Some(txid)) = (bumped, record.txid) {
                events.push(SpliceEvent::FeeBumped {
                    id: record.id,
                    txid,
                    feerate: record.feerate,
                    fee: record.fee,
                });
            }
            events.extend(more);
            record.updated_at = now;
            let stored = crate::stored::StoredSplice::from(&record);
            changes.push(Change::new(SPLICE, record.id.0, &stored, events)?);
            records.push((record, before));
        }
        changes.extend(extra);
        self.journal.commit(changes)?;
        for (record, before) in records {
            if before.as_ref() != Some(&record.state) {
                log::info!("{}: {}", record.id, record.state);
                if let Some(batch) = record.batch {
                    self.notify(Notice::Changed {
                        batch,
                        id: record.id,
                        state: record.state.clone(),
                    });
                }
            }
            state.next_id = state.next_id.max(record.id.0 + 1);
            state.keep(record);
        }
        Ok(())
    }

    /// Moves `id` to `new_state` with `change` made to its record.
    /// `Ok(false)` when the lifecycle does not allow it (the record is
    /// unknown, has ended, or is signed and the move would end it) or
    /// nothing changes.
    pub(crate) fn step(
        &self,
        state: &mut State,
        id: SpliceId,
        new_state: SpliceState,
        change: impl FnOnce(&mut SpliceRecord),
    ) -> Result<bool, SpliceError> {
        let Some(before) = state.records.get(&id) else {
            return Ok(false);
        };
        if before.state != new_state && !allowed(&before.state, &new_state) {
            log::debug!("{id}: not moving from {} to {new_state}", before.state);
            return Ok(false);
        }
        self.step_unchecked(state, id, new_state, change)
    }

    /// Ends a signed splice that LDK itself dropped (it refused our
    /// signatures and cancelled the negotiation, or discarded the funding
    /// after the channel closed): `Failed` with `reason`, written.
    pub(crate) fn end_signed(
        &self,
        state: &mut State,
        id: SpliceId,
        reason: String,
    ) -> Result<bool, SpliceError> {
        match state.records.get(&id) {
            Some(record) if !record.state.is_final() => {}
            _ => return Ok(false),
        }
        self.step_unchecked(state, id, SpliceState::Failed { reason }, |_| {})
    }

    fn step_unchecked(
        &self,
        state: &mut State,
        id: SpliceId,
        new_state: SpliceState,
        change: impl FnOnce(&mut SpliceRecord),
    ) -> Result<bool, SpliceError> {
        let Some(before) = state.records.get(&id) else {
            return Ok(false);
        };
        let mut record = before.clone();
        change(&mut record);
        record.state = new_state;
        if record == *before {
            return Ok(false);
        }
        self.write(state, vec![Update::new(record)], Vec::new())?;
        Ok(true)
    }

    /// Frees the coins of ended splice `id` that no live splice holds.
    /// Only called once the end is written.
    pub(crate) fn release_coins(&self, state: &mut State, id: SpliceId) {
        let Some(record) = state.records.get(&id) else {
            return;
        };
        if record.holds_coins() {
            log::error!("{id}: not freeing the coins of a splice that has not ended");
            return;
        }
        state.held.remove(&id);
        let free: Vec<OutPoint> = record
            .inputs
            .iter()
            .copied()
            .filter(|o| !Self::held_by_live(state, o))
            .collect();
        if free.is_empty() {
            return;
        }
        if let Err(e) = self.wallet.unlock_coins(&free, crate::wallet::COORDINATOR) {
            // Unlocked in memory; the store still has the locks, which the
            // next start frees (no live splice holds them).
            log::warn!("{id}: coins freed, but the wallet could not write it: {e}");
        }
    }

    /// Whether a live splice holds `outpoint`.
    pub(crate) fn held_by_live(state: &State, outpoint: &OutPoint) -> bool {
        state
            .live_records()
            .any(|r| r.holds_coins() && r.inputs.contains(outpoint))
    }

    /// The live splice of ours on `channel_id`, if any.
    pub(crate) fn active_on(
        state: &State,
        channel_id: &lightning::ln::types::ChannelId,
    ) -> Option<SpliceRecord> {
        state
            .live_records()
            .rev()
            .find(|r| r.channel_id == *channel_id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::allowed;
    use crate::record::SpliceState::*;

    #[test]
    fn signed_splices_cannot_be_failed_or_cancelled_by_a_step() {
        let failed = Failed { reason: "x".into() };
        for from in [Signed, Broadcast, Confirmed { depth: 1 }] {
            assert!(!allowed(&from, &failed), "{from}");
            assert!(!allowed(&from, &Cancelled), "{from}");
        }
        for from in [Requested, Negotiating, AwaitingSignatures] {
            assert!(allowed(&from, &failed), "{from}");
            assert!(allowed(&from, &Cancelled), "{from}");
            assert!(!allowed(&from, &Broadcast), "{from}");
        }
        assert!(allowed(&Confirmed { depth: 2 }, &Broadcast), "a reorg");
        assert!(!allowed(&Locked, &Broadcast));
        assert!(!allowed(&Cancelled, &Negotiating));
    }
}
