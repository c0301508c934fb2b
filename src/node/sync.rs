//! Keeping the channel manager, chain monitor and wallet on the chain tip
//! with lightning-block-sync.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bitcoin::block::Header;
use bitcoin::{Block, Network};
use lightning::chain::transaction::TransactionData;
use lightning::chain::{BlockLocator, Listen};
use lightning_block_sync::poll::{ChainPoller, ValidatedBlockHeader};
use lightning_block_sync::rpc::RpcClient;
use lightning_block_sync::{HeaderCache, SpvClient};

/// Every chain listener of the node, notified in order for each block.
/// More can be added while the node runs (e.g. a splice tracker).
#[derive(Default)]
pub struct ChainListeners {
    listeners: RwLock<Vec<Arc<dyn Listen + Send + Sync>>>,
}

impl ChainListeners {
    /// Adds a listener; it sees every block from now on.
    pub fn add(&self, listener: Arc<dyn Listen + Send + Sync>) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    fn each(&self, f: impl Fn(&dyn Listen)) {
        for listener in self
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            f(listener.as_ref());
        }
    }
}

impl Listen for ChainListeners {
    fn filtered_block_connected(&self, header: &Header, txdata: &TransactionData, height: u32) {
        self.each(|l| l.filtered_block_connected(header, txdata, height));
    }

    fn block_connected(&self, block: &Block, height: u32) {
        self.each(|l| l.block_connected(block, height));
    }

    fn blocks_disconnected(&self, fork_point: BlockLocator) {
        self.each(|l| l.blocks_disconnected(fork_point));
    }
}

/// Ticks the splice coordinator after each block the node's LDK objects
/// (listed before it) have seen, so depth changes show at once. The
/// coordinator itself needs no chain feed: it reads depths from LDK.
pub(crate) struct TickOnBlock(pub(crate) Arc<super::types::NodeCoordinator>);

impl Listen for TickOnBlock {
    fn filtered_block_connected(&self, _: &Header, _: &TransactionData, _: u32) {
        self.0.timer_tick();
    }

    fn blocks_disconnected(&self, _: BlockLocator) {
        self.0.timer_tick();
    }
}

/// Has the output sweeper spend what became spendable as soon as a block
/// arrives, rather than on the background processor's next sweep round
/// (every 30 s).
pub(crate) struct SweepOnBlock(pub(crate) Arc<super::sweep::Sweeper>);

impl Listen for SweepOnBlock {
    fn filtered_block_connected(&self, _: &Header, _: &TransactionData, _: u32) {
        if self
            .0
            .regenerate_and_broadcast_spend_if_necessary()
            .is_err()
        {
            log::warn!("the sweeper could not sweep (it tries again at the next block)");
        }
    }

    fn blocks_disconnected(&self, _: BlockLocator) {}
}

/// The SPV client that follows bitcoind's best chain for the node.
pub(crate) type ChainClient =
    SpvClient<ChainPoller<Arc<RpcClient>, RpcClient>, Arc<ChainListeners>>;

/// A chain client starting from `tip` (where the initial sync left every
/// listener) that notifies `listeners`.
pub(crate) fn chain_client(
    rpc: Arc<RpcClient>,
    network: Network,
    tip: ValidatedBlockHeader,
    cache: HeaderCache,
    listeners: Arc<ChainListeners>,
) -> ChainClient {
    SpvClient::new(tip, ChainPoller::new(rpc, network), cache, listeners)
}

/// Polls bitcoind for the best chain and feeds new blocks to the listeners
/// until `stop` changes. Calls `on_change` after blocks connected.
pub(crate) async fn run_chain_sync(
    mut client: ChainClient,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    on_change: impl Fn(),
) {
    let mut failures = 0u32;
    loop {
        match client.poll_best_tip().await {
            Ok((_, true)) => {
                failures = 0;
                on_change();
            }
            Ok((_, false)) => failures = 0,
            Err(e) => {
                failures += 1;
                // Say it once, then every minute or so, not every poll.
                if failures == 1 || failures % 60 == 0 {
                    log::warn!("chain sync failed ({failures} in a row): {e:?}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}
