//! Signing: the check of a negotiated transaction against what we locked
//! and asked for, signing a splice alone or with the other legs of its
//! batch, and backing out of what we will not sign.
//!
//! `Signed` is written before our signatures go to LDK. If LDK refuses
//! them, nothing was sent: we cancel the negotiation, and only once LDK
//! took the cancel does the splice end.

use std::ops::Deref;

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, Transaction, TxOut};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channel_state::SpliceCandidateStatus;
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::funding::FundingContribution;
use lightning::ln::types::ChannelId;

use super::{Notice, SpliceCoordinator, State, Update};
use crate::error::SpliceError;
use crate::ids::SpliceId;
use crate::journal::Change;
use crate::record::{SpliceOutput, SpliceRecord, SpliceState};

/// Why a batch's legs were not signed.
#[derive(Debug)]
pub(crate) enum SignLegsError {
    /// A leg is not held for signing (yet, or any more).
    NotReady(SpliceId),
    /// A leg's transaction fails the check, or cannot be signed.
    Refused {
        /// The leg.
        id: SpliceId,
        /// Why.
        reason: String,
    },
    /// `Signed` could not be written; nothing was signed.
    Persistence(SpliceError),
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// LDK built a transaction with our contribution and asks for our
    /// signatures. An error means the change could not be written: nothing
    /// was signed, and the event must be handed over again.
    pub(crate) fn on_ready_to_sign(
        &self,
        state: &mut State,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        unsigned: &Transaction,
    ) -> Result<(), SpliceError> {
        let txid = unsigned.compute_txid();
        let Some(record) = Self::active_on(state, channel_id).filter(|r| !r.is_theirs()) else {
            // Never sign what we did not ask for; and do not leave the
            // channel waiting for signatures that will not come.
            log::warn!("asked to sign {txid} on {channel_id}, which no splice of ours negotiates");
            if let Err(e) = self
                .channel_manager
                .get_cm()
                .cancel_funding_contributed(channel_id, counterparty)
            {
                log::warn!("could not back out of {txid}: {e:?}");
            }
            return Ok(());
        };
        let id = record.id;
        state.asked_at.insert(id, self.manager_writes());
        let checked = self.check_negotiated(&record, unsigned).and_then(|c| {
            self.wallet
                .sign_inputs(unsigned.clone(), &record.inputs)
                .map(|signed| (c, signed))
                .map_err(|e| e.to_string())
        });
        let (contribution, signed) = match checked {
            Ok(checked) => checked,
            Err(why) => return self.refuse(state, &record, &why),
        };
        let mut updated = record.clone();
        adopt(&mut updated, contribution.as_ref(), unsigned);

        if record.state.is_signed() {
            if let Some(batch) = record.bump.as_ref().and_then(|b| b.batch) {
                // A leg of a batch's fee bump waits for the others.
                state.held.insert(id, unsigned.clone());
                return self.sign_bump_group(state, batch);
            }
            // A fee bump of a splice we signed (or signing again after a
            // restart): the candidate is written before its signatures go.
            if updated != record {
                self.write(state, vec![Update::new(updated)], Vec::new())?;
            }
            self.hand_signatures(state, id, signed);
            return Ok(());
        }
        if record.sign_with_batch {
            updated.state = SpliceState::AwaitingSignatures;
            self.write(state, vec![Update::new(updated)], Vec::new())?;
            state.held.insert(id, unsigned.clone());
            if let Some(batch) = record.batch {
                self.notify(Notice::ReadyToSign { batch, id });
            }
            return Ok(());
        }
        updated.state = SpliceState::Signed;
        self.write(
            state,
            vec![Update {
                record: updated,
                passed: vec![SpliceState::AwaitingSignatures],
                events: Vec::new(),
            }],
            Vec::new(),
        )?;
        self.hand_signatures(state, id, signed);
        Ok(())
    }

    /// Signs every leg of a batch: each held transaction is checked and
    /// signed in memory first; then every leg's `Signed` and `batch_doc`
    /// are written in one write; then the signatures go to LDK. If a leg
    /// fails its check or the write fails, nothing is signed.
    pub(crate) fn sign_legs(
        &self,
        ids: &[SpliceId],
        batch_doc: Change,
    ) -> Result<(), SignLegsError> {
        let mut state = self.lock();
        let mut signed = Vec::with_capacity(ids.len());
        let mut updates = Vec::with_capacity(ids.len());
        for id in ids {
            let (Some(record), Some(unsigned)) =
                (state.records.get(id).cloned(), state.held.get(id).cloned())
            else {
                return Err(SignLegsError::NotReady(*id));
            };
            let tx = self
                .check_negotiated(&record, &unsigned)
                .and_then(|_| {
                    self.wallet
                        .sign_inputs(unsigned, &record.inputs)
                        .map_err(|e| e.to_string())
                })
                .map_err(|reason| SignLegsError::Refused { id: *id, reason })?;
            signed.push((*id, tx));
            let mut record = record;
            record.state = SpliceState::Signed;
            updates.push(Update::new(record));
        }
        self.write(&mut state, updates, vec![batch_doc])
            .map_err(SignLegsError::Persistence)?;
        for (id, tx) in signed {
            state.held.remove(&id);
            self.hand_signatures(&mut state, id, tx);
        }
        Ok(())
    }

