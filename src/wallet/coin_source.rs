//! The wallet as LDK's coin selection source for splice contributions.

use bitcoin::{Amount, FeeRate, OutPoint, Psbt, ScriptBuf, Transaction, TxOut, Weight};
use lightning::chain::ClaimId;
use lightning::util::wallet_utils::{CoinSelection, CoinSelectionSourceSync, ConfirmedUtxo, Input};

use super::selection::{self, Candidate, Target};
use super::{SpliceWallet, WalletError};
use crate::fees::weights;
use crate::journal::SpliceId;

/// A P2WPKH change output.
const P2WPKH_OUTPUT: Weight = Weight::from_wu((8 + 1 + 22) * 4);

/// The wallet's spendable coins, listed once and shared by the coin
/// sources of several splices (a batch): no coin goes to two of them, and
/// the wallet is not walked again for every leg.
#[derive(Debug, Default)]
pub struct CoinPool {
    coins: std::sync::Mutex<Option<Vec<(OutPoint, TxOut)>>>,
    picked: std::sync::Mutex<std::collections::BTreeSet<OutPoint>>,
    /// Reservations are kept in memory until the caller saves them all
    /// with [`SpliceWallet::save_reservations`] (a batch saves once).
    save_later: bool,
}

impl CoinPool {
    /// A pool for a batch: its reservations are saved once, by the caller,
    /// with [`SpliceWallet::save_reservations`].
    pub fn for_batch() -> Self {
        CoinPool {
            save_later: true,
            ..CoinPool::default()
        }
    }

    /// The pool's coins not handed out yet.
    fn remaining(
        &self,
        wallet: &SpliceWallet,
        for_splice: Option<SpliceId>,
    ) -> Vec<(OutPoint, TxOut)> {
        let mut coins = self.coins.lock().unwrap_or_else(|e| e.into_inner());
        let coins = coins.get_or_insert_with(|| wallet.spendable_coins(for_splice));
        let picked = self.picked.lock().unwrap_or_else(|e| e.into_inner());
        coins
            .iter()
            .filter(|(outpoint, _)| !picked.contains(outpoint))
            .cloned()
            .collect()
    }

    /// What the pool's remaining coins are worth.
    pub fn available(&self, wallet: &SpliceWallet) -> Amount {
        self.remaining(wallet, None)
            .iter()
            .map(|(_, txout)| txout.value)
            .sum()
    }

    fn take(&self, outpoints: &[OutPoint]) {
        self.picked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(outpoints.iter().copied());
    }
}

/// Hands LDK the wallet's confirmed coins for one splice. With a splice id
/// the picked coins are reserved for it at once; without one (a quote)
/// nothing is reserved.
pub struct SpliceCoinSource<'a> {
    wallet: &'a SpliceWallet,
    reserve_for: Option<SpliceId>,
    pool: std::sync::Arc<CoinPool>,
}

