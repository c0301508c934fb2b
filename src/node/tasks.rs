//! The node's lifecycle: launching its background tasks (the background
//! processor, chain sync, accepting and dialling peers, ticking the
//! coordinator, refreshing fee estimates), stopping them, starting again.

use lightning_block_sync::poll::ValidatedBlockHeader;
use lightning_block_sync::HeaderCache;

use super::connections::{accept_peers, reconnect_peers};
use super::events::NodeEventHandler;
use super::types::{GossipSync, Scorer};
use super::*;

/// What runs while the node is started.
pub(super) struct Running {
    pub(super) stop_sender: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    background: BackgroundProcessor,
}

/// What launching the tasks needs besides the node's public parts.
pub(super) struct Wiring {
    pub(super) handler: Arc<NodeEventHandler>,
    /// Notified when LDK event handling queued peer messages.
    pub(super) send_messages: Arc<tokio::sync::Notify>,
    pub(super) gossip_sync: Arc<GossipSync>,
    pub(super) scorer: Arc<RwLock<Scorer>>,
    pub(super) logger: Arc<LogBridge>,
}

/// Listens for peers on `addr`.
pub(super) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Connection(format!("cannot listen on {addr}: {e}")))
}

impl Node {
    /// Starts a stopped node again: it catches up with the chain (when it
    /// follows bitcoind), listens on the same address, and runs its tasks
    /// and the background processor. Must be called inside a
    /// multi-threaded tokio runtime.
    pub async fn start(&self) -> Result<(), NodeError> {
        if self.is_running() {
            return Err(NodeError::InvalidInput(
                "the node is already running".into(),
            ));
        }
        let chain_tip = match self.config.chain_feed {
            ChainFeed::BitcoindBlocks => Some(self.catch_up().await?),
            _ => None,
        };
        let listener = bind(self.listen_addr).await?;
        self.launch(listener, chain_tip);
        log::info!("node {} started again", self.node_id());
        Ok(())
    }

    /// Whether the node's tasks run (between a start and a stop).
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Brings every chain listener from where the node stopped to bitcoind's
    /// tip (through a reorganisation if there was one).
    async fn catch_up(&self) -> Result<(HeaderCache, ValidatedBlockHeader), NodeError> {
        let best = self.channel_manager.current_best_block();
        let listeners: Vec<(BlockLocator, &(dyn Listen + Send + Sync))> =
            vec![(best, &*self.chain_listeners as &(dyn Listen + Send + Sync))];
        lightning_block_sync::init::synchronize_listeners(
            self.bitcoind.rpc(),
            self.config.network,
            listeners,
        )
        .await
        .map_err(|e| NodeError::Chain(format!("chain sync at start failed: {e:?}")))
    }

    /// Runs the background processor and the node's tasks.
    pub(super) fn launch(
        &self,
        listener: tokio::net::TcpListener,
        chain_tip: Option<(HeaderCache, ValidatedBlockHeader)>,
    ) {
        let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
        let handler = self.wiring.handler.clone();
        let background = BackgroundProcessor::start(
            self.store.clone(),
            move |event| handler.handle(event),
            self.chain_monitor.clone(),
            self.channel_manager.clone(),
            lightning_background_processor::NO_ONION_MESSENGER,
            BpGossipSync::p2p(self.wiring.gossip_sync.clone()),
            self.peer_manager.clone(),
            self.liquidity.lsps.clone(),
            Some(self.sweeper.clone()),
            self.wiring.logger.clone(),
            Some(self.wiring.scorer.clone()),
        );
        let mut tasks = vec![tokio::spawn(accept_peers(
            listener,
            self.peer_manager.clone(),
            stop_receiver.clone(),
        ))];
        if let Some((cache, tip)) = chain_tip {
            let notify = self.notify.clone();
            let client = sync::chain_client(
                self.bitcoind.rpc(),
                self.config.network,
                tip,
                cache,
                self.chain_listeners.clone(),
            );
            tasks.push(tokio::spawn(sync::run_chain_sync(
                client,
                self.config.chain_poll_interval,
                stop_receiver.clone(),
                move || notify.notify_waiters(),
            )));
        }
        tasks.push(tokio::spawn(super::wallet_sync::watch_wallet(
            self.bitcoind.clone(),
            self.wallet.clone(),
            self.config.network,
            self.config.chain_poll_interval,
            stop_receiver.clone(),
        )));
        tasks.push(tokio::spawn(send_queued_messages(
            self.peer_manager.clone(),
            self.wiring.send_messages.clone(),
            stop_receiver.clone(),
        )));
        tasks.push(tokio::spawn(tick_coordinator(
            self.batches.clone(),
            self.liquidity.service.clone(),
            self.wiring.send_messages.clone(),
            stop_receiver.clone(),
        )));
        tasks.push(tokio::spawn(update_fees(
            self.bitcoind.clone(),
            self.config.fee_update_interval,
            stop_receiver.clone(),
        )));
        tasks.push(tokio::spawn(super::splice_watch::watch_splices(
            self.coordinator.clone(),
            self.channel_manager.clone(),
            self.chain_monitor.clone(),
            self.bitcoind.clone(),
            self.peer_manager.clone(),
            self.config.reconnect_interval,
            stop_receiver.clone(),
        )));
        tasks.push(tokio::spawn(reconnect_peers(
            self.channel_manager.clone(),
            self.peer_manager.clone(),
            self.peers.clone(),
            self.config.reconnect_interval,
            stop_receiver,
        )));
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
            stop_sender,
            tasks,
            background,
        });
    }

    /// Stops the node: stops syncing and accepting peers, disconnects every
    /// peer, stops the background processor and writes the channel manager.
    /// [`Node::start`] starts it again; so does a new [`NodeBuilder`] on the
    /// same data directory. Stopping a stopped node does nothing.
    pub async fn stop(&self) -> Result<(), NodeError> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(Running {
            stop_sender,
            tasks,
            background,
        }) = running
        else {
            return Ok(());
        };
        let _ = stop_sender.send(true);
        for task in tasks {
            let _ = task.await;
        }
        self.peer_manager.disconnect_all_peers();
        tokio::task::spawn_blocking(move || background.stop())
            .await
            .map_err(|e| NodeError::Storage(format!("background processor: {e}")))?
            .map_err(|e| NodeError::Storage(format!("final persistence failed: {e}")))?;
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
        // Not fatal: an acknowledgement that is lost only delivers its
        // events again.
        if let Err(e) = self.coordinator.write_acknowledgements() {
            log::warn!("could not write the events' acknowledgement: {e}");
        }
        log::info!("node {} stopped", self.node_id());
        Ok(())
    }
}

/// Sends the peer messages LDK queued each time the event handler asks.
async fn send_queued_messages(
    peer_manager: Arc<PeerManager>,
    wake: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = wake.notified() => peer_manager.process_events(),
            _ = stop.changed() => return,
        }
    }
}

/// Ticks the batch coordinator (which ticks the splice coordinator) and
/// the liquidity service twice a second.
pub(super) async fn tick_coordinator(
    batches: Arc<NodeBatches>,
    liquidity_service: Option<Arc<NodeLiquidityService>>,
    send_messages: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                batches.timer_tick();
                if let Some(service) = &liquidity_service {
                    service.timer_tick();
                    // A claim or a failed-back HTLC goes out now.
                    send_messages.notify_one();
                }
            }
            _ = stop.changed() => return,
        }
    }
}

pub(super) async fn update_fees(
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
