//! The wallet as LDK's coin selection source for splice contributions.

use bitcoin::{Amount, FeeRate, OutPoint, Psbt, ScriptBuf, Transaction, TxOut, Weight};
use lightning::chain::ClaimId;
use lightning::util::wallet_utils::{CoinSelection, CoinSelectionSourceSync, ConfirmedUtxo, Input};

use super::selection::{self, Candidate, Target};
use super::{FundingWallet, WalletCoin, WalletError};
use crate::weights;

/// A P2WPKH change output.
const P2WPKH_OUTPUT: Weight = Weight::from_wu((8 + 1 + 22) * 4);

/// The wallet's spendable coins, listed once and shared by the coin
/// sources of several splices (a batch): no coin goes to two of them, and
/// the wallet is not walked again for every leg.
#[derive(Debug, Default)]
pub(crate) struct CoinPool {
    coins: std::sync::Mutex<Option<Vec<(OutPoint, TxOut)>>>,
    picked: std::sync::Mutex<std::collections::BTreeSet<OutPoint>>,
}

impl CoinPool {
    /// The pool's coins not handed out yet.
    fn remaining(&self, wallet: &dyn FundingWallet) -> Vec<(OutPoint, TxOut)> {
        let mut coins = self.coins.lock().unwrap_or_else(|e| e.into_inner());
        let coins = coins.get_or_insert_with(|| {
            wallet
                .spendable_coins()
                .into_iter()
                .filter(|coin| coin.output.script_pubkey.is_p2wpkh())
                .map(|WalletCoin { outpoint, output }| (outpoint, output))
                .collect()
        });
        let picked = self.picked.lock().unwrap_or_else(|e| e.into_inner());
        coins
            .iter()
            .filter(|(outpoint, _)| !picked.contains(outpoint))
            .cloned()
            .collect()
    }

    /// What the pool's remaining coins are worth.
    pub(crate) fn available(&self, wallet: &dyn FundingWallet) -> Amount {
        self.remaining(wallet)
            .iter()
            .map(|(_, txout)| txout.value)
            .sum()
    }

    /// Every coin handed out so far.
    pub(crate) fn picked(&self) -> Vec<OutPoint> {
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
/// source that locks locks what it
/// picks in the wallet at once, in memory, so that no other spend takes
/// them before the caller writes the lock; one that does not (a quote)
/// only looks.
pub struct SpliceCoinSource<'a> {
    wallet: &'a dyn FundingWallet,
    lock: bool,
    pool: std::sync::Arc<CoinPool>,
    /// A wallet failure during selection, which LDK only sees as "no coins".
    failure: std::sync::Mutex<Option<WalletError>>,
}

impl<'a> SpliceCoinSource<'a> {
    /// A coin source for one splice you build with LDK's `FundingTemplate`
    /// yourself: it offers the wallet's confirmed, unlocked coins and, when
    /// `lock` is true, locks (in memory) the ones LDK picks; write them
    /// with [`FundingWallet::save`], and unlock them if the splice does
    /// not go ahead. With `lock` false it only looks (for a quote).
    pub fn new(wallet: &'a dyn FundingWallet, lock: bool) -> Self {
        Self::with_pool(wallet, lock, &std::sync::Arc::new(CoinPool::default()))
    }

    /// A coin source drawing from `pool` (shared with the other splices of
    /// a batch) that locks what it picks when `lock` is true.
    pub(crate) fn with_pool(
        wallet: &'a dyn FundingWallet,
        lock: bool,
        pool: &std::sync::Arc<CoinPool>,
    ) -> Self {
        SpliceCoinSource {
            wallet,
            lock,
            pool: pool.clone(),
            failure: std::sync::Mutex::new(None),
        }
    }

    /// The wallet failure that made the last selection fail, if it was one
    /// (rather than a lack of coins).
    pub fn take_failure(&self) -> Option<WalletError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
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
            self.wallet.lock_coins(&outpoints, super::COORDINATOR);
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
