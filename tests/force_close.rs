//! Force-closes of anchor channels with HTLCs pending both ways, run to the
//! end on the devchain: the commitment goes out with a child paying for it
//! (CPFP, from the wallet), the HTLCs are claimed with the preimage or timed
//! out, and every output is swept into the wallet once its timelock passes.
//! Alice's wallet must end with exactly what the channel and the HTLCs owed
//! her, less the fees of the transactions that paid it back.
//!
//! In each case Alice opened a channel of 1 000 000 sat to Bob and paid him
//! 300 000 sat; then she pays Bob 50 000 sat to a hold invoice he never
//! settles (it times out back to her on-chain) and Bob pays her 40 000 sat to
//! a hold invoice she settles on-chain after the close. The channel owes her
//! 700 000 - 50 000 + 50 000 + 40 000 = 740 000 sat, out of which, as the
//! channel's funder, she pays the commitment's fee and both anchors (330 sat
//! each; the anchor of the side that spends it comes back through its child).

mod common;

use std::collections::BTreeSet;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Amount, OutPoint, Transaction};
use common::*;
use ldk_splice::devchain::DevChain;
use ldk_splice::node::{Node, PaymentStatus, SweepStatus};
use ldk_splice::{FeePolicy, SpliceState};
use lightning::ln::types::ChannelId;
use lightning::types::payment::{PaymentHash, PaymentPreimage};

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const PAID_TO_BOB_MSAT: u64 = 300_000_000;
/// Alice to Bob, never settled: times out back to Alice.
const HELD_BY_BOB: Amount = Amount::from_sat(50_000);
/// Bob to Alice, settled on-chain by Alice after the close.
const HELD_BY_ALICE: Amount = Amount::from_sat(40_000);
/// What the channel owes Alice at the close, HTLCs included.
const OWED_TO_ALICE: Amount = Amount::from_sat(740_000);
/// The value of each anchor output.
const ANCHOR: Amount = Amount::from_sat(330);
/// The most blocks a close may take to settle (the timelocks are 144 blocks).
const MAX_BLOCKS: u32 = 400;

struct Closing {
    chain: DevChain,
    alice: TestNode,
    bob: TestNode,
    channel_id: ChannelId,
    funding: OutPoint,
    /// Settles the payment Bob made to Alice's hold invoice.
    alice_preimage: PaymentPreimage,
}

fn hash_of(preimage: &PaymentPreimage) -> PaymentHash {
    PaymentHash(sha256::Hash::hash(&preimage.0).to_byte_array())
}

/// Pays `amount` from `payer` to a hold invoice of `payee` for the hash of
/// `preimage`, and waits until the payee holds it.
async fn pay_held(payer: &Node, payee: &Node, amount: Amount, preimage: &PaymentPreimage) {
    let hash = hash_of(preimage);
    let invoice = payee
        .create_hold_invoice(
            Some(amount.to_sat() * 1000),
            hash,
            "held",
            std::time::Duration::from_secs(3600),
        )
        .expect("hold invoice");
    payer.pay_invoice(&invoice).expect("payment starts");
    payee
        .wait_until(WAIT, "the payment to be held", |n| {
            n.payment(&hash)
                .is_some_and(|p| p.status == PaymentStatus::Held)
        })
        .await
        .expect("payment held");
}

