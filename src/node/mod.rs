//! A complete LDK node: keys, channel manager, chain monitor, persistence,
//! peer networking over TCP, chain sync from bitcoind's RPC, a BDK wallet and
//! the background processor, assembled so examples and tests can run real
//! nodes with a few lines.
//!
//! It talks to bitcoind, or to the [`devchain`](crate::devchain), through the
//! same JSON-RPC calls.

mod anchors;
mod balances;
mod bitcoind;
mod builder;
mod channels;
mod coins;
mod connections;
mod error;
mod events;
mod fee_estimates;
mod invoices;
mod keys;
mod liquidity;
mod node_store;
mod payments;
mod peers;
mod splice_watch;
mod splicing;
mod start;
mod sweep;
mod sync;
mod tasks;
mod types;
mod wallet_sync;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, Amount, Network};
use lightning::bolt11_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};
use lightning::chain::{BlockLocator, Listen};
use lightning::ln::channel_state::ChannelDetails;
use lightning::ln::channelmanager::{
    Bolt11InvoiceParameters, ChainParameters, ChannelManagerReadArgs, OptionalBolt11PaymentParams,
    PaymentId,
};
use lightning::ln::peer_handler::{IgnoringMessageHandler, MessageHandler};
use lightning::ln::types::ChannelId;
use lightning::routing::gossip::P2PGossipSync;
use lightning::routing::router::DefaultRouter;
use lightning::routing::scoring::{
    ProbabilisticScorer, ProbabilisticScoringDecayParameters, ProbabilisticScoringFeeParameters,
};
use lightning::sign::{EntropySource, KeysManager, NodeSigner};
use lightning::types::payment::PaymentHash;
use lightning::util::config::UserConfig;
use lightning::util::persist::{
    read_channel_monitors, KVStoreSync, CHANNEL_MANAGER_PERSISTENCE_KEY,
    CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE, CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
    NETWORK_GRAPH_PERSISTENCE_KEY, NETWORK_GRAPH_PERSISTENCE_PRIMARY_NAMESPACE,
    NETWORK_GRAPH_PERSISTENCE_SECONDARY_NAMESPACE,
};
use lightning::util::ser::{ReadableArgs, Writeable};
use lightning_background_processor::{BackgroundProcessor, GossipSync as BpGossipSync};

pub use self::anchors::{BumpHandler, ClaimCoinSelection, ClaimWallet};
pub use self::balances::{NodeBalances, SweepInfo, SweepStatus};
pub use self::bitcoind::{Bitcoind, BroadcastRecord};
pub use self::builder::{ChainFeed, EventHook, NodeBuilder, NodeConfig, StoreWrapper};
pub use self::coins::CoinPreparation;
pub use self::error::NodeError;
pub use self::fee_estimates::{FeeEstimate, FeeTarget, TargetPolicy, FEE_TARGETS};
pub use self::keys::WalletSignerProvider;
pub use self::liquidity::LIQUIDITY_ANSWER_TIMEOUT;
pub use self::node_store::{NodeStore, StoreWrites};
pub use self::payments::{PaymentDirection, PaymentInfo, PaymentStatus};
pub use self::sweep::Sweeper;
pub use self::sync::ChainListeners;
pub use self::types::{
    ChainMonitor, ChannelManager, LspsManager, NodeBatches, NodeCoordinator, NodeLiquidityService,
    PeerManager, Store,
};

use self::events::NodeEventHandler;
use self::payments::PaymentStore;
use self::peers::PeerStore;
use crate::batch::{BatchId, BatchPlan, BatchQuote, BatchRecord, BatchState};
use crate::coordinator::{CoordinatorConfig, Destination, ResizeRequest};
use crate::events::EventNotifier;
use crate::fees::{FeePolicy, SpliceQuote};
use crate::ids::SpliceId;
use crate::logger::LogBridge;
use crate::record::SpliceRecord;
use crate::store::SharedStore;
use crate::wallet::{BdkWallet, FundingWallet, WalletBalance, WalletError};
use crate::SpliceError;

