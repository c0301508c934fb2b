//! Keeping splices moving where LDK 0.3.0-rc3 can leave one stalled after
//! a crash or a lost message: the crash tests found both cases below.

use std::collections::{HashMap, HashSet};

use bitcoin::Txid;
use lightning::chain::Confirm;
use lightning::ln::channel_state::SpliceCandidateStatus;

use super::*;

/// Every `interval` until `stop`: shows LDK the confirmation of a splice it
/// missed, reconnects a peer whose splice is overdue to lock, and tells the
/// coordinator of splices that confirmed on channels that closed.
pub(super) async fn watch_splices(
    coordinator: Arc<NodeCoordinator>,
    channel_manager: Arc<ChannelManager>,
    chain_monitor: Arc<ChainMonitor>,
    bitcoind: Arc<Bitcoind>,
    peer_manager: Arc<PeerManager>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut stuck_locks = StuckLocks::default();
    let mut replayed = HashSet::new();
    loop {
        let channels = channel_manager.list_channels();
        replay_missed_confirmations(
            &channels,
            &channel_manager,
            &chain_monitor,
            &bitcoind,
            &mut replayed,
        )
        .await;
        stuck_locks.bounce(&channels, &peer_manager);
        report_confirmations_after_close(&channels, &coordinator, &channel_manager, &chain_monitor);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A splice transaction can confirm in a block the `ChannelManager` saw
/// while, after a restart, the negotiation was not complete yet (it was
/// written while awaiting signatures and completes only after the peer is
/// back): the channel then never counts its confirmations, and never locks.
/// The channel's monitor did see it confirm; this shows the manager that
/// block again through `Confirm::transactions_confirmed`, once per
/// transaction.
async fn replay_missed_confirmations(
    channels: &[ChannelDetails],
    channel_manager: &ChannelManager,
    chain_monitor: &ChainMonitor,
    bitcoind: &Bitcoind,
    replayed: &mut HashSet<Txid>,
) {
    for channel in channels {
        let Some(details) = channel.splice_details.as_ref() else {
            continue;
        };
        if details.confirmed_candidate.is_some() {
            continue;
        }
        let negotiated: Vec<Txid> = details
            .candidates
            .iter()
            .filter_map(|c| match c.status {
                SpliceCandidateStatus::Negotiated { txid, .. } => Some(txid),
                _ => None,
            })
            .collect();
        if negotiated.is_empty() {
            continue;
        }
        let confirmed: Vec<(Txid, u32, bitcoin::BlockHash)> =
            match chain_monitor.get_monitor(channel.channel_id) {
                Ok(monitor) => monitor
                    .get_relevant_txids()
                    .into_iter()
                    .filter(|(txid, _, _)| negotiated.contains(txid))
                    .filter_map(|(txid, height, hash)| Some((txid, height, hash?)))
                    .collect(),
                Err(()) => continue,
            };
        for (txid, height, hash) in confirmed {
            // A manager that is `STUCK_LOCK_BLOCKS` past the block and still
            // has not counted it missed it; anything closer may just be the
            // block arriving (the monitor hears of it right after the
            // manager), and a block shown twice is not harmless.
            let best = channel_manager.current_best_block().height;
            if best < height.saturating_add(STUCK_LOCK_BLOCKS)
                || !counts_none(channel_manager, channel.channel_id)
            {
                continue;
            }
            if !replayed.insert(txid) {
                continue;
            }
            let block = match bitcoind.block(&hash).await {
                Ok(block) => block,
                Err(e) => {
                    log::warn!("cannot fetch block {hash} to show the confirmation of {txid}: {e}");
                    replayed.remove(&txid);
                    continue;
                }
            };
            let Some((index, tx)) = block
                .txdata
                .iter()
                .enumerate()
                .find(|(_, tx)| tx.compute_txid() == txid)
            else {
                continue;
            };
            log::warn!(
                "channel {}: LDK has not counted the confirmation of splice {txid} (block {hash} at {height}); showing it that block again",
                channel.channel_id
            );
            channel_manager.transactions_confirmed(&block.header, &[(index, tx)], height);
        }
    }
}

/// A signed splice whose channel closed before it locked ends when LDK
/// discards its funding, or, if its transaction confirmed, when the
/// coordinator hears so: only the channel's monitor still sees it.
fn report_confirmations_after_close(
    channels: &[ChannelDetails],
    coordinator: &NodeCoordinator,
    channel_manager: &ChannelManager,
    chain_monitor: &ChainMonitor,
) {
    let waiting: HashSet<ChannelId> = coordinator
        .live_splices()
        .into_iter()
        .filter(|r| r.state.is_broadcast())
        .map(|r| r.channel_id)
        .filter(|id| !channels.iter().any(|c| c.channel_id == *id))
        .collect();
    let best = channel_manager.current_best_block().height;
    for channel_id in waiting {
        let Ok(monitor) = chain_monitor.get_monitor(channel_id) else {
            continue;
        };
        for (txid, height, _) in monitor.get_relevant_txids() {
            let confirmations = best.saturating_sub(height).saturating_add(1);
            if let Err(e) =
                coordinator.closed_channel_splice_confirmed(&channel_id, txid, confirmations)
            {
                log::warn!("channel {channel_id}: could not record {txid} confirmed: {e}");
            }
        }
    }
}

/// Whether the manager still counts no confirmation for any splice of
/// `channel_id`, read afresh.
fn counts_none(channel_manager: &ChannelManager, channel_id: ChannelId) -> bool {
    channel_manager
        .list_channels()
        .iter()
        .find(|c| c.channel_id == channel_id)
        .and_then(|c| c.splice_details.as_ref())
        .is_some_and(|d| d.confirmed_candidate.is_none())
}

/// Whether a splice of `channel` is being negotiated or signed right now.
fn is_negotiating(channel: &ChannelDetails) -> bool {
    channel.splice_details.as_ref().is_some_and(|details| {
        details.candidates.iter().any(|c| {
            matches!(
                c.status,
                SpliceCandidateStatus::AwaitingAck { .. }
                    | SpliceCandidateStatus::ConstructingTransaction { .. }
                    | SpliceCandidateStatus::AwaitingSignatures { .. }
            )
        })
    })
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
pub(super) struct StuckLocks {
    /// For each stuck candidate, the confirmations and time of its last bounce.
    bounced: HashMap<bitcoin::Txid, (u32, Option<std::time::Instant>)>,
}

impl StuckLocks {
    pub(super) fn bounce(&mut self, channels: &[ChannelDetails], peer_manager: &PeerManager) {
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
            // A reconnection in the middle of another channel's signing is
            // a risk of its own: wait until no splice with that peer is
            // being built or signed.
            let busy = channels
                .iter()
                .filter(|c| c.counterparty.node_id == node_id)
                .any(is_negotiating);
            if due && !busy && peer_manager.peer_by_node_id(&node_id).is_some() {
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
