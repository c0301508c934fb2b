//! The concrete LDK types the node is assembled from.

use std::sync::{Arc, RwLock};

use lightning::chain::chainmonitor;
use lightning::ln::peer_handler::IgnoringMessageHandler;
use lightning::onion_message::messenger::DefaultMessageRouter;
use lightning::routing::gossip::{NetworkGraph, P2PGossipSync};
use lightning::routing::router::DefaultRouter;
use lightning::routing::scoring::{ProbabilisticScorer, ProbabilisticScoringFeeParameters};
use lightning::routing::utxo::UtxoLookup;
use lightning::sign::{InMemorySigner, KeysManager};
use lightning_net_tokio::SocketDescriptor;

use super::bitcoind::Bitcoind;
use super::keys::WalletSignerProvider;
use crate::logger::LogBridge;

/// The node's `KVStore`.
pub type Store = super::node_store::NodeStore;

/// Unused chain filter: the node feeds whole blocks.
pub type NoFilter = Arc<dyn lightning::chain::Filter + Send + Sync>;

/// The node's `ChainMonitor`.
pub type ChainMonitor = chainmonitor::ChainMonitor<
    InMemorySigner,
    NoFilter,
    Arc<Bitcoind>,
    Arc<Bitcoind>,
    Arc<LogBridge>,
    Arc<Store>,
    Arc<KeysManager>,
>;

/// The node's network graph.
pub type Graph = NetworkGraph<Arc<LogBridge>>;

/// The node's payment scorer.
pub type Scorer = ProbabilisticScorer<Arc<Graph>, Arc<LogBridge>>;

/// The node's router.
pub type Router = DefaultRouter<
    Arc<Graph>,
    Arc<LogBridge>,
    Arc<KeysManager>,
    Arc<RwLock<Scorer>>,
    ProbabilisticScoringFeeParameters,
    Scorer,
>;

/// The node's onion message router.
pub type MessageRouter = DefaultMessageRouter<Arc<Graph>, Arc<LogBridge>, Arc<KeysManager>>;

/// The node's `ChannelManager`.
pub type ChannelManager = lightning::ln::channelmanager::ChannelManager<
    Arc<ChainMonitor>,
    Arc<Bitcoind>,
    Arc<KeysManager>,
    Arc<KeysManager>,
    Arc<WalletSignerProvider>,
    Arc<Bitcoind>,
    Arc<Router>,
    Arc<MessageRouter>,
    Arc<LogBridge>,
>;

/// UTXO lookups for gossip verification (none: gossip is not verified on-chain).
pub type NoUtxoLookup = Arc<dyn UtxoLookup + Send + Sync>;

/// The node's gossip handler.
pub type GossipSync = P2PGossipSync<Arc<Graph>, NoUtxoLookup, Arc<LogBridge>>;

/// The node's `PeerManager`.
pub type PeerManager = lightning::ln::peer_handler::PeerManager<
    SocketDescriptor,
    Arc<ChannelManager>,
    Arc<GossipSync>,
    IgnoringMessageHandler,
    Arc<LogBridge>,
    Arc<crate::liquidity::LiquidityMessageHandler>,
    Arc<KeysManager>,
    Arc<ChainMonitor>,
>;

/// The splice coordinator as the node runs it.
pub type NodeCoordinator =
    crate::coordinator::SpliceCoordinator<Arc<ChannelManager>, Arc<Bitcoind>>;

/// The batch coordinator as the node runs it.
pub type NodeBatches = crate::batch::BatchCoordinator<Arc<ChannelManager>, Arc<Bitcoind>>;

/// The liquidity service as the node runs it.
pub type NodeLiquidityService =
    crate::liquidity::LiquidityService<Arc<ChannelManager>, Arc<Bitcoind>>;

/// lightning-liquidity's manager (LSPS1, LSPS2, LSPS5) as the node runs it.
pub type LspsManager = lightning_liquidity::LiquidityManagerSync<
    Arc<KeysManager>,
    Arc<KeysManager>,
    Arc<ChannelManager>,
    Arc<Store>,
    lightning_liquidity::utils::time::DefaultTimeProvider,
    Arc<Bitcoind>,
>;
