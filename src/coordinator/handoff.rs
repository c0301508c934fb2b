//! When our signatures go to LDK.
//!
//! LDK sends our `commitment_signed` for a splice as soon as it has our
//! signatures, while the `ChannelManager` on disk may still predate the
//! negotiation (LDK asks for signatures before its background processor
//! writes the manager). A crash then makes us forget a negotiation the peer
//! holds our signature for, and the peer force-closes when we abort it on
//! reconnection. So, when the application reports each write of its
//! `ChannelManager` (`CoordinatorConfig::signatures_wait_for_manager_persistence`
//! and [`SpliceCoordinator::channel_manager_persisted`]), signatures wait
//! for the next write, which holds the negotiation: after a crash LDK asks
//! for them again. Those LDK asks for again after a restart go at once:
//! their negotiation is on disk, and the peer may already be sending its
//! own signatures, which LDK takes only once it has ours.

use std::ops::Deref;
use std::sync::atomic::Ordering;

use bitcoin::Transaction;
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channelmanager::AChannelManager;

use super::{SpliceCoordinator, State};
use crate::ids::SpliceId;

/// Signatures waiting for the `ChannelManager` to be written.
#[derive(Debug)]
pub(crate) struct Handoff {
    id: SpliceId,
    tx: Transaction,
    /// Writes of the manager reported when they were made.
    after: u64,
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Hands our signatures to LDK: now, or after the next write of the
    /// `ChannelManager` when the application reports those. `Signed` is
    /// already written.
    pub(crate) fn hand_signatures(&self, state: &mut State, id: SpliceId, signed: Transaction) {
        // A negotiation LDK was loaded with is on disk already; and after a
        // restart the peer may be about to send its signatures, which LDK
        // only takes once it has ours.
        let loaded = state.loaded_awaiting.remove(&signed.compute_txid());
        // A write after LDK asked holds the negotiation (LDK asks from its
        // event queue, and writes the manager after the events are handled;
        // a batch leg may be signed long after it was asked).
        let asked = state
            .asked_at
            .get(&id)
            .copied()
            .unwrap_or_else(|| self.manager_writes());
        let written_since = self.manager_writes() > asked;
        if loaded || written_since || !self.config.signatures_wait_for_manager_persistence {
            self.give_signatures(state, id, signed);
            return;
        }
        state.handoffs.retain(|h| h.id != id);
        state.handoffs.push(Handoff {
            id,
            tx: signed,
            after: asked,
        });
    }

    /// Whether the negotiations of `ids` are all in a written
    /// `ChannelManager` (always, when writes are not reported): a batch is
    /// signed only then, so that a crash cannot leave some of its legs
    /// signed and LDK with no trace of the others.
    pub(crate) fn negotiations_written(&self, ids: &[SpliceId]) -> bool {
        if !self.config.signatures_wait_for_manager_persistence {
            return true;
        }
        let written = self.manager_writes();
        let state = self.lock();
        ids.iter()
            .all(|id| state.asked_at.get(id).is_some_and(|asked| written > *asked))
    }

    /// How many writes of the `ChannelManager` were reported.
    pub(crate) fn manager_writes(&self) -> u64 {
        self.manager_writes.load(Ordering::SeqCst)
    }

    /// The transactions LDK awaits our signatures for now.
    pub(crate) fn awaiting_our_signatures(&self) -> std::collections::HashSet<bitcoin::Txid> {
        self.channel_manager
            .get_cm()
            .list_channels()
            .into_iter()
            .filter_map(|c| c.splice_details)
            .flat_map(|d| d.candidates)
            .filter(|c| c.contribution.is_some())
            .filter_map(|c| match c.status {
                lightning::ln::channel_state::SpliceCandidateStatus::AwaitingSignatures {
                    txid,
                    ..
                } => Some(txid),
                _ => None,
            })
            .collect()
    }

    /// The application wrote its `ChannelManager`: signatures that waited
    /// for it go to LDK now. Call it after every write of the manager (the
    /// node does, from its store) when
    /// `CoordinatorConfig::signatures_wait_for_manager_persistence` is set.
    pub fn channel_manager_persisted(&self) {
        let written = self.manager_writes.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut state = self.lock();
            // Batches waiting for their legs' negotiations to be on disk
            // look again.
            let held: Vec<(SpliceId, Option<crate::ids::BatchId>)> = state
                .held
                .keys()
                .map(|id| (*id, state.records.get(id).and_then(|r| r.batch)))
                .collect();
            for (id, batch) in held {
                if let Some(batch) = batch {
                    self.notify(super::Notice::ReadyToSign { batch, id });
                }
            }
            let (due, waiting): (Vec<Handoff>, Vec<Handoff>) = std::mem::take(&mut state.handoffs)
                .into_iter()
                .partition(|h| h.after < written);
            state.handoffs = waiting;
            for handoff in due {
                let live = state
                    .records
                    .get(&handoff.id)
                    .is_some_and(|r| !r.state.is_final());
                if live {
                    self.give_signatures(&mut state, handoff.id, handoff.tx);
                }
            }
        }
        self.deliver();
    }

    /// Gives our signatures to LDK now. `Signed` is already written.
    fn give_signatures(&self, state: &mut State, id: SpliceId, signed: Transaction) {
        state.asked_at.remove(&id);
        let Some(record) = state.records.get(&id).cloned() else {
            return;
        };
        let txid = signed.compute_txid();
        let cm = self.channel_manager.get_cm();
        match cm.funding_transaction_signed(
            &record.channel_id,
            &record.counterparty,
            signed.clone(),
        ) {
            Ok(()) => {
                state.signed.insert(txid, signed);
            }
            Err(e) => {
                // Nothing was sent and LDK still waits for signatures: back
                // out, so no coin stays held for what cannot complete.
                log::error!("{id}: LDK refused our signatures for {txid}: {e:?}");
                match cm.cancel_funding_contributed(&record.channel_id, &record.counterparty) {
                    Ok(()) if !record.state.is_broadcast() => {
                        let reason = format!("LDK refused our signatures: {e:?}");
                        match self.end_signed(state, id, reason) {
                            Ok(true) => self.release_coins(state, id),
                            Ok(false) => {}
                            Err(e) => log::error!("{id}: could not journal its end: {e}"),
                        }
                    }
                    Ok(()) => log::warn!("{id}: the fee bump to {txid} is dropped"),
                    Err(e) => log::error!("{id}: could not back out of {txid} either: {e:?}"),
                }
            }
        }
    }
}
