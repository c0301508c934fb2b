//! A complete LDK node: keys, channel manager, chain monitor, persistence,
//! peer networking over TCP, chain sync from bitcoind's RPC, a BDK wallet and
//! the background processor, assembled so examples and tests can run real
//! nodes with a few lines.
//!
//! It talks to bitcoind, or to the [`devchain`](crate::devchain), through the
//! same JSON-RPC calls.

mod bitcoind;
mod events;
mod keys;
mod payments;
mod peers;
mod sync;
mod types;

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

pub use self::bitcoind::{Bitcoind, BroadcastRecord};
pub use self::keys::WalletSignerProvider;
pub use self::payments::{PaymentDirection, PaymentInfo, PaymentStatus};
pub use self::sync::ChainListeners;
pub use self::types::{
    ChainMonitor, ChannelManager, NodeBatches, NodeCoordinator, PeerManager, Store,
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
use crate::wallet::{SharedStore, SpliceWallet, WalletBalance, WalletError};
use crate::SpliceError;

/// What building, running or asking the node can fail with.
#[derive(Debug)]
pub enum NodeError {
    /// The data directory or the store could not be used.
    Storage(String),
    /// bitcoind could not be reached or answered something unusable.
    Chain(String),
    /// The on-chain wallet failed.
    Wallet(WalletError),
    /// A peer could not be reached.
    Connection(String),
    /// LDK refused the request.
    Lightning(String),
    /// The request itself is wrong.
    InvalidInput(String),
    /// The thing asked for did not happen in time.
    Timeout(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Storage(e) => write!(f, "storage error: {e}"),
            NodeError::Chain(e) => write!(f, "chain source error: {e}"),
            NodeError::Wallet(e) => write!(f, "wallet error: {e}"),
            NodeError::Connection(e) => write!(f, "connection error: {e}"),
            NodeError::Lightning(e) => write!(f, "lightning error: {e}"),
            NodeError::InvalidInput(e) => write!(f, "invalid input: {e}"),
            NodeError::Timeout(e) => write!(f, "timed out: {e}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<WalletError> for NodeError {
    fn from(e: WalletError) -> Self {
        NodeError::Wallet(e)
    }
}

/// Everything needed to start a [`Node`]. Build it with [`NodeBuilder`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the seed, channel state, wallet and logs live.
    pub data_dir: PathBuf,
    /// The Bitcoin network.
    pub network: Network,
    /// bitcoind's RPC URL, e.g. `http://127.0.0.1:18443`.
    pub bitcoind_rpc_url: String,
    /// RPC user name.
    pub bitcoind_rpc_user: String,
    /// RPC password.
    pub bitcoind_rpc_password: String,
    /// Where to accept Lightning peers; port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// Accept splices peers start on our channels (LDK's default is to refuse).
    pub accept_inbound_splices: bool,
    /// Accept channels peers open to us.
    pub accept_inbound_channels: bool,
    /// How often to poll bitcoind for new blocks.
    pub chain_poll_interval: Duration,
    /// How often to refresh fee estimates.
    pub fee_update_interval: Duration,
    /// How often to reconnect to channel peers we lost.
    pub reconnect_interval: Duration,
}

/// Turns the node's store into the one this crate's own state (the splice
/// journal and the wallet) is written through.
pub type StoreWrapper = Arc<dyn Fn(SharedStore) -> SharedStore + Send + Sync>;

/// Builds a [`Node`] from a data directory, network, bitcoind RPC endpoint
/// and listen address.
#[derive(Clone)]
pub struct NodeBuilder {
    config: NodeConfig,
    wrap_store: Option<StoreWrapper>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .field("wraps_store", &self.wrap_store.is_some())
            .finish()
    }
}

impl NodeBuilder {
    /// A builder for a regtest node in `data_dir`, talking to bitcoind on
    /// `127.0.0.1:18443` and listening on a free loopback port.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeBuilder {
            config: NodeConfig {
                data_dir: data_dir.into(),
                network: Network::Regtest,
                bitcoind_rpc_url: "http://127.0.0.1:18443".into(),
                bitcoind_rpc_user: String::new(),
                bitcoind_rpc_password: String::new(),
                listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                accept_inbound_splices: true,
                accept_inbound_channels: true,
                chain_poll_interval: Duration::from_secs(1),
                fee_update_interval: Duration::from_secs(60),
                reconnect_interval: Duration::from_secs(5),
            },
            wrap_store: None,
        }
    }

    /// Sets the network.
    pub fn network(mut self, network: Network) -> Self {
        self.config.network = network;
        self
    }

    /// Sets bitcoind's RPC URL and credentials.
    pub fn bitcoind_rpc(
        mut self,
        url: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.config.bitcoind_rpc_url = url.into();
        self.config.bitcoind_rpc_user = user.into();
        self.config.bitcoind_rpc_password = password.into();
        self
    }

    /// Sets the address to accept Lightning peers on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen_addr = addr;
        self
    }

    /// Whether to accept splices that peers start (default: yes).
    pub fn accept_inbound_splices(mut self, accept: bool) -> Self {
        self.config.accept_inbound_splices = accept;
        self
    }

    /// Whether to accept channels that peers open (default: yes).
    pub fn accept_inbound_channels(mut self, accept: bool) -> Self {
        self.config.accept_inbound_channels = accept;
        self
    }

    /// How often to poll bitcoind for blocks (default 1 s).
    pub fn chain_poll_interval(mut self, interval: Duration) -> Self {
        self.config.chain_poll_interval = interval;
        self
    }

    /// How often to reconnect to lost channel peers (default 5 s).
    pub fn reconnect_interval(mut self, interval: Duration) -> Self {
        self.config.reconnect_interval = interval;
        self
    }

    /// Writes this crate's own state (the splice journal and the wallet)
    /// through the store `wrap` makes of the node's store: to count writes,
    /// mirror them, or (in tests) make them fail. LDK's own state is written
    /// to the node's store directly.
    pub fn wrap_splice_store(
        mut self,
        wrap: impl Fn(SharedStore) -> SharedStore + Send + Sync + 'static,
    ) -> Self {
        self.wrap_store = Some(Arc::new(wrap));
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Starts the node. Must be called inside a multi-threaded tokio runtime.
    pub async fn start(self) -> Result<Node, NodeError> {
        Node::start(self.config, self.wrap_store).await
    }
}