/// Alice and Bob with a channel carrying an HTLC each way, and Alice's
/// wallet holding three confirmed coins (one pays for the commitment's
/// child, the others for the HTLC transactions).
async fn channel_with_htlcs_both_ways() -> Closing {
    let chain = start_chain().await;
    // No fee estimate: every node runs on its fallbacks, so commitments are
    // signed at 2 sat/vB while claims aim at 20 sat/vB, and a commitment
    // needs its child to get there.
    chain.set_fee_rate(bitcoin::FeeRate::ZERO);
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    let alice_address = address_of(&alice.node);
    chain.mine_blocks(3, &alice_address);
    chain.mine_blocks(1, &address_of(&bob.node));
    chain.mine_blocks_to_burn(100);
    for node in [&alice.node, &bob.node] {
        wait_synced(&chain, node).await;
    }
    let (channel_id, funding_tx) =
        open_channel(&chain, &alice.node, &bob.node, CAPACITY, Amount::ZERO).await;
    let funding = OutPoint {
        txid: funding_tx.compute_txid(),
        vout: funding_tx
            .output
            .iter()
            .position(|o| o.value == CAPACITY)
            .expect("funding output") as u32,
    };
    assert!(
        alice
            .node
            .channel(&channel_id)
            .and_then(|c| c.channel_type)
            .is_some_and(|t| t.supports_anchors_zero_fee_htlc_tx()),
        "the channel uses anchors"
    );
    pay(&alice.node, &bob.node, PAID_TO_BOB_MSAT).await;

    pay_held(
        &alice.node,
        &bob.node,
        HELD_BY_BOB,
        &PaymentPreimage([0xb0; 32]),
    )
    .await;
    let alice_preimage = PaymentPreimage([0xa1; 32]);
    pay_held(&bob.node, &alice.node, HELD_BY_ALICE, &alice_preimage).await;
    for node in [&alice.node, &bob.node] {
        node.wait_until(WAIT, "both HTLCs committed", |n| {
            n.channel(&channel_id).is_some_and(|c| {
                c.pending_outbound_htlcs.len() == 1 && c.pending_inbound_htlcs.len() == 1
            })
        })
        .await
        .expect("HTLCs committed");
    }
    // Every coin of Alice's is confirmed before the close.
    mine(&chain, 1, &[&alice.node, &bob.node]).await;
    let balance = alice.node.onchain_balance();
    assert_eq!(balance.pending + balance.untrusted_pending, Amount::ZERO);
    Closing {
        chain,
        alice,
        bob,
        channel_id,
        funding,
        alice_preimage,
    }
}

/// The transaction in the mempool or the chain that spends `outpoint`.
async fn wait_for_spend(chain: &DevChain, outpoint: OutPoint) -> Transaction {
    wait_for_mempool_tx(chain, |tx| {
        tx.input.iter().any(|i| i.previous_output == outpoint)
    })
    .await
}

/// Whether `tx` spends a coin of `node`'s wallet.
fn spends_wallet_coin(chain: &DevChain, node: &Node, tx: &Transaction) -> bool {
    tx.input.iter().any(|input| {
        chain
            .transaction(&input.previous_output.txid)
            .and_then(|prev| {
                prev.output
                    .get(input.previous_output.vout as usize)
                    .cloned()
            })
            .is_some_and(|out| node.wallet().is_mine(&out.script_pubkey))
    })
}

/// Whether `tx` spends a coin of `node`'s wallet or pays it.
fn touches_wallet(chain: &DevChain, node: &Node, tx: &Transaction) -> bool {
    spends_wallet_coin(chain, node, tx)
        || tx
            .output
            .iter()
            .any(|o| node.wallet().is_mine(&o.script_pubkey))
}

/// Every transaction confirmed from `from_height` to the tip that spends a
/// coin of `node`'s wallet or pays it.
fn wallet_transactions_since(chain: &DevChain, node: &Node, from_height: u32) -> Vec<Transaction> {
    let (tip, _) = chain.tip();
    (from_height..=tip)
        .flat_map(|height| {
            let block = chain
                .block(&chain.block_hash(height).expect("height in chain"))
                .expect("block");
            block.txdata.into_iter().skip(1)
        })
        .filter(|tx| touches_wallet(chain, node, tx))
        .collect()
}

/// Whether nothing of the closed channel is left for Alice to claim or sweep
/// and her wallet holds only confirmed coins.
fn settled(node: &Node) -> bool {
    let balances = node.balances();
    balances.lightning_balances.is_empty()
        && balances
            .sweeps
            .iter()
            .all(|s| matches!(s.status, SweepStatus::Confirmed { .. }))
        && balances.onchain.pending == Amount::ZERO
        && balances.onchain.untrusted_pending == Amount::ZERO
}

