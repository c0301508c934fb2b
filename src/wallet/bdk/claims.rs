//! Paying the fees of LDK's claim transactions from the wallet: the child
//! that pays for an anchor channel's commitment (CPFP) and the inputs that
//! fund zero-fee HTLC transactions. LDK picks the coins from the ones the
//! wallet offers and builds the transaction; the wallet checks it and signs
//! its own inputs.

use bitcoin::{Amount, OutPoint, Psbt, Transaction};

use super::BdkWallet;
use crate::wallet::WalletError;

impl BdkWallet {
    /// Signs the inputs of `psbt` that spend this wallet's coins, for a claim
    /// transaction LDK built from coins the wallet offered
    /// ([`BdkWallet::spendable_coins`]), and records the transaction as
    /// broadcast at once, so that nothing else picks its coins meanwhile.
    ///
    /// Refused, with nothing signed or recorded, when a coin of ours in it is
    /// no longer spendable (a splice or a payment locked it since it was
    /// offered, or another transaction spends it), when no input is ours,
    /// when the value of an input is unknown, or when the wallet's coins
    /// would pay for anything but the transaction's fee and the wallet
    /// itself.
    pub fn sign_claim(&self, psbt: Psbt) -> Result<Transaction, WalletError> {
        let mut state = self.lock();
        let spendable: std::collections::BTreeMap<OutPoint, Amount> = state
            .wallet
            .list_unspent()
            .filter(|utxo| utxo.chain_position.is_confirmed())
            .filter(|utxo| !state.wallet.is_outpoint_locked(utxo.outpoint))
            .map(|utxo| (utxo.outpoint, utxo.txout.value))
            .collect();

        let tx = &psbt.unsigned_tx;
        let mut ours = Vec::new();
        let mut from_wallet = Amount::ZERO;
        let mut total_in = Amount::ZERO;
        for (index, input) in tx.input.iter().enumerate() {
            let outpoint = input.previous_output;
            let value = match spendable.get(&outpoint) {
                Some(value) => {
                    ours.push(outpoint);
                    from_wallet = checked_add(from_wallet, *value)?;
                    *value
                }
                None if owns(&state, &outpoint) => {
                    return Err(WalletError::Build(format!(
                        "claim spends {outpoint}, which is locked or no longer spendable"
                    )));
                }
                None => psbt
                    .inputs
                    .get(index)
                    .and_then(|i| i.witness_utxo.as_ref())
                    .map(|o| o.value)
                    .ok_or_else(|| {
                        WalletError::Build(format!("claim input {outpoint} has no known value"))
                    })?,
            };
            total_in = checked_add(total_in, value)?;
        }
        if ours.is_empty() {
            return Err(WalletError::Build("claim spends no coin of ours".into()));
        }
        let mut to_wallet = Amount::ZERO;
        let mut total_out = Amount::ZERO;
        for output in &tx.output {
            total_out = checked_add(total_out, output.value)?;
            if state.wallet.is_mine(output.script_pubkey.clone()) {
                to_wallet = checked_add(to_wallet, output.value)?;
            }
        }
        let fee = total_in
            .checked_sub(total_out)
            .ok_or_else(|| WalletError::Build("claim pays out more than it spends".into()))?;
        let spent_by_wallet = from_wallet.checked_sub(to_wallet).unwrap_or(Amount::ZERO);
        if spent_by_wallet > fee {
            return Err(WalletError::Build(format!(
                "claim would pay {} sat of wallet funds to others beyond its fee of {} sat",
                (spent_by_wallet - fee).to_sat(),
                fee.to_sat()
            )));
        }

        let signed = self.sign_inputs_with(&state, psbt.unsigned_tx.clone(), &ours)?;
        super::record_unconfirmed(&mut state.wallet, &signed);
        self.persist(&mut state)?;
        log::info!(
            "wallet pays {} sat towards claim {} with {} coin(s)",
            spent_by_wallet.to_sat(),
            signed.compute_txid(),
            ours.len()
        );
        Ok(signed)
    }
}

/// Whether `outpoint` is (or was) an output of the wallet.
fn owns(state: &super::State, outpoint: &OutPoint) -> bool {
    super::graph_output(&state.wallet, outpoint)
        .is_some_and(|out| state.wallet.is_mine(out.script_pubkey))
}

fn checked_add(a: Amount, b: Amount) -> Result<Amount, WalletError> {
    a.checked_add(b)
        .ok_or_else(|| WalletError::Build("amounts overflow".into()))
}
