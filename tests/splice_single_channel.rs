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
    assert_eq!(record.net_value_sat, added.to_sat() as i64);

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
        a.wallet().reservations().is_empty(),
        "nothing stays reserved"
    );

    // Payments work over the spliced channel.
    pay(a, b, 300_000_000).await;
    pay(b, a, 50_000_000).await;
}
