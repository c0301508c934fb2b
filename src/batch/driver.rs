//! Driving batches: signing every leg once all are ready, ending the whole
//! batch when a leg fails, its peer leaves or the deadline passes, starting
//! queued moves, and settling batches a restart interrupted.

use std::ops::Deref;
use std::sync::Arc;

use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channelmanager::AChannelManager;

use super::execute::{batch_change, quiet_change, Book};
use super::{BatchCoordinator, BatchId, BatchRecord, BatchState, LegRole};
use crate::coordinator::{LegOutcome, LegStart, Notice, PlanMode, ResizeRequest, SignLegsError};
use crate::error::SpliceError;
use crate::fees::FeePolicy;
use crate::ids::{ChannelRef, SpliceId};
use crate::record::{SpliceRecord, SpliceState};
use crate::wallet::CoinPool;

impl<CM: Deref, F: Deref> BatchCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Acts on what the coordinator reported about batch legs.
    pub(crate) fn process_notices(&self) {
        loop {
            let notices = self.core.take_notices();
            if notices.is_empty() {
                // Called last by every entry point, with no lock held.
                self.core.announce_events();
                return;
            }
            let mut book = self.lock();
            for notice in notices {
                let batch = match notice {
                    Notice::ReadyToSign { batch, .. } | Notice::Changed { batch, .. } => batch,
                };
                self.review(&mut book, batch);
            }
        }
    }

    /// Ends batches whose deadline passed or whose leg's peer left before
    /// signing, retries what a failed write left undone, and starts queued
    /// moves whose funds have confirmed. Call it every second or so; it
    /// runs the coordinator's tick too.
    pub fn timer_tick(&self) {
        self.core.timer_tick();
        {
            let mut book = self.lock();
            let open: Vec<BatchId> = book.open_records().map(|b| b.id).collect();
            for id in open {
                self.review(&mut book, id);
                self.check_deadline(&mut book, id);
            }
            self.start_queued(&mut book);
        }
        self.process_notices();
    }

    /// After a restart: a batch not signed yet is ended cleanly (no leg of
    /// it is signed: a batch's legs are signed in the same write as the
    /// batch).
    pub(super) fn reconcile(&self) {
        let mut book = self.lock();
        let unsigned: Vec<BatchId> = book
            .open_records()
            .filter(|b| b.state == BatchState::Negotiating)
            .map(|b| b.id)
            .collect();
        for id in unsigned {
            let end = BatchState::Failed {
                leg: 0,
                reason: "the node restarted before the batch was signed".into(),
            };
            if let Err(e) = self.end_batch(&mut book, id, end) {
                log::error!("{id}: could not end it after the restart: {e}");
            }
        }
    }

    /// Looks at `batch`'s legs and moves it on: signs it once every leg is
    /// ready, ends it if a leg ended before signing, completes it once
    /// every leg has ended after signing.
    fn review(&self, book: &mut Book, batch: BatchId) {
        let Some(record) = book.records.get(&batch).cloned() else {
            return;
        };
        let legs: Vec<(usize, SpliceRecord)> = record
            .parts
            .iter()
            .filter_map(|p| {
                p.splice
                    .and_then(|id| self.core.record(id))
                    .map(|r| (p.leg, r))
            })
            .collect();
        match record.state {
            BatchState::Negotiating => {
                let ended = legs.iter().find(|(_, r)| r.state.is_final());
                if let Some((leg, splice)) = ended {
                    let reason = match &splice.state {
                        SpliceState::Failed { reason } => reason.clone(),
                        other => format!("{} is {other}", splice.id),
                    };
                    let end = BatchState::Failed { leg: *leg, reason };
                    if let Err(e) = self.end_batch(book, batch, end) {
                        log::error!("{batch}: could not end it: {e}");
                    }
                } else {
                    self.try_sign(book, &record);
                }
            }
            BatchState::Signed => {
                let waiting = record.parts.iter().any(|p| p.splice.is_none() && p.queued);
                if waiting || !legs.iter().all(|(_, r)| r.state.is_final()) {
                    return;
                }
                let end = match legs.iter().find(|(_, r)| r.state != SpliceState::Locked) {
                    None => BatchState::Locked,
                    Some((leg, splice)) => BatchState::Failed {
                        leg: *leg,
                        reason: format!("{} did not lock: {}", splice.id, splice.state),
                    },
                };
                self.set_state(book, batch, end);
            }
            _ => {}
        }
    }

    /// Signs every leg of `record` if every started leg is held for it.
    fn try_sign(&self, book: &mut Book, record: &BatchRecord) {
        let ids: Vec<SpliceId> = record.parts.iter().filter_map(|p| p.splice).collect();
        if ids.is_empty() || !ids.iter().all(|id| self.core.is_held(*id)) {
            return;
        }
        if !self.core.negotiations_written(&ids) {
            log::debug!(
                "{}: every leg ready; waiting for LDK to write them",
                record.id
            );
            return;
        }
        let mut signed = record.clone();
        signed.state = BatchState::Signed;
        let change = match batch_change(&signed) {
            Ok(change) => change,
            Err(e) => {
                log::error!("{}: {e}", record.id);
                return;
            }
        };
        match self.core.sign_legs(&ids, change) {
            Ok(()) => {
                log::info!("{}: every leg signed", record.id);
                book.keep(signed);
            }
            Err(SignLegsError::NotReady(id)) => log::debug!("{}: {id} not ready", record.id),
            Err(SignLegsError::Refused { id, reason }) => {
                let leg = record
                    .parts
                    .iter()
                    .find(|p| p.splice == Some(id))
                    .map_or(0, |p| p.leg);
                let end = BatchState::Failed {
                    leg,
                    reason: format!("refused to sign {id}: {reason}"),
                };
                if let Err(e) = self.end_batch(book, record.id, end) {
                    log::error!("{}: could not end it: {e}", record.id);
                }
            }
            // Nothing signed; the next tick tries again.
            Err(SignLegsError::Persistence(e)) => {
                log::error!("{}: could not journal the signing: {e}", record.id)
            }
        }
    }

    /// Ends a batch not signed yet: every unsigned leg is cancelled in LDK,
    /// ended and its coins freed, in one write with the batch's end.
    pub(super) fn end_batch(
        &self,
        book: &mut Book,
        batch: BatchId,
        end: BatchState,
    ) -> Result<(), SpliceError> {
        let record = book
            .records
            .get(&batch)
            .cloned()
            .ok_or(SpliceError::UnknownBatch(batch))?;
        let leg_end = match &end {
            BatchState::Cancelled => SpliceState::Cancelled,
            BatchState::Failed { leg, reason } => SpliceState::Failed {
                reason: format!("batch leg {leg} failed: {reason}"),
            },
            other => {
                return Err(SpliceError::InvalidRequest(format!(
                    "{batch} cannot end as {other}"
                )))
            }
        };
        let ids: Vec<SpliceId> = record.parts.iter().filter_map(|p| p.splice).collect();
        let mut ended = record;
        ended.state = end.clone();
        self.core
            .abort_legs(&ids, leg_end, Some(batch_change(&ended)?))?;
        log::warn!("{batch}: {end}");
        book.keep(ended);
        Ok(())
    }

    fn set_state(&self, book: &mut Book, batch: BatchId, state: BatchState) {
        let Some(mut record) = book.records.get(&batch).cloned() else {
            return;
        };
        if record.state == state {
            return;
        }
        record.state = state;
        let written =
            batch_change(&record).and_then(|change| self.core.journal.commit(vec![change]));
        match written {
            Ok(()) => {
                log::info!("{batch}: {}", record.state);
                book.keep(record);
            }
            Err(e) => log::error!("{batch}: could not journal {}: {e}", record.state),
        }
    }

    /// Ends a batch that can no longer have every leg ready to sign: the
    /// deadline passed, or a leg's peer is gone (LDK keeps a contribution
    /// waiting across a disconnection; a batch does not wait for it).
    fn check_deadline(&self, book: &mut Book, batch: BatchId) {
        let Some(record) = book.records.get(&batch).cloned() else {
            return;
        };
        if record.state != BatchState::Negotiating {
            return;
        }
        let usable = self.core.usable_channels();
        let not_ready: Vec<_> = record
            .parts
            .iter()
            .filter(|p| p.splice.is_some_and(|id| !self.core.is_held(id)))
            .collect();
        let disconnected = not_ready
            .iter()
            .find(|p| !usable.get(&p.channel_id).copied().unwrap_or(false));
        let end = if let Some(part) = disconnected {
            BatchState::Failed {
                leg: part.leg,
                reason: format!(
                    "peer {} disconnected before the batch was signed",
                    part.counterparty
                ),
            }
        } else if std::time::SystemTime::now() > record.deadline {
            BatchState::Failed {
                leg: not_ready.first().map_or(0, |p| p.leg),
                reason: "the deadline passed before every leg was ready to sign".into(),
            }
        } else {
            return;
        };
        if let Err(e) = self.end_batch(book, batch, end) {
            log::error!("{batch}: could not end it: {e}");
        }
    }

    /// Starts the splice-in of each queued move whose splice-out has
    /// confirmed (its output is then spendable), on its own.
    fn start_queued(&self, book: &mut Book) {
        let waiting: Vec<(BatchRecord, usize)> = book
            .open_records()
            .filter(|b| b.state == BatchState::Signed)
            .flat_map(|b| {
                b.parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.queued && p.splice.is_none())
                    .map(|(i, _)| (b.clone(), i))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (batch, index) in waiting {
            let part = &batch.parts[index];
            let out_confirmed = batch
                .parts
                .iter()
                .find(|p| p.leg == part.leg && p.role == LegRole::MoveOut)
                .and_then(|p| p.splice)
                .and_then(|id| self.core.splice_status(id))
                .is_some_and(|s| {
                    matches!(s.state, SpliceState::Confirmed { .. } | SpliceState::Locked)
                });
            if !out_confirmed {
                continue;
            }
            let fee = FeePolicy::fixed(batch.feerate)
                .with_max_feerate(batch.max_feerate)
                .with_max_fee(batch.max_fee);
            let channel = ChannelRef {
                channel_id: part.channel_id,
                counterparty: part.counterparty,
            };
            let request = ResizeRequest::splice_in(part.amount);
            let pool = Arc::new(CoinPool::default());
            let plan = match self
                .core
                .plan_leg(channel, &request, &fee, PlanMode::Execute, &pool)
            {
                Ok(plan) => plan,
                // The funds may not be spendable yet; try again later.
                Err(e) => {
                    log::debug!("{}: queued move not started yet: {e}", batch.id);
                    continue;
                }
            };
            let updated = |outcomes: &[LegOutcome]| {
                let mut record = batch.clone();
                if let Some(LegOutcome::Started(id)) = outcomes.first() {
                    record.parts[index].splice = Some(*id);
                    record.parts[index].queued = false;
                }
                record
            };
            let leg = LegStart {
                plan,
                fee,
                may_wait: false,
            };
            let started = self.core.start_legs(
                batch.id,
                false,
                vec![leg],
                |outcomes| quiet_change(&updated(outcomes)).map(Some),
                |_, _| Ok(None),
            );
            match started {
                Ok(outcomes) => {
                    let record = updated(&outcomes);
                    log::info!(
                        "{}: queued move into {} started as {:?}",
                        batch.id,
                        part.channel_id,
                        record.parts[index].splice
                    );
                    book.keep(record);
                }
                Err((_, e)) => log::debug!("{}: queued move not started yet: {e}", batch.id),
            }
        }
    }
}