/// An LDK node, started by [`NodeBuilder::start`]. [`Node::stop`] stops its
/// tasks and writes its state; [`Node::start`] starts them again on the same
/// value (or build a new node from the same data directory).
pub struct Node {
    config: NodeConfig,
    keys: Arc<KeysManager>,
    bitcoind: Arc<Bitcoind>,
    wallet: Arc<BdkWallet>,
    store: Arc<Store>,
    chain_monitor: Arc<ChainMonitor>,
    channel_manager: Arc<ChannelManager>,
    peer_manager: Arc<PeerManager>,
    chain_listeners: Arc<ChainListeners>,
    sweeper: Arc<Sweeper>,
    coordinator: Arc<NodeCoordinator>,
    batches: Arc<NodeBatches>,
    payments: Arc<PaymentStore>,
    peers: Arc<PeerStore>,
    notify: Arc<tokio::sync::Notify>,
    event_listeners: Arc<Mutex<Vec<EventNotifier>>>,
    listen_addr: SocketAddr,
    liquidity: liquidity::LiquidityParts,
    /// What (re)starting the tasks needs.
    wiring: tasks::Wiring,
    /// The tasks and the background processor, while started.
    running: Mutex<Option<tasks::Running>>,
}

const SEED_FILE: &str = "seed";

impl Node {
    /// Our node id.
    pub fn node_id(&self) -> PublicKey {
        self.channel_manager.get_our_node_id()
    }

    /// The address peers reach us on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The channel manager, for everything this type does not wrap.
    pub fn channel_manager(&self) -> &Arc<ChannelManager> {
        &self.channel_manager
    }

    /// The chain monitor.
    pub fn chain_monitor(&self) -> &Arc<ChainMonitor> {
        &self.chain_monitor
    }

    /// The peer manager.
    pub fn peer_manager(&self) -> &Arc<PeerManager> {
        &self.peer_manager
    }

    /// The output sweeper: it spends what closed channels leave us into
    /// the wallet.
    pub fn sweeper(&self) -> &Arc<Sweeper> {
        &self.sweeper
    }

    /// The on-chain wallet.
    pub fn wallet(&self) -> &Arc<BdkWallet> {
        &self.wallet
    }

    /// The bitcoind connection (fee estimates, broadcasts).
    pub fn bitcoind(&self) -> &Arc<Bitcoind> {
        &self.bitcoind
    }

    /// The node's key-value store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The keys manager.
    pub fn keys(&self) -> &Arc<KeysManager> {
        &self.keys
    }

    /// Adds a chain listener that sees every block from now on.
    pub fn add_chain_listener(&self, listener: Arc<dyn Listen + Send + Sync>) {
        self.chain_listeners.add(listener);
    }

    /// A fresh on-chain receive address.
    pub fn new_address(&self) -> Result<Address, NodeError> {
        Ok(self.wallet.new_address()?)
    }

    /// The on-chain balance.
    pub fn onchain_balance(&self) -> WalletBalance {
        self.wallet.balance()
    }

    /// The height the node has synced to.
    pub fn best_block_height(&self) -> u32 {
        self.channel_manager.current_best_block().height
    }

    /// The node's parts that follow the chain, for a sync through LDK's
    /// `Confirm` (see [`ChainFeed::Confirm`]): the `ChannelManager`, the
    /// `ChainMonitor`, the on-chain wallet and the output sweeper, in the
    /// order to feed them.
    pub fn confirmables(&self) -> [&(dyn lightning::chain::Confirm + Send + Sync); 4] {
        [
            &*self.channel_manager,
            &*self.chain_monitor,
            &*self.wallet,
            &*self.sweeper,
        ]
    }

    /// Waits until `condition` holds, re-checking after every LDK event and
    /// every new block (and at least every 100 ms), for at most `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&Node) -> bool,
    ) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if condition(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Timeout(what.to_string()));
            }
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
                notified,
            )
            .await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Background tasks hold their own handles; tell them to end. The
        // background processor persists and joins in its own Drop.
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(running) = running {
            let _ = running.stop_sender.send(true);
        }
        self.peer_manager.disconnect_all_peers();
    }
}