/// Mines one block at a time until Alice's side of the close is settled
/// at three blocks in a row; returns how many blocks it took. (An output
/// whose timelock just passed leaves LDK's balances when LDK hands it over
/// in an event, and reaches the sweeper when the node has handled that
/// event: for that moment it is in neither list.)
async fn mine_until_settled(closing: &Closing) -> u32 {
    let nodes = [&closing.alice.node, &closing.bob.node];
    let mut settled_blocks = 0;
    for blocks in 1..=MAX_BLOCKS {
        mine(&closing.chain, 1, &nodes).await;
        if settled(&closing.alice.node) && closing.chain.mempool_txids().is_empty() {
            settled_blocks += 1;
            if settled_blocks == 3 {
                return blocks;
            }
        } else {
            settled_blocks = 0;
        }
    }
    panic!(
        "the close did not settle within {MAX_BLOCKS} blocks: {:#?}",
        closing.alice.node.balances()
    );
}

/// Asserts Alice's wallet holds exactly `before + owed - commitment fee -
/// anchors she did not spend - fees of her claim transactions` and nothing
/// is left locked, claimed or waiting. When `anchors_lost` is given, it is
/// what the anchors she did not spend must come to.
fn assert_alice_paid(
    closing: &Closing,
    before: Amount,
    owed: Amount,
    commitment: &Transaction,
    anchors_lost: Option<Amount>,
    since_height: u32,
) {
    let alice = &closing.alice.node;
    let commitment_fee = fee_of(&closing.chain, commitment);
    let claims = wallet_transactions_since(&closing.chain, alice, since_height);
    let claim_fees: Amount = claims.iter().map(|tx| fee_of(&closing.chain, tx)).sum();
    let unspent_anchors: Amount = anchors_of(commitment)
        .iter()
        .filter(|anchor| {
            !claims
                .iter()
                .any(|tx| tx.input.iter().any(|i| i.previous_output == **anchor))
        })
        .map(|_| ANCHOR)
        .sum();
    if let Some(expected) = anchors_lost {
        assert_eq!(unspent_anchors, expected, "anchors Alice did not spend");
    }
    let expected = before + owed - commitment_fee - unspent_anchors - claim_fees;
    let balance = alice.onchain_balance();
    assert_eq!(
        balance.confirmed, expected,
        "Alice's wallet: {} before + {} owed - {} commitment fee - {} anchors - {} fees of {} claims",
        before, owed, commitment_fee, unspent_anchors, claim_fees, claims.len()
    );
    assert_eq!(balance.total(), balance.confirmed);
    assert_eq!(alice.wallet().locked_coins(), Vec::<OutPoint>::new());
    let balances = alice.balances();
    assert_eq!(balances.pending_sweep, Amount::ZERO);
    assert_eq!(balances.claimable_on_chain, Amount::ZERO);
    assert_eq!(balances.lightning, Amount::ZERO);
}

/// The outputs of `commitment` worth one anchor.
fn anchors_of(commitment: &Transaction) -> Vec<OutPoint> {
    let txid = commitment.compute_txid();
    commitment
        .output
        .iter()
        .enumerate()
        .filter(|(_, o)| o.value == ANCHOR)
        .map(|(vout, _)| OutPoint {
            txid,
            vout: vout as u32,
        })
        .collect()
}

/// Stops `node`'s peer, has `closer` force-close while it is away (so the
/// peer cannot race the closer's commitment with its own), waits for the
/// closer's commitment and its child in the mempool, and starts the peer
/// again. Returns the commitment and the child.
async fn force_close_while_peer_away(
    chain: &DevChain,
    closer: &Node,
    peer: TestNode,
    channel_id: &ChannelId,
    funding: OutPoint,
) -> (Transaction, Transaction, TestNode) {
    let peer_id = peer.node.node_id();
    peer.node.stop().await.expect("peer stops");
    closer
        .wait_until(WAIT, "the peer gone", |n| !n.is_connected(&peer_id))
        .await
        .expect("peer gone");
    closer
        .force_close_channel(channel_id, &peer_id, "test")
        .expect("force-close starts");
    let commitment = wait_for_spend(chain, funding).await;
    let anchors = anchors_of(&commitment);
    let child = wait_for_mempool_tx(chain, |tx| {
        tx.input
            .iter()
            .any(|i| anchors.contains(&i.previous_output))
    })
    .await;
    assert_cpfp(chain, closer, &commitment, &child);
    let peer = restart(chain, peer).await;
    (commitment, child, peer)
}

