//! Splices on one channel through the coordinator, against a plain LDK
//! counterparty, on the devchain.

mod common;

use bitcoin::{Amount, FeeRate};
use common::*;
use ldk_splice::{FeePolicy, SpliceState};

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splice_in_reaches_locked_with_exact_balances() {
    let chain = start_chain().await;
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    fund_nodes(&chain, &[&alice.node, &bob.node]).await;
    let (a, b) = (&alice.node, &bob.node);
    let (channel_id, funding_tx) = open_channel(&chain, a, b, CAPACITY, Amount::ZERO).await;
    pay(a, b, 100_000_000).await;

    let wallet_before = a.onchain_balance().confirmed;
    let alice_channel_before = a.channel_balance(&channel_id).unwrap();
    let bob_channel_before = b.channel_balance(&channel_id).unwrap();
    assert_eq!(bob_channel_before, Amount::from_sat(100_000));

    let added = Amount::from_sat(250_000);
    let id = a
        .splice_in(&channel_id, &b.node_id(), added, FeePolicy::fixed(FEERATE))
        .expect("splice-in accepted");
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .expect("broadcast");
    let txid = record.txid.expect("txid known once broadcast");
    wait_in_mempool(&chain, &txid).await;
    let splice_tx = chain.transaction(&txid).unwrap();
    assert!(splice_tx
        .input
        .iter()
        .any(|i| i.previous_output.txid == funding_tx.compute_txid()));
    assert_eq!(
        fee_of(&chain, &splice_tx),
        record.fee,
        "we pay the whole fee as initiator"
    );
    assert_eq!(record.net_value.to_sat(), added.to_sat() as i64);

    mine(&chain, 6, &[a, b]).await;
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locked");
    assert!(record
        .inputs
        .iter()
        .all(|o| splice_tx.input.iter().any(|i| i.previous_output == *o)));

    let channel = a.channel(&channel_id).unwrap();
    assert_eq!(channel.channel_value_satoshis, (CAPACITY + added).to_sat());
    assert_eq!(channel.funding_txo.unwrap().txid, txid);
    assert_eq!(
        a.channel_balance(&channel_id).unwrap(),
        alice_channel_before + added
    );
    assert_eq!(b.channel_balance(&channel_id).unwrap(), bob_channel_before);
    a.wait_until(WAIT, "wallet to see the splice", |n| {
        n.onchain_balance().confirmed == wallet_before - added - record.fee
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "wallet {:?}, expected {}",
            a.onchain_balance(),
            wallet_before - added - record.fee
        )
    });
    assert!(
        a.coordinator().locked_coins().is_empty(),
        "nothing stays reserved"
    );

    // Payments work over the spliced channel.
    pay(a, b, 300_000_000).await;
    pay(b, a, 50_000_000).await;
}

/// An address of a key nobody in the test holds.
fn external_address() -> bitcoin::Address {
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x42; 32]).unwrap();
    let public = bitcoin::CompressedPublicKey(key.public_key(&secp));
    bitcoin::Address::p2wpkh(&public, bitcoin::Network::Regtest)
}

struct Spliced {
    record: ldk_splice::SpliceRecord,
    tx: bitcoin::Transaction,
}

