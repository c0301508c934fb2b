//! The wallet finds every coin it ever had: a node restored from its seed
//! into an empty data directory, with the wallet's birthday height, ends
//! with the same balance and the same coins as the node it replaces; and a
//! block that does not connect to the wallet's blocks makes it read the
//! missing ones, never skip them.

mod common;

use std::collections::BTreeSet;

use bitcoin::{Amount, FeeRate, OutPoint};
use common::*;
use ldk_splice::node::{ChainFeed, Node};
use ldk_splice::{Destination, FeePolicy};
use lightning::chain::Listen;

/// The wallet's confirmed coins, with their values.
fn coins(node: &Node) -> BTreeSet<(OutPoint, Amount)> {
    node.wallet()
        .spendable_coins()
        .into_iter()
        .map(|c| (c.outpoint, c.output.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restored_from_its_seed_finds_every_coin_since_its_birthday() {
    let chain = start_chain().await;
    // A chain some blocks tall: a new wallet starts at its tip, not genesis.
    chain.mine_blocks_to_burn(5);
    let (birthday, _) = chain.tip();
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    fund_nodes(&chain, &[&alice.node, &bob.node]).await;
    let (a, b) = (&alice.node, &bob.node);
    let bob_id = b.node_id();

    // A channel, a splice-in, a splice-out to the wallet, a payment from
    // Bob's wallet, and a cooperative close: coins on addresses and change
    // of every kind the node uses.
    let (channel_id, _) =
        open_channel(&chain, a, b, Amount::from_sat(1_000_000), Amount::ZERO).await;
    pay(a, b, 100_000_000).await;
    let fee = FeePolicy::fixed(FeeRate::from_sat_per_vb(2).expect("rate"));
    let id = a
        .splice_in(&channel_id, &bob_id, Amount::from_sat(200_000), fee)
        .expect("splice-in");
    broadcast_txid(&chain, a, id).await;
    mine_to_lock(&chain, a, b, id).await;
    let id = a
        .splice_out(
            &channel_id,
            &bob_id,
            Amount::from_sat(50_000),
            Destination::Wallet,
            fee,
        )
        .expect("splice-out");
    broadcast_txid(&chain, a, id).await;
    mine_to_lock(&chain, a, b, id).await;
    let payment = b
        .wallet()
        .build_payment(
            address_of(a).script_pubkey(),
            Amount::from_sat(30_000),
            FeeRate::from_sat_per_vb(2).expect("rate"),
        )
        .expect("Bob pays Alice on-chain");
    b.bitcoind()
        .send_transaction(&payment)
        .await
        .expect("payment accepted");
    b.wallet().payment_sent(&payment).expect("recorded");
    let funding = a
        .channel(&channel_id)
        .and_then(|c| c.funding_txo)
        .expect("funding")
        .into_bitcoin_outpoint();
    a.close_channel(&channel_id, &bob_id)
        .await
        .expect("close starts");
    wait_for_mempool_tx(&chain, |tx| {
        tx.input.iter().any(|i| i.previous_output == funding)
    })
    .await;
    mine(&chain, 6, &[a, b]).await;
    a.wait_until(WAIT, "every coin confirmed, the channel gone", |n| {
        let balance = n.onchain_balance();
        n.list_channels().is_empty() && balance.total() == balance.confirmed
    })
    .await
    .expect("settled");
    let balance = a.onchain_balance().confirmed;
    let coin_set = coins(a);
    assert!(coin_set.len() >= 4, "coins of every kind: {coin_set:?}");
    let seed: [u8; 32] = std::fs::read(alice.dir.path().join("seed"))
        .expect("seed file")
        .try_into()
        .expect("32 bytes");
    alice.node.stop().await.expect("Alice stops");
    drop(alice);

    // The same seed, an empty data directory, the birthday: everything.
    let restored_dir = tempfile::tempdir().expect("temp dir");
    let restored = builder(&chain, restored_dir.path())
        .seed(seed)
        .wallet_birthday_height(birthday)
        .start()
        .await
        .expect("restored node starts");
    wait_synced(&chain, &restored).await;
    assert_eq!(restored.onchain_balance().confirmed, balance);
    assert_eq!(restored.onchain_balance().total(), balance);
    assert_eq!(coins(&restored), coin_set);
    restored.stop().await.expect("stops");

    // The same seed without a birthday starts at the tip: none of it.
    let fresh_dir = tempfile::tempdir().expect("temp dir");
    let fresh = builder(&chain, fresh_dir.path())
        .seed(seed)
        .start()
        .await
        .expect("node starts");
    wait_synced(&chain, &fresh).await;
    assert_eq!(fresh.onchain_balance().total(), Amount::ZERO);

    // A data directory holding another seed refuses the one given.
    let refused = builder(&chain, fresh_dir.path())
        .seed([7; 32])
        .start()
        .await
        .err()
        .expect("another seed is refused");
    assert!(refused.to_string().contains("another seed"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_that_does_not_connect_makes_the_wallet_read_the_missing_ones() {
    let chain = start_chain().await;
    // Fed through `Confirm`, the node polls no blocks itself: the wallet
    // gets exactly the blocks this test gives it.
    let dir = tempfile::tempdir().expect("temp dir");
    let node = builder(&chain, dir.path())
        .chain_feed(ChainFeed::Confirm)
        .start()
        .await
        .expect("node starts");
    let (start, _) = chain.tip();
    assert_eq!(node.wallet().best_block().height, start);

    // Block 1 pays the wallet; the wallet is shown only block 2.
    chain.mine_blocks(1, &address_of(&node));
    chain.mine_blocks_to_burn(1);
    let second = chain
        .block(&chain.block_hash(start + 2).expect("block 2"))
        .expect("block");
    node.wallet().block_connected(&second, start + 2);

    node.wait_until(WAIT, "the wallet to read the block it missed", |n| {
        n.wallet().best_block().height == start + 2 && !n.wallet().needs_resync()
    })
    .await
    .expect("the wallet caught up");
    assert_eq!(
        node.onchain_balance().total(),
        SUBSIDY,
        "block 1's coinbase is found"
    );
}
