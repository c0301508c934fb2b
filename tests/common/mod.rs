//! Shared set-up for tests that run real nodes on an in-process devchain.
#![allow(dead_code)]

use std::time::Duration;

use bitcoin::{Address, Amount, Transaction};
use ldk_splice::devchain::{DevChain, DevChainConfig};
use ldk_splice::node::{Node, NodeBuilder};
use tempfile::TempDir;
pub mod fake_peer;
pub mod processes;

use fake_peer::{Behaviour, FakeBob};
use lightning::ln::types::ChannelId;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// The block subsidy below height 150 on regtest.
pub const SUBSIDY: Amount = Amount::from_sat(50 * 100_000_000);

/// Routes `log` output to the test harness when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A devchain on a free loopback port.
pub async fn start_chain() -> DevChain {
    init_logging();
    DevChain::start(DevChainConfig::default())
        .await
        .expect("devchain starts")
}

/// A node builder for `dir` that talks to `chain` and polls it quickly.
pub fn builder(chain: &DevChain, dir: &std::path::Path) -> NodeBuilder {
    NodeBuilder::new(dir)
        .bitcoind_rpc(chain.rpc_url(), chain.rpc_user(), chain.rpc_password())
        .chain_poll_interval(Duration::from_millis(50))
        .reconnect_interval(Duration::from_millis(200))
}

/// A node with its own temporary data directory.
pub struct TestNode {
    pub node: Node,
    pub dir: TempDir,
}

pub async fn start_node(chain: &DevChain) -> TestNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = builder(chain, dir.path())
        .start()
        .await
        .expect("node starts");
    TestNode { node, dir }
}

/// Mines one coinbase to each node, then 100 blocks to burn so the coinbases
/// mature, and waits until every wallet sees its coins confirmed.
pub async fn fund_nodes(chain: &DevChain, nodes: &[&Node]) {
    for node in nodes {
        let address = node.new_address().expect("address");
        chain.mine_blocks(1, &address);
    }
    chain.mine_blocks_to_burn(100);
    for node in nodes {
        wait_synced(chain, node).await;
        node.wait_until(WAIT, "coinbase to mature", |n| {
            n.onchain_balance().confirmed == SUBSIDY
        })
        .await
        .expect("funded");
    }
}

/// Waits until `node` has synced to the devchain's tip.
pub async fn wait_synced(chain: &DevChain, node: &Node) {
    let (height, _) = chain.tip();
    node.wait_until(WAIT, "sync to tip", |n| {
        n.best_block_height() == height && n.wallet().best_block().height == height
    })
    .await
    .expect("synced");
}

/// Mines `n` blocks (with the mempool) and waits for every node to see them.
pub async fn mine(chain: &DevChain, n: usize, nodes: &[&Node]) {
    chain.mine_blocks_to_burn(n);
    for node in nodes {
        wait_synced(chain, node).await;
    }
}

