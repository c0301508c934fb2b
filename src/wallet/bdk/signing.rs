//! Signing the wallet's own inputs of a negotiated splice transaction.

use bdk_wallet::KeychainKind;
use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::ecdsa;
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{CompressedPublicKey, Network, OutPoint, ScriptBuf, Transaction, Witness};

use super::BdkWallet;
use crate::wallet::WalletError;

impl BdkWallet {
    /// Signs, with SIGHASH_ALL, exactly the inputs of `tx` that spend
    /// `ours`, and returns the transaction with those witnesses filled in.
    /// Every outpoint in `ours` must be a P2WPKH coin of this wallet and
    /// appear in `tx`. Nothing is changed in the wallet.
    pub fn sign_inputs(
        &self,
        tx: Transaction,
        ours: &[OutPoint],
    ) -> Result<Transaction, WalletError> {
        let state = self.lock();
        self.sign_inputs_with(&state, tx, ours)
    }

    /// [`BdkWallet::sign_inputs`] with the wallet's state already locked.
    pub(super) fn sign_inputs_with(
        &self,
        state: &super::State,
        mut tx: Transaction,
        ours: &[OutPoint],
    ) -> Result<Transaction, WalletError> {
        let secp = state.wallet.secp_ctx();
        let mut to_sign = Vec::with_capacity(ours.len());
        for outpoint in ours {
            let index = tx
                .input
                .iter()
                .position(|input| input.previous_output == *outpoint)
                .ok_or_else(|| {
                    WalletError::Build(format!("{outpoint} is not spent by the transaction"))
                })?;
            // Spent or not: a fee bump of a broadcast splice signs the same
            // coins again.
            let txout = super::graph_output(&state.wallet, outpoint).ok_or_else(|| {
                WalletError::Build(format!("{outpoint} is not a coin of the wallet"))
            })?;
            let (keychain, derivation_index) = state
                .wallet
                .derivation_of_spk(txout.script_pubkey.clone())
                .ok_or_else(|| {
                    WalletError::Build(format!("{outpoint} is not a coin of the wallet"))
                })?;
            to_sign.push((index, *outpoint, txout, keychain, derivation_index));
        }
        let mut signatures = Vec::with_capacity(to_sign.len());
        {
            let mut cache = SighashCache::new(&tx);
            for (index, outpoint, txout, keychain, derivation_index) in &to_sign {
                let path = bip84_path(self.network, *keychain, *derivation_index);
                let key = self
                    .master_key
                    .derive_priv(secp, &path)
                    .map_err(|e| WalletError::Build(e.to_string()))?
                    .to_priv();
                let public = CompressedPublicKey::from_private_key(secp, &key)
                    .map_err(|e| WalletError::Build(e.to_string()))?;
                if ScriptBuf::new_p2wpkh(&public.wpubkey_hash()) != txout.script_pubkey {
                    return Err(WalletError::Build(format!(
                        "{outpoint} is not a P2WPKH coin this wallet can sign"
                    )));
                }
                let sighash = cache
                    .p2wpkh_signature_hash(
                        *index,
                        &txout.script_pubkey,
                        txout.value,
                        EcdsaSighashType::All,
                    )
                    .map_err(|e| WalletError::Build(e.to_string()))?;
                // Low-R signatures are what LDK's fee estimate assumes.
                let signature = secp.sign_ecdsa_low_r(&Message::from(sighash), &key.inner);
                let signature = ecdsa::Signature {
                    signature,
                    sighash_type: EcdsaSighashType::All,
                };
                signatures.push((*index, Witness::p2wpkh(&signature, &public.0)));
            }
        }
        for (index, witness) in signatures {
            tx.input[index].witness = witness;
        }
        Ok(tx)
    }
}

/// m/84'/coin'/0'/change/index, as the BIP84 templates derive.
fn bip84_path(network: Network, keychain: KeychainKind, index: u32) -> DerivationPath {
    let coin = if network == Network::Bitcoin { 0 } else { 1 };
    let change = match keychain {
        KeychainKind::External => 0,
        KeychainKind::Internal => 1,
    };
    DerivationPath::from(vec![
        ChildNumber::Hardened { index: 84 },
        ChildNumber::Hardened { index: coin },
        ChildNumber::Hardened { index: 0 },
        ChildNumber::Normal { index: change },
        ChildNumber::Normal { index },
    ])
}
