//! Where the node's money is: in the wallet, in open channels, being
//! claimed from closed channels, and waiting for a sweep into the wallet.

use bitcoin::{Amount, Txid};
use lightning::chain::channelmonitor::Balance;
use lightning::ln::types::ChannelId;
use lightning::util::sweep::OutputSpendStatus;

use super::Node;
use crate::wallet::WalletBalance;

/// The node's balances. Amounts in different fields never count the same
/// coin twice, except that a swept output is in `onchain` and, until the
/// sweep is deep enough for the sweeper to forget it, in
/// `swept_awaiting_confirmations`. An output whose timelock has just passed
/// leaves `claimable_on_chain` when LDK hands it over for sweeping and
/// joins `pending_sweep` once the node has handled that event, a moment
/// later.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeBalances {
    /// The on-chain wallet.
    pub onchain: WalletBalance,
    /// Our side of every open channel, as we could claim it if it closed
    /// now (outbound HTLCs not counted).
    pub lightning: Amount,
    /// What LDK is still claiming from closed channels on-chain: outputs
    /// waiting for their timelocks and confirmations, and HTLCs we can
    /// claim.
    pub claimable_on_chain: Amount,
    /// Outputs of closed channels handed to the sweeper that have not been
    /// swept into the wallet yet (no sweep broadcast, or one not confirmed).
    pub pending_sweep: Amount,
    /// Outputs swept into the wallet whose sweep is confirmed but not yet
    /// deep enough to be forgotten (already part of `onchain`).
    pub swept_awaiting_confirmations: Amount,
    /// LDK's own list, per channel and per claim.
    pub lightning_balances: Vec<Balance>,
    /// Every output the sweeper follows.
    pub sweeps: Vec<SweepInfo>,
}

/// One output of a closed channel the sweeper follows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepInfo {
    /// The channel it came from, when known.
    pub channel_id: Option<ChannelId>,
    /// Its value (the sweep's fee is paid from it).
    pub amount: Amount,
    /// Where its sweep stands.
    pub status: SweepStatus,
}

/// Where the sweep of one output stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SweepStatus {
    /// No sweep broadcast yet (it may wait for a height).
    AwaitingBroadcast,
    /// Broadcast in `txid`, not confirmed yet.
    Broadcast {
        /// The latest sweep transaction.
        txid: Txid,
    },
    /// Confirmed in `txid` at `height`.
    Confirmed {
        /// The sweep transaction.
        txid: Txid,
        /// Where it confirmed.
        height: u32,
    },
}

impl Node {
    /// The node's balances: wallet, channels, claims and sweeps.
    pub fn balances(&self) -> NodeBalances {
        let lightning_balances = self.chain_monitor.get_claimable_balances(&[]);
        let mut lightning = Amount::ZERO;
        let mut claimable_on_chain = Amount::ZERO;
        for balance in &lightning_balances {
            let amount = Amount::from_sat(balance.claimable_amount_satoshis());
            match balance {
                Balance::ClaimableOnChannelClose { .. } => lightning += amount,
                _ => claimable_on_chain += amount,
            }
        }
        let sweeps: Vec<SweepInfo> = self
            .sweeper
            .tracked_spendable_outputs()
            .into_iter()
            .map(|tracked| SweepInfo {
                channel_id: tracked.channel_id,
                amount: descriptor_value(&tracked.descriptor),
                status: match tracked.status {
                    OutputSpendStatus::PendingInitialBroadcast { .. } => {
                        SweepStatus::AwaitingBroadcast
                    }
                    OutputSpendStatus::PendingFirstConfirmation {
                        latest_spending_tx, ..
                    } => SweepStatus::Broadcast {
                        txid: latest_spending_tx.compute_txid(),
                    },
                    OutputSpendStatus::PendingThresholdConfirmations {
                        latest_spending_tx,
                        confirmation_height,
                        ..
                    } => SweepStatus::Confirmed {
                        txid: latest_spending_tx.compute_txid(),
                        height: confirmation_height,
                    },
                },
            })
            .collect();
        let sum = |confirmed: bool| {
            sweeps
                .iter()
                .filter(|s| matches!(s.status, SweepStatus::Confirmed { .. }) == confirmed)
                .map(|s| s.amount)
                .sum()
        };
        NodeBalances {
            onchain: self.onchain_balance(),
            lightning,
            claimable_on_chain,
            pending_sweep: sum(false),
            swept_awaiting_confirmations: sum(true),
            lightning_balances,
            sweeps,
        }
    }
}

/// The value of the output `descriptor` spends.
fn descriptor_value(descriptor: &lightning::sign::SpendableOutputDescriptor) -> Amount {
    use lightning::sign::SpendableOutputDescriptor as D;
    match descriptor {
        D::StaticOutput { output, .. } => output.value,
        D::DelayedPaymentOutput(d) => d.output.value,
        D::StaticPaymentOutput(d) => d.output.value,
    }
}