/// Waits until `txid` is in the devchain's mempool (it passed validation).
pub async fn wait_in_mempool(chain: &DevChain, txid: &bitcoin::Txid) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !chain.mempool_txids().contains(txid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{txid} never reached the mempool"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until some mempool transaction matches `pred`, and returns it.
pub async fn wait_for_mempool_tx(
    chain: &DevChain,
    mut pred: impl FnMut(&Transaction) -> bool,
) -> Transaction {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for txid in chain.mempool_txids() {
            if let Some(tx) = chain.transaction(&txid) {
                if pred(&tx) {
                    return tx;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching transaction reached the mempool"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fee `tx` pays, from the outputs it spends as the devchain knows them.
pub fn fee_of(chain: &DevChain, tx: &Transaction) -> Amount {
    let inputs: Amount = tx
        .input
        .iter()
        .map(|input| {
            let prev = chain
                .transaction(&input.previous_output.txid)
                .expect("input's transaction is known");
            prev.output[input.previous_output.vout as usize].value
        })
        .sum();
    let outputs: Amount = tx.output.iter().map(|o| o.value).sum();
    inputs - outputs
}

/// The value `tx` pays to `address`'s script.
pub fn paid_to(tx: &Transaction, node: &Node) -> Amount {
    tx.output
        .iter()
        .filter(|o| node.wallet().is_mine(&o.script_pubkey))
        .map(|o| o.value)
        .sum()
}

pub fn address_of(node: &Node) -> Address {
    node.new_address().expect("address")
}

/// Connects `a` to `b`, opens a channel of `capacity` from `a` pushing
/// `push` to `b`, confirms it and waits until both sides can use it.
/// Returns the channel id and the funding transaction.
pub async fn open_channel(
    chain: &DevChain,
    a: &Node,
    b: &Node,
    capacity: Amount,
    push: Amount,
) -> (lightning::ln::types::ChannelId, Transaction) {
    a.connect(b.node_id(), b.listen_addr())
        .await
        .expect("connects");
    a.open_channel(b.node_id(), capacity, push)
        .expect("open accepted");
    let funding_tx =
        wait_for_mempool_tx(chain, |tx| tx.output.iter().any(|o| o.value == capacity)).await;
    mine(chain, 6, &[a, b]).await;
    let funding_txid = funding_tx.compute_txid();
    for node in [a, b] {
        node.wait_until(WAIT, "channel usable", |n| {
            n.list_channels()
                .iter()
                .any(|c| c.is_usable && c.funding_txo.map(|o| o.txid) == Some(funding_txid))
        })
        .await
        .expect("channel usable");
    }
    let channel = a
        .list_channels()
        .into_iter()
        .find(|c| c.funding_txo.map(|o| o.txid) == Some(funding_txid))
        .expect("channel listed");
    (channel.channel_id, funding_tx)
}

/// Pays `amount_msat` from `from` to `to` over their channel and waits for
/// both sides to see it settle.
pub async fn pay(from: &Node, to: &Node, amount_msat: u64) {
    use ldk_splice::node::PaymentStatus;
    let invoice = to
        .create_invoice(Some(amount_msat), "test", Duration::from_secs(3600))
        .expect("invoice");
    let hash = from.pay_invoice(&invoice).expect("payment starts");
    let sent = from
        .wait_for_payment(&hash, WAIT)
        .await
        .expect("payment settles");
    assert_eq!(
        sent.status,
        PaymentStatus::Succeeded,
        "payment {hash} failed"
    );
    assert_eq!(
        sent.fee_paid_msat,
        Some(0),
        "direct payments pay no routing fee"
    );
    to.wait_until(WAIT, "payment received", |n| {
        n.payment(&hash)
            .is_some_and(|p| p.status == PaymentStatus::Succeeded)
    })
    .await
    .expect("payment received");
    assert_eq!(
        to.payment(&hash).and_then(|p| p.amount_msat),
        Some(amount_msat)
    );
}

/// A chain, Alice and Bob funded, and a confirmed channel from Alice to Bob.
pub struct Setup {
    pub chain: DevChain,
    pub alice: TestNode,
    pub bob: TestNode,
    pub channel_id: lightning::ln::types::ChannelId,
}

/// Starts a chain and two funded nodes, opens a channel of `capacity` from
/// Alice to Bob and pays Bob `paid_to_bob_msat` over it, so both sides have
/// a balance.
pub async fn two_nodes_with_channel(capacity: Amount, paid_to_bob_msat: u64) -> Setup {
    let chain = start_chain().await;
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    fund_nodes(&chain, &[&alice.node, &bob.node]).await;
    let (channel_id, _) =
        open_channel(&chain, &alice.node, &bob.node, capacity, Amount::ZERO).await;
    pay(&alice.node, &bob.node, paid_to_bob_msat).await;
    Setup {
        chain,
        alice,
        bob,
        channel_id,
    }
}

/// Stops `node`, drops it, and starts a new node from the same data
/// directory.
pub async fn restart(chain: &DevChain, node: TestNode) -> TestNode {
    node.node.stop().await.expect("node stops");
    let TestNode { node, dir } = node;
    drop(node);
    let node = builder(chain, dir.path())
        .start()
        .await
        .expect("node starts again from its data directory");
    TestNode { node, dir }
}

/// Stops Bob's node and serves his channel manager through a [`FakeBob`]
/// behaving as `behaviour`; Alice reconnects to it and the channel is
/// usable again.
pub async fn bob_behind_fake_peer(
    a: &Node,
    b: &Node,
    channel_id: &ChannelId,
    behaviour: Behaviour,
) -> FakeBob {
    let bob = b.node_id();
    b.stop().await.expect("Bob stops");
    a.wait_until(WAIT, "Alice to see Bob gone", |n| !n.is_connected(&bob))
        .await
        .expect("Bob disconnected");
    let fake = FakeBob::start(b, behaviour).await;
    a.connect(bob, fake.addr)
        .await
        .expect("Alice reaches Bob's channel manager");
    a.wait_until(WAIT, "the channel usable, with splice support", |n| {
        n.channel(channel_id)
            .is_some_and(|c| c.is_usable && c.counterparty.features.supports_splicing())
    })
    .await
    .expect("channel usable again");
    fake
}

/// Tears `fake` down (it persists Bob's channel manager), then starts Bob's
/// real node again from his data directory and connects Alice to it, until
/// the channel is usable on both sides.
pub async fn bob_back_for_real(
    chain: &DevChain,
    a: &Node,
    bob: TestNode,
    fake: FakeBob,
) -> TestNode {
    let bob_id = bob.node.node_id();
    drop(fake);
    a.wait_until(WAIT, "Alice to see the fake peer gone", |n| {
        !n.is_connected(&bob_id)
    })
    .await
    .expect("fake peer gone");
    let TestNode { node, dir } = bob;
    drop(node);
    let node = builder(chain, dir.path())
        .start()
        .await
        .expect("Bob starts again from his data directory");
    a.connect(bob_id, node.listen_addr())
        .await
        .expect("Alice reaches Bob again");
    for n in [a, &node] {
        n.wait_until(WAIT, "the channel usable with the real Bob", |n| {
            n.list_channels().iter().any(|c| c.is_usable)
        })
        .await
        .expect("channel usable");
    }
    TestNode { node, dir }
}

/// Waits until splice `id` of `node` is broadcast and its transaction has
/// reached the devchain's mempool; returns the txid.
pub async fn broadcast_txid(
    chain: &DevChain,
    node: &Node,
    id: ldk_splice::SpliceId,
) -> bitcoin::Txid {
    let txid = node
        .wait_for_splice(id, WAIT, |s| *s == ldk_splice::SpliceState::Broadcast)
        .await
        .expect("broadcast")
        .txid
        .expect("a txid once broadcast");
    wait_in_mempool(chain, &txid).await;
    txid
}

/// Shows `node` every block of `chain` from height `next` to the tip through
/// LDK's `Confirm` (`transactions_confirmed`, then `best_block_updated`), as
/// an Electrum or Esplora sync would; returns the next height to show.
pub fn feed_blocks_through_confirm(chain: &DevChain, node: &Node, mut next: u32) -> u32 {
    let (tip, _) = chain.tip();
    while next <= tip {
        let block = chain.block(&chain.block_hash(next).unwrap()).unwrap();
        let txdata: Vec<(usize, &Transaction)> = block.txdata.iter().enumerate().collect();
        for part in node.confirmables() {
            part.transactions_confirmed(&block.header, &txdata, next);
            part.best_block_updated(&block.header, next);
        }
        next += 1;
    }
    next
}

/// Mines until splice `id` of `a` locks, and returns its record.
pub async fn mine_to_lock(
    chain: &DevChain,
    a: &Node,
    b: &Node,
    id: ldk_splice::SpliceId,
) -> ldk_splice::SpliceRecord {
    mine(chain, 6, &[a, b]).await;
    a.wait_for_splice(id, WAIT, |s| *s == ldk_splice::SpliceState::Locked)
        .await
        .expect("locked")
}