    /// Signs the fee bumps of `batch`'s legs once every one is held ready
    /// to sign: each is checked and signed in memory, every new candidate
    /// is written in one write, then the signatures go to LDK. If one fails
    /// its check, the whole group's bump is backed out.
    pub(crate) fn sign_bump_group(
        &self,
        state: &mut State,
        batch: crate::ids::BatchId,
    ) -> Result<(), SpliceError> {
        let legs: Vec<SpliceRecord> = state
            .records
            .values()
            .filter(|r| r.bump.as_ref().and_then(|b| b.batch) == Some(batch))
            .cloned()
            .collect();
        if legs.iter().any(|r| !state.held.contains_key(&r.id)) {
            return Ok(());
        }
        let mut signed = Vec::with_capacity(legs.len());
        let mut updates = Vec::with_capacity(legs.len());
        for record in &legs {
            let Some(unsigned) = state.held.get(&record.id).cloned() else {
                return Ok(());
            };
            let checked = self.check_negotiated(record, &unsigned).and_then(|c| {
                self.wallet
                    .sign_inputs(unsigned.clone(), &record.inputs)
                    .map(|tx| (c, tx))
                    .map_err(|e| e.to_string())
            });
            match checked {
                Ok((contribution, tx)) => {
                    let mut updated = record.clone();
                    adopt(&mut updated, contribution.as_ref(), &unsigned);
                    updates.push(Update::new(updated));
                    signed.push((record.id, tx));
                }
                Err(why) => {
                    log::error!("{}: not signing the batch's fee bump: {why}", record.id);
                    self.abandon_bump_group(state, batch, &why);
                    return Ok(());
                }
            }
        }
        self.write(state, updates, Vec::new())?;
        for (id, tx) in signed {
            state.held.remove(&id);
            self.hand_signatures(state, id, tx);
        }
        Ok(())
    }

    /// Backs out of `batch`'s fee bump: every leg's round not signed yet is
    /// cancelled in LDK and its bump dropped. The earlier candidates stand.
    pub(crate) fn abandon_bump_group(
        &self,
        state: &mut State,
        batch: crate::ids::BatchId,
        why: &str,
    ) {
        let legs: Vec<SpliceRecord> = state
            .records
            .values()
            .filter(|r| {
                r.bump.as_ref().is_some_and(|b| {
                    b.batch == Some(batch) && r.candidates.len() == b.candidates_before
                })
            })
            .cloned()
            .collect();
        for record in &legs {
            state.held.remove(&record.id);
            if let Err(e) = self
                .channel_manager
                .get_cm()
                .cancel_funding_contributed(&record.channel_id, &record.counterparty)
            {
                log::debug!("{}: LDK had no bump round to cancel: {e:?}", record.id);
            }
            self.drop_bump(state, record.id, why);
        }
    }

    /// Ends every leg in `ids` that is not signed: LDK drops it first (so
    /// it can no longer be signed), then every end is written in one write
    /// with `batch_doc`, then the coins are freed. Signed legs are left as
    /// they are.
    pub(crate) fn abort_legs(
        &self,
        ids: &[SpliceId],
        end: SpliceState,
        batch_doc: Option<Change>,
    ) -> Result<(), SpliceError> {
        let mut state = self.lock();
        let open: Vec<SpliceRecord> = ids
            .iter()
            .filter_map(|id| state.records.get(id))
            .filter(|r| !r.state.is_final() && !r.state.is_signed())
            .cloned()
            .collect();
        for record in &open {
            if let Err(e) = self
                .channel_manager
                .get_cm()
                .cancel_funding_contributed(&record.channel_id, &record.counterparty)
            {
                log::debug!("{}: LDK had nothing to cancel: {e:?}", record.id);
            }
        }
        let updates = open
            .iter()
            .cloned()
            .map(|mut record| {
                record.state = end.clone();
                Update::new(record)
            })
            .collect();
        self.write(&mut state, updates, batch_doc.into_iter().collect())?;
        for record in open {
            self.release_coins(&mut state, record.id);
        }
        Ok(())
    }

    /// Backs out of a transaction we will not sign. A splice not signed
    /// yet ends `Failed` and frees its coins; for a fee bump of a signed
    /// splice only that round is dropped.
    fn refuse(
        &self,
        state: &mut State,
        record: &SpliceRecord,
        why: &str,
    ) -> Result<(), SpliceError> {
        log::error!("{}: not signing: {why}", record.id);
        if let Err(e) = self
            .channel_manager
            .get_cm()
            .cancel_funding_contributed(&record.channel_id, &record.counterparty)
        {
            log::warn!(
                "{}: could not back out of the negotiation: {e:?}",
                record.id
            );
        }
        if record.state.is_signed() {
            return Ok(());
        }
        let reason = format!("refused to sign: {why}");
        if self.step(state, record.id, SpliceState::Failed { reason }, |_| {})? {
            self.release_coins(state, record.id);
        }
        Ok(())
    }