impl SpliceWallet {
    /// A coin source for splice `id` that reserves what it picks, or, with
    /// `None`, one that only looks.
    pub fn coin_source(&self, id: Option<SpliceId>) -> SpliceCoinSource<'_> {
        self.coin_source_in(id, &std::sync::Arc::default())
    }

    /// A coin source for splice `id` drawing from `pool`, shared with the
    /// other splices of a batch.
    pub fn coin_source_in(
        &self,
        id: Option<SpliceId>,
        pool: &std::sync::Arc<CoinPool>,
    ) -> SpliceCoinSource<'_> {
        SpliceCoinSource {
            wallet: self,
            reserve_for: id,
            pool: pool.clone(),
        }
    }

    /// Confirmed P2WPKH coins not promised to another splice.
    pub fn spendable_coins(&self, for_splice: Option<SpliceId>) -> Vec<(OutPoint, TxOut)> {
        let state = self.lock();
        state
            .wallet
            .list_unspent()
            .filter(|utxo| utxo.chain_position.is_confirmed())
            .filter(|utxo| utxo.txout.script_pubkey.is_p2wpkh())
            .filter(|utxo| state.reservations.available_to(&utxo.outpoint, for_splice))
            .map(|utxo| (utxo.outpoint, utxo.txout))
            .collect()
    }

    /// The transaction that created `outpoint`, as LDK wants it for an input.
    pub fn previous_transaction(&self, outpoint: &OutPoint) -> Option<Transaction> {
        let state = self.lock();
        let tx = state.wallet.get_tx(outpoint.txid)?;
        Some(tx.tx_node.tx.as_ref().clone())
    }

    /// The confirmed balance not promised to any splice.
    pub fn available_balance(&self) -> Amount {
        self.spendable_coins(None)
            .iter()
            .map(|(_, txout)| txout.value)
            .sum()
    }

    /// Reserves `outpoints` for splice `id`.
    pub fn reserve(&self, id: SpliceId, outpoints: &[OutPoint]) -> Result<(), WalletError> {
        let mut state = self.lock();
        state.reservations.reserve(id, outpoints);
        state.reservations.save(&self.store)
    }

    /// Writes the reservations made through a [`CoinPool::for_batch`] pool.
    pub fn save_reservations(&self) -> Result<(), WalletError> {
        self.lock().reservations.save(&self.store)
    }

    fn reserve_unsaved(&self, id: SpliceId, outpoints: &[OutPoint]) {
        self.lock().reservations.reserve(id, outpoints);
    }

    /// Frees every coin splice `id` holds, and returns them.
    pub fn release(&self, id: SpliceId) -> Result<Vec<OutPoint>, WalletError> {
        let mut state = self.lock();
        let released = state.reservations.release(id);
        if !released.is_empty() {
            state.reservations.save(&self.store)?;
        }
        Ok(released)
    }

    /// Frees these coins, whoever holds them.
    pub fn release_outpoints(&self, outpoints: &[OutPoint]) -> Result<(), WalletError> {
        let mut state = self.lock();
        state.reservations.release_outpoints(outpoints);
        state.reservations.save(&self.store)
    }

    /// The splice holding `outpoint`, if any.
    pub fn holder(&self, outpoint: &OutPoint) -> Option<SpliceId> {
        self.lock().reservations.holder(outpoint)
    }

    /// The coins splice `id` holds.
    pub fn reserved_for(&self, id: SpliceId) -> Vec<OutPoint> {
        self.lock().reservations.held_by(id)
    }

    /// Every reservation: coin and the splice holding it.
    pub fn reservations(&self) -> Vec<(OutPoint, SpliceId)> {
        self.lock()
            .reservations
            .iter()
            .map(|(outpoint, id)| (*outpoint, *id))
            .collect()
    }

    /// Whether `outpoint` is (or was) an output of this wallet.
    pub fn owns_outpoint(&self, outpoint: &OutPoint) -> bool {
        let state = self.lock();
        state
            .wallet
            .get_tx(outpoint.txid)
            .and_then(|tx| tx.tx_node.tx.output.get(outpoint.vout as usize).cloned())
            .is_some_and(|txout| state.wallet.is_mine(txout.script_pubkey))
    }

    fn change_script(&self) -> Result<ScriptBuf, WalletError> {
        let mut state = self.lock();
        let script = state
            .wallet
            .next_unused_address(bdk_wallet::KeychainKind::Internal)
            .address
            .script_pubkey();
        self.persist(&mut state)?;
        Ok(script)
    }
}

/// The weight of spending a P2WPKH coin as LDK counts it: outpoint and
/// sequence plus LDK's satisfaction weight for P2WPKH.
fn p2wpkh_input_weight() -> Weight {
    let probe = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: Vec::new(),
        output: vec![TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_raw_hash(
                bitcoin::hashes::Hash::all_zeros(),
            )),
        }],
    };
    let satisfaction = ConfirmedUtxo::new_p2wpkh(probe, 0)
        .map(|utxo| utxo.into_utxo().satisfaction_weight)
        .unwrap_or(4 + 108);
    weights::BASE_INPUT + Weight::from_wu(satisfaction)
}

