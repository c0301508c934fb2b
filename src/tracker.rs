//! Confirmation depth of splice transactions, from the blocks the node
//! connects and disconnects.

use std::collections::HashMap;

use bitcoin::Txid;

/// Heights at which watched transactions confirmed, and the chain tip.
#[derive(Debug, Default)]
pub struct ConfirmationTracker {
    /// Watched transactions and the height of the block that confirmed them.
    watched: HashMap<Txid, Option<u32>>,
    tip: u32,
}

impl ConfirmationTracker {
    /// Starts watching `txid`.
    pub fn watch(&mut self, txid: Txid) {
        self.watched.entry(txid).or_insert(None);
    }

    /// Watches `txid`, known to have `confirmations` at a tip of `tip`
    /// (what LDK reports after a restart).
    pub fn watch_confirmed(&mut self, txid: Txid, confirmations: u32, tip: u32) {
        self.tip = self.tip.max(tip);
        let height = (confirmations > 0).then(|| tip.saturating_sub(confirmations) + 1);
        self.watched.insert(txid, height);
    }

    /// Stops watching `txid`.
    pub fn forget(&mut self, txid: &Txid) {
        self.watched.remove(txid);
    }

    /// A block at `height` with these transactions became the tip.
    pub fn block_connected(&mut self, txids: impl Iterator<Item = Txid>, height: u32) {
        self.tip = height;
        for txid in txids {
            if let Some(confirmed_at) = self.watched.get_mut(&txid) {
                *confirmed_at = Some(height);
            }
        }
    }

    /// Blocks above `fork_height` were disconnected: transactions they
    /// confirmed are unconfirmed again.
    pub fn blocks_disconnected(&mut self, fork_height: u32) {
        self.tip = fork_height;
        for confirmed_at in self.watched.values_mut() {
            if confirmed_at.is_some_and(|h| h > fork_height) {
                *confirmed_at = None;
            }
        }
    }

    /// The confirmation height and depth of `txid`, if it is confirmed.
    pub fn depth(&self, txid: &Txid) -> Option<(u32, u32)> {
        let height = (*self.watched.get(txid)?)?;
        Some((height, self.tip.saturating_sub(height) + 1))
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
    fn depth_grows_with_blocks_and_a_reorg_takes_it_back() {
        let mut tracker = ConfirmationTracker::default();
        tracker.watch(txid(1));
        tracker.block_connected([txid(9)].into_iter(), 100);
        assert_eq!(tracker.depth(&txid(1)), None);
        tracker.block_connected([txid(1)].into_iter(), 101);
        assert_eq!(tracker.depth(&txid(1)), Some((101, 1)));
        tracker.block_connected(std::iter::empty(), 102);
        tracker.block_connected(std::iter::empty(), 103);
        assert_eq!(tracker.depth(&txid(1)), Some((101, 3)));
        tracker.blocks_disconnected(102);
        assert_eq!(tracker.depth(&txid(1)), Some((101, 2)));
        tracker.blocks_disconnected(100);
        assert_eq!(tracker.depth(&txid(1)), None);
        tracker.block_connected([txid(1)].into_iter(), 101);
        assert_eq!(tracker.depth(&txid(1)), Some((101, 1)));
    }

    #[test]
    fn unwatched_transactions_are_ignored() {
        let mut tracker = ConfirmationTracker::default();
        tracker.block_connected([txid(1)].into_iter(), 5);
        assert_eq!(tracker.depth(&txid(1)), None);
        tracker.watch(txid(1));
        tracker.forget(&txid(1));
        tracker.block_connected([txid(1)].into_iter(), 6);
        assert_eq!(tracker.depth(&txid(1)), None);
    }
}
