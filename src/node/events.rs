//! The node's LDK event handler.

use std::sync::Arc;

use lightning::events::{Event, ReplayEvent};
use lightning::sign::SpendableOutputDescriptor;

use super::anchors::BumpHandler;
use super::bitcoind::Bitcoind;
use super::payments::{PaymentDirection, PaymentStatus, PaymentStore};
use super::sweep::Sweeper;
use super::types::{ChannelManager, NodeCoordinator, NodeLiquidityService};
use crate::wallet::BdkWallet;

/// Handles the events LDK hands the node: funding, inbound channels,
/// payments, fee bumps of our force-closes, and outputs to sweep.
pub(crate) struct NodeEventHandler {
    pub(crate) channel_manager: Arc<ChannelManager>,
    pub(crate) wallet: Arc<BdkWallet>,
    pub(crate) bitcoind: Arc<Bitcoind>,
    pub(crate) payments: Arc<PaymentStore>,
    pub(crate) sweeper: Arc<Sweeper>,
    pub(crate) bump: BumpHandler,
    pub(crate) notify: Arc<tokio::sync::Notify>,
    pub(crate) accept_inbound_channels: bool,
    /// Peers whose channels are accepted zero-conf.
    pub(crate) zero_conf_peers: Vec<bitcoin::secp256k1::PublicKey>,
    pub(crate) coordinator: Arc<NodeCoordinator>,
    /// Takes the fee payments of liquidity orders, when the node sells.
    pub(crate) liquidity_service: Option<Arc<NodeLiquidityService>>,
    /// Wakes the task that sends queued peer messages.
    pub(crate) send_messages: Arc<tokio::sync::Notify>,
    /// The application's look at every event, first.
    pub(crate) hook: Option<super::builder::EventHook>,
}

impl NodeEventHandler {
    pub(crate) fn handle(&self, event: Event) -> Result<(), ReplayEvent> {
        if let Some(hook) = &self.hook {
            hook(&event);
        }
        // The liquidity service (which takes only fee payments) comes last:
        // a fee it fails back at once is recorded failed, after the payment
        // was recorded held.
        let liquidity_event = (self.liquidity_service.is_some()
            && matches!(event, Event::PaymentClaimable { .. }))
        .then(|| event.clone());
        let result = self
            .coordinator
            .handle_event(&event)
            .and_then(|()| self.dispatch(event))
            .and_then(|()| match (&self.liquidity_service, liquidity_event) {
                (Some(service), Some(event)) => service.handle_event(&event),
                _ => Ok(()),
            });
        // Messages our handling queued (signatures, funding) go out now,
        // not on the background processor's next round; from another
        // task, because LDK hands some events over under its monitor lock,
        // which sending messages takes again (a block arriving in between
        // would deadlock the two).
        self.send_messages.notify_one();
        // Anyone waiting on node state gets to look again.
        self.notify.notify_waiters();
        result
    }

