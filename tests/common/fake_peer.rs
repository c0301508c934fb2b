//! A counterparty of the test's own making, for cases the node has no switch
//! for: a peer that does not advertise splicing, one that never answers
//! `stfu`, one that never lets the splice's `tx_signatures` through.
//!
//! [`FakeBob::start`] takes a node whose own networking is stopped
//! ([`Node::stop`]) and puts its `ChannelManager` behind a `PeerManager`
//! built here, on a loopback port of its own ([`FakeBob::addr`]). Its
//! channel handler ([`Counterparty`]) forwards every message to that
//! `ChannelManager`, except for what the [`Behaviour`] changes. The other
//! node then connects to [`FakeBob::addr`] over TCP as usual.
//!
//! While it runs, the channel manager is written to the node's store
//! whenever LDK asks for it (as the node's background processor would), and
//! once more when the [`FakeBob`] is dropped, so the node can afterwards be
//! started again from its data directory, with what happened meanwhile.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::PublicKey;
use ldk_splice::node::{ChannelManager, Node, Store};
use ldk_splice::LogBridge;
use lightning::ln::msgs::{self, BaseMessageHandler, ChannelMessageHandler, MessageSendEvent};
use lightning::ln::peer_handler::{IgnoringMessageHandler, MessageHandler};
use lightning::ln::types::ChannelId;
use lightning::sign::{EntropySource, KeysManager};
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning::util::persist::{
    KVStoreSync, CHANNEL_MANAGER_PERSISTENCE_KEY, CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
    CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
};
use lightning::util::ser::Writeable;

/// How the [`Counterparty`] departs from plain forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Forward everything.
    Plain,
    /// Advertise neither splicing nor quiescence.
    HideSplicing,
    /// Swallow every `stfu` (so a splice never gets past quiescence).
    IgnoreStfu,
    /// Let the splice be negotiated and its commitments signed, but never
    /// let a `tx_signatures` through, in either direction: both sides stay
    /// awaiting signatures and nobody can broadcast.
    WithholdTxSignatures,
    /// Lose the first `splice_locked` Bob sends (as a crash or a dropped
    /// connection would): only a `channel_reestablish` carries it again.
    LoseFirstSpliceLocked,
}

/// The node's `ChannelManager`, as a channel message handler that forwards
/// every call to it, except for what `behaviour` changes. Its counters say
/// what it saw.
pub struct Counterparty {
    cm: Arc<ChannelManager>,
    behaviour: Behaviour,
    /// `stfu` messages received (swallowed or not).
    pub stfu_seen: AtomicUsize,
    /// Connections completed (`peer_connected` calls).
    pub connections: AtomicUsize,
    /// `tx_signatures` kept from either side under
    /// [`Behaviour::WithholdTxSignatures`].
    pub tx_signatures_withheld: AtomicUsize,
    /// `splice_locked` messages of Bob's lost under
    /// [`Behaviour::LoseFirstSpliceLocked`].
    pub splice_locked_lost: AtomicUsize,
}

impl Counterparty {
    fn hides_splicing(&self) -> bool {
        self.behaviour == Behaviour::HideSplicing
    }

    fn withholds_tx_signatures(&self) -> bool {
        self.behaviour == Behaviour::WithholdTxSignatures
    }
}

impl BaseMessageHandler for Counterparty {
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        let mut events = self.cm.get_and_clear_pending_msg_events();
        if self.withholds_tx_signatures() {
            events.retain(|event| {
                let keep = !matches!(event, MessageSendEvent::SendTxSignatures { .. });
                if !keep {
                    self.tx_signatures_withheld.fetch_add(1, Ordering::SeqCst);
                }
                keep
            });
        }
        if self.behaviour == Behaviour::LoseFirstSpliceLocked {
            events.retain(|event| {
                let lose = matches!(event, MessageSendEvent::SendSpliceLocked { .. })
                    && self.splice_locked_lost.load(Ordering::SeqCst) == 0;
                if lose {
                    self.splice_locked_lost.fetch_add(1, Ordering::SeqCst);
                }
                !lose
            });
        }
        events
    }
    fn peer_disconnected(&self, their_node_id: PublicKey) {
        self.cm.peer_disconnected(their_node_id)
    }
    fn provided_node_features(&self) -> NodeFeatures {
        let mut features = self.cm.provided_node_features();
        if self.hides_splicing() {
            features.clear_splicing();
            features.clear_quiescence();
        }
        features
    }
    fn provided_init_features(&self, their_node_id: PublicKey) -> InitFeatures {
        let mut features = self.cm.provided_init_features(their_node_id);
        if self.hides_splicing() {
            features.clear_splicing();
            features.clear_quiescence();
        }
        features
    }
    fn peer_connected(
        &self,
        their_node_id: PublicKey,
        msg: &msgs::Init,
        inbound: bool,
    ) -> Result<(), ()> {
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.cm.peer_connected(their_node_id, msg, inbound)
    }
}

