//! Building a node: its settings and its builder.

use super::*;

/// Everything needed to start a [`Node`]. Build it with [`NodeBuilder`].
/// Its `Debug` leaves the RPC password out.
#[derive(Clone)]
#[non_exhaustive]
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
    /// Where the node learns about blocks.
    pub chain_feed: ChainFeed,
    /// The height from which a new wallet looks for its coins; `None`
    /// starts it at the chain tip (a new seed has no history).
    pub wallet_birthday_height: Option<u32>,
    /// Automatic fee bumping for every splice of ours (not batch legs);
    /// off by default.
    pub auto_bump: Option<crate::AutoBump>,
    /// Peers whose channels to us are accepted zero-conf (usable before
    /// their funding confirms: we trust them not to double-spend it).
    pub zero_conf_peers: Vec<PublicKey>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("data_dir", &self.data_dir)
            .field("network", &self.network)
            .field("bitcoind_rpc_url", &self.bitcoind_rpc_url)
            .field("bitcoind_rpc_user", &self.bitcoind_rpc_user)
            .field("bitcoind_rpc_password", &"<hidden>")
            .field("listen_addr", &self.listen_addr)
            .field("accept_inbound_splices", &self.accept_inbound_splices)
            .field("accept_inbound_channels", &self.accept_inbound_channels)
            .field("chain_poll_interval", &self.chain_poll_interval)
            .field("fee_update_interval", &self.fee_update_interval)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("chain_feed", &self.chain_feed)
            .field("wallet_birthday_height", &self.wallet_birthday_height)
            .field("auto_bump", &self.auto_bump)
            .field("zero_conf_peers", &self.zero_conf_peers)
            .finish()
    }
}

/// Where a [`Node`] learns about blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChainFeed {
    /// It polls bitcoind for new blocks and passes them through LDK's
    /// `Listen` (catching up from where each part stopped at start).
    #[default]
    BitcoindBlocks,
    /// The application feeds it through LDK's `Confirm` on
    /// [`Node::confirmables`](super::Node::confirmables), as an Electrum or
    /// Esplora sync (lightning-transaction-sync) does. bitcoind's RPC is
    /// still used to broadcast and to estimate fees.
    Confirm,
}

/// Turns the node's store into the one this crate's own state (the splice
/// journal and the wallet) is written through.
pub type StoreWrapper = Arc<dyn Fn(SharedStore) -> SharedStore + Send + Sync>;

/// Sees every LDK event before the node handles it (see
/// [`NodeBuilder::ldk_event_hook`]).
pub type EventHook = Arc<dyn Fn(&lightning::events::Event) + Send + Sync>;

/// Builds a [`Node`] from a data directory, network, bitcoind RPC endpoint
/// and listen address.
#[derive(Clone)]
pub struct NodeBuilder {
    config: NodeConfig,
    wrap_store: Option<StoreWrapper>,
    funding_wallet: Option<Arc<dyn FundingWallet>>,
    event_hook: Option<EventHook>,
    seed: Option<[u8; 32]>,
    pub(super) liquidity: LiquiditySettings,
}