/// Asserts the closer's commitment came with a child that spends one of its
/// anchors and a wallet coin of `closer`, and that the two pay at least the
/// urgent feerate together.
fn assert_cpfp(chain: &DevChain, closer: &Node, commitment: &Transaction, child: &Transaction) {
    let anchors: BTreeSet<OutPoint> = anchors_of(commitment).into_iter().collect();
    assert_eq!(
        anchors.len(),
        2,
        "an anchor channel's commitment has two anchors"
    );
    assert!(
        child
            .input
            .iter()
            .any(|i| anchors.contains(&i.previous_output)),
        "the child spends an anchor"
    );
    assert!(
        touches_wallet(chain, closer, child),
        "the child is paid for by the closer's wallet"
    );
    let sat_per_kwu = |fee: Amount, weight: bitcoin::Weight| fee.to_sat() * 1000 / weight.to_wu();
    let commitment_rate = sat_per_kwu(fee_of(chain, commitment), commitment.weight());
    let package_rate = sat_per_kwu(
        fee_of(chain, commitment) + fee_of(chain, child),
        commitment.weight() + child.weight(),
    );
    assert!(
        package_rate > commitment_rate,
        "the child raises the package's feerate ({commitment_rate} -> {package_rate} sat/kwu)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn we_force_close_with_htlcs_both_ways_and_get_everything_back() {
    let mut closing = channel_with_htlcs_both_ways().await;
    let before = closing.alice.node.onchain_balance().confirmed;
    let (close_height, _) = closing.chain.tip();

    let (commitment, _child, bob) = force_close_while_peer_away(
        &closing.chain,
        &closing.alice.node,
        closing.bob,
        &closing.channel_id,
        closing.funding,
    )
    .await;
    closing.bob = bob;
    let alice = &closing.alice.node;
    alice
        .claim_payment(closing.alice_preimage)
        .expect("Alice claims the HTLC Bob sent her");

    let blocks = mine_until_settled(&closing).await;
    let claims = wallet_transactions_since(&closing.chain, alice, close_height + 1);
    let commitment_txid = commitment.compute_txid();
    let spends_commitment = |tx: &Transaction| {
        tx.input
            .iter()
            .any(|i| i.previous_output.txid == commitment_txid)
    };
    // The child and both HTLC transactions spend the commitment with a coin
    // of the wallet paying their fee; the sweep of Alice's own output
    // spends it alone; the HTLC transactions' outputs are swept later.
    let funded_by_wallet = claims
        .iter()
        .filter(|tx| spends_commitment(tx) && spends_wallet_coin(&closing.chain, alice, tx))
        .count();
    assert_eq!(funded_by_wallet, 3, "child and both HTLC transactions");
    let sweeps = claims
        .iter()
        .filter(|tx| !spends_wallet_coin(&closing.chain, alice, tx))
        .count();
    assert!(sweeps >= 1, "the outputs were swept");
    println!(
        "settled after {blocks} blocks with {} claim transactions",
        claims.len()
    );
    assert_alice_paid(
        &closing,
        before,
        OWED_TO_ALICE,
        &commitment,
        Some(ANCHOR),
        close_height + 1,
    );
    closing
        .bob
        .node
        .wait_until(WAIT, "Bob to learn the preimage from the chain", |n| {
            n.payment(&hash_of(&closing.alice_preimage))
                .is_some_and(|p| p.status == PaymentStatus::Succeeded)
        })
        .await
        .expect("Bob's payment succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_counterparty_force_closes_and_we_get_everything_back() {
    let mut closing = channel_with_htlcs_both_ways().await;
    let before = closing.alice.node.onchain_balance().confirmed;
    let (close_height, _) = closing.chain.tip();

    let (commitment, _child, alice) = force_close_while_peer_away(
        &closing.chain,
        &closing.bob.node,
        closing.alice,
        &closing.channel_id,
        closing.funding,
    )
    .await;
    closing.alice = alice;
    closing
        .alice
        .node
        .claim_payment(closing.alice_preimage)
        .expect("Alice claims the HTLC Bob sent her");

    mine_until_settled(&closing).await;
    // Neither anchor comes back to Alice: Bob spends his, hers is left.
    assert_alice_paid(
        &closing,
        before,
        OWED_TO_ALICE,
        &commitment,
        Some(ANCHOR + ANCHOR),
        close_height + 1,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn we_force_close_with_a_splice_pending_and_get_everything_back() {
    let closing = channel_with_htlcs_both_ways().await;
    let alice = &closing.alice.node;
    let bob_id = closing.bob.node.node_id();
    let before = alice.onchain_balance().confirmed;
    let (splice_height, _) = closing.chain.tip();

    let added = Amount::from_sat(100_000);
    let fee = FeePolicy::fixed(bitcoin::FeeRate::from_sat_per_vb(2).expect("rate"));
    let id = alice
        .splice_in(&closing.channel_id, &bob_id, added, fee)
        .expect("splice-in starts");
    let splice_txid = broadcast_txid(&closing.chain, alice, id).await;

    alice
        .force_close_channel(&closing.channel_id, &bob_id, "test")
        .expect("force-close starts");
    alice
        .claim_payment(closing.alice_preimage)
        .expect("Alice claims the HTLC Bob sent her");
    mine_until_settled(&closing).await;

    // Whichever transaction spent the old funding output decides what the
    // channel held at the close: the splice (then its 100 000 sat are in
    // it) or the commitment for the old funding.
    let (tip, _) = closing.chain.tip();
    let spends = |outpoint: OutPoint| {
        (splice_height..=tip)
            .flat_map(|h| {
                closing
                    .chain
                    .block(&closing.chain.block_hash(h).expect("height"))
                    .expect("block")
                    .txdata
            })
            .find(|tx| tx.input.iter().any(|i| i.previous_output == outpoint))
            .expect("the output was spent")
    };
    let first = spends(closing.funding);
    let (commitment, owed) = if first.compute_txid() == splice_txid {
        let splice = closing.chain.transaction(&splice_txid).expect("splice");
        let new_funding = OutPoint {
            txid: splice_txid,
            vout: splice
                .output
                .iter()
                .position(|o| o.value == CAPACITY + added)
                .expect("new funding output") as u32,
        };
        (spends(new_funding), OWED_TO_ALICE + added)
    } else {
        (first, OWED_TO_ALICE)
    };
    // The splice's 100 000 sat came out of the wallet; when the splice
    // confirmed, the channel owes them back.
    let spliced_in = owed - OWED_TO_ALICE;
    println!(
        "the close confirmed on the {} funding",
        if owed > OWED_TO_ALICE {
            "spliced"
        } else {
            "old"
        }
    );
    // The splice ends: closed with the channel when its transaction
    // confirmed, failed when the old funding's commitment won.
    let record = alice
        .wait_for_splice(id, WAIT, |s| s.is_final())
        .await
        .expect("the splice ends");
    if spliced_in > Amount::ZERO {
        assert_eq!(record.state, SpliceState::Closed);
        assert_eq!(record.txid, Some(splice_txid));
    } else {
        assert!(
            matches!(record.state, SpliceState::Failed { .. }),
            "{:?}",
            record.state
        );
    }
    assert_alice_paid(
        &closing,
        before - spliced_in,
        owed,
        &commitment,
        None,
        splice_height + 1,
    );
    assert_eq!(alice.coordinator().locked_coins(), Vec::new());
}