    fn dispatch(&self, event: Event) -> Result<(), ReplayEvent> {
        match event {
            Event::FundingGenerationReady {
                temporary_channel_id,
                counterparty_node_id,
                channel_value_satoshis,
                output_script,
                ..
            } => {
                let fee_rate = self.bitcoind.funding_feerate();
                let amount = bitcoin::Amount::from_sat(channel_value_satoshis);
                let funding = self
                    .wallet
                    .build_payment(output_script, amount, fee_rate)
                    .map_err(|e| e.to_string())
                    .and_then(|tx| {
                        self.channel_manager
                            .funding_transaction_generated(
                                temporary_channel_id,
                                counterparty_node_id,
                                tx.clone(),
                            )
                            .map(|()| tx.clone())
                            .map_err(|e| {
                                if let Err(e) = self.wallet.payment_abandoned(&tx) {
                                    log::warn!("could not free the funding's coins: {e}");
                                }
                                format!("{e:?}")
                            })
                    });
                match funding {
                    Ok(tx) => {
                        log::info!(
                            "funding channel with {counterparty_node_id} in {}",
                            tx.compute_txid()
                        );
                        if let Err(e) = self.wallet.payment_sent(&tx) {
                            log::warn!("could not record the funding in the wallet: {e}");
                        }
                    }
                    Err(e) => {
                        log::error!("could not fund channel with {counterparty_node_id}: {e}");
                        let _ = self.channel_manager.force_close_broadcasting_latest_txn(
                            &temporary_channel_id,
                            &counterparty_node_id,
                            format!("funding failed: {e}"),
                        );
                    }
                }
            }
            Event::OpenChannelRequest {
                temporary_channel_id,
                counterparty_node_id,
                funding_satoshis,
                ..
            } => {
                if !self.accept_inbound_channels {
                    log::info!("rejecting inbound channel from {counterparty_node_id}");
                    let _ = self.channel_manager.force_close_broadcasting_latest_txn(
                        &temporary_channel_id,
                        &counterparty_node_id,
                        "inbound channels are not accepted".into(),
                    );
                    return Ok(());
                }
                let user_channel_id = u128::from_be_bytes(rand_bytes());
                let accepted = if self.zero_conf_peers.contains(&counterparty_node_id) {
                    self.channel_manager
                        .accept_inbound_channel_from_trusted_peer(
                            &temporary_channel_id,
                            &counterparty_node_id,
                            user_channel_id,
                            lightning::ln::channelmanager::TrustedChannelFeatures::ZeroConf,
                            None,
                        )
                } else {
                    self.channel_manager.accept_inbound_channel(
                        &temporary_channel_id,
                        &counterparty_node_id,
                        user_channel_id,
                        None,
                    )
                };
                match accepted {
                    Ok(()) => log::info!(
                        "accepted inbound channel of {funding_satoshis} sat from {counterparty_node_id}"
                    ),
                    Err(e) => log::error!("could not accept inbound channel: {e:?}"),
                }
            }
            Event::PaymentClaimable {
                payment_hash,
                purpose,
                amount_msat,
                ..
            } => {
                self.payments
                    .upsert(payment_hash, PaymentDirection::Inbound, |p| {
                        p.amount_msat = Some(amount_msat);
                    });
                match purpose.preimage() {
                    Some(preimage) => self.channel_manager.claim_funds(preimage),
                    None => {
                        log::info!(
                            "payment {payment_hash} to a hold invoice arrived; it waits for claim_payment or fail_payment"
                        );
                        self.payments
                            .upsert(payment_hash, PaymentDirection::Inbound, |p| {
                                p.status = PaymentStatus::Held;
                            });
                    }
                }
            }
            Event::PaymentClaimed {
                payment_hash,
                amount_msat,
                ..
            } => {
                log::info!("received {amount_msat} msat for {payment_hash}");
                self.payments
                    .upsert(payment_hash, PaymentDirection::Inbound, |p| {
                        p.amount_msat = Some(amount_msat);
                        p.status = PaymentStatus::Succeeded;
                    });
            }
            Event::PaymentSent {
                payment_hash,
                fee_paid_msat,
                amount_msat,
                ..
            } => {
                log::info!("payment {payment_hash} sent, fee {fee_paid_msat:?} msat");
                self.payments
                    .upsert(payment_hash, PaymentDirection::Outbound, |p| {
                        p.status = PaymentStatus::Succeeded;
                        p.fee_paid_msat = fee_paid_msat;
                        if amount_msat.is_some() {
                            p.amount_msat = amount_msat;
                        }
                    });
            }
            Event::PaymentFailed {
                payment_hash,
                reason,
                ..
            } => {
                log::warn!("payment {payment_hash:?} failed: {reason:?}");
                if let Some(hash) = payment_hash {
                    self.payments.upsert(hash, PaymentDirection::Outbound, |p| {
                        p.status = PaymentStatus::Failed;
                    });
                }
            }
            Event::ChannelPending {
                channel_id,
                counterparty_node_id,
                funding_txo,
                ..
            } => {
                log::info!(
                    "channel {channel_id} with {counterparty_node_id} pending in {funding_txo}"
                );
            }
            Event::ChannelReady {
                channel_id,
                counterparty_node_id,
                ..
            } => {
                log::info!("channel {channel_id} with {counterparty_node_id} ready");
            }
            Event::ChannelClosed {
                channel_id, reason, ..
            } => {
                log::info!("channel {channel_id} closed: {reason}");
            }
            Event::SpendableOutputs {
                outputs,
                channel_id,
                counterparty_node_id,
            } => {
                // Outputs paying the wallet are the wallet's already; the
                // sweeper spends every other one into the wallet.
                let to_sweep: Vec<_> = outputs
                    .into_iter()
                    .filter(|output| match output {
                        SpendableOutputDescriptor::StaticOutput { output, .. } => {
                            !self.wallet.is_mine(&output.script_pubkey)
                        }
                        _ => true,
                    })
                    .collect();
                if !to_sweep.is_empty() {
                    log::info!(
                        "sweeping {} output(s) of channel {channel_id:?} into the wallet",
                        to_sweep.len()
                    );
                    self.sweeper
                        .track_spendable_outputs(
                            to_sweep,
                            channel_id,
                            counterparty_node_id,
                            false,
                            None,
                        )
                        .map_err(|()| ReplayEvent())?;
                }
            }
            Event::BumpTransaction(event) => self.bump.handle_event(&event),
            Event::ConnectionNeeded { node_id, .. } => {
                log::debug!("LDK asks to connect to {node_id}; the reconnect task handles it");
            }
            other => log::debug!("unhandled event: {other:?}"),
        }
        Ok(())
    }
}

fn rand_bytes() -> [u8; 16] {
    use bitcoin::secp256k1::rand::RngCore;
    let mut bytes = [0u8; 16];
    bitcoin::secp256k1::rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}
