//! The node's channels: opening, listing, balances, closing.

use super::*;
use lightning::util::errors::APIError;

impl Node {
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
    /// a channel monitor update is still being written (the node writes
    /// them right after persisting the channel manager) or while the peer
    /// is re-establishing the channel after a reconnection; both pass within
    /// moments, so this waits for them (up to ten seconds) and retries.
    /// Other refusals (a close already under way, an unknown channel) are
    /// returned at once.
    pub async fn close_channel(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
    ) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while self.chain_monitor.pending_operation_count() > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            match self.channel_manager.close_channel(channel_id, counterparty) {
                Ok(()) => return Ok(()),
                Err(APIError::ChannelUnavailable { err })
                    if tokio::time::Instant::now() < deadline
                        && self.close_may_succeed_soon(channel_id) =>
                {
                    log::debug!("close of {channel_id} waits: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(NodeError::Lightning(format!("{e:?}"))),
            }
        }
    }

    /// Force-closes a channel: broadcasts our latest commitment transaction
    /// (with a child paying for it, on anchor channels). What the channel
    /// owes us comes back to the wallet once its timelocks pass: LDK claims
    /// it and the node's sweeper spends it into the wallet.
    pub fn force_close_channel(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        reason: &str,
    ) -> Result<(), NodeError> {
        self.channel_manager
            .force_close_broadcasting_latest_txn(channel_id, counterparty, reason.to_string())
            .map_err(|e| NodeError::Lightning(format!("{e:?}")))
    }

    /// Whether a refused close is worth retrying: the channel still exists
    /// and no shutdown has started on either side.
    fn close_may_succeed_soon(&self, channel_id: &ChannelId) -> bool {
        self.channel(channel_id).is_some_and(|c| {
            matches!(
                c.channel_shutdown_state,
                None | Some(lightning::ln::channel_state::ChannelShutdownState::NotShuttingDown)
            )
        })
    }
}
