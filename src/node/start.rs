//! Assembling a node: keys, chain monitor, channel manager, the first chain
//! sync, wallet, coordinator and peers; then its tasks are launched.

use super::*;

impl Node {
    pub(super) async fn build_and_start(
        config: NodeConfig,
        wrap_store: Option<StoreWrapper>,
        funding_wallet: Option<Arc<dyn FundingWallet>>,
        event_hook: Option<super::builder::EventHook>,
        given_seed: Option<[u8; 32]>,
        liquidity_settings: super::builder::LiquiditySettings,
    ) -> Result<Node, NodeError> {
        create_private_dir(&config.data_dir)?;
        let seed = read_or_create_seed(&config.data_dir.join(SEED_FILE), given_seed)?;
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

        let wallet_is_new = !BdkWallet::exists(&shared_store)?;
        let (birthday, birthday_height) = match (wallet_is_new, config.wallet_birthday_height) {
            (false, _) => (None, tip_height),
            (true, None) => (Some(bitcoind.block(&tip_hash).await?), tip_height),
            (true, Some(height)) if height > tip_height => {
                return Err(NodeError::InvalidInput(format!(
                    "wallet birthday {height} is above the chain tip {tip_height}"
                )))
            }
            (true, Some(height)) => {
                log::info!(
                    "new wallet: looking for its coins from height {height} ({} blocks)",
                    tip_height - height + 1
                );
                let hash = bitcoind.block_hash(height).await?;
                (Some(bitcoind.block(&hash).await?), height)
            }
        };
        let wallet = Arc::new(BdkWallet::load_or_create(
            &seed,
            config.network,
            shared_store.clone(),
            birthday.as_ref(),
            birthday_height,
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

        let monitors = read_channel_monitors(store.clone(), keys.clone(), signer_provider.clone())
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

        let sweeper = Arc::new(super::sweep::load_sweeper(
            store.clone(),
            manager_best_block,
            bitcoind.clone(),
            keys.clone(),
            wallet.clone(),
            logger.clone(),
        )?);

        // Bring every listener to the tip, each from where it stopped (or,
        // fed through `Confirm`, hand the monitors over as they are: the
        // application's sync brings them to the tip).
        let rpc = bitcoind.rpc();
        let (chain_tip, monitors) = match config.chain_feed {
            ChainFeed::BitcoindBlocks => {
                let monitor_listeners: Vec<_> = monitors
                    .into_iter()
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
                listeners.push((
                    sweeper.current_best_block(),
                    &*sweeper as &(dyn Listen + Send + Sync),
                ));
                let synced = lightning_block_sync::init::synchronize_listeners(
                    rpc.clone(),
                    config.network,
                    listeners,
                )
                .await
                .map_err(|e| NodeError::Chain(format!("initial chain sync failed: {e:?}")))?;
                let monitors = monitor_listeners
                    .into_iter()
                    .map(|(best, (monitor, ..))| (best, monitor))
                    .collect();
                (Some(synced), monitors)
            }
            _ => (None, monitors),
        };
        for (_, monitor) in monitors {
            let channel_id = monitor.channel_id();
            chain_monitor
                .load_existing_monitor(channel_id, monitor)
                .map_err(|()| NodeError::Storage(format!("monitor for {channel_id} refused")))?;
        }

        {
            // Whatever we broadcast (splices, channel fundings, closes) is
            // the wallet's at once: its inputs spent, its change pending.
            let wallet = wallet.clone();
            bitcoind.on_broadcast(Box::new(move |tx| wallet.transaction_broadcast(tx)));
        }
        let coordinator = Arc::new(
            NodeCoordinator::new(
                channel_manager.clone(),
                funding_wallet.unwrap_or_else(|| wallet.clone()),
                bitcoind.clone(),
                shared_store.clone(),
                {
                    let coordinator_config = CoordinatorConfig::new(config.network)
                        .with_signatures_waiting_for_manager_persistence(true)
                        .with_funding_fee_estimator(bitcoind.clone());
                    match config.auto_bump {
                        Some(policy) => coordinator_config.with_auto_bump(policy),
                        None => coordinator_config,
                    }
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
        chain_listeners.add(sweeper.clone());
        chain_listeners.add(Arc::new(super::sync::SweepOnBlock(sweeper.clone())));
        chain_listeners.add(Arc::new(super::sync::TickOnBlock(coordinator.clone())));

        let liquidity = super::liquidity::build_liquidity(
            liquidity_settings,
            &coordinator,
            &keys,
            &channel_manager,
            &store,
            &bitcoind,
            &shared_store,
        )?;

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
                custom_message_handler: liquidity.handler.clone(),
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
            coordinator.observe_written_events(Box::new(move |event| {
                for listener in listeners.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    listener(event);
                }
                notify.notify_waiters();
            }));
        }

        let send_messages = Arc::new(tokio::sync::Notify::new());
        let handler = Arc::new(NodeEventHandler {
            channel_manager: channel_manager.clone(),
            wallet: wallet.clone(),
            bitcoind: bitcoind.clone(),
            payments: payments.clone(),
            sweeper: sweeper.clone(),
            bump: super::anchors::bump_handler(
                wallet.clone(),
                bitcoind.clone(),
                keys.clone(),
                logger.clone(),
            ),
            notify: notify.clone(),
            accept_inbound_channels: config.accept_inbound_channels,
            zero_conf_peers: config.zero_conf_peers.clone(),
            coordinator: coordinator.clone(),
            liquidity_service: liquidity.parts.service.clone(),
            send_messages: send_messages.clone(),
            hook: event_hook,
        });
        if let Some(service) = &liquidity.parts.service {
            // A fee the service fails back is a failed payment of ours.
            let payments = payments.clone();
            service.on_failed_back(Box::new(move |hash| {
                payments.upsert(hash, payments::PaymentDirection::Inbound, |p| {
                    p.status = PaymentStatus::Failed;
                });
            }));
        }
        {
            let notify = notify.clone();
            liquidity
                .parts
                .client
                .on_answer(Box::new(move || notify.notify_waiters()));
        }
        {
            // The background processor's writes of the ChannelManager tell
            // the coordinator when it may give LDK our splice signatures.
            // Weak: a strong reference would make a cycle (store -> hook ->
            // coordinator -> manager -> store) and no node would be freed.
            let coordinator = Arc::downgrade(&coordinator);
            store.on_manager_write(Box::new(move || {
                if let Some(coordinator) = coordinator.upgrade() {
                    coordinator.channel_manager_persisted();
                }
            }));
        }

        let listener = super::tasks::bind(config.listen_addr).await?;
        let listen_addr = listener
            .local_addr()
            .map_err(|e| NodeError::Connection(e.to_string()))?;

        let node = Node {
            config,
            keys,
            bitcoind,
            wallet,
            store,
            chain_monitor,
            channel_manager,
            peer_manager,
            chain_listeners,
            sweeper,
            coordinator,
            batches,
            payments,
            peers,
            notify,
            event_listeners,
            listen_addr,
            liquidity: liquidity.parts,
            wiring: super::tasks::Wiring {
                handler,
                send_messages,
                gossip_sync,
                scorer,
                logger,
            },
            running: Mutex::new(None),
        };
        node.launch(listener, chain_tip);
        log::info!("node {} listening on {listen_addr}", node.node_id());
        Ok(node)
    }
}

/// The seed in `path`; a new file holds `given`, or a fresh random seed.
/// A file holding another seed than `given` is an error.
pub(super) fn read_or_create_seed(
    path: &Path,
    given: Option<[u8; 32]>,
) -> Result<[u8; 32], NodeError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes.try_into().map_err(|_| {
                NodeError::Storage(format!("{} is not a 32-byte seed", path.display()))
            })?;
            if given.is_some_and(|given| given != seed) {
                return Err(NodeError::InvalidInput(format!(
                    "{} holds another seed than the one given: restore into an empty data directory",
                    path.display()
                )));
            }
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = given.unwrap_or_else(|| {
                let mut seed = [0u8; 32];
                use bitcoin::secp256k1::rand::RngCore;
                bitcoin::secp256k1::rand::rngs::OsRng.fill_bytes(&mut seed);
                seed
            });
            write_private_file(path, &seed)?;
            Ok(seed)
        }
        Err(e) => Err(NodeError::Storage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Creates `dir` (and its parents) readable by the owner only, and takes
/// group and other permissions off it if it exists: it holds the seed, the
/// channel monitors and the wallet.
fn create_private_dir(dir: &Path) -> Result<(), NodeError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder
            .create(dir)
            .map_err(|e| NodeError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let mode = std::fs::metadata(dir)
            .map_err(|e| NodeError::Storage(format!("cannot read {}: {e}", dir.display())))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700)).map_err(
                |e| NodeError::Storage(format!("cannot restrict {}: {e}", dir.display())),
            )?;
        }
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .map_err(|e| NodeError::Storage(format!("cannot create {}: {e}", dir.display())))?;
    Ok(())
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

pub(super) fn read_network_graph(
    store: &Store,
    network: Network,
    logger: &Arc<LogBridge>,
) -> types::Graph {
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
