//! Keeping the wallet's view right beyond the blocks it is fed: its
//! unconfirmed transactions that left bitcoind's mempool are dropped (so
//! their coins are spendable again), and a wallet that was given a block
//! that does not connect is passed the missing blocks again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::{Network, Txid};
use lightning::chain::Listen;

use super::bitcoind::Bitcoind;
use crate::wallet::BdkWallet;

/// Runs until `stop` changes: after each new wallet tip, drops unconfirmed
/// wallet transactions missing from bitcoind's mempool at two tips in a
/// row; whenever the wallet asks for it, passes it the blocks from its tip
/// on.
pub(super) async fn watch_wallet(
    bitcoind: Arc<Bitcoind>,
    wallet: Arc<BdkWallet>,
    network: Network,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut evictions = Evictions::default();
    let mut last_tip = wallet.best_block().height;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if wallet.needs_resync() {
            resync(&bitcoind, &wallet, network).await;
        }
        let tip = wallet.best_block().height;
        if tip == last_tip {
            continue;
        }
        last_tip = tip;
        let unconfirmed = wallet.unconfirmed_txids();
        if unconfirmed.is_empty() {
            evictions.missing.clear();
            continue;
        }
        let mempool = match bitcoind.mempool_txids().await {
            Ok(mempool) => mempool,
            Err(e) => {
                log::debug!("wallet: mempool not checked: {e}");
                continue;
            }
        };
        let gone = evictions.update(tip, &unconfirmed, |txid| mempool.contains(txid));
        if !gone.is_empty() {
            log::info!(
                "wallet: {} unconfirmed transaction(s) left the mempool, their coins are free again: {gone:?}",
                gone.len()
            );
            wallet.transactions_evicted(&gone);
        }
    }
}

/// Unconfirmed transactions seen missing from the mempool, by the wallet tip
/// at which they were first missed.
#[derive(Default)]
struct Evictions {
    missing: HashMap<Txid, u32>,
}

impl Evictions {
    /// Notes which of `unconfirmed` are missing at `tip`; returns those that
    /// were already missing at an earlier tip (a transaction broadcast just
    /// before a check, or confirmed in a block the wallet has not taken
    /// yet, is never dropped on one look).
    fn update(
        &mut self,
        tip: u32,
        unconfirmed: &[Txid],
        in_mempool: impl Fn(&Txid) -> bool,
    ) -> Vec<Txid> {
        let missing_now: Vec<Txid> = unconfirmed
            .iter()
            .filter(|txid| !in_mempool(txid))
            .copied()
            .collect();
        self.missing.retain(|txid, _| missing_now.contains(txid));
        let mut gone = Vec::new();
        for txid in missing_now {
            let first_missed = *self.missing.entry(txid).or_insert(tip);
            if first_missed < tip {
                gone.push(txid);
                self.missing.remove(&txid);
            }
        }
        gone
    }
}

/// Passes the wallet every block from its tip to bitcoind's, through a
/// reorganisation if there was one.
async fn resync(bitcoind: &Bitcoind, wallet: &Arc<BdkWallet>, network: Network) {
    let from = wallet.best_block();
    log::info!(
        "wallet: passing it the blocks from {} at {} again",
        from.block_hash,
        from.height
    );
    let listeners: Vec<(lightning::chain::BlockLocator, &(dyn Listen + Send + Sync))> =
        vec![(from, &**wallet as &(dyn Listen + Send + Sync))];
    match lightning_block_sync::init::synchronize_listeners(bitcoind.rpc(), network, listeners)
        .await
    {
        Ok(_) => wallet.resync_done(),
        Err(e) => log::warn!("wallet: resync failed, tried again shortly: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn txid(n: u8) -> Txid {
        Txid::from_byte_array([n; 32])
    }

    #[test]
    fn a_transaction_is_dropped_only_when_missing_at_two_tips() {
        let mut evictions = Evictions::default();
        let (a, b) = (txid(1), txid(2));
        // Both missing at tip 10: nothing dropped yet.
        assert!(evictions.update(10, &[a, b], |_| false).is_empty());
        // Same tip again (no new block): still nothing.
        assert!(evictions.update(10, &[a, b], |_| false).is_empty());
        // At tip 11, b is back in the mempool; a is still missing: dropped.
        assert_eq!(evictions.update(11, &[a, b], |t| *t == b), vec![a]);
        // b went missing again at 12: a new first miss, not dropped.
        assert!(evictions.update(12, &[b], |_| false).is_empty());
        assert_eq!(evictions.update(13, &[b], |_| false), vec![b]);
    }
}
