//! Fee bumps (RBF) of our own splices: a splice broadcast at a low feerate
//! is replaced by one paying more, the old transaction leaves the mempool,
//! and the splice locks on the replacement with exact balances. Real nodes
//! on the devchain, whose fee estimate the test raises.

mod common;

use bitcoin::{Amount, FeeRate};
use common::*;
use ldk_splice::{FeePolicy, SpliceError, SpliceId, SpliceRecord, SpliceState};

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const LOW: FeeRate = FeeRate::from_sat_per_kwu(253);
const HIGH: FeeRate = FeeRate::from_sat_per_kwu(5_000);

/// Waits until splice `id` of `node` has `n` candidates and the newest is
/// negotiated (its txid is the record's).
async fn wait_candidates(node: &ldk_splice::node::Node, id: SpliceId, n: usize) -> SpliceRecord {
    node.wait_until(WAIT, "the bump to be negotiated", |node| {
        node.splice_status(id).is_some_and(|r| {
            r.candidates.len() == n
                && r.bump.is_none()
                && r.txid == r.candidates.last().map(|c| c.txid)
        })
    })
    .await
    .unwrap_or_else(|_| panic!("{:?}", node.splice_status(id)));
    node.splice_status(id).unwrap()
}

/// Waits until `node`'s confirmed wallet balance is `expected`.
async fn wallet_settles(node: &ldk_splice::node::Node, expected: Amount) {
    node.wait_until(WAIT, "the wallet to settle", |n| {
        n.onchain_balance().confirmed == expected
    })
    .await
    .unwrap_or_else(|_| panic!("wallet {:?}, expected {expected}", node.onchain_balance()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_splice_in_bumped_replaces_its_transaction_and_locks_with_exact_balances() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    let wallet_before = a.onchain_balance().confirmed;
    let alice_before = a.channel_balance(&channel_id).unwrap();
    let bob_before = b.channel_balance(&channel_id).unwrap();
    let added = Amount::from_sat(250_000);

    let (id, first) = broadcast_splice_in(&chain, a, b, &channel_id, added).await;
    let first_txid = first.txid.unwrap();
    let first_fee = fee_of(&chain, &chain.transaction(&first_txid).unwrap());
    assert_eq!(first_fee, first.fee);

    // The mempool moved on; the bump below the minimum is refused with it.
    chain.set_fee_rate(FeeRate::from_sat_per_vb(20).unwrap());
    let too_low = a.bump_fee(id, FeePolicy::fixed(FeeRate::from_sat_per_kwu(260)));
    let min_feerate = match too_low {
        Err(SpliceError::BumpFeeRateTooLow { min_feerate, .. }) => min_feerate,
        other => panic!("{other:?}"),
    };
    assert!(min_feerate > LOW && min_feerate <= HIGH, "{min_feerate}");
    let over_budget = a.bump_fee(
        id,
        FeePolicy::fixed(HIGH).with_max_fee(Amount::from_sat(100)),
    );
    assert!(
        matches!(over_budget, Err(SpliceError::FeeTooHigh { .. })),
        "{over_budget:?}"
    );
    assert!(
        a.splice_status(id).unwrap().bump.is_none(),
        "nothing under way"
    );

    let quote = a.quote_bump_fee(id, FeePolicy::fixed(HIGH)).expect("quote");
    assert_eq!(quote.feerate, HIGH);
    assert_eq!(quote.previous_fee, first.fee);
    assert!(!quote.adds_inputs, "the change pays for it");
    assert_eq!(
        quote.fee,
        HIGH.fee_wu(quote.weight).unwrap(),
        "the fee is the weight at the feerate"
    );
    assert_eq!(a.bump_fee(id, FeePolicy::fixed(HIGH)).expect("bumped"), id);
    let bumped = wait_candidates(a, id, 2).await;
    let second_txid = bumped.txid.unwrap();
    assert_ne!(second_txid, first_txid);
    assert_eq!(bumped.fee, quote.fee, "the fee the quote said");
    assert_eq!(bumped.feerate, HIGH);
    wait_in_mempool(&chain, &second_txid).await;
    assert!(
        !chain.mempool_txids().contains(&first_txid),
        "the old transaction was replaced"
    );
    let second_tx = chain.transaction(&second_txid).unwrap();
    assert_eq!(fee_of(&chain, &second_tx), bumped.fee);
    assert!(bumped.fee > first_fee);
    assert_eq!(bumped.inputs, first.inputs, "the same coins, less change");

    let locked = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(locked.txid, Some(second_txid));
    assert_eq!(locked.fee, bumped.fee);
    let channel = a.channel(&channel_id).unwrap();
    assert_eq!(channel.channel_value_satoshis, (CAPACITY + added).to_sat());
    assert_eq!(channel.funding_txo.unwrap().txid, second_txid);
    assert_eq!(
        a.channel_balance(&channel_id).unwrap(),
        alice_before + added
    );
    assert_eq!(b.channel_balance(&channel_id).unwrap(), bob_before);
    wallet_settles(a, wallet_before - added - locked.fee).await;
    assert!(a.coordinator().locked_coins().is_empty());
    // Confirmed: nothing left to bump.
    assert!(matches!(
        a.bump_fee(id, FeePolicy::fixed(HIGH)),
        Err(SpliceError::NothingToBump { .. })
    ));
    pay(a, b, 10_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_splice_out_bumped_pays_the_higher_fee_from_the_channel() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    let wallet_before = a.onchain_balance().confirmed;
    let alice_before = a.channel_balance(&channel_id).unwrap();
    let bob_before = b.channel_balance(&channel_id).unwrap();
    let amount = Amount::from_sat(200_000);
    let to = address_of(b);

    let id = a
        .splice_out(
            &channel_id,
            &b.node_id(),
            amount,
            ldk_splice::Destination::Address(to.as_unchecked().clone()),
            FeePolicy::fixed(LOW),
        )
        .expect("splice-out");
    let first = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .unwrap();
    let first_txid = first.txid.unwrap();
    wait_in_mempool(&chain, &first_txid).await;
    chain.set_fee_rate(FeeRate::from_sat_per_vb(20).unwrap());
    a.bump_fee(id, FeePolicy::fixed(HIGH)).expect("bumped");
    let bumped = wait_candidates(a, id, 2).await;
    let second_txid = bumped.txid.unwrap();
    wait_in_mempool(&chain, &second_txid).await;
    assert!(!chain.mempool_txids().contains(&first_txid));
    let second_tx = chain.transaction(&second_txid).unwrap();
    assert_eq!(fee_of(&chain, &second_tx), bumped.fee);
    assert!(bumped.inputs.is_empty(), "still no wallet coin");
    assert!(
        second_tx
            .output
            .iter()
            .any(|o| o.script_pubkey == to.script_pubkey() && o.value == amount),
        "the same payout"
    );

    let locked = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(locked.txid, Some(second_txid));
    let fee = locked.fee;
    assert_eq!(fee, bumped.fee);
    assert_eq!(locked.net_value.to_sat(), -((amount + fee).to_sat() as i64));
    let channel = a.channel(&channel_id).unwrap();
    assert_eq!(
        channel.channel_value_satoshis,
        (CAPACITY - amount - fee).to_sat()
    );
    assert_eq!(
        a.channel_balance(&channel_id).unwrap(),
        alice_before - amount - fee
    );
    assert_eq!(b.channel_balance(&channel_id).unwrap(), bob_before);
    assert_eq!(a.onchain_balance().confirmed, wallet_before);
    pay(a, b, 10_000_000).await;
}

/// A splice-in at the low feerate, broadcast and in the mempool.
async fn broadcast_splice_in(
    chain: &ldk_splice::devchain::DevChain,
    a: &ldk_splice::node::Node,
    b: &ldk_splice::node::Node,
    channel_id: &lightning::ln::types::ChannelId,
    added: Amount,
) -> (SpliceId, SpliceRecord) {
    let id = a
        .splice_in(channel_id, &b.node_id(), added, FeePolicy::fixed(LOW))
        .expect("splice-in");
    let first = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .unwrap();
    wait_in_mempool(chain, &first.txid.unwrap()).await;
    (id, first)
}

/// [`broadcast_splice_in`], then the estimate rises to 20 sat/vB.
async fn low_splice_in(
    chain: &ldk_splice::devchain::DevChain,
    a: &ldk_splice::node::Node,
    b: &ldk_splice::node::Node,
    channel_id: &lightning::ln::types::ChannelId,
    added: Amount,
) -> (SpliceId, SpliceRecord) {
    let (id, first) = broadcast_splice_in(chain, a, b, channel_id, added).await;
    chain.set_fee_rate(FeeRate::from_sat_per_vb(20).unwrap());
    a.bitcoind().update_fee_estimates().await;
    (id, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_earlier_candidate_confirming_after_the_bump_is_the_one_that_locks() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    let wallet_before = a.onchain_balance().confirmed;
    let alice_before = a.channel_balance(&channel_id).unwrap();
    let added = Amount::from_sat(250_000);
    let (id, first) = low_splice_in(&chain, a, b, &channel_id, added).await;
    let first_txid = first.txid.unwrap();
    let first_tx = chain.transaction(&first_txid).unwrap();

    a.bump_fee(id, FeePolicy::fixed(HIGH)).expect("bumped");
    let bumped = wait_candidates(a, id, 2).await;
    wait_in_mempool(&chain, &bumped.txid.unwrap()).await;
    // A miner takes the old one.
    chain
        .mine_block_with(&[first_tx])
        .expect("old candidate mined");
    let locked = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(locked.txid, Some(first_txid), "locked on what confirmed");
    assert_eq!(locked.fee, first.fee, "and reports its fee");
    let channel = a.channel(&channel_id).unwrap();
    assert_eq!(channel.funding_txo.unwrap().txid, first_txid);
    assert_eq!(channel.channel_value_satoshis, (CAPACITY + added).to_sat());
    assert_eq!(
        a.channel_balance(&channel_id).unwrap(),
        alice_before + added
    );
    a.wait_until(WAIT, "the wallet to settle on the old candidate", |n| {
        let balance = n.onchain_balance();
        balance.confirmed == wallet_before - added - first.fee
            && balance.untrusted_pending == Amount::ZERO
            && balance.pending == Amount::ZERO
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "wallet {:?}, expected {}",
            a.onchain_balance(),
            wallet_before - added - first.fee
        )
    });
    assert!(a.coordinator().locked_coins().is_empty());
    assert!(a.wallet().locked_coins().is_empty(), "no coin left locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_after_the_bump_was_negotiated_locks_on_it() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let wallet_before = alice.node.onchain_balance().confirmed;
    let added = Amount::from_sat(250_000);
    let (id, _) = low_splice_in(&chain, &alice.node, &bob.node, &channel_id, added).await;
    alice
        .node
        .bump_fee(id, FeePolicy::fixed(HIGH))
        .expect("bumped");
    let bumped = wait_candidates(&alice.node, id, 2).await;
    let second = bumped.txid.unwrap();
    wait_in_mempool(&chain, &second).await;

    let alice = restart(&chain, alice).await;
    let (a, b) = (&alice.node, &bob.node);
    let record = a.splice_status(id).unwrap();
    assert_eq!(record.candidates.len(), 2);
    assert_eq!(record.txid, Some(second));
    assert!(record.bump.is_none());
    a.wait_until(WAIT, "the channel back", |n| {
        n.channel(&channel_id).is_some_and(|c| c.is_usable)
    })
    .await
    .unwrap();
    let locked = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(locked.txid, Some(second));
    assert_eq!(locked.fee, bumped.fee);
    wallet_settles(a, wallet_before - added - locked.fee).await;
    assert!(a.coordinator().locked_coins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_before_the_bump_was_signed_drops_it_and_it_can_be_asked_again() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let wallet_before = alice.node.onchain_balance().confirmed;
    let added = Amount::from_sat(250_000);
    let (id, first) = low_splice_in(&chain, &alice.node, &bob.node, &channel_id, added).await;
    // Bob never lets the channel go quiet, so the bump cannot get past its
    // journal write.
    let fake = common::bob_behind_fake_peer(
        &alice.node,
        &bob.node,
        &channel_id,
        common::fake_peer::Behaviour::IgnoreStfu,
    )
    .await;
    alice
        .node
        .bump_fee(id, FeePolicy::fixed(HIGH))
        .expect("bump asked");
    let journaled = alice.node.splice_status(id).unwrap();
    let bump = journaled.bump.clone().expect("the bump is journaled first");
    assert_eq!(bump.feerate, HIGH);
    assert_eq!(journaled.candidates.len(), 1);

    let alice = restart(&chain, alice).await;
    let a = &alice.node;
    let record = a.splice_status(id).unwrap();
    assert!(record.bump.is_none(), "LDK lost the round; so do we");
    assert_eq!(record.candidates.len(), 1, "no second candidate");
    assert_eq!(record.state, SpliceState::Broadcast);
    assert_eq!(record.inputs, first.inputs, "its coins still held");
    assert!(chain.mempool_txids().contains(&first.txid.unwrap()));

    let bob = common::bob_back_for_real(&chain, a, bob, fake).await;
    let b = &bob.node;
    a.bump_fee(id, FeePolicy::fixed(HIGH)).expect("asked again");
    let bumped = wait_candidates(a, id, 2).await;
    wait_in_mempool(&chain, &bumped.txid.unwrap()).await;
    let locked = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(locked.txid, bumped.txid);
    wallet_settles(a, wallet_before - added - locked.fee).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_ten_bumps_a_bump_must_pay_the_estimate() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    let (id, _) = low_splice_in(&chain, a, b, &channel_id, Amount::from_sat(250_000)).await;
    for round in 1..=10 {
        let min = a
            .quote_bump_fee(id, FeePolicy::fixed(FeeRate::from_sat_per_kwu(254)))
            .map(|q| q.min_feerate)
            .or_else(|e| match e {
                SpliceError::BumpFeeRateTooLow { min_feerate, .. } => Ok(min_feerate),
                e => Err(e),
            })
            .expect("a minimum");
        a.bump_fee(id, FeePolicy::fixed(min))
            .expect("bumped at the minimum");
        wait_candidates(a, id, round + 1).await;
    }
    let estimate = FeeRate::from_sat_per_vb(20).unwrap();
    let min = match a.quote_bump_fee(id, FeePolicy::fixed(FeeRate::from_sat_per_kwu(254))) {
        Err(SpliceError::BumpFeeRateTooLow { min_feerate, .. }) => min_feerate,
        other => panic!("{other:?}"),
    };
    assert!(min < estimate);
    match a.bump_fee(id, FeePolicy::fixed(min)) {
        Err(SpliceError::TooManyCandidates {
            candidates,
            min_feerate,
        }) => {
            assert_eq!(candidates, 11);
            assert_eq!(min_feerate, estimate);
        }
        other => panic!("{other:?}"),
    }
    a.bump_fee(id, FeePolicy::fixed(estimate))
        .expect("at the estimate");
    let record = wait_candidates(a, id, 12).await;
    let locked = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(locked.txid, record.txid);
}

/// Mines one block without the mempool (the splice stays unconfirmed) and
/// waits for both nodes to see it.
async fn empty_block(chain: &ldk_splice::devchain::DevChain, nodes: &[&ldk_splice::node::Node]) {
    chain.mine_block_with(&[]).expect("empty block");
    for node in nodes {
        wait_synced(chain, node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_automatic_policy_bumps_each_block_up_to_its_budget_and_stops() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    let wallet_before = a.onchain_balance().confirmed;
    let added = Amount::from_sat(250_000);
    let (id, _) = broadcast_splice_in(&chain, a, b, &channel_id, added).await;
    let max_feerate = FeeRate::from_sat_per_kwu(2_500);
    a.set_auto_bump(
        id,
        Some(ldk_splice::AutoBump::new(
            3,
            max_feerate,
            Amount::from_sat(50_000),
        )),
    )
    .expect("auto bump on");
    a.wait_until(WAIT, "the schedule to start", |n| {
        n.splice_status(id)
            .and_then(|r| r.auto_bump)
            .is_some_and(|a| a.start_height.is_some())
    })
    .await
    .unwrap();

    // Three blocks: 253 -> 1002 -> 1751 -> 2500 sat/kwu, evenly.
    for (block, expected) in [(1usize, 1_002u64), (2, 1_751), (3, 2_500)] {
        empty_block(&chain, &[a, b]).await;
        let record = wait_candidates(a, id, block + 1).await;
        assert_eq!(record.feerate.to_sat_per_kwu(), expected, "block {block}");
        wait_in_mempool(&chain, &record.txid.unwrap()).await;
    }
    // The next would need more than the budget: it stops, says so, and
    // bumps no more.
    empty_block(&chain, &[a, b]).await;
    a.wait_until(WAIT, "the policy to stop", |n| {
        n.splice_status(id)
            .and_then(|r| r.auto_bump)
            .is_some_and(|a| a.stopped.is_some())
    })
    .await
    .unwrap();
    empty_block(&chain, &[a, b]).await;
    let record = a.splice_status(id).unwrap();
    assert_eq!(record.candidates.len(), 4, "no bump beyond the budget");
    assert_eq!(record.feerate, max_feerate);
    let events = a.coordinator().pending_events();
    let bumped: Vec<FeeRate> = events
        .iter()
        .filter_map(|e| match e {
            ldk_splice::SpliceEvent::FeeBumped {
                id: of, feerate, ..
            } if *of == id => Some(*feerate),
            _ => None,
        })
        .collect();
    assert_eq!(
        bumped,
        [1_002, 1_751, 2_500]
            .map(FeeRate::from_sat_per_kwu)
            .to_vec()
    );
    assert!(bumped.iter().all(|f| *f <= max_feerate));
    assert!(events.iter().any(|e| matches!(
        e,
        ldk_splice::SpliceEvent::AutoBumpStopped { id: of, .. } if *of == id
    )));

    let locked = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(locked.txid, record.txid);
    wallet_settles(a, wallet_before - added - locked.fee).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_automatic_policy_stops_once_a_candidate_confirms() {
    let chain = start_chain().await;
    let alice = {
        let dir = tempfile::tempdir().unwrap();
        let node = builder(&chain, dir.path())
            .auto_bump(ldk_splice::AutoBump::new(
                2,
                FeeRate::from_sat_per_kwu(5_000),
                Amount::from_sat(50_000),
            ))
            .start()
            .await
            .unwrap();
        TestNode { node, dir }
    };
    let bob = start_node(&chain).await;
    let (a, b) = (&alice.node, &bob.node);
    fund_nodes(&chain, &[a, b]).await;
    let (channel_id, _) = open_channel(&chain, a, b, CAPACITY, Amount::ZERO).await;
    let id = a
        .splice_in(
            &channel_id,
            &b.node_id(),
            Amount::from_sat(100_000),
            FeePolicy::fixed(LOW),
        )
        .expect("splice-in");
    a.wait_until(WAIT, "broadcast with the schedule started", |n| {
        n.splice_status(id).is_some_and(|r| {
            r.state == SpliceState::Broadcast
                && r.auto_bump
                    .as_ref()
                    .is_some_and(|a| a.start_height.is_some())
        })
    })
    .await
    .unwrap();
    empty_block(&chain, &[a, b]).await;
    let bumped = wait_candidates(a, id, 2).await;
    wait_in_mempool(&chain, &bumped.txid.unwrap()).await;
    // Confirmed in the next block: no more bumps.
    mine(&chain, 1, &[a, b]).await;
    a.wait_for_splice(id, WAIT, |s| matches!(s, SpliceState::Confirmed { .. }))
        .await
        .unwrap();
    for _ in 0..3 {
        mine(&chain, 1, &[a, b]).await;
    }
    let record = a.splice_status(id).unwrap();
    assert_eq!(record.candidates.len(), 2, "no bump once confirmed");
    let locked = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(locked.txid, bumped.txid);
}

/// Alice with two channels to Bob and one to Carol, all hers, and a
/// three-leg splice-out batch over them broadcast at the low feerate.
struct BatchSetup {
    chain: ldk_splice::devchain::DevChain,
    alice: TestNode,
    bob: TestNode,
    carol: TestNode,
    channels: Vec<(
        lightning::ln::types::ChannelId,
        bitcoin::secp256k1::PublicKey,
    )>,
    batch: ldk_splice::BatchId,
    legs: Vec<SpliceRecord>,
    /// Each channel's capacity and Alice's balance before the batch.
    before: Vec<(u64, Amount)>,
}

const BATCH_OUT: Amount = Amount::from_sat(100_000);

async fn broadcast_batch() -> BatchSetup {
    let chain = start_chain().await;
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    let carol = start_node(&chain).await;
    fund_nodes(&chain, &[&alice.node, &bob.node, &carol.node]).await;
    let (a, b, c) = (&alice.node, &bob.node, &carol.node);
    let mut channels = Vec::new();
    for (peer, capacity) in [(b, 1_000_000), (b, 900_000), (c, 800_000)] {
        let (id, _) = open_channel(&chain, a, peer, Amount::from_sat(capacity), Amount::ZERO).await;
        channels.push((id, peer.node_id()));
    }
    let before: Vec<(u64, Amount)> = channels
        .iter()
        .map(|(id, _)| {
            (
                a.channel(id).unwrap().channel_value_satoshis,
                a.channel_balance(id).unwrap(),
            )
        })
        .collect();
    let mut plan = ldk_splice::BatchPlan::new(FeePolicy::fixed(LOW));
    for (channel_id, counterparty) in &channels {
        plan = plan.leg(ldk_splice::Leg::SpliceOut {
            channel: ldk_splice::ChannelRef {
                channel_id: *channel_id,
                counterparty: *counterparty,
            },
            amount: BATCH_OUT,
            to: ldk_splice::Destination::Wallet,
        });
    }
    let batch = a.start_batch(plan).expect("batch starts");
    a.wait_for_batch(batch, WAIT, |s| *s == ldk_splice::BatchState::Signed)
        .await
        .expect("batch signed");
    let mut legs = Vec::new();
    for part in a.batch_status(batch).unwrap().parts {
        let record = a
            .wait_for_splice(part.splice.unwrap(), WAIT, |s| *s == SpliceState::Broadcast)
            .await
            .unwrap();
        wait_in_mempool(&chain, &record.txid.unwrap()).await;
        legs.push(record);
    }
    chain.set_fee_rate(FeeRate::from_sat_per_vb(20).unwrap());
    BatchSetup {
        chain,
        alice,
        bob,
        carol,
        channels,
        batch,
        legs,
        before,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_bumped_leg_by_leg_together_and_locks_with_exact_balances() {
    let s = broadcast_batch().await;
    let (a, b, c) = (&s.alice.node, &s.bob.node, &s.carol.node);
    let before = s.before.clone();
    let wallet_before = a.onchain_balance();
    a.bump_batch_fee(s.batch, FeePolicy::fixed(HIGH))
        .expect("batch bumped");
    let mut bumped = Vec::new();
    for leg in &s.legs {
        let record = wait_candidates(a, leg.id, 2).await;
        assert_eq!(record.feerate, HIGH);
        wait_in_mempool(&s.chain, &record.txid.unwrap()).await;
        assert!(!s.chain.mempool_txids().contains(&leg.txid.unwrap()));
        assert_eq!(
            fee_of(
                &s.chain,
                &s.chain.transaction(&record.txid.unwrap()).unwrap()
            ),
            record.fee
        );
        bumped.push(record);
    }
    mine(&s.chain, 6, &[a, b, c]).await;
    let mut paid_out = Amount::ZERO;
    for ((leg, (channel_id, _)), (capacity, balance)) in bumped.iter().zip(&s.channels).zip(&before)
    {
        let locked = a
            .wait_for_splice(leg.id, WAIT, |s| *s == SpliceState::Locked)
            .await
            .unwrap();
        assert_eq!(locked.txid, leg.txid);
        assert_eq!(locked.fee, leg.fee);
        let fee = locked.fee;
        assert_eq!(
            a.channel(channel_id).unwrap().channel_value_satoshis,
            capacity - (BATCH_OUT + fee).to_sat()
        );
        assert_eq!(
            a.channel_balance(channel_id).unwrap(),
            *balance - BATCH_OUT - fee
        );
        paid_out += BATCH_OUT;
    }
    wallet_settles(a, wallet_before.confirmed + paid_out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_bump_with_a_peer_offline_fails_cleanly_and_the_old_candidates_lock() {
    let s = broadcast_batch().await;
    let (a, b) = (&s.alice.node, &s.bob.node);
    let carol_id = s.carol.node.node_id();
    let carol_addr = s.carol.node.listen_addr();
    s.carol.node.stop().await.unwrap();
    a.wait_until(WAIT, "Carol gone", |n| !n.is_connected(&carol_id))
        .await
        .unwrap();
    match a.bump_batch_fee(s.batch, FeePolicy::fixed(HIGH)) {
        Err(SpliceError::BatchLeg { leg, error }) => {
            assert_eq!(leg, 2, "Carol's leg");
            assert!(
                matches!(*error, SpliceError::PeerDisconnected(p) if p == carol_id),
                "{error:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    for leg in &s.legs {
        let record = a.splice_status(leg.id).unwrap();
        assert!(record.bump.is_none(), "nothing started");
        assert_eq!(record.candidates.len(), 1);
        assert!(s.chain.mempool_txids().contains(&leg.txid.unwrap()));
    }
    s.carol.node.start().await.unwrap();
    a.connect(carol_id, carol_addr).await.unwrap();
    let c = &s.carol.node;
    mine(&s.chain, 6, &[a, b, c]).await;
    for leg in &s.legs {
        let locked = a
            .wait_for_splice(leg.id, WAIT, |s| *s == SpliceState::Locked)
            .await
            .unwrap();
        assert_eq!(locked.txid, leg.txid, "the original candidate");
        assert_eq!(locked.fee, leg.fee);
    }
    assert!(a.coordinator().locked_coins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_splice_in_batch_from_one_coin_is_refused_then_runs_after_the_coins_are_split() {
    let chain = start_chain().await;
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    let (a, b) = (&alice.node, &bob.node);
    fund_nodes(&chain, &[a, b]).await;
    // Three channels opened from the wallet's one coin (its change each
    // time): one coin left, worth far more than the batch.
    let mut channels = Vec::new();
    for capacity in [1_000_000, 900_000, 800_000] {
        let (id, _) = open_channel(&chain, a, b, Amount::from_sat(capacity), Amount::ZERO).await;
        channels.push((id, capacity));
    }
    a.wait_until(WAIT, "one confirmed coin", |n| {
        n.onchain_balance().pending == Amount::ZERO && n.wallet().spendable_coins().len() == 1
    })
    .await
    .unwrap();
    let added = Amount::from_sat(100_000);
    let mut plan = ldk_splice::BatchPlan::new(FeePolicy::fixed(FeeRate::from_sat_per_kwu(500)));
    for (channel_id, _) in &channels {
        plan = plan.leg(ldk_splice::Leg::SpliceIn {
            channel: ldk_splice::ChannelRef {
                channel_id: *channel_id,
                counterparty: b.node_id(),
            },
            amount: added,
        });
    }
    // Refused up front, saying why, for the quote as for the batch.
    for refused in [
        a.quote_batch(&plan).map(|_| ()),
        a.start_batch(plan.clone()).map(|_| ()),
    ] {
        match refused {
            Err(SpliceError::TooFewCoins { legs, coins }) => {
                assert_eq!((legs, coins), (3, 1));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(a.list_batches().is_empty(), "nothing started");
    assert!(a.coordinator().locked_coins().is_empty());

    // Split first: quoted, then sent; the batch runs once it confirms.
    let wallet_before = a.onchain_balance().confirmed;
    let quote = a.quote_prepare_coins_for_batch(&plan).expect("quote");
    assert_eq!(quote.coins.len(), 3);
    assert!(
        a.wallet().locked_coins().is_empty(),
        "a quote locks nothing"
    );
    let prepared = a.prepare_coins_for_batch(&plan).await.expect("split");
    assert_eq!(prepared.fee, quote.fee);
    wait_in_mempool(&chain, &prepared.txid).await;
    assert_eq!(
        fee_of(&chain, &chain.transaction(&prepared.txid).unwrap()),
        prepared.fee
    );
    mine(&chain, 1, &[a, b]).await;
    a.wait_until(WAIT, "four confirmed coins", |n| {
        n.wallet().spendable_coins().len() == 4
    })
    .await
    .unwrap();
    assert_eq!(a.onchain_balance().confirmed, wallet_before - prepared.fee);
    let batch = a.start_batch(plan).expect("the batch runs now");
    a.wait_for_batch(batch, WAIT, |s| *s == ldk_splice::BatchState::Signed)
        .await
        .expect("signed");
    for part in a.batch_status(batch).unwrap().parts {
        let txid = broadcast_txid(&chain, a, part.splice.unwrap()).await;
        wait_in_mempool(&chain, &txid).await;
    }
    mine(&chain, 6, &[a, b]).await;
    let done = a
        .wait_for_batch(batch, WAIT, |s| s.is_final())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{:?}; legs {:?}",
                a.batch_status(batch),
                a.list_splices()
                    .iter()
                    .map(|r| (r.id, r.state.clone()))
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(done.state, ldk_splice::BatchState::Locked);
    // Each leg spent its own coin whole: the amount and its fee, and the
    // few sat a change output would have cost more than they are worth
    // went into the channel (net_value says how many).
    let mut spent = Amount::ZERO;
    for (part, (channel_id, capacity)) in done.parts.iter().zip(&channels) {
        let record = a.splice_status(part.splice.unwrap()).unwrap();
        let into_channel = record.net_value.to_unsigned().unwrap();
        assert!(into_channel >= added && into_channel - added < Amount::from_sat(330));
        assert!(record.change.is_none(), "one coin, no change");
        assert_eq!(
            a.channel(channel_id).unwrap().channel_value_satoshis,
            capacity + into_channel.to_sat()
        );
        let coin = prepared
            .coins
            .iter()
            .find(|(outpoint, _)| record.inputs == vec![*outpoint])
            .expect("a coin of the split");
        assert_eq!(coin.1, into_channel + record.fee);
        spent += coin.1;
    }
    wallet_settles(a, wallet_before - prepared.fee - spent).await;
    assert!(a.coordinator().locked_coins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zero_conf_channel_refuses_fee_bumps() {
    let chain = start_chain().await;
    let alice = start_node(&chain).await;
    let a = &alice.node;
    let bob_dir = tempfile::tempdir().unwrap();
    let b = builder(&chain, bob_dir.path())
        .trust_zero_conf_from(a.node_id())
        .start()
        .await
        .unwrap();
    fund_nodes(&chain, &[a, &b]).await;
    a.connect(b.node_id(), b.listen_addr()).await.unwrap();
    a.open_channel(b.node_id(), CAPACITY, Amount::ZERO).unwrap();
    // Usable before any confirmation: zero-conf.
    a.wait_until(WAIT, "the zero-conf channel usable", |n| {
        n.list_channels()
            .iter()
            .any(|c| c.is_usable && c.confirmations_required == Some(0))
    })
    .await
    .unwrap();
    let channel_id = a.list_channels()[0].channel_id;
    // The funding's change confirms, to fund the splice.
    wait_for_mempool_tx(&chain, |tx| tx.output.iter().any(|o| o.value == CAPACITY)).await;
    mine(&chain, 1, &[a, &b]).await;
    a.wait_until(WAIT, "the change confirmed", |n| {
        !n.wallet().spendable_coins().is_empty()
    })
    .await
    .unwrap();
    let id = a
        .splice_in(
            &channel_id,
            &b.node_id(),
            Amount::from_sat(100_000),
            FeePolicy::fixed(LOW),
        )
        .expect("splice-in");
    a.wait_for_splice(id, WAIT, |s| s.is_broadcast())
        .await
        .unwrap();
    for refused in [
        a.quote_bump_fee(id, FeePolicy::fixed(HIGH)).map(|_| ()),
        a.bump_fee(id, FeePolicy::fixed(HIGH)).map(|_| ()),
    ] {
        assert!(
            matches!(refused, Err(SpliceError::ZeroConfChannel(c)) if c == channel_id),
            "{refused:?}"
        );
    }
    assert!(a.splice_status(id).unwrap().bump.is_none());
}