impl CoinSelectionSourceSync for SpliceCoinSource<'_> {
    fn select_confirmed_utxos(
        &self,
        _claim_id: Option<ClaimId>,
        must_spend: Vec<Input>,
        must_pay_to: &[TxOut],
        target_feerate_sat_per_1000_weight: u32,
        max_tx_weight: u64,
    ) -> Result<CoinSelection, ()> {
        let coins = self.pool.remaining(self.wallet, self.reserve_for);
        // Every coin is P2WPKH: one spending weight, exactly as LDK will
        // count it in its fee estimate.
        let input_weight = p2wpkh_input_weight();
        let candidates: Vec<Candidate> = coins
            .iter()
            .map(|(_, txout)| Candidate {
                value: txout.value,
                input_weight,
            })
            .collect();
        let fixed_inputs: Amount = must_spend.iter().map(|i| i.previous_utxo.value).sum();
        let outputs: Amount = must_pay_to.iter().map(|o| o.value).sum();
        // Same accounting as LDK's fee estimate for the contribution: marker
        // and flag, the fixed inputs, and the base transaction with every
        // output it must pay. LDK counts the shared funding input one weight
        // unit lighter than its satisfaction weight (it grinds for low-R
        // signatures); doing the same makes the change come out so that the
        // channel gets exactly the amount asked for.
        let fixed_weight = Weight::from_wu(2)
            + must_spend
                .iter()
                .map(|i| {
                    weights::BASE_INPUT + Weight::from_wu(i.satisfaction_weight.saturating_sub(1))
                })
                .sum::<Weight>()
            + Weight::from_wu(10 * 4)
            + must_pay_to.iter().map(weights::output).sum::<Weight>();
        let change_script = self.wallet.change_script().map_err(|e| {
            log::error!("no change script: {e}");
        })?;
        let target = Target {
            value: outputs.checked_sub(fixed_inputs).unwrap_or(Amount::ZERO),
            fixed_weight,
            feerate: FeeRate::from_sat_per_kwu(u64::from(target_feerate_sat_per_1000_weight)),
            change_weight: P2WPKH_OUTPUT,
            dust_limit: change_script.minimal_non_dust(),
            change_spend_weight: input_weight,
        };
        let picked = selection::select(&candidates, &target).ok_or_else(|| {
            log::info!(
                "coin selection: {} sat needed, {} coins available",
                target.value.to_sat(),
                coins.len()
            );
        })?;
        let weight = fixed_weight
            + input_weight * picked.picked.len() as u64
            + if picked.change.is_some() {
                P2WPKH_OUTPUT
            } else {
                Weight::ZERO
            };
        if weight.to_wu() > max_tx_weight {
            return Err(());
        }
        let mut confirmed_utxos = Vec::with_capacity(picked.picked.len());
        for index in &picked.picked {
            let (outpoint, _) = &coins[*index];
            let prevtx = self.wallet.previous_transaction(outpoint).ok_or(())?;
            confirmed_utxos.push(ConfirmedUtxo::new_p2wpkh(prevtx, outpoint.vout)?);
        }
        let outpoints: Vec<OutPoint> = confirmed_utxos.iter().map(|u| u.outpoint()).collect();
        self.pool.take(&outpoints);
        match self.reserve_for {
            Some(id) if self.pool.save_later => self.wallet.reserve_unsaved(id, &outpoints),
            Some(id) => self.wallet.reserve(id, &outpoints).map_err(|e| {
                log::error!("could not reserve coins for {id}: {e}");
            })?,
            None => {}
        }
        Ok(CoinSelection {
            confirmed_utxos,
            change_output: picked.change.map(|value| TxOut {
                value,
                script_pubkey: change_script,
            }),
        })
    }

    fn sign_psbt(&self, psbt: Psbt) -> Result<Transaction, ()> {
        // LDK signs nothing through this for splices (the coordinator signs
        // on FundingTransactionReadyForSigning); sign what is ours anyway.
        let tx = psbt.unsigned_tx.clone();
        let ours: Vec<OutPoint> = tx
            .input
            .iter()
            .map(|i| i.previous_output)
            .filter(|o| self.wallet.owns_outpoint(o))
            .collect();
        self.wallet.sign_inputs(tx, &ours).map_err(|e| {
            log::error!("signing failed: {e}");
        })
    }
}
