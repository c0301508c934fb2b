//! A complete LDK node: keys, channel manager, chain monitor, persistence,
//! peer networking over TCP, chain sync from bitcoind's RPC, a BDK wallet and
//! the background processor, assembled so examples and tests can run real
//! nodes with a few lines.
//!
//! It talks to bitcoind, or to the [`devchain`](crate::devchain), through the
//! same JSON-RPC calls.

mod bitcoind;
mod config;
mod events;
mod keys;
mod manager_store;
mod payments;
mod peers;
mod splicing;
mod start;
mod sync;
mod tasks;
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
pub use self::config::{ChainFeed, NodeBuilder, NodeConfig, NodeError, StoreWrapper};
pub use self::keys::WalletSignerProvider;
pub use self::payments::{PaymentDirection, PaymentInfo, PaymentStatus};
pub use self::sync::ChainListeners;
pub use self::types::{
    ChainMonitor, ChannelManager, NodeBatches, NodeCoordinator, PeerManager, Store,
};

use self::events::NodeEventHandler;
use self::payments::PaymentStore;
use self::peers::PeerStore;
use self::tasks::connect_peer;
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

/// A running LDK node. Stop it with [`Node::stop`]; start it again from the
/// same data directory with a new [`NodeBuilder`].
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
    /// `ChainMonitor` and the on-chain wallet, in the order to feed them.
    pub fn confirmables(&self) -> [&(dyn lightning::chain::Confirm + Send + Sync); 3] {
        [&*self.channel_manager, &*self.chain_monitor, &*self.wallet]
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

impl Drop for Node {
    fn drop(&mut self) {
        // Background tasks hold their own handles; tell them to end. The
        // background processor persists and joins in its own Drop.
        let _ = self.stop_sender.send(true);
        self.peer_manager.disconnect_all_peers();
    }
}