/// Runs one splice from `a` on `channel_id` to Locked, checking what every
/// splice must satisfy on the way.
async fn splice_to_lock(
    chain: &ldk_splice::devchain::DevChain,
    a: &ldk_splice::node::Node,
    b: &ldk_splice::node::Node,
    channel_id: &lightning::ln::types::ChannelId,
    start: impl FnOnce() -> Result<ldk_splice::SpliceId, ldk_splice::SpliceError>,
) -> Spliced {
    let old_funding = a.channel(channel_id).unwrap().funding_txo.unwrap();
    let id = start().expect("splice accepted");
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .expect("broadcast");
    let txid = record.txid.unwrap();
    wait_in_mempool(chain, &txid).await;
    let tx = chain.transaction(&txid).unwrap();
    assert!(tx
        .input
        .iter()
        .any(|i| i.previous_output == old_funding.into_bitcoin_outpoint()));
    assert_eq!(
        fee_of(chain, &tx),
        record.fee,
        "the initiator pays the whole fee"
    );
    mine(chain, 6, &[a, b]).await;
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locked");
    assert_eq!(chain.confirmations(&txid), Some(6));
    b.wait_until(WAIT, "counterparty on the new funding", |n| {
        n.channel(channel_id)
            .and_then(|c| c.funding_txo)
            .is_some_and(|o| o.txid == txid)
    })
    .await
    .expect("counterparty locked too");
    assert!(
        a.coordinator().locked_coins().is_empty(),
        "nothing stays reserved"
    );
    Spliced { record, tx }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splice_out_to_an_external_address() {
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
    let to = external_address();
    let amount = Amount::from_sat(300_000);
    let spliced = splice_to_lock(&chain, a, b, &channel_id, || {
        a.splice_out(
            &channel_id,
            &b.node_id(),
            amount,
            ldk_splice::Destination::Address(to.as_unchecked().clone()),
            FeePolicy::fixed(FEERATE),
        )
    })
    .await;
    let fee = spliced.record.fee;
    assert_eq!(
        spliced.record.net_value.to_sat(),
        -((amount + fee).to_sat() as i64)
    );
    assert!(
        spliced.record.inputs.is_empty(),
        "a splice-out spends no wallet coin"
    );
    let paid: Amount = spliced
        .tx
        .output
        .iter()
        .filter(|o| o.script_pubkey == to.script_pubkey())
        .map(|o| o.value)
        .sum();
    assert_eq!(paid, amount);
    assert_eq!(
        chain
            .utxo(&bitcoin::OutPoint {
                txid: spliced.tx.compute_txid(),
                vout: spliced
                    .tx
                    .output
                    .iter()
                    .position(|o| o.script_pubkey == to.script_pubkey())
                    .unwrap() as u32
            })
            .map(|o| o.value),
        Some(amount)
    );
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
    assert_eq!(
        a.onchain_balance().confirmed,
        wallet_before,
        "the wallet is not touched"
    );
    pay(a, b, 10_000_000).await;
    pay(b, a, 10_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splice_out_to_our_own_wallet() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    let wallet_before = a.onchain_balance().confirmed;
    let amount = Amount::from_sat(150_000);
    let spliced = splice_to_lock(&chain, a, b, &channel_id, || {
        a.splice_out(
            &channel_id,
            &b.node_id(),
            amount,
            ldk_splice::Destination::Wallet,
            FeePolicy::fixed(FEERATE),
        )
    })
    .await;
    let fee = spliced.record.fee;
    assert_eq!(paid_to(&spliced.tx, a), amount);
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY - amount - fee).to_sat()
    );
    a.wait_until(WAIT, "wallet credited", |n| {
        n.onchain_balance().confirmed == wallet_before + amount
    })
    .await
    .unwrap_or_else(|_| panic!("wallet {:?}", a.onchain_balance()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resize_adds_and_pays_out_in_one_splice() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    let to = external_address();

    // Grow: add more than we pay out; the wallet pays the fee.
    let wallet_before = a.onchain_balance().confirmed;
    let alice_before = a.channel_balance(&channel_id).unwrap();
    let (add, out) = (Amount::from_sat(400_000), Amount::from_sat(100_000));
    let spliced = splice_to_lock(&chain, a, b, &channel_id, || {
        a.resize(
            &channel_id,
            &b.node_id(),
            ldk_splice::ResizeRequest {
                add,
                outputs: vec![ldk_splice::Payout {
                    to: ldk_splice::Destination::Address(to.as_unchecked().clone()),
                    amount: out,
                }],
            },
            FeePolicy::fixed(FEERATE),
        )
    })
    .await;
    let fee = spliced.record.fee;
    assert_eq!(
        spliced.record.net_value.to_sat(),
        (add - out).to_sat() as i64
    );
    let capacity = CAPACITY + add - out;
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        capacity.to_sat()
    );
    assert_eq!(
        a.channel_balance(&channel_id).unwrap(),
        alice_before + add - out
    );
    a.wait_until(WAIT, "wallet paid add + fee", |n| {
        n.onchain_balance().confirmed == wallet_before - add - fee
    })
    .await
    .unwrap_or_else(|_| panic!("wallet {:?}", a.onchain_balance()));

    // Shrink: pay out more than we add; still the wallet pays the fee.
    let wallet_before = a.onchain_balance().confirmed;
    let alice_before = a.channel_balance(&channel_id).unwrap();
    let (add, out) = (Amount::from_sat(50_000), Amount::from_sat(200_000));
    let spliced = splice_to_lock(&chain, a, b, &channel_id, || {
        a.resize(
            &channel_id,
            &b.node_id(),
            ldk_splice::ResizeRequest {
                add,
                outputs: vec![ldk_splice::Payout {
                    to: ldk_splice::Destination::Address(to.as_unchecked().clone()),
                    amount: out,
                }],
            },
            FeePolicy::fixed(FEERATE),
        )
    })
    .await;
    let fee = spliced.record.fee;
    assert_eq!(
        spliced.record.net_value.to_sat(),
        add.to_sat() as i64 - out.to_sat() as i64
    );
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (capacity + add - out).to_sat()
    );
    assert_eq!(
        a.channel_balance(&channel_id).unwrap(),
        alice_before + add - out
    );
    a.wait_until(WAIT, "wallet paid add + fee", |n| {
        n.onchain_balance().confirmed == wallet_before - add - fee
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "wallet {:?}, expected {}",
            a.onchain_balance(),
            wallet_before - add - fee
        )
    });
}