/// Which liquidity parts the node runs besides its liquidity client.
#[derive(Clone, Default)]
pub(super) struct LiquiditySettings {
    pub(super) service: Option<Arc<dyn crate::liquidity::LiquidityPolicy>>,
    pub(super) lsps_service: Option<lightning_liquidity::LiquidityServiceConfig>,
    pub(super) lsps_client: Option<lightning_liquidity::LiquidityClientConfig>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .field("wraps_store", &self.wrap_store.is_some())
            .field("own_funding_wallet", &self.funding_wallet.is_some())
            .field("event_hook", &self.event_hook.is_some())
            .field("seed_given", &self.seed.is_some())
            .field("liquidity_service", &self.liquidity.service.is_some())
            .field("lsps_service", &self.liquidity.lsps_service.is_some())
            .field("lsps_client", &self.liquidity.lsps_client.is_some())
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
                chain_feed: ChainFeed::BitcoindBlocks,
                wallet_birthday_height: None,
                auto_bump: None,
                zero_conf_peers: Vec::new(),
            },
            wrap_store: None,
            funding_wallet: None,
            event_hook: None,
            seed: None,
            liquidity: LiquiditySettings::default(),
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

    /// Calls `hook` with every event LDK hands the node, before the node
    /// handles it. With [`SpliceCoordinator::unmanage_channel`] it lets an
    /// application drive a channel's splices through LDK's own API: the
    /// hook sees `FundingTransactionReadyForSigning` and signs. The hook
    /// runs on the background processor's thread: keep it short, and do
    /// not block on the node. An event LDK hands over again (the node
    /// could not handle it yet) reaches the hook again.
    ///
    /// [`SpliceCoordinator::unmanage_channel`]: crate::SpliceCoordinator::unmanage_channel
    pub fn ldk_event_hook(
        mut self,
        hook: impl Fn(&lightning::events::Event) + Send + Sync + 'static,
    ) -> Self {
        self.event_hook = Some(Arc::new(hook));
        self
    }

    /// Where the node learns about blocks (default: it polls bitcoind).
    pub fn chain_feed(mut self, feed: ChainFeed) -> Self {
        self.config.chain_feed = feed;
        self
    }

    /// Funds and signs splices from `wallet` instead of the node's own BDK
    /// wallet (which still funds channel opens and receives closes).
    pub fn funding_wallet(mut self, wallet: Arc<dyn FundingWallet>) -> Self {
        self.funding_wallet = Some(wallet);
        self
    }

    /// Restores a node from `seed` (the 32 bytes of `DIR/seed` of the node
    /// it backs up): written to a data directory that has no seed yet;
    /// refused if the directory holds another seed. Channels are not
    /// restored (they live in the channel monitors of the old data
    /// directory); the wallet is, from
    /// [`NodeBuilder::wallet_birthday_height`].
    pub fn seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Where a wallet created now (a new data directory) starts looking for
    /// its coins: the height of the first block that can pay it, e.g. the
    /// tip when its seed was made. Every block from there is read once, at
    /// the first start (the node follows bitcoind, [`ChainFeed::BitcoindBlocks`];
    /// fed through `Confirm`, your sync decides what the wallet sees).
    /// Without it a new wallet starts at the tip. A wallet that already
    /// exists keeps its state.
    pub fn wallet_birthday_height(mut self, height: u32) -> Self {
        self.config.wallet_birthday_height = Some(height);
        self
    }

    /// Runs a liquidity service: peers with a channel to this node may order
    /// inbound liquidity, which the node splices in from its wallet for a
    /// fee priced by `policy` ([`StaticTerms`](crate::liquidity::StaticTerms)
    /// for fixed terms). Off by default. See `docs/liquidity-protocol.md`.
    pub fn liquidity_service(mut self, policy: Arc<dyn crate::liquidity::LiquidityPolicy>) -> Self {
        self.liquidity.service = Some(policy);
        self
    }

    /// Runs lightning-liquidity's LSPS services (LSPS1, LSPS2, LSPS5 as
    /// `config` enables) beside this crate's liquidity protocol, on the same
    /// message type; handle their events through [`Node::lsps_manager`].
    pub fn lsps_service(mut self, config: lightning_liquidity::LiquidityServiceConfig) -> Self {
        self.liquidity.lsps_service = Some(config);
        self
    }

    /// Runs lightning-liquidity's LSPS clients as `config` enables, beside
    /// this crate's liquidity client; use them through [`Node::lsps_manager`].
    pub fn lsps_client(mut self, config: lightning_liquidity::LiquidityClientConfig) -> Self {
        self.liquidity.lsps_client = Some(config);
        self
    }

    /// Bumps the fee of every splice of ours (not batch legs) by itself
    /// while it stays unconfirmed, within `policy`'s budget (see
    /// [`AutoBump`](crate::AutoBump)). Off by default; per splice:
    /// [`Node::set_auto_bump`].
    pub fn auto_bump(mut self, policy: crate::AutoBump) -> Self {
        self.config.auto_bump = Some(policy);
        self
    }

    /// Accepts channels `peer` opens to us zero-conf: usable at once,
    /// trusting `peer` not to double-spend their funding. Their splices
    /// cannot be fee-bumped (LDK never replaces a zero-conf channel's
    /// funding).
    pub fn trust_zero_conf_from(mut self, peer: PublicKey) -> Self {
        self.config.zero_conf_peers.push(peer);
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Starts the node. Must be called inside a multi-threaded tokio runtime.
    pub async fn start(self) -> Result<Node, NodeError> {
        Node::build_and_start(
            self.config,
            self.wrap_store,
            self.funding_wallet,
            self.event_hook,
            self.seed,
            self.liquidity,
        )
        .await
    }
}