macro_rules! forward {
    ($($name:ident($msg:ty);)*) => {
        $(
            fn $name(&self, their_node_id: PublicKey, msg: $msg) {
                self.cm.$name(their_node_id, msg)
            }
        )*
    };
}

impl ChannelMessageHandler for Counterparty {
    forward! {
        handle_open_channel(&msgs::OpenChannel);
        handle_open_channel_v2(&msgs::OpenChannelV2);
        handle_accept_channel(&msgs::AcceptChannel);
        handle_accept_channel_v2(&msgs::AcceptChannelV2);
        handle_funding_created(&msgs::FundingCreated);
        handle_funding_signed(&msgs::FundingSigned);
        handle_channel_ready(&msgs::ChannelReady);
        handle_peer_storage(msgs::PeerStorage);
        handle_peer_storage_retrieval(msgs::PeerStorageRetrieval);
        handle_shutdown(&msgs::Shutdown);
        handle_closing_signed(&msgs::ClosingSigned);
        handle_splice_init(&msgs::SpliceInit);
        handle_splice_ack(&msgs::SpliceAck);
        handle_splice_locked(&msgs::SpliceLocked);
        handle_tx_add_input(&msgs::TxAddInput);
        handle_tx_add_output(&msgs::TxAddOutput);
        handle_tx_remove_input(&msgs::TxRemoveInput);
        handle_tx_remove_output(&msgs::TxRemoveOutput);
        handle_tx_complete(&msgs::TxComplete);
        handle_tx_init_rbf(&msgs::TxInitRbf);
        handle_tx_ack_rbf(&msgs::TxAckRbf);
        handle_tx_abort(&msgs::TxAbort);
        handle_update_add_htlc(&msgs::UpdateAddHTLC);
        handle_update_fulfill_htlc(msgs::UpdateFulfillHTLC);
        handle_update_fail_htlc(&msgs::UpdateFailHTLC);
        handle_update_fail_malformed_htlc(&msgs::UpdateFailMalformedHTLC);
        handle_commitment_signed(&msgs::CommitmentSigned);
        handle_revoke_and_ack(&msgs::RevokeAndACK);
        handle_update_fee(&msgs::UpdateFee);
        handle_announcement_signatures(&msgs::AnnouncementSignatures);
        handle_channel_reestablish(&msgs::ChannelReestablish);
        handle_channel_update(&msgs::ChannelUpdate);
        handle_error(&msgs::ErrorMessage);
    }

    fn handle_stfu(&self, their_node_id: PublicKey, msg: &msgs::Stfu) {
        self.stfu_seen.fetch_add(1, Ordering::SeqCst);
        if self.behaviour != Behaviour::IgnoreStfu {
            self.cm.handle_stfu(their_node_id, msg)
        }
    }

    fn handle_tx_signatures(&self, their_node_id: PublicKey, msg: &msgs::TxSignatures) {
        if self.withholds_tx_signatures() {
            self.tx_signatures_withheld.fetch_add(1, Ordering::SeqCst);
        } else {
            self.cm.handle_tx_signatures(their_node_id, msg)
        }
    }

    fn handle_commitment_signed_batch(
        &self,
        their_node_id: PublicKey,
        channel_id: ChannelId,
        batch: Vec<msgs::CommitmentSigned>,
    ) {
        self.cm
            .handle_commitment_signed_batch(their_node_id, channel_id, batch)
    }

    fn get_chain_hashes(&self) -> Option<Vec<ChainHash>> {
        self.cm.get_chain_hashes()
    }

    fn message_received(&self) {
        self.cm.message_received()
    }
}

/// The `PeerManager` a [`FakeBob`] runs: channel messages only.
pub type FakePeerManager = lightning::ln::peer_handler::PeerManager<
    lightning_net_tokio::SocketDescriptor,
    Arc<Counterparty>,
    IgnoringMessageHandler,
    IgnoringMessageHandler,
    Arc<LogBridge>,
    IgnoringMessageHandler,
    Arc<KeysManager>,
    IgnoringMessageHandler,
>;

/// Writes a channel manager to its node's store, one write at a time so an
/// older encoding never lands after a newer one.
struct ManagerWriter {
    cm: Arc<ChannelManager>,
    store: Arc<Store>,
    lock: Mutex<()>,
}