/// A running LDK node. Stop it with [`Node::stop`]; start it again from the
/// same data directory with a new [`NodeBuilder`].
pub struct Node {
    config: NodeConfig,
    keys: Arc<KeysManager>,
    bitcoind: Arc<Bitcoind>,
    wallet: Arc<SpliceWallet>,
    store: Arc<Store>,
    chain_monitor: Arc<ChainMonitor>,
    channel_manager: Arc<ChannelManager>,
    peer_manager: Arc<PeerManager>,
    chain_listeners: Arc<ChainListeners>,
    coordinator: Arc<NodeCoordinator>,
    batches: Arc<NodeBatches>,
    payments: Arc<PaymentStore>,
    peers: Arc<PeerStore>,
    notify: Arc<tokio::sync::Notify>,
    event_listeners: Arc<Mutex<Vec<EventNotifier>>>,
    listen_addr: SocketAddr,
    stop_sender: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    background: Mutex<Option<BackgroundProcessor>>,
}

const SEED_FILE: &str = "seed";

impl Node {
    async fn start(
        config: NodeConfig,
        wrap_store: Option<StoreWrapper>,
    ) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Storage(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let seed = read_or_create_seed(&config.data_dir.join(SEED_FILE))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let keys = Arc::new(KeysManager::new(
            &seed,
            now.as_secs(),
            now.subsec_nanos(),
            true,
        ));
        let store = Arc::new(Store::new(config.data_dir.join("ldk")));
        let node_store: SharedStore = store.clone();
        let shared_store: SharedStore = match &wrap_store {
            Some(wrap) => wrap(node_store.clone()),
            None => node_store.clone(),
        };
        let logger = Arc::new(LogBridge);

        let bitcoind = Bitcoind::connect(
            &config.bitcoind_rpc_url,
            &config.bitcoind_rpc_user,
            &config.bitcoind_rpc_password,
            config.network,
        )
        .await?;
        let (tip_height, tip_hash) = bitcoind.tip().await?;

        let wallet_is_new = !SpliceWallet::exists(&shared_store)?;
        let birthday = if wallet_is_new {
            Some(bitcoind.block(&tip_hash).await?)
        } else {
            None
        };
        let wallet = Arc::new(SpliceWallet::load_or_create(
            &seed,
            config.network,
            shared_store.clone(),
            birthday.as_ref(),
            tip_height,
        )?);
        let signer_provider = Arc::new(WalletSignerProvider::new(keys.clone(), wallet.clone()));

        let chain_monitor: Arc<ChainMonitor> = Arc::new(ChainMonitor::new(
            None,
            bitcoind.clone(),
            logger.clone(),
            bitcoind.clone(),
            store.clone(),
            keys.clone(),
            keys.get_peer_storage_key(),
            // Monitor updates are written only after the ChannelManager that
            // produced them (the background processor persists, then
            // flushes): a crash can then never leave a manager older than
            // its monitors, which LDK would answer with a force-close.
            true,
        ));

        let graph = Arc::new(read_network_graph(&store, config.network, &logger));
        let scorer = Arc::new(RwLock::new(ProbabilisticScorer::new(
            ProbabilisticScoringDecayParameters::default(),
            graph.clone(),
            logger.clone(),
        )));
        let router = Arc::new(DefaultRouter::new(
            graph.clone(),
            logger.clone(),
            keys.clone(),
            scorer.clone(),
            ProbabilisticScoringFeeParameters::default(),
        ));
        let message_router = Arc::new(
            lightning::onion_message::messenger::DefaultMessageRouter::new(
                graph.clone(),
                keys.clone(),
            ),
        );

        let user_config = UserConfig {
            reject_inbound_splices: !config.accept_inbound_splices,
            ..Default::default()
        };

        let mut monitors =
            read_channel_monitors(store.clone(), keys.clone(), signer_provider.clone())
                .map_err(|e| NodeError::Storage(format!("reading channel monitors: {e}")))?;

        let manager_bytes = store
            .read(
                CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
                CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
                CHANNEL_MANAGER_PERSISTENCE_KEY,
            )
            .ok();
        let (manager_best_block, channel_manager) = match manager_bytes {
            Some(bytes) => {
                let read_args = ChannelManagerReadArgs::new(
                    keys.clone(),
                    keys.clone(),
                    signer_provider.clone(),
                    bitcoind.clone(),
                    chain_monitor.clone(),
                    bitcoind.clone(),
                    router.clone(),
                    message_router.clone(),
                    logger.clone(),
                    user_config,
                    monitors.iter().map(|(_, m)| m).collect(),
                );
                let (best_block, manager) =
                    <(BlockLocator, ChannelManager)>::read(&mut &bytes[..], read_args).map_err(
                        |e| NodeError::Storage(format!("reading channel manager: {e:?}")),
                    )?;
                (best_block, manager)
            }
            None => {
                let best_block = BlockLocator::new(tip_hash, tip_height);
                let manager = ChannelManager::new(
                    bitcoind.clone(),
                    chain_monitor.clone(),
                    bitcoind.clone(),
                    router.clone(),
                    message_router.clone(),
                    logger.clone(),
                    keys.clone(),
                    keys.clone(),
                    signer_provider.clone(),
                    user_config,
                    ChainParameters {
                        network: config.network,
                        best_block,
                    },
                    now.as_secs() as u32,
                );
                (best_block, manager)
            }
        };
        let channel_manager = Arc::new(channel_manager);

        // Bring every listener to the tip, each from where it stopped.
        let rpc = bitcoind.rpc();
        let (cache, chain_tip) = {
            let monitor_listeners: Vec<_> = monitors
                .drain(..)
                .map(|(best, monitor)| {
                    (
                        best,
                        (monitor, bitcoind.clone(), bitcoind.clone(), logger.clone()),
                    )
                })
                .collect();
            let mut listeners: Vec<(BlockLocator, &(dyn Listen + Send + Sync))> = Vec::new();
            for (best, listener) in &monitor_listeners {
                listeners.push((*best, listener as &(dyn Listen + Send + Sync)));
            }
            listeners.push((
                manager_best_block,
                &*channel_manager as &(dyn Listen + Send + Sync),
            ));
            listeners.push((wallet.best_block(), &*wallet as &(dyn Listen + Send + Sync)));
            let synced = lightning_block_sync::init::synchronize_listeners(
                rpc.clone(),
                config.network,
                listeners,
            )
            .await
            .map_err(|e| NodeError::Chain(format!("initial chain sync failed: {e:?}")))?;
            for (_, (monitor, ..)) in monitor_listeners {
                let channel_id = monitor.channel_id();
                chain_monitor
                    .load_existing_monitor(channel_id, monitor)
                    .map_err(|()| {
                        NodeError::Storage(format!("monitor for {channel_id} refused"))
                    })?;
            }
            synced
        };

        {
            // Whatever we broadcast (splices, channel fundings, closes) is
            // the wallet's at once: its inputs spent, its change pending.
            let wallet = wallet.clone();
            bitcoind.on_broadcast(Box::new(move |tx| wallet.transaction_broadcast(tx)));
        }
        let coordinator = Arc::new(
            NodeCoordinator::new(
                channel_manager.clone(),
                wallet.clone(),
                bitcoind.clone(),
                shared_store.clone(),
                CoordinatorConfig {
                    network: config.network,
                },
            )
            .map_err(|e| NodeError::Storage(format!("splice journal: {e}")))?,
        );
        let batches = NodeBatches::new(coordinator.clone())
            .map_err(|e| NodeError::Storage(format!("batches: {e}")))?;

        let chain_listeners = Arc::new(ChainListeners::default());
        chain_listeners.add(channel_manager.clone());
        chain_listeners.add(chain_monitor.clone());
        chain_listeners.add(wallet.clone());
        chain_listeners.add(coordinator.clone());

        let gossip_sync = Arc::new(P2PGossipSync::new(
            graph.clone(),
            None::<types::NoUtxoLookup>,
            logger.clone(),
        ));
        let peer_manager = Arc::new(PeerManager::new(
            MessageHandler {
                chan_handler: channel_manager.clone(),
                route_handler: gossip_sync.clone(),
                onion_message_handler: IgnoringMessageHandler {},
                custom_message_handler: IgnoringMessageHandler {},
                send_only_message_handler: chain_monitor.clone(),
            },
            now.as_secs() as u32,
            &keys.get_secure_random_bytes(),
            logger.clone(),
            keys.clone(),
        ));

        let payments = Arc::new(PaymentStore::load(node_store.clone()));
        let peers = Arc::new(PeerStore::load(node_store.clone()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let event_listeners: Arc<Mutex<Vec<EventNotifier>>> = Arc::default();
        {
            let notify = notify.clone();
            let listeners = event_listeners.clone();
            coordinator.set_event_notifier(Box::new(move |event| {
                for listener in listeners.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    listener(event);
                }
                notify.notify_waiters();
            }));
        }
        let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);

        let handler = NodeEventHandler {
            channel_manager: channel_manager.clone(),
            wallet: wallet.clone(),
            bitcoind: bitcoind.clone(),
            payments: payments.clone(),
            store: node_store.clone(),
            notify: notify.clone(),
            accept_inbound_channels: config.accept_inbound_channels,
            coordinator: coordinator.clone(),
            peer_manager: peer_manager.clone(),
        };
        let background = BackgroundProcessor::start(
            store.clone(),
            move |event| handler.handle(event),
            chain_monitor.clone(),
            channel_manager.clone(),
            lightning_background_processor::NO_ONION_MESSENGER,
            BpGossipSync::p2p(gossip_sync.clone()),
            peer_manager.clone(),
            lightning_background_processor::NO_LIQUIDITY_MANAGER_SYNC,
            None::<Arc<types::NoSweeper>>,
            logger.clone(),
            Some(scorer.clone()),
        );

        let listener = tokio::net::TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| {
                NodeError::Connection(format!("cannot listen on {}: {e}", config.listen_addr))
            })?;
        let listen_addr = listener
            .local_addr()
            .map_err(|e| NodeError::Connection(e.to_string()))?;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(accept_peers(
            listener,
            peer_manager.clone(),
            stop_receiver.clone(),
        )));
        {
            let notify = notify.clone();
            let client = sync::chain_client(
                rpc,
                config.network,
                chain_tip,
                cache,
                chain_listeners.clone(),
            );
            tasks.push(tokio::spawn(sync::run_chain_sync(
                client,
                config.chain_poll_interval,
                stop_receiver.clone(),
                move || notify.notify_waiters(),
            )));
        }
        tasks.push(tokio::spawn(tick_coordinator(
            batches.clone(),
            stop_receiver.clone(),
        )));
        tasks.push(tokio::spawn(update_fees(
            bitcoind.clone(),
            config.fee_update_interval,
            stop_receiver.clone(),
        )));
        tasks.push(tokio::spawn(reconnect_peers(
            channel_manager.clone(),
            peer_manager.clone(),
            peers.clone(),
            config.reconnect_interval,
            stop_receiver,
        )));

        log::info!(
            "node {} listening on {listen_addr}",
            channel_manager.get_our_node_id()
        );
        Ok(Node {
            config,
            keys,
            bitcoind,
            wallet,
            store,
            chain_monitor,
            channel_manager,
            peer_manager,
            chain_listeners,
            coordinator,
            batches,
            payments,
            peers,
            notify,
            event_listeners,
            listen_addr,
            stop_sender,
            tasks: Mutex::new(tasks),
            background: Mutex::new(Some(background)),
        })
    }

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

    /// The on-chain wallet.
    pub fn wallet(&self) -> &Arc<SpliceWallet> {
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

    /// Connects to a peer and waits for the handshake to finish.
    pub async fn connect(&self, node_id: PublicKey, addr: SocketAddr) -> Result<(), NodeError> {
        connect_peer(&self.peer_manager, node_id, addr).await?;
        self.peers.insert(node_id, addr);
        Ok(())
    }

    /// Whether the handshake with `node_id` is done and the peer is connected.
    pub fn is_connected(&self, node_id: &PublicKey) -> bool {
        self.peer_manager.peer_by_node_id(node_id).is_some()
    }

    /// Disconnects `node_id` (the reconnect task will dial it again later if
    /// we have a channel with it).
    pub fn disconnect(&self, node_id: &PublicKey) {
        self.peer_manager.disconnect_by_node_id(*node_id);
    }

    /// Opens a channel of `capacity` to a connected peer, funded from the
    /// on-chain wallet, pushing `push` to them. Returns the temporary channel
    /// id; the funding transaction is broadcast once the peer signs.
    pub fn open_channel(
        &self,
        node_id: PublicKey,
        capacity: Amount,
        push: Amount,
    ) -> Result<ChannelId, NodeError> {
        if !self.is_connected(&node_id) {
            return Err(NodeError::Connection(format!(
                "peer {node_id} is not connected"
            )));
        }
        let push_msat = push
            .to_sat()
            .checked_mul(1000)
            .filter(|_| push < capacity)
            .ok_or_else(|| NodeError::InvalidInput("push must be less than the capacity".into()))?;
        let needed = capacity;
        let available = self.wallet.available_balance();
        if needed > available {
            return Err(NodeError::Wallet(WalletError::InsufficientFunds {
                needed,
                available,
            }));
        }
        let user_channel_id = u128::from_be_bytes(
            self.keys.get_secure_random_bytes()[..16]
                .try_into()
                .unwrap_or([0; 16]),
        );
        self.channel_manager
            .create_channel(
                node_id,
                capacity.to_sat(),
                push_msat,
                user_channel_id,
                None,
                None,
            )
            .map_err(|e| NodeError::Lightning(format!("{e:?}")))
    }

    /// Every channel, with its balances and state.
    pub fn list_channels(&self) -> Vec<ChannelDetails> {
        self.channel_manager.list_channels()
    }

    /// The channel with `channel_id`, if we have it.
    pub fn channel(&self, channel_id: &ChannelId) -> Option<ChannelDetails> {
        self.list_channels()
            .into_iter()
            .find(|c| c.channel_id == *channel_id)
    }

    /// Our balance in a channel, fees of the commitment transaction
    /// included, as of the latest negotiated funding (a pending splice
    /// counts). `None` for an unknown channel.
    pub fn channel_balance(&self, channel_id: &ChannelId) -> Option<Amount> {
        let monitor = self.chain_monitor.get_monitor(*channel_id).ok()?;
        monitor
            .get_claimable_balances()
            .into_iter()
            .find_map(|balance| match balance {
                lightning::chain::channelmonitor::Balance::ClaimableOnChannelClose {
                    balance_candidates,
                    ..
                } => balance_candidates
                    .last()
                    .map(|b| Amount::from_sat(b.amount_satoshis + b.transaction_fee_satoshis)),
                _ => None,
            })
    }

    /// Closes a channel cooperatively. LDK refuses to start a close while
    /// a channel monitor update is still being written; the node writes
    /// them right after persisting the channel manager (deferred monitor
    /// writes), so this first waits (up to ten seconds) for those to land.
    pub async fn close_channel(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
    ) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.chain_monitor.pending_operation_count() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.channel_manager
            .close_channel(channel_id, counterparty)
            .map_err(|e| NodeError::Lightning(format!("{e:?}")))
    }

    /// Creates a BOLT11 invoice for `amount_msat` (any amount when `None`).
    pub fn create_invoice(
        &self,
        amount_msat: Option<u64>,
        description: &str,
        expiry: Duration,
    ) -> Result<Bolt11Invoice, NodeError> {
        let description = Description::new(description.to_string())
            .map_err(|e| NodeError::InvalidInput(format!("description: {e}")))?;
        let params = Bolt11InvoiceParameters {
            amount_msats: amount_msat,
            description: Bolt11InvoiceDescription::Direct(description),
            invoice_expiry_delta_secs: Some(u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        let invoice = self
            .channel_manager
            .create_bolt11_invoice(params)
            .map_err(|e| NodeError::Lightning(format!("{e:?}")))?;
        let hash = invoice.payment_hash();
        self.payments.upsert(hash, PaymentDirection::Inbound, |p| {
            p.amount_msat = amount_msat
        });
        Ok(invoice)
    }

    /// Pays a BOLT11 invoice; returns its payment hash. Follow it with
    /// [`Node::payment`] or [`Node::wait_for_payment`].
    pub fn pay_invoice(&self, invoice: &Bolt11Invoice) -> Result<PaymentHash, NodeError> {
        let hash = invoice.payment_hash();
        let payment_id = PaymentId(hash.0);
        self.payments.upsert(hash, PaymentDirection::Outbound, |p| {
            p.amount_msat = invoice.amount_milli_satoshis();
            p.status = PaymentStatus::Pending;
        });
        self.channel_manager
            .pay_for_bolt11_invoice(
                invoice,
                payment_id,
                None,
                OptionalBolt11PaymentParams::default(),
            )
            .map_err(|e| {
                self.payments.upsert(hash, PaymentDirection::Outbound, |p| {
                    p.status = PaymentStatus::Failed;
                });
                NodeError::Lightning(format!("{e:?}"))
            })?;
        Ok(hash)
    }

    /// What the node knows of a payment.
    pub fn payment(&self, hash: &PaymentHash) -> Option<PaymentInfo> {
        self.payments.get(hash)
    }

    /// Every payment the node knows of.
    pub fn list_payments(&self) -> Vec<PaymentInfo> {
        self.payments.list()
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

    /// Waits until the payment with `hash` has succeeded or failed.
    pub async fn wait_for_payment(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<PaymentInfo, NodeError> {
        self.wait_until(timeout, "payment to settle", |node| {
            node.payment(hash)
                .is_some_and(|p| p.status != PaymentStatus::Pending)
        })
        .await?;
        self.payment(hash)
            .ok_or_else(|| NodeError::InvalidInput("unknown payment".into()))
    }

    /// Calls `f` with every splice and batch event, right after the write
    /// that holds it and before the change it reports is acted on.
    pub fn add_event_listener(&self, f: EventNotifier) {
        self.event_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    /// The splice coordinator.
    pub fn coordinator(&self) -> &Arc<NodeCoordinator> {
        &self.coordinator
    }

    /// The batch coordinator.
    pub fn batches(&self) -> &Arc<NodeBatches> {
        &self.batches
    }

    /// Every batch, oldest first.
    pub fn list_batches(&self) -> Vec<BatchRecord> {
        self.batches.list()
    }

    /// Adds `amount` from the on-chain wallet to a channel.
    pub fn splice_in(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        let result = self
            .coordinator
            .splice_in(channel_id, counterparty, amount, fee);
        self.send_queued_messages();
        result
    }

    /// Pays `amount` out of a channel to `to`.
    pub fn splice_out(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        to: Destination,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        let result = self
            .coordinator
            .splice_out(channel_id, counterparty, amount, to, fee);
        self.send_queued_messages();
        result
    }

    /// Adds wallet funds and pays channel funds out in one splice.
    pub fn resize(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        request: ResizeRequest,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        let result = self
            .coordinator
            .resize(channel_id, counterparty, request, fee);
        self.send_queued_messages();
        result
    }

    /// What a splice would cost, without reserving or sending anything.
    pub fn quote_splice(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        request: &ResizeRequest,
        fee: FeePolicy,
    ) -> Result<SpliceQuote, SpliceError> {
        self.coordinator
            .quote(channel_id, counterparty, request, fee)
    }

    /// Cancels a splice that has not been signed yet (a leg of a batch
    /// cancels its whole batch).
    pub fn cancel_splice(&self, id: SpliceId) -> Result<(), SpliceError> {
        let batch = self.coordinator.status(id).and_then(|r| r.batch);
        let result = match batch {
            Some(batch) => self.batches.cancel(batch),
            None => self.coordinator.cancel(id),
        };
        self.send_queued_messages();
        result
    }

    /// The record of a splice.
    pub fn splice_status(&self, id: SpliceId) -> Option<SpliceRecord> {
        self.coordinator.status(id)
    }

    /// Every splice, oldest first.
    pub fn list_splices(&self) -> Vec<SpliceRecord> {
        self.coordinator.list()
    }

    /// Starts a batch of splices over several channels.
    pub fn batch(&self, plan: BatchPlan) -> Result<BatchId, SpliceError> {
        let result = self.batches.execute(plan);
        self.send_queued_messages();
        result
    }

    /// What a batch would cost, without reserving or sending anything.
    pub fn quote_batch(&self, plan: &BatchPlan) -> Result<BatchQuote, SpliceError> {
        self.batches.quote(plan)
    }

    /// The record of a batch.
    pub fn batch_status(&self, id: BatchId) -> Option<BatchRecord> {
        self.batches.status(id)
    }

    /// Cancels a batch that is not signed yet.
    pub fn cancel_batch(&self, id: BatchId) -> Result<(), SpliceError> {
        let result = self.batches.cancel(id);
        self.send_queued_messages();
        result
    }

    /// Sends the messages our calls into LDK queued for peers now, rather
    /// than on the background processor's next round.
    fn send_queued_messages(&self) {
        self.peer_manager.process_events();
    }

    /// Waits until batch `id` is in a state `done` accepts.
    pub async fn wait_for_batch(
        &self,
        id: BatchId,
        timeout: Duration,
        mut done: impl FnMut(&BatchState) -> bool,
    ) -> Result<BatchRecord, NodeError> {
        self.wait_until(timeout, &format!("{id} to progress"), |node| {
            node.batch_status(id).is_some_and(|r| done(&r.state))
        })
        .await?;
        self.batch_status(id)
            .ok_or_else(|| NodeError::InvalidInput(format!("no batch {id}")))
    }

    /// Waits until splice `id` is in a state `done` accepts.
    pub async fn wait_for_splice(
        &self,
        id: SpliceId,
        timeout: Duration,
        mut done: impl FnMut(&crate::SpliceState) -> bool,
    ) -> Result<SpliceRecord, NodeError> {
        self.wait_until(timeout, &format!("{id} to progress"), |node| {
            node.splice_status(id).is_some_and(|r| done(&r.state))
        })
        .await?;
        self.splice_status(id)
            .ok_or_else(|| NodeError::InvalidInput(format!("no splice {id}")))
    }

    /// Stops the node: stops syncing and accepting peers, disconnects every
    /// peer and persists the channel manager. The data directory can then be
    /// opened again with a new [`NodeBuilder`].
    pub async fn stop(&self) -> Result<(), NodeError> {
        let _ = self.stop_sender.send(true);
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        self.peer_manager.disconnect_all_peers();
        let background = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(background) = background {
            tokio::task::spawn_blocking(move || background.stop())
                .await
                .map_err(|e| NodeError::Storage(format!("background processor: {e}")))?
                .map_err(|e| NodeError::Storage(format!("final persistence failed: {e}")))?;
        }
        // Make sure the latest state is on disk even if nothing changed since
        // the background processor's last write.
        self.store
            .write(
                CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
                CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
                CHANNEL_MANAGER_PERSISTENCE_KEY,
                self.channel_manager.encode(),
            )
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        log::info!("node {} stopped", self.node_id());
        Ok(())
    }
}

fn read_or_create_seed(path: &Path) -> Result<[u8; 32], NodeError> {
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| NodeError::Storage(format!("{} is not a 32-byte seed", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            {
                use bitcoin::secp256k1::rand::RngCore;
                bitcoin::secp256k1::rand::rngs::OsRng.fill_bytes(&mut seed);
            }
            write_private_file(path, &seed)?;
            Ok(seed)
        }
        Err(e) => Err(NodeError::Storage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `bytes` to `path` readable by the owner only.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| NodeError::Storage(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| NodeError::Storage(format!("cannot write {}: {e}", path.display())))
}

fn read_network_graph(store: &Store, network: Network, logger: &Arc<LogBridge>) -> types::Graph {
    let stored = store.read(
        NETWORK_GRAPH_PERSISTENCE_PRIMARY_NAMESPACE,
        NETWORK_GRAPH_PERSISTENCE_SECONDARY_NAMESPACE,
        NETWORK_GRAPH_PERSISTENCE_KEY,
    );
    if let Ok(bytes) = stored {
        match types::Graph::read(&mut &bytes[..], logger.clone()) {
            Ok(graph) => return graph,
            Err(e) => log::warn!("ignoring unreadable network graph: {e:?}"),
        }
    }
    types::Graph::new(network, logger.clone())
}

async fn connect_peer(
    peer_manager: &Arc<PeerManager>,
    node_id: PublicKey,
    addr: SocketAddr,
) -> Result<(), NodeError> {
    if peer_manager.peer_by_node_id(&node_id).is_some() {
        return Ok(());
    }
    let unreachable =
        |e: std::io::Error| NodeError::Connection(format!("cannot reach {node_id} at {addr}: {e}"));
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| NodeError::Connection(format!("cannot reach {node_id} at {addr}: timed out")))?
    .map_err(unreachable)?;
    let stream = low_latency(stream).map_err(unreachable)?;
    let connection = lightning_net_tokio::setup_outbound(peer_manager.clone(), node_id, stream);
    let mut connection = Box::pin(connection);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if peer_manager.peer_by_node_id(&node_id).is_some() {
            return Ok(());
        }
        tokio::select! {
            _ = &mut connection => {
                return Err(NodeError::Connection(format!("{node_id} at {addr} closed the connection")));
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Connection(format!(
                "handshake with {node_id} at {addr} timed out"
            )));
        }
    }
}

/// Lightning messages are small and each waits for the previous reply:
/// Nagle's algorithm would hold them back, so it is switched off.
fn low_latency(stream: tokio::net::TcpStream) -> std::io::Result<std::net::TcpStream> {
    stream.set_nodelay(true)?;
    stream.into_std()
}

async fn accept_peers(
    listener: tokio::net::TcpListener,
    peer_manager: Arc<PeerManager>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match low_latency(stream) {
                    Ok(stream) => {
                        tokio::spawn(lightning_net_tokio::setup_inbound(peer_manager.clone(), stream));
                    }
                    Err(e) => log::warn!("inbound connection unusable: {e}"),
                },
                Err(e) => log::warn!("accept failed: {e}"),
            },
            _ = stop.changed() => return,
        }
    }
}

async fn tick_coordinator(batches: Arc<NodeBatches>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => batches.timer_tick(),
            _ = stop.changed() => return,
        }
    }
}

async fn update_fees(
    bitcoind: Arc<Bitcoind>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => bitcoind.update_fee_estimates().await,
            _ = stop.changed() => return,
        }
    }
}

async fn reconnect_peers(
    channel_manager: Arc<ChannelManager>,
    peer_manager: Arc<PeerManager>,
    peers: Arc<PeerStore>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut wanted: Vec<PublicKey> = channel_manager
            .list_channels()
            .iter()
            .map(|c| c.counterparty.node_id)
            .collect();
        wanted.sort();
        wanted.dedup();
        for node_id in wanted {
            if peer_manager.peer_by_node_id(&node_id).is_some() {
                continue;
            }
            if let Some(addr) = peers.get(&node_id) {
                if let Err(e) = connect_peer(&peer_manager, node_id, addr).await {
                    log::debug!("reconnect to {node_id} failed: {e}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Background tasks hold their own handles; tell them to end. The
        // background processor persists and joins in its own Drop.
        let _ = self.stop_sender.send(true);
        self.peer_manager.disconnect_all_peers();
    }
}
