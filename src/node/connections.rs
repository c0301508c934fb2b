//! The node's peer connections: dialling, accepting, reconnecting.

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
