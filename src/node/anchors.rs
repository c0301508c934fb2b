//! Fee-bumping our force-close transactions on anchor channels: LDK's
//! `BumpTransactionEventHandlerSync`, with the node's wallet as the source
//! of the coins that pay for the commitment's child (CPFP) and for the
//! zero-fee HTLC transactions.
//!
//! The wallet offers only confirmed coins that no splice or payment has
//! locked, and before it signs it checks again that every coin of ours in
//! the claim is still free and pays only the claim's fee (see
//! [`BdkWallet::sign_claim`]). The signed transaction is recorded in the
//! wallet at once, so its coins count as spent before the broadcast.

use std::sync::Arc;

use bitcoin::{OutPoint, Psbt, ScriptBuf, Transaction, WPubkeyHash};
use lightning::events::bump_transaction::sync::BumpTransactionEventHandlerSync;
use lightning::sign::KeysManager;
use lightning::util::wallet_utils::{Utxo, WalletSourceSync, WalletSync};

use super::bitcoind::Bitcoind;
use crate::logger::LogBridge;
use crate::wallet::BdkWallet;

/// The node's wallet seen as LDK's coin source for claims.
pub struct ClaimWallet(pub(crate) Arc<BdkWallet>);

impl WalletSourceSync for ClaimWallet {
    fn list_confirmed_utxos(&self) -> Result<Vec<Utxo>, ()> {
        Ok(self
            .0
            .spendable_coins()
            .into_iter()
            .filter_map(|coin| {
                let hash = p2wpkh_hash(&coin.output.script_pubkey)?;
                Some(Utxo::new_v0_p2wpkh(coin.outpoint, coin.output.value, &hash))
            })
            .collect())
    }

    fn get_prevtx(&self, outpoint: OutPoint) -> Result<Transaction, ()> {
        self.0.previous_transaction(&outpoint).ok_or_else(|| {
            log::error!("claim: the wallet lost the transaction of {outpoint}");
        })
    }

    fn get_change_script(&self) -> Result<ScriptBuf, ()> {
        lightning::sign::ChangeDestinationSourceSync::get_change_destination_script(&*self.0)
    }

    fn sign_psbt(&self, psbt: Psbt) -> Result<Transaction, ()> {
        let txid = psbt.unsigned_tx.compute_txid();
        self.0.sign_claim(psbt).map_err(|e| {
            // LDK tries again at the next block, with the coins free then.
            log::warn!("not signing claim {txid}: {e}");
        })
    }
}

/// The key hash a P2WPKH script pays to.
fn p2wpkh_hash(script: &ScriptBuf) -> Option<WPubkeyHash> {
    use bitcoin::hashes::Hash;
    if !script.is_p2wpkh() {
        return None;
    }
    WPubkeyHash::from_slice(&script.as_bytes()[2..22]).ok()
}

/// LDK's coin selection over the node's wallet.
pub type ClaimCoinSelection = WalletSync<Arc<ClaimWallet>, Arc<LogBridge>>;

/// The handler the node gives every `Event::BumpTransaction`.
pub type BumpHandler = BumpTransactionEventHandlerSync<
    Arc<Bitcoind>,
    Arc<ClaimCoinSelection>,
    Arc<KeysManager>,
    Arc<LogBridge>,
>;

/// A bump handler paying from `wallet` and broadcasting through `bitcoind`.
pub(crate) fn bump_handler(
    wallet: Arc<BdkWallet>,
    bitcoind: Arc<Bitcoind>,
    keys: Arc<KeysManager>,
    logger: Arc<LogBridge>,
) -> BumpHandler {
    let coins = Arc::new(WalletSync::new(
        Arc::new(ClaimWallet(wallet)),
        logger.clone(),
    ));
    BumpTransactionEventHandlerSync::new(bitcoind, coins, keys, logger)
}
