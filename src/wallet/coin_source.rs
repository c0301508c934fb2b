//! The wallet as LDK's coin selection source for splice contributions.

use bitcoin::{Amount, FeeRate, OutPoint, Psbt, ScriptBuf, Transaction, TxOut, Weight};
use lightning::chain::ClaimId;
use lightning::util::wallet_utils::{CoinSelection, CoinSelectionSourceSync, ConfirmedUtxo, Input};

use super::selection::{self, Candidate, Target};
use super::{SpliceWallet, WalletError};
use crate::weights;

/// A P2WPKH change output.
const P2WPKH_OUTPUT: Weight = Weight::from_wu((8 + 1 + 22) * 4);

/// The wallet's spendable coins, listed once and shared by the coin
/// sources of several splices (a batch): no coin goes to two of them, and
/// the wallet is not walked again for every leg.
#[derive(Debug, Default)]
pub struct CoinPool {
    coins: std::sync::Mutex<Option<Vec<(OutPoint, TxOut)>>>,
    picked: std::sync::Mutex<std::collections::BTreeSet<OutPoint>>,
}

impl CoinPool {
    /// The pool's coins not handed out yet.
    fn remaining(&self, wallet: &SpliceWallet) -> Vec<(OutPoint, TxOut)> {
        let mut coins = self.coins.lock().unwrap_or_else(|e| e.into_inner());
        let coins = coins.get_or_insert_with(|| wallet.spendable_coins());
        let picked = self.picked.lock().unwrap_or_else(|e| e.into_inner());
        coins
            .iter()
            .filter(|(outpoint, _)| !picked.contains(outpoint))
            .cloned()
            .collect()
    }

    /// What the pool's remaining coins are worth.
    pub fn available(&self, wallet: &SpliceWallet) -> Amount {
        self.remaining(wallet)
            .iter()
            .map(|(_, txout)| txout.value)
            .sum()
    }

    /// Every coin handed out so far.
    pub fn picked(&self) -> Vec<OutPoint> {
        self.picked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    fn take(&self, outpoints: &[OutPoint]) {
        self.picked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(outpoints.iter().copied());
    }
}

/// Hands LDK the wallet's confirmed, unlocked coins for one splice. A
/// source that locks (see [`SpliceWallet::coin_source`]) locks what it
/// picks in the wallet at once, in memory, so that no other spend takes
/// them before the caller writes the lock; one that does not (a quote)
/// only looks.
pub struct SpliceCoinSource<'a> {
    wallet: &'a SpliceWallet,
    lock: bool,
    pool: std::sync::Arc<CoinPool>,
    /// A wallet failure during selection, which LDK only sees as "no coins".
    failure: std::sync::Mutex<Option<WalletError>>,
}

impl SpliceCoinSource<'_> {
    /// The wallet failure that made the last selection fail, if it was one
    /// (rather than a lack of coins).
    pub fn take_failure(&self) -> Option<WalletError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl SpliceWallet {
    /// A coin source drawing from `pool` (shared with the other splices of
    /// a batch) that locks what it picks when `lock` is true.
    pub fn coin_source(&self, lock: bool, pool: &std::sync::Arc<CoinPool>) -> SpliceCoinSource<'_> {
        SpliceCoinSource {
            wallet: self,
            lock,
            pool: pool.clone(),
            failure: std::sync::Mutex::new(None),
        }
    }

    /// Confirmed P2WPKH coins that are not locked.
    pub fn spendable_coins(&self) -> Vec<(OutPoint, TxOut)> {
        let state = self.lock();
        state
            .wallet
            .list_unspent()
            .filter(|utxo| utxo.chain_position.is_confirmed())
            .filter(|utxo| utxo.txout.script_pubkey.is_p2wpkh())
            .filter(|utxo| !state.wallet.is_outpoint_locked(utxo.outpoint))
            .map(|utxo| (utxo.outpoint, utxo.txout))
            .collect()
    }

    /// The transaction that created `outpoint`, as LDK wants it for an input.
    pub fn previous_transaction(&self, outpoint: &OutPoint) -> Option<Transaction> {
        let state = self.lock();
        let tx = state.wallet.get_tx(outpoint.txid)?;
        Some(tx.tx_node.tx.as_ref().clone())
    }

    /// The output `outpoint` names, if it is (or was) one of this wallet's.
    pub fn owned_output(&self, outpoint: &OutPoint) -> Option<TxOut> {
        let state = self.lock();
        state
            .wallet
            .get_tx(outpoint.txid)
            .and_then(|tx| tx.tx_node.tx.output.get(outpoint.vout as usize).cloned())
            .filter(|txout| state.wallet.is_mine(txout.script_pubkey.clone()))
    }

    /// The confirmed balance that is not locked.
    pub fn available_balance(&self) -> Amount {
        self.spendable_coins()
            .iter()
            .map(|(_, txout)| txout.value)
            .sum()
    }

    /// Whether `outpoint` is (or was) an output of this wallet.
    pub fn owns_outpoint(&self, outpoint: &OutPoint) -> bool {
        self.owned_output(outpoint).is_some()
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
        let coins = self.pool.remaining(self.wallet);
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
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
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
        if self.lock {
            self.wallet.lock_coins_unsaved(&outpoints);
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
        // on FundingTransactionReadyForSigning, after checking the
        // transaction); nothing is signed here.
        log::error!(
            "refusing to sign {}: only the splice coordinator signs, after its checks",
            psbt.unsigned_tx.compute_txid()
        );
        Err(())
    }
}
