//! Two real LDK nodes over TCP on the devchain: fund, open, pay both ways,
//! restart one, pay again, close, and account for every satoshi.

mod common;

use bitcoin::Amount;
use common::*;
use ldk_splice::node::{NodeError, PaymentStatus};

const CAPACITY: Amount = Amount::from_sat(1_000_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_pay_restart_pay_close_accounts_for_every_satoshi() {
    let chain = start_chain().await;
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    fund_nodes(&chain, &[&alice.node, &bob.node]).await;
    let bob_id = bob.node.node_id();

    alice
        .node
        .connect(bob_id, bob.node.listen_addr())
        .await
        .expect("connects");
    alice
        .node
        .open_channel(bob_id, CAPACITY, Amount::ZERO)
        .expect("open accepted");

    // The funding transaction pays the channel from Alice's wallet.
    let funding_tx =
        wait_for_mempool_tx(&chain, |tx| tx.output.iter().any(|o| o.value == CAPACITY)).await;
    let funding_fee = fee_of(&chain, &funding_tx);
    assert!(funding_fee > Amount::ZERO);
    mine(&chain, 6, &[&alice.node, &bob.node]).await;
    assert_eq!(chain.confirmations(&funding_tx.compute_txid()), Some(6));

    for node in [&alice.node, &bob.node] {
        node.wait_until(WAIT, "channel usable", |n| {
            n.list_channels().iter().any(|c| c.is_usable)
        })
        .await
        .expect("channel usable");
    }
    let channel = alice.node.list_channels().remove(0);
    assert_eq!(channel.channel_value_satoshis, CAPACITY.to_sat());
    assert_eq!(
        channel.funding_txo.map(|o| o.txid),
        Some(funding_tx.compute_txid())
    );

    // Alice pays Bob 100k sat, Bob pays back 30k sat.
    pay(&alice.node, &bob.node, 100_000_000).await;
    pay(&bob.node, &alice.node, 30_000_000).await;

    // Bob restarts from his data directory.
    bob.node.stop().await.expect("bob stops");
    assert!(
        !alice.node.is_connected(&bob_id) || {
            alice
                .node
                .wait_until(WAIT, "bob gone", |n| !n.is_connected(&bob_id))
                .await
                .is_ok()
        }
    );
    let bob_dir = bob.dir;
    let bob_node = builder(&chain, bob_dir.path())
        .start()
        .await
        .expect("bob starts again");
    assert_eq!(bob_node.node_id(), bob_id, "same keys after restart");
    assert_eq!(
        bob_node.onchain_balance().confirmed,
        SUBSIDY,
        "wallet state survives the restart"
    );
    // Alice reconnects to Bob (his new listen port is announced by connecting again).
    alice
        .node
        .connect(bob_id, bob_node.listen_addr())
        .await
        .expect("reconnects");
    for node in [&alice.node, &bob_node] {
        node.wait_until(WAIT, "channel usable again", |n| {
            n.list_channels().iter().any(|c| c.is_usable)
        })
        .await
        .expect("channel usable after restart");
    }
    let received_before_restart: Vec<_> = bob_node
        .list_payments()
        .into_iter()
        .filter(|p| p.status == PaymentStatus::Succeeded)
        .collect();
    assert_eq!(received_before_restart.len(), 2, "payments survive restart");
    pay(&alice.node, &bob_node, 10_000_000).await;

    // Bob's channel balance is 100k - 30k + 10k sat; Alice opened, so she
    // pays the closing fee.
    let bob_channel_balance = Amount::from_sat(80_000);
    // A close asked for while the peer is reconnecting waits for the
    // channel to be re-established instead of failing.
    alice.node.disconnect(&bob_id);
    alice
        .node
        .wait_until(WAIT, "bob disconnected", |n| !n.is_connected(&bob_id))
        .await
        .expect("disconnects");
    let reconnect = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        alice.node.connect(bob_id, bob_node.listen_addr()).await
    };
    let (closed, reconnected) = tokio::join!(
        alice.node.close_channel(&channel.channel_id, &bob_id),
        reconnect
    );
    reconnected.expect("reconnects");
    closed.expect("close starts once the channel is re-established");
    let close_tx = wait_for_mempool_tx(&chain, |tx| {
        tx.input
            .iter()
            .any(|i| i.previous_output.txid == funding_tx.compute_txid())
    })
    .await;
    let close_fee = fee_of(&chain, &close_tx);
    mine(&chain, 1, &[&alice.node, &bob_node]).await;
    for node in [&alice.node, &bob_node] {
        node.wait_until(WAIT, "channel closed", |n| n.list_channels().is_empty())
            .await
            .expect("channel closed");
    }
    assert_eq!(paid_to(&close_tx, &bob_node), bob_channel_balance);
    assert_eq!(
        paid_to(&close_tx, &alice.node),
        CAPACITY - bob_channel_balance - close_fee
    );

    let alice_expected = SUBSIDY - funding_fee - bob_channel_balance - close_fee;
    let bob_expected = SUBSIDY + bob_channel_balance;
    alice
        .node
        .wait_until(WAIT, "alice's close output", |n| {
            n.onchain_balance().confirmed == alice_expected
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "alice has {:?}, expected {alice_expected}",
                alice.node.onchain_balance()
            )
        });
    bob_node
        .wait_until(WAIT, "bob's close output", |n| {
            n.onchain_balance().confirmed == bob_expected
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "bob has {:?}, expected {bob_expected}",
                bob_node.onchain_balance()
            )
        });

    alice.node.stop().await.expect("alice stops");
    bob_node.stop().await.expect("bob stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_network_and_unreachable_bitcoind_are_reported() {
    let chain = start_chain().await;
    let dir = tempfile::tempdir().unwrap();
    let err = builder(&chain, dir.path())
        .network(bitcoin::Network::Bitcoin)
        .start()
        .await
        .err()
        .expect("mainnet node refuses a regtest chain");
    assert!(
        matches!(&err, NodeError::Chain(m) if m.contains("regtest")),
        "{err}"
    );

    let err = builder(&chain, dir.path())
        .bitcoind_rpc(chain.rpc_url(), chain.rpc_user(), "wrong password")
        .start()
        .await
        .err()
        .expect("bad credentials are refused");
    assert!(matches!(err, NodeError::Chain(_)), "{err}");
}

