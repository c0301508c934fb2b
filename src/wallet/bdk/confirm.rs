//! Feeding the BDK wallet through LDK's [`Confirm`], as Electrum- and
//! Esplora-based nodes feed their `ChannelManager` and `ChainMonitor`.
//!
//! The caller's sync passes the transactions it found confirmed and the new
//! tip; the wallet keeps those that spend or pay it. A sync that only asks
//! for LDK's watched outputs (lightning-transaction-sync) does not find
//! payments to the wallet's own addresses: sync the wallet's scripts with
//! `bdk_esplora`/`bdk_electrum` for that, or pass whole blocks.

use bdk_wallet::chain::{BlockId, ConfirmationBlockTime, TxUpdate};
use bdk_wallet::Update;
use bitcoin::block::Header;
use bitcoin::{BlockHash, Txid};
use lightning::chain::transaction::TransactionData;
use lightning::chain::Confirm;

use super::BdkWallet;

impl BdkWallet {
    /// Puts `block_id` into the wallet's chain with `tx_update` (the
    /// transactions it confirms) and writes the change.
    fn apply_at(
        &self,
        state: &mut super::State,
        block_id: BlockId,
        tx_update: TxUpdate<ConfirmationBlockTime>,
    ) {
        let chain = state.wallet.latest_checkpoint().insert(block_id);
        let update = Update {
            tx_update,
            chain: Some(chain),
            ..Update::default()
        };
        if let Err(e) = state.wallet.apply_update(update) {
            log::error!(
                "wallet could not take the block at height {}: {e}",
                block_id.height
            );
            return;
        }
        self.persist_or_log(state);
    }
}

impl Confirm for BdkWallet {
    fn transactions_confirmed(&self, header: &Header, txdata: &TransactionData, height: u32) {
        if height == 0 {
            return;
        }
        let mut state = self.lock();
        let relevant: Vec<_> = txdata
            .iter()
            .filter(|(_, tx)| super::is_relevant(&state.wallet, tx))
            .map(|(_, tx)| std::sync::Arc::new((*tx).clone()))
            .collect();
        let block_id = BlockId {
            height,
            hash: header.block_hash(),
        };
        let mut tx_update = TxUpdate::default();
        for tx in &relevant {
            tx_update.anchors.insert((
                ConfirmationBlockTime {
                    block_id,
                    confirmation_time: u64::from(header.time),
                },
                tx.compute_txid(),
            ));
        }
        tx_update.txs = relevant;
        self.apply_at(&mut state, block_id, tx_update);
    }

    fn transaction_unconfirmed(&self, txid: &Txid) {
        // Its anchor names a block that is no longer in the wallet's chain
        // once the new tip arrives (best_block_updated), so BDK counts it
        // unconfirmed from then on.
        log::debug!("wallet: {txid} unconfirmed");
    }

    fn best_block_updated(&self, header: &Header, height: u32) {
        if height == 0 {
            return;
        }
        let mut state = self.lock();
        let block_id = BlockId {
            height,
            hash: header.block_hash(),
        };
        self.apply_at(&mut state, block_id, TxUpdate::default());
    }

    fn get_relevant_txids(&self) -> Vec<(Txid, u32, Option<BlockHash>)> {
        let state = self.lock();
        let tip = state.wallet.latest_checkpoint().height();
        state
            .wallet
            .transactions()
            .filter_map(|tx| match tx.chain_position {
                bdk_wallet::chain::ChainPosition::Confirmed { anchor, .. } => Some((
                    tx.tx_node.txid,
                    anchor.block_id.height,
                    anchor.block_id.hash,
                )),
                _ => None,
            })
            // Deep enough that no reorg the caller's sync checks for can
            // reach it.
            .filter(|(_, height, _)| tip.saturating_sub(*height) < 144)
            .map(|(txid, height, hash)| (txid, height, Some(hash)))
            .collect()
    }
}