impl ManagerWriter {
    fn write(&self) -> Result<(), lightning::io::Error> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.store.write(
            CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
            CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
            CHANNEL_MANAGER_PERSISTENCE_KEY,
            self.cm.encode(),
        )
    }
}

/// A stopped node's channel manager reachable on a loopback port of its
/// own, through a [`Counterparty`]. Dropping it disconnects every peer and
/// persists the channel manager; the node can then be started again from its
/// data directory.
pub struct FakeBob {
    /// The channel handler, for its counters.
    pub handler: Arc<Counterparty>,
    /// Where it listens.
    pub addr: SocketAddr,
    peer_manager: Arc<FakePeerManager>,
    writer: Arc<ManagerWriter>,
    chain_monitor: Arc<ldk_splice::node::ChainMonitor>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stopped: Arc<AtomicBool>,
}

impl FakeBob {
    /// Serves `bob`'s channel manager (its node stopped with [`Node::stop`])
    /// on a new loopback port, behaving as `behaviour` says.
    pub async fn start(bob: &Node, behaviour: Behaviour) -> FakeBob {
        Self::serve(bob, behaviour, None).await
    }

    /// Like [`FakeBob::start`], with `events` called for every event Bob's
    /// channel manager produces (the node's own event handling is stopped
    /// with the node).
    pub async fn start_with_events(
        bob: &Node,
        behaviour: Behaviour,
        events: Arc<dyn Fn(lightning::events::Event) + Send + Sync>,
    ) -> FakeBob {
        Self::serve(bob, behaviour, Some(events)).await
    }

    async fn serve(
        bob: &Node,
        behaviour: Behaviour,
        events: Option<Arc<dyn Fn(lightning::events::Event) + Send + Sync>>,
    ) -> FakeBob {
        let handler = Arc::new(Counterparty {
            cm: bob.channel_manager().clone(),
            behaviour,
            stfu_seen: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            tx_signatures_withheld: AtomicUsize::new(0),
            splice_locked_lost: AtomicUsize::new(0),
        });
        let writer = Arc::new(ManagerWriter {
            cm: bob.channel_manager().clone(),
            store: bob.store().clone(),
            lock: Mutex::new(()),
        });
        let keys = bob.keys().clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        let peer_manager: Arc<FakePeerManager> = Arc::new(FakePeerManager::new(
            MessageHandler {
                chan_handler: handler.clone(),
                route_handler: IgnoringMessageHandler {},
                onion_message_handler: IgnoringMessageHandler {},
                custom_message_handler: IgnoringMessageHandler {},
                send_only_message_handler: IgnoringMessageHandler {},
            },
            now,
            &keys.get_secure_random_bytes(),
            Arc::new(LogBridge),
            keys,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let accept = {
            let peer_manager = peer_manager.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let stream = stream.into_std().expect("std stream");
                    tokio::spawn(lightning_net_tokio::setup_inbound(
                        peer_manager.clone(),
                        stream,
                    ));
                }
            })
        };
        // What the node's background processor did for its own peer
        // manager: persist the channel manager when it asks, and flush its
        // messages when it has some.
        let driver = {
            let peer_manager = peer_manager.clone();
            let cm = bob.channel_manager().clone();
            let chain_monitor = bob.chain_monitor().clone();
            let writer = writer.clone();
            let stopped = stopped.clone();
            tokio::spawn(async move {
                while !stopped.load(Ordering::SeqCst) {
                    tokio::select! {
                        _ = cm.get_event_or_persistence_needed_future() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    if let Some(events) = &events {
                        let handler = |event| {
                            events(event);
                            Ok(())
                        };
                        lightning::events::EventsProvider::process_pending_events(&*cm, &handler);
                    }
                    if cm.get_and_clear_needs_persistence() {
                        // The node's chain monitor defers its writes until
                        // the manager is written, as its background
                        // processor would do.
                        let pending = chain_monitor.pending_operation_count();
                        writer.write().expect("persist the channel manager");
                        chain_monitor.flush(pending, &Arc::new(LogBridge));
                    }
                    peer_manager.process_events();
                }
            })
        };
        FakeBob {
            handler,
            addr,
            peer_manager,
            writer,
            chain_monitor: bob.chain_monitor().clone(),
            tasks: vec![accept, driver],
            stopped,
        }
    }
}

impl Drop for FakeBob {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
        self.peer_manager.disconnect_all_peers();
        let pending = self.chain_monitor.pending_operation_count();
        let written = self.writer.write();
        if written.is_ok() {
            self.chain_monitor.flush(pending, &Arc::new(LogBridge));
        }
        if let Err(e) = written {
            if !std::thread::panicking() {
                panic!("could not persist the channel manager: {e}");
            }
        }
    }
}