    /// The check before signing: the transaction spends every coin locked
    /// for this splice and no other coin of the wallet, pays every output
    /// we asked for, returns our change, and takes from the wallet no more
    /// than what we add plus the most we agreed to pay in fees; LDK's own
    /// accounting of our share stays within our caps. Returns LDK's view of
    /// our contribution to this transaction, if it has one.
    pub(crate) fn check_negotiated(
        &self,
        record: &SpliceRecord,
        tx: &Transaction,
    ) -> Result<Option<FundingContribution>, String> {
        for outpoint in &record.inputs {
            if !tx.input.iter().any(|i| i.previous_output == *outpoint) {
                return Err(format!("it leaves out our coin {outpoint}"));
            }
            if !self.wallet.is_locked(outpoint) {
                return Err(format!("our coin {outpoint} is not locked for it"));
            }
        }
        for input in &tx.input {
            let outpoint = input.previous_output;
            if !record.inputs.contains(&outpoint) && self.wallet.owned_output(&outpoint).is_some() {
                return Err(format!(
                    "it spends wallet coin {outpoint}, which is not this splice's"
                ));
            }
        }
        let mut unmatched: Vec<&TxOut> = tx.output.iter().collect();
        for wanted in &record.outputs {
            let position = unmatched
                .iter()
                .position(|o| o.script_pubkey == wanted.script_pubkey && o.value == wanted.value)
                .ok_or_else(|| {
                    format!(
                        "it does not pay {} sat to {}",
                        wanted.value.to_sat(),
                        wanted.script_pubkey
                    )
                })?;
            unmatched.swap_remove(position);
        }
        let change = match &record.change {
            Some(change) => {
                let position = unmatched
                    .iter()
                    .position(|o| o.script_pubkey == change.script_pubkey)
                    .ok_or_else(|| "it does not pay our change".to_string())?;
                unmatched[position].value
            }
            None => Amount::ZERO,
        };
        let mut spent = Amount::ZERO;
        for outpoint in &record.inputs {
            let value = self
                .wallet
                .owned_output(outpoint)
                .ok_or_else(|| format!("{outpoint} is not a coin of the wallet"))?
                .value;
            spent = spent
                .checked_add(value)
                .ok_or_else(|| "our coins add up beyond all bitcoin".to_string())?;
        }
        let taken = spent
            .checked_sub(change)
            .ok_or_else(|| "its change is more than our coins".to_string())?;
        let agreed = record
            .add
            .checked_add(record.max_fee)
            .unwrap_or(Amount::MAX);
        if taken > agreed {
            return Err(format!(
                "it takes {} sat from the wallet; we agreed to {} sat plus at most {} sat in fees",
                taken.to_sat(),
                record.add.to_sat(),
                record.max_fee.to_sat()
            ));
        }
        let contribution = self.candidate_contribution(record, tx);
        if let Some(c) = &contribution {
            if c.estimated_fee() > record.max_fee {
                return Err(format!(
                    "our share of its fee is {} sat, above the cap of {} sat",
                    c.estimated_fee().to_sat(),
                    record.max_fee.to_sat()
                ));
            }
            if c.feerate() > record.max_feerate {
                return Err(format!(
                    "its feerate of {} sat/kwu is above the cap of {} sat/kwu",
                    c.feerate().to_sat_per_kwu(),
                    record.max_feerate.to_sat_per_kwu()
                ));
            }
        }
        Ok(contribution)
    }

    /// LDK's view of our contribution to the candidate `tx`.
    fn candidate_contribution(
        &self,
        record: &SpliceRecord,
        tx: &Transaction,
    ) -> Option<FundingContribution> {
        let txid = tx.compute_txid();
        // Only this peer's channels: listing every channel for every leg of
        // a batch would cost O(N^2).
        self.channel_manager
            .get_cm()
            .list_channels_with_counterparty(&record.counterparty)
            .into_iter()
            .find(|c| c.channel_id == record.channel_id)?
            .splice_details?
            .candidates
            .into_iter()
            .find(|c| {
                matches!(c.status, SpliceCandidateStatus::AwaitingSignatures { txid: t, .. } if t == txid)
            })
            .and_then(|c| c.contribution)
    }
}

/// Takes what LDK settled for this candidate into the record, once the
/// check passed: our fee and change as negotiated (they differ from the
/// request when we are not the initiator, or the peer bumped the fee),
/// and the candidate's txid.
fn adopt(record: &mut SpliceRecord, contribution: Option<&FundingContribution>, tx: &Transaction) {
    if let Some(contribution) = contribution {
        record.fee = contribution.estimated_fee();
        record.net_value = contribution.net_value();
        if let Some(change) = &record.change {
            if let Some(paid) = tx
                .output
                .iter()
                .find(|o| o.script_pubkey == change.script_pubkey)
            {
                record.change = Some(SpliceOutput::from(paid));
            }
        }
    }
    record.add_candidate(tx.compute_txid());
}