/// Without an estimate from bitcoind each target runs on its own fallback:
/// urgent claims and the maximum well above the normal rate, the minimums
/// we allow peers at the relay floor, funding on its own target. Once
/// bitcoind estimates again, every target follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fee_estimates_fall_back_per_target_and_follow_bitcoind_again() {
    use bitcoin::FeeRate;
    use ldk_splice::node::{FeeTarget, FEE_TARGETS};
    use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};

    let chain = start_chain().await;
    chain.set_fee_rate(FeeRate::ZERO);
    let node = start_node(&chain).await;
    let bitcoind = node.node.bitcoind();
    let ldk = |target| bitcoind.get_est_sat_per_1000_weight(target);
    let estimates = bitcoind.fee_estimates();
    assert_eq!(estimates.len(), FEE_TARGETS.len());
    assert!(estimates.iter().all(|e| e.fallback), "{estimates:?}");
    assert_eq!(ldk(ConfirmationTarget::MaximumFeeEstimate), 12_500);
    assert_eq!(ldk(ConfirmationTarget::UrgentOnChainSweep), 5_000);
    assert_eq!(ldk(ConfirmationTarget::NonAnchorChannelFee), 2_500);
    assert_eq!(ldk(ConfirmationTarget::AnchorChannelFee), 500);
    assert_eq!(ldk(ConfirmationTarget::OutputSpendingFee), 1_000);
    assert_eq!(
        ldk(ConfirmationTarget::MinAllowedAnchorChannelRemoteFee),
        253
    );
    assert_eq!(
        ldk(ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee),
        253
    );
    assert_eq!(ldk(ConfirmationTarget::ChannelCloseMinimum), 253);
    assert_eq!(bitcoind.funding_feerate(), FeeRate::from_sat_per_vb_u32(10));
    assert!(
        ldk(ConfirmationTarget::UrgentOnChainSweep) > 2 * ldk(ConfirmationTarget::AnchorChannelFee),
        "urgent claims fall back well above the normal rate"
    );

    chain.set_fee_rate(FeeRate::from_sat_per_vb_u32(7));
    bitcoind.update_fee_estimates().await;
    let estimates = bitcoind.fee_estimates();
    assert!(estimates.iter().all(|e| !e.fallback), "{estimates:?}");
    for estimate in &estimates {
        assert_eq!(
            estimate.feerate,
            FeeRate::from_sat_per_vb_u32(7),
            "{}",
            estimate.target
        );
    }
    assert_eq!(ldk(ConfirmationTarget::UrgentOnChainSweep), 1_750);
    assert_eq!(bitcoind.funding_feerate(), FeeRate::from_sat_per_vb_u32(7));
    assert!(estimates.iter().any(|e| e.target == FeeTarget::Funding));

    // An estimate that goes away again falls back again.
    chain.set_fee_rate(FeeRate::ZERO);
    bitcoind.update_fee_estimates().await;
    assert_eq!(ldk(ConfirmationTarget::UrgentOnChainSweep), 5_000);
    assert_eq!(bitcoind.funding_feerate(), FeeRate::from_sat_per_vb_u32(10));
}

/// A node that was stopped and dropped is freed: nothing it built keeps it
/// alive (a long-running application restarts nodes without leaking one
/// each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_freed_when_dropped() {
    let chain = start_chain().await;
    let node = start_node(&chain).await;
    let coordinator = std::sync::Arc::downgrade(node.node.coordinator());
    let manager = std::sync::Arc::downgrade(node.node.channel_manager());
    node.node.stop().await.expect("stops");
    drop(node);
    let deadline = std::time::Instant::now() + WAIT;
    while coordinator.strong_count() > 0 || manager.strong_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "still alive: coordinator {}, channel manager {}",
            coordinator.strong_count(),
            manager.strong_count()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
