//! The node's peer connections: dialling, accepting, reconnecting.

use std::collections::HashMap;

use super::*;

impl Node {
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
}

pub(super) async fn connect_peer(
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
pub(super) fn low_latency(stream: tokio::net::TcpStream) -> std::io::Result<std::net::TcpStream> {
    stream.set_nodelay(true)?;
    stream.into_std()
}

pub(super) async fn accept_peers(
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

pub(super) async fn reconnect_peers(
    channel_manager: Arc<ChannelManager>,
    peer_manager: Arc<PeerManager>,
    peers: Arc<PeerStore>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut stuck_locks = StuckLocks::default();
    loop {
        let channels = channel_manager.list_channels();
        stuck_locks.bounce(&channels, &peer_manager);
        let mut wanted: Vec<PublicKey> = channels.iter().map(|c| c.counterparty.node_id).collect();
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

/// Blocks past its lock depth after which a splice whose `splice_locked`
/// we sent, but whose peer's never came, gets its connection restarted.
const STUCK_LOCK_BLOCKS: u32 = 3;

/// The least time between two reconnections for one stuck splice (blocks
/// can come faster than a reconnection completes on regtest).
const STUCK_LOCK_RETRY: Duration = Duration::from_secs(10);

/// Restarts the connection of a peer whose `splice_locked` is overdue.
///
/// A `splice_locked` lost across a crash or a disconnect at the wrong
/// moment is retransmitted by LDK only in `channel_reestablish` (its
/// `my_current_funding_locked`); with both sides connected and waiting,
/// nothing else makes it go again, and the splice never locks. Seen in the
/// crash tests when a node dies right after the splice confirms. Each stuck
/// candidate gets one reconnection at `STUCK_LOCK_BLOCKS` past its lock
/// depth, then one every further `STUCK_LOCK_BLOCKS` blocks and at least
/// `STUCK_LOCK_RETRY` apart.
#[derive(Default)]
struct StuckLocks {
    /// For each stuck candidate, the confirmations and time of its last bounce.
    bounced: HashMap<bitcoin::Txid, (u32, Option<std::time::Instant>)>,
}

impl StuckLocks {
    fn bounce(&mut self, channels: &[ChannelDetails], peer_manager: &PeerManager) {
        let mut still_stuck = HashMap::new();
        for channel in channels {
            let Some(confirmed) = channel
                .splice_details
                .as_ref()
                .and_then(|d| d.confirmed_candidate.as_ref())
            else {
                continue;
            };
            // Either side may be the one holding it up: we never sent ours
            // (LDK still quiescent after a restart mid-signing), or theirs
            // never came.
            let overdue = confirmed.confirmations
                >= confirmed
                    .confirmations_required
                    .saturating_add(STUCK_LOCK_BLOCKS);
            if !overdue {
                continue;
            }
            let last = self.bounced.get(&confirmed.txid).copied();
            let due = last.is_none_or(|(depth, when)| {
                confirmed.confirmations >= depth.saturating_add(STUCK_LOCK_BLOCKS)
                    && when.is_none_or(|when| when.elapsed() >= STUCK_LOCK_RETRY)
            });
            let node_id = channel.counterparty.node_id;
            if due && peer_manager.peer_by_node_id(&node_id).is_some() {
                log::warn!(
                    "splice {} of channel {} is {} blocks deep and not locked (our splice_locked sent: {}): reconnecting to {node_id} so that channel_reestablish settles it",
                    confirmed.txid,
                    channel.channel_id,
                    confirmed.confirmations,
                    confirmed.splice_locked_sent
                );
                peer_manager.disconnect_by_node_id(node_id);
                still_stuck.insert(
                    confirmed.txid,
                    (confirmed.confirmations, Some(std::time::Instant::now())),
                );
            } else {
                still_stuck.insert(confirmed.txid, last.unwrap_or((0, None)));
            }
        }
        self.bounced = still_stuck;
    }
}
